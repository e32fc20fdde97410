"""Per-iteration diagnostics of the policy on a fixed set of held-out judged pairs (`eval.heldout_pairs`).

Metrics (in the iteration record's `metrics`, TRL-style names; P = held-out pairs):

- `heldout/ranking_accuracy`: the fraction of held-out pairs where the policy after the iteration gives the
  chosen answer a higher summed log-prob than the rejected one, log pi(y_w|x) > log pi(y_l|x) (a tie counts
  as wrong). Chen et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings"
  (arXiv 2405.19534), Sec. 2, ranking accuracy R(pi).
- `heldout/idealized_ranking_accuracy`: the same fraction under the ideal DPO/RLHF policy of this
  iteration's objective, pi*(y|x) ∝ pi_ref(y|x) exp(r(x,y)/β) with the judge's preference strength as
  the Bradley-Terry probability α = P(y_w ≻ y_l) = σ(r_w − r_l) (`PreferencePair.win_prob`):
  log pi*(y_w|x) − log pi*(y_l|x) = log pi_ref(y_w|x) − log pi_ref(y_l|x) + logit(α)/β
  (arXiv 2405.19534 Sec. 3, Theorem 3.1 and the idealized ranking accuracy built on it; DPO's optimum,
  arXiv 2305.18290 Eq. 4). A hard label (α = 1) makes the ideal policy rank the pair right whatever the
  reference does; α = ½ leaves the reference's ranking. β is `algorithm.beta`, or 1/η for the SPPO
  objectives (their target is pi_t exp(η·P)); absent for an objective with neither. pi_ref is the
  objective's reference: the initial policy (`algorithm.reference: initial`; LoRA: the adapter off), else
  the iteration-start policy.
- `heldout/alignment_gap`: idealized minus observed ranking accuracy (the paper's alignment gap).
- `heldout/logps/chosen`, `heldout/logps/rejected`: mean summed log-probs (nats) of the held-out chosen and
  rejected answers under the policy after the iteration; `heldout/logps/chosen_delta`,
  `heldout/logps/rejected_delta`: their change during the iteration (after − before, the same pairs, so
  the delta never mixes sets while the set fills). Both negative is the classic DPO failure (likelihood
  displacement: the margin grows while the likelihood of the preferred answer falls too; Razin et al. 2024,
  arXiv 2410.08847; Pal et al. 2024, arXiv 2402.13228 Sec. 3): the controller emits a
  `likelihood_displacement` event and `heldout/both_logps_fell` is 1.
- `heldout/pairs`: the set's size this iteration; `heldout/pairs_withheld`: this iteration's pairs not
  trained because their prompt is held out (the record's `num_pairs` counts every pair of the iteration,
  these included; `train/pairs` counts the trained ones).

How the set is drawn (`HeldoutPairs.split`): from each iteration's trainable pairs, in the order of a digest
of (run seed, prompt id) — a fixed pseudo-random order of prompts that arrival order cannot change — whole
prompts (every pair of a prompt, so no sibling pair of a held-out answer is trained) are moved into the
set until it holds `eval.heldout_pairs` pairs, taking at most a quarter of one iteration's pairs (a small
async batch still trains). Once full it never changes. Held-out prompts' pairs in later iterations are not
trained either. The set lives in the run's Redis kv (`heldout_pairs`), so a restarted trainer or a resumed
run measures the same pairs. Paired objectives only (not KTO, BCO); a sharded trainer withholds the same
pairs (it trains what one rank would) but computes no metric.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from sparring.shared.records import PreferencePair

PREFIX = "heldout/"
KV_KEY = "heldout_pairs"
MAX_ITERATION_SHARE = 0.25  # at most this fraction of one iteration's pairs goes to the held-out set


def ranking_accuracy(chosen_logps: Sequence[float], rejected_logps: Sequence[float]) -> float:
    """Fraction of pairs with log pi(chosen) > log pi(rejected) (summed log-probs, nats; ties are wrong).
    arXiv 2405.19534 Sec. 2. `ValueError` on empty or unequal-length inputs."""
    _check_lengths(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    return sum(c > r for c, r in zip(chosen_logps, rejected_logps, strict=True)) / len(chosen_logps)


def idealized_margin(ref_chosen: float, ref_rejected: float, win_prob: float, beta: float) -> float:
    """log pi*(y_w|x) − log pi*(y_l|x) of the ideal DPO policy: the reference's log-ratio plus logit(α)/β
    (arXiv 2405.19534 Theorem 3.1); ±inf for α = 1 / 0. `ValueError` for α outside [0, 1] or β <= 0."""
    if not 0.0 <= win_prob <= 1.0 or math.isnan(win_prob):
        raise ValueError(f"win_prob must be a probability in [0, 1], got {win_prob}")
    if not beta > 0.0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if win_prob == 1.0:
        return math.inf
    if win_prob == 0.0:
        return -math.inf
    return ref_chosen - ref_rejected + math.log(win_prob / (1.0 - win_prob)) / beta


def idealized_ranking_accuracy(
    ref_chosen: Sequence[float], ref_rejected: Sequence[float], win_prob: Sequence[float], beta: float
) -> float:
    """Fraction of pairs the ideal DPO policy ranks right (`idealized_margin` > 0; ties are wrong).
    arXiv 2405.19534 Sec. 3. `ValueError` on empty or unequal-length inputs, a bad α or β."""
    _check_lengths(ref_chosen=ref_chosen, ref_rejected=ref_rejected, win_prob=win_prob)
    margins = [idealized_margin(c, r, a, beta) for c, r, a in zip(ref_chosen, ref_rejected, win_prob, strict=True)]
    return sum(m > 0 for m in margins) / len(margins)


def objective_beta(algo: Any) -> float | None:
    """The KL weight β of the objective's ideal policy: `beta`, or 1/`eta` (SPPO); None when it has neither."""
    beta = getattr(algo, "beta", None)
    if beta is not None:
        return float(beta)
    eta = getattr(algo, "eta", None)
    return None if eta is None else 1.0 / float(eta)


def heldout_metrics(
    before: tuple[Sequence[float], Sequence[float]],
    after: tuple[Sequence[float], Sequence[float]],
    reference: tuple[Sequence[float], Sequence[float]],
    win_prob: Sequence[float],
    beta: float | None,
) -> dict[str, float]:
    """The `heldout/*` metrics from (chosen, rejected) summed log-probs of the held-out pairs under the policy
    before and after the iteration and under the reference, and the pairs' judge strengths."""
    chosen, rejected = after
    n = len(chosen)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = {
        f"{PREFIX}pairs": float(n),
        f"{PREFIX}ranking_accuracy": ranking_accuracy(chosen, rejected),
        f"{PREFIX}logps/chosen": mean(chosen),
        f"{PREFIX}logps/rejected": mean(rejected),
        f"{PREFIX}logps/chosen_delta": mean(chosen) - mean(before[0]),
        f"{PREFIX}logps/rejected_delta": mean(rejected) - mean(before[1]),
    }
    out[f"{PREFIX}both_logps_fell"] = float(out[f"{PREFIX}logps/chosen_delta"] < 0 and out[f"{PREFIX}logps/rejected_delta"] < 0)
    if beta is not None:
        ideal = idealized_ranking_accuracy(reference[0], reference[1], win_prob, beta)
        out[f"{PREFIX}idealized_ranking_accuracy"] = ideal
        out[f"{PREFIX}alignment_gap"] = ideal - out[f"{PREFIX}ranking_accuracy"]
    return out


def _check_lengths(**columns: Sequence[float]) -> None:
    sizes = {name: len(values) for name, values in columns.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise ValueError(f"need equal, non-empty columns, got lengths {sizes}")


def prompt_order_key(seed: int, prompt_id: str) -> str:
    """The fixed pseudo-random rank of a prompt in the held-out draw: sha256 of (seed, prompt id)."""
    return hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()


class HeldoutPairs:
    """The run's held-out pairs: drawn from the first iterations' pairs, then fixed (module docstring).

    `store` is a `RunStore` (kv `heldout_pairs`: the pairs as JSON lines); `size` = `eval.heldout_pairs`."""

    def __init__(self, store: Any, run_id: str, size: int, seed: int) -> None:
        if size < 0:
            raise ValueError(f"eval.heldout_pairs must be >= 0, got {size}")
        self.store, self.run_id, self.size, self.seed = store, run_id, size, seed
        blob = store.get_value(run_id, KV_KEY) if size else None
        lines = blob.decode().splitlines() if blob else []
        self.pairs: list[PreferencePair] = [PreferencePair.model_validate_json(line) for line in lines if line]

    def split(self, pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
        """Move whole prompts of `pairs` into the set while it has room (at most a quarter of `pairs`) and
        return the pairs to train on: every pair whose prompt is not held out."""
        if not self.size:
            return list(pairs)
        held_prompts = {p.prompt_id for p in self.pairs}
        held_ids = {p.record_id for p in self.pairs}
        # a retried iteration (restarted trainer, resumed run) already gave its share on the first attempt
        already = sum(p.record_id in held_ids for p in pairs)
        budget = min(self.size - len(self.pairs), int(len(pairs) * MAX_ITERATION_SHARE) - already)
        if budget > 0:
            by_prompt: dict[str, list[PreferencePair]] = {}
            for p in pairs:
                if p.prompt_id not in held_prompts:
                    by_prompt.setdefault(p.prompt_id, []).append(p)
            added = False
            for prompt_id in sorted(by_prompt, key=lambda pid: prompt_order_key(self.seed, pid)):
                group = [p for p in by_prompt[prompt_id] if p.record_id not in held_ids]
                if not group or len(group) > budget:
                    continue
                self.pairs += group
                held_prompts.add(prompt_id)
                budget -= len(group)
                added = True
                if budget == 0:
                    break
            if added:
                self.store.set_value(self.run_id, KV_KEY, "\n".join(p.model_dump_json() for p in self.pairs).encode())
        return [p for p in pairs if p.prompt_id not in held_prompts]
