"""A GraphQL client tool: POST a query to an endpoint on a public address.

Why built on :class:`HttpRequestTool`: the address safety (every resolved address checked,
the connection made to the checked address, private and loopback ranges refused unless
allowed), the body size cap and the whole-call timeout are exactly the HTTP tool's; only
the request shape (``{query, variables, operationName}``) and the reading of the answer
(``{data, errors}``) are GraphQL's. Redirects are not followed: a GraphQL POST is not
meant to be redirected. GraphQL errors (a 200 answer with ``errors``) are part of the
result; HTTP errors (a non-2xx status, a body that is not a GraphQL answer) raise
:class:`ToolExecutionError`.
"""

from __future__ import annotations

import re
from typing import Any, Final

import httpx

from llmspell.core.errors import (
    ToolError,
    ToolExecutionError,
)
from llmspell.runtime.tools.base import SecurityLevel, SideEffect, Tool
from llmspell.runtime.tools.library.http_request import HttpRequestTool, renamed_error

__all__ = ["GraphqlQueryTool"]

_NAME = "graphql_query"
_COMMENT: Final = re.compile(r"#[^\n]*")
_MUTATION: Final = re.compile(r"\bmutation\b")
MAX_QUERY_LENGTH: Final = 100_000


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _renamed(exc: ToolError) -> ToolError:
    """The HTTP tool's error, re-raised under this tool's name with the same type."""
    return renamed_error(_NAME, exc)


def _messages(errors: Any) -> str:
    if not isinstance(errors, list):
        return ""
    shown = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors[:3]]
    return "; ".join(shown)


class GraphqlQueryTool(Tool):
    """Send a GraphQL query or mutation and return ``{data, errors}``."""

    name = _NAME
    description = (
        "Send a GraphQL query or mutation to an endpoint 'url' (http:// or https://) as a "
        "POST of {query, variables, operationName}. 'headers' and 'bearer_token' are sent "
        "along. Returns data, errors (the GraphQL errors, [] when none) and the HTTP "
        "status. Internal network addresses are refused."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "url": {"type": "string", "maxLength": 8192,
                    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                    "description": "The GraphQL endpoint."},
            "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_LENGTH,
                      "description": "The GraphQL document."},
            "variables": {"type": "object", "description": "Variables of the operation."},
            "operation_name": {"type": "string", "maxLength": 256,
                               "description": "Which operation of the document to run."},
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Extra request headers."},
            "bearer_token": {"type": "string", "minLength": 1,
                             "description": "Sent as 'Authorization: Bearer <token>'."},
            "timeout": {"type": "number", "exclusiveMinimum": 0,
                        "description": "Seconds for the whole call (capped by the tool's "
                                       "configuration)."},
        },
        "required": ["url", "query"],
        "additionalProperties": False,
    }
    security_level = SecurityLevel.RESTRICTED
    side_effects = frozenset({SideEffect.NETWORK_WRITE})

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        """``network_write`` when the document holds a mutation (conservatively: the word
        ``mutation`` anywhere outside a comment); none for queries."""
        query = _COMMENT.sub("", str(params.get("query", "")))
        return self.side_effects if _MUTATION.search(query) else frozenset()

    def __init__(self, *, allow_loopback: bool = False, allow_private: bool = False,
                 max_bytes: int = 1024 * 1024, timeout: float = 30.0,
                 client: httpx.AsyncClient | None = None) -> None:
        self.allow_loopback = allow_loopback
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.request_timeout = timeout
        self._http = HttpRequestTool(allow_loopback=allow_loopback,
                                     allow_private=allow_private, max_bytes=max_bytes,
                                     timeout=timeout, max_redirects=0, client=client)
        self.timeout = timeout + 5.0  # a backstop; the HTTP layer enforces ``timeout``

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """POST the operation in ``params`` and return its ``data`` and ``errors``."""
        payload: dict[str, Any] = {"query": params["query"]}
        if "variables" in params:
            payload["variables"] = params["variables"]
        if "operation_name" in params:
            payload["operationName"] = params["operation_name"]
        headers = dict(params.get("headers", {}))
        if not any(k.lower() == "accept" for k in headers):
            headers["Accept"] = "application/graphql-response+json, application/json"
        request: dict[str, Any] = {"url": params["url"], "method": "POST", "json": payload,
                                   "headers": headers}
        if "bearer_token" in params:
            request["auth"] = {"type": "bearer", "token": params["bearer_token"]}
        if "timeout" in params:
            request["timeout"] = params["timeout"]
        try:
            response = await self._http.execute(request)
        except ToolError as exc:
            raise _renamed(exc) from None
        status: int = response["status"]
        body = response["body"]
        graphql = (isinstance(body, dict) and response["body_encoding"] == "json"
                   and ("data" in body or "errors" in body))
        if not 200 <= status < 300:
            detail = _messages(body.get("errors")) if graphql else ""
            raise _fail(f"the GraphQL endpoint answered HTTP {status} "
                        f"{response['reason']}" + (f": {detail}" if detail else ""),
                        hint="check the URL, the query and the credentials")
        if not graphql:
            raise _fail("the endpoint's answer is not a GraphQL response (a JSON object "
                        "with 'data' or 'errors')", hint="check the URL")
        errors = body.get("errors") or []
        if not isinstance(errors, list):
            errors = [errors]
        result: dict[str, Any] = {"data": body.get("data"), "errors": errors,
                                  "status": status}
        if isinstance(body.get("extensions"), dict):
            result["extensions"] = body["extensions"]
        return result
