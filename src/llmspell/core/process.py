"""Which process this is: host, pid and start time, renewed after ``fork``.

A store shared by several processes records the writer of every row, so two runs written by
two processes (or by one pid reused after a restart) can be told apart.
"""

from __future__ import annotations

import os
import socket
import time

import msgspec

__all__ = ["ProcessIdentity", "this_process"]


class ProcessIdentity(msgspec.Struct, frozen=True):
    """A process: ``host`` name, ``pid``, and ``started`` (wall seconds; the time llmspell
    was imported in it, or the fork that made it)."""

    host: str
    pid: int
    started: float

    def label(self) -> str:
        """``host:pid``, for tables."""
        return f"{self.host}:{self.pid}"


def _identify() -> ProcessIdentity:
    return ProcessIdentity(host=socket.gethostname(), pid=os.getpid(), started=time.time())


_current = _identify()


def _after_fork() -> None:
    global _current
    _current = _identify()


os.register_at_fork(after_in_child=_after_fork)


def this_process() -> ProcessIdentity:
    """The identity of the calling process."""
    return _current
