"""Runtime configuration: embedded defaults, a TOML file, environment overrides.

Precedence: keyword arguments > environment (``LLMSPELL_*``) > the file > defaults.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from llmspell.core.errors import ConfigurationError
from llmspell.events.distributed import check_bus_url

__all__ = ["ScriptingConfig", "SystemConfig", "default_data_dir", "load_config"]

_STORES = ("sqlite", "memory", "none")
_BREAKERS = ("default", "production", "conservative", "off")
_CONTENT = ("none", "masked", "full")
_RECORD_LEVELS = ("off", "decisions", "full")


def default_data_dir() -> Path:
    """``$LLMSPELL_DATA_DIR``, else ``$XDG_DATA_HOME/llmspell``, else
    ``~/.local/share/llmspell``."""
    explicit = os.environ.get("LLMSPELL_DATA_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "llmspell"


class ScriptingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What scripts may do and their limits (``[llmspell.scripting]`` in a config file):
    the same switches as the command line's ``--allow-*`` flags (docs/scripting-capabilities.md),
    ``time_budget`` (seconds of script time per call) and ``max_memory_mb`` per engine
    (None: the runner's default, 0.5 s for a ``ScriptHost`` and 30 s for ``llmspell run``;
    32 MB). For ``llmspell run``: ``persist_state`` keeps State and sessions in the data
    directory across runs (default: each run starts empty and keeps nothing), and
    ``max_state_bytes`` bounds what one run may store (default 16 MiB)."""

    allow_env: bool = False
    allow_read: tuple[str, ...] = ()
    allow_write: tuple[str, ...] = ()
    allow_exec: bool = False
    allow_net: bool = False
    allow_all: bool = False
    time_budget: float | None = None
    max_memory_mb: int | None = None
    persist_state: bool = False
    max_state_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_state_bytes < 1:
            raise ConfigurationError(f"scripting.max_state_bytes must be >= 1, got "
                                     f"{self.max_state_bytes}", hint="e.g. 16777216")
        if self.time_budget is not None and not math.isfinite(self.time_budget):
            raise ConfigurationError(f"scripting.time_budget must be finite, got "
                                     f"{self.time_budget}",
                                     hint="seconds of script time per call, e.g. 0.5")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigurationError(f"scripting.time_budget must be > 0, got {self.time_budget}",
                                     hint="seconds of script time per call, e.g. 0.5")
        if self.max_memory_mb is not None and self.max_memory_mb < 1:
            raise ConfigurationError(f"scripting.max_memory_mb must be >= 1, got "
                                     f"{self.max_memory_mb}", hint="e.g. 32")


class SystemConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of a :class:`~llmspell.runtime.system.System`.

    ``store``: ``sqlite`` (events under ``data_dir/events.db``, the default), ``memory`` or
    ``none``. ``hook_events``: publish one ``hook.<point>`` event per dispatch that ran
    hooks (to subscribers; stored too only with ``persist_hook_events``).
    ``breaker``: ``default``, ``production``, ``conservative`` or ``off``.
    ``mask_event_data``: mask sensitive keys (password, token, api_key, ...) in the
    parameters and results the runtime publishes in ``tool.*`` events. ``record_content``:
    what ``model.*`` events keep of prompts and replies (``none``, ``masked``, ``full``;
    see :mod:`llmspell.runtime.content`). ``record``: what a run records for replay
    (``off``, ``decisions``: the default, everything replay needs and every hook result
    that changed something; ``full``: also every hook execution and the context it saw;
    see docs/runs.md). ``scripting``: the
    scripts' capabilities and limits (:class:`ScriptingConfig`). ``bus``: a NATS URL
    (``nats://127.0.0.1:4222?namespace=...``) makes the event bus distributed across every
    process using it (docs/distributed.md); None (the default) or empty keeps the
    in-process bus.
    """

    data_dir: str | None = None
    store: str = "sqlite"
    hook_events: bool = True
    persist_hook_events: bool = False
    breaker: str = "default"
    monitor: bool = True
    queue_size: int = 1024
    tool_timeout: float = 30.0
    mask_event_data: bool = True
    record_content: str = "masked"
    record: str = "decisions"
    scripting: ScriptingConfig = ScriptingConfig()
    bus: str | None = None

    def __post_init__(self) -> None:
        if self.bus is not None and self.bus.strip():
            check_bus_url(self.bus)
        if self.store not in _STORES:
            raise ConfigurationError(
                f"unknown store {self.store!r}", hint=f"use one of: {', '.join(_STORES)}"
            )
        if self.breaker not in _BREAKERS:
            raise ConfigurationError(
                f"unknown breaker preset {self.breaker!r}",
                hint=f"use one of: {', '.join(_BREAKERS)}",
            )
        if self.record_content not in _CONTENT:
            raise ConfigurationError(
                f"unknown record_content {self.record_content!r}",
                hint=f"use one of: {', '.join(_CONTENT)}",
            )
        if self.record not in _RECORD_LEVELS:
            raise ConfigurationError(
                f"unknown record level {self.record!r}",
                hint=f"use one of: {', '.join(_RECORD_LEVELS)}",
            )
        if self.queue_size < 1:
            raise ConfigurationError("queue_size must be >= 1")
        if not self.tool_timeout > 0:
            raise ConfigurationError("tool_timeout must be > 0 seconds")

    @property
    def resolved_data_dir(self) -> Path:
        """The data directory to use."""
        return Path(self.data_dir) if self.data_dir else default_data_dir()


_ENV: dict[str, tuple[str, type]] = {
    "LLMSPELL_DATA_DIR": ("data_dir", str),
    "LLMSPELL_STORE": ("store", str),
    "LLMSPELL_HOOK_EVENTS": ("hook_events", bool),
    "LLMSPELL_PERSIST_HOOK_EVENTS": ("persist_hook_events", bool),
    "LLMSPELL_BREAKER": ("breaker", str),
    "LLMSPELL_MONITOR": ("monitor", bool),
    "LLMSPELL_QUEUE_SIZE": ("queue_size", int),
    "LLMSPELL_TOOL_TIMEOUT": ("tool_timeout", float),
    "LLMSPELL_MASK_EVENT_DATA": ("mask_event_data", bool),
    "LLMSPELL_RECORD_CONTENT": ("record_content", str),
    "LLMSPELL_RECORD": ("record", str),
    "LLMSPELL_BUS": ("bus", str),
}


def _env_value(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(f"{name}={raw!r} is not a boolean", hint="use true or false")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def load_config(path: str | Path | None = None, **overrides: Any) -> SystemConfig:
    """Build a config from ``path`` (TOML; a ``[llmspell]`` table or top-level keys), the
    environment, and ``overrides``. Unknown keys are an error naming them."""
    values: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            parsed = tomllib.loads(file.read_bytes().decode("utf-8-sig"))
        except FileNotFoundError:
            raise ConfigurationError(f"config file {file} does not exist") from None
        except IsADirectoryError:
            raise ConfigurationError(f"config file {file} is a directory",
                                     hint="give the path of a .toml file") from None
        except OSError as exc:
            raise ConfigurationError(f"cannot read config file {file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigurationError(
                f"config file {file} is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                f"at offset {exc.start})", hint="save the file as UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {file} is not valid TOML: {exc}") from None
        table = parsed.get("llmspell", parsed)
        if not isinstance(table, dict):
            raise ConfigurationError(f"config file {file}: [llmspell] must be a table")
        values.update(table)
    for name, (field, kind) in _ENV.items():
        raw = os.environ.get(name)
        if raw is not None:
            values[field] = _env_value(name, raw, kind)
    values.update({k: v for k, v in overrides.items() if v is not None})
    fields = set(SystemConfig.__struct_fields__)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigurationError(
            f"unknown configuration key(s): {', '.join(unknown)}",
            hint=f"valid keys: {', '.join(sorted(fields))}",
        )
    try:
        return msgspec.convert(values, SystemConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"invalid configuration: {exc}") from None
