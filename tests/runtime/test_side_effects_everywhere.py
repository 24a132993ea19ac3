"""Every tool call that runs inside an attempt (an agent run, a workflow step) is counted in
that attempt's ``side_effects`` by the tool pipeline itself, with the parameters as the
hooks left them: a call a tool's own code or a workflow ``fn`` step makes, a redirected
call, a call a ``BeforeToolExecution`` hook changed. A call that does not run the tool
(replaced by a hook) counts for nothing."""

from __future__ import annotations

import random
from typing import Any

import pytest

from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.errors import AgentError, WorkflowError
from llmspell.hooks import HookPoint
from llmspell.hooks.result import Modified, Redirect, Replace
from llmspell.runtime import SideEffect, System, SystemConfig, Tool, tool
from llmspell.runtime.agents.agent import SideEffects
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.workflows import Sequential, Step
from tests.runtime.side_effects_support import FAST, call_then_503, mailer, recorder


async def _agent_run(system: System, tool_name: str, arguments: dict[str, Any]
                     ) -> list[dict[str, Any]]:
    RetryHook(RetryConfig(**FAST), points=("AgentError",),
              rng=random.Random(1)).install(system.registry)
    seen = recorder(system, HookPoint.AGENT_ERROR)
    agent = system.agents.create("worker", provider=ScriptedProvider(
        call_then_503(tool_name, arguments)), tools=[tool_name])
    with pytest.raises(AgentError):
        await agent.run("do it")
    return seen


async def test_a_tool_that_calls_another_tool_counts_its_side_effects() -> None:
    # The agent's tool declares nothing; its code sends the e-mail through system.tools.
    sent: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(mailer(sent))

        @tool()
        async def notify(to: str) -> str:
            """Tell someone (by e-mail, as it happens)."""
            return str(await system.tools.execute("send_email", {"to": to}))

        system.tools.register(notify)
        seen = await _agent_run(system, "notify", {"to": "ceo"})
    assert sent == ["ceo"]  # not sent again by a retry of the agent
    assert [d.get("side_effects") for d in seen] == [["email"]]


async def test_a_redirected_call_counts_the_side_effects_of_the_tool_that_ran() -> None:
    sent: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(mailer(sent))

        @tool()
        def lookup(to: str) -> str:
            """Look someone up (no side effects)."""
            return "found"

        system.tools.register(lookup)
        system.registry.register(
            HookPoint.BEFORE_TOOL_EXECUTION,
            lambda c: Redirect("send_email") if c.data["tool"] == "lookup" else None,
            name="to-mail")
        seen = await _agent_run(system, "lookup", {"to": "ceo"})
    assert sent == ["ceo"]
    assert [d.get("side_effects") for d in seen] == [["email"]]


class _Request(Tool):
    """A request whose effect depends on its method (GET reads, POST writes)."""

    name = "request"
    description = "Send a request."
    side_effects = frozenset({SideEffect.NETWORK_WRITE})

    def __init__(self, methods: list[str]) -> None:
        self.parameters = {"type": "object", "properties": {"method": {"type": "string"}},
                           "required": ["method"]}
        self.methods = methods

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        return frozenset() if params.get("method") == "GET" else self.side_effects

    def execute(self, params: dict[str, Any]) -> Any:
        self.methods.append(params["method"])
        return "ok"


async def test_parameters_a_before_hook_changed_decide_the_side_effects() -> None:
    # The model asks for a GET; a hook turns it into a POST, which is what ran.
    methods: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(_Request(methods))
        system.registry.register(
            HookPoint.BEFORE_TOOL_EXECUTION,
            lambda c: Modified({**c.data, "params": {"method": "POST"}}), name="to-post")
        seen = await _agent_run(system, "request", {"method": "GET"})
    assert methods == ["POST"]
    assert [d.get("side_effects") for d in seen] == [["network_write"]]


async def test_a_call_a_hook_replaced_counts_for_nothing() -> None:
    # The tool never ran: running the agent again repeats no e-mail.
    sent: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(mailer(sent))
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                                 lambda c: Replace("pretend sent"), name="dry-run")
        seen = await _agent_run(system, "send_email", {"to": "ceo"})
    assert sent == []
    assert [d.get("side_effects") for d in seen] == [[]] * 3  # retried: nothing went out


async def test_a_workflow_fn_step_that_sent_email_is_not_retried() -> None:
    sent: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(mailer(sent))

        async def mail_then_fail(ctx: Any) -> str:
            await system.tools.execute("send_email", {"to": "ceo"})
            raise ConnectionError("reset after the mail went out")

        RetryHook(RetryConfig(**FAST), points=("WorkflowError",),
                  rng=random.Random(1)).install(system.registry)
        seen = recorder(system, HookPoint.WORKFLOW_ERROR)
        flow = Sequential("notify", [Step("mail", fn=mail_then_fail)])
        with pytest.raises(WorkflowError):
            await flow.run(system)
    assert sent == ["ceo"]
    assert seen and seen[0].get("side_effects") == ["email"]


async def test_a_blocking_tool_calling_execute_sync_counts_its_side_effects() -> None:
    sent: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(mailer(sent))

        @tool(blocking=True)
        def notify(to: str) -> str:
            """Tell someone, from a worker thread."""
            return str(system.tools.execute_sync("send_email", {"to": to}))

        system.tools.register(notify)
        seen = await _agent_run(system, "notify", {"to": "ceo"})
    assert sent == ["ceo"]
    assert [d.get("side_effects") for d in seen] == [["email"]]


async def test_each_call_is_noted_in_the_attempts_collector_once_per_run() -> None:
    # Directly: a call outside any attempt notes nothing; inside one, what ran.
    sent: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(mailer(sent))
        await system.tools.execute("send_email", {"to": "a"})
        assert SideEffects.current() is None
        sink, token = SideEffects.enter()
        try:
            await system.tools.execute("send_email", {"to": "b"})
        finally:
            SideEffects.leave(token)
    assert sent == ["a", "b"]
    assert sink.error_data() == {"side_effects": ["email"]}
