"""A run's dead letters: `GET /v1/runs/{run_id}/dead-letters` (each with its prompt id, stage, reason and
delivery count), `POST /v1/runs/{run_id}/dead-letters/requeue` (all, or `entry_ids`) and
`POST /v1/runs/{run_id}/dead-letters/{entry_id}/requeue` (one). A re-queued letter's prompt is dispatched
again in the run's next iteration (services/dead_letters.py). Tagged `runs`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi import Path as PathParam

from sparring.services.api.deps import READ, RUN_ID, WRITE, Service
from sparring.services.api.errors import error_response
from sparring.services.api.schemas import ERRORS, NOT_FOUND, DeadLetterList, Problem, Requeue, RequeueResult
from sparring.services.dead_letters import DeadLetterNotFound, dead_letters, requeue

router = APIRouter(tags=["runs"])

ENTRY_ID = Annotated[str, PathParam(pattern=r"^\d{1,20}-\d{1,20}$", description="the dead letter's entry id")]
REQUEUE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    **NOT_FOUND,
    400: {"model": Problem, "description": "the body could not be parsed at all (e.g. not JSON, not UTF-8)"},
    409: {"model": Problem, "description": "the run will not run another iteration, or the letter has no prompt"},
}


@router.get(
    "/v1/runs/{run_id}/dead-letters",
    response_model=DeadLetterList,
    summary="Entries a stage gave up on, with prompt id, stage and reason",
    dependencies=READ,
    responses={**ERRORS, **NOT_FOUND},
)
def list_dead_letters(run_id: RUN_ID, service: Service) -> dict[str, Any]:
    return {"dead_letters": dead_letters(service, run_id)}


@router.post(
    "/v1/runs/{run_id}/dead-letters/requeue",
    response_model=RequeueResult,
    summary="Re-queue dead letters (all, or `entry_ids`): their prompts run again in the next iteration",
    dependencies=WRITE,
    responses=REQUEUE_RESPONSES,
)
def requeue_dead_letters(run_id: RUN_ID, service: Service, body: Annotated[Requeue | None, Body()] = None) -> Any:
    try:
        return requeue(service, run_id, None if body is None else body.entry_ids)
    except DeadLetterNotFound as err:
        return error_response(404, str(err))


@router.post(
    "/v1/runs/{run_id}/dead-letters/{entry_id}/requeue",
    response_model=RequeueResult,
    summary="Re-queue one dead letter: its prompt runs again in the next iteration",
    dependencies=WRITE,
    responses=REQUEUE_RESPONSES,
)
def requeue_dead_letter(run_id: RUN_ID, entry_id: ENTRY_ID, service: Service) -> Any:
    try:
        return requeue(service, run_id, [entry_id])
    except DeadLetterNotFound as err:
        return error_response(404, str(err))
