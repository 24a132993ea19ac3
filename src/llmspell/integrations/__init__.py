"""Adapters that bring llmspell's hooks, built-in hooks and events into agent frameworks.

Each framework has its own module, imported on demand (its package is an optional extra):

* :mod:`llmspell.integrations.pydantic_ai`: a pydantic-ai capability
  (``pip install 'llmspell[pydantic-ai]'``);
* :mod:`llmspell.integrations.langchain`: LangChain v1 middleware and callbacks
  (``pip install 'llmspell[langchain]'``);
* :mod:`llmspell.integrations.openai_agents`: OpenAI Agents SDK hooks, guardrails and
  tracing (``pip install 'llmspell[openai-agents]'``).

:mod:`llmspell.integrations._bridge` holds what they share and imports no framework.
"""
