"""The sparring HTTP API (FastAPI), versioned under /v1, plus /healthz, /readyz, /metrics and /dashboard.

`create_app(settings, client, redis_url)` builds the app around an open Redis client; `sparring serve`
(services/client.py) connects Redis and Ray and runs it with uvicorn. Every /v1 route and /metrics need a
bearer token (services/auth.py); /healthz and /readyz are open. Errors are JSON `{"detail": str}` and, for
refused input, `"problems": [str, ...]` naming every bad field or line.

    app.py          create_app: service, scheduler thread, middleware, handlers, routers, dashboard
    schemas.py      pydantic request/response bodies and the declared error responses
    deps.py         dependencies: the app's run service and metrics registry, token checks, path params
    errors.py       error bodies and the exception -> status mapping
    middleware.py   request body caps (413) and request counting for /metrics
    routers/        one router per resource (health, metrics, pools, runs, pairs, checkpoints, events)
"""

from sparring.services.api.app import API_VERSION, create_app

__all__ = ["API_VERSION", "create_app"]
