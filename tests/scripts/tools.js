// A sample of the standard tools called from JavaScript, with a hook watching every call.
const seen = [];
const watcher = await Hook.register("AfterToolExecution", (ctx) => {
  seen.push(ctx.component_id.name);
});

const out = {};
out.calculator = (await Tool.invoke("calculator", {expression: "2 ** 10 + 1"})).result;
out.base64 = (await Tool.invoke("base64_encoder", {operation: "encode", input: "js"})).result;
out.hash = (await Tool.invoke("hash_calculator", {input: "abc", algorithm: "sha256"})).digest;
out.upper = (await Tool.invoke("text_manipulator", {operation: "uppercase", text: "shout"}))
  .result;
out.template = (await Tool.invoke("template_engine",
  {template: "Hi {{ who }}", variables: {who: "JS"}})).result;
out.query = (await Tool.invoke("json_processor",
  {operation: "query", data: {items: [{n: 1}, {n: 2}]}, path: "items[1].n"})).value;
out.valid = (await Tool.invoke("data_validation",
  {data: {id: 1}, schema: {type: "object", required: ["id"]}})).valid;
out.weekday = (await Tool.invoke("date_time_handler",
  {operation: "weekday", datetime: "2024-05-01"})).weekday;
out.uuids = (await Tool.invoke("uuid_generator", {version: 4, count: 3})).uuids.length;
out.host = (await Tool.invoke("url_analyzer", {url: "https://example.org/a?b=1"})).host;
out.written = (await Tool.invoke("file_operations",
  {operation: "write", path: "from-js.txt", content: "written by js"})) !== null;
out.read = (await Tool.invoke("file_operations", {operation: "read", path: "from-js.txt"}))
  .content;
try {
  await Tool.invoke("file_operations", {operation: "read", path: "../escape"});
  out.escape_refused = false;
} catch (e) {
  out.escape_refused = e.message;
}
out.seen = seen.length;
await watcher.unregister();
return out;
