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


# ------------------------------------------------------------------------------------------------ declared errors

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or invalid token"},
    403: {"model": Problem, "description": "read-only token on a write route"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such run"}}
