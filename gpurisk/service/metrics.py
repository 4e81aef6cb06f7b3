"""The service's Prometheus metrics (``GET /metrics``, text format), on a registry of its own.

- ``gpurisk_http_requests_total{route, method, status}``: requests answered;
- ``gpurisk_http_request_duration_seconds{route, method}``: latency histogram (s);
- ``gpurisk_http_requests_in_flight``: requests being served now;
- ``gpurisk_whatif_seconds{kind}``: time in the what-if calculation itself (``whatif``, ``margin``);
- ``gpurisk_session_age_seconds``, ``gpurisk_session_ready``, ``gpurisk_session_load_seconds``,
  ``gpurisk_session_reloads_total{result}``;
- ``gpurisk_rate_limited_total{key}``: requests refused by the rate limit, by key *name*.

``route`` is the route template (``/v1/accounts/{account_id}``), never the raw path, so the
label set stays small; an unmatched path counts as ``unmatched``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Metrics:
    """The instruments, and the ASGI middleware that counts every HTTP request."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, holder):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("gpurisk_http_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram("gpurisk_http_request_duration_seconds", "HTTP request latency (seconds)",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("gpurisk_http_requests_in_flight", "HTTP requests being served", registry=r)
        self.compute = Histogram("gpurisk_whatif_seconds", "time in the what-if calculation (seconds)", ["kind"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.reloads = Counter("gpurisk_session_reloads", "session reloads", ["result"], registry=r)
        self.rate_limited = Counter("gpurisk_rate_limited", "requests refused by the rate limit", ["key"], registry=r)
        age = Gauge("gpurisk_session_age_seconds", "seconds since the current session was loaded", registry=r)
        age.set_function(lambda: time.time() - holder.current.loaded_at if holder.current is not None else float("nan"))
        ready = Gauge("gpurisk_session_ready", "1 once a session is loaded", registry=r)
        ready.set_function(lambda: 1.0 if holder.current is not None else 0.0)
        load = Gauge("gpurisk_session_load_seconds", "seconds the current session took to load", registry=r)
        load.set_function(lambda: holder.current.load_seconds if holder.current is not None else float("nan"))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app):
        """Wrap ``app`` (ASGI) so every HTTP request is counted and timed by route template."""
        metrics = self

        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            status = {"code": 500}

            async def watch(msg):
                if msg["type"] == "http.response.start":
                    status["code"] = msg["status"]
                await send(msg)

            t = time.perf_counter()
            metrics.in_flight.inc()
            try:
                await app(scope, receive, watch)
            finally:
                metrics.in_flight.dec()
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                method = scope.get("method", "")
                metrics.latency.labels(path, method).observe(time.perf_counter() - t)
                metrics.requests.labels(path, method, str(status["code"])).inc()

        return counted


__all__ = ["Metrics", "LATENCY_BUCKETS"]
