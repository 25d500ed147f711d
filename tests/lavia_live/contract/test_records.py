from __future__ import annotations

import json
from pathlib import Path

import pytest

from lavia_live.contract.guidance import Guidance
from lavia_live.contract.prompt import build_guidance_prompt, parse_llava_text
from lavia_live.contract.records import (
    Annotation,
    InstructionRecord,
    iter_records,
    read_records,
    write_jsonl,
)
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.errors import RecordError

DEMO = TaskLibrary.load()["demo_oil_change"]


def make(i: int = 0) -> InstructionRecord:
    prompt = build_guidance_prompt(DEMO, 15)
    g = Guidance(DEMO.steps[2], DEMO.steps[3], None)
    return InstructionRecord.from_prompt(
        f"demo_00001_{i}",
        [f"frames/demo_00001/{i}_{k:02d}.jpg" for k in range(15)],
        prompt,
        g.to_text(),
        task_id=DEMO.id,
        source_video="demo_00001.mp4",
        clip_index=i,
        clip_start=15.0 * i,
        clip_end=15.0 * i + 15,
        frame_timestamps=[15.0 * i + k for k in range(15)],
        transcript_span="Take the ratchet and loosen the drain plug.",
        annotation=Annotation(**g.to_json()),
        annotator="oracle",
    )


def test_reads_the_original_projects_record(external_data: Path) -> None:
    (record,) = read_records(external_data / "lavia_original_record_0_0.json")
    assert record.id == "0_0"
    assert len(record.image) == 15
    assert record.prompt_text.count("<image>") == 15
    assert "Honda GX160" in record.prompt_text
    assert record.answer_text.startswith("The sequence of images")
    assert record.source_video is None
    original = json.loads((external_data / "lavia_original_record_0_0.json").read_text())
    assert record.to_llava() == original


def test_jsonl_round_trip_keeps_every_field(tmp_path: Path) -> None:
    records = [make(i) for i in range(3)]
    path = tmp_path / "out" / "records.jsonl"
    assert write_jsonl(path, records) == 3
    assert read_records(path) == records
    line = json.loads(path.read_text().splitlines()[0])
    assert line["conversations"][0]["from"] == "human"
    assert line["prompt_version"] == build_guidance_prompt(DEMO, 15).version
    assert not list(tmp_path.joinpath("out").glob(".records.jsonl.*"))  # no temp file left


def test_record_prompt_is_the_builders_prompt() -> None:
    record = make()
    assert parse_llava_text(record.prompt_text) == build_guidance_prompt(DEMO, 15)
    assert record.to_llava()["conversations"][1]["value"].startswith("Current step:")


def test_image_tags_must_match_frames() -> None:
    data = make().to_json()
    data["image"] = data["image"][:14]
    with pytest.raises(ValueError, match="14 frames but 15"):
        InstructionRecord.model_validate(data)


def test_bad_files_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    good = json.dumps(make().to_json())
    path.write_text(good + "\n{not json\n")
    with pytest.raises(RecordError, match=r"r\.jsonl:2: invalid JSON"):
        read_records(path)
    bad = make().to_json()
    bad["frame_timestamps"] = list(reversed(bad["frame_timestamps"]))
    path.write_text(good + "\n\n" + json.dumps(bad) + "\n")
    records = iter_records(path)
    assert next(records).id == "demo_00001_0"
    with pytest.raises(RecordError, match=r"r\.jsonl:3: .*oldest first"):
        next(records)
    with pytest.raises(RecordError, match="cannot read"):
        read_records(tmp_path / "missing.jsonl")
    extra = make().to_json() | {"colour": "red"}
    path.write_text(json.dumps(extra))
    with pytest.raises(RecordError, match="colour"):
        read_records(path)
