"""Per-model-call costs of the LangChain adapter: a chat model's names
(:func:`~llmspell.integrations.langchain.model_names`, from the slow ``_get_ls_params``)
are cached per model object and a callback handler's "is it a streaming handler" answer
(``_is_streaming``, a slow runtime-checkable protocol ``isinstance``) per handler type,
while every answer stays the one the uncached code gives."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.outputs import ChatResult
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langchain_core.tracers.event_stream import _AstreamEventsCallbackHandler
from langchain_core.tracers.log_stream import LogStreamCallbackHandler
from langgraph.pregel._messages import StreamMessagesHandler
from pydantic import Field, PrivateAttr

from llmspell.integrations import langchain
from llmspell.integrations.langchain import model_names


class Named(BaseChatModel):
    """A chat model named by ``model_name`` (LangChain's default ``_get_ls_params``: the
    provider from the class name), counting its ``_get_ls_params`` calls."""

    model_name: str = "m-1"
    asked: list[int] = Field(default_factory=list)
    failures: list[int] = Field(default_factory=list)
    _secret_name: str = PrivateAttr(default="")

    @property
    def _llm_type(self) -> str:
        return "named-type"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        self.asked.append(1)  # counted in place: no assignment the cache would see
        if self.failures:
            self.failures.pop()
            raise RuntimeError("no params today")
        params = super()._get_ls_params(stop=stop, **kwargs)
        if self._secret_name:
            params["ls_model_name"] = self._secret_name
        return params

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        raise NotImplementedError


class ById(Named):
    """A chat model whose name is a field the cheap attributes do not show."""

    model_id: str = "id-1"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "bedrock"
        params["ls_model_name"] = self.model_id
        return params


class Plain:
    """A model-like object that takes no weak references."""

    __slots__ = ("__dict__",)

    def __init__(self, name: str) -> None:
        self.model_name = name
        self.asked: list[int] = []

    def _get_ls_params(self) -> dict[str, str]:
        self.asked.append(1)
        return {"ls_provider": "plain", "ls_model_name": self.model_name}


def test_the_names_are_the_models_and_follow_a_changed_model_name() -> None:
    model = Named()
    assert model_names(model) == ("named", "m-1")
    model.model_name = "m-2"
    assert model_names(model) == ("named", "m-2")
    model._secret_name = "private-name"  # a pydantic private attribute
    assert model_names(model) == ("named", "private-name")


def test_a_name_from_another_field_is_followed_too() -> None:
    model = ById()
    assert model_names(model) == ("bedrock", "id-1")
    model.model_id = "id-2"
    assert model_names(model) == ("bedrock", "id-2")


def test_ls_params_are_asked_once_for_an_unchanged_model() -> None:
    model = Named(model_name="once")
    answers = {model_names(model) for _ in range(50)}
    assert answers == {("named", "once")}
    assert len(model.asked) == 1
    model.model_name = "twice"
    assert {model_names(model) for _ in range(50)} == {("named", "twice")}
    assert len(model.asked) == 2


def test_a_dead_models_names_are_never_another_models() -> None:
    """Models made and dropped one after another (CPython reuses their ids) each get
    their own names, and a dead model's entry goes with it."""
    for i in range(3 * langchain._NAMES_MAX):
        assert model_names(Named(model_name=f"m-{i}")) == ("named", f"m-{i}")
        assert len(langchain._names) <= langchain._NAMES_MAX
    kept = Named(model_name="kept")
    model_names(kept)
    key = id(kept)
    assert key in langchain._names
    del kept
    gc.collect()
    assert key not in langchain._names


def test_an_object_without_weak_references_is_cached_and_followed() -> None:
    model = Plain("p-1")
    assert [model_names(model) for _ in range(5)] == [("plain", "p-1")] * 5
    assert len(model.asked) == 1
    model.model_name = "p-2"
    assert model_names(model) == ("plain", "p-2")
    assert len(model.asked) == 2


def test_a_model_whose_ls_params_raise_gets_the_fallback_every_time() -> None:
    model = Named(model_name="fallback-name", failures=[1, 1])
    assert model_names(model) == ("named-type", "fallback-name")
    assert model_names(model) == ("named-type", "fallback-name")
    assert len(model.asked) == 2  # a fallback is not cached: asked again
    assert model_names(model) == ("named", "fallback-name")  # params work again
    assert len(model.asked) == 3


def test_a_binding_is_named_like_its_model() -> None:
    """A binding (its own ``__getattr__``) is not cached: a change to its model shows."""
    model = Named(model_name="bound-1")
    binding = model.bind(stop=["x"])
    assert model_names(binding) == ("named", "bound-1")
    model.model_name = "bound-2"
    assert model_names(binding) == ("named", "bound-2")


# -- streaming handlers --------------------------------------------------------------------------

def _tap_iter(run_id: UUID, output: Iterator[Any]) -> Iterator[Any]:
    return output


def _tap_aiter(run_id: UUID, output: AsyncIterator[Any]) -> AsyncIterator[Any]:
    return output


def _protocol(handler: Any) -> bool:
    """The uncached answer: the methods, or an instance of one of the markers."""
    return ((callable(getattr(handler, "tap_output_iter", None))
             and callable(getattr(handler, "tap_output_aiter", None)))
            or isinstance(handler, _StreamingCallbackHandler | StreamMessagesHandler))


@pytest.mark.parametrize("make", [
    _AstreamEventsCallbackHandler,
    lambda: LogStreamCallbackHandler(auto_close=False),
    lambda: StreamMessagesHandler(lambda chunk: None, subgraphs=False),
])
def test_langchains_streaming_handlers_are_streaming(make: Any) -> None:
    handlers = [make() for _ in range(3)]
    assert [langchain._is_streaming(h) for h in handlers * 2] == [True] * 6


def test_a_plain_handler_is_not_streaming() -> None:
    class Quiet(BaseCallbackHandler):
        pass

    assert [langchain._is_streaming(h) for h in [BaseCallbackHandler(), Quiet()] * 3] \
        == [False] * 6


@pytest.mark.parametrize("value", ["callable", "not callable", "None"])
def test_instance_attributes_decide_for_their_instance(value: str) -> None:
    """Taps set on one instance (LangChain's protocol matches on them) do not change the
    answer for its type's other instances, before or after it."""

    class Tapped(BaseCallbackHandler):
        pass

    before, tapped, after = Tapped(), Tapped(), Tapped()
    taps = {"callable": (_tap_iter, _tap_aiter), "not callable": (1, 2),
            "None": (None, None)}[value]
    tapped.tap_output_iter, tapped.tap_output_aiter = taps  # type: ignore[attr-defined]
    expected = _protocol(tapped)
    assert expected is (value != "None")
    for _ in range(3):
        assert langchain._is_streaming(before) is False
        assert langchain._is_streaming(tapped) is expected
        assert langchain._is_streaming(after) is False


def test_taps_behind_a_property_get_the_uncached_answer() -> None:
    """Taps an instance decides (a property) are not cached by type, and the answers are
    the uncached ones (LangChain's protocol matches on the class's attributes)."""

    class ByInstance(BaseCallbackHandler):
        def __init__(self, streams: bool) -> None:
            self.streams = streams

        @property
        def tap_output_iter(self) -> Any:
            return _tap_iter if self.streams else None

        @property
        def tap_output_aiter(self) -> Any:
            return _tap_aiter if self.streams else None

    handlers = [ByInstance(True), ByInstance(False)]
    expected = [_protocol(h) for h in handlers]
    assert [langchain._is_streaming(h) for h in handlers * 3] == expected * 3
    assert ByInstance not in langchain._streaming_types


def test_taps_added_to_a_class_after_its_first_use_are_seen() -> None:
    class Later(BaseCallbackHandler):
        pass

    assert langchain._is_streaming(Later()) is False
    Later.tap_output_iter = lambda self, run_id, output: output  # type: ignore[attr-defined]
    Later.tap_output_aiter = lambda self, run_id, output: output  # type: ignore[attr-defined]
    assert langchain._is_streaming(Later()) is True


def test_the_protocol_check_runs_once_per_type(monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[type[Any]] = []

    class Counting(type):
        def __instancecheck__(cls, instance: Any) -> bool:
            checks.append(type(instance))
            return isinstance(instance, _StreamingCallbackHandler)

    class Marker(metaclass=Counting):
        pass

    class Quiet(BaseCallbackHandler):
        pass

    class Other(BaseCallbackHandler):
        pass

    monkeypatch.setattr(langchain, "_streaming_handler", Marker)
    answers = [langchain._is_streaming(h) for h in [Quiet() for _ in range(20)]
               + [Other() for _ in range(20)]]
    assert answers == [False] * 40
    assert checks == [Quiet, Other]
