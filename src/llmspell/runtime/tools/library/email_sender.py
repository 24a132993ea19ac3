"""A tool that sends email through one configured SMTP server (:mod:`smtplib`).

The server is fixed by configuration; the caller only gives recipients, a subject and a
text and/or HTML body. Recipients are validated and limited in number. The SMTP host gets
the same address checks as :mod:`~llmspell.runtime.tools.library.http_request` (loopback
and private addresses refused unless allowed), and the connection goes to the checked
address itself (with the host name kept for TLS verification). Credentials are never sent
over an unencrypted connection to another machine, and the password never appears in
results or errors.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Final, Literal

from llmspell.core.errors import (
    ConfigurationError,
    SandboxViolationError,
    ToolExecutionError,
    ToolTimeoutError,
)
from llmspell.runtime.tools.base import SecurityLevel, SideEffect, Tool
from llmspell.runtime.tools.library.http_request import address_refusal

__all__ = ["EmailSenderTool", "valid_address"]

_NAME = "email_sender"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS: Final = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    rf"@{_LABEL}(?:\.{_LABEL})+$"
)
TlsMode = Literal["none", "starttls", "ssl"]


def valid_address(address: str) -> bool:
    """True for a plain ``local@domain.tld`` address (no display name, no line breaks)."""
    return len(address) <= 254 and len(address.split("@", 1)[0]) <= 64 and bool(
        _ADDRESS.match(address))


class _PinnedSMTP(smtplib.SMTP):
    """SMTP that connects to a checked address while keeping the host name for TLS."""

    pinned = ""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self.pinned, port), timeout, self.source_address)


class _PinnedSMTPSSL(smtplib.SMTP_SSL):
    """SMTP over TLS that connects to a checked address; the certificate is verified
    against the host name."""

    pinned = ""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.pinned, port), timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=self._host)  # type: ignore[attr-defined]


_ADDRESS_LIST: Final = {"type": "array", "maxItems": 100,
                        "items": {"type": "string", "minLength": 3, "maxLength": 254}}


class EmailSenderTool(Tool):
    """Send a text and/or HTML email through the configured SMTP server."""

    name = _NAME
    description = (
        "Send an email. 'to' (list of addresses, required), optional 'cc', 'bcc', "
        "'reply_to', 'subject', and 'text' and/or 'html' body. Returns sent, message_id, "
        "the number of recipients and any the server refused."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "to": {**_ADDRESS_LIST, "minItems": 1, "description": "Recipient addresses."},
            "cc": {**_ADDRESS_LIST, "description": "Copy recipients."},
            "bcc": {**_ADDRESS_LIST, "description": "Hidden recipients."},
            "reply_to": {"type": "string", "minLength": 3, "maxLength": 254,
                         "description": "Reply-To address."},
            "subject": {"type": "string", "maxLength": 998, "pattern": "^[^\\r\\n]*$",
                        "description": "The subject line."},
            "text": {"type": "string", "maxLength": 1048576,
                     "description": "Plain-text body."},
            "html": {"type": "string", "maxLength": 1048576, "description": "HTML body."},
        },
        "required": ["to"],
        "anyOf": [{"required": ["text"]}, {"required": ["html"]}],
        "additionalProperties": False,
    }
    security_level = SecurityLevel.RESTRICTED
    side_effects = frozenset({SideEffect.EMAIL})
    blocking = True

    def __init__(
        self,
        *,
        host: str,
        port: int,
        from_addr: str,
        username: str | None = None,
        password: str | None = None,
        tls: TlsMode = "starttls",
        allow_loopback: bool = False,
        allow_private: bool = False,
        max_recipients: int = 20,
        timeout: float = 30.0,
    ) -> None:
        if tls not in ("none", "starttls", "ssl"):
            raise ConfigurationError(f"invalid tls mode {tls!r}",
                                     hint="use 'none', 'starttls' or 'ssl'")
        if not host or not 0 < port < 65536:
            raise ConfigurationError("EmailSenderTool needs an SMTP host and a port 1-65535")
        if not valid_address(from_addr):
            raise ConfigurationError(f"invalid from_addr {from_addr!r}",
                                     hint="use a plain address like bot@example.com")
        if (username is None) != (password is None):
            raise ConfigurationError("give both username and password, or neither")
        if max_recipients < 1 or timeout <= 0:
            raise ConfigurationError("max_recipients and timeout must be positive")
        self.host = host
        self.port = port
        self.from_addr = from_addr
        self.username = username
        self._password = password
        self.tls: TlsMode = tls
        self.allow_loopback = allow_loopback
        self.allow_private = allow_private
        self.max_recipients = max_recipients
        self.smtp_timeout = timeout
        self.timeout = timeout + 5.0

    def __repr__(self) -> str:
        return (f"EmailSenderTool(host={self.host!r}, port={self.port}, tls={self.tls!r}, "
                f"username={self.username!r}, password={'***' if self._password else None})")

    def _scrub(self, text: str) -> str:
        if self._password:
            text = text.replace(self._password, "***")
        return text[:500]

    def _fail(self, message: str, hint: str | None = None) -> ToolExecutionError:
        return ToolExecutionError(_NAME, self._scrub(message), hint=hint)

    def _address(self) -> str:
        """A checked address of the SMTP host; raise when any address is refused."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise self._fail(f"cannot resolve the SMTP host {self.host!r}: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
        for address in addresses:
            reason = address_refusal(address, allow_loopback=self.allow_loopback,
                                     allow_private=self.allow_private)
            if reason is not None:
                raise SandboxViolationError(
                    _NAME, f"refusing to connect to the SMTP host {self.host!r}: {reason}",
                    hint="configure EmailSenderTool(allow_loopback=True / allow_private=True) "
                    "for a local or internal mail server")
        if not addresses:
            raise self._fail(f"the SMTP host {self.host!r} resolved to no address")
        return addresses[0]

    def _recipients(self, params: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
        lists: list[list[str]] = []
        seen: set[str] = set()
        for field in ("to", "cc", "bcc"):
            kept: list[str] = []
            for address in params.get(field, []):
                if not valid_address(address):
                    raise self._fail(f"invalid email address {address!r} in {field!r}",
                                     hint="use plain addresses like name@example.com")
                if address.lower() not in seen:
                    seen.add(address.lower())
                    kept.append(address)
            lists.append(kept)
        if len(seen) > self.max_recipients:
            raise SandboxViolationError(
                _NAME, f"{len(seen)} recipients is more than the limit of "
                f"{self.max_recipients}", hint="send fewer, or raise max_recipients")
        return lists[0], lists[1], lists[2]

    def build(self, params: dict[str, Any]) -> tuple[EmailMessage, list[str]]:
        """The message and its envelope recipients for ``params`` (validated)."""
        to, cc, bcc = self._recipients(params)
        reply_to = params.get("reply_to")
        if reply_to is not None and not valid_address(reply_to):
            raise self._fail(f"invalid reply_to address {reply_to!r}")
        msg = EmailMessage()
        msg["From"] = self.from_addr
        msg["To"] = ", ".join(to)
        if cc:
            msg["Cc"] = ", ".join(cc)
        if reply_to:
            msg["Reply-To"] = reply_to
        msg["Subject"] = params.get("subject", "")
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=self.from_addr.rsplit("@", 1)[1])
        text, html = params.get("text"), params.get("html")
        if text is not None:
            msg.set_content(text)
            if html is not None:
                msg.add_alternative(html, subtype="html")
        else:
            msg.set_content(html or "", subtype="html")
        return msg, [*to, *cc, *bcc]

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Send the message described by ``params``; see the class description."""
        msg, recipients = self.build(params)
        address = self._address()
        loopback = address_refusal(address) is not None and address_refusal(
            address, allow_loopback=True) is None
        if self.username is not None and self.tls == "none" and not loopback:
            raise SandboxViolationError(
                _NAME, "refusing to send SMTP credentials over an unencrypted connection",
                hint="use tls='starttls' or tls='ssl'")
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        try:
            if self.tls == "ssl":
                ssl_client = _PinnedSMTPSSL(timeout=self.smtp_timeout, context=context)
                ssl_client.pinned = address
                smtp = ssl_client
            else:
                plain = _PinnedSMTP(timeout=self.smtp_timeout)
                plain.pinned = address
                smtp = plain
            with smtp:
                smtp.connect(self.host, self.port)
                smtp.ehlo()
                if self.tls == "starttls":
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if self.username is not None and self._password is not None:
                    smtp.login(self.username, self._password)
                refused = smtp.send_message(msg, from_addr=self.from_addr,
                                            to_addrs=recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            raise self._fail("the server refused every recipient: "
                             + ", ".join(sorted(exc.recipients))) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise self._fail(f"SMTP login failed ({exc.smtp_code})",
                             hint="check the configured username and password") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise self._fail(f"the SMTP server does not support this: {exc}",
                             hint="check the tls mode the server expects") from None
        except TimeoutError:
            raise ToolTimeoutError(_NAME, f"the SMTP server did not answer within "
                                   f"{self.smtp_timeout:g} s") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise self._fail(f"sending failed: {type(exc).__name__}: {exc}",
                             hint=f"SMTP server {self.host}:{self.port}") from None
        return {"sent": True, "message_id": str(msg["Message-ID"]),
                "recipients": len(recipients), "refused": sorted(refused)}
