from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lavia_live.config import Settings, load_settings
from lavia_live.errors import ConfigError
from lavia_live.resources import shipped_path


def test_shipped_config_lists_every_key_with_its_default() -> None:
    path = shipped_path("configs/lavia.yaml")
    loaded = load_settings(Settings, files=[path], env={})
    assert loaded.settings == Settings()
    assert {key for key, _, _ in loaded.rows()} == set(loaded.sources)
    assert all(source == str(path) for source in loaded.sources.values())


def test_layers_in_order_flags_win(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("sampling:\n  min_frames_for_guidance: 5\nlogging:\n  level: INFO\n")
    b = tmp_path / "b.yaml"
    b.write_text("sampling:\n  min_frames_for_guidance: 6\n")
    env = {
        "LAVIA_SAMPLING__MIN_FRAMES_FOR_GUIDANCE": "7",
        "LAVIA_LOGGING__FORMAT": "json",
        "HOME": "/root",
    }
    loaded = load_settings(
        Settings, files=[a, b], env=env, overrides=["sampling.min_frames_for_guidance=8"]
    )
    assert loaded.settings.sampling.min_frames_for_guidance == 8
    assert loaded.sources["sampling.min_frames_for_guidance"] == (
        "flag --set sampling.min_frames_for_guidance"
    )
    assert loaded.settings.logging.level == "INFO"
    assert loaded.sources["logging.level"] == str(a)
    assert loaded.settings.logging.format == "json"
    assert loaded.sources["logging.format"] == "env LAVIA_LOGGING__FORMAT"
    assert "sampling.clip_frames" not in loaded.sources  # a default
    without_flag = load_settings(Settings, files=[a, b], env=env)
    assert without_flag.settings.sampling.min_frames_for_guidance == 7


def test_lavia_config_variable_names_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"tasks": {"default_task": "honda_gx160_oil_change"}}))
    loaded = load_settings(Settings, env={"LAVIA_CONFIG": str(path)})
    assert loaded.settings.tasks.default_task == "honda_gx160_oil_change"


def test_settings_are_immutable() -> None:
    settings = load_settings(Settings, env={}).settings
    with pytest.raises(ValueError, match="frozen"):
        settings.sampling.clip_frames = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"overrides": ["sampling.clip_frame=15"]},
            "unknown setting 'sampling.clip_frame' (from flag",
        ),
        (
            {"env": {"LAVIA_SERVR__PORT": "1"}},
            "unknown setting 'servr' (from env LAVIA_SERVR__PORT)",
        ),
        (
            {"env": {"LAVIA_SAMPLING__CLIP_FRAMES": "many"}},
            "'sampling.clip_frames' = \"many\" (from env LAVIA_SAMPLING__CLIP_FRAMES)",
        ),
        (
            {"overrides": ["logging.level=LOUD"]},
            "'logging.level' = \"LOUD\" (from flag --set logging.level)",
        ),
        ({"overrides": ["sampling.reference_fps=-1"]}, "greater than 0"),
        ({"overrides": ["sampling=3"]}, "must be a mapping"),
        ({"overrides": ["novalue"]}, "KEY=VALUE"),
        (
            {"overrides": ["sampling.clip_frames=2"]},
            "min_frames_for_guidance (4) exceeds clip_frames (2)",
        ),
    ],
)
def test_bad_keys_and_values_name_key_and_source(kwargs: dict[str, object], message: str) -> None:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load_settings(Settings, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_bad_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sampling:\n  clip_frames: 15\n  strid_frames: 30\n")
    with pytest.raises(
        ConfigError, match=rf"unknown setting 'sampling.strid_frames' \(from {path}\)"
    ):
        load_settings(Settings, files=[path], env={})
    path.write_text("sampling: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(Settings, files=[path], env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(Settings, files=[tmp_path / "nope.yaml"], env={})
