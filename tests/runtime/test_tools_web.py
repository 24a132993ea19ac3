"""The web tools: url_analyzer, web_scraper, api_tester, webhook_caller, webpage_monitor,
sitemap_crawler and web_search.

Tools are called directly (``validate`` then ``execute``), the way the pipeline calls them,
and once each through a running system. Every network test talks only to a local server on
127.0.0.1 started here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest

from llmspell.core.errors import (
    InvalidValueError,
    SandboxViolationError,
    ToolExecutionError,
    ToolValidationError,
)
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.tools.library.web_search import JsonApiSearchProvider, WebSearchTool
from llmspell.runtime.tools.library.web_tools import (
    ApiTesterTool,
    SitemapCrawlerTool,
    UrlAnalyzerTool,
    WebhookCallerTool,
    WebpageMonitorTool,
    WebScraperTool,
    parse_html,
    select,
    visible_text,
)
from tests.runtime.tool_helpers import run

SECRET = "hook-secret-1234567890"
API_KEY = "sk-search-key-0987654321"




PAGE = """<!doctype html>
<html><head><title> The  Page </title>
<meta name="description" content="A test page"><meta property="og:title" content="OG">
<style>body { color: red }</style><script>var hidden = "secret script";</script>
</head><body>
<div id="main" class="content wide"><h1>Hello</h1><p>First <b>para</b>.</p>
<ul><li class="item">one</li><li class="item special">two</li><li>three</li></ul>
<a href="/a">A</a><a href="/a#frag">A again</a><a href="b.html">B</a>
<a href="https://example.com/x">X</a><a href="mailto:x@example.com">mail</a>
<a href="javascript:void(0)">js</a>
</div>
<div class="other"><span class="item">outside</span><p>Tail<br>line</p></div>
</body></html>"""

SITEMAP = """<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<url><loc>{base}/one</loc></url><url><loc> {base}/two </loc></url>
<url><loc>{base}/one</loc></url><url><loc>ftp://elsewhere/x</loc></url>
</urlset>"""

INDEX = """<?xml version="1.0"?>
<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<sitemap><loc>{base}/sitemap.xml</loc></sitemap><sitemap><loc>{base}/sitemap-b.xml</loc></sitemap>
</sitemapindex>"""

SITEMAP_B = """<urlset><url><loc>{base}/three</loc></url></urlset>"""

DTD = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>
<urlset><url><loc>&lol2;</loc></url></urlset>"""


class _State:
    monitor_text = "<html><body><p>Version 1</p><div id='price'>10</div></body></html>"
    hooks: list[dict[str, Any]] = []  # noqa: RUF012
    counters: dict[str, int] = {}  # noqa: RUF012
    lock = threading.Lock()


def _site_page(path: str, base: str) -> str | None:
    """A chain /site/0 -> /site/1 -> ... -> /site/5, each also linking outside, and a wide
    fan-out /wide/N linking to 30 children each."""
    parts = path.strip("/").split("/")
    if parts[0] == "site" and len(parts) == 2 and parts[1].isdigit():
        n = int(parts[1])
        nxt = f'<a href="/site/{n + 1}">next</a>' if n < 5 else ""
        return (f"<html><body>{nxt}<a href='https://example.com/out'>out</a>"
                f"<a href='{base}/site/{n}#top'>self</a></body></html>")
    if parts[0] == "wide":
        prefix = "/".join(parts)
        links = "".join(f'<a href="/{prefix}/{i}">{i}</a>' for i in range(30))
        return f"<html><body>{links}</body></html>"
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, body: bytes | str, status: int = 200, content_type: str = "text/html",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _json(self, value: Any, status: int = 200, headers: dict[str, str] | None = None,
              ) -> None:
        self._send(json.dumps(value), status, "application/json", headers)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{cast(ThreadingHTTPServer, self.server).server_port}"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        query = parse_qs(url.query)
        if path == "/page":
            self._send(PAGE)
        elif path == "/big":
            self._send("<p>" + "x" * 5000 + "</p>")
        elif path == "/png":
            self._send(b"\x89PNG\x00\x00\x01", content_type="image/png")
        elif path == "/json":
            self._json({"data": {"items": [{"id": 1, "name": "a"}, {"id": 2}]}, "ok": True},
                       headers={"X-Api": "v1-beta"})
        elif path == "/missing":
            self._json({"error": "nope"}, 404)
        elif path == "/monitor":
            self._send(_State.monitor_text)
        elif path == "/sitemap.xml":
            self._send(SITEMAP.format(base=self.base), content_type="application/xml")
        elif path == "/sitemap-index.xml":
            self._send(INDEX.format(base=self.base), content_type="application/xml")
        elif path == "/sitemap-b.xml":
            self._send(SITEMAP_B.format(base=self.base), content_type="text/xml")
        elif path == "/dtd.xml":
            self._send(DTD, content_type="application/xml")
        elif path == "/broken.xml":
            self._send("<urlset><url>", content_type="application/xml")
        elif path == "/notsitemap.xml":
            self._send("<rss></rss>", content_type="application/xml")
        elif path == "/search":
            auth = self.headers.get("Authorization")
            if auth != f"Bearer {API_KEY}":
                self._json({"error": f"bad key {auth}"}, 401)
                return
            q = query.get("q", [""])[0]
            limit = int(query.get("limit", ["10"])[0])
            if q == "explode":
                self._json({"error": f"boom with {auth}"}, 500)
                return
            if q == "weird":
                self._json({"items": []})
                return
            results: list[Any] = [{"title": f"{q} {i}", "url": f"https://example.com/{i}",
                                   "snippet": f"about {q}"} for i in range(limit + 5)]
            results.insert(1, {"title": "no url"})
            results.insert(2, {"title": "js", "url": "javascript:alert(1)"})
            results.insert(3, {"title": "searx", "url": "https://searx.example/r",
                               "content": "from content"})
            self._json({"results": results})
        else:
            page = _site_page(path, self.base)
            if page is None:
                self._send("not found", 404, "text/plain")
            else:
                self._send(page)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        url = urlsplit(self.path)
        if url.path == "/hook":
            with _State.lock:
                _State.hooks.append({"body": raw, "headers": dict(self.headers.items())})
            self._json({"received": True})
        elif url.path.startswith("/flaky/"):
            key = url.path
            with _State.lock:
                count = _State.counters.get(key, 0) + 1
                _State.counters[key] = count
            failures = int(url.path.rsplit("/", 1)[1])
            if count <= failures:
                self._json({"error": "busy"}, 503 if count % 2 else 429)
            else:
                self._json({"ok": count})
        elif url.path == "/echo":
            self._json({"got": json.loads(raw or b"null")}, 201)
        else:
            self._json({"error": "not found"}, 404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# -- html helpers ------------------------------------------------------------------------------


def test_selectors_and_text() -> None:
    root = parse_html(PAGE)
    assert [n.attrs.get("class") for n in select(root, "li.item")] == ["item", "item special"]
    assert [visible_text(n) for n in select(root, ".item")] == ["one", "two", "outside"]
    assert [visible_text(n) for n in select(root, "#main .item")] == ["one", "two"]
    assert [n.tag for n in select(root, "div#main.content.wide")] == ["div"]
    assert [visible_text(n) for n in select(root, "div li")] == ["one", "two", "three"]
    assert select(root, "ul p") == []
    assert len(select(root, "*")) > 10
    text = visible_text(root)
    assert "secret script" not in text and "color: red" not in text and "The Page" not in text
    assert "First para." in text and "Tail\nline" in text


def test_deep_nesting_does_not_recurse() -> None:
    root = parse_html("<div>" * 5000 + "deep" + "</div>" * 5000)
    assert visible_text(root) == "deep"
    assert len(select(root, "div div div")) == 4998
    flood = parse_html("<div>" * 300 + "</span>" * 200_000 + "<p>end</p>")
    assert visible_text(flood) == "end"


# -- url_analyzer ------------------------------------------------------------------------------


async def test_url_analyzer() -> None:
    tool = UrlAnalyzerTool()
    result = await run(tool, {"url": "HTTPS://User@Example.COM:443/a/./b/../c?x=1&x=2&y=#Frag"})
    assert result["scheme"] == "https" and result["host"] == "example.com"
    assert result["port"] == 443 and result["effective_port"] == 443
    assert result["query_params"] == {"x": ["1", "2"], "y": [""]}
    assert result["fragment"] == "Frag" and result["path"] == "/a/./b/../c"
    assert result["normalized"] == "https://User@example.com/a/c?x=1&x=2&y=#Frag"
    assert result["has_credentials"] and result["issues"] == ["the URL carries credentials"]
    assert result["is_ip"] is False
    local = await run(tool, {"url": "http://127.0.0.1:8080"})
    assert local["is_ip"] and local["is_loopback"] and local["ip_version"] == 4
    assert local["normalized"] == "http://127.0.0.1:8080/"
    private = await run(tool, {"url": "http://[fd00::1]/x"})
    assert private["ip_version"] == 6 and private["is_private"] and not private["is_global"]
    assert private["normalized"] == "http://[fd00::1]/x"
    assert (await run(tool, {"url": "http://localhost/"}))["is_loopback"] is True
    assert (await run(tool, {"url": "ftp://h/f"}))["issues"] == [
        "the scheme 'ftp' is not http or https"]
    assert (await run(tool, {"url": "http://bücher.de/"}))["normalized"] == (
        "http://xn--bcher-kva.de/")


@pytest.mark.parametrize("url", ["http://h:99999/", "http://[::1/", "no-scheme.com/x",
                                 "http:///path", "http://a b/", "http://h/\x00"])
async def test_url_analyzer_malformed(url: str) -> None:
    with pytest.raises(ToolExecutionError) as caught:
        await run(UrlAnalyzerTool(), {"url": url})
    assert caught.value.tool == "url_analyzer"


def test_url_analyzer_bad_params() -> None:
    for bad in ({}, {"url": ""}, {"url": 3}, {"url": "http://x", "extra": 1}):
        with pytest.raises(ToolValidationError):
            UrlAnalyzerTool().validate(bad)


# -- web_scraper -------------------------------------------------------------------------------


async def test_scraper_extracts(server: str) -> None:
    tool = WebScraperTool(allow_loopback=True, timeout=5)
    result = await run(tool, {"url": f"{server}/page", "selector": "#main li.item"})
    assert result["title"] == "The Page"
    assert result["meta"] == {"description": "A test page", "og:title": "OG"}
    assert "secret script" not in result["text"] and "Hello" in result["text"]
    assert result["links"] == [f"{server}/a", f"{server}/b.html", "https://example.com/x"]
    assert [e["text"] for e in result["elements"]] == ["one", "two"]
    assert result["elements"][1]["attrs"] == {"class": "item special"}
    limited = await run(tool, {"url": f"{server}/page", "extract": ["links", "elements"],
                               "selector": "li", "max_links": 1, "max_elements": 2})
    assert limited["links"] == [f"{server}/a"] and limited["links_total"] == 3
    assert len(limited["elements"]) == 2 and limited["elements_truncated"]
    assert "text" not in limited
    short = await run(tool, {"url": f"{server}/page", "extract": ["text"],
                             "max_text_chars": 5})
    assert short["text"] == "Hello" and short["text_truncated"]


async def test_scraper_errors(server: str) -> None:
    tool = WebScraperTool(allow_loopback=True, timeout=5, max_bytes=1000)
    cases: list[tuple[dict[str, Any], str]] = [
             ({"url": f"{server}/big"}, "limit"), ({"url": f"{server}/missing"}, "404"),
             ({"url": f"{server}/png"}, "not an HTML"),
             ({"url": f"{server}/page", "selector": "a > b"}, "bad selector"),
             ({"url": f"{server}/page", "extract": ["elements"]}, "needs a 'selector'")]
    for params, message in cases:
        with pytest.raises(ToolExecutionError) as caught:
            await run(tool, params)
        assert caught.value.tool == "web_scraper" and message in caught.value.message
    for bad in ({}, {"url": "ftp://x"}, {"url": f"{server}/page", "max_links": 0},
                {"url": f"{server}/page", "extract": ["everything"]}):
        with pytest.raises(ToolValidationError):
            tool.validate(bad)


@pytest.mark.parametrize("make", [
    lambda: WebScraperTool(), lambda: ApiTesterTool(), lambda: WebhookCallerTool(),
    lambda: WebpageMonitorTool(), lambda: SitemapCrawlerTool()])
async def test_loopback_refused_by_default(server: str, make: Any) -> None:
    tool = make()
    table: dict[str, dict[str, Any]] = {
        "web_scraper": {"url": f"{server}/page"}, "api_tester": {"url": f"{server}/json"},
        "webhook_caller": {"url": f"{server}/hook", "payload": {}},
        "webpage_monitor": {"url": f"{server}/monitor"},
        "sitemap_crawler": {"start_url": f"{server}/site/0"}}
    params = table[tool.name]
    with pytest.raises(SandboxViolationError) as caught:
        await run(tool, params)
    assert caught.value.tool == tool.name
    with pytest.raises(SandboxViolationError):
        await run(tool, {**params, **({"url": "http://169.254.169.254/"} if "url" in params
                                      else {"start_url": "http://10.0.0.1/"})})


# -- api_tester --------------------------------------------------------------------------------


async def test_api_tester(server: str) -> None:
    tool = ApiTesterTool(allow_loopback=True, timeout=5)
    result = await run(tool, {"url": f"{server}/json", "expect": {
        "status": 200, "headers": {"x-api": "v1"},
        "json": [{"path": "$.data.items[0].id", "equals": 1}, {"path": "ok", "equals": True},
                 {"path": "$.data.items[*].id", "equals": [1, 2]}],
        "body_contains": ['"name": "a"'], "max_latency_ms": 10_000}})
    assert result["passed"] is True and len(result["checks"]) == 7
    failing = await run(tool, {"url": f"{server}/json", "expect": {
        "status": [201, 204], "headers": {"X-Missing": "x"},
        "json": [{"path": "$.ok", "equals": 1}, {"path": "$.data.nope", "equals": 1}],
        "body_contains": ["zzz"], "max_latency_ms": 0.0001}})
    assert failing["passed"] is False
    assert [c["passed"] for c in failing["checks"]] == [False] * 6
    assert failing["checks"][3]["error"] == "at data: key 'nope' is missing"
    posted = await run(tool, {"url": f"{server}/echo", "method": "POST", "json": {"a": 1},
                              "expect": {"json": [{"path": "got.a", "equals": 1.0}]}})
    assert posted["passed"] and posted["status"] == 201
    default = await run(tool, {"url": f"{server}/missing"})
    assert default["passed"] is False and default["checks"][0]["expected"] == "2xx"
    html = await run(tool, {"url": f"{server}/page", "expect": {
        "json": [{"path": "a", "equals": 1}]}})
    assert html["checks"][1]["error"] == "the response body is not JSON"


async def test_api_tester_errors(server: str) -> None:
    tool = ApiTesterTool(allow_loopback=True, timeout=5, max_bytes=100)
    with pytest.raises(ToolExecutionError, match="bad JSON path"):
        await run(tool, {"url": f"{server}/json", "expect": {"json": [{"path": "a[",
                                                                       "equals": 1}]}})
    with pytest.raises(ToolExecutionError, match="limit"):
        await run(tool, {"url": f"{server}/page"})
    for bad in ({"url": f"{server}/json", "expect": {"status": 99}},
                {"url": f"{server}/json", "json": {}, "body": ""},
                {"url": f"{server}/json", "expect": {"json": [{"path": "a"}]}}):
        with pytest.raises(ToolValidationError):
            tool.validate(bad)


# -- webhook_caller ----------------------------------------------------------------------------


async def test_webhook_signed(server: str) -> None:
    tool = WebhookCallerTool(allow_loopback=True, timeout=5, secret=SECRET)
    _State.hooks.clear()
    result = await run(tool, {"url": f"{server}/hook", "payload": {"event": "é", "n": 1},
                              "headers": {"X-Trace": "t1"}})
    assert result["status"] == 200 and result["ok"] and result["attempts"] == 1
    assert result["signed"] is True and result["response"] == {"received": True}
    (hook,) = _State.hooks
    expected = hmac.new(SECRET.encode(), hook["body"], hashlib.sha256).hexdigest()
    assert hook["headers"]["X-Signature-256"] == f"sha256={expected}"
    assert json.loads(hook["body"]) == {"event": "é", "n": 1}
    assert hook["headers"]["X-Trace"] == "t1"
    assert SECRET not in json.dumps(result) and SECRET not in repr(tool)
    unsigned = WebhookCallerTool(allow_loopback=True, timeout=5)
    assert (await run(unsigned, {"url": f"{server}/hook", "payload": [1]}))["signed"] is False
    assert "X-Signature-256" not in _State.hooks[-1]["headers"]


async def test_webhook_retries(server: str) -> None:
    tool = WebhookCallerTool(allow_loopback=True, timeout=10, secret=SECRET)
    ok = await run(tool, {"url": f"{server}/flaky/2", "payload": {}, "retries": 3})
    assert ok["ok"] and ok["attempts"] == 3
    gave_up = await run(tool, {"url": f"{server}/flaky/9", "payload": {}, "retries": 1})
    assert gave_up["ok"] is False and gave_up["attempts"] == 2 and gave_up["status"] == 429
    with pytest.raises(ToolExecutionError) as caught:
        await run(tool, {"url": "http://127.0.0.1:9/hook", "payload": {}, "retries": 1})
    assert caught.value.tool == "webhook_caller" and SECRET not in str(caught.value)
    with pytest.raises(ToolExecutionError, match="set by the tool"):
        await run(tool, {"url": f"{server}/hook", "payload": {},
                         "headers": {"x-signature-256": "forged"}})
    for bad in ({"url": f"{server}/hook"}, {"url": f"{server}/hook", "payload": 1,
                                           "retries": 6}):
        with pytest.raises(ToolValidationError):
            tool.validate(bad)
    with pytest.raises(InvalidValueError):
        WebhookCallerTool(secret="")


# -- webpage_monitor ---------------------------------------------------------------------------


async def test_webpage_monitor(server: str) -> None:
    tool = WebpageMonitorTool(allow_loopback=True, timeout=5, max_tracked=2)
    _State.monitor_text = "<html><body><p>Version 1</p><div id='price'>10</div></body></html>"
    first = await run(tool, {"url": f"{server}/monitor"})
    assert first["first_check"] and not first["changed"]
    assert first["hash"] == hashlib.sha256(b"Version 1\n10").hexdigest()
    same = await run(tool, {"url": f"{server}/monitor"})
    assert not same["changed"] and same["previous_hash"] == first["hash"]
    _State.monitor_text = "<html><body><p>Version 2</p><div id='price'>10</div></body></html>"
    changed = await run(tool, {"url": f"{server}/monitor"})
    assert changed["changed"] and "-Version 1" in changed["diff"] and "+Version 2" in (
        changed["diff"])
    price = await run(tool, {"url": f"{server}/monitor", "selector": "#price"})
    assert price["matched"] == 1 and price["first_check"]
    assert price["hash"] == hashlib.sha256(b"10").hexdigest()
    given = await run(WebpageMonitorTool(allow_loopback=True, max_tracked=0),
                      {"url": f"{server}/monitor", "previous_hash": first["hash"]})
    assert given["changed"] and "diff" not in given
    # bounded memory: a third key evicts the oldest
    await run(tool, {"url": f"{server}/monitor", "selector": "p"})
    assert len(tool._seen) == 2
    assert (await run(tool, {"url": f"{server}/monitor"}))["first_check"]


async def test_webpage_monitor_errors(server: str) -> None:
    tool = WebpageMonitorTool(allow_loopback=True, timeout=5)
    with pytest.raises(ToolExecutionError, match="bad selector"):
        await run(tool, {"url": f"{server}/monitor", "selector": "p:first"})
    with pytest.raises(ToolExecutionError, match="404"):
        await run(tool, {"url": f"{server}/missing"})
    with pytest.raises(ToolValidationError):
        tool.validate({"url": f"{server}/monitor", "previous_hash": "abc"})


# -- sitemap_crawler ---------------------------------------------------------------------------


async def test_sitemap(server: str) -> None:
    tool = SitemapCrawlerTool(allow_loopback=True, timeout=10)
    result = await run(tool, {"sitemap_url": f"{server}/sitemap.xml"})
    assert result["urls"] == [f"{server}/one", f"{server}/two"]
    assert result["pages_fetched"] == 1
    index = await run(tool, {"sitemap_url": f"{server}/sitemap-index.xml"})
    assert index["urls"] == [f"{server}/one", f"{server}/two", f"{server}/three"]
    capped = await run(tool, {"sitemap_url": f"{server}/sitemap-index.xml", "max_pages": 2})
    assert capped["pages_fetched"] == 2 and capped["urls"] == [f"{server}/one",
                                                               f"{server}/two"]


async def test_sitemap_refusals(server: str) -> None:
    tool = SitemapCrawlerTool(allow_loopback=True, timeout=10)
    with pytest.raises(SandboxViolationError, match="DOCTYPE"):
        await run(tool, {"sitemap_url": f"{server}/dtd.xml"})
    with pytest.raises(ToolExecutionError, match="not valid XML"):
        await run(tool, {"sitemap_url": f"{server}/broken.xml"})
    with pytest.raises(ToolExecutionError, match="not a sitemap"):
        await run(tool, {"sitemap_url": f"{server}/notsitemap.xml"})
    with pytest.raises(ToolExecutionError, match="limit"):
        await run(SitemapCrawlerTool(allow_loopback=True, max_bytes=100),
                  {"sitemap_url": f"{server}/sitemap.xml"})
    for bad in ({}, {"start_url": f"{server}/", "max_depth": 4},
                {"start_url": f"{server}/", "max_pages": 101}):
        with pytest.raises(ToolValidationError):
            tool.validate(bad)


async def test_crawl_bounds(server: str) -> None:
    tool = SitemapCrawlerTool(allow_loopback=True, timeout=20)
    result = await run(tool, {"start_url": f"{server}/site/0", "max_depth": 2})
    assert result["urls"] == [f"{server}/site/{i}" for i in range(3)]
    assert result["pages_fetched"] == 3  # depth 2 is fetched, its links not followed
    assert "https://example.com/out" not in result["urls"]
    deep = await run(tool, {"start_url": f"{server}/site/0", "max_depth": 3})
    assert deep["urls"][-1] == f"{server}/site/3"
    zero = await run(tool, {"start_url": f"{server}/site/0", "max_depth": 0})
    assert zero["urls"] == [f"{server}/site/0"] and zero["pages_fetched"] == 1
    wide = await run(tool, {"start_url": f"{server}/wide", "max_depth": 3, "max_pages": 5,
                            "max_urls": 50})
    assert wide["pages_fetched"] == 5 and wide["count"] == 50 and wide["truncated"]
    both = await run(tool, {"start_url": f"{server}/site/4",
                            "sitemap_url": f"{server}/sitemap.xml"})
    assert both["sitemap_urls"] == 2 and both["crawled_urls"] == 2
    with pytest.raises(ToolExecutionError, match="404"):
        await run(tool, {"start_url": f"{server}/nothing-here"})


# -- web_search --------------------------------------------------------------------------------


class _StaticProvider:
    async def search(self, query: str, limit: int) -> list[dict[str, str]]:
        return [{"title": "t", "url": f"https://static.example/{query}", "snippet": "s"}]


class _BrokenProvider:
    async def search(self, query: str, limit: int) -> list[dict[str, str]]:
        raise RuntimeError(f"leaked {API_KEY}")


def _search_tool(server: str, key: str = API_KEY) -> WebSearchTool:
    provider = JsonApiSearchProvider(f"{server}/search", key, allow_loopback=True, timeout=5)
    return WebSearchTool(providers={"json": provider, "static": _StaticProvider(),
                                    "broken": _BrokenProvider()}, default="json")


async def test_web_search(server: str) -> None:
    tool = _search_tool(server)
    result = await run(tool, {"query": "cats", "limit": 3})
    assert result["provider"] == "json" and result["count"] == 3
    assert result["results"][0] == {"title": "cats 0", "url": "https://example.com/0",
                                    "snippet": "about cats"}
    assert result["results"][1] == {"title": "searx", "url": "https://searx.example/r",
                                    "snippet": "from content"}
    static = await run(tool, {"query": "dogs", "provider": "static"})
    assert static["results"][0]["url"] == "https://static.example/dogs"
    assert "enum" in tool.parameters["properties"]["provider"]


async def test_web_search_errors_never_echo_the_key(server: str) -> None:
    tool = _search_tool(server)
    for params, message in (({"query": "explode"}, "HTTP 500"),
                            ({"query": "weird"}, "'results' list"),
                            ({"query": "x", "provider": "broken"}, "RuntimeError"),
                            ({"query": "   "}, "blank")):
        with pytest.raises(ToolExecutionError) as caught:
            await run(tool, params)
        assert message in caught.value.message and caught.value.tool == "web_search"
        assert API_KEY not in str(caught.value) and API_KEY not in (caught.value.hint or "")
    with pytest.raises(ToolExecutionError, match="HTTP 401") as caught:
        await run(_search_tool(server, "wrong-key"), {"query": "x"})
    assert caught.value.hint == "check the API key"
    provider = JsonApiSearchProvider(f"{server}/search", API_KEY)
    assert API_KEY not in repr(provider)
    with pytest.raises(SandboxViolationError):
        await provider.search("x", 1)
    for bad in ({}, {"query": ""}, {"query": "x", "limit": 51},
                {"query": "x", "provider": "nope"}):
        with pytest.raises(ToolValidationError):
            tool.validate(bad)
    with pytest.raises(InvalidValueError):
        WebSearchTool(providers={"a": _StaticProvider()}, default="b")
    with pytest.raises(InvalidValueError):
        WebSearchTool(providers={}, default="b")
    with pytest.raises(InvalidValueError):
        JsonApiSearchProvider("file:///etc/passwd")


# -- through the runtime -------------------------------------------------------------------


async def test_web_tools_through_the_runtime(server: str) -> None:
    async with System(SystemConfig(store="memory")) as system:
        for tool in (UrlAnalyzerTool(), WebScraperTool(allow_loopback=True, timeout=5),
                     ApiTesterTool(allow_loopback=True, timeout=5),
                     WebhookCallerTool(allow_loopback=True, timeout=5, secret=SECRET),
                     WebpageMonitorTool(allow_loopback=True, timeout=5),
                     SitemapCrawlerTool(allow_loopback=True, timeout=5), _search_tool(server)):
            system.tools.register(tool)
        analyzed = await system.tools.execute("url_analyzer", {"url": "http://10.1.2.3/"})
        assert analyzed["is_private"] is True
        scraped = await system.tools.execute("web_scraper", {"url": f"{server}/page"})
        assert scraped["title"] == "The Page"
        tested = await system.tools.execute("api_tester", {
            "url": f"{server}/json", "expect": {"json": [{"path": "ok", "equals": True}]}})
        assert tested["passed"] is True
        hooked = await system.tools.execute("webhook_caller", {"url": f"{server}/hook",
                                                               "payload": {"a": 1}})
        assert hooked["ok"] is True
        monitored = await system.tools.execute("webpage_monitor", {"url": f"{server}/monitor"})
        assert monitored["first_check"] is True
        crawled = await system.tools.execute("sitemap_crawler", {
            "sitemap_url": f"{server}/sitemap.xml"})
        assert crawled["count"] == 2
        found = await system.tools.execute("web_search", {"query": "q", "limit": 1})
        assert found["count"] == 1
        with pytest.raises(ToolValidationError):
            await system.tools.execute("web_scraper", {"nope": 1})
