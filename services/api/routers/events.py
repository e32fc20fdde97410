"""`GET /v1/runs/{run_id}/events`: a run's events as server-sent events, from `after` on; the stream ends
with an `end` event once the run is at rest (terminal or paused), or after `max_seconds`. Tagged `runs` in
the OpenAPI schema. Each `data:` is strict JSON (shared/jsonl.py `dumps`): a NaN or infinite metric is null,
so browsers' JSON.parse never drops an event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from sparring.services.api.deps import READ, RUN_ID, Service
from sparring.services.api.schemas import ERRORS, NOT_FOUND, SSE_EVENT
from sparring.shared import jsonl
from sparring.shared.store import TERMINAL_STATES

router = APIRouter(tags=["runs"])


@router.get(
    "/v1/runs/{run_id}/events",
    summary="Live run events as server-sent events (ends when the run is at rest, or after max_seconds)",
    dependencies=READ,
    response_class=StreamingResponse,
    responses={**ERRORS, **NOT_FOUND, 200: {"description": "a server-sent event stream", "content": {"text/event-stream": SSE_EVENT}}},
)
async def events(
    request: Request,
    run_id: RUN_ID,
    service: Service,
    after: Annotated[str, Query(pattern=r"^\d+-\d+$", description="resume after this event id")] = "0-0",
    max_seconds: Annotated[float, Query(gt=0, le=86400)] = 3600.0,
) -> StreamingResponse:
    await asyncio.to_thread(service.view, run_id)

    async def stream() -> AsyncIterator[str]:
        cursor, deadline, last_beat = after, time.monotonic() + max_seconds, time.monotonic()
        yield "retry: 2000\n\n"
        while time.monotonic() < deadline and not await request.is_disconnected():
            batch = await asyncio.to_thread(service.store.events, run_id, cursor, 500)
            for eid, kind, data in batch:
                yield f"id: {eid}\nevent: {kind}\ndata: {jsonl.dumps(data, default=str)}\n\n"
                cursor = eid
            if batch:
                continue
            run = await asyncio.to_thread(service.store.get_run, run_id)
            if run is None or run["state"] in (*TERMINAL_STATES, "paused"):
                yield f"event: end\ndata: {jsonl.dumps({'state': run['state'] if run else 'deleted'})}\n\n"
                return
            if time.monotonic() - last_beat > 10:
                last_beat = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(0.5)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
