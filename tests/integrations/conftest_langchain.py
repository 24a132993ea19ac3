"""Offline LangChain pieces for the adapter tests: a chat model that answers from a script
(text, tool calls, errors), calls tools through ``bind_tools`` and streams, and two tools.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

Step = str | list[dict[str, Any]] | BaseException | Callable[[list[BaseMessage]], Any]


def call(name: str, call_id: str = "c1", **args: Any) -> list[dict[str, Any]]:
    """A step that asks for one tool call."""
    return [{"name": name, "args": args, "id": call_id}]


class ScriptedChatModel(BaseChatModel):
    """Answers turn by turn from ``steps``: the n-th answer of a conversation (counted by
    the AI messages since its last human message) is ``steps[n]``: a text, a list of tool
    calls, an exception to raise, or a function of the messages returning one of those.
    Past the end it repeats the last step. It records what it was sent (``seen``) and the
    tools it was bound to (``seen_tools``); ``provider``/``model`` are its LangSmith
    names (the adapter reads them)."""

    steps: list[Any]
    model: str = "gpt-4o"
    provider: str = "openai"
    seen: list[list[BaseMessage]] = Field(default_factory=list)
    seen_tools: list[list[str]] = Field(default_factory=list)
    seen_kwargs: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self.provider
        params["ls_model_name"] = self.model
        return params

    def _answer(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        self.seen.append(list(messages))
        self.seen_tools.append([t["function"]["name"] for t in kwargs.get("tools") or []])
        self.seen_kwargs.append({k: v for k, v in kwargs.items() if k != "tools"})
        start = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)),
                    default=0)
        turn = sum(1 for m in messages[start:] if isinstance(m, AIMessage))
        step: Any = self.steps[min(turn, len(self.steps) - 1)]
        if callable(step) and not isinstance(step, BaseException):
            step = step(messages)
        if isinstance(step, BaseException):
            raise step
        words = sum(len(str(m.content).split()) for m in messages)
        usage = {"input_tokens": 10 + words, "output_tokens": 5, "total_tokens": 15 + words}
        if isinstance(step, str):
            return AIMessage(content=step, usage_metadata=usage,
                             response_metadata={"finish_reason": "stop",
                                                "model_name": self.model})
        return AIMessage(content="", tool_calls=step, usage_metadata=usage,
                         response_metadata={"finish_reason": "tool_calls",
                                            "model_name": self.model})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, kwargs))])

    def _chunks(self, message: AIMessage) -> Iterator[ChatGenerationChunk]:
        text = str(message.content)
        pieces = [w + " " for w in text.split(" ")] if text else []
        if pieces:
            pieces[-1] = pieces[-1][:-1]
        for piece in pieces:
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        chunks = [{"name": c["name"], "args": json.dumps(c["args"]),
                   "id": c["id"], "index": i, "type": "tool_call_chunk"}
                  for i, c in enumerate(message.tool_calls)]
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", tool_call_chunks=chunks,  # type: ignore[arg-type]
            usage_metadata=message.usage_metadata,
            response_metadata=message.response_metadata, chunk_position="last"))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._answer(messages, kwargs)):
            if run_manager is not None:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._answer(messages, kwargs)):
            if run_manager is not None:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk


RAN: list[tuple[str, dict[str, Any]]] = []
"""Every call of the two tools below, in order (tests clear it)."""


@tool
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    RAN.append(("add", {"a": a, "b": b}))
    return a + b


@tool
def shout(text: str) -> str:
    """Say the text in capitals."""
    RAN.append(("shout", {"text": text}))
    return text.upper()
