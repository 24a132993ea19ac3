"""The skip-locally, fail-in-CI rule for missing dependencies (tests/ci.py)."""

from __future__ import annotations

import pytest

from tests.ci import in_ci, require_module, unavailable

Skipped = pytest.skip.Exception
Failed = pytest.fail.Exception


@pytest.mark.parametrize("value", ["1", "true", "True", "TRUE", "yes", "Yes", "on", " true "])
def test_ci_set_to_a_true_value_is_ci(value: str) -> None:
    assert in_ci({"CI": value})


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "off", "maybe"])
def test_ci_unset_or_false_is_not_ci(value: str) -> None:
    assert not in_ci({"CI": value})
    assert not in_ci({})


def test_in_ci_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    assert in_ci()
    monkeypatch.delenv("CI")
    assert not in_ci()


def test_unavailable_skips_locally_and_fails_in_ci() -> None:
    with pytest.raises(Skipped, match="no server here"):
        unavailable("no server here", environ={})
    with pytest.raises(Skipped):
        unavailable("no server here", environ={"CI": "false"})
    for value in ("1", "True", "yes"):
        with pytest.raises(Failed, match=r"no server here.*CI is set"):
            unavailable("no server here", environ={"CI": value})


def test_require_module_returns_the_module_or_skips_or_fails() -> None:
    import json

    assert require_module("json", environ={"CI": "1"}) is json
    with pytest.raises(Skipped, match=r"cannot be imported.*install not_a_real_pkg"):
        require_module("not_a_real_pkg.sub", environ={})
    with pytest.raises(Failed, match="install the-dist-name"):
        require_module("not_a_real_pkg", install="the-dist-name", environ={"CI": "TRUE"})
