"""The what-if HTTP service (``gpurisk serve``): a small read-only API over a warm ``gpurisk.whatif`` session.

Optional extra ``serve`` (FastAPI, uvicorn, prometheus_client). ``app.py`` holds the routes,
``auth.py`` the API keys, ``limits.py`` the body-size and rate limits, ``metrics.py`` the
Prometheus metrics, ``loader.py`` building a session from a run or a job, ``server.py`` running
it with graceful shutdown and reload. docs/service.md describes the API and its operation.
"""
