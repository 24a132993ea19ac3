"""Every error llmspell raises on purpose. See :mod:`llmspell.core.errors`."""

from llmspell.core.errors import *  # noqa: F403
from llmspell.core.errors import __all__  # noqa: F401
