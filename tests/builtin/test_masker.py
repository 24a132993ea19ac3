"""Masker.mask against a plain reference walk (property test): its shortcuts (dicts of keys
already known to be ordinary, scalars not descended into) mask exactly what a per-key,
per-item walk masks, and always return a copy of every container."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.builtin.masking import MASK, Masker

KEYS = st.one_of(st.text(max_size=10), st.integers(-3, 3), st.sampled_from([
    "password", "API_KEY", "tokens", "input_tokens", "author", "Authorization", "user",
    "session_id", "name", "my_token", "x"]))
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=15)


def reference(masker: Masker, value: Any, depth: int = 0) -> Any:
    if depth > 32:
        return value
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and masker.is_sensitive(k)
                else reference(masker, v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [reference(masker, v, depth + 1) for v in value]
    return value


def containers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [value, *(c for v in value.values() for c in containers(v))]
    if isinstance(value, list):
        return [value, *(c for v in value for c in containers(v))]
    return []


SHARED = Masker()  # one masker across examples: its known-ordinary keys accumulate


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_mask_masks_what_the_reference_walk_masks_and_copies(value: Any) -> None:
    for masker in (SHARED, Masker()):
        masked = masker.mask(value)
        assert masked == reference(masker, value)
        originals = {id(c) for c in containers(value)}
        assert not any(id(c) in originals for c in containers(masked))


def test_a_known_ordinary_dict_still_masks_inside_and_custom_rules_are_asked() -> None:
    masker = Masker()
    assert masker.mask({"user": 1, "x": 2}) == {"user": 1, "x": 2}  # keys now known
    assert masker.mask({"user": {"password": "p"}, "x": [{"token": "t"}]}) == {
        "user": {"password": MASK}, "x": [{"token": MASK}]}

    class NoUsers(Masker):
        def is_sensitive(self, key: str) -> bool:
            return super().is_sensitive(key) or key == "user"  # the base caches "user"

    strict = NoUsers()
    for _ in range(2):  # the second time the base has seen both keys
        assert strict.mask({"user": 1, "x": 2}) == {"user": MASK, "x": 2}


def test_a_dict_subclass_whose_keys_lie_is_masked_item_by_item() -> None:
    class Lying(dict):  # type: ignore[type-arg]
        def keys(self) -> Any:
            return {"user"}

    masker = Masker()
    masker.mask({"user": 1})  # "user" is now known to be ordinary
    assert masker.mask(Lying(user=1, password="p")) == {"user": 1, "password": MASK}
