"""``python -m llmspell``: the ``llmspell`` command (see :mod:`llmspell.cli`)."""

from llmspell.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
