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
``time_budget`` (seconds) for every call: the JavaScript time of all its slices (the entry,
each resume after host requests, the pending jobs they run) together; time the host spends
on the requests does not count. A runaway loop is interrupted with
:class:`~llmspell.errors.ScriptTimeoutError`.

The glue (the kernel below and the globals) is evaluated on one line, and a script's body
starts on line 2, so stack frames on line 1 are the host's and a script's line ``n`` is
reported as ``n - 1``. A host request records the caller's stack, and a failed request
rejects with an error carrying it, so the error names the line that made the call. The
glue calls only originals captured before any script runs; the few built-ins it still
depends on (thenables and ``toJSON`` on the shared prototypes, the promise slots, index
properties on ``Array.prototype`` that ``JSON.stringify``'s own stack would write through,
``Error.prepareStackTrace``) are checked after every slice: a change is undone and the call
fails, or, when it cannot be undone, the engine resets.

The time limit is polled between bytecode instructions, never inside a built-in's C loop,
and some generic array methods loop over a ``length`` no memory backs (``Array(2 ** 31)``,
``{length: 2 ** 40}``) without running script code. The kernel replaces them before any
script runs: ``join``, ``toLocaleString``, ``reverse``, ``copyWithin``, ``splice``,
``shift``, ``unshift``, ``sort`` and ``slice`` read the length once and refuse one over
``max_memory // 8`` (a ``RangeError``: no array whose elements are in memory is longer),
then call the native method (a closure holds it). A getter or a Proxy could answer a small
length to that check and a huge one to the native method, so a receiver that is not a
genuine array, or is a script's Proxy, reaches it through a Proxy whose ``length`` is the
value read. That is what the native method itself would do, mutating methods included, where
copying the array-like would need writing back; removing ``Proxy`` would not have been
enough (getters remain). Genuine arrays take the native path untouched. To tell a script's
Proxy from a genuine array (``Array.isArray`` answers for the target), the global ``Proxy``
is a Proxy of the original whose construct trap records every Proxy made, as does
``Proxy.revocable``. ``concat``, ``flat``, ``flatMap`` and ``String.raw`` read further
lengths in the middle of their loop (a getter can grow an array there), so they are
JavaScript in the kernel and the time limit stops them like any loop.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import quickjs  # type: ignore[import-untyped]

from llmspell.core.errors import InvalidValueError, ScriptError, ScriptTimeoutError
from llmspell.core.redact import get_logger
from llmspell.events.event import UniversalEvent
from llmspell.hooks.context import HookContext
from llmspell.scripting.convert import JsConverter
from llmspell.scripting.io_ops import IoOps
from llmspell.scripting.lua import MIB, Capabilities
from llmspell.scripting.owner import OwnerThread
from llmspell.scripting.protocol import Finished, Outcome, Pending, Reply, Request, failed_reply
from llmspell.scripting.views import event_view, hook_context_view

__all__ = ["JsEngine", "JsFunction", "one_line"]

logger = get_logger("llmspell.scripts.javascript")

ORPHAN_OPS = frozenset({"event.publish", "log"})
"""Requests of a failed call that still go out: accepted events (and log lines)."""
MAX_JOBS = 1_000_000
"""Pending jobs one drain may run before the call counts as runaway."""

_KERNEL = r"""
(function (maxLength) {
  "use strict";
  // Everything the glue uses is captured here, before any script runs, and reached only
  // through this closure: a script that replaces JSON.stringify, Map.prototype.get,
  // Promise, Reflect.apply ... changes what scripts see, never what the glue does. No
  // iteration protocol (for-of, spread, destructuring) and no property assignment on
  // shared objects: both would consult prototypes a script can change.
  const uncurry = Function.prototype.bind.bind(Function.prototype.call);
  const apply = Reflect.apply, defineProperty = Reflect.defineProperty;
  const deleteProperty = Reflect.deleteProperty, getPrototypeOf = Reflect.getPrototypeOf;
  const setPrototypeOf = Reflect.setPrototypeOf, getOwn = Reflect.getOwnPropertyDescriptor;
  const hasOwn = Object.hasOwn, freeze = Object.freeze;
  const stringify = JSON.stringify, parse = JSON.parse, isFinite = Number.isFinite;
  const Promise_ = Promise, Error_ = Error, TypeError_ = TypeError;
  const String_ = String, species = Symbol.species;
  const promiseThen = uncurry(Promise.prototype.then);
  // the native join (the kernel replaces Array.prototype.join below): it makes one flat
  // string of its parts, where concatenation would make a rope the binding cannot read
  const join = uncurry(Array.prototype.join);
  // The function references this glue makes, so a plain object with a "__fn" key (a
  // script's or its data's) is never taken for one.
  const refs = new WeakSet(), isRef = uncurry(WeakSet.prototype.has);
  const addRef = uncurry(WeakSet.prototype.add);
  const stackOf = uncurry(getOwn(Error.prototype, "stack").get);
  const prepare = getOwn(Error, "prepareStackTrace");
  const getPrepare = uncurry(prepare.get), setPrepare = uncurry(prepare.set);
  // tables by number: objects without a prototype (nothing a script changes is consulted)
  const fns = {__proto__: null};
  const calls = {__proto__: null};
  const waiting = {__proto__: null};
  function size(table) {
    let n = 0;
    for (const key in table) n++;
    return n;
  }
  // outbox: the requests made and not yet handed out, each already encoded as JSON
  // ([id, op, args]); outOdd: one of them holds what Python restores (see send()); queued:
  // requests made while an encoding ran (a getter's), not encoded yet (see request())
  let outbox = [], outOdd = false, queued = [];
  let nextFn = 1, nextRequest = 1, rejected = false;
  // current: the call whose slice runs (a request belongs to it, see end()); storing: the
  // first function number an encoding in progress stored (0: none in progress); encoding:
  // an encoding (or the loop over queued requests) is in progress
  let current = 0, storing = 0, encoding = false;
  // odd: the answer being encoded holds what Python restores (see send()); recent: the
  // call whose answer enter() handed out, kept for a poll should pending jobs run first
  let odd = false, recent = 0, recentState = undefined;

  function data(value) {
    return {__proto__: null, value: value, writable: true, enumerable: true, configurable: true};
  }
  function append(array, value) { defineProperty(array, array.length, data(value)); }
  const keys = ["value", "writable", "get", "set", "enumerable", "configurable"];
  function copy(descriptor) {
    if (descriptor === undefined) return undefined;
    const out = {__proto__: null};
    for (let i = 0; i < keys.length; i++) {
      if (hasOwn(descriptor, keys[i])) defineProperty(out, keys[i], data(descriptor[keys[i]]));
    }
    return out;
  }
  // What the glue still depends on when it calls the captured originals: a thenable
  // Object.prototype/Array.prototype would capture every promise the glue resolves, a
  // toJSON on them would rewrite everything it sends, the promise species decides what
  // `then` constructs, and Error.prepareStackTrace runs on every host call. A script
  // that changes one of these is stopped and the change is undone (see check()). The
  // slots that exist are made non-configurable first (still writable), so they stay data
  // properties that check() can read without running a getter.
  const OP = Object.prototype, AP = Array.prototype, FP = Function.prototype;
  const PP = Promise.prototype;
  const lock = (object, key) => {
    const descriptor = copy(getOwn(object, key));
    defineProperty(descriptor, "configurable", data(false));
    defineProperty(object, key, descriptor);
  };
  lock(PP, "then");
  lock(PP, "constructor");
  lock(Promise, species);
  lock(Error, "prepareStackTrace");
  const then_ = PP.then;
  const absent = [[OP, "then", "Object.prototype.then"],
                  [OP, "toJSON", "Object.prototype.toJSON"],
                  [AP, "then", "Array.prototype.then"],
                  [AP, "toJSON", "Array.prototype.toJSON"],
                  [FP, "toJSON", "Function.prototype.toJSON"]];
  const protos = [[AP, OP, "Array.prototype"], [FP, OP, "Function.prototype"]];
  function clean() {
    // the common case, unrolled (this runs after every slice)
    return !(hasOwn(OP, "then") || hasOwn(OP, "toJSON") || hasOwn(AP, "then") ||
             hasOwn(AP, "toJSON") || hasOwn(FP, "toJSON") || PP.then !== then_ ||
             PP.constructor !== Promise_ || AP.length !== 0 ||
             getPrototypeOf(AP) !== OP || getPrototypeOf(FP) !== OP ||
             getPrepare(Error_) !== undefined);
  }
  function check() {
    if (clean()) return null;
    let changed = "", stuck = "";
    for (let i = 0; i < absent.length; i++) {
      const a = absent[i];
      if (!hasOwn(a[0], a[1])) continue;
      if (deleteProperty(a[0], a[1])) changed += (changed ? ", " : "") + a[2];
      else stuck += (stuck ? ", " : "") + a[2];
    }
    // locked data slots: only their value can have changed
    if (PP.then !== then_) {
      if (defineProperty(PP, "then", {__proto__: null, value: then_})) {
        changed += (changed ? ", " : "") + "Promise.prototype.then";
      } else {
        stuck += (stuck ? ", " : "") + "Promise.prototype.then";
      }
    }
    if (PP.constructor !== Promise_) {
      if (defineProperty(PP, "constructor", {__proto__: null, value: Promise_})) {
        changed += (changed ? ", " : "") + "Promise.prototype.constructor";
      } else {
        stuck += (stuck ? ", " : "") + "Promise.prototype.constructor";
      }
    }
    for (let i = 0; i < protos.length; i++) {
      const p = protos[i];
      if (getPrototypeOf(p[0]) === p[1]) continue;
      const label = "the prototype of " + p[2];
      if (setPrototypeOf(p[0], p[1])) changed += (changed ? ", " : "") + label;
      else stuck += (stuck ? ", " : "") + label;
    }
    // JSON.stringify keeps its nesting stack in an array and writes it by index, so an
    // index property on Array.prototype (a setter) would run inside it (QuickJS's array
    // writes look past Array.prototype only when it has index properties itself)
    if (AP.length !== 0) {
      const label = "Array.prototype[0...]";
      if (defineProperty(AP, "length", {__proto__: null, value: 0})) {
        changed += (changed ? ", " : "") + label;
      } else {
        stuck += (stuck ? ", " : "") + label;
      }
    }
    // an accessor over an internal slot: its value is read and reset through the originals
    if (getPrepare(Error_) !== undefined) {
      setPrepare(Error_, undefined);
      changed += (changed ? ", " : "") + "Error.prepareStackTrace";
    }
    if (stuck) return [5, stuck];
    return changed ? [4, changed] : null;
  }

  function store(fn) {
    const id = nextFn++;
    fns[id] = fn;
    return id;
  }
  function plain(key, value) {
    if (typeof value === "number") {
      if (!isFinite(value)) {
        throw new TypeError_("the number " + value + " at key '" + key + "' is not finite; " +
                             "JSON has no NaN or Infinity");
      }
      if (value > 9007199254740992 || value < -9007199254740992) odd = true;
    }
    if (typeof value === "bigint") {
      throw new TypeError_("the BigInt at key '" + key + "' cannot be passed to the host");
    }
    return value;
  }
  function reserved() {
    return new TypeError_("the key '__fn' is reserved: it marks a function passed to the " +
                          "host; rename it in the data");
  }
  function replacer(key, value) {
    if (key === "__fn") {
      if (!isRef(refs, this)) throw reserved();
      odd = true;
    }
    if (typeof value !== "function") return plain(key, value);
    const ref = {"__fn": store(value)};
    addRef(refs, ref);
    return ref;
  }
  // [tag, value] as JSON, with tag + 10 when it holds what JsConverter.restore changes (a
  // function reference or a "__fn" key, a number beyond 2**53): Python skips that walk
  // otherwise. The second stringify keeps the answer a flat string (no concatenation).
  // A failed encoding forgets the functions it stored (no reference to them got out); one
  // the time limit stopped (no catch runs) leaves storing set, for end().
  // Requests a getter makes while the answer is encoded are queued, and encoded after it.
  function send(tag, value) {
    odd = false;
    storing = nextFn;
    encoding = true;
    let json;
    try {
      json = stringify([tag, value], replacer);
    } catch (e) {
      unstore();
      encoding = false;
      if (queued.length !== 0) flush();
      throw e;
    }
    storing = 0;
    encoding = false;
    const answer = odd ? stringify([tag + 10, parse(json)[1]]) : json;
    if (queued.length !== 0) flush();
    return answer;
  }
  function unstore() {
    for (let i = storing; i < nextFn; i++) delete fns[i];
    storing = 0;
  }
  function text(value) {
    try { return String_(value); } catch (e) { return "(a value that cannot be shown)"; }
  }
  function describe(error) {
    try {
      if (error !== null && typeof error === "object") {
        const stack = stackOf(error);
        if (typeof stack === "string") {
          const name = error.name;
          return [name === undefined ? "Error" : text(name), text(error.message), stack];
        }
      }
    } catch (e) {
      return ["Error", "(an error that cannot be shown)", ""];
    }
    return ["Error", text(error), ""];
  }
  // A request's arguments are encoded once, here, while the script that makes it runs
  // (its getters, toJSON and Proxy traps run under its call's budget, and see the values as
  // they are at the call): what the host later hands out, or what the cleanup of a failed
  // call still publishes, is that JSON, and no script code runs for it again. Arguments
  // that cannot be encoded reject the request's promise where the script made it.
  function request(op, args, shape) {
    const id = nextRequest++;
    // the caller's stack, for the error if the request fails (the rejection itself
    // happens in settle(), where the script's line is long gone)
    let site = null;
    try { site = new Error_(); } catch (e) { site = null; }
    const promise = new Promise_((resolve, reject) => {
      waiting[id] = [resolve, reject, site, shape, current];
    });
    append(queued, [id, op, args]);
    // a request made by a getter during an encoding waits for it to end (one at a time)
    if (!encoding) flush();
    return promise;
  }
  function flush() {
    encoding = true;
    try {
      while (queued.length !== 0) {
        const items = queued;
        queued = [];
        for (let i = 0; i < items.length; i++) encode(items[i]);
      }
    } finally {
      encoding = false;
    }
  }
  function encode(item) {
    odd = false;
    storing = nextFn;
    let json;
    try {
      json = stringify(item, replacer);
    } catch (e) {
      unstore();
      fail(item[0], e);
      return;
    }
    storing = 0;
    if (odd) outOdd = true;
    append(outbox, json);
  }
  function finish(id, ok, value) {
    calls[id] = ok ? [1, value] : [2, describe(value)];
  }
  function follow(id, value) {
    if (value !== null && typeof value === "object") {
      // the prototype first: a failed brand check (the catch) costs an exception
      let native = getPrototypeOf(value) === PP;
      if (native) {
        try {
          promiseThen(value, (v) => finish(id, true, v), (e) => finish(id, false, e));
        } catch (e) {
          native = false;
        }
      }
      if (native) return;
      const then = value.then;
      if (typeof then === "function") {
        apply(then, value, [(v) => finish(id, true, v), (e) => finish(id, false, e)]);
        return;
      }
    }
    finish(id, true, value);
  }
  function fail(id, error) {
    const entry = waiting[id];
    if (entry === undefined) return;
    delete waiting[id];
    rejected = true;
    const site = entry[2] !== null ? entry[2] : new Error_();
    const described = describe(error);
    defineProperty(site, "message", data(described[1]));
    defineProperty(site, "name", data(described[0]));
    entry[1](site);
  }
  function take() {
    // [0, [request, ...]] (10 when one holds what Python restores) from the requests
    // encoded when they were made: no script code runs here (see request())
    if (outbox.length === 0) return "";
    const items = outbox;
    const tag = outOdd ? "[10,[" : "[0,[";
    outbox = [];
    outOdd = false;
    return join([tag, join(items, ","), "]]"], "");
  }
  function status(id) {
    // One JSON.stringify per answer: the Python binding cannot read rope strings (the
    // result of concatenating long strings), and stringify always makes a flat one.
    const state = calls[id];
    if (state === undefined || state[0] === 0) return "";
    delete calls[id];
    if (state[0] === 3) return state[1];
    if (state[0] === 1) {
      try {
        return send(1, state[1] === undefined ? null : state[1]);
      } catch (e) {
        return stringify([2, describe(e)]);
      }
    }
    return stringify([2, state[1]]);
  }
  function open(fnId, id) {
    recent = 0;
    recentState = undefined;
    const fn = fns[fnId];
    if (fn === undefined) throw new Error_("no such script function #" + fnId);
    current = id;
    calls[id] = [0];
    return fn;
  }
  function entered(id) {
    const state = calls[id];
    if (state[0] !== 0 && outbox.length === 0 && !rejected && clean()) {
      const answer = status(id);
      if (settled(id, answer)) {
        recent = id;
        recentState = state;
        return answer;
      }
    }
    return id;
  }
  // Encoding an answer runs script code (getters, toJSON, Proxy traps): host requests it
  // makes and built-ins it changes belong to this call, not to the next one. Then the
  // answer waits in calls[id] ([3, json]) while poll() hands out the requests or reports
  // the change; true when nothing of the kind happened.
  function settled(id, answer) {
    if (outbox.length === 0 && clean()) return true;
    calls[id] = [3, answer];
    return false;
  }
  // Built-in loops over `length`. QuickJS polls the time limit between bytecode
  // instructions, never inside a C loop, and some generic array methods loop over a
  // length no memory backs (a sparse array, an array-like {length: 2 ** 40}) without
  // running script code. So, before any script runs: the methods that loop over the
  // length read once refuse one over maxLength (max_memory / 8: no array whose elements
  // are in memory is longer); concat, flat, flatMap and String.raw, which read further
  // lengths in the middle of their loop (a getter can grow an array there), are
  // JavaScript here, so their loops are interruptible. A receiver that is not a genuine
  // array (its length may be a getter) or that is a script's Proxy (it can answer
  // anything) reaches the native method through a Proxy whose length is the one read.
  const Object_ = Object, RangeError_ = RangeError, Proxy_ = Proxy, isArray = Array.isArray;
  const reflectGet = Reflect.get, construct = Reflect.construct, floor = Math.floor;
  const proxies = new WeakSet(), isProxy = uncurry(WeakSet.prototype.has);
  const addProxy = uncurry(WeakSet.prototype.add);
  const track = (proxy) => { addProxy(proxies, proxy); return proxy; };
  const SAFE = 9007199254740991;
  // every Proxy a script makes is known: through the global Proxy (a Proxy of the
  // original whose construct trap records it) or Proxy.revocable
  const revocable = Proxy.revocable;
  const facade = new Proxy_(Proxy_, {__proto__: null, construct(target, args, newTarget) {
    return track(construct(target, args, newTarget));
  }});
  function method(object, key, fn) {
    const descriptor = copy(getOwn(object, key));
    defineProperty(fn, "length", {__proto__: null, value: descriptor.value.length});
    defineProperty(descriptor, "value", data(fn));
    defineProperty(object, key, descriptor);
  }
  method(Proxy_, "revocable", {revocable(target, handler) {
    const result = revocable(target, handler);
    track(result.proxy);
    return result;
  }}.revocable);
  defineProperty(globalThis, "Proxy", {__proto__: null, value: facade});
  function toObject(value, name) {
    if (value === null || value === undefined) {
      throw new TypeError_(name + " called on " + value);
    }
    return Object_(value);
  }
  function toLength(value) {
    const n = +value;
    if (!(n > 0)) return 0;
    return n > SAFE ? SAFE : floor(n);
  }
  function tooLong(name, n) {
    return new RangeError_(name + ": a length of " + n + " is over the sandbox's limit of " +
                           maxLength + " for array methods (max_memory / 8)");
  }
  function fixed(object, length) {
    return track(new Proxy_(object, {__proto__: null, get(target, key, receiver) {
      return key === "length" ? length : reflectGet(target, key, receiver);
    }}));
  }
  const nativeSlice = AP.slice;
  const looping = ["join", "toLocaleString", "reverse", "copyWithin", "splice", "shift",
                   "unshift", "sort", "slice"];
  for (let i = 0; i < looping.length; i++) {
    const key = looping[i], native = AP[key], name = "Array.prototype." + key;
    method(AP, key, {[key](...args) {
      if (this === null || this === undefined) return apply(native, this, args);
      const object = Object_(this);
      const genuine = !isProxy(proxies, object) && isArray(object);
      const n = +object.length;
      if (n > maxLength) throw tooLong(name, n);
      if (genuine) return apply(native, object, args);
      const proxy = fixed(object, n);
      const result = apply(native, proxy, args);
      return result === proxy ? object : result;
    }}[key]);
  }
  // ArraySpeciesCreate(object, 0), as the native methods do it (a slice of nothing)
  const create = (object) => (isArray(object) ? apply(nativeSlice, object, [0, 0]) : []);
  function put(target, index, value) {
    if (index >= SAFE) throw new TypeError_("the array would be longer than 2 ** 53 - 1");
    const entry = {__proto__: null, value: value, writable: true, enumerable: true,
                   configurable: true};
    if (!defineProperty(target, index, entry)) {
      throw new TypeError_("cannot define property " + index + " of the new array");
    }
  }
  const spreadable = Symbol.isConcatSpreadable;
  method(AP, "concat", {concat(...items) {
    const object = toObject(this, "Array.prototype.concat");
    const result = create(object);
    let n = 0;
    for (let i = -1; i < items.length; i++) {
      const item = i < 0 ? object : items[i];
      let spread = false;
      if (item !== null && (typeof item === "object" || typeof item === "function")) {
        const flag = item[spreadable];
        spread = flag !== undefined ? !!flag : isArray(item);
      }
      if (!spread) {
        put(result, n++, item);
        continue;
      }
      const length = toLength(item.length);
      if (n + length > SAFE) throw new TypeError_("the array would be longer than 2 ** 53 - 1");
      for (let k = 0; k < length; k++, n++) {
        if (k in item) put(result, n, item[k]);
      }
    }
    result.length = n;
    return result;
  }}.concat);
  function flatten(target, source, length, start, depth, mapper, self) {
    let index = start;
    for (let i = 0; i < length; i++) {
      if (!(i in source)) continue;
      let element = source[i];
      if (mapper !== undefined) element = apply(mapper, self, [element, i, source]);
      if (depth > 0 && isArray(element)) {
        index = flatten(target, element, toLength(element.length), index, depth - 1);
      } else {
        put(target, index++, element);
      }
    }
    return index;
  }
  method(AP, "flat", {flat(depth) {
    const object = toObject(this, "Array.prototype.flat");
    const length = toLength(object.length);
    let levels = 1;
    if (depth !== undefined) {
      levels = +depth;
      levels = levels !== levels ? 0 : levels < 0 ? 0 : floor(levels);
    }
    const result = create(object);
    flatten(result, object, length, 0, levels);
    return result;
  }}.flat);
  method(AP, "flatMap", {flatMap(mapper, self) {
    const object = toObject(this, "Array.prototype.flatMap");
    const length = toLength(object.length);
    if (typeof mapper !== "function") {
      throw new TypeError_("Array.prototype.flatMap: the mapper is not a function");
    }
    const result = create(object);
    flatten(result, object, length, 0, 1, mapper, self);
    return result;
  }}.flatMap);
  method(String_, "raw", {raw(template, ...substitutions) {
    const strings = toObject(toObject(template, "String.raw").raw, "String.raw (its raw)");
    const length = toLength(strings.length);
    let text = "";
    for (let i = 0; i < length; i++) {
      text += `${strings[i]}`;
      if (i + 1 < length && i < substitutions.length) text += `${substitutions[i]}`;
    }
    return text;
  }}.raw);

  const host = {
    store: store,
    request: request,
    enter(fnId, id, argsJson) {
      // id: the call's number, chosen by the host. Returns it, or the call's answer (as
      // poll() gives it) when the call finished in this entry with nothing to hand out
      // and nothing changed: the host takes it if no pending job runs after the entry.
      const fn = open(fnId, id);
      try {
        follow(id, apply(fn, undefined, parse(argsJson)));
      } catch (e) {
        finish(id, false, e);
      }
      return entered(id);
    },
    enterHook(fnId, id, point, correlation, type, name, language, metadata, data) {
      // enter() with the view of a hook context built here (JsConverter.hook_fields):
      // the fields come as strings, metadata and data as JSON ("" for empty)
      const fn = open(fnId, id);
      try {
        follow(id, fn({point: point, correlation_id: correlation,
                       component_id: {type: type, name: name}, language: language,
                       metadata: metadata === "" ? {} : parse(metadata),
                       data: data === "" ? {} : parse(data)}));
      } catch (e) {
        finish(id, false, e);
      }
      return entered(id);
    },
    poll(id) {
      // after a slice, as JSON (one stringify: the Python binding cannot read rope
      // strings, which concatenation makes): "" still waiting, [0, outbox], [1, result],
      // [2, error], [3] a request failed (run the jobs again), [4, what] / [5,
      // what]: a script changed built-ins the glue depends on (put back / could not be)
      if (recent !== 0) {
        // jobs ran after enter() answered: the call's state is back for this poll
        if (recent === id && calls[id] === undefined) calls[id] = recentState;
        recent = 0;
        recentState = undefined;
      }
      const changed = check();
      if (changed !== null) return stringify(changed);
      const out = take();
      const again = rejected;
      rejected = false;
      if (out) return out;
      if (again) return "[3]";
      const answer = status(id);
      return answer === "" || settled(id, answer) ? answer : "[3]";
    },
    take: take,
    abandon(json) {
      // the call ran out of budget before these replies could be settled: forget their
      // requests; the stack of the first says where the script was waiting
      const replies = parse(json);
      let where = "";
      for (let i = 0; i < replies.length; i++) {
        const entry = waiting[replies[i][0]];
        if (entry === undefined) continue;
        delete waiting[replies[i][0]];
        if (!where && entry[2] !== null) where = stackOf(entry[2]) || "";
      }
      return where;
    },
    repair() {
      // after a call failed mid-slice (a timeout, out of memory): put back what it changed
      const changed = check();
      return changed === null ? "" : stringify(changed);
    },
    settle(id, json) {
      current = id;
      const replies = parse(json);
      for (let i = 0; i < replies.length; i++) {
        const reply = replies[i];
        const entry = waiting[reply[0]];
        if (entry === undefined) continue;
        delete waiting[reply[0]];
        if (reply[1]) {
          let value = reply[2];
          if (entry[3] !== undefined) {
            try { value = entry[3](value); } catch (e) { entry[1](e); continue; }
          }
          entry[0](value);
        } else {
          const error = entry[2] !== null ? entry[2] : new Error_();
          defineProperty(error, "message", data(text(reply[2])));
          defineProperty(error, "name", data(text(reply[3] || "Error")));
          entry[1](error);
        }
      }
    },
    release(id) { delete fns[id]; },
    end(id) {
      // the call ended early (failed, timed out, abandoned): drop everything it left, its
      // state, the promises of its requests (and so the frames awaiting them), the requests
      // still queued (the host took those it performs), the functions an interrupted
      // encoding stored
      delete calls[id];
      for (const key in waiting) {
        if (waiting[key][4] === id) delete waiting[key];
      }
      if (storing !== 0) unstore();
      // an encoding the time limit stopped (never mid-slice: end() runs between slices)
      queued = [];
      encoding = false;
      if (recent === id) {
        recent = 0;
        recentState = undefined;
      }
      if (current === id) {
        outbox = [];
        outOdd = false;
        rejected = false;
        current = 0;
      }
    },
    counts() { return [size(fns), size(calls), size(waiting), outbox.length]; },
  };
  freeze(host);
  return host;
})
"""

_GLUE = 1
"""The line the host glue is on: the kernel and the globals are collapsed to one line
(:func:`one_line`) and a script's own lines start at 2, so a frame on line 1 is glue and a
script's line ``n`` is reported as ``n - 1``."""
_FRAME = re.compile(r"^\s*at (\S+) \(<input>:(\d+)(?::\d+)?\)", re.MULTILINE)
_LOCATION = re.compile(r"\(?<input>:(\d+)(?::\d+)?\)?")
_MALFORMED = (msgspec.DecodeError, ValueError, TypeError, KeyError, IndexError)
"""What decoding the glue's answers raises if they are not what the glue sends."""


def one_line(source: str) -> str:
    """``source`` (JavaScript with ``//`` comments on lines of their own and no statement
    that relies on a line break) on a single line: how the host glue is evaluated, so
    its frames are told apart from a script's (see :data:`_GLUE`)."""
    lines = [line.strip() for line in source.strip().split("\n")]
    text = " ".join(line for line in lines if line and not line.startswith("//"))
    if "//" in text:
        raise AssertionError("host glue has a trailing // comment")  # a programming error
    return text


_KERNEL_LINE = one_line(_KERNEL)


class JsFunction(int):
    """A script function the engine keeps, by number."""


class _Call:
    """One call in flight: its id in the kernel, the script's name, the budget, and the
    seconds of it left (every slice of the call spends from the same budget).

    ``waiting``: the call stopped at host requests (a :class:`Pending` holds it). A caller
    that drops that Pending without resuming it (a hook cancelled by its timeout) ends the
    call: its id goes to ``dropped``, the engine's list of calls whose state in the kernel
    it removes before the next call (never here: this may run on any thread)."""

    __slots__ = ("budget", "dropped", "id", "left", "script", "waiting")

    def __init__(self, call: int, script: str, budget: float, left: float,
                 dropped: list[int]) -> None:
        self.id = call
        self.script = script
        self.budget = budget
        self.left = left
        self.dropped = dropped
        self.waiting = False

    def __del__(self) -> None:
        if self.waiting:
            self.dropped.append(self.id)


class JsEngine(OwnerThread):
    """A sandboxed QuickJS context (see the module docstring).

    ``max_memory``: bytes the context may allocate. ``max_stack``: bytes of native stack.
    ``time_budget``: seconds of JavaScript time each call may spend over all its slices
    (time the host spends on its requests does not count). ``allow``: the
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
        """Called after the engine replaced its context (see :meth:`_reset`)."""
        self.on_orphan: Callable[[str, tuple[Any, ...]], Any] | None = None
        """Performs the publishes of a call that failed (see :meth:`_salvage`)."""
        self.resets = 0
        # never restarted: a call left from a context a reset replaced (resumed or ended
        # later) cannot name a call of the new one
        self._call_ids = itertools.count(1)
        self._new_context()

    def _new_context(self) -> None:
        self._ctx = quickjs.Context()
        self._ctx.set_memory_limit(self.max_memory)
        self._ctx.set_max_stack_size(self.max_stack)
        self._limit = -1.0
        self._host = self._ctx.eval(_KERNEL_LINE)(self.max_memory // 8)
        member = self._ctx.eval("(function (object, key) { return object[key]; })")
        self._enter = member(self._host, "enter")
        self._enter_hook = member(self._host, "enterHook")
        self._poll = member(self._host, "poll")
        self._take = member(self._host, "take")
        self._repair = member(self._host, "repair")
        self._abandon = member(self._host, "abandon")
        self._settle = member(self._host, "settle")
        self._store_fn = member(self._host, "store")
        self._counts = member(self._host, "counts")
        self._end = member(self._host, "end")
        self._release = member(self._host, "release")
        self._names: dict[int, str] = {}
        # the ids of dropped calls (see _Call), of this context only: a call of the one
        # before appends to that one's list
        self._dropped: list[int] = []

    def _reset(self) -> None:
        """Replace the context with a fresh one (its globals, functions and queued jobs are
        gone), then let the bindings install theirs again (``on_reset``)."""
        with self._lock:
            self._salvage(repair=False)
            self._new_context()
            self.resets += 1
        if self.on_reset is not None:
            self.on_reset()

    def _salvage(self, call: int = 0, *, repair: bool = True) -> None:
        """A call failed before its requests were handed out. Events it published were
        accepted, so they still go out (through ``on_orphan``); the other requests could
        never reach the script again and are dropped, with a warning. First (``repair``)
        the built-ins the glue depends on are put back if the call changed them before it
        failed; if they cannot be, the engine resets after the salvage. Then what the call
        (its id, ``call``) left in the kernel is removed (see :meth:`_finish`)."""
        stuck = False
        self._set_limit(self.time_budget)  # the failed call may have left a sliver
        if repair:
            try:
                text = self._repair()
                if text:
                    code, what = self.convert.decode(text)
                    stuck = code == 5
                    self._log.warning("a failed script call changed %s, which the host "
                                      "depends on; %s", what,
                                      "the engine resets" if stuck else "it was put back")
            except (quickjs.JSException, *_MALFORMED) as exc:
                self._log.warning("could not check the built-ins after a failed call: %s", exc)
                stuck = True
        try:
            text = self._take()
            requests = self.convert.decode(text, lambda ref, path: None)[1] if text else []
        except (quickjs.JSException, *_MALFORMED) as exc:
            self._log.warning("the requests of a failed script call were lost: %s", exc)
            requests = []
        for _, op, args in requests:
            if op in ORPHAN_OPS and self.on_orphan is not None:
                try:
                    self.on_orphan(str(op), tuple(args))
                except Exception as exc:  # the failing call's error matters more
                    self._log.warning("a publish from a failed call failed too: %s", exc)
            elif op not in ORPHAN_OPS:
                self._log.warning("dropped %s from a script call that failed", op)
        if call:
            self._finish(call)
        if stuck:
            self._reset()

    def _finish(self, call: int) -> None:
        """Remove what call ``call``, which ended early, left in the kernel: its state, the
        promises of its requests (the frames awaiting them with them), the functions an
        interrupted encoding stored. Under the engine's whole budget: the call's own may be
        spent, and a cleanup the time limit stopped would leave it all behind."""
        self._set_limit(self.time_budget)
        try:
            self._end(call)
        except quickjs.JSException as exc:  # out of memory
            self._log.warning("could not clear the state of script call #%d: %s", call, exc)

    def _sweep(self) -> None:
        """End the calls whose :class:`Pending` was dropped (see :class:`_Call`)."""
        while self._dropped:
            self._finish(self._dropped.pop())

    # -- defining ------------------------------------------------------------------------
    def _set_limit(self, seconds: float) -> None:
        if seconds != self._limit:
            self._ctx.set_time_limit(seconds)
            self._limit = seconds

    def evaluate(self, source: str, name: str = "<script>") -> Any:
        """Evaluate ``source`` at the top level (for bindings: host glue, so its lines
        count as glue in stack traces; see :func:`one_line`); returns the raw value."""
        with self._lock:
            self._set_limit(self.time_budget)
            try:
                return self._ctx.eval(source)
            except quickjs.JSException as exc:
                raise self._error(str(exc), name, self.time_budget) from None

    def compile(self, source: str, name: str = "<script>") -> JsFunction:
        """Compile a script into a function (its body runs as an async function, so
        top-level ``await`` works; ``return`` gives the script's result)."""
        # the body starts on line 2: line 1 is the glue's (see _GLUE)
        wrapped = "(async function () {\n" + source + "\n})"
        with self._lock:
            self._set_limit(self.time_budget)
            try:
                fn = self._ctx.eval(wrapped)
            except quickjs.JSException as exc:
                text = str(exc)
                match = _LOCATION.search(text)
                line = int(match.group(1)) - _GLUE if match else None
                raise ScriptError(f"syntax error: {_first_line(text)}", script=name,
                                  line=line if line and line > 0 else None,
                                  hint="fix the JavaScript at that line") from None
            try:
                ref = JsFunction(self._store_fn(fn))
            except quickjs.JSException as exc:  # out of memory
                raise self._error(str(exc), name, self.time_budget) from None
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
        return self._start(fn, self._enter, (self.convert.encode(list(args), "arguments"),),
                           name, time_budget)

    def _start(self, fn: Any, entry: Any, args: tuple[Any, ...], name: str | None,
               time_budget: float | None) -> Outcome:
        budget = self.time_budget if time_budget is None else time_budget
        script = self._names.get(int(fn)) or name or "<script>"
        call = _Call(next(self._call_ids), script, budget, budget, self._dropped)
        with self._lock:
            if self._dropped:
                self._sweep()
            self._set_limit(budget)
            began = time.monotonic()
            try:
                entered = entry(int(fn), call.id, *args)
            except quickjs.StackOverflow as exc:
                self._salvage(call.id)
                raise ScriptError(f"stack overflow: {_first_line(str(exc))}", script=script,
                                  hint="look for unbounded recursion") from None
            except quickjs.JSException as exc:
                self._salvage(call.id)
                raise self._error(str(exc), script, budget) from None
            finally:
                call.left -= time.monotonic() - began
        return self._advance(call, None, entered if type(entered) is str else None)

    def start_hook(self, fn: Any, ctx: HookContext, *, name: str | None = None,
                   time_budget: float | None = None) -> Outcome:
        """:meth:`start` with the script's view of the hook context ``ctx``."""
        fields = self.convert.hook_fields(ctx)
        if fields is None:  # the checked encoding of the whole view names what it refuses
            return self.start(fn, (hook_context_view(ctx),), name=name,
                              time_budget=time_budget)
        return self._start(fn, self._enter_hook, fields, name, time_budget)

    def start_event(self, fn: Any, event: UniversalEvent, *, name: str | None = None,
                    time_budget: float | None = None) -> Outcome:
        """:meth:`start` with the script's view of ``event``."""
        return self._start(fn, self._enter, (self.convert.encode_view(event_view(event)),),
                           name, time_budget)

    def release(self, fn: JsFunction) -> None:
        """Forget a kept function (a script that has run, an unregistered hook)."""
        with self._lock:
            try:
                self._release(int(fn))
            except quickjs.JSException as exc:  # only out of memory can get here
                self._log.warning("could not release script function #%d: %s", fn, exc)
        self._names.pop(int(fn), None)

    def resume(self, pending: Pending, replies: list[Reply]) -> Outcome:
        """Settle the promises of the replied requests and continue the call."""
        call: _Call = pending.state
        call.waiting = False  # resumed: this call ends it, whichever way it ends
        try:
            try:
                text = self.convert.encode(self._payload(replies), "replies")
            except InvalidValueError:
                # A value no script can hold (a lone surrogate, say): that call raises in
                # the script, which may catch it, as if the operation had failed.
                text = self.convert.encode(self._payload([self._carried(r) for r in replies]),
                                           "replies")
        except InvalidValueError:
            with self._lock:
                self._finish(call.id)
            raise
        return self._advance(call, text)

    @staticmethod
    def _payload(replies: list[Reply]) -> list[list[Any]]:
        return [[r.id, r.ok, r.value if r.ok else str(r.value), r.error_type] for r in replies]

    def _carried(self, reply: Reply) -> Reply:
        """``reply``, or the error reply its value makes when it cannot reach a script."""
        if reply.ok:
            try:
                self.convert.encode(reply.value, "reply")
            except InvalidValueError as exc:
                return failed_reply(reply.id, exc)
        return reply

    def time_left(self, pending: Pending) -> float:
        """Seconds of script time the call stopped at ``pending`` has left."""
        call: _Call = pending.state
        return call.left

    def charge(self, pending: Pending, seconds: float) -> None:
        """Spend ``seconds`` of that call's budget (its callbacks' script time)."""
        call: _Call = pending.state
        call.left -= seconds

    def _advance(self, call: _Call, replies: str | None = None,
                 ready: str | None = None) -> Outcome:
        try:
            return self._next(call, replies, ready)
        except BaseException:
            call.waiting = False
            with self._lock:
                self._salvage(call.id)
            raise

    def _next(self, call: _Call, replies: str | None, ready: str | None = None) -> Outcome:
        """Run the call's next slice: settle ``replies``, run the pending jobs, poll. A
        call whose entry already answered (``ready``) is done unless a job is pending."""
        with self._lock:
            if call.left <= 0:
                where = ""
                if replies is not None:
                    with contextlib.suppress(quickjs.JSException):
                        where = str(self._abandon(replies))
                raise self._script_error("InternalError", "interrupted", where, call.script,
                                         call.budget)
            self._set_limit(call.left)
            began = time.monotonic()
            try:
                if replies is not None:
                    self._settle(call.id, replies)
                if ready is not None and not self._ctx.execute_pending_job():
                    answer = ready
                else:
                    self._run_jobs(call, began)
                    answer = str(self._poll(call.id))
                    while answer == "[3]":
                        self._run_jobs(call, began)
                        answer = str(self._poll(call.id))
            except quickjs.JSException as exc:
                raise self._error(str(exc), call.script, call.budget) from None
            finally:
                call.left -= time.monotonic() - began
        if not answer:
            raise ScriptError("the script is waiting for a promise that nothing will settle",
                              script=call.script,
                              hint="await only host calls and promises the script resolves")

        try:
            tag, value = msgspec.json.decode(answer)
            if tag >= 10:  # it holds function references or big numbers (see send())
                tag, value = self.convert.restore([tag - 10, value], self._adopter(call))
            if tag == 0:
                pending = Pending([Request(int(i), str(op), tuple(args))
                                   for i, op, args in value], call)
                call.waiting = True
                return pending
            if tag == 1:
                return Finished(value)
            if tag == 2:
                kind, message, stack = value
                error = (str(kind), str(message), str(stack))
            else:
                what = str(value)
        except _MALFORMED as exc:
            self._reset()
            raise ScriptError(f"the JavaScript engine's host glue answered with malformed "
                              f"data ({exc}); the engine was reset, and the hooks and "
                              "subscriptions its scripts made were removed",
                              script=call.script) from None
        if tag == 2:
            raise self._script_error(*error, call.script, call.budget)
        return self._tampered(tag == 5, what, call)

    def _adopter(self, call: _Call) -> Callable[[Any, str], Any]:
        def function(ref: Any, path: str) -> Any:
            # a function handed out while this call runs was defined by its script
            self._names.setdefault(int(ref), call.script)
            return self.function_wrapper(ref, path)

        return function

    def _tampered(self, stuck: bool, what: str, call: _Call) -> Outcome:
        """A script changed built-ins the host glue depends on (``what``): they were put
        back, or (``stuck``) they could not be (made non-configurable): the engine resets."""
        if stuck:
            self._reset()
            raise ScriptError(
                f"the script changed {what}, which the host depends on, so that it cannot be "
                "put back; the JavaScript engine was reset, and the hooks and subscriptions "
                "its scripts made were removed", script=call.script,
                hint="leave these built-ins as they are")
        raise ScriptError(f"the script changed {what}, which the host depends on; the "
                          "change was undone and the call stopped", script=call.script,
                          hint="leave these built-ins as they are")

    def _run_jobs(self, call: _Call, began: float) -> None:
        deadline = began + call.left
        ran = 0
        while self._ctx.execute_pending_job():
            ran += 1
            if ran % 1000 == 0 and (ran >= MAX_JOBS or time.monotonic() > deadline):
                # QuickJS cannot drop queued jobs, and each job is too short for the
                # interrupt handler: the chain would run again on every later call.
                # Only a fresh context ends it.
                self._reset()
                raise ScriptTimeoutError(
                    f"the script's promise jobs ran past the time budget of {call.budget:g} "
                    "s; the JavaScript engine was reset, and the hooks and subscriptions "
                    "its scripts made were removed", script=call.script,
                    hint="look for a promise chain that never ends")

    # -- errors --------------------------------------------------------------------------
    def _error(self, text: str, script: str, budget: float) -> ScriptError:
        first = _first_line(text)
        kind, _, message = first.partition(": ")
        return self._script_error(kind, message or first, text, script, budget)

    def _script_error(self, kind: str, message: str, stack: str, script: str,
                      budget: float) -> ScriptError:
        # the script's frames: glue frames (line 1) are dropped, lines shifted back by one
        frames: list[str] = []
        line: int | None = None
        inner: str | None = None
        for frame in stack.split("\n"):
            if not frame.strip():
                continue
            match = _FRAME.search(frame)
            if match is None:
                continue  # a native frame (the glue's Reflect.apply ...)
            number = int(match.group(2)) - _GLUE
            if number <= 0:
                continue
            if line is None:
                line, inner = number, match.group(1)
            frames.append(_LOCATION.sub(f"({script}:{number})", frame))
        trace = "\n".join(frames) or None
        if kind == "InternalError" and message == "interrupted":
            # the line is QuickJS's last recorded position: exact in most loops, the
            # function's first line in an empty one (`for (;;) {}`)
            where = f" in {inner}" if inner and inner != "<anonymous>" else ""
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
        """``[functions kept, calls in flight, promises waiting, outbox length]`` (after
        the state of calls whose :class:`Pending` was dropped is removed)."""
        with self._lock:
            if self._dropped:
                self._sweep()
            try:
                return [int(v) for v in self.convert.decode(self._counts().json())]
            except quickjs.JSException as exc:
                raise self._error(str(exc), "<counts>", self.time_budget) from None


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0]
