"""One FastAPI router per resource, included by `create_app` in the order of `ROUTERS` (that order is the
order of the OpenAPI schema's paths and of route matching).

    health       GET /healthz, GET /readyz                                  (no token)
    metrics      GET /metrics
    pools        POST /v1/pools, GET /v1/pools, GET /v1/pools/{pool_id}
    runs         /v1/runs: create, list, one, config, pause/resume/stop, iterations, queues
    pairs        GET /v1/runs/{run_id}/pairs, GET /v1/runs/{run_id}/pairs/export
    feedback     POST /v1/runs/{run_id}/feedback (thumbs up/down on single answers)
    dead_letters GET /v1/runs/{run_id}/dead-letters, POST .../dead-letters/requeue, .../{entry_id}/requeue
    checkpoints  GET /v1/runs/{run_id}/checkpoints[/{version}/archive | /{version}/files/{name}]
    events       GET /v1/runs/{run_id}/events (server-sent events)
"""

from __future__ import annotations

from fastapi import APIRouter

from sparring.services.api.routers import (
    checkpoints,
    dead_letters,
    events,
    feedback,
    health,
    metrics,
    pairs,
    pools,
    runs,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    metrics.router,
    pools.router,
    runs.router,
    pairs.router,
    feedback.router,
    dead_letters.router,
    checkpoints.router,
    events.router,
)
