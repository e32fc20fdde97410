"""A run's judged pairs: `GET /v1/runs/{run_id}/pairs` (the most recent ones, as JSON) and
`GET /v1/runs/{run_id}/pairs/export` (all, or one iteration's, or a sample, streamed as TRL JSONL, or as one
parquet file with `file_format=parquet`: the same rows and columns, which `datasets` reads as a Dataset and
`sparring export --to dataset` saves as a `save_to_disk` directory for TRL's DPOTrainer).

The export keeps truncation visible. TRL appends EOS to every completion, so an answer cut at
`max_new_tokens` would be trained downstream as a finished one: each row carries `chosen_finish_reason` and
`rejected_finish_reason` (vLLM's: `stop`, `length` = cut at max_new_tokens; null = not sampled, e.g. DRIFT's
logged response), and pairs with either answer cut are left out unless `include_truncated=true`; the
response header `X-Pairs-Left-Out-Truncated` says how many were left out (`X-Pairs-Exported`: how many
rows follow).

Multi-turn pools: `format=conversational` puts the whole conversation in `prompt` (the list of messages,
system turns included, ending in the user turn answered). `format=standard` is plain text, and the chat
template that would join the turns belongs to the tokenizer, which the API does not load: its `prompt` is the
last user turn only, so export a multi-turn run in conversational format.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from sparring.services.api.deps import READ, RUN_ID, Service
from sparring.services.api.errors import error_response
from sparring.services.api.schemas import ERRORS, NOT_FOUND, TEXT, PairList, Problem
from sparring.services.runs import RunService
from sparring.shared.queue import entry_key
from sparring.shared.records import PreferencePair

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
    summary="Judged pairs as TRL preference JSONL or parquet (prompt / chosen / rejected)",
    dependencies=READ,
    response_class=StreamingResponse,
    responses={
        **ERRORS,
        **NOT_FOUND,
        200: {
            "description": "one JSON object a line (file_format=jsonl), or one parquet file (file_format=parquet)",
            "content": {
                "application/x-ndjson": {**TEXT, "example": '{"prompt": "...", "chosen": "...", "rejected": "..."}\n'},
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        501: {"model": Problem, "description": "parquet asked for, and the server has no pyarrow"},
    },
)
def export_pairs(
    run_id: RUN_ID,
    service: Service,
    iteration: Annotated[int | None, Query(ge=1, description="only this iteration's pairs")] = None,
    sample: Annotated[int | None, Query(ge=1, le=10_000_000, description="a uniform sample of this many")] = None,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    format: Annotated[
        Literal["standard", "conversational"],
        Query(description="TRL dataset format; conversational carries a multi-turn prompt whole, standard only its last user turn"),
    ] = "standard",
    include_truncated: Annotated[
        bool,
        Query(description="keep pairs with an answer cut at max_new_tokens (finish_reason 'length'); left out by default"),
    ] = False,
    file_format: Annotated[
        Literal["jsonl", "parquet"], Query(description="jsonl (streamed) or one parquet file with the same columns")
    ] = "jsonl",
) -> Response:
    """TRL preference rows with `chosen_finish_reason` / `rejected_finish_reason`; response headers
    `X-Pairs-Left-Out-Truncated` (pairs left out because an answer was cut) and `X-Pairs-Exported`."""
    service.view(run_id)
    export = PairExport(service, run_id, iteration, include_truncated)
    rows = export.sample(sample, seed) if sample is not None else export.rows()
    if file_format == "parquet":
        try:
            from sparring.shared.hf_data import parquet_bytes

            body = parquet_bytes((trl_row(pair, format == "conversational") for pair in rows), format == "conversational")
        except ImportError:
            return error_response(501, "parquet exports need pyarrow on the API server: pip install 'sparring[datasets]'")
        return Response(
            body,
            media_type="application/vnd.apache.parquet",
            headers={
                "Content-Disposition": f'attachment; filename="{run_id}-pairs.parquet"',
                "X-Pairs-Left-Out-Truncated": str(export.left_out),
                "X-Pairs-Exported": str(min(export.kept, sample) if sample is not None else export.kept),
            },
        )
    lines = (json.dumps(trl_row(pair, format == "conversational"), ensure_ascii=False) + "\n" for pair in rows)
    return StreamingResponse(
        lines,
        media_type="application/x-ndjson",
        headers={
            "Content-Disposition": f'attachment; filename="{run_id}-pairs.jsonl"',
            "X-Pairs-Left-Out-Truncated": str(export.left_out),
            "X-Pairs-Exported": str(min(export.kept, sample) if sample is not None else export.kept),
        },
    )


TRUNCATED = "length"  # vLLM's finish_reason for an answer cut at max_new_tokens


def truncated(pair: PreferencePair) -> bool:
    return TRUNCATED in (pair.chosen.finish_reason, pair.rejected.finish_reason)


def trl_row(pair: PreferencePair, conversational: bool) -> dict[str, Any]:
    """One TRL preference row (module docstring: what `prompt` holds in each format)."""
    if conversational:
        row: dict[str, Any] = {
            "prompt": pair.messages or [{"role": "user", "content": pair.prompt}],
            "chosen": [{"role": "assistant", "content": pair.chosen.text}],
            "rejected": [{"role": "assistant", "content": pair.rejected.text}],
        }
    else:
        row = {"prompt": pair.prompt, "chosen": pair.chosen.text, "rejected": pair.rejected.text}
    row["chosen_finish_reason"] = pair.chosen.finish_reason or None
    row["rejected_finish_reason"] = pair.rejected.finish_reason or None
    return row


class PairExport:
    """The pairs an export streams. The response headers (counts) go out before the body, so a first pass
    over the run's pairs (`RunService.pair_records`: the archived_pairs.jsonl file, then the stream) counts them
    and notes its last entry; the body is then read again up to that entry (or, for a sample, is the
    reservoir the first pass kept), so the counts describe the rows sent."""

    def __init__(self, service: RunService, run_id: str, iteration: int | None, include_truncated: bool) -> None:
        self.service, self.run_id = service, run_id
        self.iteration, self.include_truncated = iteration, include_truncated
        self.kept = self.left_out = 0
        self.last: tuple[int, int] | None = None
        self._sample: tuple[int, random.Random, list[PreferencePair]] | None = None

    def _selected(self, until: tuple[int, int] | None) -> Iterator[tuple[str, PreferencePair]]:
        for entry_id, pair in self.service.pair_records(self.run_id):
            if until is not None and entry_key(entry_id) > until:
                return
            if self.iteration is None or pair.iteration == self.iteration:
                yield entry_id, pair

    def _count(self) -> None:
        for entry_id, pair in self._selected(None):
            self.last = entry_key(entry_id)
            if truncated(pair) and not self.include_truncated:
                self.left_out += 1
                continue
            if self._sample is not None:
                size, rng, reservoir = self._sample
                if len(reservoir) < size:
                    reservoir.append(pair)
                elif (j := rng.randint(0, self.kept)) < size:
                    reservoir[j] = pair
            self.kept += 1

    def rows(self) -> Iterator[PreferencePair]:
        """Every selected pair, oldest first (counts taken before the first row)."""
        self._count()
        return self._rows() if self.last is not None else iter(())

    def _rows(self) -> Iterator[PreferencePair]:
        for _, pair in self._selected(self.last):
            if self.include_truncated or not truncated(pair):
                yield pair

    def sample(self, size: int, seed: int) -> Iterator[PreferencePair]:
        """A uniform sample of `size` selected pairs (reservoir sampling, seeded)."""
        self._sample = (size, random.Random(seed), [])
        self._count()
        return iter(self._sample[2])
