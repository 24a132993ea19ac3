"""core.redact: credential-shaped text masked, and every llmspell log line masked and made
safe for a terminal (a hook's error quoting a key was logged verbatim)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.core.redact import MASK, RedactingFilter, get_logger, mask_text

SECRETS = ["sk-abcdefghijklmnopqrstuv", "AKIA" + "B" * 16, "ghp_" + "c" * 24,
           "Bearer abcdefgh12345", "xoxb-1234567890ab", "AIza" + "d" * 35]


@pytest.mark.parametrize("text", [
    "{'api_key': 'abc123'}", '{"password": "hunter2"}', "token=abc", "Password : x1",
    "secret='s3'"])
def test_key_value_pairs_are_masked_quoted_or_not(text: str) -> None:
    masked = mask_text(text)
    assert MASK in masked
    for value in ("abc123", "hunter2", "abc", "x1", "s3"):
        assert value not in masked


@pytest.mark.parametrize(("text", "masked"), [
    ("{'api_key': 'abc123'}", "{'api_key': '***'}"),
    ('{"password": "hunter2", "x": 1}', '{"password": "***", "x": 1}'),
    ('{"api_key":"***","attempt":1}', '{"api_key":"***","attempt":1}'),  # already masked
    ('"token": "a\\"b"', '"token": "***"'),  # an escaped quote inside the value
    ("'secret': \"it's\"", "'secret': \"***\""),  # the other quote inside
    ("{'token': 12345}", "{'token': ***}")])
def test_a_quoted_keys_value_is_masked_and_the_text_keeps_its_shape(text: str,
                                                                    masked: str) -> None:
    assert mask_text(text) == masked


def test_a_long_quoted_value_is_masked_as_far_as_the_pattern_reads() -> None:
    masked = mask_text('{"token": "' + "a" * 3000 + '"}')
    assert masked.startswith('{"token": "***') and len(masked) < 1100


@pytest.mark.parametrize("text", ["tokens: 5", "max_tokens=100", "token_usage: 3",
                                  "a secret plan", "the password field"])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask_text(text) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.sampled_from(SECRETS), st.text(max_size=30))
def test_a_secret_never_survives_whatever_surrounds_it(before: str, secret: str,
                                                       after: str) -> None:
    assert secret not in mask_text(before + secret + after)


def _emit(logger: logging.Logger, caplog: pytest.LogCaptureFixture, *args: object,
          **kwargs: object) -> logging.LogRecord:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.warning(*args, **kwargs)  # type: ignore[arg-type]
    (record,) = caplog.records
    return record


def test_a_failed_hooks_error_is_logged_masked(caplog: pytest.LogCaptureFixture) -> None:
    from llmspell.hooks.executor import logger as hooks_logger

    record = _emit(hooks_logger, caplog, "hook %r failed: %s", "guard",
                   ValueError("upstream said: Authorization: Bearer abcdefghijkl0123"))
    text = caplog.text
    assert "abcdefghijkl0123" not in text and MASK in text
    assert "guard" in record.getMessage()


def test_an_unchanged_record_keeps_its_args(caplog: pytest.LogCaptureFixture) -> None:
    record = _emit(get_logger("llmspell.test.redact"), caplog, "%s of %d", "three", 3)
    assert record.args == ("three", 3) and record.getMessage() == "three of 3"


def test_control_characters_cannot_forge_lines_or_drive_a_terminal(
        caplog: pytest.LogCaptureFixture) -> None:
    hostile = "bad\nINFO llmspell: all good\x1b[2J\r"
    record = _emit(get_logger("llmspell.test.redact"), caplog, "tool failed: %s", hostile)
    message = record.getMessage()
    assert "\n" not in message and "\x1b" not in message and "\r" not in message
    assert "\\n" in message and "\\x1b" in message


def test_script_loggers_keep_line_breaks_and_tabs(caplog: pytest.LogCaptureFixture) -> None:
    record = _emit(get_logger("llmspell.scripts.lua"), caplog, "a\tb\nc\x1b[31m")
    assert record.getMessage() == "a\tb\nc\\x1b[31m"


def test_exceptions_are_masked_in_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logger = get_logger("llmspell.test.redact")
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        try:
            raise RuntimeError("key sk-abcdefghijklmnopqrstuvwx leaked")
        except RuntimeError:
            logger.exception("it failed")
    assert "sk-abcdefghijklmnopqrstuvwx" not in caplog.text
    assert "RuntimeError: key *** leaked" in caplog.text
    assert "Traceback" in caplog.text


def test_a_bad_format_string_is_not_dropped_by_the_filter() -> None:
    record = logging.LogRecord("llmspell.x", logging.WARNING, __file__, 1, "%d", ("x",), None)
    assert RedactingFilter().filter(record) is True
    assert record.args == ("x",)


def test_the_filter_is_added_once() -> None:
    logger = get_logger("llmspell.test.once")
    get_logger("llmspell.test.once")
    assert sum(isinstance(f, RedactingFilter) for f in logger.filters) == 1


def test_every_llmspell_logger_redacts() -> None:
    # Every module's logger goes through get_logger (a plain getLogger would log verbatim).
    import llmspell.builtin.nats_counters
    import llmspell.cli
    import llmspell.distributed.server
    import llmspell.events.transport.nats
    import llmspell.integrations.langchain
    import llmspell.viewer.hub  # noqa: F401  (between them, every module that logs)
    from llmspell.builtin.logging_hook import DEFAULT_LOGGER

    # The LoggingHook's output follows its own masking settings (LoggingConfig), not this.
    names = [name for name, logger in logging.Logger.manager.loggerDict.items()
             if name.startswith("llmspell") and isinstance(logger, logging.Logger)
             and logger.handlers == [] and not name.startswith("llmspell.test")
             and name != DEFAULT_LOGGER]
    plain = [name for name in names
             if not any(isinstance(f, RedactingFilter)
                        for f in logging.getLogger(name).filters)]
    assert names and not plain, plain
