"""Steps, branches, the context a step sees, and the ``${...}`` reference resolver.

A :class:`Step` runs exactly one thing: a tool (``tool=`` with ``params=``), an agent
(``agent=`` with ``input=``), a function (``fn(ctx)``, sync or async) or a nested workflow
(``workflow=`` with ``input=``). Its inputs may be computed at run time:

* a callable value ``(WorkflowContext) -> value`` (sync or async) is called;
* a string of the exact form ``"${steps.<name>.output}"``, ``"${steps.<name>.output.<key>...}"``,
  ``"${state.<key>...}"``, ``"${input...}"``, ``"${item...}"`` or ``"${index}"`` is replaced by
  the value it names (keys walk dicts; digits index lists);
* dicts and lists are resolved item by item.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from llmspell.core.errors import ConfigurationError, WorkflowError

if TYPE_CHECKING:
    from llmspell.runtime.workflows.engine import Workflow

__all__ = ["Branch", "OnError", "Step", "WorkflowContext", "lookup", "resolve"]

OnError = Literal["fail", "continue", "retry"]
_ON_ERROR = ("fail", "continue", "retry")
_REF = re.compile(r"^\$\{([^{}]+)\}$")
_STEP_REF = re.compile(r"^steps\.(.+?)\.output(?:\.(.+))?$")


@dataclass
class WorkflowContext:
    """What a step, a condition or a computed input sees.

    ``state`` is the workflow's shared state (a dict every step may read and change);
    ``outputs`` maps step names to their outputs so far; ``input`` is the workflow input;
    ``item``/``index`` are the current loop item and index (None outside a loop); ``step``
    and ``step_input`` name the running step and its resolved input.
    """

    state: dict[str, Any]
    outputs: dict[str, Any]
    input: Any = None
    item: Any = None
    index: int | None = None
    workflow_id: str = ""
    workflow: str = ""
    step: str | None = None
    step_input: Any = None
    system: Any = field(default=None, repr=False)


class Step:
    """One unit of work in a workflow; exactly one of ``tool``, ``agent``, ``fn``, ``workflow``.

    ``on_error``: ``"fail"`` (the workflow fails), ``"continue"`` (the error is recorded,
    the output is None, the workflow goes on) or ``"retry"`` (up to ``retries`` more attempts,
    waiting ``backoff * 2**n`` seconds, then fail). ``timeout`` bounds one attempt (seconds).
    """

    __slots__ = ("agent", "backoff", "fn", "input", "kind", "name", "on_error", "params",
                 "retries", "timeout", "tool", "workflow")

    def __init__(
        self,
        name: str,
        *,
        tool: str | None = None,
        params: dict[str, Any] | Callable[[WorkflowContext], Any] | None = None,
        agent: str | None = None,
        input: Any = None,
        fn: Callable[[WorkflowContext], Any] | None = None,
        workflow: Workflow | None = None,
        timeout: float | None = None,
        on_error: OnError = "fail",
        retries: int = 3,
        backoff: float = 0.1,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a step needs a non-empty name, got {name!r}",
                                     hint="Step('fetch', tool='http_request', params={...})")
        kinds = [k for k, v in (("tool", tool), ("agent", agent), ("fn", fn),
                                ("workflow", workflow)) if v is not None]
        if len(kinds) != 1:
            raise ConfigurationError(
                f"step {name!r} must name exactly one of tool, agent, fn, workflow "
                f"(got {', '.join(kinds) or 'none'})",
                hint="e.g. Step('add', tool='add', params={'a': 1, 'b': 2})",
            )
        if fn is not None and not callable(fn):
            raise ConfigurationError(f"step {name!r}: fn must be a function, got "
                                     f"{type(fn).__name__}",
                                     hint="fn=lambda ctx: ... (sync or async; it gets the "
                                          "WorkflowContext)")
        if tool is not None and (not isinstance(tool, str) or not tool):
            raise ConfigurationError(f"step {name!r}: tool must be a tool's name, got {tool!r}",
                                     hint="e.g. Step('add', tool='add', params={'a': 1})")
        if on_error not in _ON_ERROR:
            raise ConfigurationError(f"step {name!r}: on_error must be one of {_ON_ERROR}, "
                                     f"got {on_error!r}", hint="use 'fail', 'continue' or 'retry'")
        if retries < 0 or backoff < 0:
            raise ConfigurationError(f"step {name!r}: retries and backoff must be >= 0",
                                     hint="e.g. retries=3, backoff=0.1")
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"step {name!r}: timeout must be > 0 seconds or None",
                                     hint="e.g. timeout=5.0")
        self.name = name
        self.kind = kinds[0]
        self.tool = tool
        self.params = params
        self.agent = agent
        self.input = input
        self.fn = fn
        self.workflow = workflow
        self.timeout = timeout
        self.on_error: OnError = on_error
        self.retries = retries
        self.backoff = backoff

    @property
    def target(self) -> str:
        """What the step runs: the tool, agent, function or workflow name."""
        if self.tool is not None:
            return self.tool
        if self.agent is not None:
            return self.agent
        if self.workflow is not None:
            return self.workflow.name
        return getattr(self.fn, "__name__", "fn")

    def __repr__(self) -> str:
        return f"Step({self.name!r}, {self.kind}={self.target!r})"


@dataclass
class Branch:
    """A named list of steps; ``condition(ctx) -> bool`` (sync or async) selects it in a
    :class:`~llmspell.runtime.workflows.Conditional` and is ignored by ``Parallel``."""

    name: str
    condition: Callable[[WorkflowContext], Any] | None = None
    steps: Sequence[Step] = ()


async def resolve(value: Any, ctx: WorkflowContext) -> Any:
    """Resolve ``value`` against ``ctx``: call callables, substitute ``${...}`` references,
    recurse into dicts and lists (see the module docstring)."""
    if callable(value):
        value = value(ctx)
        if inspect.isawaitable(value):
            value = await value
        return value
    if isinstance(value, str):
        match = _REF.match(value)
        return lookup(match.group(1).strip(), ctx) if match else value
    if isinstance(value, dict):
        return {k: await resolve(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [await resolve(v, ctx) for v in value]
    return value


def lookup(path: str, ctx: WorkflowContext, shown: str | None = None) -> Any:
    """The value a reference path names (``steps.<name>.output.<key>``, ``state.<key>``,
    ``input``, ``item``, ``index``; see the module docstring). Errors show the reference as
    ``shown`` (default ``${path}``)."""
    ref = shown or "${" + path + "}"
    keys: list[str]
    if path.startswith("steps."):
        match = _STEP_REF.match(path)
        if match is None:
            raise WorkflowError(ctx.workflow, f"bad reference {ref}", step=ctx.step,
                                hint="write ${steps.<name>.output} or ${steps.<name>.output.<key>}")
        name = match.group(1)
        if name not in ctx.outputs:
            done = ", ".join(sorted(ctx.outputs)) or "none yet"
            raise WorkflowError(
                ctx.workflow, f"{ref} refers to step {name!r}, which has no output",
                step=ctx.step,
                hint=f"a step can use outputs of steps that ran before it (so far: {done})",
            )
        value = ctx.outputs[name]
        keys = match.group(2).split(".") if match.group(2) else []
    else:
        head, *keys = path.split(".")
        if head == "state":
            value = ctx.state
            if not keys:
                return value
        elif head in ("input", "item", "index"):
            value = getattr(ctx, head)
        else:
            raise WorkflowError(
                ctx.workflow, f"unknown reference {ref}", step=ctx.step,
                hint="use ${steps.<name>.output}, ${state.<key>}, ${input}, ${item} or ${index}",
            )
    for key in keys:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, (list, tuple)) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise WorkflowError(
                ctx.workflow, f"{ref}: no {key!r} in {type(value).__name__}", step=ctx.step,
                hint="check the key path; dict keys and list indices are separated by '.'",
            )
    return value
