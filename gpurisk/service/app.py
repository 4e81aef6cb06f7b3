"""The HTTP API (FastAPI): what-if, ad-hoc margin, account look-up, health, metrics, reload.

Every route but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer KEY`` (``auth.py``);
``POST /v1/admin/reload`` needs an admin key. Errors are one JSON document,
``{"error": {"status", "field", "message"}}``, with ``field`` naming the input at fault
(``trades[0].quantity``); bad input is always a 4xx, and an unexpected failure a 500 whose body
says only that (the traceback goes to the server log). The service is read-only: no route changes
the book or runs a batch; a reload rebuilds the session from the same run or job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..whatif import Figures, ReloadBusy, WhatIfError, margin_of, whatif
from .auth import Caller, KeyRing
from .limits import DEFAULT_MAX_BODY_BYTES, BodyLimit, RateLimiter, error_body
from .metrics import Metrics

log = logging.getLogger("gpurisk.service")

WHATIF_FIELDS = ("account_id", "trades", "models", "attribution")
MARGIN_FIELDS = ("positions", "balances", "models")
TRADE_FIELDS = ("instrument_id", "quantity", "instrument")


@dataclass(frozen=True)
class ServiceConfig:
    """Limits of the service: body bytes (413 above), trades per request, per-key rate (requests/s) and burst."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_trades: int = 200
    rate_limit: float = 200.0
    burst: float = 400.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str = "", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


def _error(status: int, message: str, field: str = "", headers=None) -> Response:
    return Response(error_body(status, " ".join(str(message).split()), field), status_code=status,
                    media_type="application/json", headers=headers)


def _no_constants(name):
    raise ValueError(f"{name} is not a JSON number")


class Service:
    """The state behind the routes: the session holder, keys, limits, metrics and the reload hook."""

    def __init__(self, holder, keys: KeyRing, config: ServiceConfig, build=None, metrics: Metrics | None = None):
        self.holder = holder
        self.keys = keys
        self.config = config
        self.build = build
        self.metrics = metrics or Metrics(holder)
        self.limiter = RateLimiter(config.rate_limit, config.burst)
        self.load_error: str | None = None
        self.on_fatal = None  # called when the first session cannot be loaded (the server then exits)

    # ------------------------------------------------------------------ session loading

    def load_first(self) -> None:
        """Build the first session (in a thread, while health checks answer); fatal on failure."""
        try:
            t = time.perf_counter()
            s = self.build()
            self.holder.swap(s)
            log.info("session ready: %s accounts, as of %s, models %s, backend %s (%.1f s)", f"{s.book.n_accounts:,}",
                     s.as_of, ", ".join(s.models), s.engine.name, time.perf_counter() - t)
        except Exception as exc:  # noqa: BLE001 - any failure to load is fatal, in one line
            self.load_error = " ".join(str(exc).split())[:500] or type(exc).__name__
            log.error("cannot load the session: %s", self.load_error)
            if self.on_fatal is not None:
                self.on_fatal()

    def reload(self, reason: str):
        """Rebuild the session from its run or job and swap it in; the old one serves meanwhile."""
        if self.build is None:
            raise ApiError(503, "this service has no session source to reload from")
        t = time.perf_counter()
        try:
            s = self.holder.reload(self.build)
        except ReloadBusy as exc:
            self.metrics.reloads.labels("busy").inc()
            raise ApiError(409, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a failed reload keeps the old session serving
            self.metrics.reloads.labels("failed").inc()
            msg = " ".join(str(exc).split())[:500] or type(exc).__name__
            log.error("session reload (%s) failed: %s; the previous session keeps serving", reason, msg)
            raise ApiError(500, f"reload failed: {msg}; the previous session keeps serving") from None
        self.metrics.reloads.labels("ok").inc()
        log.info("session reloaded (%s): as of %s, %s accounts (%.1f s)", reason, s.as_of, f"{s.book.n_accounts:,}",
                 time.perf_counter() - t)
        return s

    def reload_in_background(self, reason: str) -> None:
        def run():
            try:
                self.reload(reason)
            except ApiError as exc:
                if exc.status == 409:
                    log.warning("session reload (%s) skipped: %s", reason, exc.message)

        threading.Thread(target=run, name="gpurisk-reload", daemon=True).start()

    # ------------------------------------------------------------------ request helpers

    def caller(self, request: Request, admin: bool = False) -> Caller:
        who = self.keys.check(request.headers.get("authorization"))
        if who is None:
            raise ApiError(401, "missing or unknown API key: send Authorization: Bearer KEY", "authorization",
                           {"WWW-Authenticate": "Bearer"})
        if admin and not who.admin:
            raise ApiError(403, f"key {who.name} may not do this: it needs an admin key", "authorization")
        wait = self.limiter.take(who.name)
        if wait > 0:
            self.metrics.rate_limited.labels(who.name).inc()
            raise ApiError(429, f"rate limit of key {who.name} exceeded ({self.config.rate_limit:g} requests/s)",
                           "authorization", {"Retry-After": str(max(1, math.ceil(wait)))})
        return who

    def session(self):
        s = self.holder.current
        if s is None:
            raise ApiError(503, "the session is still loading; retry when /readyz says ready", "",
                           {"Retry-After": "5"})
        return s

    @staticmethod
    async def body(request: Request, allowed) -> dict:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "send the body as application/json", "content-type")
        raw = await request.body()
        try:
            data = json.loads(raw, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON ({exc})", "body") from None
        if not isinstance(data, dict):
            raise ApiError(422, "the body must be a JSON object", "body")
        extra = sorted(set(data) - set(allowed))
        if extra:
            raise ApiError(422, f"unknown field {extra[0]!r}; allowed: {', '.join(allowed)}", extra[0])
        return data

    def trades(self, items, where: str) -> list:
        if not isinstance(items, list):
            raise ApiError(422, f"{where} must be a list of trades", where)
        if not items:
            raise ApiError(422, f"{where} is empty: give at least one trade", where)
        if len(items) > self.config.max_trades:
            raise ApiError(422, f"{where} has {len(items)} entries; at most {self.config.max_trades} are allowed",
                           where)
        for j, t in enumerate(items):
            w = f"{where}[{j}]"
            if not isinstance(t, dict):
                raise ApiError(422, f"{w} must be an object with instrument_id and quantity", w)
            extra = sorted(set(t) - set(TRADE_FIELDS))
            if extra:
                raise ApiError(422, f"{w}: unknown field {extra[0]!r}; allowed: {', '.join(TRADE_FIELDS)}",
                               f"{w}.{extra[0]}")
            if "quantity" not in t:
                raise ApiError(422, f"{w}.quantity is required", f"{w}.quantity")
        return items


def _figures(f: Figures) -> dict:
    out = {"im": f.im, "mm": f.mm, "equity": f.equity, "excess": f.excess, "status": f.status,
           "call_amount": f.call_amount}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def create_app(service: Service, handle_sighup: bool = True):
    """The ASGI application: metrics ∘ body limit ∘ FastAPI routes."""

    @asynccontextmanager
    async def lifespan(app):
        if handle_sighup and hasattr(signal, "SIGHUP"):
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, service.reload_in_background, "SIGHUP")
            except (NotImplementedError, RuntimeError):  # not the main thread (tests), or no signals here
                pass
        if service.holder.current is None and service.build is not None:
            threading.Thread(target=service.load_first, name="gpurisk-load", daemon=True).start()
        yield

    app = FastAPI(title="gpurisk what-if", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(WhatIfError)
    async def _whatif_error(request, exc: WhatIfError):
        return _error(exc.status, str(exc), exc.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        msg = {404: "no such route", 405: "method not allowed on this route"}.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, msg, "", getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return _error(500, "internal error; the server log has the details")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        s = service.holder.current
        if s is None:
            body = {"ready": False, "error": service.load_error} if service.load_error else {"ready": False}
            return JSONResponse(body, status_code=503)
        return {"ready": True, "as_of": s.as_of, "loaded_at": s.loaded_at}

    @app.get("/metrics")
    async def metrics(request: Request):
        service.caller(request)
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.get("/v1/session")
    async def session_info(request: Request):
        service.caller(request)
        return service.session().describe()

    @app.post("/v1/whatif")
    async def post_whatif(request: Request):
        service.caller(request)
        data = await service.body(request, WHATIF_FIELDS)
        if "account_id" not in data:
            raise ApiError(422, "account_id is required", "account_id")
        trades = service.trades(data.get("trades"), "trades")
        attribution = data.get("attribution", False)
        if not isinstance(attribution, bool):
            raise ApiError(422, "attribution must be true or false", "attribution")
        s = service.session()
        t = time.perf_counter()
        res = await run_in_threadpool(whatif, s, data["account_id"], trades, data.get("models"), attribution)
        service.metrics.compute.labels("whatif").observe(time.perf_counter() - t)
        out = res.as_dict()
        out["as_of"] = s.as_of
        return out

    @app.post("/v1/margin")
    async def post_margin(request: Request):
        service.caller(request)
        data = await service.body(request, MARGIN_FIELDS)
        positions = service.trades(data.get("positions"), "positions")
        s = service.session()
        t0 = time.perf_counter()
        res = await run_in_threadpool(margin_of, s, positions, data.get("balances", []), data.get("models"))
        service.metrics.compute.labels("margin").observe(time.perf_counter() - t0)
        models = {}
        for label, r in res.items():
            if isinstance(r, Figures):
                models[label] = {"house": _figures(r)}
            else:
                models[label] = {"venues": {v: {**_figures(f), "methodology": m} for v, (m, f) in r.items()}}
        house = next((m["house"] for m in models.values() if "house" in m), None)
        venues = next((m["venues"] for m in models.values() if "venues" in m), {})
        return {"house": house, "venues": venues, "models": models, "currency": "USD", "as_of": s.as_of,
                "elapsed_us": round((time.perf_counter() - t0) * 1e6, 1)}

    @app.get("/v1/accounts/{account_id}")
    async def get_account(account_id: str, request: Request):
        service.caller(request)
        s = service.session()
        s.account_index(account_id)
        return {"account_id": account_id, "as_of": s.as_of, "source": s.source,
                "models": {label: m.rows_of(account_id) for label, m in s.models.items()}}

    @app.post("/v1/admin/reload")
    async def admin_reload(request: Request):
        who = service.caller(request, admin=True)
        s = await run_in_threadpool(service.reload, f"POST by {who.name}")
        return {"reloaded": True, "session": s.describe()}

    return service.metrics.middleware(BodyLimit(app, service.config.max_body_bytes))


__all__ = ["ServiceConfig", "Service", "ApiError", "create_app"]
