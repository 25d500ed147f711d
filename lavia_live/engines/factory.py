"""One place that turns an engine name into an engine.

- ``embedded``                 the embedded demo model (in-process, CPU)
- a folder                     a Hugging Face checkpoint in-process (``lavia train``'s ``final/``)
- ``openai:MODEL``             OpenAI's API (``OPENAI_API_KEY``), e.g. ``openai:gpt-4o``
- ``http(s)://HOST:PORT/v1``   any OpenAI-compatible server (SGLang, vLLM); ``api_model``
  names the model there
- ``sglang``                   a model server that ``lavia serve``/``watch`` start, watch and
  stop (``engine.launch``; :mod:`lavia_live.engines.managed_server`): not opened here

``lavia serve``, ``lavia watch`` and ``lavia eval`` all open their engine here.
"""

from __future__ import annotations

from pathlib import Path

from lavia_live.engines.base import Engine, EngineError
from lavia_live.engines.openai import OpenAIEngine, OpenAIEngineOptions
from lavia_live.models import EMBEDDED, EMBEDDED_FRAME_MAX_SIDE, model_folder

MANAGED_ENGINE = "sglang"
DEFAULT_FRAME_MAX_SIDE = 448
"""Longer side of the frames sent to an engine unless it was trained on other sizes."""


def open_engine(
    spec: str,
    *,
    api_model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    device: str = "cpu",
    dtype: str = "auto",
    cpu_threads: int = 0,
    steps_only: bool = True,
    beams: int = 1,
    image_detail: str | None = "low",
    vision_cache: int = 120,
    max_batch: int = 1,
    batch_window_s: float = 0.0,
    prefix_cache: int = 8,
) -> Engine:
    """The engine ``spec`` names (see the module docstring); :class:`EngineError` if it
    cannot be opened (no such folder, no API key, a model that does not load).
    ``cpu_threads`` > 0 sets torch's CPU threads (process-wide) for an in-process model;
    ``steps_only`` and ``beams`` are its guidance decoding, ``vision_cache`` the frames
    whose vision features it keeps, ``prefix_cache`` the tasks whose fixed prompt text it
    keeps encoded, ``max_batch`` and ``batch_window_s`` its batching of guidance requests
    (:class:`LocalEngine`);
    ``image_detail`` is an OpenAI-compatible server's image part detail (None: not sent)."""
    if not spec:
        raise EngineError("no engine given: use 'embedded', a model folder, openai:MODEL or a URL")
    if spec == MANAGED_ENGINE:
        raise EngineError(
            "engine 'sglang' is a server lavia serve and lavia watch start (engine.launch); "
            "here give its URL instead: http://HOST:PORT/v1"
        )
    if spec.startswith(("http://", "https://")):
        options = OpenAIEngineOptions(
            model=api_model or "default",
            base_url=spec,
            api_key_env=api_key_env,
            image_detail=image_detail,
        )
        return OpenAIEngine(options)
    if spec.startswith("openai:"):
        model = spec.split(":", 1)[1]
        return OpenAIEngine(
            OpenAIEngineOptions(model=model, api_key_env=api_key_env, image_detail=image_detail)
        )
    from lavia_live.engines.local import LocalEngine  # torch + transformers: only when needed

    folder = model_folder(spec)
    if spec != EMBEDDED and not Path(folder).is_dir():
        raise EngineError(
            f"engine '{spec}': no such model folder (expected 'embedded', a model folder, "
            "openai:MODEL or an http(s) URL)"
        )
    return LocalEngine(
        folder,
        device=device,
        dtype=dtype,
        cpu_threads=cpu_threads,
        steps_only=steps_only,
        beams=beams,
        vision_cache=vision_cache,
        max_batch=max_batch,
        batch_window_s=batch_window_s,
        prefix_cache=prefix_cache,
    )


def frame_max_side(spec: str) -> int:
    """Longer side of the frames an engine should get: what its training data used."""
    return EMBEDDED_FRAME_MAX_SIDE if spec == EMBEDDED else DEFAULT_FRAME_MAX_SIDE
