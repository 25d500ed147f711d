"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own so that
several servers in one process (tests, benchmarks) keep separate counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("lavia_sessions_active", "live sessions now", registry=r)
        self.sessions_total = Counter(
            "lavia_sessions_started",
            "offers by outcome (accepted, refused, bad_sdp)",
            ["outcome"],
            registry=r,
        )
        self.frames_received = Counter("lavia_frames_received", "video frames received", registry=r)
        self.frames_sampled = Counter(
            "lavia_frames_sampled", "frames kept by the sampler and converted", registry=r
        )
        self.frames_dropped = Counter(
            "lavia_frames_dropped",
            "sampled frames dropped because the previous one was still being converted",
            registry=r,
        )
        self.engine_latency = Histogram(
            "lavia_engine_latency_seconds",
            "engine time per request",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.guidance_events = Counter(
            "lavia_guidance_events", "guidance announcements sent", registry=r
        )
        self.unparsed_answers = Counter(
            "lavia_unparsed_answers", "model answers the guidance parser could not read", registry=r
        )
        self.questions = Counter("lavia_questions", "questions asked", registry=r)
        self.utterances = Counter(
            "lavia_utterances",
            "utterances heard by outcome (question, empty, dropped, error)",
            ["outcome"],
            registry=r,
        )
        self.recognition_latency = Histogram(
            "lavia_recognition_latency_seconds",
            "end of an utterance to its final transcript (queue and recognition)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("lavia_errors", "errors by code", ["code"], registry=r)
        self.engine_tokens = Counter(
            "lavia_engine_tokens",
            "tokens the engine reported, all sessions (prompt, completion)",
            ["kind"],
            registry=r,
        )
        self.engine_cost = Counter(
            "lavia_engine_cost_usd",
            "engine cost at the configured prices (engine.price_per_mtok_*), all sessions",
            registry=r,
        )
        self.cancelled_requests = Counter(
            "lavia_engine_requests_cancelled",
            "model requests cancelled by reason (superseded, reset, withdrawn)",
            ["reason"],
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
