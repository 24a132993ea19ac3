"""A script's checkpoint label is text (or a number, as its text); a boolean or a table is
refused with a typed error instead of becoming the label "True" or a dict's repr."""

from __future__ import annotations

import pytest

from llmspell.errors import ScriptError
from llmspell.runtime import System
from llmspell.scripting import ScriptHost


@pytest.mark.parametrize("label, expected", [('"before"', "before"), ("7", "7")])
async def test_text_and_number_labels_are_kept(label: str, expected: str) -> None:
    async with System() as system:
        host = ScriptHost(system)
        try:
            out = await host.run_lua_async(
                f'local s = Session.create({{name = "x"}}); '
                f'return Session.checkpoint(s, {label})')
        finally:
            host.close()
    assert out == expected


@pytest.mark.parametrize("label", ["true", "{1, 2}", "{a = 1}"])
@pytest.mark.parametrize("call", ["checkpoint", "restore"])
async def test_a_boolean_or_table_label_is_refused(label: str, call: str) -> None:
    async with System() as system:
        host = ScriptHost(system)
        try:
            with pytest.raises(ScriptError, match=f"Session.{call}: a checkpoint label is text"):
                await host.run_lua_async(
                    f'local s = Session.create({{name = "x"}}); Session.checkpoint(s, "a"); '
                    f'return Session.{call}(s, {label})')
        finally:
            host.close()
