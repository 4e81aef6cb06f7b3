"""Running the service: uvicorn on one process, the session loaded in the background.

SIGTERM (and SIGINT) stop it gracefully: the listening socket closes, requests in flight are
answered (up to ``grace_seconds``), then the process exits 0. SIGHUP reloads the session in the
background (as ``POST /v1/admin/reload`` does) without dropping a request. If the first session
cannot be loaded the server stops and ``serve`` returns 2.
"""

from __future__ import annotations

import logging
import signal

from .app import Service, ServiceConfig, create_app
from .auth import KeyRing

log = logging.getLogger("gpurisk.service")


def serve(build, keys: KeyRing, config: ServiceConfig, host: str = "127.0.0.1", port: int = 8080,
          grace_seconds: float = 30.0, access_log: bool = True) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean stop, 2 if the first session could not be loaded."""
    import uvicorn

    from ..whatif import SessionHolder

    service = Service(SessionHolder(), keys, config, build)
    app = create_app(service)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="on", access_log=access_log,
                                           timeout_graceful_shutdown=grace_seconds, log_config=None,
                                           server_header=False))

    def fatal():
        server.should_exit = True

    service.on_fatal = fatal
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the service speaks plain HTTP; put TLS in front of it", host)
    log.info("gpurisk serve on http://%s:%d (%d API key(s): %s)", host, port, len(keys), ", ".join(keys.names()))
    # uvicorn answers SIGTERM gracefully, then raises it again under the handler it found: make that a
    # clean exit 0 (a stop asked for is not a failure), also for a SIGTERM before the server is up
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 2 if service.load_error else 0


def _stopped(signum, frame):
    log.info("stopped by signal %d", signum)
    raise SystemExit(0)


__all__ = ["serve"]
