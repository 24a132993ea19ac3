"""A UUID tool: generate version 1, 4, 5 and 7 UUIDs, and validate a UUID.

Versions 1, 4 and 5 come from :mod:`uuid` (version 1 with a random node instead of the
machine's MAC address). Version 7 (RFC 9562) is not in Python 3.11's
standard library, so :func:`uuid7` builds it here: a 48-bit Unix timestamp in milliseconds,
the version and variant bits, and 74 random bits from :func:`secrets.token_bytes`. UUIDs
made in a later millisecond therefore sort after earlier ones (within one millisecond the
order is random). Up to :data:`MAX_COUNT` UUIDs are made per call.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any, Final

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool

__all__ = ["MAX_COUNT", "UuidGeneratorTool", "uuid7"]

_NAME = "uuid_generator"
MAX_COUNT: Final = 100
"""Most UUIDs made in one call."""

NAMESPACES: Final = {
    "dns": uuid.NAMESPACE_DNS,
    "url": uuid.NAMESPACE_URL,
    "oid": uuid.NAMESPACE_OID,
    "x500": uuid.NAMESPACE_X500,
}


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def uuid7(unix_ms: int | None = None) -> uuid.UUID:
    """A version 7 UUID (RFC 9562): ``unix_ms`` (default: now) in the top 48 bits, then
    version 7, 12 random bits, the RFC variant ``10`` and 62 random bits."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    if not 0 <= ms < 1 << 48:
        raise _fail(f"the timestamp {ms} does not fit in 48 bits of milliseconds")
    rand = int.from_bytes(secrets.token_bytes(10), "big")  # 80 bits; 74 are used
    rand_a = rand >> 68 & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def _uuid1() -> uuid.UUID:
    """A version 1 UUID with a random node (multicast bit set, as RFC 9562 allows), so the
    host's hardware address is never revealed."""
    return uuid.uuid1(node=secrets.randbits(48) | 1 << 40)


def _format(value: uuid.UUID, fmt: str) -> str:
    if fmt == "hex":
        return value.hex
    if fmt == "urn":
        return value.urn
    return str(value)


def _namespace(name: str) -> uuid.UUID:
    if name.lower() in NAMESPACES:
        return NAMESPACES[name.lower()]
    try:
        return uuid.UUID(name)
    except ValueError:
        raise _fail(f"the namespace {name!r} is neither dns, url, oid, x500 nor a UUID") \
            from None


def _describe(text: str) -> dict[str, Any]:
    try:
        value = uuid.UUID(text.strip())
    except ValueError:
        return {"valid": False, "input": text,
                "error": "not a UUID (expected 32 hex digits, optionally with hyphens, "
                         "braces or a 'urn:uuid:' prefix)"}
    variant = {uuid.RFC_4122: "rfc4122", uuid.RESERVED_NCS: "ncs",
               uuid.RESERVED_MICROSOFT: "microsoft",
               uuid.RESERVED_FUTURE: "future"}.get(value.variant, "unknown")
    result: dict[str, Any] = {
        "valid": True, "input": text, "canonical": str(value), "variant": variant,
        "version": value.version if variant == "rfc4122" else None,
        "nil": value.int == 0,
    }
    if variant == "rfc4122" and value.version == 7:
        result["unix_ms"] = value.int >> 80
    return result


class UuidGeneratorTool(Tool):
    """Generate UUIDs (versions 1, 4, 5, 7) or validate one and report its version."""

    name = _NAME
    description = (
        "Generate UUIDs (version 4 random, 7 time-ordered, 1 time-based, 5 name-based from a "
        "namespace and a name), 1 to 100 at a time, as canonical, hex or urn strings; or "
        "validate a UUID and report its version."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": ["generate", "validate"], "default": "generate"},
            "version": {"enum": [1, 4, 5, 7], "default": 4},
            "count": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT, "default": 1},
            "format": {"enum": ["canonical", "hex", "urn"], "default": "canonical"},
            "namespace": {"type": "string", "maxLength": 100,
                          "description": "Version 5: dns, url, oid, x500 or a UUID."},
            "name": {"type": "string", "maxLength": 10_000,
                     "description": "Version 5: the name hashed in the namespace."},
            "uuid": {"type": "string", "maxLength": 100,
                     "description": "validate: the UUID to check."},
        },
        "additionalProperties": False,
    }
    timeout = 5.0
    security_level = SecurityLevel.SAFE
    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Generate UUIDs (``{"uuids", "version", "format"}``) or validate one."""
        if params.get("operation", "generate") == "validate":
            text: str | None = params.get("uuid")
            if text is None:
                raise _fail("'validate' needs 'uuid', the UUID to check")
            return _describe(text)
        version: int = params.get("version", 4)
        count: int = params.get("count", 1)
        fmt: str = params.get("format", "canonical")
        if not 1 <= count <= MAX_COUNT:
            raise _fail(f"count must be between 1 and {MAX_COUNT}, not {count}")
        if version == 5:
            if "namespace" not in params or "name" not in params:
                raise _fail("version 5 needs 'namespace' (dns, url, oid, x500 or a UUID) and "
                            "'name'")
            namespace = _namespace(params["namespace"])
            # Name-based UUIDs are deterministic: the same inputs give the same UUID.
            made = [uuid.uuid5(namespace, params["name"])] * count
        elif version in (1, 4, 7):
            factory = {1: _uuid1, 4: uuid.uuid4, 7: uuid7}[version]
            made = [factory() for _ in range(count)]
        else:
            raise _fail(f"unsupported version {version}", hint="use 1, 4, 5 or 7")
        return {"uuids": [_format(u, fmt) for u in made], "version": version, "format": fmt}
