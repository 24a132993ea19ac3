"""Model providers: the provider-neutral types, the HTTP providers and the scripted one.

- :class:`OpenAICompatibleProvider`: OpenAI, Ollama, vLLM, llama.cpp server, LM Studio.
- :class:`AnthropicProvider`: Anthropic's Messages API.
- :class:`ScriptedProvider`: deterministic scripted replies for offline examples and tests.

All three are :class:`StreamingProvider`: ``stream(...)`` yields :class:`StreamDelta` items,
then the assembled :class:`Completion`.
- :func:`provider_from_config` / :func:`provider_from_env`: build one from configuration.
"""

from llmspell.runtime.providers.anthropic import AnthropicProvider
from llmspell.runtime.providers.base import (
    Completion,
    Message,
    Provider,
    StreamDelta,
    StreamingProvider,
    TokenUsage,
    ToolCall,
    ToolSpec,
    tool_call_from_text,
)
from llmspell.runtime.providers.config import (
    PROVIDER_KINDS,
    ProviderConfig,
    provider_from_config,
    provider_from_env,
)
from llmspell.runtime.providers.openai_compat import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_RESPONSE_BYTES,
    OpenAICompatibleProvider,
)
from llmspell.runtime.providers.scripted import Reply, ReplyFunction, ScriptedProvider

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "PROVIDER_KINDS",
    "AnthropicProvider",
    "Completion",
    "Message",
    "OpenAICompatibleProvider",
    "Provider",
    "ProviderConfig",
    "Reply",
    "ReplyFunction",
    "ScriptedProvider",
    "StreamDelta",
    "StreamingProvider",
    "TokenUsage",
    "ToolCall",
    "ToolSpec",
    "provider_from_config",
    "provider_from_env",
    "tool_call_from_text",
]
