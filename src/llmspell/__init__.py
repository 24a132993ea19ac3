"""llmspell: a production-grade hook and event system for LLM applications.

The public face. Import the engine pieces from here or from their subpackages
(:mod:`llmspell.hooks`, :mod:`llmspell.errors`).
"""

from llmspell.core import Language, new_id
from llmspell.hooks import *  # noqa: F403
from llmspell.hooks import __all__ as _hooks_all

__version__ = "0.1.0"
__all__ = ["Language", "__version__", "new_id", *_hooks_all]  # noqa: PLE0604
