"""Remote hooks: a hook in this process's chain whose body runs in a hook server elsewhere.

A :class:`RemoteHook` is an ordinary hook object (metadata, ``execute``): register it with
any :class:`~llmspell.hooks.HookRegistry` and it runs in its chain like a local hook, with
its priority, its timeout (enforced by the executor), its circuit breaker and its error
policy. Its ``execute`` sends the context to the servers of its name over NATS
request/reply (see :mod:`llmspell.distributed.wire`) and returns their result, which the
executor folds like any other: ``Modified`` data feeds the next hook, ``Cancel`` stops the
chain, and so on. A hook that changed the context's data or metadata in place on the
server has those changes applied here, as a local hook's would be.

When no result comes back, ``execute`` raises a
:class:`~llmspell.errors.RemoteHookError` saying why (no server, no answer in time, the
server refused the call, the hook raised there, a reply that cannot be trusted), and the
executor applies the error policy: ``fail_closed`` (the default for remote hooks) denies
with ``Cancel``, ``fail_open`` continues, ``raise`` raises.

A :class:`HookClient` holds the NATS connection (opened on first use) and the key; several
remote hooks share one. ``RemoteHook(name, point, url=...)`` makes a client of its own.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any, Final

import msgspec

from llmspell.core.errors import (
    ConfigurationError,
    DistributedContextError,
    RemoteHookError,
    RemoteHookFailedError,
    RemoteHookRefusedError,
    RemoteHookReplyError,
    RemoteHookTimeoutError,
    RemoteHookUnavailableError,
    SerializationError,
    SignatureError,
    TransportUnavailableError,
)
from llmspell.distributed.connection import config_of, connect
from llmspell.distributed.context import DistributedHookContext
from llmspell.distributed.signing import KEY_FROM_ENV, SIG_NONCE, KeyLike, signer_from
from llmspell.distributed.wire import (
    FAILED,
    MAX_PAYLOAD,
    REFUSALS,
    REPLY_TO,
    HookCall,
    check_hook_name,
    decode_reply,
    encode,
    hook_subject,
    message_size,
)
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import BaseHook, HookSpec
from llmspell.hooks.metadata import ErrorPolicy, HookMetadata, metadata_fields
from llmspell.hooks.points import parse_point
from llmspell.hooks.result import HookResult, Modified, result_from_json

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ["DEFAULT_TIMEOUT", "HookClient", "RemoteHook", "RemoteHookStats"]

DEFAULT_TIMEOUT: Final = 2.0
"""Seconds a remote hook waits for its answer unless told otherwise."""
_SPEC_ATTR = "__llmspell_hook__"  # what hooks.hook.hook_spec_of reads
_MARGIN = 0.005  # the request gives up this much before the executor's own timeout
_SERVER_CHARS = 128  # a reply's server name, as counted in stats()


class RemoteHookStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a client: calls made, answered with a result, failed (by error type),
    and the results per answering server (``host:pid``)."""

    calls: int
    answered: int
    failed: dict[str, int]
    by_server: dict[str, int]


class HookClient:
    """The connection remote hooks are called over (see the module docstring).

    ``url``: a bus URL (``LLMSPELL_BUS`` or ``nats://127.0.0.1:4222`` by default; its
    namespace selects the servers). ``key``: a :class:`~llmspell.distributed.Signer`, a
    :class:`~llmspell.distributed.SharedKey`, a secret, None for no signing, or, by
    default, the key in ``LLMSPELL_HOOK_KEY`` when that is set. With a key every call is
    signed and only replies signed with it are accepted. ``max_reply``: the largest reply
    accepted, in bytes (payload and headers; :data:`~llmspell.distributed.wire.MAX_PAYLOAD`
    by default). The connection is opened on the first call (or :meth:`connect`) and
    belongs to that event loop.
    """

    def __init__(self, url: str | None = None, *,
                 key: KeyLike = KEY_FROM_ENV,
                 name: str = "llmspell-hook-client", max_reply: int = MAX_PAYLOAD) -> None:
        self.config = config_of(url)
        self.signer = signer_from(key)
        if not isinstance(max_reply, int) or max_reply < 1024:
            raise ConfigurationError(f"max_reply must be an int >= 1024 bytes, got "
                                     f"{max_reply!r}", hint=f"e.g. {MAX_PAYLOAD}")
        self.max_reply = max_reply
        self.name = name
        self._nc: NatsClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self._calls = 0
        self._answered = 0
        self._failed: Counter[str] = Counter()
        self._by_server: Counter[str] = Counter()

    @property
    def prefix(self) -> str:
        """The subject prefix of the URL's namespace."""
        return self.config.prefix

    @property
    def connected(self) -> bool:
        """True while connected to the NATS server."""
        return self._nc is not None and self._nc.is_connected

    def hook(self, name: str, point: str, *, timeout: float = DEFAULT_TIMEOUT,
             error_policy: ErrorPolicy | str = ErrorPolicy.FAIL_CLOSED,
             priority: int | str = 0, local_name: str | None = None, **metadata: Any
             ) -> RemoteHook:
        """A :class:`RemoteHook` calling hook ``name`` over this client."""
        return RemoteHook(name, point, client=self, timeout=timeout,
                          error_policy=error_policy, priority=priority,
                          local_name=local_name, **metadata)

    async def connect(self) -> None:
        """Open the connection now (the first call does it otherwise). Raises
        :class:`~llmspell.errors.TransportUnavailableError` when no server answers."""
        await self._connection()

    async def _connection(self) -> NatsClient:
        nc = self._nc
        loop = asyncio.get_running_loop()
        if nc is not None and self._loop is loop:
            return nc
        if self._closed:
            raise RemoteHookUnavailableError("-", "-", "the hook client was closed",
                                             hint="make a new HookClient")
        if nc is not None:
            raise ConfigurationError(
                "this HookClient is connected on another event loop",
                hint="make one client per event loop (create it where the System runs)")
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            if self._nc is None:
                self._nc = await connect(self.config, name=self.name)
            return self._nc

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        self._closed = True
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.close()

    async def __aenter__(self) -> HookClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stats(self) -> RemoteHookStats:
        """The client's counters."""
        return RemoteHookStats(calls=self._calls, answered=self._answered,
                               failed=dict(self._failed),
                               by_server=dict(self._by_server))

    async def call(self, name: str, ctx: HookContext, *, timeout: float = DEFAULT_TIMEOUT,
                   local_name: str | None = None) -> HookResult:
        """Run remote hook ``name`` on ``ctx`` and return its result, applying in-place
        changes of data and metadata to ``ctx``; raise a
        :class:`~llmspell.errors.RemoteHookError` (or a
        :class:`~llmspell.errors.DistributedContextError` for a hop or deadline that is
        already exceeded here) when there is none."""
        self._calls += 1
        label = local_name or name
        try:
            result = await self._call(name, label, ctx, timeout)
        except (RemoteHookError, DistributedContextError) as exc:
            self._failed[type(exc).__name__] += 1
            raise
        self._answered += 1
        return result

    async def _call(self, name: str, label: str, ctx: HookContext, timeout: float
                    ) -> HookResult:
        point = str(ctx.point)
        sent = DistributedHookContext.for_hook(ctx).child(f"hook:{name}", timeout=timeout)
        remaining = sent.remaining()
        wait = max(0.001, (timeout if remaining is None else min(timeout, remaining))
                   - _MARGIN)
        wire_ctx = ctx if ctx.parent is None else msgspec.structs.replace(ctx, parent=None)
        try:
            payload = encode(HookCall(hook=name, point=point,
                                      context=msgspec.Raw(wire_ctx.to_json())))
        except Exception as exc:
            raise RemoteHookFailedError(label, point, type(exc).__name__,
                                        f"the context cannot be sent: {exc}",
                                        hint="hook data must be JSON-safe") from None
        headers = sent.to_headers()
        signer = self.signer
        if signer is not None:
            headers = signer.sign(headers, payload)
        try:
            nc = await self._connection()
        except TransportUnavailableError as exc:
            raise RemoteHookUnavailableError(label, point, exc.message,
                                             hint=exc.hint) from None
        subject = hook_subject(self.prefix, name)
        msg = await _request(nc, subject, payload, headers, wait, label, point, name)
        try:
            return self._read_reply(msg, headers, label, point, name, ctx)
        except RemoteHookError:
            raise
        except Exception as exc:  # whatever a peer answers, the caller gets a typed error
            raise RemoteHookReplyError(label, point, f"the reply cannot be read "
                                       f"({type(exc).__name__})",
                                       hint="is the subject served by llmspell's "
                                            "HookServer?") from None

    def _read_reply(self, msg: Any, headers: dict[str, str], label: str, point: str,
                    name: str, ctx: HookContext) -> HookResult:
        size = message_size(msg.data, msg.headers)
        if size > self.max_reply:
            raise RemoteHookReplyError(label, point, f"the reply is {size} bytes, over this "
                                       f"client's bound of {self.max_reply}",
                                       hint="raise max_reply, or have the hook return less")
        signer = self.signer
        if signer is not None:
            try:
                signer.verify(msg.headers, msg.data, replay=False)
            except SignatureError as exc:
                raise RemoteHookReplyError(label, point, f"the reply is refused: {exc.message}"
                                           f"{_unverified(msg.data)}", hint=exc.hint) from None
            reply_to = _header(msg.headers, REPLY_TO)
            if reply_to != headers[SIG_NONCE]:
                raise RemoteHookReplyError(label, point, "the signed reply answers another "
                                           "request (a replayed reply?)",
                                           hint="the reply is ignored")
        try:
            reply = decode_reply(msg.data)
        except SerializationError as exc:
            raise RemoteHookReplyError(label, point, exc.message, hint=exc.hint) from None
        if reply.error is not None:
            raise _reply_error(reply, label, point, name)
        if not reply.result:
            raise RemoteHookReplyError(label, point, "the reply has neither a result nor an "
                                       "error", hint="is the server an llmspell HookServer?")
        try:
            result = result_from_json(reply.result)
        except SerializationError as exc:
            raise RemoteHookReplyError(label, point, exc.message, hint=exc.hint) from None
        except (RecursionError, UnicodeDecodeError) as exc:
            raise RemoteHookReplyError(label, point, f"cannot decode a HookResult "
                                       f"({type(exc).__name__})",
                                       hint="is the subject served by llmspell's "
                                            "HookServer?") from None
        if reply.server:
            self._by_server[reply.server[:_SERVER_CHARS]] += 1
        if reply.data is not None and type(result) is not Modified:
            ctx.data = reply.data
        if reply.metadata is not None:
            ctx.metadata = reply.metadata
        return result


async def _request(nc: NatsClient, subject: str, payload: bytes, headers: dict[str, str],
                   wait: float, label: str, point: str, name: str) -> Any:
    import nats.errors  # noqa: PLC0415 - optional dependency

    try:
        return await nc.request(subject, payload, timeout=wait, headers=headers)
    except nats.errors.NoRespondersError:
        raise RemoteHookUnavailableError(
            label, point, f"no server serves remote hook {name!r} (nothing subscribed to "
            f"{subject})", hint=f"start one: llmspell hooks serve POLICY.py (declaring a hook "
            f"named {name!r}) with the same bus URL and namespace") from None
    except nats.errors.TimeoutError:
        raise RemoteHookTimeoutError(
            label, point, f"no answer from remote hook {name!r} within {wait:.3g} s",
            hint="the servers are busy, slow or cut off: add servers to the queue group, "
                 "make the hook faster or raise the timeout") from None
    except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError,
            nats.errors.ConnectionDrainingError, nats.errors.ConnectionReconnectingError
            ) as exc:
        raise RemoteHookUnavailableError(
            label, point, f"the NATS connection is not usable ({type(exc).__name__})",
            hint="check that the NATS server is up; the client reconnects by itself") from None
    except nats.errors.MaxPayloadError:
        raise RemoteHookFailedError(
            label, point, "MaxPayloadError", f"the context ({len(payload)} bytes) is larger "
            "than the NATS server's maximum payload", hint="pass references, not contents, "
            "in hook data") from None


def _reply_error(reply: Any, label: str, point: str, name: str) -> RemoteHookError:
    server = f" (server {reply.server})" if reply.server else ""
    if reply.error == FAILED:
        return RemoteHookFailedError(
            label, point, reply.error_type or "Exception",
            f"remote hook {name!r} failed on its server{server}: {reply.error_type}: "
            f"{reply.message}", hint="see the hook server's log")
    if reply.error in REFUSALS:
        return RemoteHookRefusedError(
            label, point, reply.error, f"the hook server refused the call{server} "
            f"({reply.error}): {reply.message}", hint=_REFUSAL_HINTS.get(reply.error))
    return RemoteHookReplyError(label, point, f"the reply has an unknown error code "
                                f"{reply.error!r}: {reply.message}",
                                hint="are client and server the same llmspell version?")


_REFUSAL_HINTS = {
    "unsigned": "the server has a key: configure the same key here (LLMSPELL_HOOK_KEY)",
    "bad_signature": "give the client and the server the same key",
    "unknown_key": "give the client and the server the same key (ids included)",
    "stale": "synchronise the machines' clocks (NTP)",
    "replayed": "a request can be accepted once only",
    "hop_limit": "remote hooks may be calling each other in a loop",
    "deadline": "raise the timeout, or check the machines' clocks",
    "unknown_hook": "check the hook's name against the server's policy",
    "wrong_point": "the server's hook is declared for other points",
    "stopping": "the server is shutting down; another in the queue group will answer",
}


def _unverified(payload: bytes) -> str:
    """What a reply that failed verification says it is, for the error message only."""
    try:
        reply = decode_reply(payload)
    except SerializationError:
        return ""
    if reply.error is None:
        return ""
    return f"; unverified, it says the server refused the call ({reply.error})"


def _header(headers: dict[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    found = headers.get(name)
    if found is not None:
        return found
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)


class RemoteHook(BaseHook):
    """A hook whose body runs in a hook server (see the module docstring).

    ``name``: the hook's name on the servers (letters, digits, ``_``, ``-``); ``point``:
    where it is registered here (``registry.register(remote)`` needs nothing else).
    ``client``: a :class:`HookClient` to share, or ``url``/``key`` for a client of its
    own. ``timeout``: seconds to wait for the answer (always bounded; also the caller's
    deadline sent along). ``error_policy``: ``fail_closed`` by default: a guard that
    cannot be asked denies. Other keywords (``priority``, ``tags``, ``description``,
    ``local_name`` for the name in this registry) as for any hook.
    """

    def __init__(self, name: str, point: str, *, client: HookClient | None = None,
                 url: str | None = None,
                 key: KeyLike = KEY_FROM_ENV,
                 timeout: float = DEFAULT_TIMEOUT,
                 error_policy: ErrorPolicy | str = ErrorPolicy.FAIL_CLOSED,
                 priority: int | str = 0, local_name: str | None = None,
                 **metadata: Any) -> None:
        check_hook_name(name)
        if client is not None and url is not None:
            raise ConfigurationError("give RemoteHook either client= or url=, not both",
                                     hint="the client already names the server")
        fields = metadata_fields(priority=priority, error_policy=error_policy,
                                 timeout=timeout, **metadata)
        tags = frozenset(fields.pop("tags", frozenset())) | {"remote"}
        fields.setdefault("description", f"remote hook {name!r}")
        super().__init__(HookMetadata(name=local_name or name, tags=tags, **fields))
        self.remote_name = name
        self.point = parse_point(point)
        self.timeout = float(timeout)
        self._own_client = client is None
        self.client = client if client is not None else HookClient(url, key=key)
        setattr(self, _SPEC_ATTR, HookSpec((self.point,), {}))

    async def execute(self, ctx: HookContext) -> HookResult:
        """Ask a server and return its result (see :meth:`HookClient.call`)."""
        return await self.client.call(self.remote_name, ctx, timeout=self.timeout,
                                      local_name=self.metadata.name)

    async def close(self) -> None:
        """Close the client if this hook made it (a shared client is closed by its
        owner)."""
        if self._own_client:
            await self.client.close()

    def stats(self) -> RemoteHookStats:
        """The counters of this hook's client."""
        return self.client.stats()

    def __repr__(self) -> str:
        return (f"<RemoteHook {self.remote_name!r} at {self.point!s} via "
                f"{self.client.config.description}>")
