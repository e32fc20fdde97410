"""PolicyTrainer on a tiny local Llama: log-prob masking, DPO learning, checkpoints, bad pairs, determinism."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from sparring.shared.config import AlgorithmConfig, DPOConfig, SPPOConfig, TrainerConfig
from sparring.shared.records import Completion, PreferencePair
from sparring.workers.batching import WarmupSchedule
from sparring.workers.logps import collate_sequences, sequence_logps, sequence_logps_full_softmax
from sparring.workers.trainer import PolicyTrainer, collate_pairs
from sparring.workers.trainer_state import TRAINER_STATE_FILE
from tests.helpers import make_tiny_checkpoint

CHOSEN_END = 7  # the synthetic preference: a chosen response always ends with this token ...
REJECTED_END = 8  # ... and a rejected one with this one


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "policy", seed=0)


def completion(index: int, ids: list[int], finish_reason: str = "stop") -> Completion:
    return Completion(
        index=index, text="", token_ids=ids, logprobs=[0.0] * len(ids), finish_reason=finish_reason
    )


def make_pair(
    k: int, prompt: list[int], chosen: list[int], rejected: list[int], win_prob: float = 0.9
) -> PreferencePair:
    return PreferencePair(
        run_id="run",
        iteration=1,
        policy_version=0,
        prompt_id=f"p{k}",
        prompt="prompt",
        prompt_token_ids=prompt,
        chosen=completion(0, chosen),
        rejected=completion(1, rejected),
        chosen_score=1.0,
        rejected_score=0.0,
        win_prob=win_prob,
        judge="test",
    )


def synthetic_pairs(n: int, seed: int = 0) -> list[PreferencePair]:
    """Random prompts and bodies; chosen = body + CHOSEN_END, rejected = other body + REJECTED_END."""
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(10, 300) for _ in range(rng.randint(lo, hi))]

    return [make_pair(k, ids(3, 8), ids(2, 7) + [CHOSEN_END], ids(2, 7) + [REJECTED_END]) for k in range(n)]


def trainer_cfg(**overrides: object) -> TrainerConfig:
    values: dict[str, object] = dict(
        learning_rate=1e-3, batch_size=8, epochs=1, scheduler="constant", warmup_ratio=0.0, torch_threads=1
    )
    values.update(overrides)
    return TrainerConfig.model_validate(values)


def make_trainer(
    ckpt: Path, seed: int = 0, algo: AlgorithmConfig | None = None, **overrides: object
) -> PolicyTrainer:
    return PolicyTrainer(str(ckpt), trainer_cfg(**overrides), algo or DPOConfig(beta=0.1), seed=seed)


def weights(trainer: PolicyTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Log-probs


def test_padding_and_prompt_masking_are_exact(ckpt: Path) -> None:
    """Each row's log-prob in a right-padded batch equals the one computed on that sequence alone."""
    trainer = make_trainer(ckpt)
    prompts = [[11, 12, 13], [14, 15, 16, 17, 18, 19], [20]]
    completions = [[30, 31, 32, 33, 34, 35, 36, 37], [40, 41], [50, 51, 52, 53]]
    with torch.no_grad():
        batched, lengths = sequence_logps(
            trainer.model, collate_sequences(prompts, completions, trainer.pad_token_id)
        )
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            alone, alone_len = sequence_logps(
                trainer.model, collate_sequences([p], [c], trainer.pad_token_id)
            )
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)
            assert lengths[i] == alone_len[0] == len(c)
        # the fast path (hidden states of completion positions only) equals a full fp32 log_softmax
        slow, slow_lengths = sequence_logps_full_softmax(
            trainer.model, collate_sequences(prompts, completions, trainer.pad_token_id)
        )
    torch.testing.assert_close(batched, slow, atol=1e-5, rtol=0)
    torch.testing.assert_close(lengths, slow_lengths)


def test_logps_do_not_depend_on_prompt_tokens_being_scored(ckpt: Path) -> None:
    """Changing a padding token id (masked, attention 0) changes nothing; changing a prompt token does."""
    trainer = make_trainer(ckpt)
    batch = collate_sequences([[11, 12]], [[30, 31, 32]], trainer.pad_token_id)
    padded = collate_sequences([[11, 12], [11]], [[30, 31, 32], [5]], pad_token_id=99)
    with torch.no_grad():
        a, _ = sequence_logps(trainer.model, batch)
        b, _ = sequence_logps(trainer.model, padded)
    torch.testing.assert_close(a, b[:1], atol=1e-5, rtol=0)


def test_stop_completions_get_eos_and_length_completions_do_not(ckpt: Path) -> None:
    trainer = make_trainer(ckpt)
    eos = trainer.eos_token_id
    assert eos is not None
    pair = make_pair(0, [11, 12], [30, 31], [40])
    truncated = pair.model_copy(update={"rejected": completion(1, [40, 41], finish_reason="length")})
    examples, rejected = trainer.tokenize_pairs([truncated])
    assert not rejected
    assert examples[0].chosen_ids == [30, 31, eos]
    assert examples[0].rejected_ids == [40, 41]


# --------------------------------------------------------------------------------------------------
# Training


def test_initial_dpo_loss_is_log_two(ckpt: Path) -> None:
    """Before any step the policy is the reference, so h = 0 and the DPO loss is log 2 for every pair."""
    trainer = make_trainer(ckpt, batch_size=16)
    result = trainer.train_iteration(synthetic_pairs(16), iteration=1)  # one step: loss measured before it
    assert result.metrics["train/steps"] == 1
    assert result.metrics["loss/mean"] == pytest.approx(math.log(2.0), abs=1e-5)
    assert abs(result.metrics["rewards/margins"]) < 1e-5
    assert result.metrics["rewards/sigmoid_neg_margin"] == pytest.approx(0.5, abs=1e-5)


def test_training_learns_a_fixed_preference_and_changes_every_parameter(ckpt: Path) -> None:
    trainer = make_trainer(ckpt, batch_size=8, epochs=4)
    before = weights(trainer)
    messages: list[str] = []
    result = trainer.train_iteration(synthetic_pairs(48), iteration=1, progress=messages.append)
    m = result.metrics
    assert m["train/steps"] == 4 * 6 and m["train/pairs"] == 48
    assert m["loss/last_epoch"] < m["loss/mean"] < math.log(2.0)
    assert m["loss/last_epoch"] < 0.5
    assert m["rewards/accuracies"] > 0.7
    assert m["rewards/margins"] > 0
    assert m["train/tokens"] > 0 and m["train/tokens_per_s"] > 0 and m["train/grad_norm"] > 0
    assert messages and messages[-1].startswith("step 24/24")
    assert result.policy_version == trainer.policy_version == 1
    after = weights(trainer)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"parameters not updated: {unchanged}"

    # held-out pairs: relative to the initial policy, the trained one prefers the chosen endings (h > 0)
    assert held_out_margin_wins(trainer, ckpt) > 0.8


def held_out_margin_wins(trainer: PolicyTrainer, ckpt: Path) -> float:
    """The share of 16 held-out synthetic pairs on which `trainer`'s policy gained margin over the initial
    checkpoint's: h = (log pi(y_w) - log pi_0(y_w)) - (log pi(y_l) - log pi_0(y_l)) > 0."""
    fresh = make_trainer(ckpt)
    examples, _ = trainer.tokenize_pairs(synthetic_pairs(16, seed=99))
    batch = collate_pairs(examples, trainer.pad_token_id)
    with torch.no_grad():
        new_logps, _ = sequence_logps(trainer.model, batch)
        old_logps, _ = sequence_logps(fresh.model, batch)
    h = (new_logps[:16] - old_logps[:16]) - (new_logps[16:] - old_logps[16:])  # (16,)
    return float((h > 0).float().mean())


@pytest.mark.parametrize(
    ("objective", "fields"),
    [("hinge", {}), ("nca_pair", {}), ("apo_zero", {}), ("dpop", {}), ("length_dpo", {"alpha": 0.01}), ("orpo", {})],
)
def test_the_newer_objectives_learn_a_fixed_preference(ckpt: Path, objective: str, fields: dict[str, Any]) -> None:
    """Each objective added for issue 13 trains end to end through the trainer: on held-out pairs the trained
    policy prefers the chosen endings relative to the initial one (ORPO is reference-free: no reference pass)."""
    from sparring.shared.config import algorithm_config

    trainer = make_trainer(ckpt, algo=algorithm_config(objective=objective, **fields), batch_size=8, epochs=4)
    result = trainer.train_iteration(synthetic_pairs(48), iteration=1)
    assert result.metrics["train/steps"] == 24 and math.isfinite(result.metrics["loss/mean"])
    assert held_out_margin_wins(trainer, ckpt) > 0.8, objective


def test_initial_reference_stays_fixed_across_iterations(ckpt: Path) -> None:
    """reference: initial -> iteration 2 starts away from log 2 (the policy moved, the reference did not)."""
    algo = DPOConfig(beta=0.1, reference="initial")
    trainer = make_trainer(ckpt, algo=algo, batch_size=8, epochs=2)
    trainer.train_iteration(synthetic_pairs(32), iteration=1)
    one_step = trainer.trainer_cfg.model_copy(update={"batch_size": 32, "epochs": 1, "learning_rate": 1e-9})
    trainer.trainer_cfg = one_step
    second = trainer.train_iteration(synthetic_pairs(32), iteration=2)
    assert second.metrics["loss/mean"] < math.log(2.0) - 0.01
    assert second.metrics["rewards/accuracies"] > 0.6


def test_bad_pairs_are_rejected_with_reasons(ckpt: Path) -> None:
    trainer = make_trainer(ckpt)
    good = synthetic_pairs(1)[0]
    construct = PreferencePair.model_construct  # bypass the record validators, as a corrupt entry would
    fields = good.model_dump()
    fields["chosen"], fields["rejected"] = good.chosen, good.rejected

    def bad(prompt_id: str, **update: object) -> PreferencePair:
        return construct(**{**fields, "prompt_id": prompt_id, **update})

    long_ids = list(range(10, 10 + trainer.max_positions)) if trainer.max_positions else []
    pairs = [
        good,
        bad("empty", chosen=completion(0, [])),
        bad("same", rejected=completion(1, list(good.chosen.token_ids))),
        bad("nan", win_prob=float("nan")),
        bad("long", chosen=completion(0, long_ids)),
        bad("vocab", rejected=completion(1, [10**6])),
        good,  # redelivered duplicate
    ]
    result = trainer.train_iteration(pairs, iteration=1)
    reasons = dict(result.rejected)
    assert len(result.rejected) == 6
    assert "empty completion" in reasons["empty@v0:0>1"]
    assert "identical" in reasons["same@v0:0>1"]
    assert "win_prob" in reasons["nan@v0:0>1"]
    assert "exceeds" in reasons["long@v0:0>1"]
    assert "vocabulary" in reasons["vocab@v0:0>1"]
    assert result.rejected[-1] == (good.record_id, "duplicate record id in this iteration")
    assert result.metrics["train/pairs"] == 1 and result.metrics["train/steps"] == 1


def test_no_valid_pairs_returns_empty_metrics(ckpt: Path) -> None:
    trainer = make_trainer(ckpt)
    good = synthetic_pairs(1)[0]
    broken = PreferencePair.model_construct(
        **{**good.model_dump(), "chosen": completion(0, []), "rejected": good.rejected}
    )
    result = trainer.train_iteration([broken], iteration=1)
    assert result.metrics["train/steps"] == 0 and len(result.rejected) == 1
    assert result.policy_version == 0


def test_seeded_training_is_deterministic(ckpt: Path) -> None:
    pairs = synthetic_pairs(24)
    a, b = (make_trainer(ckpt, seed=3, batch_size=16, micro_batch_size=8) for _ in range(2))
    ra, rb = a.train_iteration(pairs, iteration=1), b.train_iteration(pairs, iteration=1)
    assert ra.metrics["loss/mean"] == rb.metrics["loss/mean"]
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = make_trainer(ckpt, seed=4, batch_size=16, micro_batch_size=8)  # another seed shuffles differently
    c.train_iteration(pairs, iteration=1)
    assert not all(torch.equal(wa[k], v) for k, v in weights(c).items())


def test_micro_batches_leave_the_global_batch_step_unchanged(ckpt: Path) -> None:
    """batch_size is the global batch: splitting it into micro-batches (gradient accumulation) gives the same
    update as one forward over the whole batch, to float tolerance."""
    pairs = synthetic_pairs(32)
    sgd = dict(optimizer="sgd", learning_rate=0.1, max_grad_norm=None)  # the update is the gradient itself
    whole = make_trainer(ckpt, seed=1, batch_size=16, epochs=1, **sgd)
    split = make_trainer(ckpt, seed=1, batch_size=16, micro_batch_size=4, epochs=1, **sgd)
    rw, rs = whole.train_iteration(pairs, iteration=1), split.train_iteration(pairs, iteration=1)
    assert rw.metrics["train/steps"] == rs.metrics["train/steps"] == 2
    ww, ws = weights(whole), weights(split)
    assert max(float((ww[k] - ws[k]).abs().max()) for k in ww) < 1e-6
    assert abs(rw.metrics["loss/mean"] - rs.metrics["loss/mean"]) < 1e-6


def test_schedule_epochs_stretch_the_schedule_past_the_epochs_trained(ckpt: Path) -> None:
    """SPPO's released recipe: 18 epochs of linear schedule with warmup 0.1, stopped after epoch 1, so the
    whole trained epoch is inside warm-up and the last step's learning rate is lr * steps / warmup_steps."""
    pairs = synthetic_pairs(32)
    cfg = dict(batch_size=4, epochs=1, scheduler="linear", warmup_ratio=0.1, learning_rate=5e-7)
    stopped = make_trainer(ckpt, schedule_epochs=18, **cfg)
    stopped.train_iteration(pairs, iteration=1)
    steps, warmup = 8, math.ceil(0.1 * 8 * 18)  # 8 steps per epoch, 15 warm-up steps in the 144-step schedule
    assert stopped.scheduler.get_last_lr()[0] == pytest.approx(5e-7 * steps / warmup, rel=1e-9)
    full = make_trainer(ckpt, **cfg)  # the same epoch with its own 1-epoch schedule ends fully decayed
    full.train_iteration(pairs, iteration=1)
    assert full.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-15)


# --------------------------------------------------------------------------------------------------
# Checkpoints and sync


def test_checkpoint_round_trip(ckpt: Path, tmp_path: Path) -> None:
    trainer = make_trainer(ckpt, scheduler="linear", warmup_ratio=0.2)
    trainer.train_iteration(synthetic_pairs(24), iteration=1)
    torch.manual_seed(1234)
    out = trainer.save_checkpoint(tmp_path / "checkpoints" / "v1", version=1, iteration=1)
    expected_draw = torch.rand(4)
    assert out == tmp_path / "checkpoints" / "v1"
    assert sorted(p.name for p in out.parent.iterdir()) == ["v1"]  # no temp dirs left behind
    assert (out / "config.json").is_file() and (out / TRAINER_STATE_FILE).is_file()
    assert list(out.glob("*.safetensors"))

    restored = make_trainer(ckpt, scheduler="linear", warmup_ratio=0.2)
    assert restored.load_checkpoint(out) == (1, 1)
    assert restored.policy_version == 1
    torch.testing.assert_close(torch.rand(4), expected_draw, atol=0, rtol=0)  # RNG state restored
    wa, wb = weights(trainer), weights(restored)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert trainer.optimizer is not None and restored.optimizer is not None
    sa, sb = trainer.optimizer.state_dict(), restored.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for idx, state in sa["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(value, sb["state"][idx][key], atol=0, rtol=0)
    assert trainer.scheduler is not None and restored.scheduler is not None
    assert trainer.scheduler.state_dict() == restored.scheduler.state_dict()

    hf = AutoModelForCausalLM.from_pretrained(out)  # an ordinary HF checkpoint directory
    assert all(torch.equal(v, wa[k]) for k, v in hf.state_dict().items())

    # saving again over the same directory replaces it atomically
    trainer.save_checkpoint(out, version=2, iteration=2)
    assert make_trainer(ckpt).load_checkpoint(out) == (2, 2)
    assert sorted(p.name for p in out.parent.iterdir()) == ["v1"]


def test_state_dict_for_sync_matches_the_saved_checkpoint(ckpt: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    trainer = make_trainer(ckpt)
    trainer.train_iteration(synthetic_pairs(8), iteration=1)
    state = trainer.state_dict_for_sync()
    out = trainer.save_checkpoint(tmp_path / "v1", version=1, iteration=1)
    saved: dict[str, torch.Tensor] = {}
    for file in out.glob("*.safetensors"):
        saved.update(load_file(file))
    assert set(saved) <= set(state)
    for name, tensor in state.items():
        assert tensor.device.type == "cpu" and tensor.is_contiguous()
        if name in saved:
            assert tensor.dtype == saved[name].dtype and torch.equal(tensor, saved[name])
    # a copy: further training does not change what was handed out
    snapshot = {k: v.clone() for k, v in state.items()}
    trainer.train_iteration(synthetic_pairs(8), iteration=2)
    assert all(torch.equal(state[k], snapshot[k]) for k in state)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]),
        ("cosine", [0.0, 0.5, 1.0, 0.8535533906, 0.5, 0.1464466094]),
    ],
)
def test_warmup_schedules(kind: str, expected: list[float]) -> None:
    """6 steps, 2 warmup: 0, 1/2, then decay over the remaining 4 steps (transformers' curves)."""
    schedule = WarmupSchedule(kind, total_steps=6, warmup_steps=2)
    assert [schedule(s) for s in range(6)] == pytest.approx(expected)


def test_length_bucketing_keeps_every_pair_once_and_cuts_padding(ckpt: Path) -> None:
    plain = make_trainer(ckpt, batch_size=8)
    bucketed = PolicyTrainer(
        str(ckpt), trainer_cfg(batch_size=8), DPOConfig(), seed=0, length_bucket_steps=4
    )
    examples, _ = plain.tokenize_pairs(synthetic_pairs(96))

    def padded_rows(steps: list[torch.Tensor]) -> int:
        return sum(2 * len(s) * max(examples[i].width for i in s.tolist()) for s in steps)

    a = list(plain.epoch_steps(examples, iteration=1, epoch=0, pairs_per_step=8))
    b = list(bucketed.epoch_steps(examples, iteration=1, epoch=0, pairs_per_step=8))
    again = list(bucketed.epoch_steps(examples, iteration=1, epoch=0, pairs_per_step=8))
    assert sorted(torch.cat(b).tolist()) == list(range(96)) and len(b) == len(a) == 12
    assert all(torch.equal(x, y) for x, y in zip(b, again, strict=True))  # seeded
    assert padded_rows(b) < padded_rows(a)


def test_sppo_trains_on_win_rates_and_rejects_pairs_without_them(ckpt: Path) -> None:
    """SPPO's squared loss regresses each log-ratio on (P-hat - 1/2) * eta: at the first step, where the
    log-ratios are 0, the loss is [(eta (Pw - .5))^2 + (eta (Pl - .5))^2] / 2 per pair."""
    eta = 10.0
    pairs = [
        p.model_copy(update={"chosen_win_rate": 0.7, "rejected_win_rate": 0.3})
        for p in synthetic_pairs(16)
    ]
    missing = make_pair(99, [11, 12, 13], [20, 21, CHOSEN_END], [22, 23, REJECTED_END])  # no win rates
    trainer = make_trainer(ckpt, algo=SPPOConfig(eta=eta), epochs=1, batch_size=16)
    expected_first = ((eta * 0.2) ** 2 + (eta * -0.2) ** 2) / 2
    result = trainer.train_iteration(pairs + [missing], iteration=1)
    assert [r for r, _ in result.rejected] == [missing.record_id]
    assert "chosen_win_rate None" in result.rejected[0][1]
    assert result.metrics["train/steps"] == 1
    assert abs(result.metrics["loss/mean"] - expected_first) < 1e-3 * expected_first


def test_gradient_checkpointing_gives_the_same_step(ckpt: Path) -> None:
    """Recomputing activations must not change the math: same pairs, same seed -> same weights."""
    pairs = synthetic_pairs(16)
    plain = make_trainer(ckpt, epochs=1, batch_size=8)
    plain.train_iteration(pairs, iteration=1)
    ckpting = make_trainer(ckpt, epochs=1, batch_size=8, gradient_checkpointing=True)
    ckpting.train_iteration(pairs, iteration=1)
    for name, w in weights(plain).items():
        torch.testing.assert_close(weights(ckpting)[name], w, atol=1e-5, rtol=1e-4)
    assert not ckpting.model.training  # back in eval mode after the steps


def test_bf16_autocast_on_cpu_keeps_fp32_logps_and_trains(ckpt: Path) -> None:
    """mixed_precision=bf16 (on CUDA by default with `auto`) runs forwards in bf16 but returns fp32 log-probs;
    forced here on CPU so the path is exercised without a GPU."""
    trainer = make_trainer(ckpt, epochs=1, batch_size=8, mixed_precision="bf16")
    assert trainer.autocast_dtype == torch.bfloat16
    result = trainer.train_iteration(synthetic_pairs(16), iteration=1)
    assert math.isfinite(result.metrics["loss/mean"]) and result.metrics["train/steps"] == 2
    assert abs(result.metrics["loss/mean"] - math.log(2)) < 0.05


def test_pair_weights_reweight_pairs_without_rescaling_the_step(ckpt: Path) -> None:
    """A step's loss is sum(w * l) / sum(w) (issue 13 item 7): with plain SGD, equal weights of any size give
    the step of weight 1, and weights w on pairs A and 1 on pairs B give the weighted mix of the A-only and
    B-only steps, (w |A| step_A + |B| step_B) / (w |A| + |B|)."""
    pairs = synthetic_pairs(8)
    a, b = pairs[:4], pairs[4:]
    sgd = dict(optimizer="sgd", max_grad_norm=None, batch_size=8)

    def step(train: list[Any]) -> dict[str, torch.Tensor]:
        trainer = make_trainer(ckpt, **sgd)
        before = weights(trainer)
        trainer.train_iteration(train, iteration=1)
        return {n: w - before[n] for n, w in weights(trainer).items()}

    plain, quarter = step(pairs), step([p.model_copy(update={"weight": 0.25}) for p in pairs])
    step_a, step_b = step(a), step(b)
    mixed = step([p.model_copy(update={"weight": 0.25}) for p in a] + b)
    for name in plain:
        torch.testing.assert_close(quarter[name], plain[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(mixed[name], (step_a[name] + 4 * step_b[name]) / 5, rtol=1e-3, atol=1e-7)
    assert any(float(d.abs().max()) > 0 for d in plain.values())


def test_judge_metrics_of_an_iteration_combine_every_drain() -> None:
    from sparring.workers.controller import combine_judge_metrics

    drains = [
        {"judge/calls": 2.0, "judge/call_seconds": 1.0, "judge/latency_s_max": 0.7, "judge/cache_hits": 1.0,
         "judge/cache_misses": 3.0, "judge/flip_pairs": 10.0, "judge/flip_consistency": 0.9},
        {"judge/calls": 1.0, "judge/call_seconds": 2.0, "judge/latency_s_max": 2.0, "judge/cache_hits": 0.0,
         "judge/cache_misses": 4.0, "judge/flip_pairs": 30.0, "judge/flip_consistency": 0.5},
    ]  # fmt: skip
    m = combine_judge_metrics(drains)
    assert m["judge/calls"] == 3.0 and m["judge/latency_s_max"] == 2.0
    assert m["judge/latency_s_mean"] == pytest.approx(1.0)
    assert m["judge/cache_hit_rate"] == pytest.approx(1 / 8)
    assert m["judge/flip_consistency"] == pytest.approx((9 + 15) / 40)
    assert combine_judge_metrics([]) == {}


# --------------------------------------------------------------------------------------------------
# Model families (tests/families.py): several stop ids, tied embeddings, dropout in the config


@pytest.mark.parametrize("family", ["gemma", "llama3"])
def test_a_completion_is_trained_with_the_stop_token_it_was_sampled_with(family: str, tmp_path: Path) -> None:
    """Gemma's generation_config stops on [<eos>, <end_of_turn>], Llama-3's on [<|end_of_text|>, <|eom_id|>,
    <|eot_id|>]: a sample that stopped on a stop id other than tokenizer.eos_token_id is trained ending in
    THAT id; a completion without a recorded stop id (a logged response) still gets the tokenizer's eos."""
    from tests.families import build_family_checkpoint, second_stop_id

    model_dir = build_family_checkpoint(family, tmp_path / family)
    trainer = make_trainer(model_dir)
    second = second_stop_id(family, model_dir)
    assert trainer.eos_token_id is not None and second != trainer.eos_token_id
    pair = make_pair(0, [11, 12], [30, 31], [40])
    sampled = pair.model_copy(
        update={"chosen": pair.chosen.model_copy(update={"stop_token_id": second})}
    )
    (example,), rejected = trainer.tokenize_pairs([sampled])
    assert not rejected
    assert example.chosen_ids == [30, 31, second]
    assert example.rejected_ids == [40, trainer.eos_token_id]


def test_tied_model_syncs_exactly_what_save_pretrained_writes(tmp_path: Path) -> None:
    """Qwen2 ties lm_head to the embeddings: the sync state must not carry the alias `lm_head.weight`
    (the engines' manifest, read from save_pretrained's files, has no such tensor)."""
    from safetensors.torch import load_file

    from tests.families import build_family_checkpoint

    trainer = make_trainer(build_family_checkpoint("qwen2", tmp_path / "qwen2"))
    assert trainer.model.config.tie_word_embeddings
    trainer.train_iteration(synthetic_pairs(8), iteration=1)
    state = trainer.state_dict_for_sync()
    out = trainer.save_checkpoint(tmp_path / "v1", version=1, iteration=1)
    saved = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in state
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def test_config_dropout_is_off_under_gradient_checkpointing(tmp_path: Path) -> None:
    """attention_dropout > 0 in the config (functional dropout in HF attention, no nn.Dropout module):
    with gradient checkpointing the policy runs in train mode, yet step-0 DPO loss is log 2 and two
    forwards of one batch are identical."""
    from tests.families import build_family_checkpoint

    model_dir = build_family_checkpoint("qwen2", tmp_path / "qwen2", attention_dropout=0.1)
    trainer = make_trainer(model_dir, batch_size=16, gradient_checkpointing=True)
    examples, _ = trainer.tokenize_pairs(synthetic_pairs(16))
    batch = collate_pairs(examples, trainer.pad_token_id)
    trainer.model.train()
    first, _ = sequence_logps(trainer.model, batch)
    second, _ = sequence_logps(trainer.model, batch)
    trainer.model.eval()
    assert torch.equal(first, second)
    result = trainer.train_iteration(synthetic_pairs(16), iteration=1)
    assert result.metrics["train/steps"] == 1
    assert result.metrics["loss/mean"] == pytest.approx(math.log(2.0), abs=1e-6)
