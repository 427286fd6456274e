"""Request-size limit (413) as an ASGI middleware, and a bounded count of requests in flight (429)."""

from __future__ import annotations

import json
from typing import Any

from clara_plugins.server.errors import APIError, error_body

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyLimitMiddleware:
    """Read the whole body before the app sees it and answer 413 when it is larger than ``max_bytes``.

    Both a ``Content-Length`` over the limit and a chunked body that grows past it are refused; nothing is
    handed to the app, so an oversized request cannot change the store.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # disconnected before the body was read
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(send)
                return
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, send: Any) -> None:
        msg = f"request body is larger than the limit of {self.max_bytes} bytes"
        body = json.dumps(error_body(413, msg, None, "request_too_large")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives the buffered body once, then passes the client's later messages through."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class Slots:
    """At most ``limit`` requests hold a slot at once; one more gets 429 instead of waiting without bound."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def acquire(self) -> None:
        """Take a slot (the event loop is single-threaded, so no lock is needed).

        Raises:
            APIError: 429 when every slot is taken.
        """
        if self.used >= self.limit:
            msg = f"server busy: {self.limit} requests are already in flight; retry shortly"
            raise APIError(429, msg, None, "too_many_requests")
        self.used += 1

    def release(self) -> None:
        """Give a slot back."""
        self.used = max(0, self.used - 1)
