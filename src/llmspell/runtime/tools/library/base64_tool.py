"""A Base64 tool: encode text to Base64 and decode Base64 back to text.

The text is turned into bytes with a chosen character encoding (UTF-8 by default) before
encoding, and decoded bytes are turned back into text with the same encoding. Both the
standard alphabet (``+/``) and the URL-safe one (``-_``) are offered. Decoding is strict:
characters outside the alphabet or bad padding are refused with a clear message instead of
being silently dropped. Input is capped in size so the tool cannot be used to blow up memory.
"""

from __future__ import annotations

import base64
import binascii
import codecs
from typing import Any, Final

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool

__all__ = ["MAX_INPUT_CHARS", "Base64EncoderTool"]

_NAME = "base64_encoder"
MAX_INPUT_CHARS: Final = 1_000_000
"""Longest input accepted, in characters."""


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _codec(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise _fail(f"unknown text encoding {encoding!r}",
                    hint="use e.g. 'utf-8', 'latin-1' or 'ascii'") from None


class Base64EncoderTool(Tool):
    """Encode text to Base64 or decode Base64 to text (standard or URL-safe alphabet)."""

    name = _NAME
    description = (
        "Encode text to Base64 or decode Base64 to text. 'variant' picks the standard "
        "alphabet (+/) or the URL-safe one (-_); 'encoding' is the text's character encoding."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": ["encode", "decode"],
                          "description": "encode text, or decode Base64."},
            "input": {"type": "string", "maxLength": MAX_INPUT_CHARS,
                      "description": "The text to encode or the Base64 to decode."},
            "variant": {"enum": ["standard", "urlsafe"], "default": "standard"},
            "encoding": {"type": "string", "default": "utf-8", "maxLength": 40,
                         "description": "Character encoding of the text."},
        },
        "required": ["operation", "input"],
        "additionalProperties": False,
    }
    timeout = 5.0
    security_level = SecurityLevel.SAFE
    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Encode or decode ``params["input"]``; return ``{"result", "operation", ...}``."""
        operation: str = params["operation"]
        text: str = params["input"]
        variant: str = params.get("variant", "standard")
        encoding = _codec(params.get("encoding", "utf-8"))
        if len(text) > MAX_INPUT_CHARS:
            raise _fail(f"the input is {len(text)} characters long, more than {MAX_INPUT_CHARS}")
        if operation == "encode":
            try:
                raw = text.encode(encoding)
            except UnicodeEncodeError as exc:
                raise _fail(f"the text cannot be encoded as {encoding}: {exc.reason} at "
                            f"position {exc.start}", hint="use 'utf-8'") from None
            encoded = (base64.urlsafe_b64encode(raw) if variant == "urlsafe"
                       else base64.b64encode(raw))
            return {"operation": operation, "variant": variant, "encoding": encoding,
                    "result": encoded.decode("ascii"), "bytes": len(raw)}
        compact = "".join(text.split())  # line breaks and spaces in wrapped Base64
        try:
            data = compact.encode("ascii")
        except UnicodeEncodeError:
            raise _fail("the input is not valid Base64: it contains non-ASCII characters") \
                from None
        if variant == "urlsafe":
            data = data.translate(bytes.maketrans(b"-_", b"+/"))
            if "+" in compact or "/" in compact:
                raise _fail("the input is not valid URL-safe Base64: it contains '+' or '/'",
                            hint="use variant 'standard'")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            hint = ("use variant 'urlsafe'" if variant == "standard"
                    and any(c in compact for c in "-_") else
                    "check for missing '=' padding or characters outside the alphabet")
            raise _fail(f"the input is not valid Base64: {exc}", hint=hint) from None
        try:
            decoded = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise _fail(f"the decoded bytes are not valid {encoding} text: {exc.reason} at "
                        f"byte {exc.start}",
                        hint="pass the right 'encoding' (e.g. 'latin-1' accepts any bytes)") \
                from None
        return {"operation": operation, "variant": variant, "encoding": encoding,
                "result": decoded, "bytes": len(raw)}
