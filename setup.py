"""Builds the optional native module ``llmspell.core._speedups`` (all metadata is in
pyproject.toml). Without a C compiler the build skips it and the pure-Python versions
run: same results, slower event building."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("llmspell.core._speedups", ["src/llmspell/core/_speedups.c"],
                             optional=True)])
