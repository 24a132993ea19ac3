"""Policy files: the Python files ``llmspell hooks serve`` serves hooks from.

A policy file is a Python module. It declares what it serves in one of two ways:

* a module-level ``HOOKS`` list (or tuple): each item a function ``(ctx) -> HookResult |
  None`` (sync or async), a function decorated with ``@hook("Point", ...)`` (served at those
  points only, under the decorator's name), or a hook object (``execute``/``metadata``);
* without ``HOOKS``: every function defined in the file and decorated with ``@hook``.

A hook's served name is its decorator's (or metadata's) ``name``, else the function's
name; callers use it in ``RemoteHook(name, point)``. Names are letters, digits, ``_`` and
``-``. Nothing runs at import time that the file does not do itself; it is imported once,
as a module named after the file.

A policy file is *executed*: loading it runs its code with the permissions of the process
that loads it. Serve only files you trust, writable only by those who may run code there.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from llmspell.core.errors import ConfigurationError
from llmspell.distributed.server import ServedHook
from llmspell.hooks.hook import hook_spec_of

__all__ = ["load_policy", "policy_hooks"]


def load_policy(path: str | Path) -> list[ServedHook]:
    """Import the policy file at ``path`` and return the hooks it declares (see the module
    docstring). Raises ``ConfigurationError`` for a missing file, a file that fails to
    import (with the error and where), or one that declares no hooks."""
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"{file}: no such policy file",
                                 hint="give the path of a .py file that declares HOOKS")
    if file.suffix != ".py":
        raise ConfigurationError(f"{file}: a policy file is a Python (.py) file",
                                 hint="declare the hooks in a .py file (HOOKS = [...])")
    module = _import(file)
    return policy_hooks(module, where=str(file))


def _import(file: Path) -> ModuleType:
    name = f"llmspell_policy_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:  # pragma: no cover - .py files always have one
        raise ConfigurationError(f"{file}: cannot be imported", hint="check the file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # SystemExit: a sys.exit() in the file
        sys.modules.pop(name, None)
        if isinstance(exc, SyntaxError):
            where = f" (line {exc.lineno})" if exc.lineno else ""
            raise ConfigurationError(f"{file}{where}: the policy is not valid Python: "
                                     f"{exc.msg}", hint="fix the syntax error") from None
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if Path(f.filename).resolve() == file.resolve()]
        where = f" (line {frames[-1].lineno})" if frames else ""
        raise ConfigurationError(f"{file}{where}: importing the policy failed: "
                                 f"{type(exc).__name__}: {exc}",
                                 hint="fix the file; it must import on its own") from exc
    return module


def policy_hooks(module: ModuleType, *, where: str = "the policy") -> list[ServedHook]:
    """The hooks ``module`` declares (``HOOKS``, else its ``@hook`` functions)."""
    declared = getattr(module, "HOOKS", None)
    if declared is None:
        items = [value for value in vars(module).values()
                 if callable(value) and hook_spec_of(value) is not None
                 and getattr(value, "__module__", None) == module.__name__]
        how = "no HOOKS list and no @hook functions"
    elif isinstance(declared, (list, tuple)):
        items = list(declared)
        how = "HOOKS is empty"
    else:
        raise ConfigurationError(f"{where}: HOOKS must be a list of hooks, not "
                                 f"{type(declared).__name__}",
                                 hint="HOOKS = [guard, audit]")
    if not items:
        raise ConfigurationError(f"{where} declares no hooks ({how})",
                                 hint="define HOOKS = [...] or decorate functions with "
                                      "@hook('BeforeToolExecution')")
    served: list[ServedHook] = []
    names: set[str] = set()
    for index, item in enumerate(items):
        try:
            hook = ServedHook(item)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: HOOKS[{index}]: {exc.message}",
                                     hint=exc.hint) from None
        if hook.name in names:
            raise ConfigurationError(f"{where}: two hooks are named {hook.name!r}",
                                     hint="give one another name: @hook(..., name='...')")
        names.add(hook.name)
        served.append(hook)
    return served
