"""Runtime configuration: embedded defaults, a TOML file, environment overrides.

Precedence: keyword arguments > environment (``LLMSPELL_*``) > the file > defaults.
Every value is checked where it enters, and an error names where it came from (the
keyword, the variable or the file), what was wrong and what to use instead.
"""

from __future__ import annotations

import difflib
import math
import os
import stat
import tomllib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from llmspell.core.errors import ConfigurationError
from llmspell.core.text import is_utf8, printable
from llmspell.events.distributed import check_bus_url

__all__ = ["MAX_CONFIG_BYTES", "MAX_MEMORY_MB", "ScriptingConfig", "SystemConfig",
           "default_data_dir", "load_config"]

_STORES = ("sqlite", "memory", "none")
_BREAKERS = ("default", "production", "conservative", "off")
_CONTENT = ("none", "masked", "full")
_RECORD_LEVELS = ("off", "decisions", "full")
_WORD_FIELDS = ("store", "breaker", "record_content", "record")
"""The settings that take one of a few words, matched whatever their case."""

MAX_CONFIG_BYTES = 1024 * 1024
"""The largest configuration file :func:`load_config` reads (1 MiB): a settings file is
a few hundred bytes, and a path at ``/dev/zero`` or a huge file must not exhaust memory."""

MAX_MEMORY_MB = 1024 * 1024
"""The largest ``scripting.max_memory_mb`` and ``llmspell run --max-memory`` (1 TiB): more
bytes do not fit the script engines' C integers."""

_EXPECTED = {  # what a field takes, for the errors that say it was something else
    bool: "true or false (or 1/0, yes/no, on/off)",
    int: "a whole number",
    float: "a number",
    str: "a string",
    str | None: "a string (or None)",
    float | None: "a number of seconds (or None)",
    int | None: "a whole number (or None)",
    tuple[str, ...]: "a list of strings (a bare string would be read as one path per "
                     "character)",
}


def _shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error must not quote a huge value."""
    text = printable(repr(value))
    return text if len(text) <= limit else text[:limit] + "..."


def _expand(path: str) -> Path:
    """``path`` with a leading ``~`` expanded (a shell does not expand it inside quotes,
    in a TOML file or in a keyword argument)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # no $HOME and no password entry (a container's bare user id)
        raise ConfigurationError(
            f"cannot tell the home directory, which the data directory {_shown(path)} "
            "needs", hint="set HOME, or LLMSPELL_DATA_DIR (or data_dir) to an absolute "
                          "folder") from None


def default_data_dir() -> Path:
    """``$LLMSPELL_DATA_DIR``, else ``$XDG_DATA_HOME/llmspell``, else
    ``~/.local/share/llmspell``. A leading ``~`` is expanded; a relative
    ``$XDG_DATA_HOME`` is ignored, as the XDG specification says."""
    explicit = os.environ.get("LLMSPELL_DATA_DIR")
    if explicit and explicit.strip():
        return _expand(explicit)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = _expand(xdg) if xdg else None
    if base is None or not base.is_absolute():
        base = _expand("~/.local/share")
    return base / "llmspell"


_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True,
               "0": False, "false": False, "no": False, "off": False}
"""The words a boolean setting takes, in the environment, a file or a keyword."""

_TYPES: dict[type, dict[str, Any]] = {}
"""Per config class, its fields' annotations (resolved once)."""

_HINTS: dict[str, str] = {}
"""Per field (``scripting.`` for the scripting table's): what it takes, for errors."""


def _normalize(struct: msgspec.Struct, prefix: str) -> None:
    """Check every field of ``struct`` against its annotation and store the converted
    value: ``'false'`` for a bool is False (not a true string), ``'64'`` for an int is 64,
    a list for a tuple is a tuple; a bool is not a number, a string is not a list. The
    conversions are :func:`load_config`'s, so a keyword means the same to both."""
    kind = type(struct)
    types = _TYPES.get(kind)
    if types is None:
        types = _TYPES[kind] = typing.get_type_hints(kind)
    for name, expected in types.items():
        value = getattr(struct, name)
        if isinstance(value, os.PathLike):
            value = os.fsdecode(value)  # data_dir=Path(...): a path is a path
        elif expected is bool and isinstance(value, str):
            value = _BOOL_WORDS.get(value.strip().lower(), value)  # as in the environment
        if expected is ScriptingConfig and isinstance(value, Mapping):
            # Through its own checks, which name the key: scripting={'allow_env': True}.
            _check_keys(value, ScriptingConfig.__struct_fields__, f"{prefix}{name}: ")
            msgspec.structs.force_setattr(struct, name, ScriptingConfig(**value))
            continue
        try:
            converted = msgspec.convert(value, expected, strict=False)
        except msgspec.ValidationError as exc:
            what = _EXPECTED.get(expected, f"a {getattr(expected, '__name__', expected)} ({exc})")
            raise ConfigurationError(
                f"invalid {prefix}{name}: {_shown(value)} is not {what}",
                hint=_HINTS.get(prefix + name, f"give {prefix}{name} {what}")) from None
        if converted is not getattr(struct, name):
            msgspec.structs.force_setattr(struct, name, converted)


def _finite_positive(name: str, value: float, hint: str) -> None:
    if not math.isfinite(value) or not value > 0:
        raise ConfigurationError(f"{name} must be a finite number > 0, got {value}", hint=hint)


class ScriptingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What scripts may do and their limits (``[llmspell.scripting]`` in a config file):
    the same switches as the command line's ``--allow-*`` flags (docs/scripting-capabilities.md),
    ``time_budget`` (seconds of script time per call) and ``max_memory_mb`` per engine
    (None: the runner's default, 0.5 s for a ``ScriptHost`` and 30 s for ``llmspell run``;
    32 MB; at most 1048576, i.e. 1 TiB). For ``llmspell run``: ``persist_state`` keeps
    State and sessions in the data directory across runs (default: each run starts empty
    and keeps nothing), and ``max_state_bytes`` bounds what one run may store (default
    16 MiB). Values are checked and converted as :class:`SystemConfig`'s are."""

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
        _normalize(self, "scripting.")
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
        if self.max_memory_mb is not None and self.max_memory_mb > MAX_MEMORY_MB:
            raise ConfigurationError(
                f"scripting.max_memory_mb must be at most {MAX_MEMORY_MB} (1 TiB), got "
                f"{self.max_memory_mb}", hint="megabytes per script engine, e.g. 32")


class SystemConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of a :class:`~llmspell.runtime.system.System`.

    ``data_dir``: where the SQLite files live (a ``str`` or ``os.PathLike``, kept as a
    ``str``; a leading ``~`` is expanded, a relative path is relative to the working
    directory when the system is created; None or empty: :func:`default_data_dir`).
    ``store``: ``sqlite`` (events under ``data_dir/events.db``, the default), ``memory`` or
    ``none``. ``hook_events``: publish one ``hook.<point>`` event per dispatch that ran
    hooks (to subscribers; stored too only with ``persist_hook_events``).
    ``breaker``: ``default``, ``production``, ``conservative`` or ``off``.
    ``mask_event_data``: mask what ``tool.*`` events publish (the runtime's and the
    adapters'): values under sensitive keys (password, token, api_key, ...) and
    credential-shaped text (API keys, bearer tokens, private keys, ``password=...``) in
    the parameters, results and error messages, as ``record_content="masked"`` masks
    model content (hooks see the full values). ``record_content``:
    what ``model.*`` events keep of prompts and replies (``none``, ``masked``, ``full``;
    see :mod:`llmspell.runtime.content`). ``record``: what a run records for replay
    (``off``, ``decisions``: the default, everything replay needs and every hook result
    that changed something; ``full``: also every hook execution and the context it saw;
    see docs/runs.md). ``scripting``: the
    scripts' capabilities and limits (:class:`ScriptingConfig`, or a dict of its keys).
    ``bus``: a NATS URL
    (``nats://127.0.0.1:4222?namespace=...``) makes the event bus distributed across every
    process using it (docs/distributed.md); None (the default) or empty keeps the
    in-process bus. ``session_retention``: seconds (a finite number > 0) an ended session is
    kept; the system then purges older ended sessions when it starts and periodically
    (:func:`~llmspell.runtime.sessions.retention_interval`); None (the default) keeps them
    until deleted. ``session_max_checkpoints``: the most checkpoints one session keeps (each
    is a full copy of its state; default 1000): a checkpoint under a new label past it is
    refused (reusing a label replaces that checkpoint).

    Every value is checked when the config is built, a bad one raising
    :class:`ConfigurationError` naming the field. Values are converted as
    :func:`load_config` converts them (``'false'`` is False, ``'64'`` is 64), but a bool is
    not a number and a string is not a list. The environment is read by
    :func:`load_config`, not here (except for the default ``data_dir``).
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
    session_retention: float | None = None
    session_max_checkpoints: int = 1000

    def __post_init__(self) -> None:
        _normalize(self, "")
        if self.data_dir is not None and "\0" in self.data_dir:
            raise ConfigurationError(f"data_dir {_shown(self.data_dir)} holds a NUL character",
                                     hint=_HINTS["data_dir"])
        if self.bus is not None and not is_utf8(self.bus):
            raise ConfigurationError(f"bus {_shown(self.bus)} is not valid UTF-8 text",
                                     hint=_HINTS["bus"])
        if self.bus is not None and self.bus.strip():
            check_bus_url(self.bus)
        for name in _WORD_FIELDS:  # the words mean the same in any case: 'Memory', ' full'
            word = getattr(self, name)
            if word != (plain := word.strip().lower()):
                msgspec.structs.force_setattr(self, name, plain)
        if self.store not in _STORES:
            raise ConfigurationError(
                f"unknown store {_shown(self.store)}", hint=f"use one of: {', '.join(_STORES)}"
            )
        if self.breaker not in _BREAKERS:
            raise ConfigurationError(
                f"unknown breaker preset {_shown(self.breaker)}",
                hint=f"use one of: {', '.join(_BREAKERS)}",
            )
        if self.record_content not in _CONTENT:
            raise ConfigurationError(
                f"unknown record_content {_shown(self.record_content)}",
                hint=f"use one of: {', '.join(_CONTENT)}",
            )
        if self.record not in _RECORD_LEVELS:
            raise ConfigurationError(
                f"unknown record level {_shown(self.record)}",
                hint=f"use one of: {', '.join(_RECORD_LEVELS)}",
            )
        if self.queue_size < 1:
            raise ConfigurationError(f"queue_size must be >= 1, got {self.queue_size}",
                                     hint=_HINTS["queue_size"])
        _finite_positive("tool_timeout", self.tool_timeout, _HINTS["tool_timeout"])
        if self.session_retention is not None:
            _finite_positive("session_retention", self.session_retention,
                             _HINTS["session_retention"])
        if self.session_max_checkpoints < 1:
            raise ConfigurationError(f"session_max_checkpoints must be >= 1, got "
                                     f"{self.session_max_checkpoints}",
                                     hint=_HINTS["session_max_checkpoints"])

    @property
    def resolved_data_dir(self) -> Path:
        """The data directory to use (a leading ``~`` expanded)."""
        return _expand(self.data_dir) if self.data_dir else default_data_dir()


_HINTS.update({
    "data_dir": "a folder path (str or pathlib.Path), e.g. '~/.local/share/llmspell'",
    "store": f"one of: {', '.join(_STORES)}",
    "breaker": f"one of: {', '.join(_BREAKERS)}",
    "record_content": f"one of: {', '.join(_CONTENT)}",
    "record": f"one of: {', '.join(_RECORD_LEVELS)}",
    "queue_size": "a whole number >= 1 (default 1024)",
    "tool_timeout": "seconds, a finite number > 0 (default 30)",
    "bus": "a NATS URL such as 'nats://127.0.0.1:4222', or None for the in-process bus",
    "session_retention": "seconds an ended session is kept, a finite number > 0 (e.g. "
                         "2592000 for 30 days), or None (the default) to keep sessions "
                         "until deleted",
    "session_max_checkpoints": "a whole number >= 1 of checkpoints one session keeps "
                               "(default 1000)",
    "scripting": "a ScriptingConfig, or a table/dict of its keys "
                 f"({', '.join(ScriptingConfig.__struct_fields__)})",
    "scripting.allow_read": "the paths scripts may read, e.g. ['/data']",
    "scripting.allow_write": "the paths scripts may write, e.g. ['/tmp/out']",
    "scripting.time_budget": "seconds of script time per call, e.g. 0.5",
    "scripting.max_memory_mb": f"megabytes per script engine, 1 to {MAX_MEMORY_MB}, e.g. 32",
    "scripting.max_state_bytes": "a whole number of bytes >= 1, e.g. 16777216",
})


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
    "LLMSPELL_SESSION_RETENTION": ("session_retention", float),
    "LLMSPELL_SESSION_MAX_CHECKPOINTS": ("session_max_checkpoints", int),
}


def _env_value(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        word = _BOOL_WORDS.get(raw.strip().lower())
        if word is not None:
            return word
        raise ConfigurationError(f"{name}={_shown(raw)} is not a boolean",
                                 hint="use true or false (also 1/0, yes/no, on/off)")
    if name == "LLMSPELL_DATA_DIR":
        return raw  # a path may start or end with a space
    # Spaces and a CR (a .env file written on Windows) around a word mean nothing: int()
    # and float() ignore them already, the words (store, breaker...) did not.
    raw = raw.strip()
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={_shown(raw)} is not a valid {kind.__name__}",
                                 hint=_HINTS.get(_ENV[name][0])) from None


def _read_file(file: Path) -> str:
    """The text of the configuration file ``file``: a regular file of at most
    :data:`MAX_CONFIG_BYTES`, UTF-8 (a BOM is dropped). Opened without blocking, so a
    FIFO is refused instead of waiting for a writer forever."""
    shown = printable(file)
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigurationError(f"config file {shown} does not exist",
                                 hint="check the path") from None
    except IsADirectoryError:
        raise ConfigurationError(f"config file {shown} is a directory",
                                 hint="give the path of a .toml file") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {shown}: {exc.strerror}",
                                 hint="check the path and its permissions") from None
    except ValueError:  # a NUL in the path
        raise ConfigurationError(f"config file {_shown(str(file))}: the path holds a NUL "
                                 "character", hint="check the path") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigurationError(f"config file {shown} is a directory",
                                     hint="give the path of a .toml file")
        if not stat.S_ISREG(mode):
            raise ConfigurationError(
                f"config file {shown} is not a regular file (a pipe, a device or a socket)",
                hint="write the configuration to a regular .toml file and give its path")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:  # one byte past the limit tells it is too large
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {shown}: {exc.strerror}",
                                 hint="check the path and its permissions") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigurationError(f"config file {shown} is larger than {MAX_CONFIG_BYTES} bytes",
                                 hint="a configuration file holds a few settings: check the "
                                      "path")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"config file {shown} is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
            f"at offset {exc.start})", hint="save the file as UTF-8") from None


def _check_keys(table: Iterable[str], valid: Iterable[str], where: str) -> None:
    """Unknown keys are an error (a misspelled key would otherwise do nothing, silently),
    naming them, the closest valid key and all the valid ones."""
    known = sorted(valid)
    unknown = sorted(str(key) for key in set(table) - set(known))
    if not unknown:
        return
    close = [match for key in unknown
             for match in difflib.get_close_matches(key, known, n=1, cutoff=0.6)]
    guess = f"did you mean {', '.join(dict.fromkeys(close))}? " if close else ""
    raise ConfigurationError(
        f"{where}unknown configuration key(s): {', '.join(_shown(k)[1:-1] for k in unknown)}",
        hint=f"{guess}valid keys: {', '.join(known)}")


def _build(values: Mapping[str, Any], where: str) -> SystemConfig:
    """``SystemConfig(**values)``, its errors prefixed with ``where`` (the source)."""
    _check_keys(values, SystemConfig.__struct_fields__, where)
    try:
        return SystemConfig(**values)
    except ConfigurationError as exc:
        if not where:
            raise
        raise ConfigurationError(where + exc.message, hint=exc.hint) from None


def load_config(path: str | Path | None = None, **overrides: Any) -> SystemConfig:
    """Build a config from ``path`` (TOML; a ``[llmspell]`` table or top-level keys), the
    environment (an empty ``LLMSPELL_*`` variable counts as not set), and ``overrides``
    (None: not given). Unknown keys are an error naming
    them, and so is a bad value, naming its source (the file, the variable, the keyword).
    The file must be a regular UTF-8 file of at most :data:`MAX_CONFIG_BYTES`."""
    values: dict[str, Any] = {}
    if path is not None:
        file = Path(path).expanduser()
        where = f"config file {printable(file)}: "
        try:
            parsed = tomllib.loads(_read_file(file))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {printable(file)} is not valid TOML: {exc}",
                                     hint="see https://toml.io for the syntax") from None
        except RecursionError:  # tomllib recurses per nested array or inline table
            raise ConfigurationError(f"config file {printable(file)} nests arrays or tables "
                                     "too deeply", hint="a configuration needs two levels "
                                                        "([llmspell] and [llmspell.scripting])"
                                     ) from None
        table = parsed.get("llmspell", parsed)
        if not isinstance(table, dict):
            raise ConfigurationError(f"config file {printable(file)}: [llmspell] must be a "
                                     "table", hint="write [llmspell] on a line of its own, "
                                                   "the settings under it")
        if table is not parsed:
            # With a [llmspell] table, the top level may belong to other tools; but one of
            # our keys there would be ignored without a word.
            stray = sorted(set(parsed) & set(SystemConfig.__struct_fields__))
            if stray:
                raise ConfigurationError(
                    f"{where}{', '.join(stray)} outside the [llmspell] table would be "
                    "ignored", hint="move it under [llmspell] (before any other table "
                                    "header), or drop the [llmspell] header")
        _build(table, where)
        values.update(table)
    for name, (field, kind) in _ENV.items():
        raw = os.environ.get(name)
        # An empty variable (NAME= in a .env file or a compose file) means "not set", for
        # every variable, as it always did for LLMSPELL_DATA_DIR.
        if raw is not None and raw.strip():
            value = _env_value(name, raw, kind)
            _build({field: value}, f"{name}={_shown(raw)}: ")
            values[field] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _build(values, "")
