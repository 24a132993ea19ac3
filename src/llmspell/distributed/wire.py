"""What remote hook calls look like on the wire, and where they are sent.

A call is a NATS request on ``<prefix>.hooks.<hook name>`` (the prefix is the bus URL's,
``llmspell.<namespace>``); the servers of a hook subscribe there in one queue group, so
each call goes to one of them. The request's headers carry the caller's
:class:`~llmspell.distributed.context.DistributedHookContext` for this hop (signed when a
key is configured); its payload is a :class:`HookCall` in JSON: the hook's name, the point
and the :class:`~llmspell.hooks.HookContext` (without its local parent chain: the lineage
travels in the headers). The reply is a :class:`HookReply`: the hook's result (one of the
nine, in their JSON form), the data and metadata if the hook changed them in place, or why
there is no result (``error``: a refusal code, or ``hook_failed``); signed, when the server
has a key, and bound to the request by ``Llmspell-Reply-To`` (the request's nonce).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from llmspell.core.errors import ConfigurationError, InvalidValueError, SerializationError
from llmspell.hooks.context import HookContext

__all__ = [
    "FAILED",
    "MAX_PAYLOAD",
    "PROTOCOL",
    "REFUSALS",
    "REPLY_TO",
    "HookCall",
    "HookReply",
    "check_hook_name",
    "decode_call",
    "decode_reply",
    "decode_context",
    "encode",
    "hook_subject",
    "message_size",
]

PROTOCOL: Final = 1
"""The version of the call and reply formats."""
REPLY_TO: Final = "Llmspell-Reply-To"
"""The reply header naming the request (its signature nonce) a signed reply answers."""
FAILED: Final = "hook_failed"
"""The reply error code of a hook that ran and raised (or returned a bad value)."""
REFUSALS: Final = frozenset({
    "unsigned", "bad_signature", "unknown_key", "stale", "replayed", "replay_cache_full",
    "malformed", "too_large", "hop_limit", "deadline", "unknown_hook", "wrong_point",
    "stopping",
})
"""The reply error codes of a call the server refused without running the hook."""
MAX_PAYLOAD: Final = 1024 * 1024
"""The default bound, in bytes, of a call a server accepts and of a reply a client accepts
(payload and headers together; the NATS server's own default ``max_payload``): a server
refuses a larger call (``too_large``) before reading it, a client refuses a larger reply."""

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class HookCall(msgspec.Struct, frozen=True, kw_only=True):
    """A request: which hook, at which point, with which context (its JSON form)."""

    hook: str
    point: str
    context: msgspec.Raw
    v: int = PROTOCOL


class HookReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A reply: ``result`` (a HookResult's JSON form; empty when there is none) when the
    hook ran; ``data`` /
    ``metadata`` when it changed the context's in place; else ``error`` (a code of
    :data:`REFUSALS` or :data:`FAILED`), ``error_type`` and ``message``. ``server``
    names the process that answered (``host:pid``), ``duration_ns`` the hook's time."""

    result: msgspec.Raw = msgspec.Raw(b"")
    data: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    error: str | None = None
    error_type: str | None = None
    message: str = ""
    server: str = ""
    duration_ns: int = 0
    v: int = PROTOCOL


_ENCODER = msgspec.json.Encoder()
_CALL = msgspec.json.Decoder(HookCall)
_REPLY = msgspec.json.Decoder(HookReply)


def encode(message: HookCall | HookReply) -> bytes:
    """The JSON form of a call or reply."""
    return _ENCODER.encode(message)


def decode_call(payload: bytes) -> HookCall:
    """A call from its JSON form (``SerializationError`` naming what is wrong)."""
    try:
        return _CALL.decode(payload)
    except _UNREADABLE as exc:
        raise SerializationError(f"not a remote hook call: {_why(exc)}",
                                 hint="send calls with llmspell's RemoteHook") from None


def decode_reply(payload: bytes) -> HookReply:
    """A reply from its JSON form (``SerializationError`` naming what is wrong)."""
    try:
        return _REPLY.decode(payload)
    except _UNREADABLE as exc:
        raise SerializationError(f"not a remote hook reply: {_why(exc)}",
                                 hint="is the subject served by llmspell's HookServer?") from None


def decode_context(raw: bytes) -> HookContext:
    """The :class:`~llmspell.hooks.HookContext` of a call (``SerializationError`` naming
    what is wrong, for every way the bytes can be bad). A context that carries a
    ``parent`` chain is refused: callers send it without one (the lineage travels in the
    headers), so a chain can only be a peer's attempt to pass off a fake lineage."""
    try:
        ctx = HookContext.from_json(raw)
    except SerializationError:
        raise
    except (*_UNREADABLE, InvalidValueError) as exc:
        raise SerializationError(f"cannot decode a HookContext: {_why(exc)}",
                                 hint="send calls with llmspell's RemoteHook") from None
    if ctx.parent is not None:
        raise SerializationError("the call's context carries a parent chain",
                                 hint="send the context without its parent (RemoteHook does)")
    return ctx


def message_size(payload: bytes, headers: Mapping[str, str] | None) -> int:
    """The size of a message as the bounds count it: the payload and every header's name
    and value (in UTF-8)."""
    size = len(payload)
    for name, value in (headers or {}).items():
        size += len(name) + len(value.encode("utf-8", "replace")) + 4
    return size


# Bytes that are not UTF-8 surface from msgspec as UnicodeDecodeError, data nested deeper
# than the interpreter's recursion limit as RecursionError: both mean "not a message".
_UNREADABLE: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return f"a string is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    return str(exc)


def check_hook_name(name: str) -> str:
    """Return ``name`` if it can name a remote hook (it is a subject token: letters,
    digits, ``_`` and ``-``, at most 128 characters), else raise ``ConfigurationError``."""
    if not isinstance(name, str) or not name or len(name) > 128 \
            or not set(name) <= _NAME_CHARS:
        raise ConfigurationError(
            f"{name!r} cannot name a remote hook",
            hint="use letters, digits, '_' and '-' only (it becomes part of a NATS subject), "
                 "e.g. name='block_rm'")
    return name


def hook_subject(prefix: str, name: str) -> str:
    """The subject the calls of hook ``name`` are sent on."""
    return f"{prefix}.hooks.{check_hook_name(name)}"
