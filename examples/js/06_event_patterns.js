// 06 Event patterns: which events a subscription pattern matches.
//
// An event type is made of dot-separated segments ("tool.calculator.completed").
//   "*"          exactly one segment           "tool.*"      -> tool.x, not tool.x.y
//   "**"         any number of segments (0+)   "tool.**"     -> tool, tool.x, tool.x.y
//   globs        inside one segment            "tool.calc*"  -> tool.calc, tool.calculator
//   "?", "[0-9]" one character, a character class

const patterns = ["app.*", "app.**", "**.error", "app.calc*", "app.v[0-9]", "**"];
const hits = {};
for (const p of patterns) {
  hits[p] = [];
  await Event.subscribe(p, (event) => {
    // "**" also sees the bus's own events (hooks, tools); keep only ours.
    if (event.data && event.data.demo) hits[p].push(event.type);
  });
}

const types = ["app", "app.calc", "app.calculator", "app.calc.error", "app.v2", "app.vx",
               "db.error", "db.pool.error"];
for (const t of types) await Event.publish(t, {demo: true});

for (const p of patterns) console.log(`  ${p.padEnd(12)} matched ${hits[p].join(", ")}`);

const expect = (p, list) => {
  if (hits[p].join() !== list.join()) throw new Error(`${p} matched ${hits[p]}, not ${list}`);
};
expect("app.*", ["app.calc", "app.calculator", "app.v2", "app.vx"]);
expect("app.**", ["app", "app.calc", "app.calculator", "app.calc.error", "app.v2", "app.vx"]);
expect("**.error", ["app.calc.error", "db.error", "db.pool.error"]);
expect("app.calc*", ["app.calc", "app.calculator"]);
expect("app.v[0-9]", ["app.v2"]);
expect("**", types);

// The real system publishes tool events: tool.<name>.started / completed / failed.
const toolEvents = [];
await Event.subscribe("tool.calc*.*", (event) => { toolEvents.push(event.type); });
await Tool.invoke("calculator", {expression: "2 ** 8"});
console.log(`tool events: ${toolEvents.join(", ")}`);
if (toolEvents.join() !== "tool.calculator.started,tool.calculator.completed") {
  throw new Error(`tool events ${toolEvents}`);
}

// A bad pattern is refused with an explanation.
let refused = null;
try {
  await Event.subscribe("app.x**");
} catch (err) {
  refused = err.message;
}
console.log(`bad pattern: ${refused}`);
if (!refused) throw new Error("a bad pattern is refused");

const counts = {};
for (const p of patterns) counts[p] = hits[p].length;
return counts;
