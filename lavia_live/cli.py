"""The ``lavia`` command.

Commands of the live package are defined here; other packages add theirs through the
``lavia.commands`` entry-point group (a callable that takes the sub-parser collection), so
``lavia_live`` never imports them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import BaseModel

from lavia_live import __version__
from lavia_live.config import Loaded, Settings, load_settings
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.errors import LaviaError
from lavia_live.logs import configure_logging

M = TypeVar("M", bound=BaseModel)
Command = Callable[[argparse.Namespace], int]


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that reads configuration takes."""
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "-c", "--config", action="append", default=[], metavar="FILE",
        help="YAML config file (repeatable; later files win)",
    )  # fmt: skip
    group.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override one setting, e.g. --set sampling.clip_frames=15 (wins over all else)",
    )  # fmt: skip


def apply_setting_flags(args: argparse.Namespace, flags: Mapping[str, str]) -> None:
    """Turn the options that are settings (option dest -> dotted key) into ``--set``
    overrides, so flags win over files and environment and ``lavia config`` shows them."""
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            args.overrides.append(f"{key}={value}")


def load_config(args: argparse.Namespace, model: type[M]) -> Loaded[M]:
    """Load ``model`` from the command's ``--config`` files, ``LAVIA_*`` and ``--set``."""
    return load_settings(model, files=args.config, overrides=args.overrides)


def _cmd_config(args: argparse.Namespace) -> int:
    loaded = load_config(args, Settings)
    rows = loaded.rows()
    if args.json:
        print(json.dumps({k: {"value": v, "source": s} for k, v, s in rows}, indent=2))
        return 0
    width = max(len(k) for k, _, _ in rows)
    shown = [(k, json.dumps(v), s) for k, v, s in rows]
    vwidth = max(len(v) for _, v, _ in shown)
    for key, value, source in shown:
        print(f"{key:<{width}}  {value:<{vwidth}}  # {source}")
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    settings = load_config(args, Settings).settings
    library = TaskLibrary.load(args.folder or settings.tasks.folder)
    if args.task_id:
        task = library.require(args.task_id)
        print(f"{task.id}: {task.title}")
        for i, step in enumerate(task.steps, start=1):
            print(f"  {i}. {step}")
        if task.guideline:
            print(f"\nGuideline: {task.guideline}")
        return 0
    for task in library.values():
        print(f"{task.id:<28} {len(task.steps):>2} steps  {task.title}")
    return 0


# ``lavia serve`` / ``lavia watch`` options that are settings -> the key they override
_SERVE_FLAGS = {
    "host": "serve.host",
    "port": "serve.port",
    "engine": "engine.name",
    "engine_url": "engine.name",
    "model": "engine.launch.model",
    "sglang_python": "engine.launch.python",
    "tp": "engine.launch.tp",
    "api_model": "engine.api_model",
    "api_key_env": "engine.api_key_env",
    "device": "engine.device",
    "tls_cert": "serve.tls_cert",
    "tls_key": "serve.tls_key",
    "max_sessions": "serve.max_sessions",
    "task": "tasks.default_task",
}


def _serve_settings(args: argparse.Namespace) -> Settings:
    apply_setting_flags(args, _SERVE_FLAGS)
    if getattr(args, "sglang_args", None):
        launch_args = [part for text in args.sglang_args for part in shlex.split(text)]
        args.overrides.append(f"engine.launch.args={json.dumps(launch_args)}")
    if getattr(args, "self_signed", False):
        args.overrides.append("serve.self_signed=true")
    return load_config(args, Settings).settings


def _cmd_serve(args: argparse.Namespace) -> int:
    from lavia_live.server.run import serve

    return asyncio.run(serve(_serve_settings(args)))


def _cmd_watch(args: argparse.Namespace) -> int:
    from lavia_live.server.run import watch

    settings = _serve_settings(args)
    return asyncio.run(
        watch(args.source, settings, server=args.server, fast=args.fast, source_format=args.format)
    )


# ``lavia model-server`` options that are settings -> the key they override
_MODEL_SERVER_FLAGS = {
    "model": "engine.name",
    "device": "engine.device",
    "host": "model_server.host",
    "port": "model_server.port",
    "model_id": "model_server.model_id",
}


def _cmd_model_server(args: argparse.Namespace) -> int:
    from lavia_live.server.run import model_server

    apply_setting_flags(args, _MODEL_SERVER_FLAGS)
    return asyncio.run(model_server(load_config(args, Settings).settings))


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected http(s)://HOST:PORT/v1, got {text!r}")
    return text


def _engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    which = group.add_mutually_exclusive_group()
    which.add_argument(
        "--engine", metavar="ENGINE",
        help="embedded (default), a model folder, openai:MODEL, an OpenAI-compatible URL, or "
        "sglang: an SGLang server lavia starts, watches and stops (--model, --sglang-python)",
    )  # fmt: skip
    which.add_argument(
        "--engine-url", metavar="URL", type=_url,
        help="attach to an OpenAI-compatible server already running, e.g. SGLang at "
        "http://HOST:30000/v1 (the model it serves is asked for when --api-model is not given)",
    )  # fmt: skip
    group.add_argument("--model", metavar="PATH", help="--engine sglang: the checkpoint served")
    group.add_argument(
        "--sglang-python", metavar="PYTHON",
        help="--engine sglang: the interpreter of SGLang's environment (default python3)",
    )  # fmt: skip
    group.add_argument("--tp", type=int, metavar="N", help="--engine sglang: tensor-parallel GPUs")
    group.add_argument(
        "--sglang-arg", action="append", dest="sglang_args", metavar="ARGS",
        help="--engine sglang: more launch_server arguments, quoted, e.g. --sglang-arg "
        "'--dp-size 2' (repeatable)",
    )  # fmt: skip
    group.add_argument("--api-model", help="model name at an endpoint URL")
    group.add_argument("--api-key-env", help="variable holding the API key ('' for none)")
    group.add_argument("--device", help="device of an in-process model (cpu, cuda, cuda:1)")
    group.add_argument("--task", help="task id (default: tasks.default_task)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lavia",
        description="LaViA Live: real-time task guidance from live video, and the pipeline "
        "that builds its datasets and models.",
    )
    parser.add_argument("--version", action="version", version=f"lavia {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--log-format", choices=["text", "json"], help="log line format")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "config", help="print the effective configuration and where each value came from"
    )
    add_config_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("tasks", help="list the task library, or show one task's steps")
    add_config_options(p)
    p.add_argument("task_id", nargs="?", help="a task id to show in full")
    p.add_argument("--folder", help="task folder (default: the configured or shipped one)")
    p.set_defaults(func=_cmd_tasks)

    p = sub.add_parser(
        "serve",
        help="the live assistant: a web page that watches the camera and guides",
        description="Serve the live assistant: open the printed URL in a browser, pick a task "
        "and a camera (or the demo video), and follow the guidance. Browsers allow the camera "
        "only on https:// or localhost: beyond this machine use --self-signed or "
        "--tls-cert/--tls-key. A shared token (LAVIA_SERVE__TOKEN) is optional.",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, help="port (default 8080; 0: any free port)")
    p.add_argument("--tls-cert", metavar="PEM", help="HTTPS certificate (chain) file")
    p.add_argument("--tls-key", metavar="PEM", help="HTTPS private key file")
    p.add_argument(
        "--self-signed", action="store_true",
        help="HTTPS with a self-signed certificate made once (the browser warns once)",
    )  # fmt: skip
    p.add_argument("--max-sessions", type=int, help="concurrent sessions (default 8)")
    _engine_options(p)
    add_config_options(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "watch",
        help="run a recording (or camera) through the live assistant; events as JSON lines",
        description="SOURCE is a video file, or a camera FFmpeg can open with --format "
        "(e.g. --format v4l2 /dev/video0). Runs at the video's pace through the same live loop "
        "as lavia serve and prints each event as a JSON line with 't', the video time; "
        "--fast answers every clip without waiting for the clock; --server streams the video "
        "to a running lavia serve over WebRTC instead.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--fast", action="store_true", help="do not wait for the clock")
    p.add_argument("--format", help="FFmpeg input format of a device (v4l2, avfoundation)")
    p.add_argument("--server", metavar="URL", help="stream to a running lavia serve")
    _engine_options(p)
    add_config_options(p)
    p.set_defaults(func=_cmd_watch)

    p = sub.add_parser(
        "model-server",
        help="serve an in-process model over the OpenAI protocol (/v1/chat/completions)",
        description="Serve the embedded model or a model folder (e.g. the final/ folder "
        "lavia train wrote) at http://HOST:PORT/v1 for OpenAI-compatible clients: lavia serve "
        "--engine URL --api-model ID --api-key-env '' (several of them can share one GPU), "
        "lavia eval --model URL, or the openai SDK. Images come as data URLs; guidance "
        "requests are decoded held to the task's steps, as in-process. No API key is asked: "
        "keep it on a private network.",
    )
    p.add_argument("--model", metavar="PATH", help="embedded (default) or a model folder")
    p.add_argument("--model-id", help="the model's id for clients (default: the folder name)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, help="port (default 30000, as SGLang; 0: any free port)")
    p.add_argument("--device", help="device of the model (cpu, cuda, cuda:1)")
    add_config_options(p)
    p.set_defaults(func=_cmd_model_server)

    for ep in sorted(entry_points(group="lavia.commands"), key=lambda e: e.name):
        register: Callable[[Any], None] = ep.load()
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return 2
            level = {0: None, 1: "INFO"}.get(args.verbose, "DEBUG")
            try:
                model: type[Settings] = getattr(args, "settings_model", Settings)
                log = load_config(args, model).settings.logging if hasattr(args, "config") else None
                configure_logging(
                    level or (log.level if log else "WARNING"),
                    args.log_format or (log.format if log else "text"),
                )
                func: Command = args.func
                return func(args)
            except LaviaError as exc:
                print(f"lavia {args.command}: error: {exc}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"lavia {args.command}: interrupted", file=sys.stderr)
                return 130
        finally:
            # Write what is still buffered now, so that a reader gone away shows up below
            # rather than as an error while the interpreter exits.
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader of stdout went away (`lavia tasks | head -1`). Python's recipe: point
        # stdout at devnull so the flush at exit cannot fail again, and end quietly with the
        # status of a process killed by SIGPIPE, as other command-line tools do.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
