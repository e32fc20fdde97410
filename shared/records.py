"""Every record that crosses Ray, Redis or HTTP, as versioned pydantic models, and their msgpack codec.

A record knows its own deterministic id (`record_id`), built from what it *is* (prompt id, policy version,
sample indices) and never from when it was made, so a redelivered stream entry can always be recognised
as a duplicate. Records are encoded with msgpack (`encode`/`decode`); pickle is never used on the wire.

This module knows nothing about Redis, Ray or torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 2  # 2: IterationRecord.eval replaces the task-specific win rate


class Record(BaseModel):
    """Base of all wire records: frozen, strict about unknown fields, carrying a schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION

    @property
    def record_id(self) -> str:  # pragma: no cover - every concrete record overrides it
        raise NotImplementedError


R = TypeVar("R", bound=Record)


def encode(record: Record) -> bytes:
    """msgpack bytes of a record (field names kept, so old readers can report what they do not know)."""
    return msgpack.packb(record.model_dump(mode="python"), use_bin_type=True)


def decode(cls: type[R], data: bytes) -> R:
    """Validate msgpack bytes as `cls`; raises `pydantic.ValidationError` naming the bad field."""
    return cls.model_validate(msgpack.unpackb(data, raw=False))


def group_id(prompt_id: str, policy_version: int) -> str:
    """Id of the K-sample group for one prompt under one policy version."""
    return f"{prompt_id}@v{policy_version}"


# --------------------------------------------------------------------------------------------------
# Stage 1: prompts -> generators


class PromptTask(Record):
    """One prompt to sample K responses for, under exactly `policy_version` (stream `run:{id}:prompts`)."""

    run_id: str
    iteration: int = Field(ge=0)
    policy_version: int = Field(ge=0, description="weights that must produce all K samples")
    prompt_id: str = Field(min_length=1)
    prompt: str = Field(min_length=1, description="user message, before the chat template")
    messages: list[dict[str, str]] | None = Field(
        None, description="whole conversation ending in `prompt` (multi-turn); None = just `prompt`"
    )
    generation_prompt: str | None = Field(
        None, description="raw text the sampler continues instead of the chat-templated prompt (DRIFT's guided "
        "transcript); training still uses the prompt"
    )
    anchor_text: str | None = Field(
        None, description="a fixed answer paired with the samples: DRIFT's logged response (rejected), SPIN's reference (chosen)"
    )
    num_samples: int = Field(ge=1, description="K")
    seed: int = Field(description="sampling seed for this group; fixed by the controller")

    @property
    def record_id(self) -> str:
        return group_id(self.prompt_id, self.policy_version)


# --------------------------------------------------------------------------------------------------
# Stage 2: generators -> judges


class Completion(Record):
    """One sampled response, with the log-prob the sampler gave each of its tokens."""

    index: int = Field(ge=0, description="sample index within its group")
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = Field(
        description="behaviour log-prob of each sampled token; None for a response the policy did not sample"
    )
    finish_reason: str = ""
    stop_token_id: int | None = Field(
        None,
        description="the stop token the sampler drew (stripped from token_ids) when finish_reason is 'stop'; "
        "None = unknown (the tokenizer's eos is assumed) or no stop token",
    )
    policy_version: int | None = Field(
        None,
        ge=0,
        description="the weights the sampler held when it drew this response (set by the generator; None for a "
        "fixed answer the policy did not sample): checked against its group's and pair's version",
    )

    @model_validator(mode="after")
    def _lengths_match(self) -> Completion:
        if self.logprobs is not None and len(self.logprobs) != len(self.token_ids):
            raise ValueError(
                f"logprobs has {len(self.logprobs)} entries but token_ids has {len(self.token_ids)}"
            )
        return self


class GenerationGroup(Record):
    """K samples for one prompt, all from one engine and one policy version (`run:{id}:generations`)."""

    run_id: str
    iteration: int = Field(ge=0)
    policy_version: int = Field(ge=0)
    prompt_id: str
    prompt: str
    messages: list[dict[str, str]] | None = Field(
        None, description="whole conversation ending in `prompt` (multi-turn, system turns included); None = just `prompt`"
    )
    prompt_token_ids: list[int] = Field(description="the prompt as the TRAINER sees it (chat template)")
    completions: list[Completion] = Field(min_length=1)
    anchor: Completion | None = Field(
        None, description="the prompt's fixed answer, tokenised: DRIFT's logged response or SPIN's reference answer"
    )
    engine_id: str
    seed: int
    latency_s: float = Field(ge=0)

    @property
    def record_id(self) -> str:
        return group_id(self.prompt_id, self.policy_version)


# --------------------------------------------------------------------------------------------------
# Stage 3: judges -> trainer


class Judgement(Record):
    """What a judge says about one group of K responses.

    A judge fills `scores` (one scalar per response, higher is better), `win_matrix`
    (P[i][j] = P(response i beats response j), with P[i][i] = 0.5), or both. `confidence[i][j]`
    in [0, 1] says how sure the judge is about comparison (i, j); None means "fully confident".
    """

    judge: str
    scores: list[float] | None = None
    win_matrix: list[list[float]] | None = None
    confidence: list[list[float]] | None = None
    latency_s: float = 0.0

    @model_validator(mode="after")
    def _shape(self) -> Judgement:
        if self.scores is None and self.win_matrix is None:
            raise ValueError("a judgement needs scores, a win_matrix, or both")
        k = len(self.scores) if self.scores is not None else len(self.win_matrix or [])
        for name in ("win_matrix", "confidence"):
            m = getattr(self, name)
            if m is not None and (len(m) != k or any(len(row) != k for row in m)):
                raise ValueError(f"{name} must be {k}x{k}")
        values = list(self.scores or []) + [v for row in (self.win_matrix or []) for v in row]
        if any(not math.isfinite(v) for v in values):
            raise ValueError("judge returned a non-finite value")
        return self

    @property
    def num_responses(self) -> int:
        return len(self.scores) if self.scores is not None else len(self.win_matrix or [])


class PreferencePair(Record):
    """A training pair built by the recipe from one judged group (`run:{id}:pairs`).

    Both responses come from the same group, hence from the same policy version.
    """

    run_id: str
    iteration: int = Field(ge=0)
    policy_version: int = Field(ge=0, description="weights that produced both responses")
    prompt_id: str
    prompt: str
    messages: list[dict[str, str]] | None = Field(
        None, description="whole conversation ending in `prompt` (multi-turn, system turns included); None = just `prompt`"
    )
    prompt_token_ids: list[int] = Field(min_length=1)
    chosen: Completion
    rejected: Completion
    chosen_score: float
    rejected_score: float
    win_prob: float = Field(ge=0.0, le=1.0, description="P(chosen beats rejected) by the judge")
    chosen_win_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="P-hat(chosen beats pi_t): its row mean of the group's win matrix (SPPO)"
    )
    rejected_win_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="P-hat(rejected beats pi_t), same estimate (SPPO)"
    )
    judge: str
    weight: float = Field(
        1.0, gt=0.0, le=1.0, description="per-pair loss weight: the judge's confidence (uncertainty `weight` mode); 1 = plain"
    )

    @field_validator("chosen_score", "rejected_score")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("score must be finite")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> PreferencePair:
        if self.chosen.index == self.rejected.index:
            raise ValueError("chosen and rejected are the same sample")
        if self.chosen.token_ids == self.rejected.token_ids:
            raise ValueError("chosen and rejected have identical tokens")
        if not self.chosen.token_ids or not self.rejected.token_ids:
            raise ValueError("empty completion")
        return self

    @property
    def record_id(self) -> str:
        return f"{group_id(self.prompt_id, self.policy_version)}:{self.chosen.index}>{self.rejected.index}"

    @property
    def version_violation(self) -> bool:
        """True when a sampled answer's own `policy_version` differs from the pair's: the two answers (or an
        answer and its group) came from different weights. Checked where pairs are built (the judge) and
        where the trainer consumes them; must never happen (weights reach an engine between requests)."""
        return any(
            c.policy_version is not None and c.policy_version != self.policy_version for c in (self.chosen, self.rejected)
        )


# --------------------------------------------------------------------------------------------------
# Unpaired labels: API feedback and pointwise judge labels -> trainer (stream `run:{id}:feedback`)


class LabelledAnswer(Record):
    """One answer to one prompt with a thumbs-up (`label` True: desirable) or thumbs-down (False: undesirable),
    unpaired: what KTO and unpaired BCO train on (`run:{id}:feedback`).

    Two sources write it: `POST /v1/runs/{id}/feedback` (`source` "feedback": text only, tokenised by the
    trainer; no policy version, any iteration may train on it) and the `pointwise` recipe (`source` = the
    judge's name: the policy's own sample with its token ids, labelled by a score threshold, stamped with the
    version that sampled it). The id is deterministic: a feedback item's is a digest of its content, so
    posting the same item twice stores it once; a judged sample's is its group id and sample index.
    """

    run_id: str
    iteration: int = Field(0, ge=0, description="iteration that sampled it; 0 for posted feedback")
    policy_version: int | None = Field(
        None, ge=0, description="weights that sampled the answer; None for posted feedback (off-policy)"
    )
    prompt_id: str = Field(min_length=1)
    prompt: str = Field(min_length=1, description="the user message answered")
    messages: list[dict[str, str]] | None = Field(
        None, description="whole conversation ending in `prompt` (multi-turn); None = just `prompt`"
    )
    prompt_token_ids: list[int] | None = Field(
        None, description="the prompt as the trainer sees it (chat template); None = the trainer tokenises it"
    )
    answer: Completion = Field(
        description="the labelled answer; `token_ids` empty for posted feedback (the trainer tokenises `text`)"
    )
    label: bool = Field(description="True = desirable (thumbs up), False = undesirable (thumbs down)")
    weight: float = Field(1.0, gt=0.0, le=1000.0, description="loss weight of this example (sum(w*l)/sum(w))")
    score: float | None = Field(None, description="the judge's score the label came from (pointwise recipe)")
    source: str = Field("feedback", min_length=1, description="'feedback' (posted) or the labelling judge's name")

    @field_validator("weight")
    @classmethod
    def _finite_weight(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("weight must be finite")
        return v

    @property
    def record_id(self) -> str:
        if self.policy_version is None:  # what the item is: conversation, answer, label and weight
            content = [self.prompt, self.messages, self.answer.text, self.label, self.weight]
            return "feedback:" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]
        return f"{group_id(self.prompt_id, self.policy_version)}:{self.answer.index}"


# --------------------------------------------------------------------------------------------------
# Failures and iteration bookkeeping


class DeadLetter(Record):
    """An entry a stage gave up on (`run:{id}:dead`), with the reason, so nothing disappears silently."""

    stage: str
    item_id: str = Field(description="record id of the entry that failed")
    reason: str
    attempts: int = 1
    payload: bytes = b""

    @property
    def record_id(self) -> str:
        return f"{self.stage}:{self.item_id}"


class IterationRecord(Record):
    """Everything measured in one iteration, written to Redis when the iteration completes."""

    run_id: str
    iteration: int = Field(ge=1)
    policy_version_in: int
    policy_version_out: int
    num_prompts: int
    num_groups: int
    num_pairs: int
    num_dead: int
    metrics: dict[str, float] = Field(default_factory=dict, description="loss/*, rewards/*, gen/*, ...")
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    stage_spans: dict[str, list[float]] = Field(
        default_factory=dict,
        description="busy interval [start, end] (unix seconds) of each stage run in this iteration's wall time: "
        "generate_judge, train, sync, eval. In async mode generate_judge is the generation that overlapped this "
        "iteration's training (the batch max_staleness ahead), so its span lies beside train's",
    )
    eval: dict[str, float] = Field(
        default_factory=dict,
        description="evaluation of the policy this iteration produced on held-out prompts (workers/evaluation.py): "
        "eval/win_rate_vs_iter0, eval/win_rate_vs_prev (+ _ci_low/_ci_high), eval/response_length_mean, "
        "eval/truncated_fraction, eval/kl_vs_iter0, and eval/<evaluator>/<metric> from task evaluators",
    )
    checkpoint: str = ""
    started_at: float
    finished_at: float

    @property
    def record_id(self) -> str:
        return f"{self.run_id}:iter{self.iteration}"


def as_dict(record: Record) -> dict[str, Any]:
    return record.model_dump(mode="json")
