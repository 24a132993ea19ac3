'''A template tool: render a Jinja2 template with variables, sandboxed and isolated.

Templates run in :class:`jinja2.sandbox.SandboxedEnvironment` with no loader, so they cannot
read files (``{% include %}``, ``{% import %}`` and ``{% extends %}`` fail) and cannot reach
Python internals (``{{ ''.__class__.__mro__ }}`` and similar tricks raise a security error,
reported as a :class:`ToolExecutionError`). Undefined variables are an error by default
(``strict``); HTML autoescaping is off by default and can be turned on.

Why a separate process: the sandbox guards attribute access, not resources. Expressions
such as ``'x' * 10**9``, ``'x'|center(10**9)``, ``9**9**9`` or a macro that doubles a string
on each recursive call allocate gigabytes or spin before any output exists, and no check on
the output can stop them; Python cannot interrupt a thread either. So each render runs in
a short-lived child Python process (about 0.1 s to start) whose address space and CPU time
are capped with :mod:`resource` (on POSIX) and which is killed after
:data:`RENDER_TIMEOUT` seconds. The template's length, the variables' size and the rendered
output's length are capped as well; the child stops rendering as soon as the output passes
the cap. The child gets only JSON (the template, the variables, the options) on stdin,
and an environment stripped of everything but what starting Python needs.

Jinja2 is an optional dependency (the ``tools`` extra); a missing install is a
:class:`ConfigurationError` saying how to add it.
'''

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any, Final

from llmspell.core.errors import ConfigurationError, ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool

__all__ = ["MAX_OUTPUT_CHARS", "MAX_TEMPLATE_CHARS", "TemplateEngineTool"]

_NAME = "template_engine"
MAX_TEMPLATE_CHARS: Final = 100_000
"""Longest template accepted, in characters."""
MAX_OUTPUT_CHARS: Final = 1_000_000
"""Longest rendered output allowed, in characters."""
MAX_VARIABLES_CHARS: Final = 1_000_000
"""Largest variables object accepted, serialised as JSON, in characters."""
RENDER_TIMEOUT: Final = 5.0
"""Seconds a render may take (wall clock) before its process is killed."""
MEMORY_LIMIT: Final = 512 * 1024 * 1024
"""Address space of the rendering process, in bytes (POSIX only)."""

# The child's program. It uses only the standard library and jinja2, reads one JSON
# payload from stdin and writes one JSON answer to stdout: {"result": ...} or
# {"error": kind, "message": ...}.
_WORKER: Final = r"""
import json, sys

def limit(memory, cpu):
    try:
        import resource
    except ImportError:
        return
    for what, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu)):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass

def render(p):
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment, SecurityError
    env = SandboxedEnvironment(
        autoescape=p["autoescape"], trim_blocks=p["trim_blocks"], loader=None,
        undefined=jinja2.StrictUndefined if p["strict"] else jinja2.Undefined)
    try:
        template = env.from_string(p["template"])
    except jinja2.TemplateSyntaxError as exc:
        return {"error": "syntax", "message": f"line {exc.lineno}: {exc.message}"}
    chunks, size, cap = [], 0, p["max_output"]
    try:
        for chunk in template.generate(**p["variables"]):
            size += len(chunk)
            if size > cap:
                return {"error": "output", "message": str(cap)}
            chunks.append(chunk)
    except SecurityError as exc:
        return {"error": "security", "message": str(exc)}
    except jinja2.UndefinedError as exc:
        return {"error": "undefined", "message": str(exc.message)}
    except jinja2.TemplateError as exc:
        return {"error": "template", "message": str(exc.message or exc)}
    except MemoryError:
        return {"error": "memory", "message": ""}
    except RecursionError:
        return {"error": "recursion", "message": ""}
    except Exception as exc:
        if "loader" in str(exc):
            return {"error": "loader", "message": str(exc)}
        return {"error": "runtime", "message": f"{type(exc).__name__}: {exc}"}
    return {"result": "".join(chunks)}

limit(int(sys.argv[1]), int(sys.argv[2]))
try:
    answer = render(json.loads(sys.stdin.buffer.read().decode("utf-8")))
except MemoryError:
    answer = {"error": "memory", "message": ""}
sys.stdout.write(json.dumps(answer))
"""

_HINTS: Final = {
    "security": "templates may use variables, filters and tests, not Python internals such "
                "as __class__",
    "undefined": "pass it in 'variables', or set strict to false",
    "loader": "include, import and extends are not available: there are no template files",
    "output": "render less, e.g. loop over fewer items",
    "memory": "the template builds values too large to hold; build smaller ones",
}


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _child_env() -> dict[str, str]:
    """The few variables a Python process needs to start: the child never sees the
    parent's secrets (API keys and the like)."""
    keep = ("PATH", "SYSTEMROOT", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH")
    return {name: os.environ[name] for name in keep if name in os.environ}


def _require_jinja() -> None:
    if importlib.util.find_spec("jinja2") is None:
        raise ConfigurationError(
            "the template_engine tool needs Jinja2, which is not installed",
            hint="pip install 'llmspell[tools]'",
        )


def _message(kind: str, detail: str) -> str:
    return {
        "syntax": f"template syntax error on {detail}",
        "security": f"the template tried something the sandbox forbids: {detail}",
        "undefined": f"undefined variable: {detail}",
        "loader": "the template tried to load another template",
        "output": f"the output is longer than {detail} characters",
        "memory": f"the template needed more than {MEMORY_LIMIT // 2**20} MiB of memory",
        "recursion": "rendering recursed too deeply",
        "template": f"template error: {detail}",
    }.get(kind, f"rendering failed: {detail}")


class TemplateEngineTool(Tool):
    """Render a Jinja2 template with variables in a sandbox (no files, no Python internals),
    in a separate process with memory, CPU and time limits."""

    name = _NAME
    description = (
        "Render a Jinja2 template with 'variables' in a sandbox: no file access, no access "
        "to Python internals. Undefined variables are errors unless 'strict' is false; "
        "'autoescape' escapes HTML in substituted values."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "template": {"type": "string", "maxLength": MAX_TEMPLATE_CHARS,
                         "description": "The Jinja2 template text."},
            "variables": {"type": "object", "default": {},
                          "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                          "description": "Values the template refers to by name."},
            "autoescape": {"type": "boolean", "default": False,
                           "description": "Escape HTML special characters in values."},
            "strict": {"type": "boolean", "default": True,
                       "description": "Undefined variables are errors (else they render "
                                      "as empty)."},
            "trim_blocks": {"type": "boolean", "default": False,
                            "description": "Drop the first newline after a block tag."},
        },
        "required": ["template"],
        "additionalProperties": False,
    }
    timeout = RENDER_TIMEOUT + 5.0
    security_level = SecurityLevel.SAFE
    blocking = True  # waits for the rendering process

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Render ``params["template"]``; return ``{"result", "length"}``."""
        template_text: str = params["template"]
        if len(template_text) > MAX_TEMPLATE_CHARS:
            raise _fail(f"the template is {len(template_text)} characters long, more than "
                        f"{MAX_TEMPLATE_CHARS}")
        _require_jinja()
        try:
            payload = json.dumps({
                "template": template_text,
                "variables": params.get("variables", {}),
                "autoescape": bool(params.get("autoescape", False)),
                "strict": bool(params.get("strict", True)),
                "trim_blocks": bool(params.get("trim_blocks", False)),
                "max_output": MAX_OUTPUT_CHARS,
            }, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _fail(f"the variables are not JSON: {exc}") from None
        if len(payload) - len(template_text) > MAX_VARIABLES_CHARS:
            raise _fail(f"the variables are more than {MAX_VARIABLES_CHARS} characters of JSON")
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _WORKER, str(MEMORY_LIMIT),
                 str(int(RENDER_TIMEOUT) + 1)],
                input=payload, capture_output=True, text=True, encoding="utf-8",
                errors="replace", timeout=RENDER_TIMEOUT, check=False, env=_child_env(),
            )
        except subprocess.TimeoutExpired:
            raise _fail(f"rendering took longer than {RENDER_TIMEOUT} seconds",
                        hint="simplify the template's loops") from None
        except OSError as exc:
            raise _fail(f"cannot start the rendering process: {exc}") from None
        try:
            answer = json.loads(proc.stdout)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            why = ("it hit its CPU or memory limit" if proc.returncode < 0
                   else (proc.stderr.strip().splitlines() or ["no output"])[-1][:300])
            raise _fail(f"the rendering process failed: {why}")
        if "error" in answer:
            kind = str(answer["error"])
            raise _fail(_message(kind, str(answer.get("message", ""))), hint=_HINTS.get(kind))
        result = str(answer["result"])
        return {"result": result, "length": len(result)}
