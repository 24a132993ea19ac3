"""Scripting: the sandboxed Lua engine and the shared globals bound into it."""

from llmspell.scripting.convert import LuaConverter
from llmspell.scripting.globals import LuaBindings, LuaHook
from llmspell.scripting.lua import Capabilities, LuaEngine
from llmspell.scripting.runner import ScriptHost

__all__ = ["Capabilities", "LuaBindings", "LuaConverter", "LuaEngine", "LuaHook", "ScriptHost"]
