"""Signing: HMAC over context headers and payload, window, nonces, keys."""

from __future__ import annotations

import time

import pytest

from llmspell.distributed import DistributedHookContext, SharedKey, Signer
from llmspell.distributed.signing import (
    KEY_FROM_ENV,
    SIG_KEY,
    SIG_NONCE,
    SIG_TIME,
    SIGNATURE,
    NonceCache,
    canonical,
    signer_from,
)
from llmspell.errors import ConfigurationError, SignatureError
from tests.distributed.support import KEY, OTHER_KEY

PAYLOAD = b'{"hook":"guard"}'


def _headers() -> dict[str, str]:
    return DistributedHookContext.root(run_id="r").child("hook:guard").to_headers()


def _reason(signer: Signer, headers: dict[str, str], payload: bytes = PAYLOAD,
            **options: object) -> str:
    with pytest.raises(SignatureError) as caught:
        signer.verify(headers, payload, **options)  # type: ignore[arg-type]
    return caught.value.reason


def test_a_signed_message_verifies_once() -> None:
    signer = Signer(SharedKey(KEY))
    headers = signer.sign(_headers(), PAYLOAD)
    assert {SIG_TIME, SIG_NONCE, SIG_KEY, SIGNATURE} <= set(headers)
    assert headers[SIGNATURE].startswith("v1=") and headers[SIG_KEY] == "default"
    signer.verify(headers, PAYLOAD)
    assert _reason(signer, headers) == "replayed"
    signer.verify(headers, PAYLOAD, fresh=False)          # integrity only: no nonce check
    signer.verify(headers, PAYLOAD, replay=False)


def test_every_change_after_signing_is_detected() -> None:
    signer = Signer(SharedKey(KEY))
    signed = signer.sign(_headers(), PAYLOAD)
    assert _reason(signer, signed, PAYLOAD + b" ") == "bad_signature"
    for name in ("traceparent", "Llmspell-Ctx-Hop", "Llmspell-Ctx-Run", SIG_TIME, SIG_NONCE):
        changed = dict(signed)
        changed[name] = changed[name][:-1] + ("0" if changed[name][-1] != "0" else "1")
        assert _reason(signer, changed) == "bad_signature", name
    removed = dict(signed)
    del removed["Llmspell-Ctx-Run"]
    assert _reason(signer, removed) == "bad_signature"
    added = {**signed, "Llmspell-Ctx-Admin": "yes"}
    assert _reason(signer, added) == "bad_signature"
    # Headers outside the signed set (the transport's own) may be added.
    signer.verify({**signed, "Nats-Msg-Id": "x", "Llmspell-Origin": "bus"}, PAYLOAD)


def test_header_names_are_compared_without_case() -> None:
    signer = Signer(SharedKey(KEY))
    signed = signer.sign(_headers(), PAYLOAD)
    signer.verify({k.lower(): v for k, v in signed.items()}, PAYLOAD)


def test_keys_unsigned_messages_and_rotation() -> None:
    old, new = SharedKey(KEY, key_id="k1"), SharedKey(OTHER_KEY, key_id="k2")
    assert _reason(Signer(old), _headers()) == "unsigned"
    by_new = Signer([new, old]).sign(_headers(), PAYLOAD)
    assert _reason(Signer(old), by_new) == "unknown_key"
    Signer([old, new]).verify(by_new, PAYLOAD)            # rotation: both keys verify
    forged = Signer(SharedKey(OTHER_KEY, key_id="k1")).sign(_headers(), PAYLOAD)
    assert _reason(Signer(old), forged) == "bad_signature"
    assert "secret" not in repr(old) and KEY not in repr(Signer(old))


def test_the_timestamp_window() -> None:
    signer = Signer(SharedKey(KEY), window=10)
    now = time.time()
    signer.verify(signer.sign(_headers(), PAYLOAD, now=now - 9), PAYLOAD, now=now)
    assert _reason(signer, signer.sign(_headers(), PAYLOAD, now=now - 11), now=now) == "stale"
    assert _reason(signer, signer.sign(_headers(), PAYLOAD, now=now + 11), now=now) == "stale"
    # A stale message is still intact: integrity alone passes.
    signer.verify(signer.sign(_headers(), PAYLOAD, now=now - 3600), PAYLOAD, fresh=False)


def test_verifying_against_a_digest() -> None:
    import hashlib

    signer = Signer(SharedKey(KEY))
    signed = signer.sign(_headers(), PAYLOAD)
    signer.verify(signed, digest=hashlib.sha256(PAYLOAD).digest(), fresh=False)
    with pytest.raises(SignatureError) as caught:
        signer.verify(signed, fresh=False)
    assert caught.value.reason == "malformed"


def test_the_nonce_cache_forgets_after_the_window_and_is_bounded() -> None:
    cache = NonceCache(window=1, max_entries=2)
    cache.add("a" * 32, 100.0)
    with pytest.raises(SignatureError, match="received twice"):
        cache.add("a" * 32, 100.5)
    cache.add("b" * 32, 100.5)
    with pytest.raises(SignatureError) as caught:
        cache.add("c" * 32, 100.6)
    assert caught.value.reason == "replay_cache_full"
    cache.add("c" * 32, 103.0)                             # the old ones expired
    assert len(cache) == 1


def test_a_forged_message_does_not_use_up_a_nonce() -> None:
    signer = Signer(SharedKey(KEY))
    signed = signer.sign(_headers(), PAYLOAD)
    forged = {**signed, SIGNATURE: "v1=" + "0" * 64}
    assert _reason(signer, forged) == "bad_signature"
    signer.verify(signed, PAYLOAD)


def test_canonical_form_lists_only_signed_headers() -> None:
    text = canonical({"B-Other": "x", "Llmspell-Ctx-Hop": "1", "traceparent": "t",
                      SIGNATURE: "v1=..."}, "ab").decode()
    assert text == "llmspell-sig-v1\nllmspell-ctx-hop:1\ntraceparent:t\n\nab"


def test_keys_from_text_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    [one] = SharedKey.parse(KEY)
    assert one.key_id == "default"
    two = SharedKey.parse(f"new:{OTHER_KEY}, old:{KEY}")
    assert [k.key_id for k in two] == ["new", "old"]
    for bad, complaint in [("", "is empty"), ("short", "at least 16"),
                           (f"a:{KEY},a:{OTHER_KEY}", "twice"), (f":{KEY}", "id:secret"),
                           (f"bad id:{KEY}", "invalid key id")]:
        with pytest.raises(ConfigurationError, match=complaint):
            SharedKey.parse(bad)
    monkeypatch.delenv("LLMSPELL_HOOK_KEY", raising=False)
    assert signer_from(KEY_FROM_ENV) is None
    with pytest.raises(ConfigurationError, match="holds no key"):
        Signer.from_env("LLMSPELL_HOOK_KEY")
    monkeypatch.setenv("LLMSPELL_HOOK_KEY", KEY)
    from_env = signer_from(KEY_FROM_ENV)
    assert from_env is not None and from_env.active.key_id == "default"
    assert signer_from(None) is None
    assert isinstance(signer_from(KEY), Signer) and isinstance(signer_from(KEY.encode()), Signer)
    with pytest.raises(ConfigurationError):
        signer_from(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="window"):
        Signer(SharedKey(KEY), window=0)
