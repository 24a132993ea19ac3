"""Configuration under hostile or careless input: files, environment, keyword arguments.

Every bad value is a ``ConfigurationError`` raised where the value enters, naming the
setting and its source; nothing is read without bound or waits forever.
"""

from __future__ import annotations

import math
import os
import pwd
import threading
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import ConfigurationError
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import Modified
from llmspell.runtime import System, SystemConfig, load_config
from llmspell.runtime.config import ScriptingConfig, default_data_dir
from llmspell.scripting.runner import capabilities_from

_ENV_NAMES = ("LLMSPELL_DATA_DIR", "LLMSPELL_STORE", "LLMSPELL_HOOK_EVENTS",
              "LLMSPELL_PERSIST_HOOK_EVENTS", "LLMSPELL_BREAKER", "LLMSPELL_MONITOR",
              "LLMSPELL_QUEUE_SIZE", "LLMSPELL_TOOL_TIMEOUT", "LLMSPELL_MASK_EVENT_DATA",
              "LLMSPELL_RECORD_CONTENT", "LLMSPELL_RECORD", "LLMSPELL_BUS", "XDG_DATA_HOME")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def _toml(tmp_path: Path, text: str, name: str = "llmspell.toml") -> Path:
    file = tmp_path / name
    file.write_text(text, encoding="utf-8")
    return file


# -- keyword arguments -------------------------------------------------------------------


def test_a_bool_setting_given_as_a_word_means_the_word() -> None:
    # The string "false" is truthy: it used to switch hook events (and a script's
    # environment access) on.
    assert SystemConfig(hook_events="false").hook_events is False  # type: ignore[arg-type]
    assert SystemConfig(monitor=" No ").monitor is False  # type: ignore[arg-type]
    assert ScriptingConfig(allow_env="no").allow_env is False  # type: ignore[arg-type]
    assert capabilities_from(ScriptingConfig(allow_exec="off")).allow_exec is False  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="allow_env") as info:
        ScriptingConfig(allow_env="maybe")  # type: ignore[arg-type]
    assert info.value.hint and "true or false" in info.value.hint


def test_allow_read_as_a_bare_string_is_refused_not_split_into_characters() -> None:
    # tuple("/etc") is ("/", "e", "t", "c"): the root was granted.
    with pytest.raises(ConfigurationError, match="allow_read") as info:
        ScriptingConfig(allow_read="/etc")  # type: ignore[arg-type]
    assert info.value.hint and "['/data']" in info.value.hint
    with pytest.raises(ConfigurationError, match="allow_write"):
        ScriptingConfig(allow_write="/tmp")  # type: ignore[arg-type]
    settings = ScriptingConfig(allow_read=["/data"])  # type: ignore[arg-type]
    assert settings.allow_read == ("/data",)
    assert capabilities_from(settings).allow_read == ("/data",)
    hash(settings)  # frozen and hashable: the list became a tuple


@pytest.mark.parametrize(
    ("fields", "name"),
    [({"queue_size": True}, "queue_size"),        # a bool is an int to Python, not here
     ({"queue_size": 1.5}, "queue_size"),
     ({"queue_size": "many"}, "queue_size"),
     ({"tool_timeout": True}, "tool_timeout"),
     ({"tool_timeout": None}, "tool_timeout"),
     ({"tool_timeout": math.inf}, "tool_timeout"),
     ({"tool_timeout": "soon"}, "tool_timeout"),
     ({"data_dir": 3}, "data_dir"),
     ({"data_dir": "a\0b"}, "data_dir"),
     ({"bus": 3}, "bus"),
     ({"bus": "nats://h\udcff:4222"}, "bus"),
     ({"store": None}, "store"),
     ({"scripting": None}, "scripting"),
     ({"scripting": {"colour": 1}}, "colour"),
     ({"monitor": 2}, "monitor")],
)
def test_a_bad_keyword_fails_at_construction_naming_it(fields: dict[str, Any],
                                                       name: str) -> None:
    with pytest.raises(ConfigurationError, match=name) as info:
        SystemConfig(**fields)
    assert info.value.hint


@pytest.mark.parametrize(
    ("fields", "name"),
    [({"time_budget": True}, "time_budget"),
     ({"time_budget": "soon"}, "time_budget"),
     ({"max_memory_mb": True}, "max_memory_mb"),
     ({"max_memory_mb": 1.5}, "max_memory_mb"),
     ({"max_memory_mb": 2 ** 50}, "max_memory_mb"),  # OverflowError in the engine, later
     ({"max_state_bytes": math.nan}, "max_state_bytes"),
     ({"max_state_bytes": "lots"}, "max_state_bytes")],
)
def test_a_bad_scripting_keyword_fails_at_construction_naming_it(fields: dict[str, Any],
                                                                 name: str) -> None:
    with pytest.raises(ConfigurationError, match=f"scripting.{name}") as info:
        ScriptingConfig(**fields)
    assert info.value.hint


def test_keywords_are_converted_as_load_config_converts_them() -> None:
    config = SystemConfig(queue_size="64", tool_timeout="2.5",  # type: ignore[arg-type]
                          scripting={"allow_env": True,  # type: ignore[arg-type]
                                     "allow_read": ["/data"]})
    assert (config.queue_size, config.tool_timeout) == (64, 2.5)
    assert config.scripting == ScriptingConfig(allow_env=True, allow_read=("/data",))
    assert config == load_config(queue_size="64", tool_timeout="2.5",
                                 scripting={"allow_env": True, "allow_read": ["/data"]})


async def test_data_dir_as_a_path_object_is_kept_as_text(tmp_path: Path) -> None:
    config = SystemConfig(data_dir=tmp_path)  # type: ignore[arg-type]
    assert config.data_dir == str(tmp_path) and load_config(data_dir=tmp_path) == config
    async with System(config) as system:  # start() used to fail encoding the Path
        await system.emit("custom.thing", {"x": 1})
    assert (tmp_path / "events.db").is_file()


# -- paths --------------------------------------------------------------------------------


def test_a_tilde_in_data_dir_means_the_home_directory(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert SystemConfig(data_dir="~/spell").resolved_data_dir == tmp_path / "spell"
    monkeypatch.setenv("LLMSPELL_DATA_DIR", "~/from-env")
    assert default_data_dir() == tmp_path / "from-env"
    assert load_config().resolved_data_dir == tmp_path / "from-env"
    _toml(tmp_path, 'store = "memory"\n', "conf.toml")
    assert load_config("~/conf.toml").store == "memory"


def test_a_relative_xdg_data_home_is_ignored(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    assert default_data_dir() == tmp_path / ".local" / "share" / "llmspell"


def test_no_home_directory_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOME", raising=False)

    def no_entry(uid: int) -> Any:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(ConfigurationError, match="home directory") as info:
        _ = SystemConfig().resolved_data_dir
    assert info.value.hint and "LLMSPELL_DATA_DIR" in info.value.hint


def test_data_dir_at_a_file_is_a_configuration_error(tmp_path: Path) -> None:  # held before
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigurationError, match="data directory"):
        System(SystemConfig(data_dir=str(blocker)))


# -- files --------------------------------------------------------------------------------


def test_a_fifo_is_refused_instead_of_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    outcome: list[BaseException | object] = []

    def load() -> None:
        try:
            outcome.append(load_config(fifo))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # blocked in open(): give it a writer so the thread ends
        os.close(os.open(fifo, os.O_WRONLY))
        reader.join(5)
        pytest.fail("load_config waited for a writer on a FIFO")
    assert isinstance(outcome[0], ConfigurationError)
    assert "not a regular file" in str(outcome[0])


def test_a_device_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a regular file"):
        load_config("/dev/null")


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    file = tmp_path / "huge.toml"
    file.write_bytes(b"#" * (1024 * 1024 + 1))  # a comment: valid TOML, but too large
    with pytest.raises(ConfigurationError, match="larger than") as info:
        load_config(file)
    assert info.value.hint


def test_deep_nesting_is_a_configuration_error(tmp_path: Path) -> None:
    for name, text in (("arrays.toml", "x = " + "[" * 5000 + "]" * 5000 + "\n"),
                       ("tables.toml", "x = " + "{a=" * 3000 + "1" + "}" * 3000 + "\n")):
        with pytest.raises(ConfigurationError, match="too deeply"):
            load_config(_toml(tmp_path, text, name))


def test_a_key_outside_the_llmspell_table_is_not_silently_ignored(tmp_path: Path) -> None:
    file = _toml(tmp_path, 'store = "memory"\n[llmspell]\nqueue_size = 5\n')
    with pytest.raises(ConfigurationError, match="store outside the \\[llmspell\\] table"):
        load_config(file)
    # Other tools' top-level content beside [llmspell] stays theirs.
    shared = _toml(tmp_path, 'name = "x"\n[tool.other]\na = 1\n[llmspell]\nqueue_size = 5\n',
                   "shared.toml")
    assert load_config(shared).queue_size == 5


def test_a_misspelled_key_gets_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="queue_sise") as info:
        load_config(_toml(tmp_path, "queue_sise = 5\n"))
    assert info.value.hint and "did you mean queue_size?" in info.value.hint
    with pytest.raises(ConfigurationError, match="alow_env") as info:
        load_config(_toml(tmp_path, "[llmspell.scripting]\nalow_env = true\n", "s.toml"))
    assert info.value.hint and "did you mean allow_env?" in info.value.hint


@pytest.mark.parametrize(
    ("text", "name"),
    [('store = "s3"\n', "store"),
     ("queue_size = true\n", "queue_size"),
     ("tool_timeout = inf\n", "tool_timeout"),
     ("tool_timeout = nan\n", "tool_timeout"),
     ("data_dir = 1979-05-27\n", "data_dir"),
     ('hook_events = "maybe"\n', "hook_events"),
     ('[llmspell.scripting]\nallow_read = "/etc"\n', "scripting.allow_read"),
     ("[llmspell.scripting]\nmax_memory_mb = 99999999999999\n", "scripting.max_memory_mb"),
     ("[llmspell.scripting]\ntime_budget = true\n", "scripting.time_budget")],
)
def test_a_bad_value_in_a_file_names_the_file_and_the_key(tmp_path: Path, text: str,
                                                          name: str) -> None:
    file = _toml(tmp_path, text, "bad-value.toml")
    with pytest.raises(ConfigurationError, match=name) as info:
        load_config(file)
    assert "bad-value.toml" in info.value.message and info.value.hint


def test_encodings_held_before(tmp_path: Path) -> None:
    (tmp_path / "bom.toml").write_bytes(b'\xef\xbb\xbfstore = "memory"\n')
    assert load_config(tmp_path / "bom.toml").store == "memory"
    (tmp_path / "latin1.toml").write_bytes('data_dir = "/tmp/caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigurationError, match="not UTF-8"):
        load_config(tmp_path / "latin1.toml")
    with pytest.raises(ConfigurationError, match="is a directory"):
        load_config(tmp_path)


# -- environment ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw"),
    [("LLMSPELL_QUEUE_SIZE", "0"), ("LLMSPELL_TOOL_TIMEOUT", "1e309"),
     ("LLMSPELL_TOOL_TIMEOUT", "nan"), ("LLMSPELL_STORE", "memroy"),
     ("LLMSPELL_BREAKER", "\udcff"), ("LLMSPELL_BUS", "nats://h\udcff:4222"),
     ("LLMSPELL_RECORD", "FULLY")],
)
def test_a_bad_variable_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch, name: str,
                                              raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigurationError, match=name) as info:
        load_config()
    assert info.value.hint
    str(info.value).encode("utf-8")  # printable, whatever bytes the variable held


def test_spaces_around_a_variable_s_word_mean_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # int() and float() always ignored them; a CR from a .env file broke the words.
    monkeypatch.setenv("LLMSPELL_STORE", " memory\r\n")
    monkeypatch.setenv("LLMSPELL_RECORD", "full ")
    monkeypatch.setenv("LLMSPELL_QUEUE_SIZE", " 7\r")
    config = load_config()
    assert (config.store, config.record, config.queue_size) == ("memory", "full", 7)


@pytest.mark.parametrize("name", _ENV_NAMES)
@pytest.mark.parametrize("raw", ["", "  ", "\r\n"])
def test_an_empty_variable_counts_as_not_set(monkeypatch: pytest.MonkeyPatch, name: str,
                                             raw: str) -> None:
    # LLMSPELL_DATA_DIR= meant "the default" while LLMSPELL_STORE= was an error.
    monkeypatch.setenv(name, raw)
    config = load_config()
    assert config == SystemConfig()
    assert config.resolved_data_dir == SystemConfig().resolved_data_dir


def test_words_are_matched_whatever_their_case(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("LLMSPELL_STORE", "Memory")
    monkeypatch.setenv("LLMSPELL_RECORD", "FULL")
    (tmp_path / "c.toml").write_text('breaker = "Production"\n')
    config = load_config(tmp_path / "c.toml", record_content="None")
    assert (config.store, config.record, config.breaker, config.record_content) == (
        "memory", "full", "production", "none")
    assert SystemConfig(store=" SQLite ").store == "sqlite"


def test_a_huge_variable_is_not_quoted_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSPELL_QUEUE_SIZE", "9" * 5000)
    with pytest.raises(ConfigurationError, match="LLMSPELL_QUEUE_SIZE") as info:
        load_config()
    assert len(str(info.value)) < 400


def test_precedence_keywords_over_environment_over_file(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:  # held before
    file = _toml(tmp_path, '[llmspell]\nstore = "memory"\nqueue_size = 8\nbreaker = "off"\n')
    monkeypatch.setenv("LLMSPELL_QUEUE_SIZE", "16")
    monkeypatch.setenv("LLMSPELL_BREAKER", "production")
    config = load_config(file, breaker="conservative", record=None)
    assert (config.store, config.queue_size, config.breaker, config.record) == (
        "memory", 16, "conservative", "decisions")


# -- changes at run time --------------------------------------------------------------------


async def test_update_config_converts_a_word() -> None:
    async with System(SystemConfig(store="memory")) as system:
        config = await system.update_config(hook_events="false")
        assert config.hook_events is False
        with pytest.raises(ConfigurationError, match="hook_events"):
            await system.update_config(hook_events=2)


async def test_a_configuration_change_hook_cannot_widen_the_change() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.registry.register(
            HookPoint.CONFIGURATION_CHANGE,
            lambda ctx: Modified({"changes": {"store": "none", "hook_events": False}}),
            name="widen")
        with pytest.raises(ConfigurationError, match="store") as info:
            await system.update_config(hook_events=False)
        assert "widen" in info.value.message and info.value.hint
        assert system.config.store == "memory" and system.config.hook_events is True
