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

Each call waits on a reply subject (inbox) of its own, so nothing sent to one call's inbox
reaches another call. With a key, a reply that fails verification (unsigned, another key,
stale, answering another request, too large) is counted, logged (at a bounded rate) and
ignored: the call keeps waiting for a trusted reply until its deadline, so a peer on the
broker that answers a caller's inbox first with junk cannot make the call fail. When only
untrusted replies came, the call fails at its deadline with a
:class:`~llmspell.errors.RemoteHookReplyError` quoting the first of them (most often: the
client and server keys differ). Without a key, the first reply is the answer.

A :class:`HookClient` holds the NATS connection (opened on first use) and the key; several
remote hooks share one. ``RemoteHook(name, point, url=...)`` makes a client of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from llmspell.core.log_limit import ThrottledLog
from llmspell.core.redact import get_logger
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
_MARGIN = 0.02  # the request gives up this much before the executor's own timeout
_SERVER_CHARS = 128  # a reply's server name, as counted in stats()
_STATUS = "Status"  # the header nats-py reads a server's status line into
_NO_RESPONDERS = "503"
_INBOX_MSGS = 256  # replies held unread on one call's inbox before NATS drops more
logger = get_logger("llmspell.distributed")


class RemoteHookStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a client: calls made, answered with a result, failed (by error type),
    the results per answering server (``host:pid``), and ``untrusted``: replies ignored
    because they failed verification (with a key only; see the module docstring)."""

    calls: int
    answered: int
    failed: dict[str, int]
    by_server: dict[str, int]
    untrusted: int = 0


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
        self._untrusted = 0
        self._log = ThrottledLog(logger)

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
                               by_server=dict(self._by_server),
                               untrusted=self._untrusted)

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
        started = asyncio.get_running_loop().time()  # connecting counts against the wait
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
        nonce = headers.get(SIG_NONCE, "")
        msg = await self._exchange(nc, subject, payload, headers, nonce, started, wait, label,
                                   point, name)
        try:
            return self._read_reply(msg, label, point, name, ctx)
        except RemoteHookError:
            raise
        except Exception as exc:  # whatever a peer answers, the caller gets a typed error
            raise RemoteHookReplyError(label, point, f"the reply cannot be read "
                                       f"({type(exc).__name__})",
                                       hint="is the subject served by llmspell's "
                                            "HookServer?") from None

    async def _exchange(self, nc: NatsClient, subject: str, payload: bytes,
                        headers: dict[str, str], nonce: str, started: float, wait: float,
                        label: str, point: str, name: str) -> Any:
        """Send the call and return its answer: without a key the first reply, with one
        the first reply that verifies (the others are counted and ignored)."""
        import nats.errors  # noqa: PLC0415 - optional dependency

        loop = asyncio.get_running_loop()
        deadline = started + wait
        signer = self.signer
        untrusted: list[RemoteHookReplyError] = []
        no_responders = False
        try:
            # An inbox per call: a reply sent to this call's inbox reaches no other call,
            # and it stays open after a reply that is not trusted.
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, pending_msgs_limit=_INBOX_MSGS,
                                     pending_bytes_limit=4 * max(self.max_reply, MAX_PAYLOAD))
        except nats.errors.Error as exc:
            raise _unusable(label, point, exc) from None
        try:
            await nc.publish(subject, payload, reply=inbox, headers=headers)
            while (left := deadline - loop.time()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except nats.errors.TimeoutError:
                    break
                if _header(msg.headers, _STATUS) == _NO_RESPONDERS and not msg.data:
                    if signer is None:
                        raise _no_server(label, point, name, subject)
                    # Any peer that knows the inbox can send this status too: with a key,
                    # it is believed only if no trusted reply comes before the deadline.
                    no_responders = True
                    continue
                if signer is None:
                    self._check_size(msg, label, point)
                    return msg
                try:
                    self._check_trusted(msg, nonce, label, point)
                except RemoteHookReplyError as exc:
                    if not untrusted:
                        untrusted.append(exc)  # the one quoted at the deadline
                    self._untrusted += 1
                    self._log.warning_for(
                        f"untrusted:{name}", "remote hook %r: ignored a reply that cannot be "
                        "trusted (%s); waiting for a trusted one until the deadline", name,
                        exc.message)
                    continue
                return msg
        except nats.errors.MaxPayloadError:
            raise RemoteHookFailedError(
                label, point, "MaxPayloadError", f"the context ({len(payload)} bytes) is "
                "larger than the NATS server's maximum payload",
                hint="pass references, not contents, in hook data") from None
        except nats.errors.Error as exc:
            raise _unusable(label, point, exc) from None
        finally:
            with contextlib.suppress(Exception):  # closed or draining: the inbox is gone
                await sub.unsubscribe()
        if untrusted:
            first = untrusted[0]
            hints = ["check that the client and the server have the same key "
                     "(LLMSPELL_HOOK_KEY, key ids included)"]
            if first.hint and first.hint not in ("the reply is ignored",):
                hints.append(first.hint)
            hints.append("if they do, another peer on the NATS server answers this hook's "
                         "calls (see docs/distributed.md, Trust model)")
            raise RemoteHookReplyError(
                label, point, f"no trusted reply from remote hook {name!r} within "
                f"{wait:.3g} s; replies that could not be trusted were ignored, the first: "
                f"{first.message}", hint="; ".join(hints))
        if no_responders:
            raise _no_server(label, point, name, subject)
        raise RemoteHookTimeoutError(
            label, point, f"no answer from remote hook {name!r} within {wait:.3g} s",
            hint="the servers are busy, slow or cut off: add servers to the queue group, "
                 "make the hook faster or raise the timeout")

    def _check_size(self, msg: Any, label: str, point: str) -> None:
        size = message_size(msg.data, msg.headers)
        if size > self.max_reply:
            raise RemoteHookReplyError(label, point, f"the reply is {size} bytes, over this "
                                       f"client's bound of {self.max_reply}",
                                       hint="raise max_reply, or have the hook return less")

    def _check_trusted(self, msg: Any, nonce: str, label: str, point: str) -> None:
        """Raise :class:`RemoteHookReplyError` unless the reply is within bounds, signed
        with this client's key and names this call's nonce."""
        self._check_size(msg, label, point)
        signer = self.signer
        assert signer is not None
        try:
            signer.verify(msg.headers, msg.data, replay=False)
        except SignatureError as exc:
            raise RemoteHookReplyError(label, point, f"the reply is refused: {exc.message}"
                                       f"{_unverified(msg.data)}", hint=exc.hint) from None
        except Exception as exc:  # whatever a peer's headers make verification raise
            raise RemoteHookReplyError(label, point, f"the reply's signature cannot be read "
                                       f"({type(exc).__name__})",
                                       hint="is the subject served by llmspell's "
                                            "HookServer?") from None
        if _header(msg.headers, REPLY_TO) != nonce:
            raise RemoteHookReplyError(label, point, "the signed reply answers another "
                                       "request (a replayed reply?)",
                                       hint="the reply is ignored")

    def _read_reply(self, msg: Any, label: str, point: str, name: str, ctx: HookContext
                    ) -> HookResult:
        """The result of a reply already checked (:meth:`_exchange`)."""
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


def _no_server(label: str, point: str, name: str, subject: str) -> RemoteHookError:
    return RemoteHookUnavailableError(
        label, point, f"no server serves remote hook {name!r} (nothing subscribed to "
        f"{subject})", hint=f"start one: llmspell hooks serve POLICY.py (declaring a hook "
        f"named {name!r}) with the same bus URL and namespace")


def _unusable(label: str, point: str, exc: Exception) -> RemoteHookError:
    return RemoteHookUnavailableError(
        label, point, f"the NATS connection is not usable ({type(exc).__name__})",
        hint="check that the NATS server is up; the client reconnects by itself")


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
    if reply.error is None or reply.error not in REFUSALS:
        return ""  # nothing a peer chose is quoted but a known code
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
