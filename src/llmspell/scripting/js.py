"""The sandboxed JavaScript engine (QuickJS, through the ``quickjs-ng`` package).

QuickJS has no modules, file system, process or network unless the host adds them; we
add none. What a script sees is the language itself (ES2023: promises, async functions,
classes, typed arrays...) plus the globals from :mod:`llmspell.scripting.js_globals`.

Python never runs inside a JavaScript call. quickjs-ng refuses calls into Python while a
time limit is set (and an exception crossing back into JS is mangled), so the host API is
plain JavaScript: every host call records a request in an *outbox* and returns a promise;
after each call Python drains the outbox, performs the requests, settles the promises and
runs the pending jobs, until the call's own promise settles (see
:mod:`llmspell.scripting.protocol`). Script functions the host keeps (hooks, callbacks,
workflow steps) live in a JS-side table and are referred to by number.

Limits: ``max_memory`` (bytes; the allocation that goes past it fails with an error the
script can see, and the engine stays usable), ``max_stack`` (bytes of native stack), and a
``time_budget`` (seconds) for every entry into JavaScript: a call, and each round of
pending jobs. A runaway loop is interrupted with :class:`~llmspell.errors.ScriptTimeoutError`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import quickjs  # type: ignore[import-untyped]

from llmspell.core.errors import InvalidValueError, ScriptError, ScriptTimeoutError
from llmspell.scripting.convert import JsConverter
from llmspell.scripting.io_ops import IoOps
from llmspell.scripting.lua import MIB, Capabilities
from llmspell.scripting.owner import OwnerThread
from llmspell.scripting.protocol import Finished, Outcome, Pending, Reply, Request

__all__ = ["JsEngine", "JsFunction"]

logger = logging.getLogger("llmspell.scripts.javascript")

ORPHAN_OPS = frozenset({"event.publish", "log"})
"""Requests of a failed call that still go out: accepted events (and log lines)."""
MAX_JOBS = 1_000_000
"""Pending jobs one drain may run before the call counts as runaway."""

_KERNEL = r"""
(function () {
  "use strict";
  const fns = new Map();
  const calls = new Map();
  const waiting = new Map();
  let outbox = [];
  let nextFn = 1, nextCall = 1, nextRequest = 1, lastCall = 0;

  function store(fn) {
    const id = nextFn++;
    fns.set(id, fn);
    return id;
  }
  function replacer(key, value) {
    if (typeof value === "function") return {"__fn": store(value)};
    if (typeof value === "number" && !Number.isFinite(value)) {
      throw new TypeError("the number " + value + " at key '" + key + "' is not finite; " +
                          "JSON has no NaN or Infinity");
    }
    if (typeof value === "bigint") {
      throw new TypeError("the BigInt at key '" + key + "' cannot be passed to the host");
    }
    return value;
  }
  function describe(error) {
    if (error instanceof Error) {
      return [String(error.name || "Error"), String(error.message), String(error.stack || "")];
    }
    return ["Error", String(error), ""];
  }
  function request(op, args) {
    const id = nextRequest++;
    outbox.push([id, op, args]);
    return new Promise((resolve, reject) => waiting.set(id, [resolve, reject]));
  }
  function finish(id, ok, value) {
    calls.set(id, ok ? [1, value] : [2, describe(value)]);
  }
  const host = {
    store: store,
    request: request,
    enter(fnId, argsJson) {
      const fn = fns.get(fnId);
      if (fn === undefined) throw new Error("no such script function #" + fnId);
      const id = nextCall++;
      lastCall = id;
      calls.set(id, [0]);
      try {
        const value = fn(...JSON.parse(argsJson));
        if (value !== null && typeof value === "object" && typeof value.then === "function") {
          value.then(v => finish(id, true, v), e => finish(id, false, e));
        } else {
          finish(id, true, value);
        }
      } catch (e) {
        finish(id, false, e);
      }
      return id;
    },
    status(id) {
      // One JSON.stringify per answer: the Python binding cannot read rope strings (the
      // result of concatenating long strings), and stringify always makes a flat one.
      const state = calls.get(id);
      if (state === undefined || state[0] === 0) return "";
      calls.delete(id);
      if (state[0] === 1) {
        try {
          return JSON.stringify([1, state[1] === undefined ? null : state[1]], replacer);
        } catch (e) {
          return JSON.stringify([2, describe(e)]);
        }
      }
      return JSON.stringify([2, state[1]]);
    },
    take() {
      if (outbox.length === 0) return "";
      const items = outbox;
      outbox = [];
      return JSON.stringify(items, replacer);
    },
    settle(json) {
      for (const [id, ok, value, type] of JSON.parse(json)) {
        const entry = waiting.get(id);
        if (entry === undefined) continue;
        waiting.delete(id);
        if (ok) {
          entry[0](value);
        } else {
          const error = new Error(value);
          error.name = type || "Error";
          entry[1](error);
        }
      }
    },
    release(id) { fns.delete(id); },
    forget(id) { calls.delete(id < 0 ? lastCall : id); },
    counts() { return [fns.size, calls.size, waiting.size, outbox.length]; },
  };
  Object.freeze(host);
  return host;
})()
"""

_FRAME = re.compile(r"^\s*at (\S+) \(<input>:(\d+)", re.MULTILINE)
_KERNEL_FRAME = re.compile(r"^\s*at (enter|finish|settle|status|take) ")
_LOCATION = re.compile(r"\(?<input>:(\d+)(?::\d+)?\)?")


class JsFunction(int):
    """A script function the engine keeps, by number."""


class JsEngine(OwnerThread):
    """A sandboxed QuickJS context (see the module docstring).

    ``max_memory``: bytes the context may allocate. ``max_stack``: bytes of native stack.
    ``time_budget``: seconds each entry into JavaScript may run. ``allow``: the
    :class:`Capabilities` granted (JavaScript has no file, process or network access to
    grant; the globals name the flag in their errors).
    """

    language = "javascript"

    def __init__(self, *, max_memory: int = 32 * MIB, max_stack: int = 1 * MIB,
                 time_budget: float = 0.5, allow: Capabilities | None = None) -> None:
        if max_memory < MIB:
            raise InvalidValueError(f"max_memory must be at least 1 MiB, got {max_memory!r}")
        if not time_budget > 0:
            raise InvalidValueError(f"time_budget must be > 0 seconds, got {time_budget!r}")
        OwnerThread.__init__(self, logger)
        self.max_memory = max_memory
        self.time_budget = time_budget
        self.allow = allow if allow is not None else Capabilities()
        self.io = IoOps(self.allow)
        """The file, process and network operations the flags grant (see io_ops.py)."""
        self.convert = JsConverter()
        self.function_wrapper: Any = None
        self._lock = threading.RLock()
        self.max_stack = max_stack
        self.on_reset: Callable[[], None] | None = None
        self.on_orphan: Callable[[str, tuple[Any, ...]], Any] | None = None
        """Performs the publishes of a call that failed (see :meth:`_salvage`)."""
        """Called after the engine replaced its context (see :meth:`_reset`)."""
        self.resets = 0
        self._new_context()

    def _new_context(self) -> None:
        self._ctx = quickjs.Context()
        self._ctx.set_memory_limit(self.max_memory)
        self._ctx.set_max_stack_size(self.max_stack)
        self._limit = -1.0
        self._host = self._ctx.eval(_KERNEL)
        member = self._ctx.eval("(function (object, key) { return object[key]; })")
        self._enter = member(self._host, "enter")
        self._status = member(self._host, "status")
        self._take = member(self._host, "take")
        self._settle = member(self._host, "settle")
        self._store_fn = member(self._host, "store")
        self._counts = member(self._host, "counts")
        self._forget = member(self._host, "forget")
        self._release = member(self._host, "release")
        self._names: dict[int, str] = {}

    def _reset(self) -> None:
        """Replace the context with a fresh one (its globals, functions and queued jobs are
        gone), then let the bindings install theirs again (``on_reset``)."""
        with self._lock:
            self._salvage()
            self._new_context()
            self.resets += 1
        if self.on_reset is not None:
            self.on_reset()

    def _salvage(self) -> None:
        """A call failed before its requests were handed out. Events it published were
        accepted, so they still go out (through ``on_orphan``); the other requests could
        never reach the script again and are dropped, with a warning."""
        text = self._take()
        if not text:
            return
        for _, op, args in self.convert.decode(text, lambda ref, path: None):
            if op in ORPHAN_OPS and self.on_orphan is not None:
                try:
                    self.on_orphan(str(op), tuple(args))
                except Exception as exc:  # the failing call's error matters more
                    self._log.warning("a publish from a failed call failed too: %s", exc)
            elif op not in ORPHAN_OPS:
                self._log.warning("dropped %s from a script call that failed", op)

    # -- defining ------------------------------------------------------------------------
    def _set_limit(self, seconds: float) -> None:
        if seconds != self._limit:
            self._ctx.set_time_limit(seconds)
            self._limit = seconds

    def evaluate(self, source: str, name: str = "<script>") -> Any:
        """Evaluate ``source`` at the top level (for bindings); returns the raw value."""
        with self._lock:
            self._set_limit(self.time_budget)
            try:
                return self._ctx.eval(source)
            except quickjs.JSException as exc:
                raise self._error(str(exc), name, self.time_budget) from None

    def compile(self, source: str, name: str = "<script>") -> JsFunction:
        """Compile a script into a function (its body runs as an async function, so
        top-level ``await`` works; ``return`` gives the script's result)."""
        wrapped = "(async function () {" + source + "\n})"
        with self._lock:
            self._set_limit(self.time_budget)
            try:
                fn = self._ctx.eval(wrapped)
            except quickjs.JSException as exc:
                text = str(exc)
                match = _LOCATION.search(text)
                raise ScriptError(f"syntax error: {_first_line(text)}", script=name,
                                  line=int(match.group(1)) if match else None,
                                  hint="fix the JavaScript at that line") from None
            ref = JsFunction(self._store_fn(fn))
        self._names[int(ref)] = name
        return ref

    def with_host(self, source: str, name: str, *args: Any) -> Any:
        """Evaluate ``source`` (a function expression) and call it with the host kernel
        (``store``, ``request``) and ``args``: how bindings define their globals."""
        fn = self.evaluate(source, name)
        with self._lock:
            try:
                return fn(self._host, *args)
            except quickjs.JSException as exc:
                raise self._error(str(exc), name, self.time_budget) from None

    # -- running -------------------------------------------------------------------------
    def start(self, fn: Any, args: tuple[Any, ...], *, name: str | None = None,
              time_budget: float | None = None) -> Outcome:
        """Call script function ``fn`` (a number) with ``args`` (Python data)."""
        budget = self.time_budget if time_budget is None else time_budget
        script = self._names.get(int(fn)) or name or "<script>"
        text = self.convert.encode(list(args), "arguments")
        with self._lock:
            self._set_limit(budget)
            try:
                call = self._enter(int(fn), text)
            except quickjs.JSException as exc:
                self._forget(-1)
                self._salvage()
                raise self._error(str(exc), script, budget) from None
            except quickjs.StackOverflow as exc:
                self._forget(-1)
                self._salvage()
                raise ScriptError(f"stack overflow: {_first_line(str(exc))}", script=script,
                                  hint="look for unbounded recursion") from None
        return self._advance((int(call), script, budget))

    def release(self, fn: JsFunction) -> None:
        """Forget a kept function (a script that has run, an unregistered hook)."""
        with self._lock:
            self._release(int(fn))
        self._names.pop(int(fn), None)

    def resume(self, pending: Pending, replies: list[Reply]) -> Outcome:
        """Settle the promises of the replied requests and continue the call."""
        payload = [[r.id, r.ok, r.value if r.ok else str(r.value), r.error_type]
                   for r in replies]
        text = self.convert.encode(payload, "replies")
        _, script, budget = pending.state
        with self._lock:
            self._set_limit(budget)
            try:
                self._settle(text)
            except quickjs.JSException as exc:
                raise self._error(str(exc), script, budget) from None
        return self._advance(pending.state)

    def _advance(self, state: tuple[int, str, float]) -> Outcome:
        try:
            return self._next(state)
        except ScriptError:
            with self._lock:
                self._forget(state[0])
                self._salvage()
            raise

    def _next(self, state: tuple[int, str, float]) -> Outcome:
        call, script, budget = state
        with self._lock:
            self._run_jobs(script, budget)
            outbox = self._take()
            status = "" if outbox else self._status(call)
        if outbox:
            def function(ref: Any, path: str) -> Any:
                # a function handed out while this call runs was defined by its script
                self._names.setdefault(int(ref), script)
                return self.function_wrapper(ref, path)

            requests = [Request(int(i), str(op), tuple(args)) for i, op, args
                        in self.convert.decode(outbox, function)]
            return Pending(requests, state)
        if not status:
            raise ScriptError("the script is waiting for a promise that nothing will settle",
                              script=script,
                              hint="await only host calls and promises the script resolves")
        done, value = self.convert.decode(status, self.function_wrapper)
        if done == 1:
            return Finished(value)
        kind, message, stack = value
        raise self._script_error(str(kind), str(message), str(stack), script, budget)

    def _run_jobs(self, script: str, budget: float) -> None:
        deadline = time.monotonic() + budget
        ran = 0
        try:
            while self._ctx.execute_pending_job():
                ran += 1
                if ran % 1000 == 0 and (ran >= MAX_JOBS or time.monotonic() > deadline):
                    # QuickJS cannot drop queued jobs, and each job is too short for the
                    # interrupt handler: the chain would run again on every later call.
                    # Only a fresh context ends it.
                    self._reset()
                    raise ScriptTimeoutError(
                        f"the script's promise jobs ran past the time budget of {budget:g} s; "
                        "the JavaScript engine was reset, and the hooks and subscriptions "
                        "its scripts made were removed", script=script,
                        hint="look for a promise chain that never ends")
        except quickjs.JSException as exc:
            raise self._error(str(exc), script, budget) from None

    # -- errors --------------------------------------------------------------------------
    def _error(self, text: str, script: str, budget: float) -> ScriptError:
        first = _first_line(text)
        kind, _, message = first.partition(": ")
        return self._script_error(kind, message or first, text, script, budget)

    def _script_error(self, kind: str, message: str, stack: str, script: str,
                      budget: float) -> ScriptError:
        match = _LOCATION.search(stack)
        line = int(match.group(1)) if match else None
        frames = [f for f in stack.split("\n") if f.strip() and not _KERNEL_FRAME.search(f)]
        trace = _LOCATION.sub(lambda m: f"({script}:{m.group(1)})", "\n".join(frames)) or None
        if kind == "InternalError" and message == "interrupted":
            # the line is QuickJS's last recorded position: exact in most loops, the
            # function's first line in an empty one (`for (;;) {}`)
            inner = _FRAME.search(stack)
            where = f" in {inner.group(1)}" if inner and inner.group(1) != "<anonymous>" \
                else ""
            return ScriptTimeoutError(
                f"the script ran past its time budget of {budget:g} s and was stopped{where}",
                script=script, line=line, traceback=trace,
                hint="look for an endless loop, or raise the budget")
        if message == "out of memory" or (kind == "Error" and message == "null"):
            # QuickJS throws null when it cannot even allocate the out-of-memory error
            return ScriptError("out of memory", script=script, hint=(
                f"the script went past its memory limit of {self.max_memory // MIB} MiB"))
        return ScriptError(f"{kind}: {message}" if kind else message, script=script,
                           line=line, traceback=trace)

    def memory_used(self) -> int:
        """Bytes the context holds now."""
        return int(self._ctx.memory()["memory_used_size"])

    def counts(self) -> list[int]:
        """``[functions kept, calls in flight, promises waiting, outbox length]``."""
        with self._lock:
            return [int(v) for v in self.convert.decode(self._counts().json())]


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0]
