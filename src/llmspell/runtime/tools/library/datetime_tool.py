"""A date and time tool: now, parse, format, convert between time zones, add and subtract
durations, differences and weekdays.

Time zones are IANA names resolved with :mod:`zoneinfo` (``"UTC"``, ``"Europe/Paris"``);
an unknown name is a clear error, never a silent fallback to UTC. Datetimes are exchanged as
ISO 8601 strings. A datetime without an offset is *naive*: operations keep it naive unless a
time zone is given, and ``diff`` refuses to compare a naive datetime with an aware one.
Format strings are capped in length, and durations in size, so no call can produce huge
output or overflow quietly.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool

__all__ = ["DateTimeHandlerTool", "parse_datetime", "time_zone"]

_NAME = "date_time_handler"
MAX_FORMAT_LENGTH: Final = 200
"""Longest strftime/strptime format accepted."""
MAX_AMOUNT: Final = 10_000_000
"""Largest absolute amount of any unit accepted by add and subtract."""

OPERATIONS: Final = ("now", "parse", "format", "convert", "add", "subtract", "diff", "weekday")
UNITS: Final = ("weeks", "days", "hours", "minutes", "seconds")

_AMOUNT_SCHEMA: Final = {"type": "number", "minimum": -MAX_AMOUNT, "maximum": MAX_AMOUNT}


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def time_zone(name: str) -> tzinfo:
    """The time zone called ``name`` (IANA name, or ``UTC``); a clear error if unknown."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise _fail(f"unknown time zone {name!r}",
                    hint="use an IANA name such as 'UTC', 'Europe/Paris' or "
                         "'America/New_York'") from None


def parse_datetime(text: str, fmt: str | None = None) -> datetime:
    """Parse ``text`` as ISO 8601 (a trailing ``Z`` means UTC), or with strptime ``fmt``."""
    if fmt is not None:
        try:
            return datetime.strptime(text, fmt)
        except ValueError as exc:
            raise _fail(f"{text!r} does not match the format {fmt!r}: {exc}") from None
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(candidate)
    except ValueError:
        raise _fail(f"{text!r} is not an ISO 8601 datetime",
                    hint="e.g. '2024-05-01T12:30:00+02:00', or pass 'format' for another "
                         "layout") from None


def _describe(value: datetime) -> dict[str, Any]:
    offset = value.utcoffset()
    return {
        "result": value.isoformat(),
        "timezone": value.tzname(),
        "utc_offset_seconds": None if offset is None else int(offset.total_seconds()),
        "timestamp": value.timestamp() if value.tzinfo is not None else None,
        "weekday": value.strftime("%A"),
    }


def _check_format(fmt: str) -> str:
    if len(fmt) > MAX_FORMAT_LENGTH:
        raise _fail(f"the format is {len(fmt)} characters long, more than {MAX_FORMAT_LENGTH}")
    return fmt


class DateTimeHandlerTool(Tool):
    """Work with dates and times: now, parse, format, convert, add, subtract, diff, weekday."""

    name = _NAME
    description = (
        "Date and time operations: 'now' (in a time zone), 'parse' (ISO 8601 or a strptime "
        "format), 'format' (strftime), 'convert' to another IANA time zone, 'add'/'subtract' "
        "weeks/days/hours/minutes/seconds, 'diff' between two datetimes, 'weekday'. "
        "Datetimes are ISO 8601 strings."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": list(OPERATIONS)},
            "datetime": {"type": "string", "maxLength": 200,
                         "description": "The datetime (ISO 8601 unless 'format' is given to "
                                        "parse)."},
            "other": {"type": "string", "maxLength": 200,
                      "description": "diff: the second datetime (result = other - datetime)."},
            "format": {"type": "string", "minLength": 1, "maxLength": MAX_FORMAT_LENGTH,
                       "description": "parse: a strptime format; format: a strftime format."},
            "timezone": {"type": "string", "maxLength": 64,
                         "description": "now/parse/convert: an IANA time zone name."},
            **{unit: _AMOUNT_SCHEMA for unit in UNITS},
        },
        "required": ["operation"],
        "additionalProperties": False,
    }
    timeout = 5.0
    security_level = SecurityLevel.SAFE

    def _input(self, params: dict[str, Any]) -> datetime:
        text: str | None = params.get("datetime")
        if text is None:
            raise _fail(f"{params['operation']!r} needs 'datetime'")
        return parse_datetime(text)

    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``params["operation"]``; results carry ISO 8601 strings."""
        operation: str = params["operation"]
        zone = time_zone(params["timezone"]) if "timezone" in params else None
        if operation == "now":
            return {"operation": operation, **_describe(datetime.now(zone or UTC))}
        if operation == "parse":
            if "datetime" not in params:
                raise _fail("'parse' needs 'datetime'")
            fmt = _check_format(params["format"]) if "format" in params else None
            value = parse_datetime(params["datetime"], fmt)
            if zone is not None:
                # A naive result is read as local time in the zone; an aware one is converted.
                value = (value.replace(tzinfo=zone) if value.tzinfo is None
                         else value.astimezone(zone))
            return {"operation": operation, **_describe(value)}
        value = self._input(params)
        if operation == "format":
            if "format" not in params:
                raise _fail("'format' needs 'format', a strftime format such as '%Y-%m-%d'")
            try:
                text = value.strftime(_check_format(params["format"]))
            except ValueError as exc:
                raise _fail(f"cannot format with {params['format']!r}: {exc}") from None
            return {"operation": operation, "result": text}
        if operation == "convert":
            if zone is None:
                raise _fail("'convert' needs 'timezone', the zone to convert to")
            if value.tzinfo is None:
                raise _fail("cannot convert a datetime without a UTC offset",
                            hint="add an offset such as '+00:00' or 'Z' to 'datetime'")
            return {"operation": operation, **_describe(value.astimezone(zone))}
        if operation in ("add", "subtract"):
            amounts = {unit: params[unit] for unit in UNITS if unit in params}
            if not amounts:
                raise _fail(f"{operation!r} needs at least one of " + ", ".join(UNITS))
            try:
                delta = timedelta(**amounts)
                moved = value + delta if operation == "add" else value - delta
            except OverflowError:
                raise _fail("the result is outside the supported years 1 to 9999") from None
            return {"operation": operation, **_describe(moved)}
        if operation == "diff":
            if "other" not in params:
                raise _fail("'diff' needs 'other', the second datetime")
            other = parse_datetime(params["other"])
            if (value.tzinfo is None) != (other.tzinfo is None):
                raise _fail("cannot compare a datetime with a UTC offset and one without",
                            hint="give both an offset, or neither")
            delta = other - value
            seconds = delta.total_seconds()
            return {"operation": operation, "seconds": seconds, "minutes": seconds / 60,
                    "hours": seconds / 3600, "days": seconds / 86400, "iso": str(delta)}
        if operation == "weekday":
            return {"operation": operation, "weekday": value.strftime("%A"),
                    "iso_weekday": value.isoweekday(), "iso_week": value.isocalendar().week,
                    "result": value.isoformat()}
        raise _fail(f"unknown operation {operation!r}", hint="one of " + ", ".join(OPERATIONS))
