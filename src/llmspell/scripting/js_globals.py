"""The shared globals bound for JavaScript: ``Hook``, ``Event``, ``Agent``, ``Tool``,
``Workflow``, ``State``, ``Session``, ``Replay``, ``JSON`` (with ``encode``/``decode``/``null``),
``Logger`` and ``console``; and ``fs``, ``exec`` and ``fetch``, which work only as far as
the capability flags allow (see ``docs/scripting-capabilities.md``).

Every host call returns a promise (``await Tool.invoke(...)``): JavaScript never calls into
Python directly (see :mod:`llmspell.scripting.js`), so a call is a request in the outbox
that the host performs after the current entry into JavaScript returns. The script-facing
API is documented side by side with Lua's in ``docs/scripting.md``.
"""

from __future__ import annotations

import os
from typing import Any

from llmspell.core.language import Language
from llmspell.scripting.host import HostAPI
from llmspell.scripting.js import JsEngine, JsFunction, one_line
from llmspell.scripting.protocol import ScriptFunction
from llmspell.scripting.runtime_ops import ProviderFactory

__all__ = ["JsBindings"]

_PRELUDE = r"""
(function (h, env, envAllowed, capsJson) {
  "use strict";
  // Only captured originals (see the kernel in js.py): a script that replaces a built-in
  // cannot change what these globals do. The shapes (`then` below) run in the kernel when
  // a reply arrives, not through Promise.prototype.then.
  const request = h.request;
  const freeze = Object.freeze, defineProperty = Object.defineProperty;
  const parse = JSON.parse, stringify = JSON.stringify, String_ = String, Error_ = Error;
  const Proxy_ = Proxy;
  const call = (op, ...args) => request(op, args);
  const then = (op, args, shape) => request(op, args, shape);
  const define = (name, value) => defineProperty(globalThis, name, {
    __proto__: null, value: value, writable: false, enumerable: false, configurable: false});
  const sealed = (cls) => { freeze(cls.prototype); freeze(cls); return cls; };

  // fields are declared, so the constructors define them (a setter a script put on
  // Object.prototype is never called)
  const HookHandle = sealed(class HookHandle {
    _id; _point; _name;
    constructor(info) { this._id = info.id; this._point = info.point; this._name = info.name; }
    id() { return this._id; }
    hook_point() { return this._point; }
    hookPoint() { return this._point; }
    name() { return this._name; }
    unregister() { return call("hook.unregister", this._id); }
  });
  const handleId = (handle) => (handle instanceof HookHandle ? handle._id : handle);
  define("Hook", freeze({
    register: (point, fn, options) => then("hook.register", [point, fn, options],
                                           (info) => freeze(new HookHandle(info))),
    unregister: (handle) => call("hook.unregister", handleId(handle)),
    list: (filter) => call("hook.list", filter),
  }));

  const publish = (type, data, options) => call("event.publish", type, data, options);
  define("Event", freeze({
    publish: publish, emit: publish,
    subscribe: (pattern, callback) => call("event.subscribe", pattern, callback),
    receive: (id, timeoutMs) => call("event.receive", id, timeoutMs),
    unsubscribe: (id) => call("event.unsubscribe", id),
    list_subscriptions: () => call("event.list_subscriptions"),
    get_stats: () => call("event.stats"),
  }));

  const invoke = (name, params) => call("tool.invoke", name, params);
  define("Tool", freeze({invoke: invoke, execute: invoke, list: () => call("tool.list")}));

  const AgentRef = sealed(class AgentRef {
    name; model;
    constructor(info) { this.name = info.name; this.model = info.model; }
    execute(input) { return call("agent.execute", this.name, input); }
    invoke(input) { return call("agent.execute", this.name, input); }
  });
  define("Agent", freeze({
    create: (spec) => then("agent.create", [spec], (info) => freeze(new AgentRef(info))),
    get: (name) => freeze(new AgentRef({name: name, model: null})),
    list: () => call("agent.list"),
  }));

  const WorkflowRef = sealed(class WorkflowRef {
    id; name; kind;
    constructor(info) { this.id = info.id; this.name = info.name; this.kind = info.kind; }
    execute(input) { return call("workflow.execute", this.id, input); }
    run(input) { return call("workflow.execute", this.id, input); }
  });
  const builder = (kind) => (spec) =>
    then("workflow.create", [kind, spec], (info) => freeze(new WorkflowRef(info)));
  define("Workflow", freeze({
    sequential: builder("sequential"), conditional: builder("conditional"),
    loop: builder("loop"), parallel: builder("parallel"),
  }));

  const get = (key, options) => call("state.get", key, options);
  const set = (key, value, options) => call("state.set", key, value, options);
  define("State", freeze({
    get: get, set: set, load: get, save: set,
    delete: (key, options) => call("state.delete", key, options),
    list: (options) => call("state.list", options),
  }));

  const start = (options) => call("session.start", options);
  const end = (session) => call("session.end", session);
  define("Session", freeze({
    start: start, create: start, end: end, complete: end,
    save: (session) => call("session.save", session),
    checkpoint: (session, label) => call("session.checkpoint", session, label),
    restore: (session, label) => call("session.restore", session, label),
    get: (session, key) => call("session.get", session, key),
    list: (options) => call("session.list", options),
    delete: (session, options) => call("session.delete", session, options),
    purge: (options) => call("session.purge", options),
  }));

  define("Replay", freeze({
    list: (options) => call("replay.list", options),
    show: (runId) => call("replay.show", runId),
    run: (runId, options) => call("replay.run", runId, options),
    diff: (a, b) => call("replay.diff", a, b),
  }));

  JSON.encode = stringify;
  JSON.decode = parse;
  JSON.null = null;

  const log = (level) => (message, fields) => { call("log", level, String_(message), fields); };
  const Logger = freeze({debug: log("debug"), info: log("info"), warn: log("warn"),
                         error: log("error")});
  define("Logger", Logger);
  const joined = (level) => (...parts) => {
    let line = "";
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i];
      line += (i ? " " : "") + (typeof part === "string" ? part : stringify(part));
    }
    call("log", level, line);
  };
  define("console", freeze({log: joined("info"), info: joined("info"), debug: joined("debug"),
                            warn: joined("warn"), error: joined("error")}));

  const denied = (name, flag) => () => {
    throw new Error_(flag ? name + " is not available: run with " + flag
                          : name + " is not available in the script sandbox (no flag enables it)");
  };
  define("require", denied("require", null));
  // File, process and network access. Without its flag a function throws naming the flag;
  // with it, the host still checks the flag and the path roots on every call.
  const caps = parse(capsJson || "{}");
  const FLAGS = {read: "--allow-read=PATH", write: "--allow-write=PATH",
                 exec: "--allow-exec", net: "--allow-net"};
  const granted = (flag, name, fn) => (caps[flag] ? fn : denied(name, FLAGS[flag]));
  define("fs", freeze({
    readTextFile: granted("read", "fs.readTextFile", (path) => call("fs.read_text", path)),
    readDir: granted("read", "fs.readDir", (path) => call("fs.read_dir", path)),
    stat: granted("read", "fs.stat", (path) => call("fs.stat", path)),
    writeTextFile: granted("write", "fs.writeTextFile",
                           (path, text, options) => call("fs.write_text", path, text, options)),
    remove: granted("write", "fs.remove", (path, options) => call("fs.remove", path, options)),
    rename: granted("write", "fs.rename", (from, to) => call("fs.rename", from, to)),
    mkdir: granted("write", "fs.mkdir", (path, options) => call("fs.mkdir", path, options)),
  }));
  define("exec", granted("exec", "exec",
                         (cmd, args, options) => call("proc.exec", cmd, args, options)));
  const response = (r) => freeze({status: r.status, ok: r.ok, headers: freeze(r.headers),
                                  text: r.body, url: r.url, json: () => parse(r.body)});
  define("fetch", granted("net", "fetch",
                          (url, options) => then("net.fetch", [url, options], response)));
  const envObject = envAllowed ? freeze(parse(env)) : new Proxy_({}, {
    get: (target, key) => denied("process.env." + String_(key), "--allow-env")(),
  });
  define("process", freeze({env: envObject, exit: denied("process.exit", null)}));
})
"""

_PRELUDE_LINE = one_line(_PRELUDE)


class JsBindings:
    """Installs the globals into a :class:`JsEngine` for ``system``; :meth:`close` removes
    the hooks and subscriptions the scripts made."""

    def __init__(self, engine: JsEngine, system: Any, *,
                 providers: ProviderFactory | None = None) -> None:
        self.engine = engine
        self.system = system
        self.api = HostAPI(system, Language.JAVASCRIPT, engine, providers=providers)
        self.api.runtime.replay.caller = engine.allow
        engine.function_wrapper = self._script_function
        engine.on_reset = self._reset
        engine.on_orphan = self.api.perform
        self._install()

    def _install(self) -> None:
        engine = self.engine
        allowed = engine.allow.env
        env = engine.convert.encode(dict(os.environ) if allowed else {}, "environment")
        io = engine.io
        caps = {"read": io.can_read, "write": io.can_write, "exec": io.exec_allowed,
                "net": io.net_allowed}
        engine.with_host(_PRELUDE_LINE, "<globals>", env, allowed,
                         engine.convert.encode(caps, "capabilities"))

    def _reset(self) -> None:
        """The engine replaced its context: the scripts' functions are gone, so are their
        hooks and subscriptions; the globals go into the new context."""
        self.api.close()
        self._install()

    def _script_function(self, ref: Any, path: str) -> ScriptFunction:
        return ScriptFunction(self.engine, JsFunction(int(ref)), self.api.perform,
                              f"javascript function ({path})")

    def close(self) -> None:
        """Unregister every hook and subscription the scripts made."""
        self.api.close()
