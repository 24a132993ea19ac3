-- A sample of the standard tools called from Lua, with a hook watching every call.
local seen = {}
local watcher = Hook.register("AfterToolExecution", function(ctx)
  table.insert(seen, ctx.component_id.name)
end)

local out = {}
out.calculator = Tool.invoke("calculator", {expression = "2 ** 10 + 1"}).result
out.base64 = Tool.invoke("base64_encoder", {operation = "encode", input = "lua"}).result
out.hash = Tool.invoke("hash_calculator", {input = "abc", algorithm = "sha256"}).digest
out.upper = Tool.invoke("text_manipulator", {operation = "uppercase", text = "shout"}).result
out.template = Tool.invoke("template_engine",
  {template = "Hi {{ who }}", variables = {who = "Lua"}}).result
out.query = Tool.invoke("json_processor",
  {operation = "query", data = {items = {{n = 1}, {n = 2}}}, path = "items[1].n"}).value
out.valid = Tool.invoke("data_validation",
  {data = {id = 1}, schema = {type = "object", required = {"id"}}}).valid
out.weekday = Tool.invoke("date_time_handler",
  {operation = "weekday", datetime = "2024-05-01"}).weekday
out.uuids = #Tool.invoke("uuid_generator", {version = 4, count = 3}).uuids
out.host = Tool.invoke("url_analyzer", {url = "https://example.org/a?b=1"}).host
out.written = Tool.invoke("file_operations",
  {operation = "write", path = "from-lua.txt", content = "written by lua"}) ~= nil
out.read = Tool.invoke("file_operations", {operation = "read", path = "from-lua.txt"}).content
local ok, err = pcall(Tool.invoke, "file_operations", {operation = "read", path = "../escape"})
out.escape_refused = (not ok) and tostring(err)
out.seen = #seen
watcher:unregister()
return out
