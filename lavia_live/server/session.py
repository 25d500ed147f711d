"""One live session: a browser's peer connection, its video in, its events and voice out.

The session owns everything it starts: the peer connection, the task reading its video
track, the :class:`Listener` of the first audio track the client sends (voice questions;
any other track is drained, so nothing queues up unread), the ``state`` ticker, a watchdog
and, when the client receives audio, the :class:`Speaker` with its outgoing
:class:`SpeechTrack`. :meth:`Session.close` ends all of them, whatever ends the
session: the client leaving, ICE failing, the video stopping, the server shutting down.

Barge-in: when the listener hears the person start an utterance (the VAD's first voiced
window), or a push-to-talk press arrives (``talk`` start), the speaker is interrupted and
held until the utterance ends (or the press is released), so the assistant does not talk
over the person; its answer to what they said comes next. Meanwhile no new guidance request
starts, so the model is free for the question.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from lavia_live.config.settings import ServeSettings
from lavia_live.contract.tasks import TaskContext, TaskLibrary
from lavia_live.errors import TaskDefinitionError
from lavia_live.server.assistant import LiveAssistant
from lavia_live.server.listener import Listener
from lavia_live.server.protocol import (
    CHANNEL_LABEL,
    ErrorEvent,
    HelloEvent,
    ProtocolError,
    QuestionMessage,
    ResetMessage,
    ServerEvent,
    SpeechMessage,
    StateEvent,
    TalkMessage,
    TaskInfo,
    TaskMessage,
    parse_client_message,
)
from lavia_live.server.speaker import Speaker

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
ECHO_TAIL_S = 0.3  # the assistant's voice may still be heard this long after it stops
TALK_HOLD_S = 60.0  # a push-to-talk press never released keeps the voice quiet this long
GUIDANCE_PAUSE_S = 8.0  # longest pause of guidance requests while the person speaks
MAX_BUFFERED_BYTES = 1 << 20  # a client this far behind gets no more state events


def ice_configuration(settings: ServeSettings) -> RTCConfiguration:
    """STUN/TURN servers from the settings; none by default (aiortc's default STUN server
    is on the internet, and gathering waits for it)."""
    servers = [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
        for s in settings.ice_servers
    ]
    return RTCConfiguration(iceServers=servers)


class Session:
    def __init__(
        self,
        sid: str,
        settings: ServeSettings,
        library: TaskLibrary,
        task: TaskContext,
        make_assistant: Callable[[Session, TaskContext], LiveAssistant],
        on_closed: Callable[[Session], None],
        make_speaker: Callable[[Session], Speaker] | None = None,
        make_listener: Callable[[Session], Listener] | None = None,
    ) -> None:
        self.sid = sid
        self.settings = settings
        self.library = library
        self.pc = RTCPeerConnection(ice_configuration(settings))
        self.channel: RTCDataChannel | None = None
        self.assistant = make_assistant(self, task)
        self.speaker: Speaker | None = None
        self._make_speaker = make_speaker
        self.listener: Listener | None = None
        self._make_listener = make_listener
        self._on_closed = on_closed
        self._tasks: set[asyncio.Task[None]] = set()
        self._video = False
        self._connected = asyncio.Event()
        self._talking = False  # a push-to-talk press is held
        self._closing: asyncio.Task[None] | None = None
        self.close_reason = ""
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    @property
    def task(self) -> TaskContext:
        return self.assistant.task

    # -- lifecycle ------------------------------------------------------------------

    async def accept(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Answer the client's offer (ICE gathered: aiortc does not trickle). When the offer
        has an audio section the client receives, the answer sends the assistant's voice."""
        await self.pc.setRemoteDescription(offer)
        speaker = None
        if self._make_speaker is not None and any(
            t.kind == "audio" for t in self.pc.getTransceivers()
        ):
            speaker = self._make_speaker(self)
            self.pc.addTrack(speaker.track)  # the offer's first audio transceiver
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        if speaker is not None:
            sending = [
                t
                for t in self.pc.getTransceivers()
                if t.sender.track is speaker.track
                and t.currentDirection in ("sendonly", "sendrecv")
            ]
            if sending:
                self.speaker = speaker
                self._spawn(speaker.run(), "speaker")
            else:  # audio offered, but only to send (a microphone): nothing to speak to
                speaker.track.stop()
        self._spawn(self._watchdog(), "watchdog")
        self._spawn(self._tick(), "state")
        return self.pc.localDescription

    def close(self, reason: str) -> asyncio.Task[None]:
        """End the session (idempotent); the returned task finishes once all is closed."""
        if self._closing is None:
            self.close_reason = reason
            self._closing = asyncio.create_task(self._close(), name=f"lavia-close-{self.sid}")
        return self._closing

    async def _close(self) -> None:
        log.info("session closing: %s", self.close_reason, extra={"session": self.sid})
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self.speaker is not None:
            self.speaker.stop()
            self.speaker.track.stop()
        if self.listener is not None:
            self.listener.close()
        await self.assistant.close()
        try:
            await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("peer connection did not close in time", extra={"session": self.sid})
        self._on_closed(self)

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro, name=f"lavia-{what}-{self.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watchdog(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self.settings.connect_timeout_s)
        except TimeoutError:
            self.close(f"not connected within {self.settings.connect_timeout_s:g} s")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("connection %s", state, extra={"session": self.sid})
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed"):
            self.close(f"connection {state}")

    # -- media ----------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and not self._video:
            self._video = True
            self._spawn(self._read_video(track), "video")
        elif track.kind == "audio" and self.listener is None and self._make_listener:
            listener = self.listener = self._make_listener(self)
            listener.on_speech_start = self._on_speech_start
            listener.on_speech_end = self._on_speech_end
            self._spawn(listener.run(track), "listen")
        else:  # a second audio or video track, or listening is off: read and discard
            self._spawn(self._drain(track), "drain")

    def assistant_speaking(self) -> bool:
        """The assistant's voice is playing or has just stopped (it may still echo). Never
        while push-to-talk is held: the press stopped the voice, and the client stops
        playing it."""
        speaker = self.speaker
        if speaker is None or self._talking:
            return False
        return speaker.track.voiced_within(ECHO_TAIL_S)

    def _on_speech_start(self, utterance_id: str) -> None:
        """The person started speaking (the VAD's first voiced window): barge-in."""
        log.debug("voice %s started", utterance_id, extra={"session": self.sid})
        assert self.listener is not None
        if self.listener.settings.barge_in:
            self._barge_in(self.listener.settings.max_utterance_s + 2.0)
        self._pause_guidance(True)

    def _on_speech_end(self, utterance_id: str) -> None:
        if self.speaker is not None and not self._talking:
            self.speaker.hold(None)
        if not self._talking:
            self._pause_guidance(False)

    def _pause_guidance(self, pause: bool) -> None:
        """While the person speaks, no new guidance request starts (for at most
        :data:`GUIDANCE_PAUSE_S`): the model is free for their question when its words are
        known (``listening.pause_guidance``)."""
        if self.listener is not None and self.listener.settings.pause_guidance:
            self.assistant.pause_guidance(GUIDANCE_PAUSE_S if pause else None)

    def _barge_in(self, hold_s: float) -> None:
        """Stop the assistant's voice and the rest of what it was saying; say nothing new
        for ``hold_s`` or until the person is done."""
        speaker = self.speaker
        if speaker is None:
            return
        if speaker.interrupt():
            log.info("barge-in: the voice was cut", extra={"session": self.sid})
        speaker.hold(hold_s)

    def _talk(self, message: TalkMessage) -> None:
        """Push-to-talk: a press interrupts (and pauses end nothing until the release), a
        release ends the utterance at once."""
        if message.state == "start":
            self._talking = True
            self._barge_in(TALK_HOLD_S)
            self._pause_guidance(True)
            if self.listener is not None:
                self.listener.press()
            return
        self._talking = False
        self._pause_guidance(False)
        if self.listener is not None:
            self.listener.release()
        if self.speaker is not None:
            self.speaker.hold(None)  # the person is done: the answer may come

    async def _read_video(self, track: MediaStreamTrack) -> None:
        timeout = self.settings.idle_timeout_s
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), timeout)
            except TimeoutError:
                self.send(ErrorEvent(code="no_video", message=f"no video for {timeout:g} s"))
                self.close(f"no video for {timeout:g} s")
                return
            except MediaStreamError:
                self.send(ErrorEvent(code="video_ended", message="the video track ended"))
                self.close("video track ended")
                return
            if isinstance(frame, av.VideoFrame):
                await self.assistant.offer_frame(frame)

    async def _drain(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                await asyncio.wait_for(track.recv(), self.settings.idle_timeout_s)
            except (TimeoutError, MediaStreamError):
                return

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.settings.state_interval_s)
            self.send(self.assistant.state())

    # -- data channel ---------------------------------------------------------------

    def send(self, event: ServerEvent) -> None:
        if self.speaker is not None and self._closing is None:
            self.speaker.observe(event)
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        if isinstance(event, StateEvent) and channel.bufferedAmount > MAX_BUFFERED_BYTES:
            return  # a slow client: skip the periodic state, keep the events that matter
        channel.send(event.model_dump_json())

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL_LABEL or self.channel is not None:
            log.info("ignoring data channel %r", channel.label, extra={"session": self.sid})
            return
        self.channel = channel
        channel.on("message", self._on_message)
        self.send(
            HelloEvent(
                session=self.sid,
                task=TaskInfo.of(self.task),
                engine=self.assistant.engine.name,
                speech=self.speaker.info() if self.speaker is not None else None,
                listening=self.listener.info() if self.listener is not None else None,
            )
        )

    def _on_message(self, data: str | bytes) -> None:
        try:
            message = parse_client_message(data)
        except ProtocolError as exc:
            self.assistant.report(exc.code, exc.message)
            return
        if isinstance(message, QuestionMessage):
            self.assistant.ask(message.text, message.id)
        elif isinstance(message, TaskMessage):
            try:
                task = self.library.require(message.task)
            except TaskDefinitionError as exc:
                self.assistant.report("unknown_task", str(exc))
                return
            if self.speaker is not None:
                self.speaker.stop()
            self.assistant.switch_task(task)
        elif isinstance(message, ResetMessage):
            if self.speaker is not None:
                self.speaker.stop()
            self.assistant.reset()
        elif isinstance(message, TalkMessage):
            self._talk(message)
        else:
            self._configure_speech(message)

    def _configure_speech(self, message: SpeechMessage) -> None:
        speaker = self.speaker
        if speaker is None:
            msg = "this session has no voice: offer to receive audio (and keep speech enabled)"
            self.assistant.report("speech_unavailable", msg)
            return
        if message.voice is not None and message.voice not in speaker.synthesizer.voices:
            known = ", ".join(speaker.synthesizer.voices)
            self.assistant.report("unknown_voice", f"no voice {message.voice!r}; known: {known}")
            return
        speaker.configure(muted=message.muted, voice=message.voice, rate_wpm=message.rate)
