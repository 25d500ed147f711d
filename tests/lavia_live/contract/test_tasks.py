from __future__ import annotations

from pathlib import Path

import pytest

from lavia_live.contract.tasks import TaskLibrary, load_task
from lavia_live.errors import TaskDefinitionError


def test_shipped_library_has_the_demo_and_honda_tasks() -> None:
    library = TaskLibrary.load()
    demo = library["demo_oil_change"]
    assert len(demo.steps) >= 6
    honda = library["honda_gx160_oil_change"]
    assert len(honda.steps) >= 6
    assert honda.guideline.startswith("Welcome back")


def test_honda_steps_are_the_narrations(external_data: Path) -> None:
    honda = TaskLibrary.load()["honda_gx160_oil_change"]
    reference = (external_data / "honda_oil_change.reference.txt").read_text().lower()
    # the steps are the narration's: each names things the narrator says
    for word in ("drain plug", "ratchet", "13 foot-pounds", "577", "oil pan", "wipe"):
        assert word in reference
        assert any(word in step.lower() for step in honda.steps), word


def test_step_number_matches_ignoring_case_and_final_period() -> None:
    demo = TaskLibrary.load()["demo_oil_change"]
    assert demo.step_number(demo.steps[2].upper().rstrip(".")) == 3
    assert demo.step_number("something else") is None


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("id: x\ntitle: T\n", "steps"),
        ("id: x\ntitle: T\nsteps: []\n", "steps"),
        ("id: Bad Id\ntitle: T\nsteps: [a]\n", "id"),
        ("id: x\ntitle: T\nsteps: [a, '  ']\n", "steps"),
        ("id: x\ntitle: T\nsteps: [a]\ncolour: red\n", "colour"),
        ("id: x\ntitle: T\nsteps: [a, A.]\n", "steps"),
        ("id: x\ntitle: 5\nsteps: [a]\n", "title"),
    ],
)
def test_malformed_task_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(TaskDefinitionError) as info:
        load_task(path)
    assert str(path) in str(info.value)
    assert f"field '{field}" in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"id: [unclosed\n", "invalid YAML"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b"- a\n", "mapping"),
    ],
)
def test_unreadable_task_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_bytes(content)
    with pytest.raises(TaskDefinitionError, match=message):
        load_task(path)


def test_library_rejects_duplicate_ids_and_unknown_lookups(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "id: same\ntitle: A\nsteps: [one]\n")
    write(tmp_path, "b.yaml", "id: same\ntitle: B\nsteps: [one]\n")
    with pytest.raises(TaskDefinitionError, match="already defined"):
        TaskLibrary.load(tmp_path)
    (tmp_path / "b.yaml").unlink()
    library = TaskLibrary.load(tmp_path)
    assert list(library) == ["same"]
    with pytest.raises(TaskDefinitionError, match=r"unknown task 'nope'.*same"):
        library.require("nope")
    with pytest.raises(TaskDefinitionError, match="does not exist"):
        TaskLibrary.load(tmp_path / "missing")
