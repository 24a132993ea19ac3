// 09 State and sessions.
//
// State is a key/value store shared by Python and scripts, in scopes: "global" (the
// default), "session", "workflow", "agent" (a scope also needs a scope_id).
// State.set resolves to the new version; State.get to null for a missing key.
// A session is a named run with its own state, checkpoints and a lifecycle.

// 1) Global state.
const v1 = await State.set("counter", 1);
const v2 = await State.set("counter", (await State.get("counter")) + 1);
console.log(`counter = ${await State.get("counter")} (version ${v2})`);
if ((await State.get("counter")) !== 2 || v2 !== v1 + 1) throw new Error("counter");

await State.set("config.theme", "dark");
await State.set("config.lang", "en");
const keys = (await State.list({prefix: "config."})).sort();
console.log(`config keys: ${keys.join(", ")}`);
if (keys.join() !== "config.lang,config.theme") throw new Error(`keys ${keys}`);

// Optimistic concurrency: the write only happens at the expected version.
let stale = false;
try {
  await State.set("counter", 99, {expected_version: v1});
} catch (err) {
  stale = true;
}
console.log(`stale write refused: ${stale}`);
if (!stale || (await State.get("counter")) !== 2) throw new Error("conditional write");

if ((await State.delete("config.theme")) !== true) throw new Error("delete");
if ((await State.get("config.theme")) !== null) throw new Error("deleted key reads null");
if ((await State.get("missing", {default: "fallback"})) !== "fallback") throw new Error("default");

// Hooks see state writes too.
let writes = 0;
const h = await Hook.register("BeforeStateWrite", (ctx) => { writes += 1; });

// 2) A session: its state lives in scope "session" with the session id.
const s = await Session.start({name: "checkout", metadata: {user: "ada"}});
console.log(`session ${s.name} started: ${s.id} (${s.status})`);
const scope = {scope: "session", scope_id: s.id};
await State.set("cart", ["book"], scope);

// A checkpoint stores a snapshot of the session's state; restore puts it back.
const label = await Session.checkpoint(s, "one-item");
await State.set("cart", ["book", "lamp", "chair"], scope);
console.log(`cart before restore: ${(await Session.get(s, "cart")).length} items`);
const restored = await Session.restore(s, label);
console.log(`restored checkpoint ${label}: cart = ${JSON.stringify(restored.cart)}`);
const cart = await Session.get(s, "cart");
if (cart.length !== 1 || cart[0] !== "book") throw new Error("restore");

// Session state is separate from global state.
if ((await State.get("cart")) !== null) throw new Error("session state leaked");

await Session.save(s);
const listed = await Session.list({status: "active"});
if (listed.length !== 1 || listed[0].id !== s.id) throw new Error("session list");
const final = await Session.end(s);   // Session.complete(s) also works
console.log(`session status: ${final.status}`);
if (final.status === "active") throw new Error("ended");
await h.unregister();
if (writes < 3) throw new Error("the hook saw the session's state writes");

return {counter: await State.get("counter"), session: s.name, status: final.status,
        writes_seen: writes};
