"""Prompt pools: `POST /v1/pools` (upload JSONL or parquet; 201 new, 200 same content as an existing pool),
`GET /v1/pools` (list) and `GET /v1/pools/{pool_id}` (one)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from sparring.services.api.deps import READ, WRITE, Service
from sparring.services.api.errors import error_response
from sparring.services.api.schemas import ERRORS, INVALID, Pool, PoolList, Problem

router = APIRouter(tags=["pools"])


@router.post(
    "/v1/pools",
    response_model=Pool,
    status_code=201,
    summary="Upload a prompt pool (JSONL, or parquet rows of a Hugging Face dataset)",
    dependencies=WRITE,
    responses={
        **ERRORS,
        200: {"model": Pool, "description": "the same content was uploaded before: the existing pool"},
        413: {"model": Problem, "description": "over the upload size limit"},
        422: {"model": Problem, "description": "bad lines, each named; nothing stored"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-ndjson": {
                    "schema": {"type": "string"},
                    "example": '{"id": "p1", "prompt": "Explain tides."}\n'
                    '{"id": "p2", "messages": [{"role": "user", "content": "Hi"}]}\n',
                },
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
                # either file as plain bytes (what generated clients send; the server tells the two apart itself)
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def upload_pool(
    request: Request,
    service: Service,
    name: Annotated[str, Query(min_length=1, max_length=200, description="a label for the pool")] = "pool",
    kind: Annotated[Literal["prompts", "dsat"], Query(description="prompts, or DRIFT dissatisfaction logs")] = "prompts",
    prompt_column: Annotated[str | None, Query(max_length=200, description="parquet: the prompt column")] = None,
    messages_column: Annotated[str | None, Query(max_length=200, description="parquet: a conversation column")] = None,
    id_column: Annotated[str | None, Query(max_length=200, description="parquet: the id column")] = None,
) -> Any:
    data = await request.body()
    columns = {"prompt_column": prompt_column, "messages_column": messages_column, "id_column": id_column}
    pool, created = await asyncio.to_thread(service.pools.add, name, kind, data, columns)
    return JSONResponse(status_code=201 if created else 200, content=pool)


@router.get("/v1/pools", response_model=PoolList, summary="List pools", dependencies=READ, responses=ERRORS)
def list_pools(service: Service) -> dict[str, Any]:
    return {"pools": service.pools.list()}


@router.get(
    "/v1/pools/{pool_id}",
    response_model=Pool,
    summary="One pool",
    dependencies=READ,
    responses={**ERRORS, **INVALID, 404: {"model": Problem, "description": "no such pool"}},
)
def get_pool(pool_id: Annotated[str, PathParam(max_length=200)], service: Service) -> Any:
    pool = service.pools.get(pool_id)
    if pool is None:
        return error_response(404, f"pool {pool_id!r} not found")
    return pool
