-- Every denied function errors naming the flag that allows it; no path to Python.
local function fails_with(fn, needle)
  local ok, err = pcall(fn)
  assert(not ok, "expected an error")
  assert(string.find(tostring(err), needle, 1, true), tostring(err))
end
fails_with(function() return io.open("/etc/passwd") end, "--allow-read=PATH")
fails_with(function() return io.popen("ls") end, "--allow-exec")
fails_with(function() return os.execute("ls") end, "--allow-exec")
fails_with(function() return os.getenv("HOME") end, "--allow-env")
fails_with(function() return os.remove("x") end, "--allow-write=PATH")
fails_with(function() return dofile("x") end, "--allow-read=PATH")
fails_with(function() return require("os") end, "not available")
fails_with(function() return debug.getinfo(1) end, "not available")
-- collectgarbage: the safe options only
assert(math.type(collectgarbage("count")) == "float" and collectgarbage("count") > 0)
assert(collectgarbage() == 0 and collectgarbage("collect") == 0)
assert(type(collectgarbage("step")) == "boolean")
assert(collectgarbage("isrunning") == true)
for _, opt in ipairs({"stop", "restart", "incremental", "generational", "setpause",
                      "setstepmul", "bogus"}) do
  fails_with(function() return collectgarbage(opt) end, "collectgarbage(\"" .. opt .. "\") is not available")
end
assert(collectgarbage("isrunning") == true)
assert(python == nil and string.dump == nil)
assert(getmetatable("") == false)
assert(load(string.char(27) .. "Lua") == nil)
local f = Hook.register
fails_with(function() return f.__class__ end, "attempt to index")
return "ok"
