"""The agents a system knows, by name (for lookups, redirects and forks)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from llmspell.core.errors import AgentError, InvalidValueError
from llmspell.core.redact import get_logger
from llmspell.runtime.agents.agent import (
    DEFAULT_MAX_TOOL_CALLS,
    DEFAULT_MAX_TOOL_RESULT_CHARS,
    Agent,
)
from llmspell.runtime.agents.lifecycle import AgentState
from llmspell.runtime.providers.base import Provider

__all__ = ["AgentRegistry"]


class AgentRegistry:
    """Creates and finds agents."""

    def __init__(self, system: Any) -> None:
        self._system = system
        self._agents: dict[str, Agent] = {}

    def create(
        self,
        name: str,
        *,
        provider: Provider,
        instructions: str = "",
        tools: Iterable[str] | None = None,
        max_turns: int = 8,
        model: str | None = None,
        temperature: float | None = None,
        max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS,
        max_tool_result_chars: int | None = DEFAULT_MAX_TOOL_RESULT_CHARS,
    ) -> Agent:
        """Create and register an agent (uninitialized; it initializes on first run).
        ``max_tool_calls`` bounds the tool calls run per model answer,
        ``max_tool_result_chars`` the characters of a tool result the model reads (None:
        unbounded; see :class:`Agent`)."""
        if name in self._agents:
            raise InvalidValueError(f"an agent named {name!r} already exists",
                                    hint="choose another name")
        agent = Agent(self._system, name, provider=provider, instructions=instructions,
                      tools=tools, max_turns=max_turns, model=model, temperature=temperature,
                      max_tool_calls=max_tool_calls,
                      max_tool_result_chars=max_tool_result_chars)
        self._agents[name] = agent
        return agent

    def get(self, name: str) -> Agent:
        """The agent called ``name``; an unknown name lists close matches."""
        agent = self._agents.get(name)
        if agent is None:
            close = difflib.get_close_matches(name, list(self._agents), n=3)
            raise AgentError(name, f"no agent named {name!r}",
                             hint=("did you mean " + ", ".join(map(repr, close)) + "?")
                             if close else f"agents: {', '.join(sorted(self._agents)) or 'none'}")
        return agent

    def remove(self, name: str) -> Agent:
        """Forget the agent called ``name`` (its name may be used again) and return it; the
        caller shuts it down if it should end (:meth:`Agent.shutdown`). An unknown name
        raises :class:`AgentError`."""
        agent = self.get(name)
        del self._agents[name]
        return agent

    def names(self) -> list[str]:
        """Agent names, sorted."""
        return sorted(self._agents)

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    async def shutdown_all(self) -> None:
        """Shut down every agent that is not terminated (errors are logged, not raised)."""
        for agent in list(self._agents.values()):
            if agent.state in (AgentState.TERMINATED,):
                continue
            try:
                await agent.shutdown()
            except Exception as exc:
                get_logger("llmspell.runtime").warning(
                    "agent %r did not shut down cleanly: %s", agent.name, exc)
