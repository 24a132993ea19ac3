"""A tool that checks whether a service is up: a TCP connect or an HTTP GET health check.

The same address rules as :mod:`~llmspell.runtime.tools.library.http_request` apply: every
address a host resolves to is checked, and loopback or private addresses are refused
(with :class:`SandboxViolationError`) unless the tool is configured to allow them. A
service that cannot be reached is reported as down, not raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

from llmspell.core.errors import SandboxViolationError, ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool
from llmspell.runtime.tools.library.http_request import HttpRequestTool, address_refusal

__all__ = ["ServiceCheckerTool"]

_NAME = "service_checker"
_MAX_TIMEOUT = 30.0


class ServiceCheckerTool(Tool):
    """Check a TCP port or an HTTP health endpoint; report up/down and latency."""

    name = _NAME
    description = (
        "Check a service. check 'tcp' connects to 'host':'port'; check 'http' sends a GET "
        "to 'url' and compares the status with 'expected_status' (default: any 2xx or "
        "3xx). 'timeout' seconds (default 5). Returns up, latency_ms, status (http) and "
        "error. Internal network addresses are refused."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "check": {"enum": ["tcp", "http"], "description": "The kind of check."},
            "host": {"type": "string", "minLength": 1, "maxLength": 253,
                     "description": "Host name or IP address (tcp)."},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535,
                     "description": "TCP port (tcp)."},
            "url": {"type": "string", "maxLength": 8192, "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                    "description": "The health check URL (http)."},
            "expected_status": {"type": "integer", "minimum": 100, "maximum": 599,
                                "description": "The status that means up (http)."},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": _MAX_TIMEOUT,
                        "description": "Seconds to wait (default 5)."},
        },
        "required": ["check"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"check": {"const": "tcp"}}},
             "then": {"required": ["host", "port"]}},
            {"if": {"properties": {"check": {"const": "http"}}},
             "then": {"required": ["url"]}},
        ],
    }
    timeout = _MAX_TIMEOUT + 5.0
    security_level = SecurityLevel.RESTRICTED

    def __init__(self, *, allow_loopback: bool = False, allow_private: bool = False) -> None:
        self.allow_loopback = allow_loopback
        self.allow_private = allow_private
        self._http = HttpRequestTool(allow_loopback=allow_loopback, allow_private=allow_private,
                                     max_bytes=1024 * 1024, timeout=_MAX_TIMEOUT)

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run the check described by ``params``; see the class description."""
        wait = float(params.get("timeout", 5.0))
        if params["check"] == "tcp":
            return await self._tcp(params["host"], params["port"], wait)
        return await self._http_check(params["url"], params.get("expected_status"), wait)

    async def _addresses(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ToolExecutionError(_NAME, f"cannot resolve the host {host!r}: {exc}",
                                     hint="check the host name") from None
        addresses: list[str] = []
        for info in infos:
            address = str(info[4][0]).split("%", 1)[0]
            if address not in addresses:
                addresses.append(address)
        for address in addresses:
            reason = address_refusal(address, allow_loopback=self.allow_loopback,
                                     allow_private=self.allow_private)
            if reason is not None:
                raise SandboxViolationError(
                    _NAME, f"refusing to check {host!r}: {reason}",
                    hint="this tool only reaches public addresses unless configured with "
                    "allow_loopback / allow_private",
                )
        return addresses

    async def _tcp(self, host: str, port: int, wait: float) -> dict[str, Any]:
        result: dict[str, Any] = {"check": "tcp", "target": f"{host}:{port}", "up": False,
                                  "latency_ms": None, "status": None, "error": None}
        addresses = await self._addresses(host, port)
        if not addresses:
            result["error"] = f"{host!r} resolved to no address"
            return result
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        errors: list[str] = []
        for address in addresses:  # connect to the checked address itself, never re-resolve
            started = time.perf_counter()
            try:
                async with asyncio.timeout_at(deadline):
                    _, writer = await asyncio.open_connection(address, port)
            except TimeoutError:
                errors.append(f"{address}: timed out after {wait:g} s")
                break
            except OSError as exc:
                errors.append(f"{address}: {exc.strerror or exc}")
                continue
            result["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            result["up"] = True
            result["address"] = address
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            return result
        result["error"] = "; ".join(errors)
        return result

    async def _http_check(self, url: str, expected: int | None,
                          wait: float) -> dict[str, Any]:
        result: dict[str, Any] = {"check": "http", "target": url, "up": False,
                                  "latency_ms": None, "status": None, "error": None}
        started = time.perf_counter()
        try:
            response = await self._http.execute({"url": url, "method": "GET",
                                                 "timeout": wait})
        except SandboxViolationError as exc:
            raise SandboxViolationError(_NAME, exc.message, hint=exc.hint) from None
        except ToolExecutionError as exc:  # timeouts included: the service is down
            result["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            result["error"] = exc.message
            return result
        status: int = response["status"]
        result["status"] = status
        result["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        result["up"] = status == expected if expected is not None else 200 <= status < 400
        if not result["up"]:
            wanted = str(expected) if expected is not None else "2xx or 3xx"
            result["error"] = f"status {status}, expected {wanted}"
        return result
