"""Request and response bodies of the /v1 API and the health routes (pydantic), and the error responses
the routes declare in the OpenAPI schema.

Every error body is a `Problem`: `{"detail": str}` and, for refused input, `"problems": [str, ...]`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    detail: str = Field(examples=["run 'x' not found"])
    problems: list[str] | None = Field(None, examples=[["line 3: not valid JSON (Expecting value)"]])


class Pool(BaseModel):
    pool_id: str = Field(examples=["pool-3f2a9c0b1d4e5f60"])
    name: str = Field(examples=["support-prompts"])
    kind: Literal["prompts", "dsat"]
    format: Literal["jsonl", "parquet"] = Field("jsonl", description="the uploaded file's format")
    columns: dict[str, str] | None = Field(
        None, description="parquet: the column mapping given at upload (prompt_column, messages_column, id_column)"
    )
    num_items: int = Field(examples=[512])
    bytes: int
    sha256: str
    duplicate_prompts: int = Field(description="lines whose prompt repeats an earlier line's (accepted)")
    duplicates: list[dict[str, str]] = Field(description="up to 100 of them: {id, same_as}")
    created_at: float


class PoolList(BaseModel):
    pools: list[Pool]


# A run config as POST /v1/runs takes it with a pool: the service sets `prompts` to the uploaded pool.
RUN_CONFIG_EXAMPLE: dict[str, Any] = {
    "name": "qwen-sppo",
    "preset": "sppo",
    "policy": {"path": "Qwen/Qwen2.5-0.5B-Instruct"},
    "judge": {"kind": "pairrm", "model": "llm-blender/PairRM-hf"},
    "schedule": {"iterations": 3, "prompts_per_iteration": 128},
}


class CreateRun(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"config": RUN_CONFIG_EXAMPLE, "pool_id": "pool-3f2a9c0b1d4e5f60"}]}
    )

    config: dict[str, Any] = Field(
        description="a RunConfig (docs/operations.md): `policy`, `judge` (with `kind`) and `prompts` (with "
        "`source`) are required, except that with `pool_id` the service sets `prompts` to the pool. Model "
        "references must be Hugging Face ids, model names a task registers (`sparring tasks`), or directories "
        "inside the service's model roots; storage.*, prompts.path and eval.prompts.path are set by the service",
        examples=[RUN_CONFIG_EXAMPLE],
    )
    pool_id: str | None = Field(
        None, description="a pool uploaded with POST /v1/pools; the run's prompts (`prompts` is then set by the service)"
    )


class Run(BaseModel):
    run_id: str = Field(examples=["qwen-sppo-20261125-150102-a1b2c3"])
    name: str
    state: Literal["created", "running", "pausing", "paused", "stopping", "stopped", "completed", "failed"]
    reason: str = Field(description="why the run is in its state (failure reason, who paused it)")
    created_at: float
    updated_at: float
    iterations_done: int
    iterations_total: int | None
    pool_id: str | None
    algorithm: str | None = Field(description="the objective, e.g. sppo")
    judge: str | None = Field(description="the judge kind, e.g. pairrm")


class RunList(BaseModel):
    runs: list[Run]


class IterationList(BaseModel):
    iterations: list[dict[str, Any]] = Field(
        description="IterationRecords: iteration, policy versions, counts, metrics{loss/mean, rewards/margins, "
        "rewards/accuracies, gen/tokens_per_s, pairs/per_s, pairs/stale_dropped, queue/peak/*, sync/max_engine_s, "
        "judge/latency_s, ...}, stage_seconds, eval{eval/win_rate_vs_iter0, eval/win_rate_vs_prev (+ _ci_low, "
        "_ci_high), eval/kl_vs_iter0, eval/response_length_mean, eval/truncated_fraction, "
        "eval/<evaluator>/<metric>, ...; any key may be absent}, checkpoint, started_at, finished_at"
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


class DeadLetterView(BaseModel):
    entry_id: str = Field(description="its entry id in the dead stream: the id to re-queue it by", examples=["1764466200000-0"])
    letter_id: str = Field(description="stage:item_id, unique per failure", examples=["generate:p17@v1"])
    stage: str = Field(description="where it failed: generate, judge, recipe, train, or the stream it was read from")
    item_id: str = Field(description="record id of the entry that failed", examples=["p17@v1"])
    prompt_id: str | None = Field(description="the prompt it came from; None when unknown (a trimmed entry)")
    iteration: int | None
    policy_version: int | None
    attempts: int = Field(description="deliveries (or attempts) before it was given up")
    reason: str
    requeueable: bool = Field(description="its prompt is known, so it can be dispatched again")


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterView]


class Requeue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entry_ids: list[str] | None = Field(
        None, max_length=10_000, description="dead letters to re-queue by entry id; omitted = every re-queueable one"
    )


class RequeueResult(BaseModel):
    requeued: list[dict[str, str]] = Field(description="{entry_id, prompt_id} of each re-queued letter")
    skipped: list[dict[str, str]] = Field(description="{entry_id, reason} of letters that cannot be re-queued")
    queued_prompts: list[str] = Field(description="every prompt id waiting for the run's next iteration")


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


# ------------------------------------------------------------------------------------------------ declared errors

# Every error the API answers is a `Problem`, and every route lists the error statuses it can answer: ERRORS on
# every token-gated route (401/403 from the token gate, 503 when Redis is unreachable), INVALID on every route
# with parameters or a body (FastAPI's request validation, rendered as a Problem by services/api/errors.py).
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or invalid token"},
    403: {"model": Problem, "description": "read-only token on a write route"},
    503: {"model": Problem, "description": "Redis is unreachable; retry later"},
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": Problem, "description": "invalid parameters or body: `problems` lists each one"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such run"}, **INVALID}

# Non-JSON success bodies, documented as what they are (the routes set `response_class` to a class without a
# media type, so FastAPI adds no `application/json` alternative).
BINARY = {"schema": {"type": "string", "format": "binary"}}
TEXT = {"schema": {"type": "string"}}
# text/event-stream: `schema` describes one event (OpenAPI 3.1; clients and schemathesis read it so).
SSE_EVENT = {
    "schema": {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "description": "state, progress, iteration_done, ...; `end` last"},
            "data": {"type": "string", "contentMediaType": "application/json", "description": "a JSON object"},
            "id": {"type": "string", "description": "the event's id: reconnect with `after=` it"},
            "retry": {"type": "integer", "description": "reconnection delay, ms"},
        },
    }
}


class FeedbackResult(BaseModel):
    run_id: str
    items: int = Field(description="valid items in the request (all of them: one bad item refuses the request)")
    stored: int = Field(description="items new to the run's feedback stream")
    duplicates: int = Field(description="items posted before (same conversation, answer, label, weight): not stored again")
