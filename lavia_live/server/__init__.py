"""The live assistant server (``lavia serve``), following DESIGN.md's live data flow:

- :mod:`.app`        aiohttp routes: the page, ``/offer``, ``/api/*``, ``/healthz``, ``/metrics``
- :mod:`.protocol`   the versioned wire messages (signaling and data-channel events)
- :mod:`.session`    one peer: its tracks in, its events out, its lifecycle
- :mod:`.assistant`  the live loop: sampler, clip buffer, model requests, events
- :mod:`.scheduler`  one model request in flight per session, fair across sessions
- :mod:`.tracker`    the task's progress: what to announce, and sequence warnings
- :mod:`.speaker`    what is said aloud: guidance and answers, sentence by sentence
- :mod:`.audio`      the outgoing audio track: 20 ms frames at 48 kHz, silence when idle
- :mod:`.metrics`    Prometheus counters of one server
- :mod:`.tls`        certificates for serving beyond localhost
"""
