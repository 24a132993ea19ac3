"""The distributed hook context: what a call carries from one process to the next.

A :class:`DistributedHookContext` ties together everything one piece of work does across
processes: its correlation id and run id, a W3C trace (``traceparent``: trace id, the
sending hop's span id, the sampled flag), the lineage of hops that led here
(``parent_ids``), where the hop comes from (host, process, component), how many process
boundaries it crossed (``hop``) and may cross (``hop_limit``), and by when the caller needs
the answer (``deadline``, wall-clock seconds).

It travels in message headers (:meth:`to_headers` / :meth:`from_headers`); the payload
stays the caller's business. :meth:`child` makes the context of the next hop: same trace,
correlation and run, a new span id, this span appended to the lineage, one hop more, the
tighter deadline. Making a context current (:meth:`activate`) lets remote hooks called in
it continue its lineage, stamps its run id on events, and puts its headers (signed, when a
key is given) on every event a distributed bus publishes meanwhile.

Header names: ``traceparent`` (and ``tracestate``, passed through) and
``Llmspell-Ctx-Correlation``, ``-Run``, ``-Parents`` (comma-separated span ids, oldest
first), ``-Host``, ``-Pid``, ``-Component``, ``-Hop``, ``-Hop-Limit``, ``-Deadline``. Free
text (ids, host, component) is percent-encoded, so every value is one line of ASCII.

Reading headers (:meth:`from_headers`) is strict, since they come from other processes:
values are ASCII, numbers ASCII digits (a deadline a plain decimal number), free text is
at most 512 characters once percent-decoded and holds no control characters, and a
``tracestate`` that is not W3C shaped (printable ASCII, at most 512 characters) is ignored,
as W3C asks.
"""

from __future__ import annotations

import math
import re
import secrets
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

import msgspec

from llmspell.core.errors import (
    DeadlineExceededError,
    DistributedContextError,
    HopLimitExceededError,
    InvalidValueError,
)
from llmspell.core.ids import new_id
from llmspell.core.process import this_process
from llmspell.core.propagation import enter_header_source, leave_header_source
from llmspell.core.run_scope import current_run_id, enter_run_id, leave_run_id
from llmspell.distributed.signing import Signer
from llmspell.hooks.context import HookContext

__all__ = [
    "HEADERS",
    "HOP_LIMIT",
    "MAX_HOP_LIMIT",
    "DistributedHookContext",
    "Origin",
    "current_context",
]

HOP_LIMIT: Final = 8
"""The default number of process boundaries a piece of work may cross."""
MAX_HOP_LIMIT: Final = 64
"""The largest hop limit a context may carry."""

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
H_CORRELATION: Final = "Llmspell-Ctx-Correlation"
H_RUN: Final = "Llmspell-Ctx-Run"
H_PARENTS: Final = "Llmspell-Ctx-Parents"
H_HOST: Final = "Llmspell-Ctx-Host"
H_PID: Final = "Llmspell-Ctx-Pid"
H_COMPONENT: Final = "Llmspell-Ctx-Component"
H_HOP: Final = "Llmspell-Ctx-Hop"
H_HOP_LIMIT: Final = "Llmspell-Ctx-Hop-Limit"
H_DEADLINE: Final = "Llmspell-Ctx-Deadline"
HEADERS: Final = (TRACEPARENT, TRACESTATE, H_CORRELATION, H_RUN, H_PARENTS, H_HOST, H_PID,
                  H_COMPONENT, H_HOP, H_HOP_LIMIT, H_DEADLINE)
"""Every header a context is carried in."""

_HEX = frozenset("0123456789abcdef")
_SAFE = "-._~:/@!$&'()*+;="  # kept as is by the percent-encoding (',' is the list separator)
_MAX_TEXT = 512
_INT = re.compile(r"[0-9]{1,10}")
_NUMBER = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ASCII_ONLY = tuple(h.lower() for h in HEADERS if h != TRACESTATE)
_TRACESTATE = re.compile(r"[\x20-\x7e]{1,512}")


class Origin(msgspec.Struct, frozen=True, kw_only=True):
    """Where a hop comes from: the host name, the process id and the component (free
    text such as ``tool:shell`` or ``hook:guard``)."""

    host: str
    process: int
    component: str = ""

    @classmethod
    def here(cls, component: str = "") -> Origin:
        """This process, with ``component``."""
        me = this_process()
        return cls(host=me.host, process=me.pid, component=component)


_current: ContextVar[DistributedHookContext | None] = ContextVar(
    "llmspell_distributed_context", default=None)


def current_context() -> DistributedHookContext | None:
    """The distributed context the calling task runs in (see :meth:`activate`), or None."""
    return _current.get()


class DistributedHookContext(msgspec.Struct, frozen=True, kw_only=True):
    """One hop of distributed work (see the module docstring). Build the first one with
    :meth:`root` (or :meth:`for_hook`), the next ones with :meth:`child`."""

    correlation_id: str
    trace_id: str
    span_id: str
    origin: Origin
    parent_ids: tuple[str, ...] = ()
    run_id: str | None = None
    hop: int = 0
    hop_limit: int = HOP_LIMIT
    deadline: float | None = None
    sampled: bool = True
    tracestate: str | None = None

    def __post_init__(self) -> None:
        _check_hex("trace_id", self.trace_id, 32)
        _check_hex("span_id", self.span_id, 16)
        for parent in self.parent_ids:
            _check_hex("parent_ids", parent, 16)
        if not isinstance(self.correlation_id, str) or not self.correlation_id \
                or len(self.correlation_id) > _MAX_TEXT:
            raise InvalidValueError("correlation_id must be a non-empty str of at most "
                                    f"{_MAX_TEXT} characters")
        if not isinstance(self.hop_limit, int) or not 1 <= self.hop_limit <= MAX_HOP_LIMIT:
            raise InvalidValueError(f"hop_limit must be an int from 1 to {MAX_HOP_LIMIT}, "
                                    f"got {self.hop_limit!r}")
        if not isinstance(self.hop, int) or not 0 <= self.hop <= MAX_HOP_LIMIT + 1:
            raise InvalidValueError(f"hop must be an int from 0 to {MAX_HOP_LIMIT + 1}, got "
                                    f"{self.hop!r}")
        if len(self.parent_ids) > MAX_HOP_LIMIT + 1:
            raise InvalidValueError(f"at most {MAX_HOP_LIMIT + 1} parent ids")
        if self.deadline is not None and not (isinstance(self.deadline, (int, float))
                                              and math.isfinite(self.deadline)):
            raise InvalidValueError(f"deadline must be finite wall-clock seconds or None, "
                                    f"got {self.deadline!r}")
        if self.tracestate is not None and not (isinstance(self.tracestate, str)
                                                and _TRACESTATE.fullmatch(self.tracestate)):
            # It is sent on as it is: a line break in it would forge headers.
            raise InvalidValueError(f"tracestate {str(self.tracestate)[:40]!r}... is not 1 to "
                                    "512 printable ASCII characters")

    # -- building -----------------------------------------------------------------------
    @classmethod
    def root(cls, *, correlation_id: str | None = None, run_id: str | None = None,
             component: str = "", hop_limit: int = HOP_LIMIT, timeout: float | None = None,
             deadline: float | None = None) -> DistributedHookContext:
        """The first hop of a piece of work, in this process. ``run_id`` defaults to the
        current run's; the trace is the current OpenTelemetry span's when one is active
        (so the other processes' work joins that trace), else a new one. ``timeout``
        (seconds from now) or ``deadline`` (wall-clock seconds) bound the whole work."""
        trace_id, sampled = _otel_trace() or (secrets.token_hex(16), True)
        return cls(
            correlation_id=correlation_id or new_id(),
            trace_id=trace_id, span_id=secrets.token_hex(8), sampled=sampled,
            origin=Origin.here(component),
            run_id=run_id if run_id is not None else current_run_id(),
            hop_limit=hop_limit, deadline=_deadline(None, timeout, deadline))

    @classmethod
    def for_hook(cls, ctx: HookContext) -> DistributedHookContext:
        """The context a hook call continues: the current one (see :meth:`activate`), else
        a root for ``ctx`` (its correlation id and component, the current run)."""
        current = _current.get()
        if current is not None:
            return current
        component = ctx.component
        return cls.root(correlation_id=ctx.correlation_id,
                        component=f"{component.type}:{component.name}")

    def child(self, component: str = "", *, timeout: float | None = None,
              deadline: float | None = None, now: float | None = None
              ) -> DistributedHookContext:
        """The context of the next hop, sent from this process: same trace, correlation
        and run; a new span id; this span appended to ``parent_ids``; ``hop + 1``; the
        tighter of this deadline and ``timeout``/``deadline``. Raises
        :class:`~llmspell.errors.HopLimitExceededError` past the hop limit and
        :class:`~llmspell.errors.DeadlineExceededError` when the deadline has passed."""
        hop = self.hop + 1
        if hop > self.hop_limit:
            raise HopLimitExceededError(
                "hop_limit", f"a call from {self.origin.component or 'here'} would be hop "
                f"{hop}, over the limit of {self.hop_limit} (trace {self.trace_id}, "
                f"{len(self.parent_ids) + 1} hops so far)",
                hint="a remote hook may be calling itself through another process; "
                     "otherwise raise hop_limit on the root context")
        current = time.time() if now is None else now
        self._check_deadline(current)
        return DistributedHookContext(
            correlation_id=self.correlation_id, trace_id=self.trace_id,
            span_id=secrets.token_hex(8), origin=Origin.here(component),
            parent_ids=(*self.parent_ids, self.span_id), run_id=self.run_id, hop=hop,
            hop_limit=self.hop_limit, deadline=_deadline(self.deadline, timeout, deadline,
                                                         current),
            sampled=self.sampled, tracestate=self.tracestate)

    # -- checks -------------------------------------------------------------------------
    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` value: ``00-<trace id>-<span id>-<flags>``."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left before the deadline (negative once passed), None without one."""
        if self.deadline is None:
            return None
        return self.deadline - (time.time() if now is None else now)

    def check(self, *, hop_limit: int | None = None, now: float | None = None) -> None:
        """Refuse a context that arrived past its hop limit (or past ``hop_limit``, a
        receiver's own bound) or past its deadline."""
        limit = self.hop_limit if hop_limit is None else min(self.hop_limit, hop_limit)
        if self.hop > limit:
            raise HopLimitExceededError(
                "hop_limit", f"the call arrived at hop {self.hop}, over the limit of {limit} "
                f"(from {self.origin.component or '?'} on {self.origin.host}, trace "
                f"{self.trace_id})", hint="look for remote hooks that call each other")
        self._check_deadline(time.time() if now is None else now)

    def _check_deadline(self, now: float) -> None:
        if self.deadline is not None and now >= self.deadline:
            raise DeadlineExceededError(
                "deadline", f"the deadline passed {now - self.deadline:.3f} s ago (trace "
                f"{self.trace_id})", hint="give the work a longer timeout, or check that the "
                "machines' clocks are synchronised")

    # -- headers ------------------------------------------------------------------------
    def to_headers(self) -> dict[str, str]:
        """The message headers that carry this context (see the module docstring)."""
        origin = self.origin
        headers = {
            TRACEPARENT: self.traceparent,
            H_CORRELATION: _quote(self.correlation_id),
            H_HOST: _quote(origin.host),
            H_PID: str(origin.process),
            H_HOP: str(self.hop),
            H_HOP_LIMIT: str(self.hop_limit),
        }
        if self.run_id is not None:
            headers[H_RUN] = _quote(self.run_id)
        if self.parent_ids:
            headers[H_PARENTS] = ",".join(self.parent_ids)
        if origin.component:
            headers[H_COMPONENT] = _quote(origin.component)
        if self.deadline is not None:
            headers[H_DEADLINE] = repr(float(self.deadline))
        if self.tracestate:
            headers[TRACESTATE] = self.tracestate
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> DistributedHookContext:
        """The context carried by ``headers`` (names compared without case). Raises
        :class:`~llmspell.errors.DistributedContextError` (reason ``malformed``) naming
        the header that is missing or wrong."""
        lower = {k.lower(): v.strip() for k, v in (headers or {}).items()}
        try:
            for name in _ASCII_ONLY:
                value = lower.get(name)
                if value is not None and not value.isascii():
                    # to_headers writes ASCII only: this is not a context llmspell sent.
                    raise ValueError(f"{name} holds characters that are not ASCII")
            parent = lower.get(TRACEPARENT)
            if parent is None:
                raise ValueError("no traceparent header")
            trace_id, span_id, sampled = _parse_traceparent(parent)
            correlation = _text(_need(lower, H_CORRELATION), H_CORRELATION)
            pid = _int(_need(lower, H_PID), H_PID)
            hop = _int(_need(lower, H_HOP), H_HOP)
            hop_limit = _int(_need(lower, H_HOP_LIMIT), H_HOP_LIMIT)
            parents_text = lower.get(H_PARENTS.lower(), "")
            parents = tuple(p for p in parents_text.split(",") if p) if parents_text else ()
            deadline_text = lower.get(H_DEADLINE.lower())
            deadline = _number(deadline_text, H_DEADLINE) if deadline_text else None
            run = lower.get(H_RUN.lower())
            state = lower.get(TRACESTATE)
            return cls(
                correlation_id=correlation, trace_id=trace_id, span_id=span_id,
                origin=Origin(host=_text(_need(lower, H_HOST), H_HOST), process=pid,
                              component=_text(lower.get(H_COMPONENT.lower(), ""),
                                              H_COMPONENT)),
                parent_ids=parents, run_id=_text(run, H_RUN) if run else None, hop=hop,
                hop_limit=hop_limit, deadline=deadline, sampled=sampled,
                tracestate=state if state and _TRACESTATE.fullmatch(state) else None)
        except (ValueError, InvalidValueError) as exc:
            raise DistributedContextError(
                "malformed", f"the message does not carry a valid distributed context: "
                f"{exc}", hint="send it with llmspell (RemoteHook, or a distributed bus "
                "inside DistributedHookContext.activate())") from None

    @classmethod
    def from_event(cls, event: Any, source: Any, *, signer: Signer | None = None
                   ) -> DistributedHookContext | None:
        """The context an event received from another process was published in, or None
        (it carried none, or it is too old to be remembered). ``source``: the distributed
        bus that received it (or its transport). With ``signer``, the signature is checked
        (not the timestamp window: events are legitimately old and redelivered), raising
        :class:`~llmspell.errors.SignatureError`."""
        transport = getattr(source, "transport", source)
        lookup = getattr(transport, "received_headers", None)
        received = lookup(event.id) if lookup is not None else None
        if received is None:
            return None
        if signer is not None:
            signer.verify(received.headers, digest=received.payload_digest, fresh=False)
        return cls.from_headers(received.headers)

    # -- the current context --------------------------------------------------------------
    @staticmethod
    def current() -> DistributedHookContext | None:
        """See :func:`current_context`."""
        return _current.get()

    @contextmanager
    def activate(self, *, signer: Signer | None = None) -> Iterator[DistributedHookContext]:
        """Make this the current context for the block (and the tasks started in it):
        remote hooks called continue its lineage, its run id is the current run id, and a
        distributed bus publishes every event with its headers (signed by ``signer``)."""
        headers = self.to_headers()
        if signer is None:
            def source(payload: bytes) -> Mapping[str, str]:
                return headers
        else:
            sign = signer.sign

            def source(payload: bytes) -> Mapping[str, str]:
                return sign(headers, payload)
        token = _current.set(self)
        header_token = enter_header_source(source)
        run_token = enter_run_id(self.run_id) if (
            self.run_id is not None and current_run_id() != self.run_id) else None
        try:
            yield self
        finally:
            if run_token is not None:
                leave_run_id(run_token)
            leave_header_source(header_token)
            _current.reset(token)


def _deadline(current: float | None, timeout: float | None, deadline: float | None,
              now: float | None = None) -> float | None:
    candidates = [d for d in (current, deadline) if d is not None]
    if timeout is not None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise InvalidValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        candidates.append((time.time() if now is None else now) + timeout)
    return min(candidates) if candidates else None


def _otel_trace() -> tuple[str, bool] | None:
    """The current OpenTelemetry span's trace id and sampled flag, when OpenTelemetry is
    loaded and a valid span is current (never imports it)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    try:
        span_context = trace.get_current_span().get_span_context()
    except Exception:
        return None
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", bool(span_context.trace_flags & 1)


def _check_hex(field: str, value: object, length: int) -> None:
    if not isinstance(value, str) or len(value) != length or not set(value) <= _HEX \
            or value == "0" * length:
        raise InvalidValueError(f"{field}: {value!r} is not {length} lower-case hex digits "
                                "(not all zero)")


def _parse_traceparent(value: str) -> tuple[str, str, bool]:
    parts = value.split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" \
            or not set(parts[0]) <= _HEX or (parts[0] == "00" and len(parts) != 4):
        raise ValueError(f"traceparent {value[:80]!r} is not version-trace-parent-flags")
    trace_id, span_id, flags = parts[1], parts[2], parts[3]
    _check_hex("traceparent trace id", trace_id, 32)
    _check_hex("traceparent parent id", span_id, 16)
    if len(flags) != 2 or not set(flags) <= _HEX:
        raise ValueError(f"traceparent flags {flags!r} are not two hex digits")
    return trace_id, span_id, bool(int(flags, 16) & 1)


def _need(lower: Mapping[str, str], name: str) -> str:
    value = lower.get(name.lower())
    if value is None or value == "":
        raise ValueError(f"no {name} header")
    return value


def _int(text: str, name: str) -> int:
    # int() alone would take '+3', '3_0' and other scripts' digits ('٣').
    if not _INT.fullmatch(text):
        raise ValueError(f"{name} {text[:20]!r} is not an integer (ASCII digits)")
    return int(text)


def _number(text: str, name: str) -> float:
    # float() alone would take 'nan', 'inf', '1_0' and other scripts' digits.
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{name}: could not convert {text[:40]!r} to seconds (a decimal "
                         "number)")
    return float(text)


def _text(text: str, name: str) -> str:
    """A free-text header value, percent-decoded: at most ``_MAX_TEXT`` characters, no
    control characters (a CR or LF in a run id would forge log lines and headers)."""
    if len(text) > 12 * _MAX_TEXT:  # the longest a quoted _MAX_TEXT characters can be
        raise ValueError(f"{name} is {len(text)} characters long, over the bound")
    value = urllib.parse.unquote(text)
    if len(value) > _MAX_TEXT:
        raise ValueError(f"{name} is {len(value)} characters long once decoded, over "
                         f"{_MAX_TEXT}")
    if _CONTROL.search(value):
        raise ValueError(f"{name} {value[:40]!r} holds a control character")
    return value


def _quote(text: str) -> str:
    return urllib.parse.quote(text[:_MAX_TEXT], safe=_SAFE)

