"""Runs: `POST /v1/runs` (create, idempotent with an Idempotency-Key), `GET /v1/runs` (list),
`GET /v1/runs/{run_id}` (one), `GET /v1/runs/{run_id}/config`, `POST /v1/runs/{run_id}/pause`, `/resume`
and `/stop` (lifecycle; 409 where the state forbids it), `GET /v1/runs/{run_id}/iterations` and
`GET /v1/runs/{run_id}/queues`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse

from sparring.services.api.deps import READ, RUN_ID, WRITE, Service
from sparring.services.api.schemas import (
    ERRORS,
    NOT_FOUND,
    CreateRun,
    IterationList,
    Problem,
    Queues,
    Run,
    RunList,
)

router = APIRouter(tags=["runs"])


@router.post(
    "/v1/runs",
    response_model=Run,
    status_code=201,
    summary="Create a run (queued; it starts when the service has room)",
    dependencies=WRITE,
    responses={
        **ERRORS,
        200: {"model": Run, "description": "replay of an earlier request with the same Idempotency-Key"},
        400: {"model": Problem, "description": "the body could not be parsed at all (e.g. not UTF-8)"},
        409: {"model": Problem, "description": "Idempotency-Key reused for a different request"},
        413: {"model": Problem, "description": "body too large"},
        422: {"model": Problem, "description": "invalid config, disallowed model path, unknown pool"},
    },
)
def create_run(
    body: CreateRun,
    service: Service,
    idempotency_key: Annotated[
        str | None, Header(max_length=200, description="same key + same body = same run, created once")
    ] = None,
) -> Any:
    run, created = service.create_run(body.config, body.pool_id, idempotency_key)
    return JSONResponse(status_code=201 if created else 200, content=run)


@router.get("/v1/runs", response_model=RunList, summary="List runs", dependencies=READ, responses=ERRORS)
def list_runs(service: Service) -> dict[str, Any]:
    return {"runs": service.list_runs()}


@router.get("/v1/runs/{run_id}", response_model=Run, summary="One run", dependencies=READ, responses={**ERRORS, **NOT_FOUND})
def get_run(run_id: RUN_ID, service: Service) -> dict[str, Any]:
    return service.view(run_id)


@router.get(
    "/v1/runs/{run_id}/config",
    summary="The run's resolved config",
    dependencies=READ,
    responses={**ERRORS, **NOT_FOUND},
)
def get_config(run_id: RUN_ID, service: Service) -> dict[str, Any]:
    return service.config(run_id)


LIFECYCLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    **NOT_FOUND,
    409: {"model": Problem, "description": "the run's state does not allow it"},
}


@router.post(
    "/v1/runs/{run_id}/pause",
    response_model=Run,
    status_code=202,
    summary="Pause at the next iteration boundary (running -> pausing -> paused)",
    dependencies=WRITE,
    responses=LIFECYCLE_RESPONSES,
)
def pause_run(run_id: RUN_ID, service: Service) -> dict[str, Any]:
    return service.pause(run_id)


@router.post(
    "/v1/runs/{run_id}/resume",
    response_model=Run,
    status_code=202,
    summary="Resume a paused or failed run from its last recorded iteration",
    description="A failed run resumes only when the checkpoint of its last recorded iteration is intact "
    "(config, weights and trainer state); otherwise 409 lists each missing file.",
    dependencies=WRITE,
    responses={
        **LIFECYCLE_RESPONSES,
        409: {"model": Problem, "description": "the run's state does not allow it, or its last checkpoint is not intact"},
    },
)
def resume_run(run_id: RUN_ID, service: Service) -> dict[str, Any]:
    return service.resume(run_id)


@router.post(
    "/v1/runs/{run_id}/stop",
    response_model=Run,
    status_code=202,
    summary="Stop (at the next iteration boundary if executing); a stopped run cannot resume",
    dependencies=WRITE,
    responses=LIFECYCLE_RESPONSES,
)
def stop_run(run_id: RUN_ID, service: Service) -> dict[str, Any]:
    return service.stop(run_id)


@router.get(
    "/v1/runs/{run_id}/iterations",
    response_model=IterationList,
    summary="Every recorded iteration",
    dependencies=READ,
    responses={**ERRORS, **NOT_FOUND},
)
def iterations(run_id: RUN_ID, service: Service) -> dict[str, Any]:
    return {"iterations": [r.model_dump(mode="json") for r in service.iterations(run_id)]}


@router.get(
    "/v1/runs/{run_id}/queues",
    response_model=Queues,
    summary="Unconsumed entries per stream, now",
    dependencies=READ,
    responses={**ERRORS, **NOT_FOUND},
)
def queues(run_id: RUN_ID, service: Service) -> dict[str, Any]:
    return {"queues": service.queue_depths(run_id)}
