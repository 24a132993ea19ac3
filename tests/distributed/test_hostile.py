"""A hostile peer on the bus: what it sends a hook server, what it answers a caller.

Against the real NATS server: malformed calls (garbage, the wrong shape, strings that are
not UTF-8, data nested thousands deep, calls over the size bound, bad context headers) get a
typed, counted refusal and the server goes on serving; malformed replies (garbage, the wrong
shape, unknown results, oversized, unsigned or signed with another key) are a typed
``RemoteHookReplyError`` on the caller's side and its error policy applies; signing keys
and their configuration fail clearly; a shared counter that holds something else than a
counter's value names the key; a policy file that cannot be loaded says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.protocol import command as nats_command

from llmspell.builtin import RateLimitConfig, RateLimitHook
from llmspell.builtin.nats_counters import NatsCounters
from llmspell.distributed import (
    KEY_FROM_ENV,
    DistributedHookContext,
    HookClient,
    HookServer,
    RemoteHook,
    SharedKey,
    Signer,
    current_context,
    load_policy,
)
from llmspell.distributed.connection import config_of
from llmspell.distributed.signing import SIG_KEY, SIG_NONCE, SIG_TIME, SIGNATURE, canonical
from llmspell.distributed.wire import (
    MAX_PAYLOAD,
    REPLY_TO,
    HookCall,
    HookReply,
    decode_reply,
    encode,
    hook_subject,
)
from llmspell.errors import (
    ConfigurationError,
    DistributedContextError,
    RemoteHookRefusedError,
    RemoteHookReplyError,
    RemoteHookUnavailableError,
    SharedCounterError,
    SignatureError,
)
from llmspell.hooks import (
    Cancel,
    Continue,
    HookContext,
    HookExecutor,
    HookRegistry,
    HookResult,
    Replace,
    hook,
)
from tests.builtin.support import kv_url
from tests.distributed.support import KEY, OTHER_KEY, hook_url, raw, tool_ctx
from tests.events.nats_support import eventually, nats_url

__all__ = ["kv_url", "nats_url", "raw"]  # fixtures

DEEP = 5000  # levels of nesting: far past the interpreter's recursion limit
SMALL_BOUND = 64 * 1024  # the size bound of the servers and clients below


@hook("BeforeToolExecution", name="guard")
def guard(ctx: HookContext) -> HookResult | None:
    if "rm " in str(ctx.data.get("command", "")):
        return Cancel("no rm")
    return None


@hook("BeforeToolExecution", name="whoami")
def whoami(ctx: HookContext) -> HookResult:
    """Says which distributed context the call arrived in."""
    dctx = current_context()
    assert dctx is not None
    return Replace(
        {
            "run": dctx.run_id,
            "hop": dctx.hop,
            "hop_limit": dctx.hop_limit,
            "deadline": dctx.deadline,
            "tracestate": dctx.tracestate,
            "component": dctx.origin.component,
        }
    )


HOOKS = [guard, whoami]


@pytest.fixture
async def served(nats_url: str) -> AsyncIterator[tuple[str, HookServer]]:
    """An unsigned server of ``guard`` and ``whoami`` (size bound 64 KiB, hop limit 4)."""
    url = hook_url(nats_url)
    server = HookServer(HOOKS, url=url, key=None, max_payload=SMALL_BOUND, hop_limit=4)
    await server.start()
    try:
        yield url, server
    finally:
        await server.stop()


@pytest.fixture
async def signed(nats_url: str) -> AsyncIterator[tuple[str, HookServer]]:
    """The same server with the shared key ``KEY``."""
    url = hook_url(nats_url)
    server = HookServer(HOOKS, url=url, key=KEY, max_payload=SMALL_BOUND, hop_limit=4)
    await server.start()
    try:
        yield url, server
    finally:
        await server.stop()


def _subject(url: str, name: str = "guard") -> str:
    return hook_subject(config_of(url).prefix, name)


def _call(ctx: HookContext | None = None, *, hook: str = "guard") -> bytes:
    ctx = ctx or tool_ctx(command="ls")
    return encode(HookCall(hook=hook, point=str(ctx.point), context=msgspec.Raw(ctx.to_json())))


def _headers(**changes: str | None) -> dict[str, str]:
    """A valid context's headers with ``changes`` (None removes a header); ``_`` in a
    keyword stands for ``-`` (``Llmspell_Ctx_Hop``)."""
    headers = DistributedHookContext.root(run_id="run-1", timeout=60).child("x").to_headers()
    for keyword, value in changes.items():
        name = keyword.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


async def _ask(
    nc: Any, subject: str, payload: bytes, headers: dict[str, str] | None = None
) -> HookReply:
    msg = await nc.request(subject, payload, timeout=10, headers=headers)
    return decode_reply(msg.data)


async def _ask_raw(nc: Any, subject: str, header_block: bytes, payload: bytes) -> HookReply:
    """A request whose header block is sent byte for byte (nats-py would encode and clean
    up header values; a hostile peer need not)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    block = b"NATS/1.0\r\n" + header_block + b"\r\n"
    await nc._send_command(nats_command.hpub_cmd(subject, inbox, block, payload))
    await nc.flush()
    msg = await sub.next_msg(timeout=10)
    return decode_reply(msg.data)


async def _still_serves(url: str, key: str | None = None) -> None:
    """A valid call after a bad one is answered as always."""
    async with HookClient(url, key=key) as client:
        assert await client.call("guard", tool_ctx(command="ls"), timeout=10) == Continue()
        assert await client.call("guard", tool_ctx(command="rm -rf /"), timeout=10) == Cancel(
            "no rm"
        )


# -- 1. malformed calls ------------------------------------------------------------------------
def _context_json(**fields: Any) -> bytes:
    base = {"point": "before_tool_execution", "component": {"type": "tool", "name": "shell"}}
    return msgspec.json.encode({**base, **fields})


def _with_context(raw_context: bytes, hook: str = "guard") -> bytes:
    return (
        b'{"hook":"'
        + hook.encode()
        + b'","point":"before_tool_execution","context":'
        + raw_context
        + b"}"
    )


DEEP_LIST = b"[" * DEEP + b"]" * DEEP
GARBAGE_CALLS = {
    "empty": b"",
    "binary garbage": b"\x00\xff\xfe\x80garbage\x00",
    "msgpack": b"\x83\xa4hook\xa5guard\xa5point\xa1x\xa7context\x80",
    "a list": b'["guard", "before_tool_execution", {}]',
    "a number": b"42",
    "missing fields": b'{"hook": "guard"}',
    "wrong types": b'{"hook": 5, "point": [], "context": "x", "v": "one"}',
    "context is a list": _with_context(b"[1, 2]"),
    "context of the wrong types": _with_context(_context_json(data=[1], metadata={"a": 1})),
    "unknown point": _with_context(_context_json(point="NoSuchPoint")),
    "hook name not UTF-8": b'{"hook":"\xff\xfe","point":"x","context":{}}',
    "context string not UTF-8": _with_context(_context_json().replace(b'"shell"', b'"sh\xffell"')),
    "lone surrogate": _with_context(_context_json(data={"a": "x"}).replace(b'"x"', b'"\\ud800"')),
    "deeply nested call": DEEP_LIST,
    "deeply nested data": _with_context(
        _context_json(data={"x": 1}).replace(b'"x":1', b'"x":' + DEEP_LIST)
    ),
    "deeply nested metadata": b'{"hook":"guard","point":"p","context":{"metadata":'
    + b'{"a":' * DEEP
    + b"1"
    + b"}" * DEEP
    + b"}}",
    "a parent chain": _with_context(_context_json(parent=msgspec.json.decode(_context_json()))),
    "a deep parent chain": _with_context(b'{"parent":' * DEEP + b"null" + b"}" * DEEP),
    "point differs from the context's": _with_context(_context_json(point="after_tool_execution")),
}


@pytest.mark.parametrize("name", list(GARBAGE_CALLS))
async def test_a_malformed_call_is_refused_and_the_server_serves_on(
    served: tuple[str, HookServer], raw: Any, name: str
) -> None:
    url, server = served
    reply = await _ask(raw, _subject(url), GARBAGE_CALLS[name], _headers())
    assert reply.error == "malformed", (name, reply)
    assert reply.message and reply.result == msgspec.Raw(b"")
    assert server.stats().refused == {"malformed": 1}
    await _still_serves(url)
    assert server.stats().served == {"guard": 2}


async def test_a_call_naming_another_hook_or_point_is_refused(
    served: tuple[str, HookServer], raw: Any
) -> None:
    url, server = served
    other_name = await _ask(raw, _subject(url), _call(hook="whoami"), _headers())
    assert other_name.error == "unknown_hook" and "'whoami'" in other_name.message
    after = HookContext.from_json(_context_json(point="after_tool_execution"))
    wrong_point = await _ask(raw, _subject(url), _call(after), _headers())
    assert wrong_point.error == "wrong_point"
    await _still_serves(url)
    async with HookClient(url, key=None) as client:  # nobody serves this name at all
        with pytest.raises(RemoteHookUnavailableError, match="no server serves"):
            await client.call("no_such_hook", tool_ctx(), timeout=5)
    assert server.stats().refused == {"unknown_hook": 1, "wrong_point": 1}


async def test_a_call_over_the_size_bound_is_refused_unread(
    served: tuple[str, HookServer], raw: Any
) -> None:
    url, server = served
    big = _call(tool_ctx(command="ls", blob="x" * SMALL_BOUND))
    reply = await _ask(raw, _subject(url), big, _headers())
    assert reply.error == "too_large" and f"bound of {SMALL_BOUND}" in reply.message
    # Headers count too: a small payload with a huge header.
    padded = await _ask(raw, _subject(url), _call(), {**_headers(), "X-Pad": "p" * SMALL_BOUND})
    assert padded.error == "too_large"
    # A caller sees the refusal as a typed error, and its policy denies.
    async with HookClient(url, key=None) as client:
        with pytest.raises(RemoteHookRefusedError) as refused:
            await client.call("guard", tool_ctx(blob="x" * SMALL_BOUND), timeout=10)
        assert refused.value.code == "too_large"
        registry = HookRegistry()
        registry.register(client.hook("guard", "BeforeToolExecution", timeout=10))
        outcome = await HookExecutor(registry).execute(tool_ctx(blob="x" * SMALL_BOUND))
        assert outcome.cancelled
    await _still_serves(url)
    assert server.stats().refused == {"too_large": 4}


def test_the_size_bound_is_one_mebibyte_by_default_and_checked() -> None:
    assert MAX_PAYLOAD == 1024 * 1024
    assert HookServer(HOOKS).max_payload == MAX_PAYLOAD
    assert HookClient().max_reply == MAX_PAYLOAD
    with pytest.raises(ConfigurationError, match="max_payload"):
        HookServer(HOOKS, max_payload=0)
    with pytest.raises(ConfigurationError, match="max_reply"):
        HookClient(max_reply=10)


async def test_a_call_without_a_reply_subject_is_dropped_and_counted(
    served: tuple[str, HookServer], raw: Any
) -> None:
    url, server = served
    await raw.publish(_subject(url), _call(), headers=_headers())
    await raw.flush()
    await eventually(lambda: server.stats().refused == {"no_reply": 1}, what="the drop count")
    await _still_serves(url)


@pytest.mark.parametrize(
    ("name", "replaced", "block"),
    [
        ("a hop count that is not UTF-8", "Llmspell-Ctx-Hop", b"Llmspell-Ctx-Hop: \xff\xfe\r\n"),
        ("a run id that is not UTF-8", "Llmspell-Ctx-Run", b"Llmspell-Ctx-Run: run-\xc3\x28\r\n"),
        ("a traceparent that is not UTF-8", "traceparent", b"traceparent: 00-\xff\r\n"),
        # nats-py skips a header whose name is not ASCII: the call then lacks its hop count.
        ("a header name that is not UTF-8", "Llmspell-Ctx-Hop", b"Llmspell-Ctx-\xffHop: 1\r\n"),
        ("a bare LF in a run id", "Llmspell-Ctx-Run", b"Llmspell-Ctx-Run: run\nInjected: yes\r\n"),
        (
            "a NUL in a component",
            "Llmspell-Ctx-Component",
            b"Llmspell-Ctx-Component: hook\x00x\r\n",
        ),
    ],
)
async def test_header_bytes_a_client_would_never_send_are_refused(
    served: tuple[str, HookServer], raw: Any, name: str, replaced: str, block: bytes
) -> None:
    url, server = served
    headers = _headers()
    lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items() if k != replaced)
    reply = await _ask_raw(raw, _subject(url), lines + block, _call())
    assert reply.error == "malformed", (name, reply)
    assert server.stats().refused == {"malformed": 1}
    await _still_serves(url)


# -- 3. context headers ------------------------------------------------------------------------
BAD_HEADERS: dict[str, tuple[dict[str, str | None], str]] = {
    "hop not a number": ({"Llmspell_Ctx_Hop": "two"}, "malformed"),
    "hop negative": ({"Llmspell_Ctx_Hop": "-1"}, "malformed"),
    "hop with a sign": ({"Llmspell_Ctx_Hop": "+1"}, "malformed"),
    "hop with an underscore": ({"Llmspell_Ctx_Hop": "1_0"}, "malformed"),
    "hop in other digits": ({"Llmspell_Ctx_Hop": "\u0663"}, "malformed"),
    "hop of 5000 digits": ({"Llmspell_Ctx_Hop": "9" * 5000}, "malformed"),
    "hop limit negative": ({"Llmspell_Ctx_Hop_Limit": "-5"}, "malformed"),
    "hop limit zero": ({"Llmspell_Ctx_Hop_Limit": "0"}, "malformed"),
    "hop limit huge": ({"Llmspell_Ctx_Hop_Limit": "100000"}, "malformed"),
    "hop limit raised past the server's": (
        {"Llmspell_Ctx_Hop": "5", "Llmspell_Ctx_Hop_Limit": "64"},
        "hop_limit",
    ),
    "hop past its own limit": (
        {"Llmspell_Ctx_Hop": "3", "Llmspell_Ctx_Hop_Limit": "2"},
        "hop_limit",
    ),
    "deadline in the far past": ({"Llmspell_Ctx_Deadline": "0"}, "deadline"),
    "deadline hugely negative": ({"Llmspell_Ctx_Deadline": "-1e300"}, "deadline"),
    "deadline NaN": ({"Llmspell_Ctx_Deadline": "nan"}, "malformed"),
    "deadline infinite": ({"Llmspell_Ctx_Deadline": "inf"}, "malformed"),
    "deadline overflowing": ({"Llmspell_Ctx_Deadline": "1e400"}, "malformed"),
    "deadline not a number": ({"Llmspell_Ctx_Deadline": "soon"}, "malformed"),
    "deadline in hex": ({"Llmspell_Ctx_Deadline": "0x10"}, "malformed"),
    "no traceparent": ({"traceparent": None}, "malformed"),
    "traceparent garbage": ({"traceparent": "garbage"}, "malformed"),
    "traceparent upper case": ({"traceparent": f"00-{'A' * 32}-{'1' * 16}-01"}, "malformed"),
    "traceparent version ff": ({"traceparent": f"ff-{'1' * 32}-{'1' * 16}-01"}, "malformed"),
    "traceparent with extra fields": (
        {"traceparent": f"00-{'1' * 32}-{'1' * 16}-01-xx"},
        "malformed",
    ),
    "traceparent bad flags": ({"traceparent": f"00-{'1' * 32}-{'1' * 16}-zz"}, "malformed"),
    "CR LF in a run id": ({"Llmspell_Ctx_Run": "r%0D%0AInjected: yes"}, "malformed"),
    "LF in the component": ({"Llmspell_Ctx_Component": "hook%0Ax"}, "malformed"),
    "NUL in the correlation id": ({"Llmspell_Ctx_Correlation": "c%00"}, "malformed"),
    "a very long run id": ({"Llmspell_Ctx_Run": "r" * 10_000}, "malformed"),
    "a long run id once decoded": ({"Llmspell_Ctx_Run": "%41" * 600}, "malformed"),
    "a very long correlation id": ({"Llmspell_Ctx_Correlation": "c" * 600}, "malformed"),
    "a very long host": ({"Llmspell_Ctx_Host": "h" * 10_000}, "malformed"),
    "a run id not in ASCII": ({"Llmspell_Ctx_Run": "r\u00e9sum\u00e9"}, "malformed"),
    "too many parents": ({"Llmspell_Ctx_Parents": ",".join(["1" * 16] * 100)}, "malformed"),
    "a parent that is not hex": ({"Llmspell_Ctx_Parents": "zz"}, "malformed"),
    "pid not a number": ({"Llmspell_Ctx_Pid": "12ab"}, "malformed"),
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
async def test_bad_context_headers_are_refused_typed(
    served: tuple[str, HookServer], raw: Any, name: str
) -> None:
    url, server = served
    changes, code = BAD_HEADERS[name]
    reply = await _ask(raw, _subject(url), _call(), _headers(**changes))
    assert reply.error == code, (name, reply)
    assert server.stats().refused == {code: 1}
    await _still_serves(url)


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"Llmspell_Ctx_Hop": "\u0663"}, "not ASCII"),
        ({"Llmspell_Ctx_Hop": "+1"}, "is not an integer"),
        ({"Llmspell_Ctx_Deadline": "nan"}, "could not convert"),
        ({"Llmspell_Ctx_Run": "r%0D%0Ax"}, "control character"),
        ({"Llmspell_Ctx_Run": "r" * 10_000}, "over the bound"),
        ({"Llmspell_Ctx_Correlation": "c" * 600}, "over 512"),
    ],
)
def test_reading_bad_headers_raises_a_typed_error_naming_them(
    changes: dict[str, str], complaint: str
) -> None:
    with pytest.raises(DistributedContextError) as caught:
        DistributedHookContext.from_headers(_headers(**changes))
    assert caught.value.reason == "malformed" and complaint in caught.value.message


async def test_odd_but_harmless_values_are_taken_as_they_are(
    served: tuple[str, HookServer], raw: Any
) -> None:
    url, _ = served
    whoami_at = _subject(url, "whoami")
    odd = await _ask(
        raw,
        whoami_at,
        _call(hook="whoami"),
        _headers(Llmspell_Ctx_Run="..%2F..%2Fetc%2Fpasswd%20%3Cb%3E%C3%A9"),
    )
    seen = msgspec.json.decode(bytes(odd.result))["value"]
    assert seen["run"] == "../../etc/passwd <b>\u00e9"  # just text: never a path here
    far = await _ask(raw, whoami_at, _call(hook="whoami"), _headers(Llmspell_Ctx_Deadline="1e300"))
    assert (
        far.error is None and msgspec.json.decode(bytes(far.result))["value"]["deadline"] == 1e300
    )
    # A tracestate that is not W3C shaped is dropped, not passed on to further hops.
    for state in ("x" * 10_000, "a=b\x7f", "caf\u00e9=1"):
        reply = await _ask(raw, whoami_at, _call(hook="whoami"), _headers(tracestate=state))
        assert msgspec.json.decode(bytes(reply.result))["value"]["tracestate"] is None
    kept = await _ask(raw, whoami_at, _call(hook="whoami"), _headers(tracestate="v=1,w=2"))
    assert msgspec.json.decode(bytes(kept.result))["value"]["tracestate"] == "v=1,w=2"


def test_a_tracestate_that_would_forge_headers_cannot_be_built() -> None:
    root = DistributedHookContext.root()
    with pytest.raises(ValueError, match="tracestate"):
        DistributedHookContext(
            correlation_id="c",
            trace_id=root.trace_id,
            span_id=root.span_id,
            origin=root.origin,
            tracestate="a=b\r\nLlmspell-Ctx-Hop-Limit: 64",
        )


# -- 2. malformed replies ----------------------------------------------------------------------
GOOD = encode(HookReply(result=msgspec.Raw(b'{"type":"continue"}'), server="fake"))
DEEP_DATA = b'{"result":{"type":"continue"},"data":{"a":' + DEEP_LIST + b"}}"
BAD_REPLIES: dict[str, tuple[bytes, str]] = {
    "garbage": (b"\x00\xff\xfegarbage", "not a remote hook reply"),
    "empty": (b"", "not a remote hook reply"),
    "a list": (b'[{"type": "continue"}]', "not a remote hook reply"),
    "wrong types": (b'{"result": 5, "error": 7, "server": []}', "not a remote hook reply"),
    "neither result nor error": (b'{"server": "x"}', "neither a result nor an error"),
    "an unknown result kind": (
        b'{"result": {"type": "approve_all"}}',
        "cannot decode a HookResult",
    ),
    "a result of the wrong shape": (b'{"result": ["continue"]}', "cannot decode a HookResult"),
    "a null result": (b'{"result": null}', "cannot decode a HookResult"),
    "an unknown error code": (b'{"error": "eaten_by_grue", "message": "?"}', "unknown error code"),
    "a string not UTF-8": (b'{"error": "\xff\xfe"}', "not valid UTF-8"),
    "deeply nested data": (DEEP_DATA, "nested too deeply"),
    "a deeply nested result": (
        b'{"result":{"type":"modified","data":{"a":' + DEEP_LIST + b"}}}",
        "nested too deeply",
    ),
}


async def _fake_server(
    nc: Any, subject: str, answer: Callable[[Any], tuple[bytes, dict[str, str] | None]]
) -> Any:
    async def reply(msg: Any) -> None:
        payload, headers = answer(msg)
        await nc.publish(msg.reply, payload, headers=headers)

    sub = await nc.subscribe(subject, cb=reply)
    await nc.flush()
    return sub


async def _outcomes(
    url: str, key: str | None, *, timeout: float = 10, **client: Any
) -> tuple[BaseException, Any, Any]:
    """What a caller gets: the error of ``call``, and the outcomes of a chain with the
    remote hook under fail_closed (the default) and fail_open. A signing caller waits out
    ``timeout`` for a trusted reply: keep it short where none comes."""
    async with HookClient(url, key=key, **client) as hooks:
        with pytest.raises(Exception) as caught:
            await hooks.call("guard", tool_ctx(command="ls"), timeout=timeout)
        outcomes = []
        for policy in ("fail_closed", "fail_open"):
            registry = HookRegistry()
            registry.register(
                hooks.hook("guard", "BeforeToolExecution", timeout=timeout, error_policy=policy)
            )
            outcomes.append(await HookExecutor(registry).execute(tool_ctx(command="ls")))
    return caught.value, outcomes[0], outcomes[1]


@pytest.mark.parametrize("name", list(BAD_REPLIES))
async def test_a_malformed_reply_is_a_typed_error_and_fails_closed(
    nats_url: str, raw: Any, name: str
) -> None:
    url = hook_url(nats_url)
    payload, complaint = BAD_REPLIES[name]
    await _fake_server(raw, _subject(url), lambda msg: (payload, None))
    error, closed, opened = await _outcomes(url, None)
    assert type(error) is RemoteHookReplyError, (name, error)
    assert complaint in error.message, error.message
    assert closed.cancelled and not opened.cancelled


async def test_an_oversized_reply_is_refused(nats_url: str, raw: Any) -> None:
    url = hook_url(nats_url)
    big = encode(
        HookReply(
            result=msgspec.Raw(b'{"type":"continue"}'), data={"blob": "x" * (2 * SMALL_BOUND)}
        )
    )
    await _fake_server(raw, _subject(url), lambda msg: (big, None))
    error, closed, _ = await _outcomes(url, None, max_reply=SMALL_BOUND)
    assert type(error) is RemoteHookReplyError
    assert f"over this client's bound of {SMALL_BOUND}" in error.message
    assert closed.cancelled


def _signed_by(signer: Signer, **override: str) -> Callable[[Any], tuple[bytes, dict[str, str]]]:
    def answer(msg: Any) -> tuple[bytes, dict[str, str]]:
        headers = signer.sign({REPLY_TO: msg.headers[SIG_NONCE]}, GOOD)
        headers.update(override)
        return GOOD, headers

    return answer


SIGNED_REPLIES: dict[str, tuple[Callable[[Any], tuple[bytes, Any]], str]] = {
    "unsigned": (lambda msg: (GOOD, None), "is not signed"),
    "unsigned, with other headers": (lambda msg: (GOOD, {"X-Any": "1"}), "is not signed"),
    "an unknown key id": (
        _signed_by(Signer(SharedKey(OTHER_KEY, key_id="other"))),
        "key id 'other', which is not configured",
    ),
    "the right key id, another secret": (
        _signed_by(Signer(SharedKey(OTHER_KEY))),
        "signature does not match",
    ),
    "a signature that is not hex": (
        _signed_by(Signer(SharedKey(KEY)), **{SIGNATURE: "v1=\u00e9"}),
        "signature does not match",
    ),
    "an old reply": (
        lambda msg: (
            GOOD,
            Signer(SharedKey(KEY)).sign(
                {REPLY_TO: msg.headers[SIG_NONCE]}, GOOD, now=time.time() - 3600
            ),
        ),
        "window",
    ),
    "answering another request": (
        lambda msg: (GOOD, Signer(SharedKey(KEY)).sign({REPLY_TO: "0" * 32}, GOOD)),
        "answers another request",
    ),
}


@pytest.mark.parametrize("name", list(SIGNED_REPLIES))
async def test_a_signed_caller_refuses_replies_it_cannot_trust(
    nats_url: str, raw: Any, name: str
) -> None:
    url = hook_url(nats_url)
    answer, complaint = SIGNED_REPLIES[name]
    await _fake_server(raw, _subject(url), answer)
    error, closed, opened = await _outcomes(url, KEY, timeout=0.5)
    assert type(error) is RemoteHookReplyError, (name, error)
    assert complaint in error.message, error.message
    assert closed.cancelled and not opened.cancelled


async def test_the_fake_server_answers_when_it_signs_properly(nats_url: str, raw: Any) -> None:
    url = hook_url(nats_url)
    await _fake_server(raw, _subject(url), _signed_by(Signer(SharedKey(KEY))))
    async with HookClient(url, key=KEY) as client:
        assert await client.call("guard", tool_ctx(), timeout=10) == Continue()


# -- 4. signing --------------------------------------------------------------------------------
def _forge(signer: Signer, payload: bytes, **override: str) -> dict[str, str]:
    """Headers signed with ``signer``'s key after ``override`` was applied: what a peer
    holding the key could send."""
    headers = {**signer.sign(_headers(), payload), **override}
    headers[SIGNATURE] = "v1=" + signer.active.mac(canonical(headers, _sha(payload)))
    return headers


def _sha(payload: bytes) -> str:
    import hashlib

    return hashlib.sha256(payload).hexdigest()


async def test_signed_server_refuses_forged_stale_and_replayed_calls(
    signed: tuple[str, HookServer], raw: Any
) -> None:
    url, server = signed
    subject, call = _subject(url), _call()
    mine = Signer(SharedKey(KEY))
    cases = {
        "unsigned": (_headers(), "unsigned"),
        "unknown key id": (
            Signer(SharedKey(OTHER_KEY, key_id="other")).sign(_headers(), call),
            "unknown_key",
        ),
        "key id of 10 kB": (
            {**_headers(), SIG_KEY: "k" * 10_000, SIGNATURE: "v1=00"},
            "unknown_key",
        ),
        "another secret": (Signer(SharedKey(OTHER_KEY)).sign(_headers(), call), "bad_signature"),
        "time not a number": (_forge(mine, call, **{SIG_TIME: "soon"}), "stale"),
        "time NaN": (_forge(mine, call, **{SIG_TIME: "nan"}), "stale"),
        "time infinite": (_forge(mine, call, **{SIG_TIME: "1e999"}), "stale"),
        "time an hour ago": (
            _forge(mine, call, **{SIG_TIME: f"{time.time() - 3600:.3f}"}),
            "stale",
        ),
        "nonce too short": (_forge(mine, call, **{SIG_NONCE: "abc"}), "malformed"),
        "nonce of 10 kB": (_forge(mine, call, **{SIG_NONCE: "n" * 10_000}), "malformed"),
    }
    for name, (headers, code) in cases.items():
        reply = await _ask(raw, subject, call, headers)
        assert reply.error == code, (name, reply)
        assert len(reply.message) <= 500
    once = mine.sign(_headers(), call)
    assert (await _ask(raw, subject, call, once)).error is None
    replayed = await _ask(raw, subject, call, once)
    assert replayed.error == "replayed"
    await _still_serves(url, KEY)
    assert sum(server.stats().refused.values()) == len(cases) + 1


def test_signature_edges_are_typed_errors() -> None:
    signer = Signer(SharedKey(KEY))
    payload = b"{}"
    for stamp in ("soon", "nan", "inf", "", "1e999", "0x10"):
        with pytest.raises(SignatureError) as stale:
            signer.verify(_forge(signer, payload, **{SIG_TIME: stamp}), payload)
        assert stale.value.reason == "stale", stamp
    headers = signer.sign(_headers(), payload)
    signer.verify(headers, payload)
    with pytest.raises(SignatureError) as again:
        signer.verify(headers, payload)
    assert again.value.reason == "replayed"
    with pytest.raises(SignatureError) as unknown:
        signer.verify({**headers, SIG_KEY: "x" * 1000}, payload)
    assert unknown.value.reason == "unknown_key" and len(unknown.value.message) < 200


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("", "is set but empty"),
        ("   ", "is set but empty"),
        ("k1:", "entry 1 of 1 (key id 'k1') has an empty secret"),
        (f"k1:{KEY},", "entry 2 of 2 is empty"),
        (f"k1:{KEY},k2:", "entry 2 of 2 (key id 'k2') has an empty secret"),
        (f":{KEY}", "entry 1 of 1 has no key id"),
        (f"k1:{KEY},{OTHER_KEY}", "entry 2 of 2 has no ':'"),
        (",", "entry 1 of 2 is empty"),
        ("k1:short", "the shared key 'k1' is 5 bytes long"),
        ("short", "the shared key 'default' is 5 bytes long"),
        (f"bad id:{KEY}", "invalid key id"),
        (f"a:{KEY},a:{OTHER_KEY}", "names a key id twice"),
    ],
)
def test_a_malformed_key_in_the_environment_says_where_and_what_is_expected(
    monkeypatch: pytest.MonkeyPatch, value: str, complaint: str
) -> None:
    monkeypatch.setenv("LLMSPELL_HOOK_KEY", value)
    for build in (
        lambda: Signer.from_env("LLMSPELL_HOOK_KEY", required=False),
        lambda: HookServer(HOOKS, key=KEY_FROM_ENV),
        lambda: RemoteHook("guard", "BeforeToolExecution", key=KEY_FROM_ENV),
    ):
        with pytest.raises(ConfigurationError) as caught:
            build()
        error = caught.value
        assert "LLMSPELL_HOOK_KEY" in error.message and complaint in error.message
        if "entry" in complaint:  # the shape is wrong: the message shows the right one
            assert "id:secret,id:secret,..." in error.message
        for secret in (KEY, OTHER_KEY, "short"):
            if secret in value:
                assert secret not in str(error) or complaint.count(secret), (secret, error)


def test_unset_key_means_no_signing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSPELL_HOOK_KEY", raising=False)
    assert HookServer(HOOKS).signer is None


# -- 5. shared counters ------------------------------------------------------------------------
async def _put_by_hand(nats_url: str, counters: NatsCounters, key: str, value: bytes) -> None:
    """Write ``value`` under ``key`` with bare nats-py, as someone at a console would."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(counters.bucket)
        await kv.put(counters.prefix + key, value)
    finally:
        await nc.close()


async def _delete_by_hand(nats_url: str, counters: NatsCounters, key: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(counters.bucket)
        await kv.delete(counters.prefix + key)
    finally:
        await nc.close()


def _add(value: Any) -> tuple[int, int]:
    return (value or 0) + 1, (value or 0) + 1


@pytest.mark.parametrize(
    ("raw_value", "what"),
    [
        (b"not a number", "is not JSON"),
        (b"\xff\xfe", "is not JSON"),
        (b"[" * DEEP, "is not JSON"),
        (b'"twelve"', "'twelve'"),
        (b'{"a": 1}', "{'a': 1}"),
    ],
)
async def test_a_counter_written_by_hand_names_the_key(
    nats_url: str, kv_url: str, raw_value: bytes, what: str
) -> None:
    counters = NatsCounters(kv_url)
    try:
        await counters.update("hits", _add)  # creates the bucket
        await _put_by_hand(nats_url, counters, "hits", raw_value)
        with pytest.raises(SharedCounterError) as caught:
            await counters.update("hits", _add)
        error = caught.value
        assert f"{counters.prefix}hits" in error.message and what in error.message
        assert error.hint and f"nats kv del {counters.bucket} {counters.prefix}hits" in error.hint
        if what == "is not JSON":
            with pytest.raises(SharedCounterError, match="is not JSON"):
                await counters.read("hits")
        # Deleting it, as the hint says, starts the counter afresh.
        await _delete_by_hand(nats_url, counters, "hits")
        assert await counters.update("hits", _add) == 1
    finally:
        counters.close()


async def test_a_shared_rate_limit_over_a_bad_value_names_the_key(
    nats_url: str, kv_url: str
) -> None:
    counters = NatsCounters(kv_url)
    try:
        config = RateLimitConfig(rate=1.0, burst=3, key="global")
        limit = RateLimitHook(config, shared=counters)
        ctx = tool_ctx(params={"q": 1})
        assert await _run(limit, ctx) is None  # the bucket's first token
        [key] = await _keys(nats_url, counters)
        await _put_by_hand(nats_url, counters, key.removeprefix(counters.prefix), b"12")
        with pytest.raises(SharedCounterError, match="holds a value this counter cannot use"):
            await _run(limit, ctx)
    finally:
        counters.close()


async def _run(hook: Any, ctx: HookContext) -> Any:
    out = hook.execute(ctx)
    return await out if asyncio.iscoroutine(out) else out


async def _keys(nats_url: str, counters: NatsCounters) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(counters.bucket)
        return list(await kv.keys())
    finally:
        await nc.close()


# -- 6. policy files ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("def guard(ctx:\n    return None\n", "(line 1): the policy is not valid Python"),
        ("x = 1\n\nif x\n    pass\n", "(line 3): the policy is not valid Python"),
        ("import sys\nsys.exit(3)\n", "(line 2): importing the policy failed: SystemExit: 3"),
        ("x = 1\n", "declares no hooks"),
        ("HOOKS = ()\n", "declares no hooks (HOOKS is empty)"),
        ("HOOKS = None\n", "declares no hooks"),
        ("HOOKS = {'a': 1}\n", "HOOKS must be a list"),
    ],
)
def test_a_policy_that_cannot_be_served_is_a_typed_error(
    tmp_path: Path, text: str, complaint: str
) -> None:
    path = tmp_path / "policy.py"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_policy(path)
    assert complaint in caught.value.message and caught.value.hint


def test_the_docs_say_a_policy_file_is_code_that_must_be_trusted() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "distributed.md").read_text()
    assert "executed as Python code" in docs and "trust" in docs


def test_the_refused_error_documents_every_refusal_code() -> None:
    from llmspell.core.errors import RemoteHookRefusedError
    from llmspell.distributed.wire import REFUSALS

    doc = RemoteHookRefusedError.__doc__ or ""
    assert sorted(code for code in REFUSALS if f"``{code}``" not in doc) == []


async def test_a_flood_of_bad_calls_is_counted_whole_and_logged_at_a_bounded_rate(
    served: tuple[str, HookServer], raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url, server = served
    caplog.set_level(logging.WARNING, logger="llmspell.distributed")
    for _ in range(40):
        await raw.publish(_subject(url), _call(), headers=_headers())
    await raw.flush()
    await eventually(lambda: server.stats().refused == {"no_reply": 40}, what="the count")
    lines = [r for r in caplog.records if "no reply subject" in r.getMessage()]
    assert len(lines) == 10
    await _still_serves(url)


def test_the_throttled_log_writes_a_burst_per_key_then_says_what_it_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    from llmspell.core.log_limit import ThrottledLog

    now = [0.0]
    log = ThrottledLog(logging.getLogger("llmspell.test.throttle"), burst=2, window=10,
                       clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="llmspell.test.throttle")
    for i in range(5):
        log.warning_for("bad_signature", "refused %d", i)
    log.warning_for("stale", "refused stale")           # another key has its own burst
    now[0] = 10.0
    log.warning_for("bad_signature", "refused again")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 1", "refused stale",
        "3 more such line(s) (bad_signature) were left out in the last 10 s",
        "refused again"]
    assert log.suppressed == 3
    for i in range(2000):                            # hostile keys do not grow the table
        log.warning_for(f"key{i}", "x")
    assert len(log._keys) <= 1024
