"""The docs send readers only where they can follow: no issue numbers, no paths outside the
repository (the design notes, other checkouts), no extras that do not exist, no links to
files that are not there. Checked on every page under docs/, the README and the changelog;
the extras also in the docstrings the API reference renders."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("**/*.md")), ROOT / "README.md", ROOT / "CHANGELOG.md"]
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
    "optional-dependencies"])

PENDING: dict[str, str] = {}
"""Pages with a known defect of this kind, owned elsewhere: strict xfail, so the test fails
once the page is fixed and the entry must go."""

UNFOLLOWABLE = [
    (re.compile(r"\bissues?\s+#?\d+\b", re.IGNORECASE), "an issue number"),
    (re.compile(r"(?<![\w/(\[])#\d+\b"), "an issue number"),
    (re.compile(r"\.\./shared\b|\bDESIGN\.md\b|/work/"), "a path outside the repository"),
]
GENERATED = {DOCS / "img" / "viewer.png": DOCS / "hooks" / "viewer_screenshot.py"}
"""Files the docs build makes (never committed), each with the MkDocs hook that makes it."""
EXTRA_USE = re.compile(r"llmspell\[([\w,\s-]+)\]")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _params(pages: list[Path]) -> list[object]:
    return [pytest.param(p, id=_id(p), marks=pytest.mark.xfail(strict=True,
                                                                reason=PENDING[_id(p)]))
            if _id(p) in PENDING else pytest.param(p, id=_id(p)) for p in pages]


def _prose(text: str) -> str:
    """The page without its fenced code blocks (code may print '#1' legitimately)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", _params(PAGES))
def test_no_reference_a_reader_cannot_follow(page: Path) -> None:
    text = _prose(page.read_text(encoding="utf-8"))
    found = [f"{what}: {m.group(0)!r}" for pattern, what in UNFOLLOWABLE
             for m in pattern.finditer(text)]
    assert not found, f"{_id(page)}: {found}"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_every_extra_named_exists(page: Path) -> None:
    for match in EXTRA_USE.finditer(page.read_text(encoding="utf-8")):
        for extra in match.group(1).split(","):
            assert extra.strip() in EXTRAS, (
                f"{_id(page)}: llmspell[{extra.strip()}] is not an extra "
                f"(pyproject.toml has {sorted(EXTRAS)})")


def test_docstrings_name_only_real_extras() -> None:
    wrong = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        names = [e.strip() for m in EXTRA_USE.finditer(text) for e in m.group(1).split(",")]
        names += re.findall(r"``([\w-]+)`` extra", text)
        wrong += [f"{path.relative_to(ROOT)}: {n}" for n in names if n not in EXTRAS]
    assert not wrong, wrong


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_relative_links_point_to_files_in_reach(page: Path) -> None:
    """A link resolves to a file; from a docs page it stays inside docs/ (the site has
    nothing else), from the README or changelog inside the repository."""
    home = DOCS if page.is_relative_to(DOCS) else ROOT
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        made_by = GENERATED.get(path)
        assert path.exists() or (made_by is not None and made_by.is_file()), (
            f"{_id(page)}: the link {target} goes nowhere")
        assert path.is_relative_to(home), f"{_id(page)}: the link {target} leaves {home.name}/"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_example_paths_named_exist(page: Path) -> None:
    """A command or sentence naming a file under examples/ or benchmarks/ names a real one."""
    named = re.findall(r"(?<![\w/.])((?:examples|benchmarks)/[\w./-]+\.(?:py|lua|js))",
                       page.read_text(encoding="utf-8"))
    missing = sorted({n for n in named if not (ROOT / n).is_file()})
    assert not missing, f"{_id(page)} names files that do not exist: {missing}"


def test_the_checks_catch_what_they_should() -> None:
    bad = "See issue 2, issues #14, fixed in #7; ../shared/DESIGN.md"
    found = [m.group(0) for pattern, _ in UNFOLLOWABLE for m in pattern.finditer(bad)]
    assert found == ["issue 2", "issues #14", "#14", "#7", "../shared", "DESIGN.md"]
    fine = "[the guide](guide/index.md#1-install) and patterns.md#14-a-breaker, `x[#3]`"
    assert not [m for pattern, _ in UNFOLLOWABLE for m in pattern.finditer(fine)]
    assert EXTRA_USE.findall("pip install 'llmspell[cost]'") == ["cost"]
