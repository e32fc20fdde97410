"""MC-dropout uncertainty over a primary judge (UPO: Wang et al., AAAI'25, arXiv 2409.11212).

`UncertaintyJudge` wraps a primary judge and a pairwise *estimator* whose model has dropout. For every pair
the primary judge orders strictly (score_i > score_j), the estimator runs T times with dropout on; pass t
gives p_t = P(i beats j). Per pair:

    mean  = mean_t p_t                      var = var_t p_t (population variance)
    BALD  = H(mean) - mean_t H(p_t)         H(p) = -p ln p - (1 - p) ln(1 - p)
    agree = fraction of passes with p_t > 1/2   (the majority vote agrees with the primary judge iff > 1/2)

BALD is the mutual information between the estimator's vote and the dropout mask: >= 0 by concavity of H,
<= ln 2, and exactly 0 when every pass gives the same p (no dropout); rounding is clamped at 0.

Modes (`UncertaintyConfig.mode`), all written to the judgement's symmetric `confidence[i][j]`:
- filter: 0 for a pair whose majority vote disagrees with the primary judge, whose mean is below
  `min_prob`, or whose BALD is above `max_bald`; 1 otherwise (UPO's noise filter);
- easy / hard: filter, then UPO's sampler: round(sample_rate * kept) pairs drawn without replacement with
  probability proportional to 1 - BALD (easy) or BALD (hard); drawn pairs 1, all others 0;
- weight: w = 1 - BALD / ln 2 in [0, 1] (our choice: UPO's paper weights pairs by certainty, its released
  trainer does not), nothing dropped.
The judge pool (`workers/judges/pool.py`) drops pairs of confidence 0 and gives every other pair its
confidence as `PreferencePair.weight`, by which the trainer scales that pair's loss (docs/judges.md,
"Uncertainty").

Variants. `head_only=False`: T full forwards with every dropout module of the estimator on (UPO's setup).
`head_only=True`: the encoder runs once in eval mode and only the head is sampled T times ("last-layer MC
dropout"): nearly free, a weaker estimate.

Deviations from UPO: its estimator is a 2-way classifier reading both responses in one prompt, the RM-chosen
one always first; ours is a pairwise ranker (PairRM layout) read in both orders, p_t = sigmoid(f(x,a,b) -
f(x,b,a)), so position bias cancels inside each pass. UPO samples over a whole iteration's pairs; we sample
over one judge call's batch (the pool's <= 32 groups).

Upstream: wjn1996/Uncertainty-Preference-Optimization `src/alignment/inference/estimating/`
(`mc_evaluation.py::mc_estimation`; `sampler.py::get_BALD_acquisition`, `sample_by_bald_easiness`,
`sample_by_bald_difficulty`; the noise filter in `main.py`).

Determinism: the passes run under `torch.random.fork_rng`, seeded from (seed, the batch's group ids), so one
batch gives the same numbers whatever ran before, and the caller's RNG state is untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from sparring.shared.records import GenerationGroup, Judgement
from sparring.workers.judges.base import Judge

if TYPE_CHECKING:
    from sparring.shared.config import UncertaintyConfig
    from sparring.workers.judges.pairrm import PairRM

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------------
# Statistics of T passes


@dataclass(frozen=True)
class MCStats:
    """Per-pair statistics of T stochastic passes; every field is (N,) float64."""

    mean: torch.Tensor
    var: torch.Tensor
    bald: torch.Tensor
    agree: torch.Tensor  # fraction of passes voting like the primary judge (p_t > 1/2)

    @property
    def vote_agrees(self) -> torch.Tensor:
        """(N,) bool: the majority vote of the passes agrees with the primary judge (a tie disagrees)."""
        return self.agree > 0.5


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) in nats, with 0 ln 0 = 0 (so H(0) = H(1) = 0 exactly)."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1.0 - p, 1.0 - p))


def mc_stats(probs: torch.Tensor) -> MCStats:
    """Mean, variance, BALD and vote agreement of `probs` (T, N): P(primary's winner wins) per pass."""
    if probs.dim() != 2 or probs.shape[0] < 1:
        raise ValueError(f"probs must be (T, N) with T >= 1, got shape {tuple(probs.shape)}")
    p = probs.to(torch.float64).clamp(0.0, 1.0)
    mean = p.mean(dim=0)
    var = p.var(dim=0, unbiased=False)
    bald = (binary_entropy(mean) - binary_entropy(p).mean(dim=0)).clamp_min(0.0)
    # Identical passes carry no information about the mask: exactly 0, whatever the rounding of the mean.
    bald = torch.where((p == p[:1]).all(dim=0), torch.zeros_like(bald), bald)
    agree = (p > 0.5).to(torch.float64).mean(dim=0)
    return MCStats(mean=mean, var=var, bald=bald, agree=agree)


def sample_by_bald(bald: torch.Tensor, num: int, hard: bool, rng: random.Random) -> list[int]:
    """UPO's sampler: `num` distinct indices drawn with probability proportional to BALD (hard) or 1 - BALD
    (easy, BALD in nats scaled to [0, 1] by ln 2). Zero-weight items are drawn only once the others are spent."""
    n = int(bald.shape[0])
    num = max(0, min(num, n))
    scaled = (bald.to(torch.float64) / LN2).clamp(0.0, 1.0).tolist()
    weights = [s if hard else 1.0 - s for s in scaled]
    left = list(range(n))
    chosen: list[int] = []
    for _ in range(num):
        total = sum(weights[i] for i in left)
        if total <= 0.0:
            pick = left[rng.randrange(len(left))]
        else:
            r, acc, pick = rng.random() * total, 0.0, left[-1]
            for i in left:
                acc += weights[i]
                if r < acc:
                    pick = i
                    break
        chosen.append(pick)
        left.remove(pick)
    return sorted(chosen)


# --------------------------------------------------------------------------------------------------
# Estimators


class PairEstimator(Protocol):
    """A pairwise model with dropout: items (prompt, a, b) -> T stochastic P(a beats b)."""

    name: str

    def pass_probs(self, items: Sequence[tuple[str, str, str]], passes: int, head_only: bool) -> torch.Tensor:
        """(T, N) P(a beats b) of each pass, dropout on (only in the head when `head_only`); uses the
        global torch RNG for the masks (the caller seeds it)."""
        ...


@contextlib.contextmanager
def dropout_active(module: nn.Module, p: float | None = None) -> Iterator[int]:
    """Switch every `nn.Dropout` inside `module` to training mode (optionally with rate `p`); restore after.

    Yields how many dropout modules are active with a non-zero rate (0 means the passes are deterministic).
    Only dropout modules change mode, so nothing else in the model behaves differently.
    """
    drops = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    saved = [(m, m.training, m.p) for m in drops]
    try:
        for m in drops:
            m.train(True)
            if p is not None:
                m.p = p
        yield sum(1 for m in drops if m.p > 0)
    finally:
        for m, training, rate in saved:
            m.train(training)
            m.p = rate


class PairRMEstimator:
    """MC-dropout estimator on a PairRM ranker: p_t = sigmoid(f_t(x, a, b) - f_t(x, b, a)).

    `dropout` overrides every dropout rate during the passes (e.g. for a ranker trained without encoder
    dropout); None keeps the model's own rates (PairRM-hf: 0.1 in the encoder, 0.05 in the head).
    """

    def __init__(self, scorer: PairRM, dropout: float | None = None, name: str = "pairrm") -> None:
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.scorer = scorer
        self.dropout = dropout
        self.name = name

    def _rows(self, items: Sequence[tuple[str, str, str]]) -> list[list[int]]:
        from sparring.workers.judges.pairrm import encode_group, pair_input_ids

        s = self.scorer
        rows: list[list[int]] = []
        for x, a, b in items:  # rows 2n: (a, b), 2n + 1: (b, a)
            src, (ia, ib) = encode_group(s.tokenizer, x, [a, b], s.limits)
            rows.append(pair_input_ids(src, ia, ib, *s._ids))
            rows.append(pair_input_ids(src, ib, ia, *s._ids))
        return rows

    @torch.inference_mode()
    def prefix_states(self, rows: Sequence[list[int]]) -> torch.Tensor:
        """(3, R, H) last hidden states at the source / candidate1 / candidate2 prefix of each row (eval mode)."""
        from sparring.workers.batching import map_by_length, right_pad

        model = self.scorer.model

        def forward(chunk: list[int]) -> torch.Tensor:
            ids, mask = right_pad([rows[i] for i in chunk], self.scorer.pad_id)
            ids, mask = ids.to(self.scorer.device), mask.to(self.scorer.device)
            index = torch.arange(ids.shape[0], device=ids.device)
            positions = [
                model._prefix_positions(ids, tid, name)
                for tid, name in (
                    (model.source_prefix_id, "source"),
                    (model.cand1_prefix_id, "candidate1"),
                    (model.cand2_prefix_id, "candidate2"),
                )
            ]
            hidden = model.pretrained_model(input_ids=ids, attention_mask=mask).last_hidden_state
            return torch.stack([hidden[index, pos].float().cpu() for pos in positions])  # (3, b, H)

        out = torch.zeros(3, len(rows), model.config.hidden_size, dtype=torch.float32)
        return map_by_length([len(r) for r in rows], self.scorer.max_batch_size, forward, out, dim=1)

    @torch.inference_mode()
    def _head_logits(self, states: torch.Tensor) -> torch.Tensor:
        head = self.scorer.model.head_layer
        dtype = next(head.parameters()).dtype
        h = states.to(device=self.scorer.device, dtype=dtype)
        left = head(torch.cat([h[0], h[1]], dim=-1))
        right = head(torch.cat([h[0], h[2]], dim=-1))
        return (left - right).mean(dim=-1).double().cpu()

    def pass_probs(self, items: Sequence[tuple[str, str, str]], passes: int, head_only: bool) -> torch.Tensor:
        if not items:
            return torch.zeros(passes, 0, dtype=torch.float64)
        rows = self._rows(items)
        model = self.scorer.model
        out = []
        if head_only:
            states = self.prefix_states(rows)  # the encoder once, deterministic
            with dropout_active(model.head_layer, self.dropout):
                for _ in range(passes):
                    f = self._head_logits(states)
                    out.append(torch.sigmoid(f[0::2] - f[1::2]))
        else:
            with dropout_active(model, self.dropout):
                for _ in range(passes):
                    f = self.scorer.logits(rows)
                    out.append(torch.sigmoid(f[0::2] - f[1::2]))
        return torch.stack(out)


# --------------------------------------------------------------------------------------------------
# The wrapping judge


def _batch_seed(seed: int, groups: Sequence[GenerationGroup]) -> int:
    h = hashlib.sha256(str(seed).encode())
    for g in groups:
        h.update(b"\0" + g.record_id.encode())
    return int.from_bytes(h.digest()[:8], "big") & ((1 << 63) - 1)


def primary_order(judgement: Judgement) -> list[float]:
    """The primary judge's ranking scores: its scalar scores, else its win matrix's row means."""
    if judgement.scores is not None:
        return list(judgement.scores)
    assert judgement.win_matrix is not None
    return [sum(row) / len(row) for row in judgement.win_matrix]


@dataclass
class UncertaintyCounters:
    """Running totals over every call (the pool reports them per drain)."""

    pairs: int = 0
    dropped: int = 0
    disagreed: int = 0
    bald_sum: float = 0.0
    weight_sum: float = 0.0


class UncertaintyJudge:
    """Primary judge -> MC-dropout estimator: the primary's judgement with UPO confidences per pair."""

    def __init__(
        self,
        primary: Judge,
        estimator: PairEstimator,
        mode: str = "filter",
        passes: int = 10,
        head_only: bool = False,
        min_prob: float = 0.5,
        max_bald: float | None = None,
        sample_rate: float = 0.5,
        seed: int = 0,
    ) -> None:
        if mode not in ("filter", "easy", "hard", "weight"):
            raise ValueError(f"mode must be filter, easy, hard or weight, got {mode!r}")
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.primary = primary
        self.estimator = estimator
        self.mode = mode
        self.passes = passes
        self.head_only = head_only
        self.min_prob = min_prob
        self.max_bald = max_bald
        self.sample_rate = sample_rate
        self.seed = seed
        self.name = f"{primary.name}+upo_{mode}"
        # The pool cancels position bias of the *primary* judge; the estimator reads both orders itself.
        self.order_sensitive = bool(getattr(primary, "order_sensitive", False))
        self.counters = UncertaintyCounters()
        self.last_stats: list[tuple[str, int, int, float, float, float, float]] = []  # diagnostics

    _DELEGATED = ("flip_pairs", "flip_consistent", "follows_policy")

    def __getattr__(self, name: str) -> object:
        # The primary's optional capabilities (base.py) show through the wrapper, and only where it has them:
        # a self-debiasing primary is not scored twice by the pool, a policy-following one is never cached.
        if name in UncertaintyJudge._DELEGATED:
            return getattr(self.__dict__["primary"], name)
        raise AttributeError(name)

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        judgements = self.primary.judge(groups)
        if len(judgements) != len(groups):
            raise ValueError(f"{self.primary.name} returned {len(judgements)} judgements for {len(groups)} groups")
        pairs: list[tuple[int, int, int]] = []  # (group, winner, loser) by the primary judge
        items: list[tuple[str, str, str]] = []
        for g, (group, jd) in enumerate(zip(groups, judgements, strict=True)):
            scores = primary_order(jd)
            for i in range(len(scores)):
                for j in range(len(scores)):
                    if scores[i] > scores[j]:
                        pairs.append((g, i, j))
                        items.append((group.prompt, group.completions[i].text, group.completions[j].text))
        seed = _batch_seed(self.seed, groups)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            probs = self.estimator.pass_probs(items, self.passes, self.head_only)
        stats = mc_stats(probs) if pairs else None
        conf_values = self._confidences(stats, random.Random(seed)) if stats is not None else []
        confidences = [[[1.0] * jd.num_responses for _ in range(jd.num_responses)] for jd in judgements]
        self.last_stats = []
        for n, ((g, i, j), c) in enumerate(zip(pairs, conf_values, strict=True)):
            confidences[g][i][j] = confidences[g][j][i] = c
            assert stats is not None
            self.last_stats.append(
                (groups[g].record_id, i, j, float(stats.mean[n]), float(stats.var[n]), float(stats.bald[n]), c)
            )
        if stats is not None:
            self.counters.pairs += len(pairs)
            self.counters.dropped += sum(1 for c in conf_values if c == 0.0)
            self.counters.disagreed += int((~stats.vote_agrees).sum())
            self.counters.bald_sum += float(stats.bald.sum())
            self.counters.weight_sum += sum(conf_values)
        return [
            jd.model_copy(update={"judge": self.name, "confidence": conf})
            for jd, conf in zip(judgements, confidences, strict=True)
        ]

    def _confidences(self, stats: MCStats, rng: random.Random) -> list[float]:
        n = int(stats.mean.shape[0])
        if self.mode == "weight":
            return [float(w) for w in (1.0 - stats.bald / LN2).clamp(0.0, 1.0)]
        keep = stats.vote_agrees & (stats.mean >= self.min_prob)
        if self.max_bald is not None:
            keep &= stats.bald <= self.max_bald
        kept = [k for k in range(n) if bool(keep[k])]
        if self.mode in ("easy", "hard"):
            num = round(self.sample_rate * len(kept))
            picked = sample_by_bald(stats.bald[kept], num, hard=self.mode == "hard", rng=rng)
            kept = [kept[p] for p in picked]  # original indices (UPO's saving bug indexed by position)
        chosen = set(kept)
        return [1.0 if k in chosen else 0.0 for k in range(n)]


# --------------------------------------------------------------------------------------------------
# Construction from the config


def build_estimator(cfg: UncertaintyConfig) -> PairEstimator:
    """The configured estimator: a PairRM directory or hub id, or a PairRM model a task registers (built once)."""
    from sparring.shared.models import resolve_model_path
    from sparring.workers.judges.pairrm import PairRM

    path = resolve_model_path(cfg.estimator, cfg.seed)
    return PairRMEstimator(PairRM.load(path, max_batch_size=cfg.batch_size), dropout=cfg.dropout)


def wrap_with_uncertainty(primary: Judge, cfg: UncertaintyConfig, estimator: PairEstimator | None = None) -> Judge:
    """primary judge -> uncertainty filter, as `judge.uncertainty` configures it."""
    return UncertaintyJudge(
        primary,
        estimator or build_estimator(cfg),
        mode=cfg.mode,
        passes=cfg.passes,
        head_only=cfg.head_only,
        min_prob=cfg.min_prob,
        max_bald=cfg.max_bald,
        sample_rate=cfg.sample_rate,
        seed=cfg.seed,
    )
