"""Who may read the web map: nobody is asked on loopback; beyond it, HTTP basic or bearer auth.

The credentials come from the environment only, as every other credential of streamembed
(credentials.py): ``STREAMEMBED_SERVE_USER`` and ``STREAMEMBED_SERVE_PASSWORD`` (basic: what a
browser asks for itself) or ``STREAMEMBED_SERVE_TOKEN`` (``Authorization: Bearer``, for scripts).
Either is accepted where both are set. ``/healthz`` stays open for probes; it says nothing of the
outputs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from ...credentials import Secret

log = logging.getLogger(__name__)
OPEN_PATHS = ("/healthz",)
REALM = "streamembed"


@dataclass(frozen=True)
class ServeAuth:
    """The accepted credentials; ``enabled`` is False where none is set."""

    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeAuth:
        env = os.environ if env is None else env
        user, password = env.get("STREAMEMBED_SERVE_USER"), env.get("STREAMEMBED_SERVE_PASSWORD")
        if bool(user) != bool(password):
            raise ValueError(
                "set both STREAMEMBED_SERVE_USER and STREAMEMBED_SERVE_PASSWORD for basic auth "
                "(or neither)"
            )
        token = env.get("STREAMEMBED_SERVE_TOKEN")
        return cls(user or None, Secret(password) if password else None,
                   Secret(token) if token else None)  # fmt: skip

    @property
    def enabled(self) -> bool:
        return bool(self.token) or bool(self.user and self.password)

    def accepts(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries accepted credentials (compared in
        constant time)."""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.token:
            return hmac.compare_digest(value.encode(), self.token.reveal().encode())
        if scheme.lower() == "basic" and self.user and self.password:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            same_user = hmac.compare_digest(user.encode(), self.user.encode())
            same_password = hmac.compare_digest(password.encode(), self.password.reveal().encode())
            return same_user and same_password
        return False


class RequireAuth:
    """ASGI middleware: 401 for any request without accepted credentials (``/healthz`` open)."""

    def __init__(self, app: ASGIApp, auth: ServeAuth):
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization")
        if self.auth.accepts(header.decode("latin-1") if header else None):
            await self.app(scope, receive, send)
            return
        challenge = (
            f'Basic realm="{REALM}", charset="UTF-8"'
            if self.auth.user
            else f'Bearer realm="{REALM}"'
        )
        body = b'{"error": "authentication required"}'
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", challenge.encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, auth: ServeAuth, what: str) -> bool:
    """Log a warning when ``host`` is beyond loopback and no credential guards it; True if so."""
    if is_loopback(host) or auth.enabled:
        return False
    log.warning(
        "%s binds %s, beyond this machine, with no authentication: anyone who can reach it reads "
        "the outputs; set STREAMEMBED_SERVE_USER/STREAMEMBED_SERVE_PASSWORD or "
        "STREAMEMBED_SERVE_TOKEN, or bind 127.0.0.1 (docs/operations.md, Security)",
        what,
        host,
    )
    return True
