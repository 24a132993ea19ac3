"""What the SQLite-backed stores share: a helpful hint for a database that will not open."""

from __future__ import annotations

__all__ = ["open_error_hint"]


def open_error_hint(exc: BaseException) -> str:
    """What to do about ``exc``, raised while opening an SQLite database file."""
    text = str(exc).lower()
    if "not a database" in text or "malformed" in text:
        return ("the file exists but is not an SQLite database (or is damaged); pass the path "
                "of a new file, or move this one away")
    if "locked" in text or "busy" in text:
        return ("another process or connection holds a lock on it; close that, or raise "
                "busy_timeout")
    if "readonly" in text or "unable to open" in text or isinstance(exc, OSError):
        return "check that the path is a writable file in a writable directory"
    return "check the path, its permissions and the free disk space"
