"""`create_app`: builds the FastAPI app around an open Redis client — the run service and its scheduler
thread, the middleware (token gate, body caps, request counting), the exception handlers, the routers of
services/api/routers/ and the dashboard's static shell."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI

from sparring.services.api.errors import add_exception_handlers
from sparring.services.api.middleware import BodyLimit, request_counter
from sparring.services.api.routers import ROUTERS
from sparring.services.auth import TokenGate, TokenTable
from sparring.services.metrics import build_registry
from sparring.services.runs import RunService
from sparring.services.settings import ServiceSettings

log = logging.getLogger(__name__)

API_VERSION = "1"


def create_app(settings: ServiceSettings, client: redis.Redis, redis_url: str, scheduler: bool = True) -> FastAPI:
    service = RunService(settings, client, redis_url)
    registry, requests_total = build_registry(service)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        thread = None
        if scheduler:
            service.reconcile()  # re-attach runs left executing by a previous API process at once
            thread = threading.Thread(target=service.scheduler_loop, args=(stop,), name="scheduler", daemon=True)
            thread.start()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=5)

    app = FastAPI(
        title="sparring",
        version=API_VERSION,
        description="Online iterative self-play alignment: prompt pools, runs, iterations, pairs and checkpoints. "
        "Every /v1 route and /metrics need `Authorization: Bearer <token>`; read-only tokens may only GET.",
        lifespan=lifespan,
    )
    app.state.tokens = TokenTable(settings.api_tokens, settings.readonly_tokens)
    app.state.service = service  # read by the routers through services/api/deps.py
    app.state.registry = registry
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(TokenGate, tokens=app.state.tokens)  # outermost: unauthenticated requests stop here
    app.middleware("http")(request_counter(requests_total))
    add_exception_handlers(app)
    for router in ROUTERS:
        app.include_router(router)

    try:  # the dashboard's static shell (no data in it; every data call needs a token)
        from sparring.services.dashboard import mount_dashboard

        mount_dashboard(app)
    except ImportError:
        log.warning("dashboard assets are not installed; /dashboard is unavailable")

    return app
