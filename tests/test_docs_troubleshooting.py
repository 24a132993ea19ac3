"""docs/troubleshooting.md has a section for every typed error of llmspell.core.errors (and
no section for an error that does not exist), each saying what to do."""

from __future__ import annotations

import re
from pathlib import Path

from llmspell.core import errors

PAGE = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"


def _error_classes() -> set[str]:
    return {name for name in errors.__all__
            if isinstance(getattr(errors, name), type)
            and issubclass(getattr(errors, name), errors.LlmspellError)
            and getattr(errors, name).__name__ == name}          # aliases share a section


def _sections() -> dict[str, str]:
    text = PAGE.read_text(encoding="utf-8")
    parts = re.split(r"^### `([A-Za-z]+)`\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_error_class_has_a_section() -> None:
    missing = sorted(_error_classes() - set(_sections()))
    assert not missing, f"docs/troubleshooting.md has no section for {missing}"


def test_every_section_names_a_real_error_and_says_what_to_do() -> None:
    sections = _sections()
    unknown = sorted(set(sections) - _error_classes())
    assert not unknown, f"sections for errors that do not exist: {unknown}"
    vague = [name for name, body in sections.items() if "**Do:**" not in body]
    assert not vague, f"these sections do not say what to do: {vague}"


def test_aliases_are_named_in_their_class_section() -> None:
    sections = _sections()
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and obj.__name__ != name:
            assert f"`{name}`" in sections[obj.__name__], f"{name} is not mentioned"
