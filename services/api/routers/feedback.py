"""Human feedback: `POST /v1/runs/{run_id}/feedback`, unpaired thumbs up/down on single answers (a JSON body
`{"items": [...]}` or a JSONL upload), validated whole and stored all-or-nothing in the run's feedback stream
(services/feedback.py; the item format: shared/feedback.py; how runs train on it: docs/algorithms.md)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sparring.services.api.deps import RUN_ID, WRITE, Service
from sparring.services.api.errors import error_response
from sparring.services.api.schemas import ERRORS, NOT_FOUND, FeedbackResult, Problem
from sparring.services.feedback import store_feedback
from sparring.shared.feedback import FeedbackError

router = APIRouter(tags=["feedback"])

ITEMS_EXAMPLE = {
    "items": [
        {"prompt": "Explain tides.", "answer": "The moon's gravity pulls the oceans ...", "label": True},
        {"messages": [{"role": "user", "content": "Hi"}], "answer": "Go away.", "label": "down", "weight": 0.5},
    ]
}


@router.post(
    "/v1/runs/{run_id}/feedback",
    response_model=FeedbackResult,
    status_code=201,
    summary="Post thumbs-up/down labels on single answers (JSON items or a JSONL upload)",
    dependencies=WRITE,
    responses={
        **ERRORS,
        **NOT_FOUND,
        409: {"model": Problem, "description": "the run is completed or stopped: it will not train on feedback"},
        413: {"model": Problem, "description": "over the upload size limit"},
        422: {"model": Problem, "description": "bad items, each named with its line (or item) and field; nothing stored"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["items"],
                        "properties": {"items": {"type": "array", "items": {"type": "object"}}},
                    },
                    "example": ITEMS_EXAMPLE,
                },
                "application/x-ndjson": {
                    "schema": {"type": "string"},
                    "example": '{"prompt": "Explain tides.", "answer": "The moon ...", "label": true}\n'
                    '{"prompt": "Explain tides.", "answer": "No idea.", "label": false}\n',
                },
            },
        }
    },
)
async def post_feedback(run_id: RUN_ID, request: Request, service: Service) -> Any:
    data = await request.body()
    content_type = request.headers.get("content-type", "application/json")
    try:
        result = await asyncio.to_thread(store_feedback, service, run_id, content_type, data)
    except FeedbackError as err:
        return error_response(422, str(err), err.problems)
    return JSONResponse(status_code=201, content=result)
