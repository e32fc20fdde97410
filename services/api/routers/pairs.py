"""A run's judged pairs: `GET /v1/runs/{run_id}/pairs` (the most recent ones, as JSON) and
`GET /v1/runs/{run_id}/pairs/export` (all, or one iteration's, or a sample, streamed as TRL JSONL)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from sparring.services.api.deps import READ, RUN_ID, Service
from sparring.services.api.schemas import ERRORS, NOT_FOUND, TEXT, PairList

router = APIRouter(tags=["pairs"])


@router.get(
    "/v1/runs/{run_id}/pairs",
    response_model=PairList,
    summary="The most recent judged pairs",
    dependencies=READ,
    responses={**ERRORS, **NOT_FOUND},
)
def pairs(
    run_id: RUN_ID,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    iteration: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    return {"pairs": service.recent_pairs(run_id, limit, iteration)}


@router.get(
    "/v1/runs/{run_id}/pairs/export",
    summary="Judged pairs as TRL preference JSONL (prompt / chosen / rejected)",
    dependencies=READ,
    response_class=StreamingResponse,
    responses={
        **ERRORS,
        **NOT_FOUND,
        200: {
            "description": "one JSON object a line",
            "content": {
                "application/x-ndjson": {**TEXT, "example": '{"prompt": "...", "chosen": "...", "rejected": "..."}\n'}
            },
        },
    },
)
def export_pairs(
    run_id: RUN_ID,
    service: Service,
    iteration: Annotated[int | None, Query(ge=1, description="only this iteration's pairs")] = None,
    sample: Annotated[int | None, Query(ge=1, le=10_000_000, description="a uniform sample of this many")] = None,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    format: Annotated[Literal["standard", "conversational"], Query(description="TRL dataset format")] = "standard",
) -> StreamingResponse:
    service.view(run_id)
    lines = service.export_pairs(run_id, iteration, sample, seed, format == "conversational")
    return StreamingResponse(
        lines,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{run_id}-pairs.jsonl"'},
    )
