"""`PairRMJudge`: the `Judge` (base.py) backed by a PairRM checkpoint, and `build_pairrm_judge` for
`judge.kind: pairrm`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from sparring.shared.records import GenerationGroup, Judgement
from sparring.workers.judges.pairrm.inputs import ranker_input
from sparring.workers.judges.pairrm.scorer import PairRM, reference_index, win_matrix


class PairRMJudge:
    """`Judge` backed by a PairRM checkpoint: scores s_i and SPPO's P_ij = sigmoid(s_i - s_j) per group.

    mode "full": all K(K-1) ordered comparisons. mode "reference": 2 forwards per response against a
    reference chosen by `ref_mode` (a candidate by position/length, or "anchor": the group's anchor text,
    falling back to the first candidate when a group has none). A multi-turn group is ranked in its whole
    conversation, formatted as llm-blender formats conversations (`inputs.ranker_input`).

    The ranker itself is position-biased, but both modes already evaluate both orders of every compared
    pair, so `order_sensitive` is False (the pool must not double the work).
    """

    order_sensitive = False

    def __init__(
        self,
        model: str | Path,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_size: int = 32,
        mode: Literal["full", "reference"] = "full",
        ref_mode: str = "first",
        name: str = "pairrm",
        scorer: PairRM | None = None,
    ) -> None:
        if mode not in ("full", "reference"):
            raise ValueError(f"mode must be 'full' or 'reference', got {mode!r}")
        if ref_mode not in ("first", "last", "longest", "shortest", "median_length", "anchor"):
            raise ValueError(f"unknown ref_mode {ref_mode!r}")
        self.name = name
        self.mode = mode
        self.ref_mode = ref_mode
        self.scorer = scorer or PairRM.load(model, device=device, dtype=dtype, max_batch_size=max_batch_size)

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        t0 = time.perf_counter()
        conversations = [ranker_input(g.prompt, g.messages) for g in groups]  # llm-blender's multi-turn format
        inputs = [(x.source, [x.candidate(c.text) for c in g.completions]) for x, g in zip(conversations, groups, strict=True)]
        if self.mode == "full":
            scores = self.scorer.rank(inputs)
        else:
            refs: list[str | int] = []
            for g, x in zip(groups, conversations, strict=True):
                if self.ref_mode == "anchor":
                    refs.append(x.candidate(g.anchor.text) if g.anchor is not None else 0)
                else:  # by the answers' own lengths, not their multi-turn candidate texts
                    refs.append(reference_index([c.text for c in g.completions], self.ref_mode))
            scores = self.scorer.rank_with_ref(inputs, refs)
        latency = (time.perf_counter() - t0) / max(1, len(groups))
        out = []
        for s in scores:
            if not bool(torch.isfinite(s).all()):
                raise ValueError(f"{self.name}: non-finite PairRM scores {s.tolist()}")
            out.append(
                Judgement(judge=self.name, scores=s.tolist(), win_matrix=win_matrix(s).tolist(), latency_s=latency)
            )
        return out


def build_pairrm_judge(model: str | Path, max_batch_size: int = 32, name: str = "pairrm") -> PairRMJudge:
    """`judge.kind: pairrm`: the full K x K judge on a PairRM checkpoint (dir or hub id); on the GPU in bfloat16
    when there is one, else on the CPU in float32."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return PairRMJudge(model, device=device, max_batch_size=max_batch_size, name=name)
