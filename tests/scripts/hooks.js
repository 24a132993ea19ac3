// Registration, listing (all, by point, by filter) and unregistration from JavaScript.
const h = await Hook.register("before_tool_execution", (ctx) => "continue", "low");
if (h.hook_point() !== "before_tool_execution") throw new Error("point: " + h.hook_point());
if ((await Hook.list("BeforeToolExecution")).length !== 1) throw new Error("list by point");
if ((await Hook.list({language: "javascript"})).length !== 1) throw new Error("by language");
if ((await Hook.list({priority: "low"})).length !== 1) throw new Error("by priority");
const second = await Hook.register("AfterToolExecution", () => undefined,
                                   {priority: 5, name: "tagged", tags: ["audit"]});
const tagged = await Hook.list({tag: "audit"});
if (tagged.length !== 1 || tagged[0].name !== "tagged") throw new Error("by tag");
if ((await h.unregister()) !== true) throw new Error("unregister");
if ((await Hook.unregister(second)) !== true) throw new Error("Hook.unregister");
if ((await Hook.unregister(second)) !== false) throw new Error("second unregister");
if ((await Hook.list({language: "javascript"})).length !== 0) throw new Error("left over");
return "ok";
