"""Refuse oversized control-plane bodies before any parsing (413, same error shape)."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from ik_contracts import relay
from manager.errors import BodyTooLarge


class BodyLimitMiddleware:
    """Caps request bodies under ``prefix``; data-plane streams are left alone, and so are the
    requests ``exempt`` picks (a route that streams its body and caps it itself)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        prefix: str = "/api",
        exempt: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(self.prefix)
            or (self.exempt is not None and self.exempt(scope))
        ):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        try:
            body = await relay.read_body(receive, self.max_bytes)
        except relay.BodyTooLarge:
            await self._refuse(send)
            return
        await self.app(scope, relay.replayed(body, receive), send)

    async def _refuse(self, send: Send) -> None:
        problem = BodyTooLarge(f"request body is larger than {self.max_bytes} bytes")
        payload = json.dumps(problem.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": problem.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
