"""The hook server: serves hooks to the processes that call them as remote hooks.

A :class:`HookServer` subscribes, for each hook it serves, to the hook's subject
(``<prefix>.hooks.<name>``) in a queue group (``llmspell-hooks`` by default): every server
of a hook in the same group shares its calls, each call going to one of them. For each
call it:

1. refuses a call larger than ``max_payload`` bytes (``too_large``), then verifies the
   signature when it has a key (unsigned, badly signed, stale and replayed calls are
   refused);
2. reads the :class:`~llmspell.distributed.context.DistributedHookContext` from the
   headers and refuses it past its hop limit (or the server's own, ``hop_limit``) or past
   its deadline, and refuses a hook name or point the hook is not declared for;
3. runs the hook on the :class:`~llmspell.hooks.HookContext` it was sent, inside the
   distributed context (:meth:`~DistributedHookContext.activate`: remote hooks the hook
   calls continue the lineage, events it publishes on a distributed bus carry the context,
   the run id is current), an async hook bounded by the tighter of its own timeout and the
   deadline;
4. replies with the result (and the data and metadata if the hook changed them in place),
   or with why there is none, signed when it has a key.

Sync hooks run on the server's event loop, one at a time (keep them quick); async hooks
run concurrently, at most ``max_inflight`` at once (further calls wait in NATS's pending
queue). :meth:`stop` stops taking calls, finishes the ones received, and disconnects.

Whatever a peer sends, the server answers with a refusal it counts (``stats().refused``)
and goes on serving: bytes that are not a call, a call of the wrong shape, strings that are
not UTF-8, data nested too deeply, bad context headers are all ``malformed``. A call
without a reply subject cannot be answered; it is dropped and counted (``no_reply``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Callable, Iterable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Final

import msgspec

from llmspell.core.errors import (
    ConfigurationError,
    DistributedContextError,
    InvalidHookResultError,
    InvalidValueError,
    SerializationError,
    SignatureError,
)
from llmspell.core.log_limit import ThrottledLog
from llmspell.core.process import this_process
from llmspell.core.redact import get_logger
from llmspell.core.values import check_json_safe
from llmspell.distributed.connection import config_of, connect
from llmspell.distributed.context import MAX_HOP_LIMIT, DistributedHookContext
from llmspell.distributed.signing import KEY_FROM_ENV, SIG_NONCE, KeyLike, signer_from
from llmspell.distributed.wire import (
    FAILED,
    MAX_PAYLOAD,
    PROTOCOL,
    REPLY_TO,
    HookReply,
    check_hook_name,
    decode_call,
    decode_context,
    encode,
    hook_subject,
    message_size,
)
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import BaseHook, hook_spec_of, is_async_callable
from llmspell.hooks.metadata import HookMetadata
from llmspell.hooks.points import parse_point
from llmspell.hooks.result import (
    CONTINUE,
    RESULT_TYPES,
    HookResult,
    Modified,
    Skipped,
    result_to_json,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["DEFAULT_QUEUE", "HookServer", "HookServerStats", "ServedHook"]

logger = get_logger("llmspell.distributed")

DEFAULT_QUEUE: Final = "llmspell-hooks"
"""The queue group hook servers join unless told otherwise."""
_RESULT_TYPES: frozenset[type] = frozenset(RESULT_TYPES)
_MESSAGE_LIMIT = 500
_MAX_NONCE = 128
_HEADER_ROOM = 1024  # bytes kept for a reply's headers (signature, nonce)
# Signature refusals made once the HMAC matched, of the call itself rather than of a copy.
_BOUND_SIGNATURE_REFUSALS = frozenset({"stale", "replay_cache_full"})


class _RefusedError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ServedHook:
    """A hook as a server serves it: its name, the points it is declared for (None: any),
    the callable, its predicate, whether it is async and its timeout."""

    __slots__ = ("call", "is_async", "name", "points", "predicate", "source", "timeout")

    def __init__(self, hook: object, *, name: str | None = None,
                 points: Iterable[str] | None = None) -> None:
        spec = hook_spec_of(hook)
        execute = getattr(hook, "execute", None)
        metadata = getattr(hook, "metadata", None)
        fields: dict[str, Any] = dict(spec.metadata_fields) if spec is not None else {}
        if callable(execute) and isinstance(metadata, HookMetadata):
            call: Callable[[HookContext], object] = execute
            default_name, timeout = metadata.name, metadata.timeout
            should = getattr(hook, "should_execute", None)
            own = getattr(type(hook), "should_execute", None) is not BaseHook.should_execute
            predicate = should if callable(should) and own else None
        elif callable(hook):
            call = hook
            default_name = str(fields.get("name") or getattr(hook, "__name__", ""))
            timeout = fields.get("timeout")
            predicate = None
        else:
            raise ConfigurationError(
                f"{type(hook).__name__} is not a hook",
                hint="serve functions (ctx) -> HookResult | None, decorated with "
                     "@hook('PointName') to declare their points, or hook objects")
        self.name = check_hook_name(name or default_name)
        if points is None and spec is not None and spec.points:
            points = [str(p) for p in spec.points]
        self.points = frozenset(str(parse_point(p)) for p in points) if points else None
        self.call = call
        self.predicate = predicate
        self.is_async = is_async_callable(call)
        self.timeout: float | None = timeout
        self.source = hook

    def describe(self) -> str:
        """``name (Point, Point)`` or ``name (any point)``."""
        where = ", ".join(sorted(self.points)) if self.points else "any point"
        return f"{self.name} ({where})"


class HookServerStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a server: calls answered with a result (per hook), refused (per
    code), failed in the hook (per hook), and running now."""

    served: dict[str, int]
    refused: dict[str, int]
    failed: dict[str, int]
    inflight: int


class HookServer:
    """Serves hooks to remote callers (see the module docstring).

    ``hooks``: what to serve (functions, ``@hook``-decorated functions, hook objects; see
    :meth:`add`). ``url``: a bus URL (``LLMSPELL_BUS`` or ``nats://127.0.0.1:4222`` by
    default; its namespace must be the callers'). ``key``: as for
    :class:`~llmspell.distributed.HookClient` (``LLMSPELL_HOOK_KEY`` when set, by default);
    with a key, unsigned or badly signed calls are refused and replies are signed.
    ``queue``: the queue group. ``max_inflight``: async hook calls running at once.
    ``hop_limit``: the most hops a call may have made, whatever its context allows.
    ``max_payload``: the largest call in bytes (payload and headers,
    :data:`~llmspell.distributed.wire.MAX_PAYLOAD` by default); larger ones are refused
    (``too_large``) without being read. Refusals and hook failures are logged at most 10
    lines per code (per hook) a minute; :meth:`stats` counts every one.
    """

    def __init__(self, hooks: Iterable[object] = (), *, url: str | None = None,
                 key: KeyLike = KEY_FROM_ENV,
                 queue: str = DEFAULT_QUEUE, max_inflight: int = 256,
                 hop_limit: int = MAX_HOP_LIMIT, max_payload: int = MAX_PAYLOAD,
                 name: str = "llmspell-hook-server") -> None:
        self.config = config_of(url)
        self.signer = signer_from(key)
        if not isinstance(queue, str) or not queue or any(c in queue for c in " \t\r\n.*>"):
            raise ConfigurationError(f"invalid queue group name {queue!r}",
                                     hint="use letters, digits, '_' and '-', e.g. 'policy'")
        if not isinstance(max_inflight, int) or max_inflight < 1:
            raise ConfigurationError(f"max_inflight must be an int >= 1, got {max_inflight!r}",
                                     hint="e.g. 256")
        if not isinstance(hop_limit, int) or not 1 <= hop_limit <= MAX_HOP_LIMIT:
            raise ConfigurationError(f"hop_limit must be an int from 1 to {MAX_HOP_LIMIT}",
                                     hint="e.g. 8")
        if not isinstance(max_payload, int) or max_payload < 1024:
            raise ConfigurationError(f"max_payload must be an int >= 1024 bytes, got "
                                     f"{max_payload!r}", hint=f"e.g. {MAX_PAYLOAD}")
        self.queue = queue
        self.max_payload = max_payload
        self.max_inflight = max_inflight
        self.hop_limit = hop_limit
        self.name = name
        me = this_process()
        self.server_id = f"{me.host}:{me.pid}"
        self.hooks: dict[str, ServedHook] = {}
        self._by_subject: dict[str, ServedHook] = {}
        self._nc: NatsClient | None = None
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._stopped: asyncio.Event | None = None
        self._stopping = False
        self._served: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._inflight = 0
        # Refusals and failures anyone on the bus can cause: logged at a bounded rate
        # (the counters above count every one).
        self._log = ThrottledLog(logger)
        for hook in hooks:
            self.add(hook)

    def add(self, hook: object, *, name: str | None = None,
            points: Iterable[str] | None = None) -> ServedHook:
        """Serve ``hook`` (a function, a hook object, or a :class:`ServedHook` from
        :func:`~llmspell.distributed.load_policy`) under ``name`` (default: its metadata's
        or decorator's name, or the function's name) at ``points`` (default: the points of
        its ``@hook`` decorator; none given: any point). Before :meth:`start` only."""
        if self._nc is not None:
            raise ConfigurationError("add hooks before the server starts",
                                     hint="build the HookServer with every hook, then start")
        if isinstance(hook, ServedHook) and name is None and points is None:
            served = hook
        else:
            served = ServedHook(hook.source if isinstance(hook, ServedHook) else hook,
                                name=name, points=points)
        if served.name in self.hooks:
            raise ConfigurationError(f"two hooks are named {served.name!r}",
                                     hint="give one of them another name (@hook(name=...))")
        self.hooks[served.name] = served
        return served

    @property
    def subjects(self) -> list[str]:
        """The subjects the server takes calls on."""
        return [hook_subject(self.config.prefix, name) for name in self.hooks]

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and subscribe (every hook, in the queue group); calls are taken from
        the moment this returns. Raises ``ConfigurationError`` with no hooks and
        :class:`~llmspell.errors.TransportUnavailableError` with no NATS server."""
        if self._nc is not None:
            return
        if not self.hooks:
            raise ConfigurationError("the hook server has no hooks to serve",
                                     hint="pass hooks=[...] or call add(hook) first")
        self._slots = asyncio.Semaphore(self.max_inflight)
        self._stopped = asyncio.Event()
        nc = await connect(self.config, name=self.name)
        try:
            for served in self.hooks.values():
                subject = hook_subject(self.config.prefix, served.name)
                self._by_subject[subject] = served
                self._subs.append(await nc.subscribe(subject, queue=self.queue,
                                                     cb=self._on_request))
            await nc.flush(timeout=5)
        except BaseException:
            await nc.close()
            raise
        self._nc = nc
        logger.info("serving %s on %s, queue %r, signing %s",
                    ", ".join(s.describe() for s in self.hooks.values()),
                    self.config.description, self.queue, "on" if self.signer else "off")

    async def serve_forever(self) -> None:
        """Start if needed, then wait until :meth:`stop` is called."""
        await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking calls, finish the calls received (waiting up to ``timeout``
        seconds for running async hooks), reply to them and disconnect. Idempotent."""
        nc = self._nc
        if nc is None or self._stopping:
            return
        self._stopping = True
        try:
            for sub in self._subs:
                try:
                    await asyncio.wait_for(sub.drain(), timeout)  # type: ignore[no-untyped-call]
                except Exception as exc:
                    logger.debug("draining %s: %s", sub.subject, exc)
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
                for task in pending:
                    task.cancel()
                if pending:
                    logger.warning("hook server: %d call(s) still running after %s s were "
                                   "cancelled", len(pending), timeout)
            try:
                await nc.flush(timeout=2)
            except Exception as exc:
                logger.debug("final flush: %s", exc)
        finally:
            await nc.close()
            self._nc = None
            if self._stopped is not None:
                self._stopped.set()

    async def __aenter__(self) -> HookServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def stats(self) -> HookServerStats:
        """The server's counters."""
        return HookServerStats(served=dict(self._served), refused=dict(self._refused),
                               failed=dict(self._failed), inflight=self._inflight)

    # -- calls -----------------------------------------------------------------------------
    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            self._refused["no_reply"] += 1
            self._log.warning_for("no_reply", "dropped a call on %s: it has no reply "
                                  "subject", msg.subject)
            return
        headers = msg.headers
        nonce = _get(headers, SIG_NONCE) if headers else None
        if nonce is not None and (len(nonce) > _MAX_NONCE or not nonce.isascii()):
            nonce = None  # not one of ours: it is not echoed back
        # A signed reply names the request it answers by the request's nonce: only a nonce
        # whose signature this server checked may be named, or a peer without the key could
        # send junk carrying another caller's nonce (and reply subject) and have the server
        # sign a refusal the caller takes for the answer to its own call.
        admitted: list[bool] = [self.signer is None]
        try:
            served, dctx, ctx = self._admit(msg, admitted)
        except SignatureError as exc:
            # Refused after the signature matched (a stale timestamp, a full replay cache)
            # is an answer to that very call; a replay's refusal answers a copy, and must
            # not race the original's answer.
            bound = nonce if exc.reason in _BOUND_SIGNATURE_REFUSALS else None
            await self._refuse(msg, bound, exc.reason, exc.message)
            return
        except DistributedContextError as exc:
            await self._refuse(msg, nonce if admitted[0] else None, exc.reason, exc.message)
            return
        except _RefusedError as refused:
            await self._refuse(msg, nonce if admitted[0] else None, refused.code,
                               refused.message)
            return
        except Exception as exc:  # a peer's bytes must never stop the server
            await self._refuse(msg, nonce if admitted[0] else None, "malformed",
                               f"the call cannot be read ({type(exc).__name__})")
            return
        if not served.is_async:
            await self._run(served, dctx, ctx, msg, nonce)
            return
        slots = self._slots
        assert slots is not None
        await slots.acquire()  # at most max_inflight: the rest wait in NATS's queue
        task = asyncio.get_running_loop().create_task(
            self._run_async(served, dctx, ctx, msg, nonce))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admit(self, msg: Msg, admitted: list[bool]
               ) -> tuple[ServedHook, DistributedHookContext, HookContext]:
        """Verify and read a call; raise why it is refused. ``admitted[0]`` is set once
        the call's signature verified (without a key, it starts set)."""
        served = self._by_subject.get(msg.subject)
        if served is None:
            raise _RefusedError("unknown_hook", f"no hook is served on {msg.subject}")
        size = message_size(msg.data, msg.headers)
        if size > self.max_payload:
            raise _RefusedError("too_large", f"the call is {size} bytes, over this server's "
                                f"bound of {self.max_payload}")
        if self.signer is not None:
            self.signer.verify(msg.headers, msg.data)
            admitted[0] = True  # the nonce is the signer's: it may be named in the reply
        dctx = DistributedHookContext.from_headers(msg.headers)
        dctx.check(hop_limit=self.hop_limit)
        try:
            call = decode_call(msg.data)
            ctx = decode_context(bytes(call.context))
        except (SerializationError, InvalidValueError) as exc:
            raise _RefusedError("malformed", exc.message) from None
        if call.v != PROTOCOL:
            raise _RefusedError("malformed", f"the call uses protocol version {call.v}; this "
                                f"server speaks version {PROTOCOL}")
        if call.hook != served.name:
            raise _RefusedError("unknown_hook", f"the call names hook {call.hook!r} but was sent "
                           f"to {served.name!r}")
        point = str(ctx.point)
        if call.point != point:
            raise _RefusedError("malformed", f"the call's point {call.point!r} is not its "
                           f"context's ({point!r})")
        if served.points is not None and point not in served.points:
            raise _RefusedError("wrong_point", f"hook {served.name!r} is served at "
                           f"{', '.join(sorted(served.points))}, not {point}")
        return served, dctx, ctx

    async def _run_async(self, served: ServedHook, dctx: DistributedHookContext,
                         ctx: HookContext, msg: Msg, nonce: str | None) -> None:
        try:
            await self._run(served, dctx, ctx, msg, nonce)
        finally:
            assert self._slots is not None
            self._slots.release()

    async def _run(self, served: ServedHook, dctx: DistributedHookContext, ctx: HookContext,
                   msg: Msg, nonce: str | None) -> None:
        self._inflight += 1
        start = perf_counter_ns()
        reply: HookReply
        try:
            with dctx.activate(signer=self.signer):
                before_data = msgspec.json.encode(ctx.data)
                before_metadata = dict(ctx.metadata)
                result = await self._call(served, dctx, ctx)
                data = ctx.data if type(result) is not Modified and \
                    msgspec.json.encode(ctx.data) != before_data else None
                metadata = ctx.metadata if ctx.metadata != before_metadata else None
                _check_in_place(served.name, point=str(ctx.point), data=data,
                                metadata=metadata)
                encoded = result_to_json(result)
            reply = HookReply(result=msgspec.Raw(encoded), data=data, metadata=metadata,
                              server=self.server_id, duration_ns=perf_counter_ns() - start)
            payload = encode(reply)
            bound = self._reply_bound()
            if len(payload) > bound:
                # NATS would refuse to send it, and the caller would wait for its timeout.
                raise InvalidHookResultError(
                    served.name, str(ctx.point),
                    f"the reply is {len(payload)} bytes, over the {bound} bytes the NATS "
                    "server lets this server send", hint="have the hook return less (pass "
                    "references, not contents, in hook data)")
            self._served[served.name] += 1
        except Exception as exc:
            self._failed[served.name] += 1
            self._log.warning_for(f"failed:{served.name}",
                                  "hook %r failed serving a call from %s (trace %s): %s: %s",
                                  served.name, dctx.origin.host, dctx.trace_id,
                                  type(exc).__name__, exc)
            payload = encode(HookReply(error=FAILED, error_type=type(exc).__name__,
                                       message=str(exc)[:_MESSAGE_LIMIT],
                                       server=self.server_id,
                                       duration_ns=perf_counter_ns() - start))
        finally:
            self._inflight -= 1
        await self._send(msg, nonce, payload)

    def _reply_bound(self) -> int:
        """The largest reply payload the NATS server lets this server send (room left
        for the headers)."""
        nc = self._nc
        limit = nc.max_payload if nc is not None and nc.max_payload else MAX_PAYLOAD
        return max(0, limit - _HEADER_ROOM)

    async def _call(self, served: ServedHook, dctx: DistributedHookContext,
                    ctx: HookContext) -> HookResult:
        predicate = served.predicate
        if predicate is not None and not predicate(ctx):
            return Skipped(f"{served.name}: should_execute is False")
        out = served.call(ctx)
        if inspect.isawaitable(out):
            remaining = dctx.remaining()
            limits = [t for t in (remaining, served.timeout) if t is not None]
            if limits:
                async with asyncio.timeout(max(0.0, min(limits))):
                    out = await out
            else:
                out = await out
        if out is None:
            return CONTINUE
        if type(out) not in _RESULT_TYPES:
            raise InvalidHookResultError(
                served.name, str(ctx.point),
                f"returned {type(out).__name__}, not a HookResult or None",
                hint="return Continue(), Modified(data), Cancel(reason), ... or None")
        result: HookResult = out  # type: ignore[assignment]
        return result

    async def _refuse(self, msg: Msg, nonce: str | None, code: str, message: str) -> None:
        self._refused[code] += 1
        self._log.warning_for(code, "refused a call on %s: %s (%s)", msg.subject, code, message)
        await self._send(msg, nonce, encode(HookReply(
            error=code, message=message[:_MESSAGE_LIMIT], server=self.server_id)))

    async def _send(self, msg: Msg, nonce: str | None, payload: bytes) -> None:
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        headers = None
        if self.signer is not None:
            headers = self.signer.sign({REPLY_TO: nonce or "-"}, payload)
        try:
            await nc.publish(msg.reply, payload, headers=headers)
        except Exception as exc:
            self._log.warning_for("reply", "could not reply on %s: %s: %s", msg.subject,
                                  type(exc).__name__, exc)


def _check_in_place(name: str, *, point: str, data: object, metadata: object) -> None:
    """Refuse in-place changes a caller could not read back: ``data`` that is not a
    JSON-safe dict, ``metadata`` that is not a dict of strings."""
    if data is not None:
        if type(data) is not dict:
            raise InvalidHookResultError(
                name, point, f"set the context's data to a {type(data).__name__}, not a dict",
                hint="change ctx.data in place or return Modified(data)")
        check_json_safe(data, "context.data")
    if metadata is not None and (type(metadata) is not dict or not all(
            type(k) is str and type(v) is str for k, v in metadata.items())):
        raise InvalidHookResultError(
            name, point, "set the context's metadata to something else than a dict of "
            "strings", hint="metadata holds string annotations: str(value) them")


def _get(headers: dict[str, str], name: str) -> str | None:
    found = headers.get(name)
    if found is not None:
        return found
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)
