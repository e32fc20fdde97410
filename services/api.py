"""The sparring HTTP API (FastAPI), versioned under /v1, plus /healthz, /readyz, /metrics and /dashboard.

`create_app(settings, client, redis_url)` builds the app around an open Redis client; `sparring serve`
(services/cli.py) connects Redis and Ray and runs it with uvicorn. Every /v1 route and /metrics need a
bearer token (services/auth.py); /healthz and /readyz are open. Errors are JSON `{"detail": str}` and, for
refused input, `"problems": [str, ...]` naming every bad field or line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from sparring.services.auth import TokenGate, TokenTable, require_read, require_write
from sparring.services.metrics import build_registry
from sparring.services.pools import PoolRejected
from sparring.services.runs import CheckpointNotFound, Conflict, RequestError, RunService
from sparring.services.settings import ServiceSettings
from sparring.shared.store import TERMINAL_STATES, InvalidTransition, RunNotFound

log = logging.getLogger(__name__)

API_VERSION = "1"
RUN_ID = Annotated[str, PathParam(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")]
VERSION = Annotated[int, PathParam(ge=0, le=10**9)]

# ------------------------------------------------------------------------------------------------ schemas


class Problem(BaseModel):
    detail: str = Field(examples=["run 'x' not found"])
    problems: list[str] | None = Field(None, examples=[["line 3: not valid JSON (Expecting value)"]])


class Pool(BaseModel):
    pool_id: str = Field(examples=["pool-3f2a9c0b1d4e5f60"])
    name: str = Field(examples=["support-prompts"])
    kind: Literal["prompts", "dsat"]
    num_items: int = Field(examples=[512])
    bytes: int
    sha256: str
    duplicate_prompts: int = Field(description="lines whose prompt repeats an earlier line's (accepted)")
    duplicates: list[dict[str, str]] = Field(description="up to 100 of them: {id, same_as}")
    created_at: float


class PoolList(BaseModel):
    pools: list[Pool]


class CreateRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(
        description="a RunConfig (docs/operations.md); model paths must be `arena`, Hugging Face ids or inside "
        "the service's model roots; storage.* and prompts.path are set by the service",
        examples=[{"name": "arena-sppo", "preset": "sppo", "schedule": {"iterations": 3, "prompts_per_iteration": 128}}],
    )
    pool_id: str | None = Field(None, description="a pool uploaded with POST /v1/pools (default: the config's prompts)")


class Run(BaseModel):
    run_id: str = Field(examples=["arena-sppo-20261125-150102-a1b2c3"])
    name: str
    state: Literal["created", "running", "pausing", "paused", "stopping", "stopped", "completed", "failed"]
    reason: str = Field(description="why the run is in its state (failure reason, who paused it)")
    created_at: float
    updated_at: float
    iterations_done: int
    iterations_total: int | None
    pool_id: str | None
    algorithm: str | None = Field(description="the objective, e.g. sppo")
    judge: str | None = Field(description="the judge kind, e.g. arena_oracle")


class RunList(BaseModel):
    runs: list[Run]


class IterationList(BaseModel):
    iterations: list[dict[str, Any]] = Field(
        description="IterationRecords: iteration, policy versions, counts, metrics{loss/mean, rewards/margin, "
        "rewards/accuracy, gen/tokens_per_s, pairs/per_s, queue/peak/*, staleness/max, sync/max_engine_s, "
        "judge/latency_s, ...}, stage_seconds, gold_win_rate_vs_iter0, checkpoint, started_at, finished_at"
    )


class PairView(BaseModel):
    record_id: str
    iteration: int
    policy_version: int
    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    win_prob: float
    judge: str


class PairList(BaseModel):
    pairs: list[PairView]


class Queues(BaseModel):
    queues: dict[str, int] = Field(examples=[{"prompts": 12, "generations": 3, "pairs": 0, "dead": 0}])


class CheckpointFile(BaseModel):
    name: str
    bytes: int


class Checkpoint(BaseModel):
    version: int
    iteration: int
    files: list[CheckpointFile]
    bytes: int


class CheckpointList(BaseModel):
    checkpoints: list[Checkpoint]


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    checks: dict[str, str] | None = None


def _err(status: int, detail: str, problems: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if problems is not None:
        body["problems"] = problems
    return JSONResponse(status_code=status, content=body)


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or invalid token"},
    403: {"model": Problem, "description": "read-only token on a write route"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such run"}}

# ------------------------------------------------------------------------------------------------ body caps


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses request bodies over the cap with 413 (uploads have their own, larger cap)."""

    def __init__(self, app: Any, settings: ServiceSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_upload_bytes if scope["path"] == "/v1/pools" else self.settings.max_body_bytes
        what = "upload" if scope["path"] == "/v1/pools" else "request body"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_413(send, what, limit)
                return
        seen = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_413(send, what, limit)


async def _send_413(send: Any, what: str, limit: int) -> None:
    body = json.dumps({"detail": f"{what} too large: the limit is {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------------ app


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
    app.state.service = service
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(TokenGate, tokens=app.state.tokens)  # outermost: unauthenticated requests stop here

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        requests_total.labels(request.method, getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    @app.exception_handler(RunNotFound)
    async def _not_found(request: Request, err: RunNotFound) -> JSONResponse:
        return _err(404, f"run {err.args[0]!r} not found")

    @app.exception_handler(InvalidTransition)
    async def _transition(request: Request, err: InvalidTransition) -> JSONResponse:
        return _err(409, str(err))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, err: Conflict) -> JSONResponse:
        return _err(409, str(err))

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError) -> JSONResponse:
        return _err(422, str(err), err.problems)

    @app.exception_handler(PoolRejected)
    async def _pool_rejected(request: Request, err: PoolRejected) -> JSONResponse:
        return _err(422, str(err), err.problems)

    @app.exception_handler(redis.ConnectionError)
    async def _redis_down(request: Request, err: redis.ConnectionError) -> JSONResponse:
        return _err(503, "Redis is unreachable; retry later")

    read = [Depends(require_read)]
    write = [Depends(require_write)]

    # -------------------------------------------------------------------------------------- health

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, tags=["health"], summary="The process is up")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Health,
        tags=["health"],
        summary="Redis and Ray are reachable",
        responses={503: {"model": Health, "description": "a dependency is unreachable"}},
    )
    def readyz() -> Any:
        checks: dict[str, str] = {}
        try:
            client.ping()
            checks["redis"] = "ok"
        except redis.RedisError as err:
            checks["redis"] = f"unreachable: {type(err).__name__}"
        try:
            import ray

            checks["ray"] = "ok" if ray.is_initialized() and ray.cluster_resources() is not None else "not connected"
        except Exception as err:  # noqa: BLE001
            checks["ray"] = f"unreachable: {type(err).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if ok else 503, content={"status": "ok" if ok else "unavailable", "checks": checks})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (token needed)", dependencies=read, responses=ERRORS)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -------------------------------------------------------------------------------------- pools

    @app.post(
        "/v1/pools",
        response_model=Pool,
        status_code=201,
        tags=["pools"],
        summary="Upload a prompt pool (JSONL)",
        dependencies=write,
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
                    }
                },
            }
        },
    )
    async def upload_pool(
        request: Request,
        name: Annotated[str, Query(min_length=1, max_length=200, description="a label for the pool")] = "pool",
        kind: Annotated[Literal["prompts", "dsat"], Query(description="prompts, or DRIFT dissatisfaction logs")] = "prompts",
    ) -> Any:
        data = await request.body()
        pool, created = await asyncio.to_thread(service.pools.add, name, kind, data)
        return JSONResponse(status_code=201 if created else 200, content=pool)

    @app.get("/v1/pools", response_model=PoolList, tags=["pools"], summary="List pools", dependencies=read, responses=ERRORS)
    def list_pools() -> dict[str, Any]:
        return {"pools": service.pools.list()}

    @app.get(
        "/v1/pools/{pool_id}",
        response_model=Pool,
        tags=["pools"],
        summary="One pool",
        dependencies=read,
        responses={**ERRORS, 404: {"model": Problem, "description": "no such pool"}},
    )
    def get_pool(pool_id: Annotated[str, PathParam(max_length=200)]) -> Any:
        pool = service.pools.get(pool_id)
        if pool is None:
            return _err(404, f"pool {pool_id!r} not found")
        return pool

    # -------------------------------------------------------------------------------------- runs

    @app.post(
        "/v1/runs",
        response_model=Run,
        status_code=201,
        tags=["runs"],
        summary="Create a run (queued; it starts when the service has room)",
        dependencies=write,
        responses={
            **ERRORS,
            200: {"model": Run, "description": "replay of an earlier request with the same Idempotency-Key"},
            409: {"model": Problem, "description": "Idempotency-Key reused for a different request"},
            413: {"model": Problem, "description": "body too large"},
            422: {"model": Problem, "description": "invalid config, disallowed model path, unknown pool"},
        },
    )
    def create_run(
        body: CreateRun,
        idempotency_key: Annotated[
            str | None, Header(max_length=200, description="same key + same body = same run, created once")
        ] = None,
    ) -> Any:
        run, created = service.create_run(body.config, body.pool_id, idempotency_key)
        return JSONResponse(status_code=201 if created else 200, content=run)

    @app.get("/v1/runs", response_model=RunList, tags=["runs"], summary="List runs", dependencies=read, responses=ERRORS)
    def list_runs() -> dict[str, Any]:
        return {"runs": service.list_runs()}

    @app.get("/v1/runs/{run_id}", response_model=Run, tags=["runs"], summary="One run", dependencies=read, responses={**ERRORS, **NOT_FOUND})
    def get_run(run_id: RUN_ID) -> dict[str, Any]:
        return service.view(run_id)

    @app.get(
        "/v1/runs/{run_id}/config",
        tags=["runs"],
        summary="The run's resolved config",
        dependencies=read,
        responses={**ERRORS, **NOT_FOUND},
    )
    def get_config(run_id: RUN_ID) -> dict[str, Any]:
        return service.config(run_id)

    lifecycle_responses: dict[int | str, dict[str, Any]] = {
        **ERRORS,
        **NOT_FOUND,
        409: {"model": Problem, "description": "the run's state does not allow it"},
    }

    @app.post(
        "/v1/runs/{run_id}/pause",
        response_model=Run,
        status_code=202,
        tags=["runs"],
        summary="Pause at the next iteration boundary (running -> pausing -> paused)",
        dependencies=write,
        responses=lifecycle_responses,
    )
    def pause_run(run_id: RUN_ID) -> dict[str, Any]:
        return service.pause(run_id)

    @app.post(
        "/v1/runs/{run_id}/resume",
        response_model=Run,
        status_code=202,
        tags=["runs"],
        summary="Resume a paused run from its last recorded iteration",
        dependencies=write,
        responses=lifecycle_responses,
    )
    def resume_run(run_id: RUN_ID) -> dict[str, Any]:
        return service.resume(run_id)

    @app.post(
        "/v1/runs/{run_id}/stop",
        response_model=Run,
        status_code=202,
        tags=["runs"],
        summary="Stop (at the next iteration boundary if executing); a stopped run cannot resume",
        dependencies=write,
        responses=lifecycle_responses,
    )
    def stop_run(run_id: RUN_ID) -> dict[str, Any]:
        return service.stop(run_id)

    @app.get(
        "/v1/runs/{run_id}/iterations",
        response_model=IterationList,
        tags=["runs"],
        summary="Every recorded iteration",
        dependencies=read,
        responses={**ERRORS, **NOT_FOUND},
    )
    def iterations(run_id: RUN_ID) -> dict[str, Any]:
        return {"iterations": [r.model_dump(mode="json") for r in service.iterations(run_id)]}

    @app.get(
        "/v1/runs/{run_id}/queues",
        response_model=Queues,
        tags=["runs"],
        summary="Unconsumed entries per stream, now",
        dependencies=read,
        responses={**ERRORS, **NOT_FOUND},
    )
    def queues(run_id: RUN_ID) -> dict[str, Any]:
        return {"queues": service.queue_depths(run_id)}

    @app.get(
        "/v1/runs/{run_id}/pairs",
        response_model=PairList,
        tags=["pairs"],
        summary="The most recent judged pairs",
        dependencies=read,
        responses={**ERRORS, **NOT_FOUND},
    )
    def pairs(
        run_id: RUN_ID,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        iteration: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        return {"pairs": service.recent_pairs(run_id, limit, iteration)}

    @app.get(
        "/v1/runs/{run_id}/pairs/export",
        tags=["pairs"],
        summary="Judged pairs as TRL preference JSONL (prompt / chosen / rejected)",
        dependencies=read,
        responses={
            **ERRORS,
            **NOT_FOUND,
            200: {"content": {"application/x-ndjson": {"example": '{"prompt": "...", "chosen": "...", "rejected": "..."}\n'}}},
        },
    )
    def export_pairs(
        run_id: RUN_ID,
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

    # -------------------------------------------------------------------------------------- checkpoints

    @app.get(
        "/v1/runs/{run_id}/checkpoints",
        response_model=CheckpointList,
        tags=["checkpoints"],
        summary="Checkpoints of recorded iterations",
        dependencies=read,
        responses={**ERRORS, **NOT_FOUND},
    )
    def checkpoints(run_id: RUN_ID) -> dict[str, Any]:
        return {"checkpoints": service.checkpoints(run_id)}

    ckpt_missing: dict[int | str, dict[str, Any]] = {
        **ERRORS,
        404: {"model": Problem, "description": "no such run, version or file"},
    }

    @app.get(
        "/v1/runs/{run_id}/checkpoints/{version}/archive",
        tags=["checkpoints"],
        summary="One checkpoint directory as a tar stream (an ordinary Hugging Face checkpoint)",
        dependencies=read,
        responses={**ckpt_missing, 200: {"content": {"application/x-tar": {}}}},
    )
    def checkpoint_archive(run_id: RUN_ID, version: VERSION) -> Any:
        try:
            directory = service.checkpoint_dir(run_id, version)
        except CheckpointNotFound as err:
            return _err(404, str(err))
        return StreamingResponse(
            _tar_stream(directory, f"{run_id}-v{version}"),
            media_type="application/x-tar",
            headers={"Content-Disposition": f'attachment; filename="{run_id}-v{version}.tar"'},
        )

    @app.get(
        "/v1/runs/{run_id}/checkpoints/{version}/files/{name}",
        tags=["checkpoints"],
        summary="One file of a checkpoint",
        dependencies=read,
        responses={**ckpt_missing, 200: {"content": {"application/octet-stream": {}}}},
    )
    def checkpoint_file(run_id: RUN_ID, version: VERSION, name: Annotated[str, PathParam(max_length=255)]) -> Any:
        try:
            path = service.checkpoint_file(run_id, version, name)
        except CheckpointNotFound as err:
            return _err(404, str(err))
        return FileResponse(path, filename=name, media_type="application/octet-stream")

    # -------------------------------------------------------------------------------------- events (SSE)

    @app.get(
        "/v1/runs/{run_id}/events",
        tags=["runs"],
        summary="Live run events as server-sent events (ends when the run is at rest, or after max_seconds)",
        dependencies=read,
        responses={**ERRORS, **NOT_FOUND, 200: {"content": {"text/event-stream": {}}}},
    )
    async def events(
        request: Request,
        run_id: RUN_ID,
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
                    yield f"id: {eid}\nevent: {kind}\ndata: {json.dumps(data, default=str)}\n\n"
                    cursor = eid
                if batch:
                    continue
                run = await asyncio.to_thread(service.store.get_run, run_id)
                if run is None or run["state"] in (*TERMINAL_STATES, "paused"):
                    yield f"event: end\ndata: {json.dumps({'state': run['state'] if run else 'deleted'})}\n\n"
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

    try:  # the dashboard's static shell (no data in it; every data call needs a token)
        from sparring.services.dashboard import mount_dashboard

        mount_dashboard(app)
    except ImportError:
        log.warning("dashboard assets are not installed; /dashboard is unavailable")

    return app


def _tar_stream(directory: Path, prefix: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A POSIX tar of the regular files of `directory`, streamed: never more than `chunk` bytes in memory."""
    import tarfile

    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        info = tarfile.TarInfo(f"{prefix}/{path.name}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        with path.open("rb") as f:
            while block := f.read(chunk):
                sent += len(block)
                yield block
        if sent != info.size:
            raise OSError(f"{path} changed size while being archived")
        if info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
