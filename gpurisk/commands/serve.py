"""``gpurisk serve --run RUN_DIR | --job JOB``: the pre-trade what-if HTTP service (docs/service.md)."""

from __future__ import annotations

from ..errors import ConfigError


def add_parser(subparsers):
    from ..backends import CHOICES

    p = subparsers.add_parser(
        "serve", help="HTTP what-if service on a warm session (needs the 'serve' extra)",
        description="Serve pre-trade what-if margin over HTTP: POST /v1/whatif, POST /v1/margin, "
                    "GET /v1/accounts/{id}, /healthz, /readyz, /metrics. Read-only. API keys from "
                    "GPURISK_API_KEYS (name:key[:admin],...) or --api-keys-file. See docs/service.md.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_DIR", help="a succeeded run folder, or an output folder (its latest run)")
    src.add_argument("--job", metavar="JOB", help="a margin job file (its book, models and parameters)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--backend", choices=list(CHOICES), help="compute backend (default: the run's or job's)")
    p.add_argument("--api-keys-file", metavar="FILE", help="keys file, one name:key[:admin] per line, mode 600")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--max-trades", type=int, default=200, help="most trades or positions per request (default 200)")
    p.add_argument("--rate-limit", type=float, default=200.0,
                   help="requests per second per API key, on average (default 200; 0 turns it off)")
    p.add_argument("--burst", type=float, default=400.0, help="requests a key may send at once (default 400)")
    p.add_argument("--grace-seconds", type=float, default=30.0,
                   help="on SIGTERM, how long requests in flight may take to finish (default 30)")
    p.add_argument("--quiet", action="store_true", help="no access log; only warnings")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"gpurisk serve needs the optional extra 'serve' ({', '.join(missing)} missing): "
                          "pip install 'gpurisk[serve]'")
    from ..service.app import ServiceConfig
    from ..service.auth import load_keys
    from ..service.loader import builder
    from ..service.server import serve
    from .run import configure_logging

    if not (0 < args.port < 65536):
        raise ConfigError(f"--port must be 1-65535, got {args.port}")
    if args.max_body_bytes < 1024:
        raise ConfigError(f"--max-body-bytes must be at least 1024, got {args.max_body_bytes}")
    if not (1 <= args.max_trades <= 10_000):
        raise ConfigError(f"--max-trades must be 1-10000, got {args.max_trades}")
    if args.rate_limit < 0 or args.burst < 1 or args.grace_seconds < 0:
        raise ConfigError("--rate-limit and --grace-seconds must be >= 0 and --burst >= 1")
    keys = load_keys(args.api_keys_file)
    build = builder(args.run, args.job, args.backend)
    configure_logging(args.quiet)
    import logging

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = logging.getLogger("gpurisk").handlers
        lg.setLevel(logging.WARNING if args.quiet else logging.INFO)
        lg.propagate = False
    config = ServiceConfig(max_body_bytes=args.max_body_bytes, max_trades=args.max_trades,
                           rate_limit=args.rate_limit, burst=args.burst)
    return serve(build, keys, config, args.host, args.port, args.grace_seconds, access_log=not args.quiet)
