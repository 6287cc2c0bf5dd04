"""API-key authentication of ``/v1/*``, as vLLM's ``--api-key``: ``Authorization: Bearer <key>`` or a 401
``{"error": "Unauthorized"}``; other paths (``/health``, ``/version``, ``/metrics``) stay open.

A plain ASGI middleware (no per-request task or stream, unlike Starlette's ``BaseHTTPMiddleware``): it reads the
header of the request's scope and either answers the 401 itself or hands the request on untouched.
"""

from __future__ import annotations

import secrets

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class ApiKeyMiddleware:
    """Lets a ``/v1/*`` HTTP request through only with one of ``api_keys`` as its Bearer token."""

    def __init__(self, app: ASGIApp, api_keys: tuple[str, ...]):
        self.app, self.keys = app, [key.encode() for key in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") and not self._allowed(scope):
            await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        key = header[7:] if header[:7].lower() == b"bearer " else b""
        return any(secrets.compare_digest(key, k) for k in self.keys)


__all__ = ["ApiKeyMiddleware"]
