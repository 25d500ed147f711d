"""Layered configuration: defaults < YAML files < ``LAVIA_*`` environment < CLI flags.

Works for any pydantic settings model (the server's :class:`~lavia_live.config.settings.
Settings`, the offline pipeline's own models), and remembers where every value came from
so ``lavia config`` can show it. An unknown key or a bad value fails with a
:class:`~lavia_live.errors.ConfigError` naming the key and its source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lavia_live.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

DEFAULT_SOURCE = "default"
ENV_PREFIX = "LAVIA_"
ENV_CONFIG_FILE = "LAVIA_CONFIG"  # a YAML file to load, like --config


@dataclass(frozen=True)
class Loaded(Generic[M]):
    """A validated settings object and the source of each (dotted) key."""

    settings: M
    sources: Mapping[str, str]

    def rows(self) -> list[tuple[str, Any, str]]:
        """(key, value, source) for every leaf setting, in model order."""
        data = self.settings.model_dump(mode="json")
        return [(key, value, self.sources.get(key, DEFAULT_SOURCE)) for key, value in _leaves(data)]


def _leaves(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def _field_model(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    """The nested model type of ``model.key``, or None when the field is a plain value."""
    annotation = model.model_fields[key].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _merge(
    model: type[BaseModel],
    target: dict[str, Any],
    values: Mapping[str, Any],
    source: str,
    sources: dict[str, str],
    prefix: str = "",
) -> None:
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in model.model_fields:
            known = ", ".join(prefix + k for k in model.model_fields)
            raise ConfigError(f"unknown setting '{dotted}' (from {source}); known here: {known}")
        sub = _field_model(model, key)
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"setting '{dotted}' (from {source}) must be a mapping of keys")
            _merge(sub, target.setdefault(key, {}), value, source, sources, dotted + ".")
        else:
            target[key] = value
            sources[dotted] = source


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _scalar(text: str) -> Any:
    """A flag or environment value: YAML scalar/JSON syntax, else the plain string."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a config file must be a mapping of settings")
    return data


def load_settings(
    model: type[M],
    *,
    files: Sequence[str | Path] = (),
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    env_prefix: str = ENV_PREFIX,
) -> Loaded[M]:
    """Build ``model`` from the layers; later layers win.

    ``files``: YAML files, in order (``LAVIA_CONFIG`` in ``env`` adds one before them).
    ``env``: the environment (default ``os.environ``); ``{prefix}SECTION__KEY=value``.
    ``overrides``: CLI ``--set section.key=value`` strings.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    paths = [Path(f) for f in files]
    if env.get(ENV_CONFIG_FILE) and env_prefix == ENV_PREFIX:
        paths.insert(0, Path(env[ENV_CONFIG_FILE]))
    for path in paths:
        _merge(model, data, read_yaml(path), str(path), sources)
    for name in sorted(env):
        if not name.startswith(env_prefix) or name == ENV_CONFIG_FILE:
            continue
        dotted = name[len(env_prefix) :].lower().replace("__", ".")
        _merge(model, data, _nest(dotted, _scalar(env[name])), f"env {name}", sources)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        _merge(
            model, data, _nest(key.strip(), _scalar(value)), f"flag --set {key.strip()}", sources
        )
    try:
        settings = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources)) from exc
    return Loaded(settings, sources)


def _parents(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _under(dotted: str, key: str) -> bool:
    return dotted.startswith(key + ".")


def _explain(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for err in exc.errors():
        dotted = ".".join(str(p) for p in err["loc"])
        source = next(
            (s for k, s in sources.items() if dotted in (k, *_parents(k)) or _under(dotted, k)),
            DEFAULT_SOURCE,
        )
        value = err.get("input")
        shown = json.dumps(value, default=str) if not isinstance(value, Mapping) else "{...}"
        lines.append(f"setting '{dotted}' = {shown} (from {source}): {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
