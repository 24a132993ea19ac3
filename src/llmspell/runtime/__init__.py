"""The runtime: the system object, tools, agents and providers — where hooks change what
the software does."""

from llmspell.runtime.agents.agent import MODEL_CALL, Agent, AgentDelta, AgentResponse
from llmspell.runtime.agents.lifecycle import PAUSE, RECOVER, RESUME, AgentState
from llmspell.runtime.calls import CallOutcome, ResultCache
from llmspell.runtime.config import ScriptingConfig, SystemConfig, load_config
from llmspell.runtime.sessions import Session, SessionManager
from llmspell.runtime.state import StateScope, StateStore
from llmspell.runtime.system import System
from llmspell.runtime.tools.base import FunctionTool, SecurityLevel, SideEffect, Tool, tool
from llmspell.runtime.tools.registry import ToolRegistry, ToolRun
from llmspell.runtime.workflows import (
    Branch,
    Conditional,
    Loop,
    Parallel,
    Sequential,
    Step,
    Workflow,
    WorkflowContext,
    WorkflowFailedError,
    WorkflowResult,
)

__all__ = [
    "MODEL_CALL",
    "PAUSE",
    "RECOVER",
    "RESUME",
    "Agent",
    "AgentDelta",
    "AgentResponse",
    "AgentState",
    "Branch",
    "CallOutcome",
    "Conditional",
    "FunctionTool",
    "Loop",
    "Parallel",
    "ResultCache",
    "SecurityLevel",
    "SideEffect",
    "Sequential",
    "Session",
    "SessionManager",
    "StateScope",
    "StateStore",
    "Step",
    "System",
    "ScriptingConfig",
    "SystemConfig",
    "Tool",
    "ToolRegistry",
    "ToolRun",
    "Workflow",
    "WorkflowContext",
    "WorkflowFailedError",
    "WorkflowResult",
    "load_config",
    "tool",
]
