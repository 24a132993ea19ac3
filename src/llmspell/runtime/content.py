"""What events and stored rows keep of prompts and replies: one setting, applied here.

``SystemConfig.record_content`` (``LLMSPELL_RECORD_CONTENT``):

* ``none``: no text at all; a message keeps its role, the number of characters of its
  content and the names of the tools it calls.
* ``masked`` (the default): the text, with credential-shaped substrings (API keys, bearer
  tokens, private keys, ``password=...`` pairs) replaced by ``***``, in tool-call
  arguments too, where values under sensitive keys (``password``, ``api_key``, ...) are
  masked as well (:func:`mask_value`), and each text cut to :data:`MAX_RECORDED_CHARS`
  characters.
* ``full``: everything verbatim.

Hooks always see the full content; this only governs what is published and stored.
``tool.*`` events mask their parameters, results and error messages with :func:`mask_value`
too, under ``SystemConfig.mask_event_data`` (the runtime's and the adapters').
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, Final, cast

import msgspec
import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

from llmspell.builtin.masking import MASK, MAX_MASK_DEPTH, Masker, truncate
from llmspell.core.redact import mask_text
from llmspell.core.speedups import native

__all__ = ["CONTENT_MODES", "MAX_RECORDED_CHARS", "has_sensitive_key", "mask_text",
           "mask_plain", "mask_value", "may_hold_secret", "may_need_mask", "record_message",
           "record_messages", "response_has_sensitive_key"]

CONTENT_MODES: Final = ("none", "masked", "full")
MAX_RECORDED_CHARS: Final = 4000
"""The longest text ``masked`` keeps of one message."""

_MASKER = Masker()


def record_message(message: dict[str, Any], mode: str) -> dict[str, Any]:
    """What ``mode`` keeps of one message (a dict in the model-call shape)."""
    if mode == "full":
        return message
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if mode == "none":
        kept: dict[str, Any] = {"role": message.get("role"),
                                "chars": len(content) if isinstance(content, str) else 0}
        if calls:
            kept["tool_calls"] = [c.get("name") for c in calls if isinstance(c, dict)]
        return kept
    kept = dict(message)
    if isinstance(content, str):
        kept["content"] = truncate(mask_text(content), MAX_RECORDED_CHARS)
    if calls:
        kept["tool_calls"] = [mask_value(c, copied=True) for c in calls]
    return kept


def record_messages(messages: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """What ``mode`` keeps of a conversation."""
    if mode == "full":
        return messages
    return [record_message(m, mode) for m in messages if isinstance(m, dict)]


_MAY_HOLD_SECRET = re2.compile(
    rb"(?:sk|pk|rk)-|AKIA|gh[pousr]_|xox[abposr]-|AIza|-----BEGIN|(?i:bearer)"
    rb"|(?i:password|passwd|pwd|secret|api[_-]?key|token)(?:\\\"|')?"
    rb"(?:\s|\\[tnrfbv]|\\u[0-9a-fA-F]{4}){0,3}[:=]")
"""A superset of :data:`~llmspell.core.redact.SECRET_PATTERN` over ASCII JSON text (where
whitespace and double quotes inside a string are escaped), run by RE2 (a DFA: a few µs
for kilobytes); only a value it matches is walked."""
_TEXT = msgspec.json.Encoder(enc_hook=repr)
_PLAIN = msgspec.json.Decoder()


_NO_MATCH: Final = ((-1, -1),)


def _spans(pattern: Any, hit: bytes, miss: bytes) -> Callable[[bytes, int, int], Any]:
    """``spans(raw, 0, len(raw))`` for the compiled RE2 ``pattern``: its first match's spans
    in a bytes text, the whole match's first, ``(-1, -1)`` when there is none (so ``[0][0] <
    0`` says no match). The RE2 object's own match call (bound, so no Python frame runs)
    when this ``re2`` module has the one it is built on: its public ``search`` wraps that
    call in a generator and a match object, which on a short text costs as much again as
    the search. Else (another ``re2``) ``search``. The shortcut is used only if it agrees
    with ``search`` on ``hit`` (which the pattern matches) and ``miss`` (which it does
    not)."""

    def search(raw: bytes, pos: int, endpos: int) -> Any:
        found = pattern.search(raw, pos, endpos)
        return _NO_MATCH if found is None else (found.span(),)

    try:
        fast = functools.partial(pattern._regexp.Match, re2._Anchor.UNANCHORED)
        if fast(hit, 0, len(hit))[0][0] >= 0 and fast(miss, 0, len(miss))[0][0] < 0 \
                and search(hit, 0, len(hit))[0][0] >= 0 \
                and search(miss, 0, len(miss))[0][0] < 0:
            return fast
    except Exception:  # another re2 module: its public search
        pass
    return search


_SECRET_NEEDLES: Final = (
    b"sk-", b"pk-", b"rk-", b"akia", *(b"gh" + c + b"_" for c in (b"p", b"o", b"u", b"s", b"r")),
    *(b"xox" + c + b"-" for c in (b"a", b"b", b"p", b"o", b"s", b"r")), b"aiza",
    b"-----begin", b"bearer", b"password", b"passwd", b"pwd", b"secret", b"api_key",
    b"api-key", b"apikey", b"token")
"""Lower-case literals of which every match of :data:`_MAY_HOLD_SECRET` holds one (in any
case): a text holding none of them cannot match. Kept beside the pattern by hand; a test
checks every branch of the pattern against them."""


def _prefiltered(search: Callable[[bytes, int, int], Any], needles: tuple[bytes, ...]
                 ) -> Callable[[bytes, int, int], Any]:
    """``search`` behind the native literal prefilter, when the speedups are built: a
    short text holding none of ``needles`` (every match holds one) gets the no-match
    answer without RE2's fixed cost (about 0.7 µs a call: the binding and a GIL release),
    the rest the search itself."""
    if native is None:
        return search
    return cast("Callable[[bytes, int, int], Any]", native.prefilter(needles, search, _NO_MATCH))


_secret_spans = _prefiltered(_spans(_MAY_HOLD_SECRET, b'"sk-', b'{"a":1}'), _SECRET_NEEDLES)
_MAY_NEED_MASK = re2.compile(
    _MAY_HOLD_SECRET.pattern + b"|(?i:"
    + b"|".join(re.escape(f.encode()) for f in _MASKER.fragments) + b")")
""":data:`_MAY_HOLD_SECRET`, or a sensitive key fragment anywhere (the masker's, in any
case): over plain JSON text in ASCII, no match says neither a string is secret-shaped nor
a key is sensitive (every key is in the text, and a fragment's characters are never
escaped), with one search and no walk of the value."""
_need_spans = _prefiltered(
    _spans(_MAY_NEED_MASK, b'{"api_key":1}', b'{"a":1}'),
    _SECRET_NEEDLES + tuple(f.lower().encode() for f in _MASKER.fragments if f))


def _always_hit(raw: bytes, pos: int, endpos: int) -> Any:
    return ((0, 0),)


_KEYS_SEARCHABLE: Final = all(re.fullmatch(r"[a-z0-9_-]+", f) for f in _MASKER.fragments)
"""False for a fragment JSON may escape (or no fragments at all): then a search of the
text cannot vouch for the keys, and the key searches below always hit, so the exact checks
decide."""
if not _KEYS_SEARCHABLE:
    _need_spans = _always_hit

_RUNTIME_KEEP_KEYS: Final = ("tokens_in", "tokens_out", "input_tokens", "output_tokens",
                             "total_tokens", "cached_tokens", "reasoning_tokens")
"""Keys the runtime writes into every model step's record (a response's ``usage``, the
step's token counts): names the masker keeps although they hold a fragment (``token``).
:func:`may_need_mask` lets exactly these key strings through its search."""


def _alternation(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"(?:" + b"|".join(parts) + b")"


def _not_followed(fragment: bytes, rights: list[bytes]) -> bytes:
    """A pattern matching ``fragment`` where the text after it begins with none of
    ``rights`` (none a prefix of another): one character leaving them all, or the end."""

    def node(depth: int, group: list[bytes]) -> bytes | None:
        if any(len(r) == depth for r in group):
            return None  # a whole right context: exempt here (the left decides)
        nexts = sorted({r[depth:depth + 1] for r in group})
        parts = [b"[^" + b"".join(re.escape(c) for c in nexts) + b"]", rb"\z"]
        for c in nexts:
            sub = node(depth + 1, [r for r in group if r[depth:depth + 1] == c])
            if sub is not None:
                parts.append(re.escape(c) + sub)
        return _alternation(parts)

    tail = node(0, rights)
    assert tail is not None  # (no empty right context)
    return re.escape(fragment) + tail


def _not_preceded(lefts: list[bytes], rest: bytes) -> bytes:
    """A pattern matching ``rest`` where the text before it ends with none of ``lefts``
    (none a suffix of another): a character leaving them all (read leftwards), or the
    start of the text."""
    parts: list[bytes] = []

    def node(depth: int, group: list[bytes]) -> None:
        if any(len(left) == depth for left in group):
            return  # a whole left context: exempt
        seen = b"" if depth == 0 else group[0][-depth:]
        prevs = sorted({left[-depth - 1:len(left) - depth] for left in group})
        parts.append(rb"(?:\A|[^" + b"".join(re.escape(c) for c in prevs) + b"])"
                     + re.escape(seen) + rest)
        for c in prevs:
            node(depth + 1, [left for left in group
                             if left[-depth - 1:len(left) - depth] == c])

    node(0, lefts)
    return _alternation(parts)


def _fragment_pattern(fragment: str, exempt: tuple[str, ...]) -> bytes:
    """A pattern matching, in JSON text, every place ``fragment`` (any case) occurs but
    inside a key string that is exactly one of ``exempt`` (words the masker keeps): such a
    string is ``"word":`` right after ``{`` or ``,`` (there its quote opens a string, so
    the string is the word), in lower case."""
    frag = fragment.encode()
    windows: dict[bytes, list[bytes]] = {}  # right context -> left contexts
    for word in exempt:
        at = word.find(fragment)
        while at >= 0:
            right = word[at + len(fragment):].encode() + b'":'
            for opener in (b"{", b","):
                windows.setdefault(right, []).append(opener + b'"' + word[:at].encode())
            at = word.find(fragment, at + 1)
    if not windows:
        return b"(?i:" + re.escape(frag) + b")"
    rights = list(windows)
    assert not any(a != b and b.startswith(a) for a in rights for b in rights)
    # Not all lower case: never exempt (the exempt strings are).
    parts = [re.escape(frag[:i]) + re.escape(frag[i:i + 1].upper())
             + (b"(?i:" + re.escape(frag[i + 1:]) + b")" if frag[i + 1:] else b"")
             for i in range(len(frag)) if frag[i:i + 1].isalpha()]
    parts.append(_not_followed(frag, rights))
    for right, lefts in windows.items():
        assert not any(a != b and b.endswith(a) for a in lefts for b in lefts)
        parts.append(_not_preceded(lefts, re.escape(frag + right)))
    return _alternation(parts)


_MAY_NEED_MASK_RECORD = re2.compile(
    _MAY_HOLD_SECRET.pattern + b"|" + b"|".join(
        _fragment_pattern(f, tuple(k for k in _RUNTIME_KEEP_KEYS
                                   if k in _MASKER.keep and f in k))
        for f in _MASKER.fragments))
""":data:`_MAY_NEED_MASK` without the hits of the runtime's own token-count keys
(:data:`_RUNTIME_KEEP_KEYS`, which every model step's record holds): for
:func:`may_need_mask`."""
_record_spans = _spans(_MAY_NEED_MASK_RECORD, b'{"api_key":1}', b'{"tokens_in":1}')
if not _KEYS_SEARCHABLE:
    _record_spans = _always_hit


def may_need_mask(raw: bytes) -> bool:
    """False when :func:`mask_value` leaves every value encoded in the JSON text ``raw``
    (as msgspec encodes, the runtime's records) as it is: ``raw`` is ASCII, and one search
    finds no secret-shaped text (as :func:`may_hold_secret`) and no sensitive key fragment
    anywhere (so no dict in it has a key :func:`has_sensitive_key` finds; a fragment's
    characters are never escaped) but inside the key strings the runtime writes itself
    (:data:`_RUNTIME_KEEP_KEYS`, never sensitive). True may be a false alarm: then ask
    :func:`may_hold_secret` and :func:`has_sensitive_key`."""
    return not raw.isascii() or _record_spans(raw, 0, len(raw))[0][0] >= 0


def mask_value(value: Any, *, copied: bool = False) -> Any:
    """``value`` with sensitive keys' values masked and credential-shaped substrings of
    every string replaced (what ``masked`` keeps of recorded data; unlike a message's text
    it is not cut short, so a replay gets back what the call returned). A value with
    nothing to mask is returned as it is, uncopied (``copied``: a dict or list is returned
    as a copy, decoded from its JSON encoding, for a producer whose value stays with code
    that may change it, e.g. a tool's result its caller gets): its JSON encoding (made in
    C) is searched for anything secret-shaped and its dicts' keys are checked, which keeps
    recording cheap; only a value that might hold a secret is walked (a copy)."""
    if value is None or isinstance(value, _NUMBERS):
        return value
    try:
        raw = _TEXT.encode(value)
    except (TypeError, ValueError, msgspec.EncodeError, RecursionError):
        return _mask_walk(value, 0)  # (nested too deep: the walk masks past its depth)
    kind = type(value)
    if (kind is str or (copied and (kind is dict or kind is list))) and raw.isascii() \
            and _need_spans(raw, 0, len(raw))[0][0] < 0:
        # One search found neither secret-shaped text nor a sensitive key fragment in the
        # text (every key is in it: see _MAY_NEED_MASK), and what is returned is that very
        # text (a copy decoded from it) or a string: nothing to walk.
        return value if kind is str else _PLAIN.decode(raw)
    if may_hold_secret(raw) or has_sensitive_key(value):
        return _mask_walk(value, 0)
    if copied and isinstance(value, dict | list):
        return _PLAIN.decode(raw)
    return value


def mask_plain(value: Any, raw: bytes) -> Any:
    """:func:`mask_value` of ``value`` with ``copied=True`` (the same answer), for a
    producer that has already checked ``value`` is plain JSON (a dict or list that
    :func:`~llmspell.core.values.is_plain_json_safe` passes) and encoded it to ``raw``
    (with msgspec, e.g. :func:`~llmspell.core.values.to_json_safe_encoded`): nothing is
    encoded again, and one search of ``raw`` (for secret-shaped text and for sensitive key
    fragments at once) passes the common value that needs no masking without walking its
    keys. The copy returned is decoded from ``raw``: it shares nothing with ``value``."""
    if raw.isascii() and _need_spans(raw, 0, len(raw))[0][0] < 0:
        return _PLAIN.decode(raw)
    if may_hold_secret(raw) or has_sensitive_key(value):
        return _mask_walk(value, 0)
    return _PLAIN.decode(raw)


def may_hold_secret(raw: bytes) -> bool:
    """False when the JSON text ``raw`` (as msgspec encodes) holds no secret-shaped
    string :func:`mask_value` would mask (a superset test: True may be a false alarm,
    False is never wrong). Text with non-ASCII characters is always True (Unicode
    whitespace and case folding are the walk's to judge). Lets a producer encode a whole
    record once and mask only when this or :func:`has_sensitive_key` says so. (RE2 lets
    other threads run while it searches: beside a busy Python thread, taking the GIL back
    can cost a switch interval.)"""
    return not raw.isascii() or _secret_spans(raw, 0, len(raw))[0][0] >= 0


def has_sensitive_key(value: Any, depth: int = 0) -> bool:
    """True when a dict in ``value`` (at any depth) has a sensitive key (the masker's
    cached verdict per key name). A dict whose keys are all known to be ordinary is
    passed by one subset test (in C), not a verdict per key."""
    if depth > 64:
        return True
    if isinstance(value, dict):
        if not value.keys() <= _ORDINARY_KEYS:
            sensitive = _MASKER.is_sensitive  # records the ordinary keys it finds
            for key in value:
                if isinstance(key, str) and sensitive(key):
                    return True
        items: Any = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return False
    # isinstance with a tuple of types, not a union: several times cheaper per item.
    for item in items:
        if isinstance(item, _CONTAINERS) and has_sensitive_key(item, depth + 1):
            return True
    return False


_CONTAINERS = (dict, list, tuple)
_NUMBERS = (bool, int, float)  # (a tuple: a union would be built on every call)


def response_has_sensitive_key(response: Any) -> bool:
    """:func:`has_sensitive_key` of a model response, quicker when the response has the
    runtime's own shape (``response_dict``: its keys, a message with its keys, a usage of
    token counts, every other value a scalar): then only the tool-call arguments can hold
    a key from outside, and only they are walked (a third of the full walk for one call).
    Any other value, or a response whose shape differs anywhere, is walked whole; the
    answer is the same either way."""
    if type(response) is not dict or response.keys() != _RESPONSE_KEYS:
        return has_sensitive_key(response)
    message = response["message"]
    usage = response["usage"]
    if type(message) is not dict or message.keys() != _MESSAGE_KEYS or not (
            usage is None or (type(usage) is dict and usage.keys() <= _USAGE_KEYS
                              and all(type(v) in _SCALARS for v in usage.values()))):
        return has_sensitive_key(response)
    calls = message["tool_calls"]
    if type(calls) is not list or not (
            type(message["content"]) in _SCALARS and type(message["role"]) in _SCALARS
            and type(message["name"]) in _SCALARS
            and type(message["tool_call_id"]) in _SCALARS
            and type(response["finish_reason"]) in _SCALARS
            and type(response["model"]) in _SCALARS
            and type(response["cost_usd"]) in _SCALARS
            and type(response["latency_ms"]) in _SCALARS):
        return has_sensitive_key(response)
    for call in calls:
        if type(call) is not dict or call.keys() != _CALL_KEYS \
                or type(call["id"]) not in _SCALARS or type(call["name"]) not in _SCALARS:
            return has_sensitive_key(response)
        if has_sensitive_key(call["arguments"]):
            return True
    return False


_SCALARS = frozenset({str, int, float, bool, type(None)})
_RESPONSE_KEYS = frozenset({"message", "finish_reason", "model", "usage", "cost_usd",
                            "latency_ms"})
_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name"})
_CALL_KEYS = frozenset({"id", "name", "arguments"})
_USAGE_KEYS = frozenset({"input_tokens", "output_tokens", "total_tokens", "cached_tokens",
                         "reasoning_tokens"})
_ORDINARY_KEYS: set[str] = _MASKER.ordinary_keys if _MASKER.ordinary_keys is not None \
    else set()
"""Key names the masker found not sensitive (its own record, bounded): a dict made of them
is passed at once."""


def _mask_walk(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if depth > MAX_MASK_DEPTH:  # what cannot be checked is not let through (as Masker)
        return MASK if isinstance(value, _CONTAINERS) else value
    if isinstance(value, dict):
        return {key: MASK if isinstance(key, str) and _MASKER.is_sensitive(key)
                else _mask_walk(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_walk(item, depth + 1) for item in value]
    return value
