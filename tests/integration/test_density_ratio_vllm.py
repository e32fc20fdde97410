"""Density-ratio judge on the arena: vLLM prompt-logprob scoring equals the transformers path, and CDR
(strong = a quickly fine-tuned arena model, weak = the arena base policy) agrees with the gold rule.

One vLLM engine (module scoped) on the cached arena base policy; the strong model is a reduced build in a
temporary cache directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sparring.shared.models import load_tokenizer
from sparring.tasks.arena.policy import build_arena_model
from sparring.tasks.arena.strong import build_arena_strong, gold_agreement, heldout_pairs
from sparring.workers.judges.density_ratio import (
    DensityRatioJudge,
    ScoredTokens,
    TransformersScorer,
    VLLMScorer,
)

pytestmark = pytest.mark.integration

QUICK_STRONG = {"steps": 40, "batch_size": 32, "draws_per_prompt": 4, "log_every": 20}


@pytest.fixture(scope="module")
def base() -> Path:
    return build_arena_model(0)


@pytest.fixture(scope="module")
def strong(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_arena_strong(0, cache_dir=tmp_path_factory.mktemp("strong"), base_dir=base, **QUICK_STRONG)


@pytest.fixture(scope="module")
def vllm_base(base: Path) -> Iterator[VLLMScorer]:
    scorer = VLLMScorer(str(base), max_model_len=256, kv_cache_memory_bytes=64 * 2**20)
    yield scorer
    scorer.close()


def test_vllm_prompt_logprobs_equal_transformers(base: Path, strong: Path, vllm_base: VLLMScorer) -> None:
    tok = load_tokenizer(str(base))
    hf_base = TransformersScorer(str(base))
    hf_strong = TransformersScorer(str(strong))
    pairs = heldout_pairs(24)
    probe = DensityRatioJudge(hf_strong, hf_base, tok)
    rows: list[ScoredTokens] = []
    for p, a, b in pairs:
        ctx = probe.context_ids(p.prompt)
        for text in (a, b):
            rows.append(
                ScoredTokens(ctx, [*tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id])
            )
    via_vllm = vllm_base.response_logps(rows)
    via_hf = hf_base.response_logps(rows)
    max_diff = max(abs(x - y) for x, y in zip(via_vllm, via_hf, strict=True))
    assert max_diff < 1e-3
    assert all(v < 0 for v in via_vllm)

    # the judge with a vLLM weak model equals the all-transformers judge
    mixed = DensityRatioJudge(hf_strong, vllm_base, tok, reduction="mean")
    plain = DensityRatioJudge(hf_strong, hf_base, tok, reduction="mean")
    diffs = [abs(x - y) for x, y in zip(mixed.score_rows(rows), plain.score_rows(rows), strict=True)]
    assert max(diffs) < 1e-3


def test_cdr_arena_judge_agrees_with_gold(base: Path, strong: Path) -> None:
    tok = load_tokenizer(str(base))
    judge = DensityRatioJudge(TransformersScorer(str(strong)), TransformersScorer(str(base)), tok)
    result = gold_agreement(judge, heldout_pairs(160))
    assert result.num_pairs == 160
    assert result.agreement > 0.6, result
