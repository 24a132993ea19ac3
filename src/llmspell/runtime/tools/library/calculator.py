"""A calculator tool: arithmetic on an expression string, evaluated safely.

Why hand-written: ``eval`` (even with emptied builtins) can reach any object through
attribute access and dunder tricks, and evaluation libraries bring their own grammar and
dependencies. Here the expression is parsed with :mod:`ast` and only a small whitelist of
node kinds is walked, so anything else (attributes, lambdas, comprehensions, subscripts,
calls to other names) is refused by construction. Resource abuse is guarded too: the
expression's length and nesting depth are capped, and integer results are capped in size
*before* they are computed (``9**9**9`` is refused, not attempted).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, Final

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool

__all__ = ["CalculatorTool", "evaluate"]

MAX_EXPRESSION_LENGTH: Final = 1000
"""Longest expression accepted, in characters."""

MAX_DEPTH: Final = 50
"""Deepest nesting of operations accepted."""

MAX_INT_DIGITS: Final = 4000
"""Largest integer (in decimal digits) an operation may produce. CPython refuses to turn
integers above 4300 digits into strings by default, so a larger result could not even be
serialised; the cap keeps every step fast as well."""

_MAX_INT_BITS: Final = int(MAX_INT_DIGITS * math.log2(10))

_NAME = "calculator"
Number = int | float
Value = int | float | bool

_BINARY: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}

_COMPARE: Final[dict[type[ast.cmpop], Callable[[Any, Any], bool]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}

_SYMBOLS: Final[dict[type[ast.AST], str]] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
    ast.Mod: "%", ast.Pow: "**",
}


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or isinstance(ndigits, bool):
        raise ValueError("round() takes an integer number of digits")
    return round(x, ndigits)


# name -> (function, minimum arguments, maximum arguments or None for any)
_FUNCTIONS: Final[dict[str, tuple[Callable[..., Any], int, int | None]]] = {
    "sqrt": (math.sqrt, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "log": (math.log, 1, 2),
    "log10": (math.log10, 1, 1),
    "exp": (math.exp, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, None),
    "max": (max, 1, None),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}

_CONSTANTS: Final[dict[str, float]] = {"pi": math.pi, "e": math.e}

_HINT_NAMES = (
    "functions: " + ", ".join(sorted(_FUNCTIONS)) + "; constants: " + ", ".join(sorted(_CONSTANTS))
    + "; other names must be passed in 'variables'"
)


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _show(value: Value) -> str:
    """``value`` for an error message: huge integers abbreviated, negatives parenthesised."""
    text = repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and len(text) > 24:
        digits = len(text.lstrip("-"))
        text = f"{text[:10]}...({digits} digits)"
    return f"({text})" if text.startswith("-") else text


def _check_number(value: Any, what: str) -> Value:
    """Refuse non-finite floats and oversized integers; return ``value``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            raise _fail(f"{what} has more than {MAX_INT_DIGITS} digits",
                        hint="use floats (e.g. 2.0**5000 overflows cleanly) or smaller numbers")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(f"{what} is not a finite number ({value!r})",
                        hint="the result overflowed or is undefined")
        return value
    raise _fail(f"{what} is a {type(value).__name__}, not a number")


def _check_pow(base: Value, exponent: Value) -> None:
    """Refuse an integer power whose result would exceed the size cap, before computing it."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        estimated_bits = exponent * math.log2(abs(base))
        if estimated_bits > _MAX_INT_BITS:
            raise _fail(
                f"{_show(base)} ** {_show(exponent)} would have about "
                f"{math.floor(estimated_bits / math.log2(10)) + 1} digits, more than the limit of "
                f"{MAX_INT_DIGITS}",
                hint="use a smaller exponent, or a float base to get an approximate result",
            )


def _check_mul(left: Value, right: Value) -> None:
    if (isinstance(left, int) and isinstance(right, int)
            and left.bit_length() + right.bit_length() > _MAX_INT_BITS + 1):
        raise _fail(f"a product would have more than {MAX_INT_DIGITS} digits")


class _Evaluator:
    def __init__(self, variables: Mapping[str, Number]) -> None:
        self.variables = variables

    def eval(self, node: ast.AST, depth: int) -> Value:
        if depth > MAX_DEPTH:
            raise _fail(f"the expression is nested more than {MAX_DEPTH} levels deep",
                        hint="split it into smaller expressions")
        if isinstance(node, ast.Expression):
            return self.eval(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _fail(f"unsupported constant {value!r} ({type(value).__name__})",
                            hint="only int and float literals are allowed")
            return _check_number(value, f"the literal {value!r}")
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.UnaryOp):
            operand = self.eval(node.operand, depth + 1)
            if isinstance(node.op, ast.USub):
                return _check_number(-operand, "a negation")
            if isinstance(node.op, ast.UAdd):
                return _check_number(+operand, "a unary plus")
            raise _fail(f"unsupported unary operator {type(node.op).__name__}",
                        hint="only unary + and - are allowed")
        if isinstance(node, ast.BinOp):
            return self.binop(node, depth)
        if isinstance(node, ast.Compare):
            return self.compare(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        raise _fail(
            f"unsupported syntax: {type(node).__name__}",
            hint="allowed: numbers, + - * / // % **, unary + -, parentheses, comparisons, "
            + _HINT_NAMES,
        )

    def name(self, name: str) -> Value:
        if name in self.variables:
            return _check_number(self.variables[name], f"the variable {name!r}")
        if name in _CONSTANTS:
            return _CONSTANTS[name]
        if name in _FUNCTIONS:
            raise _fail(f"{name!r} is a function; call it, e.g. {name}(x)")
        raise _fail(f"unknown name {name!r}", hint=_HINT_NAMES)

    def binop(self, node: ast.BinOp, depth: int) -> Value:
        function = _BINARY.get(type(node.op))
        if function is None:
            raise _fail(f"unsupported operator {type(node.op).__name__}",
                        hint="allowed: + - * / // % **")
        left = self.eval(node.left, depth + 1)
        right = self.eval(node.right, depth + 1)
        symbol = _SYMBOLS[type(node.op)]
        if isinstance(node.op, ast.Pow):
            _check_pow(left, right)
        elif isinstance(node.op, ast.Mult):
            _check_mul(left, right)
        try:
            result = function(left, right)
        except ZeroDivisionError:
            raise _fail(f"division by zero in {_show(left)} {symbol} {_show(right)}") from None
        except OverflowError:
            raise _fail(f"{_show(left)} {symbol} {_show(right)} overflows",
                        hint="the result is too large for a float") from None
        if isinstance(result, complex):
            raise _fail(f"{_show(left)} {symbol} {_show(right)} is a complex number",
                        hint="a negative base with a fractional exponent has no real result")
        return _check_number(result, f"the result of {_show(left)} {symbol} {_show(right)}")

    def compare(self, node: ast.Compare, depth: int) -> bool:
        left = self.eval(node.left, depth + 1)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            function = _COMPARE.get(type(op))
            if function is None:
                raise _fail(f"unsupported comparison {type(op).__name__}",
                            hint="allowed: == != < <= > >=")
            right = self.eval(comparator, depth + 1)
            if not function(left, right):
                return False
            left = right
        return True

    def call(self, node: ast.Call, depth: int) -> Value:
        if not isinstance(node.func, ast.Name):
            raise _fail(
                f"unsupported call of a {type(node.func).__name__}: only whitelisted "
                "functions can be called, by name",
                hint=_HINT_NAMES,
            )
        name = node.func.id
        entry = _FUNCTIONS.get(name)
        if entry is None:
            raise _fail(f"unknown function {name!r}", hint=_HINT_NAMES)
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise _fail(f"{name}() takes positional arguments only")
        function, least, most = entry
        count = len(node.args)
        if count < least or (most is not None and count > most):
            wanted = str(least) if least == most else (
                f"{least} or more" if most is None else f"{least} to {most}")
            raise _fail(f"{name}() takes {wanted} argument(s), got {count}")
        args = [self.eval(arg, depth + 1) for arg in node.args]
        try:
            result = function(*args)
        except ZeroDivisionError:
            raise _fail(f"division by zero in {name}()") from None
        except (ValueError, OverflowError, TypeError) as exc:
            raise _fail(f"{name}({', '.join(map(_show, args))}) failed: {exc}") from None
        return _check_number(result, f"the result of {name}()")


def evaluate(expression: str, variables: Mapping[str, Number] | None = None) -> Value:
    """Evaluate ``expression`` safely; raise :class:`ToolExecutionError` naming what is wrong."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise _fail(f"the expression is {len(expression)} characters long, more than "
                    f"{MAX_EXPRESSION_LENGTH}")
    if not expression.strip():
        raise _fail("the expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise _fail(f"invalid expression{where}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise _fail("the expression is nested too deeply to parse",
                    hint="split it into smaller expressions") from None
    return _Evaluator(variables or {}).eval(tree, 0)


class CalculatorTool(Tool):
    """Evaluate an arithmetic expression: numbers, ``+ - * / // % **``, unary ``+ -``,
    parentheses, comparisons, whitelisted math functions and constants, and variables."""

    name = _NAME
    description = (
        "Evaluate an arithmetic expression safely. Supports + - * / // % **, parentheses, "
        "comparisons (== != < <= > >=), the functions sqrt sin cos tan log log10 exp abs "
        "round min max floor ceil, the constants pi and e, and named variables."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "maxLength": MAX_EXPRESSION_LENGTH,
                "description": "The expression, e.g. 'sqrt(x**2 + y**2)'.",
            },
            "variables": {
                "type": "object",
                "description": "Values of the names used in the expression.",
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                "additionalProperties": {"type": "number"},
            },
        },
        "required": ["expression"],
        "additionalProperties": False,
    }
    timeout = 5.0
    security_level = SecurityLevel.SAFE
    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Evaluate ``params["expression"]``; return ``{"result", "expression"}``."""
        expression: str = params["expression"]
        result = evaluate(expression, params.get("variables"))
        return {"result": result, "expression": expression}
