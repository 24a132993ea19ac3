"""A hash tool: digests and HMACs of text, and constant-time verification of a digest.

The text is encoded with a chosen character encoding (UTF-8 by default) and hashed with one
of the :mod:`hashlib` algorithms listed in :data:`ALGORITHMS`. With a ``key`` the result is
an HMAC instead of a plain digest; the key is used and then forgotten, and never appears in
a result or an error message. ``verify`` compares an expected digest with
:func:`hmac.compare_digest`, so the time taken does not reveal how much of it matched.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import hmac
from typing import Any, Final

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool

__all__ = ["ALGORITHMS", "MAX_INPUT_CHARS", "HashCalculatorTool", "digest"]

_NAME = "hash_calculator"
MAX_INPUT_CHARS: Final = 10_000_000
"""Longest text accepted, in characters."""
MAX_KEY_CHARS: Final = 4096
"""Longest HMAC key accepted, in characters."""

ALGORITHMS: Final = (
    "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_512",
    "blake2b", "blake2s",
)


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _encode(text: str, encoding: str, what: str) -> bytes:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise _fail(f"unknown text encoding {encoding!r}",
                    hint="use e.g. 'utf-8', 'latin-1' or 'ascii'") from None
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as exc:
        # The position only, never the text: ``what`` may be the secret key.
        raise _fail(f"the {what} cannot be encoded as {encoding}: {exc.reason} at position "
                    f"{exc.start}", hint="use 'utf-8'") from None


def digest(data: bytes, algorithm: str, key: bytes | None = None) -> bytes:
    """The digest of ``data`` with ``algorithm`` (an HMAC when ``key`` is given)."""
    if algorithm not in ALGORITHMS:
        raise _fail(f"unknown algorithm {algorithm!r}", hint="one of " + ", ".join(ALGORITHMS))
    if key is not None:
        return hmac.new(key, data, algorithm).digest()
    return hashlib.new(algorithm, data).digest()


class HashCalculatorTool(Tool):
    """Hash text (md5, sha1, sha2, sha3, blake2), optionally as an HMAC, or verify a digest."""

    name = _NAME
    description = (
        "Compute the hash of a text (md5, sha1, sha224, sha256, sha384, sha512, sha3_256, "
        "sha3_512, blake2b, blake2s), optionally as an HMAC with a secret key, or verify that "
        "a text has an expected hash (constant-time comparison)."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": ["hash", "verify"], "default": "hash"},
            "input": {"type": "string", "maxLength": MAX_INPUT_CHARS,
                      "description": "The text to hash."},
            "algorithm": {"enum": list(ALGORITHMS), "default": "sha256"},
            "encoding": {"type": "string", "default": "utf-8", "maxLength": 40,
                         "description": "Character encoding of the text and the key."},
            "key": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS,
                    "description": "A secret key: compute an HMAC instead of a plain hash. "
                                   "Never echoed in results."},
            "output_format": {"enum": ["hex", "base64"], "default": "hex"},
            "expected": {"type": "string", "maxLength": 1024,
                         "description": "The digest to verify against (hex or base64, as "
                                        "output_format); required by 'verify'."},
        },
        "required": ["input"],
        "additionalProperties": False,
    }
    timeout = 10.0
    security_level = SecurityLevel.SAFE
    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Hash or verify ``params["input"]``; return a dict without the key."""
        operation: str = params.get("operation", "hash")
        text: str = params["input"]
        algorithm: str = params.get("algorithm", "sha256")
        encoding: str = params.get("encoding", "utf-8")
        output_format: str = params.get("output_format", "hex")
        if len(text) > MAX_INPUT_CHARS:
            raise _fail(f"the input is {len(text)} characters long, more than "
                        f"{MAX_INPUT_CHARS}")
        key_text: str | None = params.get("key")
        key = _encode(key_text, encoding, "key") if key_text is not None else None
        raw = digest(_encode(text, encoding, "input"), algorithm, key)
        value = raw.hex() if output_format == "hex" else base64.b64encode(raw).decode("ascii")
        result: dict[str, Any] = {"operation": operation, "algorithm": algorithm,
                                  "hmac": key is not None, "format": output_format}
        if operation == "hash":
            result["digest"] = value
            return result
        expected: str | None = params.get("expected")
        if expected is None:
            raise _fail("'verify' needs 'expected', the digest to compare with")
        candidate = expected.strip()
        if output_format == "hex":
            candidate = candidate.lower()
        result["matches"] = hmac.compare_digest(candidate.encode("utf-8"),
                                                value.encode("ascii"))
        return result
