"""Signing distributed contexts: HMAC-SHA256 over the context headers and the payload.

Hand-written on the standard library (``hmac``, ``hashlib``, ``secrets``): the scheme is a
few lines and needs no dependency. What is signed, in this order (the *canonical form*):

* the line ``llmspell-sig-v1``;
* every header whose lower-cased name starts with ``llmspell-ctx-``, ``llmspell-sig-`` or
  ``llmspell-reply-``, or is ``traceparent`` / ``tracestate`` (sorted by lower-cased name,
  one ``name:value`` line each; the signature header itself is left out), so a header
  added, removed or changed after signing fails verification;
* an empty line and the hex SHA-256 digest of the payload.

The signature headers are ``Llmspell-Sig-Time`` (the signer's wall clock, seconds),
``Llmspell-Sig-Nonce`` (128 random bits), ``Llmspell-Sig-Key`` (the key's id) and
``Llmspell-Signature`` (``v1=<hex HMAC>``). A verifier checks, in order: a signature is
there, its key id is known, the HMAC matches (:func:`hmac.compare_digest`), and, for a
fresh message (a request), that the timestamp is within ``window`` seconds of its own clock
and that the nonce was not seen within the window (a bounded cache, per process). The nonce
is recorded only after the HMAC matched, so forged messages cannot fill the cache.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Final, TypeAlias

from llmspell.core.errors import ConfigurationError, SignatureError

__all__ = [
    "DEFAULT_KEY_ENV",
    "DEFAULT_WINDOW",
    "KEY_FROM_ENV",
    "MIN_SECRET_BYTES",
    "SIG_KEY",
    "SIG_NONCE",
    "SIG_TIME",
    "SIGNATURE",
    "KeyFromEnv",
    "KeyLike",
    "NonceCache",
    "SharedKey",
    "Signer",
    "canonical",
    "signer_from",
]

DEFAULT_KEY_ENV: Final = "LLMSPELL_HOOK_KEY"
"""The environment variable a shared key is read from by default."""
DEFAULT_WINDOW: Final = 30.0
"""Seconds a signed request's timestamp may differ from the verifier's clock."""
MIN_SECRET_BYTES: Final = 16

SIG_TIME: Final = "Llmspell-Sig-Time"
SIG_NONCE: Final = "Llmspell-Sig-Nonce"
SIG_KEY: Final = "Llmspell-Sig-Key"
SIGNATURE: Final = "Llmspell-Signature"
_SIGNATURE_LOWER = SIGNATURE.lower()
_SIGNED_PREFIXES = ("llmspell-ctx-", "llmspell-sig-", "llmspell-reply-")
_SIGNED_NAMES = frozenset({"traceparent", "tracestate"})
_KEY_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
_MAX_NONCE = 128
_FORMAT_HINT = ("write one secret (16 bytes at least), or id:secret entries joined by commas "
                "(the first signs), e.g. new:<secret>,old:<secret>")
_KEY_HINT = ('make one with `python -c "import secrets; print(secrets.token_urlsafe(32))"` '
             "and give every process the same value")


class SharedKey:
    """A secret shared by the processes that sign and verify, with an id (``key_id``) that
    lets a verifier hold several keys while they are rotated. The secret is never shown
    (``repr`` gives the id only)."""

    __slots__ = ("_secret", "key_id")

    def __init__(self, secret: str | bytes, *, key_id: str = "default") -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"the shared key {key_id!r} is {len(raw)} bytes long; at least "
                f"{MIN_SECRET_BYTES} are needed", hint=_KEY_HINT)
        if not key_id or len(key_id) > 64 or not set(key_id) <= _KEY_ID_CHARS:
            raise ConfigurationError(f"invalid key id {key_id!r}",
                                     hint="use 1 to 64 letters, digits, '_', '-' or '.'")
        self._secret = raw
        self.key_id = key_id

    def mac(self, message: bytes) -> str:
        """The hex HMAC-SHA256 of ``message`` under this key."""
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"SharedKey(key_id={self.key_id!r})"

    @classmethod
    def parse(cls, text: str, *, source: str = "the key") -> list[SharedKey]:
        """Keys from text: one secret (id ``default``), or ``id:secret`` entries joined by
        commas, the first one signing and all of them verifying (to rotate: add the new
        key second everywhere, then move it first, then drop the old one). Errors name
        ``source`` and the entry (by position and id), never a secret."""
        text = text.strip()
        if not text:
            raise ConfigurationError(f"{source} is empty", hint=_KEY_HINT)
        if ":" not in text and "," not in text:
            return [cls._make(text, "default", source)]
        keys: list[SharedKey] = []
        entries = text.split(",")
        for number, entry in enumerate(entries, 1):
            key_id, sep, secret = entry.strip().partition(":")
            if not sep or not key_id.strip() or not secret.strip():
                what = ("is empty" if not entry.strip() else "has no ':'" if not sep
                        else "has no key id" if not key_id.strip() else
                        f"(key id {key_id.strip()[:64]!r}) has an empty secret")
                raise ConfigurationError(
                    f"{source}: entry {number} of {len(entries)} {what}; expected one secret, "
                    "or id:secret,id:secret,...", hint=_FORMAT_HINT)
            keys.append(cls._make(secret, key_id, source))
        if len({k.key_id for k in keys}) != len(keys):
            raise ConfigurationError(f"{source} names a key id twice",
                                     hint="give every key its own id")
        return keys

    @classmethod
    def _make(cls, secret: str, key_id: str, source: str) -> SharedKey:
        try:
            return cls(secret, key_id=key_id)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc.message}", hint=exc.hint) from None


class NonceCache:
    """Nonces seen within the window, so a signed request is accepted once. Bounded:
    ``max_entries`` nonces at most (when full of unexpired ones, new requests are refused
    rather than let a replay through). Thread-safe."""

    def __init__(self, window: float = DEFAULT_WINDOW, max_entries: int = 1_000_000) -> None:
        if max_entries < 1:
            raise ConfigurationError("max_entries must be >= 1", hint="e.g. 1000000")
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, nonce: str, now: float) -> None:
        """Record ``nonce`` (seen at ``now``); raise ``SignatureError`` if it was seen
        within the window or the cache is full."""
        with self._lock:
            seen = self._seen
            horizon = now - 2 * self.window  # timestamps may be up to a window ahead
            while seen:
                oldest, at = next(iter(seen.items()))
                if at >= horizon:
                    break
                del seen[oldest]
            if nonce in seen:
                raise SignatureError("replayed", "a signed message was received twice "
                                     f"(nonce {nonce[:8]}... seen before)",
                                     hint="each request is accepted once; send a new one")
            if len(seen) >= self.max_entries:
                raise SignatureError("replay_cache_full",
                                     f"{len(seen)} signed requests within the window: the "
                                     "replay cache is full", hint="raise max_entries, or "
                                     "shorten the window")
            seen[nonce] = now

    def __len__(self) -> int:
        return len(self._seen)


class Signer:
    """Signs and verifies messages with shared keys (see the module docstring).

    ``keys``: the first signs, all verify. ``window``: seconds a fresh message's timestamp
    may be off. ``nonces``: the replay cache (a new one by default).
    """

    def __init__(self, keys: SharedKey | Iterable[SharedKey], *, window: float = DEFAULT_WINDOW,
                 nonces: NonceCache | None = None) -> None:
        listed = [keys] if isinstance(keys, SharedKey) else list(keys)
        if not listed:
            raise ConfigurationError("a Signer needs at least one key", hint=_KEY_HINT)
        if not (isinstance(window, (int, float)) and math.isfinite(window) and window > 0):
            raise ConfigurationError(f"window must be > 0 seconds, got {window!r}",
                                     hint=f"e.g. {DEFAULT_WINDOW:g}")
        self.keys = {k.key_id: k for k in listed}
        self.active = listed[0]
        self.window = float(window)
        self.nonces = nonces if nonces is not None else NonceCache(self.window)

    @classmethod
    def from_env(cls, var: str = DEFAULT_KEY_ENV, *, window: float = DEFAULT_WINDOW,
                 required: bool = True) -> Signer | None:
        """The signer for the key(s) in environment variable ``var`` (see
        :meth:`SharedKey.parse`). Unset or empty: ``ConfigurationError`` if ``required``,
        else None."""
        text = os.environ.get(var)
        if text is None or not text.strip():
            if required:
                raise ConfigurationError(f"environment variable {var} holds no key",
                                         hint=f"export {var}=<secret>; {_KEY_HINT}")
            if text is not None:
                # Set but blank is a key that went missing (an unset secret expanded into
                # it): going on unsigned would let any peer on the bus call the hooks.
                raise ConfigurationError(
                    f"environment variable {var} is set but empty",
                    hint=f"put the key in it (one secret, or id:secret,...), or unset {var} "
                         "to run without signing")
            return None
        return cls(SharedKey.parse(text, source=f"environment variable {var}"), window=window)

    def __repr__(self) -> str:
        return f"Signer(keys={list(self.keys)!r}, window={self.window:g})"

    # -- signing ------------------------------------------------------------------------
    def sign(self, headers: Mapping[str, str], payload: bytes, *,
             now: float | None = None) -> dict[str, str]:
        """``headers`` plus the signature headers, for sending with ``payload``."""
        out = dict(headers)
        out[SIG_TIME] = f"{time.time() if now is None else now:.3f}"
        out[SIG_NONCE] = secrets.token_hex(16)
        out[SIG_KEY] = self.active.key_id
        out[SIGNATURE] = "v1=" + self.active.mac(canonical(out, _digest(payload)))
        return out

    # -- verifying ----------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str] | None, payload: bytes | None = None, *,
               digest: bytes | None = None, fresh: bool = True, replay: bool = True,
               now: float | None = None) -> None:
        """Check the signature of a message (``payload``, or its SHA-256 ``digest``);
        raise :class:`~llmspell.errors.SignatureError` saying why it is refused.

        ``fresh``: also check the timestamp window; ``replay``: also refuse a nonce seen
        before (needs ``fresh``). Events re-read from a stream are legitimately old and
        repeated: verify them with ``fresh=False``."""
        lower = {k.lower(): v for k, v in (headers or {}).items()}
        signature = lower.get(_SIGNATURE_LOWER)
        if not signature:
            raise SignatureError("unsigned", "the message is not signed, and a shared key is "
                                 "configured here", hint="configure the same key on the "
                                 "sending side (LLMSPELL_HOOK_KEY)")
        key = self.keys.get(lower.get(SIG_KEY.lower(), ""))
        if key is None:
            raise SignatureError("unknown_key", f"the message was signed with key id "
                                 f"{lower.get(SIG_KEY.lower(), '')[:64]!r}, which is not "
                                 "configured here", hint="give both sides the same key(s)")
        if payload is not None:
            digest = hashlib.sha256(payload).digest()
        if digest is None:
            raise SignatureError("malformed", "nothing to verify the signature against",
                                 hint="pass the payload or its digest")
        expected = "v1=" + key.mac(canonical(lower, digest.hex()))
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise SignatureError("bad_signature", "the signature does not match: the message "
                                 "was changed after signing, or signed with another secret",
                                 hint="give both sides the same key")
        if not fresh:
            return
        current = time.time() if now is None else now
        try:
            stamp = float(lower.get(SIG_TIME.lower(), ""))
        except ValueError:
            stamp = math.nan
        if not math.isfinite(stamp) or abs(current - stamp) > self.window:
            age = "no valid timestamp" if not math.isfinite(stamp) else \
                f"signed {current - stamp:+.1f} s from this clock"
            raise SignatureError("stale", f"the message is outside the {self.window:g} s "
                                 f"window ({age})", hint="check that the machines' clocks "
                                 "are synchronised (NTP); old messages are not accepted")
        if replay:
            # The nonce as signed (canonical() strips values): a copy whose nonce differs
            # only by surrounding whitespace is the same message, and a replay.
            nonce = lower.get(SIG_NONCE.lower(), "").strip()
            if not 16 <= len(nonce) <= _MAX_NONCE:
                raise SignatureError("malformed", "the signed message has no nonce of 16 to "
                                     f"{_MAX_NONCE} characters", hint="sign with llmspell's "
                                     "Signer")
            self.nonces.add(nonce, current)


def canonical(headers: Mapping[str, str], payload_hex: str) -> bytes:
    """The bytes an HMAC is computed over (see the module docstring)."""
    lines = ["llmspell-sig-v1"]
    for name, value in sorted((k.lower(), v) for k, v in headers.items()):
        if name == _SIGNATURE_LOWER:
            continue
        if name in _SIGNED_NAMES or name.startswith(_SIGNED_PREFIXES):
            lines.append(f"{name}:{value.strip()}")
    lines.append("")
    lines.append(payload_hex)
    return "\n".join(lines).encode()


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class KeyFromEnv:
    """The type of :data:`KEY_FROM_ENV`, the default ``key``: the key(s) in
    ``LLMSPELL_HOOK_KEY`` if it is set, else none."""

    def __repr__(self) -> str:
        return "KEY_FROM_ENV"


KEY_FROM_ENV: Final = KeyFromEnv()

KeyLike: TypeAlias = "Signer | SharedKey | str | bytes | KeyFromEnv | None"
"""What ``key=`` takes (see :func:`signer_from`)."""


def signer_from(key: KeyLike) -> Signer | None:
    """A :class:`Signer` for what users pass as ``key=``: a Signer, a SharedKey, a secret
    (text as in :meth:`SharedKey.parse`, or bytes), None (no signing), or
    :data:`KEY_FROM_ENV` (``LLMSPELL_HOOK_KEY`` if set, else no signing)."""
    if key is None or isinstance(key, Signer):
        return key
    if isinstance(key, KeyFromEnv):
        return Signer.from_env(DEFAULT_KEY_ENV, required=False)
    if isinstance(key, SharedKey):
        return Signer(key)
    if isinstance(key, bytes):
        return Signer(SharedKey(key))
    if isinstance(key, str):
        return Signer(SharedKey.parse(key))
    raise ConfigurationError(f"key must be a Signer, SharedKey, str, bytes or None, not "
                             f"{type(key).__name__}", hint=_KEY_HINT)
