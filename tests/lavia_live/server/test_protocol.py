"""Client messages are validated before the session acts on them: the push-to-talk ``talk``
message and the ``speech`` event's ``interrupted`` mark, as a third-party client sees them."""

from __future__ import annotations

import json

import pytest

from lavia_live.server.protocol import (
    CLIENT_TYPES,
    ProtocolError,
    SpeechEvent,
    TalkMessage,
    TranscriptEvent,
    parse_client_message,
)


@pytest.mark.parametrize("state", ["start", "end"])
def test_a_talk_message_is_parsed(state: str) -> None:
    message = parse_client_message(json.dumps({"type": "talk", "state": state}))
    assert message == TalkMessage(type="talk", state=state)  # type: ignore[arg-type]
    assert "talk" in CLIENT_TYPES


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        ({"type": "talk"}, "bad_message", "state"),
        ({"type": "talk", "state": "pause"}, "bad_message", "state"),
        ({"type": "talk", "state": "end", "at": 3}, "bad_message", "at"),
        ({"type": "talk", "state": True}, "bad_message", "state"),
        ({"type": "push", "state": "end"}, "unknown_type", "talk"),
    ],
)
def test_a_bad_talk_message_is_refused_with_the_reason(
    body: dict[str, object], code: str, says: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(json.dumps(body))
    assert caught.value.code == code and says in caught.value.message, caught.value.message


def test_speech_and_transcript_events_on_the_wire() -> None:
    cut = SpeechEvent(
        state="end", text="Loosen the plug.", kind="answer", id="q1", interrupted=True
    )
    assert json.loads(cut.model_dump_json()) == {
        "type": "speech",
        "state": "end",
        "text": "Loosen the plug.",
        "kind": "answer",
        "id": "q1",
        "interrupted": True,
    }
    assert SpeechEvent(state="start", text="x", kind="guidance").interrupted is False
    final = TranscriptEvent(
        id="voice-2", final=True, text="what next", audio_s=1.2, ended="released"
    )
    assert final.model_dump()["ended"] == "released"
