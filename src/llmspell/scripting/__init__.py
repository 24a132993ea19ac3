"""Scripting: sandboxed Lua and JavaScript engines and the shared globals bound into them."""

from llmspell.scripting.convert import LuaConverter
from llmspell.scripting.globals import LuaBindings
from llmspell.scripting.host import HostAPI, ScriptHook
from llmspell.scripting.lua import Capabilities, LuaEngine
from llmspell.scripting.runner import ScriptHost

__all__ = ["Capabilities", "HostAPI", "LuaBindings", "LuaConverter", "LuaEngine", "ScriptHook",
           "ScriptHost"]
