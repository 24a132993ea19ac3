"""Web tools: URL analyzer, web scraper, API tester, webhook caller, webpage monitor and
sitemap crawler.

Why every network tool here is built on :class:`HttpRequestTool`: its address safety (each
resolved address checked, loopback and private ranges refused unless allowed, link-local
and the like always refused, the connection made to the checked address), its body size
cap and its whole-call timeout are what every web tool needs, so they are reused rather
than re-implemented. Errors from the HTTP layer are re-raised under the calling tool's
name with the same type (:class:`SandboxViolationError`, :class:`ToolTimeoutError`,
:class:`ToolExecutionError`).

HTML is parsed with the standard library's :mod:`html.parser` into a small element tree
(bounded in size), over which a small CSS-like selector subset is matched: ``tag``,
``.class``, ``#id``, ``tag.class#id`` compounds and the descendant combinator (``"a b"``).
"""

from __future__ import annotations

import asyncio
import collections
import difflib
import hashlib
import hmac
import ipaddress
import json
import posixpath
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Final
from urllib.parse import SplitResult, parse_qsl, quote, urljoin, urlsplit, urlunsplit

import httpx

from llmspell.core.errors import (
    InvalidValueError,
    SandboxViolationError,
    ToolError,
    ToolExecutionError,
    ToolTimeoutError,
)
from llmspell.runtime.tools.base import SecurityLevel, SideEffect, Tool
from llmspell.runtime.tools.library.http_request import (
    METHODS,
    HttpRequestTool,
    address_refusal,
    renamed_error,
)
from llmspell.runtime.tools.library.json_processor import PathSyntaxError, parse_path, query_path

__all__ = [
    "ApiTesterTool",
    "HtmlNode",
    "SelectorError",
    "SitemapCrawlerTool",
    "UrlAnalyzerTool",
    "WebScraperTool",
    "WebhookCallerTool",
    "WebpageMonitorTool",
    "parse_html",
    "parse_selector",
    "select",
    "visible_text",
]

MIB: Final = 1024 * 1024
MAX_NODES: Final = 50_000
"""Most elements kept from one HTML document; the rest is ignored."""
MAX_HTML_DEPTH: Final = 256
"""Deepest nesting kept; elements opened deeper become children of the deepest one."""
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ftp": 21, "ws": 80, "wss": 443}
_VOID: Final = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
                          "meta", "param", "source", "track", "wbr"})
_HIDDEN: Final = frozenset({"script", "style", "noscript", "template", "head", "svg",
                            "iframe", "object"})
_BLOCK: Final = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot",
    "th", "thead", "tr", "ul",
})
_URL_SCHEMA: Final = {"type": "string", "maxLength": 8192, "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                      "description": "An http:// or https:// URL."}
_TIMEOUT_SCHEMA: Final = {"type": "number", "exclusiveMinimum": 0,
                          "description": "Seconds for the whole call (capped by the tool's "
                                         "configuration)."}


def _renamed(name: str, exc: ToolError) -> ToolError:
    """The HTTP tool's error, re-raised under ``name`` with the same type."""
    return renamed_error(name, exc)


# -- HTML tree and selectors ------------------------------------------------------------------


@dataclass(eq=False)
class HtmlNode:
    """An element: tag (lower case), attributes, children (elements and text) and parent."""

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[HtmlNode | str] = field(default_factory=list)
    parent: HtmlNode | None = field(default=None, repr=False)

    @property
    def classes(self) -> set[str]:
        """The element's class names."""
        return set(self.attrs.get("class", "").split())

    def iter(self) -> Iterator[HtmlNode]:
        """This element and every element under it, in document order."""
        stack: list[HtmlNode] = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(c for c in reversed(node.children) if isinstance(c, HtmlNode))


class _TreeBuilder(HTMLParser):
    def __init__(self, max_nodes: int) -> None:
        super().__init__(convert_charrefs=True)
        self.root = HtmlNode("#document")
        self.stack: list[HtmlNode] = [self.root]
        self.open_tags: collections.Counter[str] = collections.Counter()
        self.max_nodes = max_nodes
        self.count = 0
        self.truncated = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.count >= self.max_nodes:
            self.truncated = True
            return
        self.count += 1
        node = HtmlNode(tag, {k: v or "" for k, v in attrs}, parent=self.stack[-1])
        self.stack[-1].children.append(node)
        if tag not in _VOID and len(self.stack) <= MAX_HTML_DEPTH:
            self.stack.append(node)
            self.open_tags[tag] += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        before = len(self.stack)
        self.handle_starttag(tag, attrs)
        if len(self.stack) > before:
            self._pop_to(len(self.stack) - 1)

    def handle_endtag(self, tag: str) -> None:
        # Linear overall: an unmatched end tag costs O(1) (the counter); a matched one
        # scans only the elements it closes.
        if not self.open_tags[tag]:
            return
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                self._pop_to(depth)
                return

    def _pop_to(self, depth: int) -> None:
        for node in self.stack[depth:]:
            self.open_tags[node.tag] -= 1
        del self.stack[depth:]

    def handle_data(self, data: str) -> None:
        if self.count < self.max_nodes:
            self.stack[-1].children.append(data)


def parse_html(text: str, *, max_nodes: int = MAX_NODES) -> HtmlNode:
    """Parse ``text`` into a tree rooted at a ``#document`` node (at most ``max_nodes``
    elements are kept; unclosed elements are closed by the closing tag of an ancestor)."""
    builder = _TreeBuilder(max_nodes)
    builder.feed(text)
    builder.close()
    return builder.root


def visible_text(node: HtmlNode, *, include_hidden: bool = False) -> str:
    """The text a reader sees under ``node``: scripts, styles and the document head are
    left out; block elements break lines; runs of spaces collapse."""
    return _iterative_text(node, include_hidden)


def _iterative_text(node: HtmlNode, include_hidden: bool) -> str:
    """``visible_text`` without recursion (documents can nest deeply)."""
    parts: list[str] = []
    stack: list[HtmlNode | str | None] = [node]
    while stack:
        item = stack.pop()
        if item is None:
            parts.append("\n")
            continue
        if isinstance(item, str):
            parts.append(item)
            continue
        if not include_hidden and item.tag in _HIDDEN and item is not node:
            continue
        block = item.tag in _BLOCK
        if block:
            parts.append("\n")
            stack.append(None)
        stack.extend(reversed(item.children))
    lines = (" ".join(line.split()) for line in "".join(parts).splitlines())
    return "\n".join(line for line in lines if line)


class SelectorError(ValueError):
    """A selector outside the supported subset."""


@dataclass(frozen=True)
class _Compound:
    tag: str | None
    ids: tuple[str, ...]
    classes: tuple[str, ...]

    def matches(self, node: HtmlNode) -> bool:
        if self.tag is not None and node.tag != self.tag:
            return False
        if any(node.attrs.get("id") != i for i in self.ids):
            return False
        return set(self.classes) <= node.classes


_COMPOUND = re.compile(r"^(\*|[A-Za-z][A-Za-z0-9-]*)?((?:[.#][A-Za-z0-9_-]+)*)$")
_PART = re.compile(r"([.#])([A-Za-z0-9_-]+)")


def parse_selector(selector: str) -> tuple[_Compound, ...]:
    """Parse a selector of the subset: compounds (``tag``, ``.class``, ``#id``,
    ``tag.class#id``, ``*``) separated by spaces (descendant)."""
    words = selector.split()
    if not words:
        raise SelectorError("the selector is empty")
    compounds: list[_Compound] = []
    for word in words:
        found = _COMPOUND.match(word)
        if found is None or not word:
            raise SelectorError(
                f"unsupported selector part {word!r}: only tag, .class, #id, their "
                "combinations (tag.class#id) and descendants ('a b') are supported")
        tag = found.group(1)
        parts = _PART.findall(found.group(2))
        compounds.append(_Compound(
            tag=None if tag in (None, "*") else tag.lower(),
            ids=tuple(v for k, v in parts if k == "#"),
            classes=tuple(v for k, v in parts if k == ".")))
    return tuple(compounds)


def _matches(node: HtmlNode, compounds: tuple[_Compound, ...]) -> bool:
    if not compounds[-1].matches(node):
        return False
    remaining = len(compounds) - 2
    ancestor = node.parent
    while remaining >= 0 and ancestor is not None:
        if compounds[remaining].matches(ancestor):
            remaining -= 1
        ancestor = ancestor.parent
    return remaining < 0


def select(root: HtmlNode, selector: str, *, limit: int | None = None) -> list[HtmlNode]:
    """The elements under ``root`` matching ``selector``, in document order."""
    compounds = parse_selector(selector)
    found: list[HtmlNode] = []
    for node in root.iter():
        if node.tag != "#document" and _matches(node, compounds):
            found.append(node)
            if limit is not None and len(found) >= limit:
                break
    return found


def _page_links(root: HtmlNode, base: str) -> list[str]:
    """Absolute http(s) links of ``a[href]`` elements, fragment removed, deduplicated."""
    for node in root.iter():
        if node.tag == "base" and node.attrs.get("href"):
            base = urljoin(base, node.attrs["href"])
            break
    seen: dict[str, None] = {}
    for node in root.iter():
        href = node.attrs.get("href", "").strip() if node.tag == "a" else ""
        if not href:
            continue
        try:
            absolute = urljoin(base, href)
            parts = urlsplit(absolute)
        except ValueError:
            continue
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            continue
        seen.setdefault(urlunsplit(parts._replace(fragment="")), None)
    return list(seen)


def _title_and_meta(root: HtmlNode) -> tuple[str | None, dict[str, str]]:
    title: str | None = None
    meta: dict[str, str] = {}
    for node in root.iter():
        if node.tag == "title" and title is None:
            title = " ".join(visible_text(node, include_hidden=True).split())
        elif node.tag == "meta":
            key = node.attrs.get("name") or node.attrs.get("property") or (
                "charset" if "charset" in node.attrs else "")
            value = node.attrs.get("content", node.attrs.get("charset", ""))
            if key and key not in meta and len(meta) < 100:
                meta[key[:200]] = value[:2000]
    return title, meta


# -- shared fetching --------------------------------------------------------------------------


class _WebTool(Tool):
    """A tool that fetches through an :class:`HttpRequestTool` it owns."""

    security_level = SecurityLevel.RESTRICTED

    def __init__(self, *, allow_loopback: bool = False, allow_private: bool = False,
                 max_bytes: int = 2 * MIB, timeout: float = 30.0, max_redirects: int = 3,
                 client: httpx.AsyncClient | None = None) -> None:
        if max_bytes <= 0 or timeout <= 0:
            raise InvalidValueError("max_bytes and timeout must be positive")
        self.allow_loopback = allow_loopback
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.request_timeout = timeout
        self._http = HttpRequestTool(allow_loopback=allow_loopback,
                                     allow_private=allow_private, max_bytes=max_bytes,
                                     timeout=timeout, max_redirects=max_redirects,
                                     client=client)
        self.timeout = timeout + 5.0  # a backstop; the HTTP layer enforces ``timeout``

    def _fail(self, message: str, hint: str | None = None) -> ToolExecutionError:
        return ToolExecutionError(self.tool_name, message, hint=hint)

    def _budget(self, params: dict[str, Any]) -> float:
        return min(float(params.get("timeout", self.request_timeout)), self.request_timeout)

    async def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._http.execute(request)
        except ToolError as exc:
            raise _renamed(self.tool_name, exc) from None

    async def _page(self, url: str, timeout: float) -> tuple[dict[str, Any], str]:
        """GET ``url``; the response and its body as text (2xx only)."""
        response = await self._request({"url": url, "timeout": max(timeout, 0.001)})
        status: int = response["status"]
        if not 200 <= status < 300:
            raise self._fail(f"{url} answered HTTP {status} {response['reason']}",
                             hint="check the URL")
        body = response["body"]
        if response["body_encoding"] != "text" or not isinstance(body, str):
            raise self._fail(f"{url} is not an HTML or text page (content type "
                             f"{response['headers'].get('content-type', 'unknown')!r})")
        return response, body


def _selector_or_fail(name: str, selector: str) -> tuple[_Compound, ...]:
    try:
        return parse_selector(selector)
    except SelectorError as exc:
        raise ToolExecutionError(name, f"bad selector {selector!r}: {exc}",
                                 hint="use tag, .class, #id, tag.class or 'a b'") from None


# -- url_analyzer ------------------------------------------------------------------------------


class UrlAnalyzerTool(Tool):
    """Parse, normalise and check a URL without touching the network."""

    name = "url_analyzer"
    description = (
        "Parse a URL into scheme, host, port, path, query parameters and fragment; give its "
        "normalised form; tell whether the host is an IP address and whether it is private "
        "or loopback. No network access. Malformed URLs are reported as errors."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "url": {"type": "string", "minLength": 1, "maxLength": 8192,
                    "description": "The URL to analyse."},
        },
        "required": ["url"],
        "additionalProperties": False,
    }
    security_level = SecurityLevel.SAFE

    def _fail(self, message: str, hint: str | None = None) -> ToolExecutionError:
        return ToolExecutionError(self.name, message, hint=hint)

    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Analyse ``params['url']``."""
        raw: str = params["url"]
        text = raw.strip()
        if any(ord(c) < 0x20 or c in "\x7f " for c in text):
            raise self._fail("the URL contains spaces or control characters",
                             hint="percent-encode them (space is %20)")
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise self._fail(f"malformed URL {text[:200]!r}: {exc}",
                             hint="check the port and the brackets around IPv6 hosts") from None
        scheme = parts.scheme.lower()
        if not scheme:
            raise self._fail(f"the URL {text[:200]!r} has no scheme",
                             hint="start it with a scheme, e.g. https://")
        host = parts.hostname or ""
        if scheme in _DEFAULT_PORTS and not host:
            raise self._fail(f"the URL {text[:200]!r} has no host")
        issues: list[str] = []
        if parts.username is not None or parts.password is not None:
            issues.append("the URL carries credentials")
        if scheme not in ("http", "https"):
            issues.append(f"the scheme {scheme!r} is not http or https")
        ip_info = self._ip_info(host, issues)
        normalized = self._normalise(parts, scheme, host, port)
        query = parse_qsl(parts.query, keep_blank_values=True)
        grouped: dict[str, list[str]] = {}
        for key, value in query:
            grouped.setdefault(key, []).append(value)
        return {
            "url": raw,
            "valid": True,
            "scheme": scheme,
            "host": host or None,
            "port": port,
            "effective_port": port if port is not None else _DEFAULT_PORTS.get(scheme),
            "has_credentials": parts.username is not None,
            "path": parts.path,
            "query": parts.query,
            "query_params": grouped,
            "fragment": parts.fragment,
            "normalized": normalized,
            **ip_info,
            "issues": issues,
        }

    def _ip_info(self, host: str, issues: list[str]) -> dict[str, Any]:
        """The host's address facts. Legacy IPv4 spellings that resolvers accept
        (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``) count as the address they
        mean, and IPv4 addresses carried in IPv6 ones (``::ffff:127.0.0.1``, NAT64
        ``64:ff9b::7f00:1``, 6to4, Teredo) are looked at too, so a URL that the network
        tools would refuse is never reported as public."""
        ip = _host_address(host)
        if ip is None:
            lowered = host.lower().rstrip(".")
            return {"is_ip": False, "ip_version": None, "address": None, "is_private": None,
                    "is_loopback": lowered == "localhost" or lowered.endswith(".localhost"),
                    "is_global": None}
        if _LEGACY_IPV4.fullmatch(host) and host != str(ip):
            issues.append(f"the host {host!r} is an unusual spelling of the IPv4 address {ip}")
        carried = _carried(ip)
        reason = address_refusal(str(ip))
        if reason is not None:
            issues.append(f"the network tools refuse this address by default: {reason}")
        return {"is_ip": True, "ip_version": ip.version, "address": str(ip),
                "is_private": any(a.is_private for a in carried),
                "is_loopback": any(a.is_loopback for a in carried),
                "is_global": all(a.is_global for a in carried)}

    def _normalise(self, parts: SplitResult, scheme: str, host: str, port: int | None) -> str:
        if not host:
            return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))
        try:
            shown_host = host.encode("idna").decode("ascii") if not host.isascii() else host
        except UnicodeError as exc:
            raise self._fail(f"the host {host!r} is not a valid domain name: {exc}") from None
        if ":" in shown_host:
            shown_host = f"[{shown_host}]"
        netloc = shown_host.lower()
        if port is not None and _DEFAULT_PORTS.get(scheme) != port:
            netloc += f":{port}"
        if parts.username is not None:
            netloc = f"{parts.username}@{netloc}"
        path = parts.path or "/"
        if path not in ("", "/"):
            trailing = path.endswith("/")
            path = posixpath.normpath(path)
            path = "/" + path.lstrip("/") if path != "." else "/"
            if trailing and not path.endswith("/"):
                path += "/"
        path = quote(path, safe="/%:@!$&'()*+,;=-._~")
        return urlunsplit((scheme, netloc, path, parts.query, parts.fragment))


_LEGACY_IPV4: Final = re.compile(
    r"(?:0[xX][0-9a-fA-F]+|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]+|[0-9]+)){0,3}")
"""Hosts that ``inet_aton`` (and so ``getaddrinfo``) may read as an IPv4 address."""
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


def _host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address: a literal, or a legacy IPv4 spelling; None for a name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if not _LEGACY_IPV4.fullmatch(host):
        return None
    try:  # parses only, as a resolver would; no lookup
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _carried(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
             ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """``ip`` and the IPv4 addresses an IPv6 address carries (mapped, NAT64, 6to4,
    Teredo)."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            found.append(ip.ipv4_mapped)
        if ip in _NAT64:
            found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            found.append(ip.sixtofour)
        if ip.teredo is not None:
            found.extend(ip.teredo)
    return found


# -- web_scraper -------------------------------------------------------------------------------


class WebScraperTool(_WebTool):
    """Fetch a web page and extract its text, links, title and meta, or selected elements."""

    name = "web_scraper"
    description = (
        "Fetch a web page ('url') and extract from it: 'text' (visible text, scripts and "
        "styles removed), 'links' (absolute, deduplicated), 'meta' (title and meta tags) and, "
        "with 'selector' (tag, .class, #id, tag.class, descendant 'a b'), the matching "
        "'elements'. Internal network addresses are refused."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "url": _URL_SCHEMA,
            "extract": {"type": "array", "minItems": 1, "uniqueItems": True,
                        "items": {"enum": ["text", "links", "meta", "elements"]},
                        "description": "What to extract (default text, links, meta; "
                                       "elements when a selector is given)."},
            "selector": {"type": "string", "minLength": 1, "maxLength": 500,
                         "description": "A CSS-like selector for 'elements'."},
            "max_links": {"type": "integer", "minimum": 1, "maximum": 1000,
                          "description": "Most links returned (default 100)."},
            "max_elements": {"type": "integer", "minimum": 1, "maximum": 500,
                             "description": "Most elements returned (default 50)."},
            "max_text_chars": {"type": "integer", "minimum": 1, "maximum": 500_000,
                               "description": "Longest text returned (default 20000)."},
            "timeout": _TIMEOUT_SCHEMA,
        },
        "required": ["url"],
        "additionalProperties": False,
    }

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Fetch ``params['url']`` and extract what ``params['extract']`` asks for."""
        selector: str | None = params.get("selector")
        default = ["text", "links", "meta"] + (["elements"] if selector else [])
        extract: list[str] = params.get("extract", default)
        if "elements" in extract and not selector:
            raise self._fail("'elements' needs a 'selector'")
        if selector:
            _selector_or_fail(self.name, selector)
        response, body = await self._page(params["url"], self._budget(params))
        root = parse_html(body)
        result: dict[str, Any] = {"url": response["url"], "status": response["status"]}
        max_chars: int = params.get("max_text_chars", 20_000)
        if "text" in extract:
            text = visible_text(root)
            result["text"] = text[:max_chars]
            result["text_truncated"] = len(text) > max_chars
        if "links" in extract:
            links = _page_links(root, response["url"])
            limit: int = params.get("max_links", 100)
            result["links"] = links[:limit]
            result["links_total"] = len(links)
        if "meta" in extract:
            result["title"], result["meta"] = _title_and_meta(root)
        if "elements" in extract and selector:
            limit = params.get("max_elements", 50)
            nodes = select(root, selector, limit=limit + 1)
            result["elements"] = [
                {"tag": n.tag, "attrs": dict(list(n.attrs.items())[:50]),
                 "text": visible_text(n, include_hidden=True)[:max_chars]}
                for n in nodes[:limit]
            ]
            result["elements_truncated"] = len(nodes) > limit
        return result


# -- api_tester --------------------------------------------------------------------------------


class ApiTesterTool(_WebTool):
    """Send a request and check the response against expectations."""

    name = "api_tester"
    description = (
        "Send an HTTP request ('url', 'method', 'headers', 'query', 'json' or 'body') and "
        "check 'expect': status (a code or a list), headers (name -> substring), json "
        "(a list of {path, equals}, paths like $.data.items[0].id), body_contains (strings), "
        "max_latency_ms. Returns each check's pass/fail and 'passed' overall."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "url": _URL_SCHEMA,
            "method": {"enum": list(METHODS)},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "query": HttpRequestTool.parameters["properties"]["query"],
            "json": {"description": "A JSON request body."},
            "body": {"type": "string", "description": "A text request body."},
            "expect": {
                "type": "object",
                "properties": {
                    "status": {"anyOf": [
                        {"type": "integer", "minimum": 100, "maximum": 599},
                        {"type": "array", "minItems": 1,
                         "items": {"type": "integer", "minimum": 100, "maximum": 599}}]},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "json": {"type": "array", "maxItems": 100, "items": {
                        "type": "object",
                        "properties": {"path": {"type": "string", "minLength": 1},
                                       "equals": {}},
                        "required": ["path", "equals"], "additionalProperties": False}},
                    "body_contains": {"type": "array", "maxItems": 100,
                                      "items": {"type": "string", "minLength": 1}},
                    "max_latency_ms": {"type": "number", "exclusiveMinimum": 0},
                },
                "additionalProperties": False,
                "description": "The expectations (default: status 2xx).",
            },
            "timeout": _TIMEOUT_SCHEMA,
        },
        "required": ["url"],
        "additionalProperties": False,
        "not": {"required": ["json", "body"]},
    }
    side_effects = frozenset({SideEffect.NETWORK_WRITE})

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        """``network_write`` for every method but GET and HEAD."""
        method = str(params.get("method", "GET")).upper()
        return frozenset() if method in ("GET", "HEAD") else self.side_effects


    def __init__(self, *, allow_loopback: bool = False, allow_private: bool = False,
                 max_bytes: int = 2 * MIB, timeout: float = 30.0,
                 client: httpx.AsyncClient | None = None) -> None:
        super().__init__(allow_loopback=allow_loopback, allow_private=allow_private,
                         max_bytes=max_bytes, timeout=timeout, max_redirects=0, client=client)

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Send the request and run the checks."""
        expect: dict[str, Any] = params.get("expect", {})
        for item in expect.get("json", []):
            try:
                parse_path(item["path"])
            except PathSyntaxError as exc:
                raise self._fail(f"bad JSON path {item['path']!r}: {exc}",
                                 hint="paths look like $.a.b[0] or a.b[*].c") from None
        keys = ("url", "method", "headers", "query", "json", "body")
        request: dict[str, Any] = {k: params[k] for k in keys if k in params}
        request["timeout"] = self._budget(params)
        started = time.perf_counter()
        response = await self._request(request)
        latency = round((time.perf_counter() - started) * 1000, 3)
        status: int = response["status"]
        checks: list[dict[str, Any]] = []

        def check(kind: str, passed: bool, expected: Any, actual: Any, **extra: Any) -> None:
            checks.append({"check": kind, "passed": passed, "expected": expected,
                           "actual": actual, **extra})

        wanted = expect.get("status")
        if wanted is None:
            check("status", 200 <= status < 300, "2xx", status)
        else:
            codes = wanted if isinstance(wanted, list) else [wanted]
            check("status", status in codes, wanted, status)
        lowered = {k.lower(): v for k, v in response["headers"].items()}
        for header, part in expect.get("headers", {}).items():
            value = lowered.get(header.lower())
            check("header", value is not None and part in value, part, value, name=header)
        body = response["body"]
        is_json = response["body_encoding"] == "json"
        for item in expect.get("json", []):
            if not is_json:
                check("json", False, item["equals"], None, path=item["path"],
                      error="the response body is not JSON")
                continue
            try:
                actual = query_path(body, item["path"])
            except LookupError as exc:
                check("json", False, item["equals"], None, path=item["path"], error=str(exc))
                continue
            check("json", _same(actual, item["equals"]), item["equals"], actual,
                  path=item["path"])
        if expect.get("body_contains"):
            text = json.dumps(body, ensure_ascii=False) if is_json else str(body)
            for part in expect["body_contains"]:
                check("body_contains", part in text, part, None)
        if "max_latency_ms" in expect:
            check("latency", latency <= expect["max_latency_ms"], expect["max_latency_ms"],
                  latency)
        return {"passed": all(c["passed"] for c in checks), "checks": checks,
                "status": status, "elapsed_ms": latency, "url": response["url"]}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0`` but ``True != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) or (isinstance(a, int | float) and isinstance(b, int | float))
                ) and bool(a == b)


# -- webhook_caller ----------------------------------------------------------------------------

MAX_WEBHOOK_RETRIES: Final = 5


class WebhookCallerTool(_WebTool):
    """POST a JSON payload to a webhook, signed with HMAC-SHA256 when a secret is set."""

    name = "webhook_caller"
    description = (
        "POST a JSON 'payload' to a webhook 'url'. When the tool is configured with a "
        "secret, the body is signed with HMAC-SHA256 in a signature header "
        "('sha256=<hex>'). Retries on connection errors, 429 and 5xx with backoff "
        "('retries', default 2). Returns status, ok and attempts."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "url": _URL_SCHEMA,
            "payload": {"description": "The JSON payload."},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "retries": {"type": "integer", "minimum": 0, "maximum": MAX_WEBHOOK_RETRIES,
                        "description": "Retries on connection errors, 429 and 5xx "
                                       "(default 2)."},
            "timeout": _TIMEOUT_SCHEMA,
        },
        "required": ["url", "payload"],
        "additionalProperties": False,
    }
    side_effects = frozenset({SideEffect.WEBHOOK})

    def __init__(self, *, allow_loopback: bool = False, allow_private: bool = False,
                 max_bytes: int = MIB, timeout: float = 30.0, secret: str | None = None,
                 signature_header: str = "X-Signature-256",
                 client: httpx.AsyncClient | None = None) -> None:
        super().__init__(allow_loopback=allow_loopback, allow_private=allow_private,
                         max_bytes=max_bytes, timeout=timeout, max_redirects=0, client=client)
        if secret is not None and not secret:
            raise InvalidValueError("the webhook secret is empty")
        if not re.fullmatch(r"[A-Za-z0-9-]+", signature_header):
            raise InvalidValueError(f"invalid signature header name {signature_header!r}")
        self._secret = secret.encode("utf-8") if secret is not None else None
        self.signature_header = signature_header

    def __repr__(self) -> str:
        return f"<tool {self.name!r} signed={self._secret is not None}>"

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """POST the payload and report the outcome."""
        headers = dict(params.get("headers", {}))
        managed = {self.signature_header.lower(), "content-type"}
        clash = [k for k in headers if k.lower() in managed]
        if clash:
            raise self._fail(f"the header {clash[0]!r} is set by the tool itself")
        try:
            body = json.dumps(params["payload"], ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False)
        except ValueError as exc:
            raise self._fail(f"the payload is not JSON-safe: {exc}") from None
        headers["Content-Type"] = "application/json"
        if self._secret is not None:
            digest = hmac.new(self._secret, body.encode("utf-8"), hashlib.sha256).hexdigest()
            headers[self.signature_header] = f"sha256={digest}"
        response = await self._request({
            "url": params["url"], "method": "POST", "headers": headers, "body": body,
            "retries": params.get("retries", 2), "timeout": self._budget(params)})
        shown = response["body"]
        if isinstance(shown, str) and len(shown) > 2000:
            shown = shown[:2000] + "..."
        status: int = response["status"]
        return {"status": status, "ok": 200 <= status < 300, "attempts": response["attempts"],
                "signed": self._secret is not None, "elapsed_ms": response["elapsed_ms"],
                "response": shown}


# -- webpage_monitor ---------------------------------------------------------------------------


@dataclass
class _Seen:
    hash: str
    text: str | None


class WebpageMonitorTool(_WebTool):
    """Tell whether a page's (selected) text changed since the last look."""

    name = "webpage_monitor"
    description = (
        "Fetch a page ('url'), hash its visible text (or the text of the elements matching "
        "'selector') and compare it with 'previous_hash' or with the hash remembered from "
        "the last check of the same url and selector. Returns hash, changed, first_check "
        "and, when the previous text is remembered, a short unified diff."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "url": _URL_SCHEMA,
            "selector": {"type": "string", "minLength": 1, "maxLength": 500},
            "previous_hash": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$",
                              "description": "A SHA-256 hex digest from an earlier check."},
            "diff_lines": {"type": "integer", "minimum": 0, "maximum": 500,
                           "description": "Most diff lines returned (default 50)."},
            "timeout": _TIMEOUT_SCHEMA,
        },
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(self, *, allow_loopback: bool = False, allow_private: bool = False,
                 max_bytes: int = 2 * MIB, timeout: float = 30.0, max_tracked: int = 100,
                 max_kept_chars: int = 100_000, client: httpx.AsyncClient | None = None,
                 ) -> None:
        super().__init__(allow_loopback=allow_loopback, allow_private=allow_private,
                         max_bytes=max_bytes, timeout=timeout, client=client)
        if max_tracked < 0 or max_kept_chars < 0:
            raise InvalidValueError("max_tracked and max_kept_chars cannot be negative")
        self.max_tracked = max_tracked
        self.max_kept_chars = max_kept_chars
        self._seen: collections.OrderedDict[tuple[str, str], _Seen] = (
            collections.OrderedDict())

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Fetch, hash and compare."""
        selector: str = params.get("selector", "")
        if selector:
            _selector_or_fail(self.name, selector)
        response, body = await self._page(params["url"], self._budget(params))
        root = parse_html(body)
        if selector:
            nodes = select(root, selector, limit=1000)
            text = "\n".join(visible_text(n, include_hidden=True) for n in nodes)
            matched: int | None = len(nodes)
        else:
            text = visible_text(root)
            matched = None
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        key = (params["url"], selector)
        kept = self._seen.get(key)
        previous: str | None = params.get("previous_hash", "").lower() or (
            kept.hash if kept is not None else None)
        changed = previous is not None and previous != digest
        result: dict[str, Any] = {"url": response["url"], "hash": digest, "changed": changed,
                                  "first_check": previous is None, "previous_hash": previous,
                                  "text_chars": len(text)}
        if matched is not None:
            result["matched"] = matched
        if changed and kept is not None and kept.text is not None and kept.hash == previous:
            limit: int = params.get("diff_lines", 50)
            diff = list(difflib.unified_diff(kept.text.splitlines(), text.splitlines(),
                                             "before", "after", lineterm="", n=1))
            result["diff"] = diff[:limit]
            result["diff_truncated"] = len(diff) > limit
        if self.max_tracked:
            self._seen[key] = _Seen(digest, text if len(text) <= self.max_kept_chars else None)
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_tracked:
                self._seen.popitem(last=False)
        return result


# -- sitemap_crawler ---------------------------------------------------------------------------

MAX_DEPTH: Final = 3
MAX_PAGES: Final = 100
_FORBIDDEN_XML: Final = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class SitemapCrawlerTool(_WebTool):
    """List a site's URLs from its sitemap and/or by crawling links breadth-first."""

    name = "sitemap_crawler"
    description = (
        "Find a site's URLs: read 'sitemap_url' (a sitemap.xml or sitemap index) and/or crawl "
        "links breadth-first from 'start_url' within the same host, up to 'max_depth' "
        "(0-3, default 1) and 'max_pages' fetched (1-100, default 20). Returns the URLs "
        "found. Internal network addresses are refused."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "sitemap_url": _URL_SCHEMA,
            "start_url": _URL_SCHEMA,
            "max_depth": {"type": "integer", "minimum": 0, "maximum": MAX_DEPTH},
            "max_pages": {"type": "integer", "minimum": 1, "maximum": MAX_PAGES},
            "max_urls": {"type": "integer", "minimum": 1, "maximum": 10_000,
                         "description": "Most URLs returned (default 1000)."},
            "timeout": _TIMEOUT_SCHEMA,
        },
        "anyOf": [{"required": ["sitemap_url"]}, {"required": ["start_url"]}],
        "additionalProperties": False,
    }

    def __init__(self, *, allow_loopback: bool = False, allow_private: bool = False,
                 max_bytes: int = 2 * MIB, timeout: float = 60.0,
                 client: httpx.AsyncClient | None = None) -> None:
        super().__init__(allow_loopback=allow_loopback, allow_private=allow_private,
                         max_bytes=max_bytes, timeout=timeout, max_redirects=0, client=client)

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Read the sitemap and/or crawl, within the page and time bounds."""
        budget = self._budget(params)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        state = _Crawl(max_pages=params.get("max_pages", 20),
                       max_urls=params.get("max_urls", 1000))
        try:
            async with asyncio.timeout_at(deadline):
                if "sitemap_url" in params:
                    await self._sitemaps(params["sitemap_url"], state, deadline)
                if "start_url" in params:
                    await self._crawl(params["start_url"], params.get("max_depth", 1), state,
                                      deadline)
        except TimeoutError:
            raise ToolTimeoutError(self.name, f"the crawl took longer than {budget:g} s",
                                   hint="lower max_pages or max_depth, or raise 'timeout'"
                                   ) from None
        return {"urls": list(state.urls), "count": len(state.urls),
                "truncated": state.truncated, "pages_fetched": state.fetched,
                "sitemap_urls": state.from_sitemap, "crawled_urls": state.from_crawl,
                "errors": state.errors}

    async def _fetch(self, url: str, state: _Crawl, deadline: float) -> str:
        state.fetched += 1
        _, body = await self._page(url, deadline - asyncio.get_running_loop().time())
        return body

    async def _sitemaps(self, first: str, state: _Crawl, deadline: float) -> None:
        queue = [first]
        seen = {first}
        while queue and state.fetched < state.max_pages:
            url = queue.pop(0)
            try:
                body = await self._fetch(url, state, deadline)
            except SandboxViolationError:
                raise
            except ToolExecutionError as exc:
                if url == first:
                    raise
                state.error(url, exc.message)
                continue
            kind, locs = self._read_sitemap(body, url)
            for loc in locs:
                if kind == "sitemapindex":
                    if loc not in seen:
                        seen.add(loc)
                        queue.append(loc)
                elif state.add(loc):
                    state.from_sitemap += 1

    def _read_sitemap(self, body: str, url: str) -> tuple[str, list[str]]:
        if _FORBIDDEN_XML.search(body):
            raise SandboxViolationError(
                self.name, f"the sitemap {url} contains a DOCTYPE or ENTITY declaration",
                hint="sitemaps with DTDs or entities are refused (entity expansion attacks)")
        try:
            root = ET.fromstring(body.lstrip("\ufeff"))
        except ET.ParseError as exc:
            raise self._fail(f"the sitemap {url} is not valid XML: {exc}") from None
        kind = root.tag.rsplit("}", 1)[-1]
        if kind not in ("urlset", "sitemapindex"):
            raise self._fail(f"{url} is not a sitemap (its root element is {kind!r})",
                             hint="a sitemap's root is <urlset> or <sitemapindex>")
        locs: list[str] = []
        for element in root.iter():
            if element.tag.rsplit("}", 1)[-1] == "loc" and element.text:
                loc = element.text.strip()
                if urlsplit(loc).scheme.lower() in ("http", "https"):
                    locs.append(loc)
        return kind, locs

    async def _crawl(self, start: str, max_depth: int, state: _Crawl, deadline: float) -> None:
        host = _host_key(start)
        queue: collections.deque[tuple[str, int]] = collections.deque([(start, 0)])
        visited = {start}
        if state.add(start):
            state.from_crawl += 1
        while queue and state.fetched < state.max_pages:
            url, depth = queue.popleft()
            try:
                body = await self._fetch(url, state, deadline)
            except ToolError as exc:
                if url == start:
                    raise
                state.error(url, exc.message)
                continue
            if depth >= max_depth:
                continue
            for link in _page_links(parse_html(body), url):
                if _host_key(link) != host or link in visited:
                    continue
                visited.add(link)
                if state.add(link):
                    state.from_crawl += 1
                queue.append((link, depth + 1))


def _host_key(url: str) -> tuple[str, int | None]:
    try:
        parts = urlsplit(url)
        return (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(
            parts.scheme.lower())
    except ValueError:
        return "", None


@dataclass
class _Crawl:
    max_pages: int
    max_urls: int
    urls: dict[str, None] = field(default_factory=dict)
    fetched: int = 0
    from_sitemap: int = 0
    from_crawl: int = 0
    truncated: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)

    def add(self, url: str) -> bool:
        if url in self.urls:
            return False
        if len(self.urls) >= self.max_urls:
            self.truncated = True
            return False
        self.urls[url] = None
        return True

    def error(self, url: str, message: str) -> None:
        if len(self.errors) < 20:
            self.errors.append({"url": url, "error": message})
