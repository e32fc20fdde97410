"""MC-dropout uncertainty (UPO): statistics, estimator passes, modes, determinism, config composition."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from sparring.shared.config import judge_config
from sparring.shared.records import Completion, GenerationGroup
from sparring.tasks.arena import rules as arena
from sparring.tasks.arena.oracle import ArenaOracleJudge
from sparring.workers.judges import pairrm as prm
from sparring.workers.judges import pairrm_train as pt
from sparring.workers.judges import uncertainty as u
from sparring.workers.judges.registry import build_judge

# --------------------------------------------------------------------------------------------------
# fixtures: a tiny PairRM with dropout in the encoder and the head, arena groups judged by the oracle


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairrm-mc")
    rng = random.Random(0)
    prompts = arena.arena_prompts("train")[:40]
    texts = [p.prompt for p in prompts] + [arena.corpus_response(p.topic, rng) for p in prompts for _ in range(3)]
    tok = pt.train_pairrm_tokenizer(texts, 200, out)
    model = pt.tiny_pairrm(
        tok, seed=5, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        hidden_dropout_prob=0.1, drop_out=0.2,
    )  # fmt: skip
    with torch.no_grad():  # O(1) logits so that probabilities are not all ~1/2
        for layer in (model.head_layer[1], model.head_layer[4]):
            layer.weight.normal_(0.0, 3.0 / layer.weight.shape[1] ** 0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def scorer(tiny_dir: Path) -> prm.PairRM:
    torch.set_num_threads(1)
    return prm.PairRM.load(tiny_dir, max_batch_size=16)


def arena_groups(n: int, k: int = 3, seed: int = 0) -> list[GenerationGroup]:
    rng = random.Random(seed)
    out = []
    for p in arena.arena_prompts("heldout")[:n]:
        texts = [arena.corpus_response(p.topic, rng) for _ in range(k)]
        out.append(make_group(p.prompt_id, p.prompt, texts))
    return out


def make_group(prompt_id: str, prompt: str, texts: Sequence[str]) -> GenerationGroup:
    comps = [
        Completion(index=i, text=t, token_ids=[i + 1], logprobs=None, finish_reason="stop") for i, t in enumerate(texts)
    ]
    return GenerationGroup(
        run_id="t", iteration=1, policy_version=0, prompt_id=prompt_id, prompt=prompt, prompt_token_ids=[1],
        completions=comps, engine_id="test", seed=0, latency_s=0.0,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# statistics


def test_bald_is_nonnegative_bounded_and_matches_hand_values() -> None:
    gen = torch.Generator().manual_seed(0)
    for t in (1, 2, 5, 30):
        p = torch.rand(t, 200, generator=gen, dtype=torch.float64)
        p[:, :10] = torch.tensor([0.0, 1.0]).repeat(t, 5)  # saturated columns: H = 0 exactly
        s = u.mc_stats(p)
        assert bool((s.bald >= 0).all()) and bool((s.bald <= math.log(2) + 1e-12).all())
    # Two passes 0.9 / 0.1: mean 0.5, H(0.5) = ln 2, H(0.9) = H(0.1) = 0.325083; BALD = 0.368064
    s = u.mc_stats(torch.tensor([[0.9], [0.1]], dtype=torch.float64))
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert float(s.bald[0]) == pytest.approx(math.log(2) - h, abs=1e-12)
    assert float(s.mean[0]) == pytest.approx(0.5) and float(s.var[0]) == pytest.approx(0.16)
    assert float(s.agree[0]) == 0.5 and not bool(s.vote_agrees[0])  # a tie is not a majority
    # identical passes (no dropout): exactly zero, whatever the value
    s = u.mc_stats(torch.full((7, 4), 0.3141592653589793, dtype=torch.float64))
    assert s.bald.tolist() == [0.0] * 4 and s.var.tolist() == [0.0] * 4


def test_sample_by_bald_easy_and_hard() -> None:
    bald = torch.tensor([0.0, 0.0, math.log(2), math.log(2), 0.3, 0.0])
    for seed in range(20):
        hard = u.sample_by_bald(bald, 3, hard=True, rng=random.Random(seed))
        easy = u.sample_by_bald(bald, 3, hard=False, rng=random.Random(seed))
        assert len(set(hard)) == 3 and len(set(easy)) == 3
        assert set(hard) == {2, 3, 4}  # the only three with BALD > 0
        assert not {2, 3} & set(easy)  # BALD = ln 2 has easy weight 0
    assert u.sample_by_bald(bald, 99, hard=True, rng=random.Random(0)) == list(range(6))


# --------------------------------------------------------------------------------------------------
# the PairRM estimator


ITEMS = [
    ("Tell me about otters.", "glad you asked. otters are fun.", "well."),
    ("What do you know about foxes?", "i see. hello there", "people often talk about foxes. thanks."),
    ("Tell me about rivers.", "it is a common question.", "happy to help. the answer depends."),
]


@pytest.mark.parametrize("head_only", [False, True])
def test_no_dropout_passes_equal_the_deterministic_ranker(scorer: prm.PairRM, head_only: bool) -> None:
    est = u.PairRMEstimator(scorer, dropout=0.0)
    probs = est.pass_probs(ITEMS, 6, head_only=head_only)
    assert probs.shape == (6, 3)
    expected = torch.sigmoid(scorer.compare(*zip(*ITEMS, strict=True)))  # eval mode, both orders
    torch.testing.assert_close(probs[0], expected, atol=1e-6, rtol=0)
    s = u.mc_stats(probs)
    assert s.bald.tolist() == [0.0, 0.0, 0.0] and s.var.tolist() == [0.0, 0.0, 0.0]
    assert not scorer.model.training and all(not m.training for m in scorer.model.modules())


@pytest.mark.parametrize("head_only", [False, True])
def test_dropout_passes_vary_and_bald_nonnegative(scorer: prm.PairRM, head_only: bool) -> None:
    est = u.PairRMEstimator(scorer)  # the model's own rates: 0.1 encoder, 0.2 head
    torch.manual_seed(0)
    probs = est.pass_probs(ITEMS * 4, 10, head_only=head_only)
    s = u.mc_stats(probs)
    assert bool((s.var > 0).all()), s.var
    assert bool((s.bald > 0).all()) and bool((s.bald <= math.log(2)).all())
    assert all(not m.training for m in scorer.model.modules())  # dropout switched back off


# --------------------------------------------------------------------------------------------------
# the wrapping judge


def test_same_seed_same_outputs_and_rng_untouched(scorer: prm.PairRM) -> None:
    groups = arena_groups(6)

    def run(seed: int, mode: str = "weight") -> tuple[list, list]:
        judge = u.UncertaintyJudge(ArenaOracleJudge(), u.PairRMEstimator(scorer), mode=mode, passes=8, seed=seed)
        out = judge.judge(groups)
        return [j.confidence for j in out], judge.last_stats

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = run(1)
    assert torch.equal(state, torch.get_rng_state())  # fork_rng: the caller's stream is untouched
    torch.manual_seed(999)  # whatever ran before does not matter
    b = run(1)
    assert a == b
    c = run(2)
    assert [x[5] for x in a[1]] != [x[5] for x in c[1]]  # another seed, other masks, other BALD
    assert run(1, "hard") == run(1, "hard")


class TaggedEstimator:
    """Votes for the response containing "gold" (p = 0.9 +- noise from the seeded global RNG), else against it."""

    name = "tagged"

    def pass_probs(self, items: Sequence[tuple[str, str, str]], passes: int, head_only: bool) -> torch.Tensor:
        base = torch.tensor([0.9 if "gold" in a else 0.1 for _, a, _ in items], dtype=torch.float64)
        return (base + 0.08 * (torch.rand(passes, len(items), dtype=torch.float64) - 0.5)).clamp(0, 1)


class LengthJudge:
    """Primary judge for these tests: the longer response is better."""

    name = "length"
    order_sensitive = False

    def judge(self, groups: Sequence[GenerationGroup]) -> list:
        from sparring.shared.records import Judgement

        return [Judgement(judge=self.name, scores=[float(len(c.text)) for c in g.completions]) for g in groups]


def test_filter_drops_exactly_the_disagreeing_pairs() -> None:
    groups = [
        make_group("p0", "q", ["gold long answer", "short", "mid answer"]),  # gold wins with primary: kept
        make_group("p1", "q", ["gold", "a much longer answer"]),  # primary prefers the non-gold one: dropped
    ]
    judge = u.UncertaintyJudge(LengthJudge(), TaggedEstimator(), mode="filter", passes=5)
    out = judge.judge(groups)
    c0, c1 = out[0].confidence, out[1].confidence
    assert out[0].judge == "length+upo_filter" and out[0].scores == [16.0, 5.0, 10.0]
    # group 0: pairs (0>1), (0>2) have the gold winner -> kept; (2>1) has a non-gold winner -> dropped
    assert c0[0][1] == c0[1][0] == 1.0 and c0[0][2] == c0[2][0] == 1.0 and c0[2][1] == c0[1][2] == 0.0
    assert c1[1][0] == c1[0][1] == 0.0
    assert judge.counters.pairs == 4 and judge.counters.dropped == 2 and judge.counters.disagreed == 2
    # a stricter min_prob also drops an agreeing pair of mean ~0.9
    strict = u.UncertaintyJudge(LengthJudge(), TaggedEstimator(), mode="filter", passes=5, min_prob=0.95)
    assert strict.judge(groups[:1])[0].confidence[0][1] == 0.0


def test_weight_and_sampling_modes() -> None:
    groups = [make_group(f"p{i}", "q", ["gold long answer", "short", "mid answer"]) for i in range(10)]
    w = u.UncertaintyJudge(LengthJudge(), TaggedEstimator(), mode="weight", passes=6).judge(groups)
    for jd in w:
        assert 0.0 < jd.confidence[0][1] < 1.0 and jd.confidence[0][1] == jd.confidence[1][0]
    # the pool carries a weight-mode confidence to the trainer as the pair's loss weight
    from sparring.workers.judges.pool import apply_confidence
    from sparring.workers.recipes.pairs import build_pairs

    pairs, dropped = apply_confidence(build_pairs(groups[0], w[0], "all_pairs"), w[0])
    assert dropped == 0 and pairs
    for pair in pairs:
        assert pair.weight == pytest.approx(w[0].confidence[pair.chosen.index][pair.rejected.index]) and pair.weight < 1
    hard = u.UncertaintyJudge(LengthJudge(), TaggedEstimator(), mode="hard", passes=6, sample_rate=0.5)
    out = hard.judge(groups)
    kept = sum(1 for jd in out for i, j in ((0, 1), (0, 2), (2, 1)) if jd.confidence[i][j] == 1.0)
    assert kept == 10  # 20 pairs survive the filter (the 10 "mid > short" pairs are dropped); half drawn
    assert all(jd.confidence[2][1] == 0.0 for jd in out)


def test_config_composition(tiny_dir: Path) -> None:
    cfg = judge_config(kind="arena_oracle", uncertainty={"estimator": str(tiny_dir), "mode": "easy", "passes": 3})
    judge = build_judge(cfg)
    assert isinstance(judge, u.UncertaintyJudge)
    assert judge.name == "arena_oracle+upo_easy" and judge.passes == 3
    out = judge.judge(arena_groups(4))
    assert all(jd.confidence is not None for jd in out)
    with pytest.raises(ValueError, match="wraps a primary judge"):
        judge_config(kind="none", uncertainty={"estimator": str(tiny_dir)})
