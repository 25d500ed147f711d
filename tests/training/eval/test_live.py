"""``lavia eval --live``: the metric rules on hand-made event lists, and one rendered demo
video run through the live loop with the embedded model, from the command line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from lavia_live.cli import main
from lavia_live.contract.tasks import TaskLibrary
from training.demo.render import DemoSpec, DemoTruth, StepSpan, render_demo_video
from training.eval.live import (
    Heard,
    LiveEvalError,
    Span,
    announcements,
    count_flaps,
    find_videos,
    live_totals,
    mistake_windows,
    score_video,
    step_rows,
)

FPS = 30


def _truth(
    spans: Sequence[tuple[int, float, float]], mistakes: Sequence[dict[str, object]] = ()
) -> DemoTruth:
    return DemoTruth(
        video="demo_x.mp4",
        task_id="demo_oil_change",
        seed=0,
        fps=FPS,
        n_frames=round(spans[-1][2] * FPS),
        spans=tuple(StepSpan(s, round(a * FPS), round(b * FPS)) for s, a, b in spans),
        mistakes=tuple(mistakes),
        narration=(),
    )


def _said(*items: tuple[float, int | None] | tuple[float, int | None, str]) -> list[Heard]:
    return [Heard(i[0], i[1], i[2] if len(i) > 2 else None) for i in items]  # type: ignore[misc]


def test_event_time_is_when_the_person_hears_it() -> None:
    event = {"t": 20.0, "clip_end": 14.0, "latency_ms": 250.0, "current_index": 2, "warning": None}
    assert Heard.of(event).t == 14.25  # fast: the clip's end plus the model's time
    assert Heard.of(event, realtime=True).t == 20.0  # paced: not before it was sent


def test_announcements_and_a_flap() -> None:
    events = _said((5, 0), (6, 0), (12, 1), (14, 0), (16, 1), (20, 2), (21, None), (22, 2))
    announced = announcements(events)
    assert [a.t for a in announced] == [5, 12, 14, 16, 20, 21, 22]
    # 0, 1, 0 (a flap), 1 (a flap: back to 1, left before), 2; None is no step
    assert count_flaps(announced) == 2
    assert count_flaps(announcements(_said((1, 0), (5, 1), (9, 2)))) == 0


def test_a_return_the_truth_makes_is_no_flap() -> None:
    spans = [Span(0, 0, 10), Span(1, 10, 20), Span(0, 20, 30)]  # the truth returns to step 0
    announced = announcements(_said((3, 0), (13, 1), (24, 0)))
    assert count_flaps(announced, spans) == 0
    assert count_flaps(announcements(_said((3, 0), (13, 1), (16, 0))), spans) == 1  # too early


def test_a_late_announcement_does_not_count() -> None:
    spans = [Span(0, 0.0, 10.0), Span(1, 10.0, 20.0), Span(2, 20.0, 30.0)]
    events = _said((4.0, 0), (23.5, 1), (25.0, 2))
    rows = step_rows(spans, events)
    assert [r.announced_at for r in rows] == [4.0, None, 25.0]  # step 2's: 3.5 s after its end
    assert [r.latency_s for r in rows] == [4.0, None, 5.0]
    on_time = step_rows(spans, _said((4.0, 0), (22.9, 1)))
    assert on_time[1].latency_s == pytest.approx(12.9)
    early = step_rows(spans, _said((9.0, 1)))  # before the span starts: not this span's
    assert early[1].announced_at is None


def test_warnings_on_time_and_false() -> None:
    truth = _truth(
        [(0, 0, 10), (1, 10, 20), (3, 20, 30), (4, 30, 60)],
        [
            {"kind": "skipped_step", "step": 2, "frame": 20 * FPS, "end_frame": 25 * FPS, "text": "x"},
            {"kind": "repeated_step", "step": 4, "frame": 40 * FPS, "text": "y"},  # no end_frame
        ],
    )  # fmt: skip
    windows = mistake_windows(truth)
    assert [(w.start_s, w.end_s) for w in windows] == [(20.0, 25.0), (40.0, 60.0)]
    events = _said((3, 0, "early"), (12, 1), (29.5, 3, "skipped"), (31, 4, "late"), (22, 3))
    v = score_video("demo_x.mp4", truth, events)
    assert [m.warned_at for m in v.mistakes] == [29.5, None]  # 29.5 is within 25 s + 5 s
    assert v.warnings == 3 and v.false_warnings == 2  # at 3 s and at 31 s
    t = live_totals([v])
    assert t.mistakes == 2 and t.mistakes_warned_on_time == 1 and t.warned_on_time_share == 0.5
    assert t.false_warnings_per_10min == pytest.approx(2 / (60 / 600))
    assert t.clean_videos == 0 and t.false_warnings_per_10min_clean is None


def test_totals_over_videos() -> None:
    clean = _truth([(0, 0, 10), (1, 10, 20), (2, 20, 30)])
    a = score_video("a.mp4", clean, _said((2, 0), (13, 1), (14, 0), (15, 1), (27, 2, "hm")))
    b = score_video("b.mp4", clean, _said((5, 0), (19, 1)))
    t = live_totals([a, b])
    assert t.videos == 2 and t.spans == 6 and t.announced == 5
    assert sorted(r.latency_s for v in (a, b) for r in v.steps if r.latency_s is not None) == [
        2.0, 3.0, 5.0, 7.0, 9.0,
    ]  # fmt: skip
    assert t.latency_median_s == 5.0 and t.latency_p90_s == 9.0
    assert t.announcements == 7 and t.announcements_per_step == pytest.approx(7 / 6)
    assert t.flaps == 2 and t.false_warnings == 1 and t.clean_videos == 2  # 0, 1, 0, 1
    assert t.false_warnings_per_10min_clean == pytest.approx(1 / (60 / 600))


def test_videos_need_their_truth(tmp_path: Path) -> None:
    (tmp_path / "demo_00001.mp4").write_bytes(b"")
    with pytest.raises(LiveEvalError, match=r"no truth file demo_00001\.truth\.json"):
        find_videos([tmp_path])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LiveEvalError, match="no demo_"):
        find_videos([tmp_path / "empty"])
    with pytest.raises(LiveEvalError, match="no such video"):
        find_videos([tmp_path / "missing.mp4"])


def test_cli_live_eval_of_the_embedded_model_on_a_rendered_video(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = TaskLibrary.load().require("demo_oil_change")
    spec = DemoSpec(min_step_s=4, max_step_s=5, mistake_rate=0.0, narration=False)
    truth = render_demo_video(task, 200011, tmp_path / "videos", spec)
    out = tmp_path / "live"
    code = main(
        ["eval", "--model", "embedded", "--live", str(tmp_path / "videos"), "--out", str(out)]
    )
    done = capsys.readouterr()
    assert code == 0, done.err
    data = json.loads((out / "live.json").read_text())
    n_spans = len(truth.spans)
    assert data["mode"] == "fast" and data["videos"] == 1 and data["spans"] == n_spans
    assert data["duration_s"] == pytest.approx(truth.duration_s)
    assert data["announced_share"] >= 0.5
    (video,) = data["videos_detail"]
    latencies = [r["latency_s"] for r in video["steps"] if r["announced_at"] is not None]
    assert len(latencies) == data["announced"] == video["announced"]
    assert all(0 <= x < truth.duration_s for x in latencies)
    assert 0 <= data["latency_median_s"] <= data["latency_p90_s"] < truth.duration_s
    events = video["events"]
    assert data["announcements"] == len(announcements([Heard(**e) for e in events]))
    assert 1 <= data["announcements"] <= len(events)
    assert all(0 < e["t"] < truth.duration_s + 5 for e in events)
    assert data["mistakes"] == 0 and data["clean_videos"] == 1
    assert data["false_warnings"] == sum(e["warning"] is not None for e in events)
    assert data["engine_errors"] == 0 and not data["failures"]
    plot = out / "timeline_demo_200011.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    report = (out / "live.md").read_text()
    assert "timeline_demo_200011.png" in report and "steps announced" in report
    assert f"{data['announced']}/{n_spans} steps announced" in done.out
