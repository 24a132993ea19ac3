-- 09 State and sessions.
--
-- State is a key/value store shared by Python and scripts, in scopes: "global" (the
-- default), "session", "workflow", "agent" (a scope also needs a scope_id).
-- State.set returns the new version; State.get returns nil for a missing key.
-- A session is a named run with its own state, checkpoints and a lifecycle.

-- 1) Global state.
local v1 = State.set("counter", 1)
local v2 = State.set("counter", State.get("counter") + 1)
print("counter = " .. State.get("counter") .. " (version " .. v2 .. ")")
assert(State.get("counter") == 2 and v2 == v1 + 1)

State.set("config.theme", "dark")
State.set("config.lang", "en")
local keys = State.list({prefix = "config."})
table.sort(keys)
print("config keys: " .. table.concat(keys, ", "))
assert(#keys == 2 and keys[1] == "config.lang")

-- Optimistic concurrency: the write only happens at the expected version.
local ok = pcall(State.set, "counter", 99, {expected_version = v1})
print("stale write refused: " .. tostring(not ok))
assert(not ok and State.get("counter") == 2)

assert(State.delete("config.theme") == true)
assert(State.get("config.theme") == nil)
assert(State.get("missing", {default = "fallback"}) == "fallback")

-- Hooks see state writes too.
local writes = 0
local h = Hook.register("BeforeStateWrite", function(ctx) writes = writes + 1 end)

-- 2) A session: its state lives in scope "session" with the session id.
local s = Session.start({name = "checkout", metadata = {user = "ada"}})
print("session " .. s.name .. " started: " .. s.id .. " (" .. s.status .. ")")
local scope = {scope = "session", scope_id = s.id}
State.set("cart", {"book"}, scope)

-- A checkpoint stores a snapshot of the session's state; restore puts it back.
local label = Session.checkpoint(s, "one-item")
State.set("cart", {"book", "lamp", "chair"}, scope)
print("cart before restore: " .. #Session.get(s, "cart") .. " items")
local restored = Session.restore(s, label)
print("restored checkpoint " .. label .. ": cart = " .. JSON.encode(restored.cart))
assert(#Session.get(s, "cart") == 1 and Session.get(s, "cart")[1] == "book")

-- Session state is separate from global state.
assert(State.get("cart") == nil)

Session.save(s)
local listed = Session.list({status = "active"})
assert(#listed == 1 and listed[1].id == s.id)
local final = Session["end"](s)   -- "end" is a Lua keyword: Session.complete(s) also works
print("session status: " .. final.status)
assert(final.status ~= "active")
h:unregister()
assert(writes >= 3, "the hook saw the session's state writes")

return {counter = State.get("counter"), session = s.name, status = final.status,
        writes_seen = writes}
