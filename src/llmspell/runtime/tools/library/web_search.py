"""A web search tool over pluggable providers.

A provider is anything with ``async search(query, limit) -> list[{title, url, snippet}]``
(:class:`SearchProvider`). One real provider ships: :class:`JsonApiSearchProvider`, which
speaks a small JSON API that SearXNG-like endpoints can serve::

    GET <endpoint>?q=<query>&limit=<limit>
    Authorization: Bearer <api_key>          (only when an api_key is configured)

    200 {"results": [{"title": "...", "url": "https://...", "snippet": "..."}, ...]}

(``content`` is accepted in place of ``snippet``, as SearXNG names it.) It runs over
:class:`HttpRequestTool`, so the endpoint gets the same address safety, size cap and
timeout as every other web tool. API keys come from the constructor (the caller's
configuration) and are never part of a result or an error message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Protocol, runtime_checkable

import httpx

from llmspell.core.errors import (
    InvalidValueError,
    ToolError,
    ToolExecutionError,
)
from llmspell.runtime.tools.base import SecurityLevel, Tool
from llmspell.runtime.tools.library.http_request import HttpRequestTool, renamed_error

__all__ = ["JsonApiSearchProvider", "SearchProvider", "WebSearchTool"]

_NAME = "web_search"
MAX_LIMIT: Final = 50
_PROVIDER_NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@runtime_checkable
class SearchProvider(Protocol):
    """A search backend: ``search`` returns up to ``limit`` results, each a dict with
    ``title``, ``url`` and ``snippet`` strings."""

    async def search(self, query: str, limit: int) -> list[dict[str, str]]:
        """Search for ``query``."""
        ...


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class JsonApiSearchProvider:
    """A provider speaking the JSON API described in the module docstring."""

    def __init__(self, endpoint: str, api_key: str | None = None, *,
                 allow_loopback: bool = False, allow_private: bool = False,
                 max_bytes: int = 1024 * 1024, timeout: float = 15.0,
                 query_param: str = "q", limit_param: str = "limit",
                 client: httpx.AsyncClient | None = None) -> None:
        if not re.match(r"^[Hh][Tt][Tt][Pp][Ss]?://", endpoint):
            raise InvalidValueError(f"the search endpoint {endpoint!r} is not an http(s) URL")
        if api_key is not None and not api_key:
            raise InvalidValueError("the search API key is empty",
                                    hint="pass None for an endpoint without a key")
        self.endpoint = endpoint
        self._api_key = api_key
        self.query_param = query_param
        self.limit_param = limit_param
        self._http = HttpRequestTool(allow_loopback=allow_loopback,
                                     allow_private=allow_private, max_bytes=max_bytes,
                                     timeout=timeout, max_redirects=0, client=client)

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return f"JsonApiSearchProvider({self.endpoint!r}, api_key={key})"

    def _error(self, exc: ToolError) -> ToolError:
        hint = _scrub(exc.hint, self._api_key) if exc.hint else None
        return renamed_error(_NAME, exc, message=_scrub(exc.message, self._api_key),
                             hint=hint or "")  # "": never the unscrubbed original

    async def search(self, query: str, limit: int) -> list[dict[str, str]]:
        """GET the endpoint with the query and limit; the ``results`` of its answer."""
        request: dict[str, Any] = {
            "url": self.endpoint, "query": {self.query_param: query, self.limit_param: limit},
            "headers": {"Accept": "application/json"}}
        if self._api_key is not None:
            request["auth"] = {"type": "bearer", "token": self._api_key}
        try:
            response = await self._http.execute(request)
        except ToolError as exc:
            raise self._error(exc) from None
        status: int = response["status"]
        if not 200 <= status < 300:
            hint = ("check the API key" if status in (401, 403)
                    else "check the endpoint")
            raise ToolExecutionError(_NAME, f"the search endpoint answered HTTP {status} "
                                     f"{response['reason']}", hint=hint)
        body = response["body"]
        if response["body_encoding"] != "json" or not isinstance(body, dict) or not isinstance(
                body.get("results"), list):
            raise ToolExecutionError(_NAME, "the search endpoint's answer is not a JSON "
                                     "object with a 'results' list", hint="check the endpoint")
        results: list[dict[str, str]] = []
        for item in body["results"]:
            if not isinstance(item, dict):
                continue
            url = item.get("url")
            if not isinstance(url, str) or not re.match(r"^[Hh][Tt][Tt][Pp][Ss]?://", url):
                continue
            title = item.get("title")
            snippet = item.get("snippet", item.get("content"))
            results.append({"title": title if isinstance(title, str) else "",
                            "url": url,
                            "snippet": snippet if isinstance(snippet, str) else ""})
            if len(results) >= limit:
                break
        return results


class WebSearchTool(Tool):
    """Search the web through one of the configured providers."""

    name = _NAME
    security_level = SecurityLevel.RESTRICTED

    def __init__(self, *, providers: Mapping[str, SearchProvider], default: str,
                 timeout: float = 30.0) -> None:
        if not providers:
            raise InvalidValueError("web_search needs at least one provider")
        for provider_name, provider in providers.items():
            if not _PROVIDER_NAME.match(provider_name):
                raise InvalidValueError(f"invalid provider name {provider_name!r}",
                                        hint="use letters, digits, '_', '.' and '-'")
            if not isinstance(provider, SearchProvider):
                raise InvalidValueError(f"the provider {provider_name!r} has no async "
                                        "search(query, limit) method")
        if default not in providers:
            raise InvalidValueError(f"the default provider {default!r} is not configured",
                                    hint=f"one of {sorted(providers)}")
        self.providers = dict(providers)
        self.default = default
        self.timeout = timeout
        self.description = (
            "Search the web for 'query'. Returns up to 'limit' results (default 10, at most "
            f"{MAX_LIMIT}), each with title, url and snippet. 'provider' picks the search "
            f"provider (default {default!r})."
        )
        self.parameters = {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 1000,
                          "description": "What to search for."},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                          "description": "Most results returned (default 10)."},
                "provider": {"enum": sorted(self.providers),
                             "description": "The search provider."},
            },
            "required": ["query"],
            "additionalProperties": False,
        }

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run the search and return the provider's results, checked and capped."""
        provider_name: str = params.get("provider", self.default)
        query: str = params["query"]
        if not query.strip():
            raise ToolExecutionError(_NAME, "the query is blank")
        limit: int = params.get("limit", 10)
        provider = self.providers[provider_name]
        try:
            found = await provider.search(query, limit)
        except ToolError as exc:
            if exc.tool == _NAME:
                raise
            raise ToolExecutionError(_NAME, f"the provider {provider_name!r} failed: "
                                     f"{exc.message}", hint=exc.hint) from None
        except Exception as exc:  # a third-party provider's own failure
            raise ToolExecutionError(
                _NAME, f"the provider {provider_name!r} failed: {type(exc).__name__}",
                hint="see the provider's logs") from None
        if not isinstance(found, list):
            raise ToolExecutionError(_NAME, f"the provider {provider_name!r} returned "
                                     f"{type(found).__name__}, not a list")
        results: list[dict[str, str]] = []
        for item in found[:limit]:
            if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
                continue
            results.append({key: str(item.get(key) or "")[:4000]
                            for key in ("title", "url", "snippet")})
        return {"query": query, "provider": provider_name, "results": results,
                "count": len(results)}
