"""Held-out diagnostics (workers/diagnostics.py): ranking accuracy and idealized ranking accuracy (Chen et al.
2024, arXiv 2405.19534) on hand-computable cases, log-prob drift, the held-out draw against a real Redis, and
the trainer's log-probs of held-out pairs before and after training on a tiny local Llama."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import redis

from sparring.shared.config import DPOConfig, SPPOConfig, parse_config
from sparring.shared.store import RunStore
from sparring.workers.diagnostics import (
    HeldoutPairs,
    heldout_metrics,
    idealized_margin,
    idealized_ranking_accuracy,
    objective_beta,
    ranking_accuracy,
)
from tests.helpers import make_tiny_checkpoint
from tests.unit.test_trainer import make_pair, make_trainer, synthetic_pairs


def test_ranking_accuracy_counts_strictly_higher_chosen_logps() -> None:
    # pair 1 right, pair 2 wrong, pair 3 a tie (wrong: the paper's strict inequality)
    assert ranking_accuracy([-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0]) == pytest.approx(1 / 3)
    assert ranking_accuracy([-0.5], [-9.0]) == 1.0
    with pytest.raises(ValueError, match="equal, non-empty"):
        ranking_accuracy([-1.0], [-1.0, -2.0])
    with pytest.raises(ValueError, match="equal, non-empty"):
        ranking_accuracy([], [])


def test_idealized_margin_adds_the_judges_log_odds_over_beta_to_the_reference() -> None:
    # reference prefers the rejected answer by 1 nat; α = 3/4: logit = ln 3 = 1.0986
    assert idealized_margin(-5.0, -4.0, 0.75, 0.5) == pytest.approx(-1.0 + math.log(3.0) / 0.5)  # +1.197: right
    assert idealized_margin(-5.0, -4.0, 0.75, 10.0) == pytest.approx(-1.0 + math.log(3.0) / 10.0)  # -0.890: wrong
    assert idealized_margin(-5.0, -4.0, 0.5, 0.1) == pytest.approx(-1.0)  # no preference: the reference's ranking
    assert idealized_margin(-50.0, -4.0, 1.0, 0.1) == math.inf  # a hard label: always ranked right
    assert idealized_margin(-1.0, -4.0, 0.0, 0.1) == -math.inf
    with pytest.raises(ValueError, match="win_prob must be a probability"):
        idealized_margin(0.0, 0.0, 1.5, 0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        idealized_margin(0.0, 0.0, 0.5, 0.0)


def test_idealized_ranking_accuracy_on_a_hand_computed_set() -> None:
    ref_c, ref_r = [-5.0, -5.0, -3.0, -3.0], [-4.0, -4.0, -4.0, -2.0]
    alphas = [0.75, 0.5, 0.5, 1.0]
    # β = 0.5: +1.197 right, -1 wrong, +1 right, +inf right -> 3/4; β = 10: the first flips -> 2/4
    assert idealized_ranking_accuracy(ref_c, ref_r, alphas, 0.5) == 0.75
    assert idealized_ranking_accuracy(ref_c, ref_r, alphas, 10.0) == 0.5


def test_heldout_metrics_report_drift_and_flag_both_logps_falling() -> None:
    before = ([-10.0, -12.0], [-11.0, -11.0])
    after = ([-11.0, -12.5], [-14.0, -13.0])  # margin up, but both sides fell: likelihood displacement
    m = heldout_metrics(before, after, before, [1.0, 0.5], beta=0.1)
    assert m["heldout/pairs"] == 2.0
    assert m["heldout/ranking_accuracy"] == 1.0
    assert m["heldout/logps/chosen"] == pytest.approx(-11.75) and m["heldout/logps/rejected"] == pytest.approx(-13.5)
    assert m["heldout/logps/chosen_delta"] == pytest.approx(-0.75)
    assert m["heldout/logps/rejected_delta"] == pytest.approx(-2.5)
    assert m["heldout/both_logps_fell"] == 1.0
    # the reference ranks pair 2 wrong (-12 < -11) and α = ½ keeps it: idealized 1/2, gap -1/2
    assert m["heldout/idealized_ranking_accuracy"] == 0.5 and m["heldout/alignment_gap"] == -0.5
    rising = heldout_metrics(before, ([-9.0, -12.0], [-14.0, -13.0]), before, [1.0, 1.0], beta=None)
    assert rising["heldout/both_logps_fell"] == 0.0 and rising["heldout/logps/chosen_delta"] == pytest.approx(0.5)
    assert "heldout/idealized_ranking_accuracy" not in rising  # no β: no ideal policy to compare with


def test_objective_beta_is_beta_or_one_over_eta() -> None:
    assert objective_beta(DPOConfig(beta=0.1)) == 0.1
    assert objective_beta(SPPOConfig(eta=1000.0)) == pytest.approx(0.001)


def prompt_pairs(prompt: int, n: int, iteration: int = 1) -> list:
    pairs = []
    for j in range(n):
        p = make_pair(prompt, [5, 6, prompt % 200 + 10], [20 + j, 7], [40 + j, 8])
        chosen, rejected = p.chosen.model_copy(update={"index": 2 * j}), p.rejected.model_copy(update={"index": 2 * j + 1})
        pairs.append(p.model_copy(update={"chosen": chosen, "rejected": rejected, "iteration": iteration,
                                          "policy_version": iteration - 1}))  # fmt: skip
    return pairs


def test_heldout_pairs_hold_whole_prompts_fixed_and_persisted(redis_client: redis.Redis) -> None:
    store, run = RunStore(redis_client), "diag-run"
    redis_client.delete(f"run:{run}:kv")
    pairs = [p for k in range(40) for p in prompt_pairs(k, 2)]  # 80 pairs, 2 per prompt
    held = HeldoutPairs(store, run, size=10, seed=3)
    train = held.split(pairs)
    assert len(held.pairs) == 10 and len(train) == 70  # 5 whole prompts
    held_prompts = {p.prompt_id for p in held.pairs}
    assert len(held_prompts) == 5 and not held_prompts & {p.prompt_id for p in train}
    # the same draw whatever the arrival order and from a fresh object (read back from Redis)
    again = HeldoutPairs(store, run, size=10, seed=3)
    assert [p.record_id for p in again.pairs] == [p.record_id for p in held.pairs]
    redis_client.delete(f"run:{run}:kv")
    shuffled = HeldoutPairs(store, run, size=10, seed=3)
    shuffled.split(list(reversed(pairs)))
    assert {p.record_id for p in shuffled.pairs} == {p.record_id for p in held.pairs}
    # full: a later iteration adds nothing and trains none of the held-out prompts' new pairs
    later = [p for k in range(40) for p in prompt_pairs(k, 2, iteration=2)]
    train2 = again.split(later)
    assert len(again.pairs) == 10 and len(train2) == 70
    # a small iteration gives at most a quarter of its pairs
    redis_client.delete(f"run:{run}:kv")
    small = HeldoutPairs(store, run, size=64, seed=3)
    assert len(small.split(pairs[:16])) == 12 and len(small.pairs) == 4
    retried = HeldoutPairs(store, run, size=64, seed=3)  # the same iteration again (a restarted trainer)
    assert len(retried.split(pairs[:16])) == 12 and [p.record_id for p in retried.pairs] == [p.record_id for p in small.pairs]
    with pytest.raises(ValueError, match="eval.heldout_pairs must be >= 0"):
        HeldoutPairs(store, run, size=-1, seed=3)
    assert HeldoutPairs(store, "off", size=0, seed=3).split(pairs) == pairs


def test_config_field_defaults_and_bounds() -> None:
    base = {"policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}, "prompts": {"source": "arena"}}
    assert parse_config(base).eval.heldout_pairs == 64
    with pytest.raises(Exception, match="heldout_pairs"):
        parse_config({**base, "eval": {"heldout_pairs": -1}})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "policy", seed=0)


def test_training_raises_heldout_ranking_accuracy_and_the_reference_stays_put(ckpt: Path) -> None:
    trainer = make_trainer(ckpt, batch_size=8, epochs=4, algo=DPOConfig(beta=0.1, reference="initial"))
    examples, _ = trainer.tokenize_pairs(synthetic_pairs(32, seed=99))  # never trained on
    before = trainer.pair_logps(examples)
    reference = trainer.pair_logps(examples, initial=True)
    assert [list(x) for x in reference] == [pytest.approx(list(x)) for x in before]  # version 0 is the initial policy
    trainer.train_iteration(synthetic_pairs(48), iteration=1)
    after = trainer.pair_logps(examples)
    m = heldout_metrics(before, after, trainer.pair_logps(examples, initial=True), [e.win_prob for e in examples], 0.1)
    assert m["heldout/ranking_accuracy"] > ranking_accuracy(*before) + 0.2  # it learnt the chosen ending
    now = trainer.pair_logps(examples, initial=True)
    assert [list(x) for x in now] == [pytest.approx(list(x)) for x in reference]  # the reference never trains
    assert m["heldout/idealized_ranking_accuracy"] == 1.0  # α = 0.9, β = 0.1: logit/β = 22 nats beats the reference
    with pytest.raises(ValueError, match="needs a trainer with an initial policy"):
        make_trainer(ckpt).pair_logps(examples, initial=True)
