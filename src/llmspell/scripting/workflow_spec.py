"""Scripts' workflow tables -> :mod:`llmspell.runtime.workflows` objects.

The shapes are the seed's (``Workflow.sequential|conditional|loop|parallel({...})``):

* steps: ``{name, type="tool"|"agent"|"custom"|"workflow", tool=, agent=, workflow=,
  input=, execute=, on_error=, retries=, backoff_ms=, timeout_ms=}`` (``type`` is inferred
  when left out; a custom step's ``execute(ctx)`` returns ``{success, output, error,
  state}`` or a plain value);
* references inside inputs: ``{{step:NAME:output}}``, ``{{step:NAME:output.a.b}}``,
  ``{{state:key}}``, ``{{loop:current_item}}``, ``{{loop:current_index}}``, ``{{input}}``,
  and our own ``${...}`` form. A string that is one reference becomes the value; a reference
  inside a longer string is formatted into it;
* conditions: a function ``(ctx) -> bool`` or a table ``{type="always"|"never"|
  "shared_data_equals"|"shared_data_greater_than"|"shared_data_less_than"|
  "step_output_contains"|"and"|"or"|"not"|"custom", ...}``;
* loops: ``iterator = {range = {start, ["end"], step}}`` (``end`` exclusive, as in Python),
  ``{collection = {...}}`` or ``{while_condition = ...}``, with ``body``, ``max_iterations``,
  ``break_condition`` and ``on_max_iterations = "complete" | "fail"`` (what a loop stopped
  at ``max_iterations`` with more to do does; why a loop ended is in
  ``outputs["<name>.terminated"]``);
* parallel: ``branches = {{name, steps}, ...}``, ``max_concurrency``, ``fail_fast``;
* every pattern: ``state = {...}`` seeds the shared state of each run, ``timeout_ms``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from llmspell.core.errors import WorkflowError
from llmspell.runtime.workflows import (
    Branch,
    Conditional,
    Loop,
    Parallel,
    Sequential,
    Step,
    Workflow,
    WorkflowContext,
    WorkflowResult,
)
from llmspell.runtime.workflows.patterns import OnMaxIterations
from llmspell.runtime.workflows.steps import lookup
from llmspell.scripting.protocol import ScriptFunction

__all__ = ["KINDS", "build_workflow", "context_view", "result_view"]

KINDS = ("sequential", "conditional", "loop", "parallel")
_TEMPLATE = re.compile(r"\{\{\s*([a-z_]+)(?::([^:}]+))?(?::([^}]+))?\s*\}\}")
_STRATEGY = {"fail_fast": "fail", "fail": "fail", "continue": "continue", "retry": "retry"}


def _bad(workflow: str, message: str, hint: str) -> WorkflowError:
    return WorkflowError(workflow, message, hint=hint)


def context_view(ctx: WorkflowContext) -> dict[str, Any]:
    """What a script step or condition sees of the running workflow."""
    return {"workflow": ctx.workflow, "workflow_id": ctx.workflow_id, "step": ctx.step,
            "input": ctx.input, "item": ctx.item, "index": ctx.index,
            "state": dict(ctx.state), "outputs": dict(ctx.outputs)}


def result_view(result: WorkflowResult) -> dict[str, Any]:
    """``{success, status, output, outputs, state, errors, error, ...}`` for scripts;
    ``output`` is the last step's output (a loop: the per-iteration outputs; parallel: all
    outputs)."""
    outputs = result.outputs
    plain = [k for k in outputs if "." not in k]
    output: Any = outputs.get(plain[-1]) if plain else None
    iterations = f"{result.workflow}.iterations"
    if iterations in outputs:
        output = outputs[iterations]
    elif f"{result.workflow}.branches" in outputs:
        output = {k: outputs[k] for k in plain}
    error = result.errors[-1]["error"] if result.errors else None
    return {"success": result.status != "failed", "status": result.status, "output": output,
            "outputs": msgspec.to_builtins(outputs), "state": result.state,
            "errors": result.errors, "error": error, "workflow": result.workflow,
            "workflow_id": result.workflow_id, "correlation_id": result.correlation_id}


class _Builder:
    def __init__(self, name: str, workflows: Mapping[str, Workflow]) -> None:
        self.name = name
        self.workflows = workflows
        self.counter = 0

    # -- values -------------------------------------------------------------------------
    def template(self, value: Any) -> Any:
        if isinstance(value, str) and "{{" in value:
            return _Template(self.name, value)
        if isinstance(value, dict):
            return {k: self.template(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.template(v) for v in value]
        return value

    def condition(self, spec: Any, where: str) -> Callable[[WorkflowContext], Any]:
        if isinstance(spec, ScriptFunction):
            fn = spec
            return lambda ctx: fn(context_view(ctx))
        if not isinstance(spec, dict) or "type" not in spec:
            raise _bad(self.name, f"{where}: a condition is a function or a table with a type",
                       'e.g. {type = "shared_data_equals", key = "status", value = "ok"}')
        kind = spec["type"]
        if kind == "always":
            return lambda ctx: True
        if kind == "never":
            return lambda ctx: False
        if kind in ("shared_data_equals", "shared_data_greater_than", "shared_data_less_than"):
            key, expected = spec.get("key"), spec.get("value")
            if not isinstance(key, str):
                raise _bad(self.name, f"{where}: {kind} needs a key", "key = \"status\"")
            compare = _COMPARE[kind]
            return lambda ctx: compare(ctx.state.get(key), expected)
        if kind == "step_output_contains":
            step, needle = spec.get("step_name", spec.get("step")), spec.get("value",
                                                                             spec.get("text"))
            return lambda ctx: _contains(ctx.outputs.get(str(step)), needle)
        if kind in ("and", "or"):
            parts = [self.condition(c, where) for c in spec.get("conditions") or []]
            return _all(parts) if kind == "and" else _any(parts)
        if kind == "not":
            inner = self.condition(spec.get("condition"), where)
            return _negate(inner)
        if kind == "custom":
            return self.condition(spec.get("evaluate", spec.get("fn")), where)
        raise _bad(self.name, f"{where}: unknown condition type {kind!r}",
                   "use always, never, shared_data_equals, shared_data_greater_than, "
                   "shared_data_less_than, step_output_contains, and, or, not, custom")

    # -- steps --------------------------------------------------------------------------
    def steps(self, specs: Any, where: str) -> list[Step]:
        if isinstance(specs, dict) and not specs:
            specs = []
        if not isinstance(specs, list):
            raise _bad(self.name, f"{where} must be a list of steps", "steps = {{...}, {...}}")
        return [self.step(s, where) for s in specs]

    def step(self, spec: Any, where: str) -> Step:
        self.counter += 1
        if not isinstance(spec, dict):
            raise _bad(self.name, f"{where}: a step is a table, got {type(spec).__name__}",
                       '{name = "add", type = "tool", tool = "calculator", input = {...}}')
        name = spec.get("name") or f"step_{self.counter}"
        kind = spec.get("type") or next(
            (k for k, key in (("tool", "tool"), ("agent", "agent"), ("custom", "execute"),
                              ("workflow", "workflow")) if key in spec), None)
        options = self.step_options(spec, str(name))
        data = spec.get("input", spec.get("params"))
        if kind == "tool":
            return Step(name, tool=_named(spec.get("tool"), self.name, name, "tool"),
                        params=self.template(data or {}), **options)
        if kind == "agent":
            agent = spec.get("agent")
            agent_name = agent.get("name") if isinstance(agent, dict) else agent
            text = data.get("text", data.get("prompt", data.get("input"))) \
                if isinstance(data, dict) else data
            return Step(name, agent=_named(agent_name, self.name, name, "agent"),
                        input=self.template(text or ""), **options)
        if kind == "custom":
            fn = spec.get("execute", spec.get("fn"))
            if not isinstance(fn, ScriptFunction):
                raise _bad(self.name, f"custom step {name!r} needs an execute function",
                           "execute = function(ctx) return {success = true, output = ...} end")
            return Step(name, fn=_custom(fn, self.name, name), **options)
        if kind == "workflow":
            ref = spec.get("workflow")
            wf_id = ref.get("id") if isinstance(ref, dict) else ref
            workflow = self.workflows.get(wf_id) if isinstance(wf_id, str) else None
            if workflow is None:
                raise _bad(self.name, f"step {name!r} names no workflow created by a script",
                           "workflow = <a value returned by Workflow.sequential(...)>")
            return Step(name, workflow=workflow, input=self.template(data), **options)
        raise _bad(self.name, f"step {name!r} has unknown type {kind!r}",
                   'type is "tool", "agent", "custom" or "workflow"')

    def step_options(self, spec: dict[str, Any], name: str) -> dict[str, Any]:
        options: dict[str, Any] = {}
        strategy = spec.get("on_error", self.default_error)
        if isinstance(strategy, dict):
            options["retries"] = max(0, int(strategy.get("max_attempts", 3)) - 1)
            options["backoff"] = float(strategy.get("backoff_ms", 100)) / 1000
            strategy = strategy.get("type", "retry")
        if strategy not in _STRATEGY:
            raise _bad(self.name, f"step {name!r}: unknown error strategy {strategy!r}",
                       "use fail_fast, continue or retry")
        options["on_error"] = _STRATEGY[strategy]
        if "retries" in spec:
            options["retries"] = int(spec["retries"])
        if "backoff_ms" in spec:
            options["backoff"] = float(spec["backoff_ms"]) / 1000
        if spec.get("timeout_ms") is not None:
            options["timeout"] = float(spec["timeout_ms"]) / 1000
        return options

    default_error: Any = "fail_fast"


def _on_max_iterations(workflow: str, value: Any) -> OnMaxIterations:
    if value == "complete" and isinstance(value, str):
        return "complete"
    if value == "fail" and isinstance(value, str):
        return "fail"
    shown = repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__
    raise _bad(workflow, f"on_max_iterations must be 'complete' or 'fail', got {shown}",
               'on_max_iterations = "fail" fails the run when the loop stops at '
               'max_iterations with more to do; "complete" (the default) completes it')


def _named(value: Any, workflow: str, step: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise WorkflowError(workflow, f"step {step!r} needs the {what} to run", step=step,
                            hint=f'{what} = "<name>"')
    return value


def _custom(fn: ScriptFunction, workflow: str, step: str) -> Callable[[WorkflowContext], Any]:
    async def run(ctx: WorkflowContext) -> Any:
        value = fn(context_view(ctx))
        if inspect.isawaitable(value):
            value = await value
        if isinstance(value, dict) and "success" in value:
            if isinstance(value.get("state"), dict):
                ctx.state.update(value["state"])
            if not value["success"]:
                raise WorkflowError(workflow, str(value.get("error") or "the step failed"),
                                    step=step, hint="the custom step returned success = false")
            return value.get("output")
        return value

    run.__name__ = step
    return run


class _Template:
    """A string with ``{{...}}`` references, resolved against the running workflow."""

    def __init__(self, workflow: str, text: str) -> None:
        self.workflow = workflow
        self.text = text
        for match in _TEMPLATE.finditer(text):
            _lookup_path(match, workflow)  # checks the reference kinds up front

    def __call__(self, ctx: WorkflowContext) -> Any:
        whole = _TEMPLATE.fullmatch(self.text.strip())
        if whole is not None:
            return _resolve(whole, ctx)
        return _TEMPLATE.sub(lambda m: _text(_resolve(m, ctx)), self.text)


def _lookup_path(match: re.Match[str], workflow: str) -> str:
    """The reference as a path of the engine's own ``${...}`` references."""
    kind, first, rest = match.group(1), match.group(2), match.group(3)
    if kind == "step" and first and rest:
        if rest.split(".", 1)[0] != "output":
            raise WorkflowError(workflow, f"bad reference {match.group(0)}",
                                hint="write {{step:NAME:output}} or {{step:NAME:output.key}}")
        return f"steps.{first}.{rest}"
    if kind == "state" and first:
        return f"state.{first}" + (f".{rest}" if rest else "")
    if kind == "loop" and first in ("current_item", "current_index", "item", "index"):
        return "index" if "index" in first else "item"
    if kind == "input":
        return f"input.{first}" if first else "input"
    raise WorkflowError(workflow, f"unknown reference {match.group(0)}",
                        hint="use {{step:NAME:output}}, {{state:key}}, {{loop:current_item}}, "
                             "{{loop:current_index}} or {{input}}")


def _resolve(match: re.Match[str], ctx: WorkflowContext) -> Any:
    return lookup(_lookup_path(match, ctx.workflow), ctx, shown=match.group(0))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return msgspec.json.encode(value).decode()


def _contains(value: Any, needle: Any) -> bool:
    if isinstance(value, str):
        return isinstance(needle, str) and needle in value
    if isinstance(value, list | dict):
        return needle in value
    return bool(value == needle)


def _compare_equals(a: Any, b: Any) -> bool:
    return bool(a == b)


def _compare_greater(a: Any, b: Any) -> bool:
    return isinstance(a, int | float) and isinstance(b, int | float) and a > b


def _compare_less(a: Any, b: Any) -> bool:
    return isinstance(a, int | float) and isinstance(b, int | float) and a < b


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "shared_data_equals": _compare_equals,
    "shared_data_greater_than": _compare_greater,
    "shared_data_less_than": _compare_less,
}


def _all(parts: list[Callable[[WorkflowContext], Any]]) -> Callable[[WorkflowContext], Any]:
    async def check(ctx: WorkflowContext) -> bool:
        for part in parts:
            if not await _truth(part, ctx):
                return False
        return True
    return check


def _any(parts: list[Callable[[WorkflowContext], Any]]) -> Callable[[WorkflowContext], Any]:
    async def check(ctx: WorkflowContext) -> bool:
        for part in parts:
            if await _truth(part, ctx):
                return True
        return False
    return check


def _negate(inner: Callable[[WorkflowContext], Any]) -> Callable[[WorkflowContext], Any]:
    async def check(ctx: WorkflowContext) -> bool:
        return not await _truth(inner, ctx)
    return check


async def _truth(fn: Callable[[WorkflowContext], Any], ctx: WorkflowContext) -> bool:
    value = fn(ctx)
    if inspect.isawaitable(value):
        value = await value
    return bool(value)


def build_workflow(kind: str, spec: Any, workflows: Mapping[str, Workflow]) -> Workflow:
    """The workflow a script's table describes (see the module docstring)."""
    if kind not in KINDS:
        raise WorkflowError(str(kind), f"unknown workflow pattern {kind!r}",
                            hint="Workflow.sequential, conditional, loop or parallel")
    if not isinstance(spec, dict):
        raise WorkflowError(kind, f"Workflow.{kind} takes a table",
                            hint=f'Workflow.{kind}({{name = "...", ...}})')
    name = spec.get("name") or f"{kind}_workflow"
    b = _Builder(str(name), workflows)
    b.default_error = spec.get("error_strategy", "fail_fast")
    common: dict[str, Any] = {}
    if spec.get("timeout_ms") is not None:
        common["timeout"] = float(spec["timeout_ms"]) / 1000
    if kind == "sequential":
        return Sequential(name, b.steps(spec.get("steps"), "steps"), **common)
    if kind == "conditional":
        branches = [Branch(br.get("name") or f"branch_{i}",
                           b.condition(br.get("condition", {"type": "always"}),
                                       f"branch {i}"),
                           b.steps(br.get("steps", []), f"branch {i} steps"))
                    for i, br in enumerate(spec.get("branches") or [], 1)]
        default = spec.get("default_branch", spec.get("default"))
        default_steps = None
        if isinstance(default, dict) and "steps" in default:
            default_steps = b.steps(default["steps"], "default_branch")
        elif default:
            default_steps = b.steps(default, "default_branch")
        return Conditional(name, branches, default_steps, **common)
    if kind == "loop":
        iterator = spec.get("iterator") or {}
        options: dict[str, Any] = {"max_iterations": int(spec.get("max_iterations", 100))}
        if "range" in iterator:
            r = iterator["range"]
            options["range"] = (int(r.get("start", 0)), int(r["end"]), int(r.get("step", 1)))
        elif "collection" in iterator:
            items = iterator["collection"]
            options["over"] = [] if items == {} else items
        elif "while_condition" in iterator:
            options["while_"] = b.condition(iterator["while_condition"], "while_condition")
        if spec.get("break_condition") is not None:
            options["break_if"] = b.condition(spec["break_condition"], "break_condition")
        if spec.get("on_max_iterations") is not None:
            options["on_max_iterations"] = _on_max_iterations(str(name),
                                                              spec["on_max_iterations"])
        return Loop(name, b.steps(spec.get("body", spec.get("steps")), "body"),
                    **options, **common)
    branches = [Branch(br.get("name") or f"branch_{i}", None,
                       b.steps(br.get("steps", []), f"branch {i} steps"))
                for i, br in enumerate(spec.get("branches") or [], 1)]
    return Parallel(name, branches, max_concurrency=spec.get("max_concurrency"),
                    fail_fast=bool(spec.get("fail_fast", False)), **common)
