"""Selecting the embedded demo model by name."""

from __future__ import annotations

from pathlib import Path

import pytest

import lavia_live.models as models
from lavia_live.models import EMBEDDED, ModelLoadError, model_folder


def test_a_folder_name_is_a_folder() -> None:
    assert model_folder("runs/x/final") == Path("runs/x/final")


def test_embedded_names_the_package_folder_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "EMBEDDED_MODEL_DIR", tmp_path)
    with pytest.raises(ModelLoadError, match=r"not installed.*scripts/build_demo_model"):
        model_folder(EMBEDDED)
    (tmp_path / "config.json").write_text("{}")
    assert model_folder(EMBEDDED) == tmp_path
