"""Request limits: the body size (a 413 before the body is parsed) and a per-key rate limit (429).

``BodyLimit`` is an ASGI middleware: a ``Content-Length`` above the limit is refused at once; a
body sent without one is read up to the limit and refused as soon as it passes it. Either way
the application never sees more than ``max_bytes``.

``RateLimiter`` is a token bucket per key name: ``rate`` requests per second on average, bursts
of up to ``burst``; thread-safe.
"""

from __future__ import annotations

import json
import threading
import time

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB


def error_body(status: int, message: str, field: str = "") -> bytes:
    """The JSON error document every refusal uses: {"error": {"status", "field", "message"}}."""
    return json.dumps({"error": {"status": status, "field": field, "message": message}}).encode()


class BodyLimit:
    """ASGI middleware: HTTP bodies above ``max_bytes`` get a 413 JSON error (the app is not called)."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES, on_reject=None):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.on_reject = on_reject

    async def _refuse(self, scope, send, size_text: str):
        if self.on_reject is not None:
            self.on_reject(scope)
        body = error_body(413, f"request body {size_text} is above the limit of {self.max_bytes} bytes", "body")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = None
        for k, v in scope.get("headers") or ():
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = None
        if length is not None and length > self.max_bytes:
            return await self._refuse(scope, send, f"of {length} bytes")
        chunks, total, more = [], 0, True
        while more:  # read the body here, never past the limit, then hand it to the app in one piece
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await self._refuse(scope, send, f"of more than {self.max_bytes} bytes")
            chunks.append(chunk)
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class RateLimiter:
    """Token bucket per key name: ``rate`` per second, ``burst`` at most; ``rate`` ≤ 0 turns it off."""

    def __init__(self, rate: float, burst: float):
        self.rate = float(rate)
        self.burst = max(float(burst), 1.0)
        self._buckets: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def take(self, name: str) -> float:
        """0 when the request may go ahead, else the seconds until a token is back (the request is refused)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            b = self._buckets.get(name)
            if b is None:
                b = self._buckets[name] = [self.burst, now]
            tokens = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
            if tokens >= 1.0:
                b[0] = tokens - 1.0
                return 0.0
            b[0] = tokens
            return (1.0 - tokens) / self.rate


__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyLimit", "RateLimiter", "error_body"]
