"""`PairRM`: a loaded ranker + tokenizer that scores many comparisons in few forwards, and the
aggregation of its logits into per-response scores.

`rank`: all K(K-1) ordered pairs of every group, batched across groups into forwards of at most
`max_batch_size` rows (length-sorted to cut padding): M[i, j] = f(x, c_i, c_j), M_ii = 0,
s_i = (1/K) sum_j (M_ij - M_ji) (llm-blender's "max_logits" aggregation, so sum_i s_i = 0), and SPPO's
win matrix P_ij = sigmoid(s_i - s_j). `rank_with_ref`: reward_j = f(c_j, ref) - f(ref, c_j), i.e.
-compare(ref, c_j) in the default two-order mode; 2 forwards per non-reference response.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from sparring.workers.batching import map_by_length, right_pad
from sparring.workers.judges.pairrm.inputs import Limits, encode_group, pair_input_ids
from sparring.workers.judges.pairrm.model import DebertaV2PairRM, load_pairrm

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_LIMITS = Limits()  # the hub's limits (frozen, so one shared instance is safe)


# --------------------------------------------------------------------------------------------------
# Aggregation


def scores_from_matrix(m: torch.Tensor) -> torch.Tensor:
    """s_i = (1/K) sum_j (M_ij - M_ji) for a [K, K] logit matrix with zero diagonal (sums to 0)."""
    return (m - m.T).sum(dim=1) / m.shape[0]


def win_matrix(scores: torch.Tensor) -> torch.Tensor:
    """SPPO's P_ij = sigmoid(s_i - s_j): diagonal 1/2, P + P^T = 1."""
    return torch.sigmoid(scores[:, None] - scores[None, :])


RefMode = Literal["first", "last", "longest", "shortest", "median_length", "anchor"]


def reference_index(candidates: Sequence[str], ref_mode: str) -> int:
    """Which candidate is the reference (llm-blender's rank_with_ref modes, lengths in characters)."""
    k = len(candidates)
    if ref_mode == "first":
        return 0
    if ref_mode == "last":
        return k - 1
    order = sorted(range(k), key=lambda i: (len(candidates[i]), i))
    if ref_mode == "longest":
        return order[-1]
    if ref_mode == "shortest":
        return order[0]
    if ref_mode == "median_length":
        return order[k // 2]
    raise ValueError(f"unknown ref_mode {ref_mode!r}")


# --------------------------------------------------------------------------------------------------
# The batched scorer


class PairRM:
    """A loaded ranker + tokenizer that scores many comparisons in few forwards."""

    def __init__(
        self,
        model: DebertaV2PairRM,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int = 32,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.limits = limits
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id)
        self._ids = (model.cand_prefix_id, model.cand1_prefix_id, model.cand2_prefix_id)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str = "auto", max_batch_size: int = 32) -> PairRM:
        model, tok = load_pairrm(path, device=device, dtype=dtype)
        return cls(model, tok, max_batch_size=max_batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def logits(self, rows: Sequence[list[int]]) -> torch.Tensor:
        """f for each input row (float64, CPU), in order; length-sorted batches of <= max_batch_size."""

        def forward(chunk: list[int]) -> torch.Tensor:
            ids, mask = right_pad([rows[i] for i in chunk], self.pad_id)
            logit = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            return logit.double().cpu()  # (b,)

        out = torch.zeros(len(rows), dtype=torch.float64)
        return map_by_length([len(r) for r in rows], self.max_batch_size, forward, out)

    def compare(self, sources: Sequence[str], cands_a: Sequence[str], cands_b: Sequence[str],
                both_orders: bool = True) -> torch.Tensor:
        """f(x, a, b) - f(x, b, a) per item (llm-blender's default "[A,B]+[B,A]"), or f(x, a, b) alone."""
        rows: list[list[int]] = []
        for x, a, b in zip(sources, cands_a, cands_b, strict=True):
            src, (ia, ib) = encode_group(self.tokenizer, x, [a, b], self.limits)
            rows.append(pair_input_ids(src, ia, ib, *self._ids))
            if both_orders:
                rows.append(pair_input_ids(src, ib, ia, *self._ids))
        f = self.logits(rows)
        return f[0::2] - f[1::2] if both_orders else f

    def logit_matrices(self, groups: Sequence[tuple[str, Sequence[str]]]) -> list[torch.Tensor]:
        """M[i, j] = f(x, c_i, c_j) (zero diagonal) for every group, all ordered pairs in one batched pass."""
        rows: list[list[int]] = []
        index: list[tuple[int, int, int]] = []
        for g, (source, cands) in enumerate(groups):
            src, ids = encode_group(self.tokenizer, source, cands, self.limits)
            for i in range(len(cands)):
                for j in range(len(cands)):
                    if i != j:
                        rows.append(pair_input_ids(src, ids[i], ids[j], *self._ids))
                        index.append((g, i, j))
        mats = [torch.zeros(len(c), len(c), dtype=torch.float64) for _, c in groups]
        if rows:
            f = self.logits(rows)
            for (g, i, j), v in zip(index, f.tolist(), strict=True):
                mats[g][i, j] = v
        return mats

    def rank(self, groups: Sequence[tuple[str, Sequence[str]]]) -> list[torch.Tensor]:
        """Per-response scores s (sum 0) of every group, from the full K x K matrix."""
        return [scores_from_matrix(m) for m in self.logit_matrices(groups)]

    def rank_with_ref(self, groups: Sequence[tuple[str, Sequence[str]]], refs: Sequence[str | int]) -> list[torch.Tensor]:
        """reward_j = f(c_j, ref) - f(ref, c_j); `refs[g]` is a candidate index (its reward is 0, no forward)
        or a reference text (every candidate gets 2 forwards)."""
        rows: list[list[int]] = []
        index: list[tuple[int, int, int]] = []  # (group, candidate, sign)
        for g, ((source, cands), ref) in enumerate(zip(groups, refs, strict=True)):
            texts = list(cands) if isinstance(ref, int) else [*cands, ref]
            r = ref if isinstance(ref, int) else len(cands)
            src, ids = encode_group(self.tokenizer, source, texts, self.limits)
            for j in range(len(cands)):
                if j == r:
                    continue
                rows.append(pair_input_ids(src, ids[j], ids[r], *self._ids))
                index.append((g, j, 1))
                rows.append(pair_input_ids(src, ids[r], ids[j], *self._ids))
                index.append((g, j, -1))
        rewards = [torch.zeros(len(c), dtype=torch.float64) for _, c in groups]
        if rows:
            f = self.logits(rows)
            for (g, j, sign), v in zip(index, f.tolist(), strict=True):
                rewards[g][j] += sign * v
        return rewards
