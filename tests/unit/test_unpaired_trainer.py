"""The trainer's unpaired path (workers/unpaired.py) on a tiny local Llama: KTO and unpaired BCO learn a fixed
thumbs-up/down rule from single labelled answers, posted text is tokenised with the chat template and EOS, the
mismatched KL partners never pair an answer with its own prompt, and bad answers are skipped with a reason."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from sparring.shared.config import TrainerConfig, algorithm_config
from sparring.shared.feedback import parse_feedback
from sparring.shared.models import prompt_token_ids, text_token_ids
from sparring.shared.records import Completion, LabelledAnswer
from sparring.workers.logps import collate_sequences, sequence_logps
from sparring.workers.trainer import PolicyTrainer
from sparring.workers.unpaired import kl_partners, tokenize_answers, train_unpaired_iteration
from tests.helpers import make_tiny_checkpoint

GOOD_END, BAD_END = 7, 8  # a desirable answer ends with token 7, an undesirable one with token 8


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "policy", seed=0)


def make_trainer(ckpt: Path, objective: str, **fields: object) -> PolicyTrainer:
    cfg = TrainerConfig.model_validate(
        dict(learning_rate=1e-3, batch_size=8, epochs=1, scheduler="constant", warmup_ratio=0.0, torch_threads=1)
    )
    return PolicyTrainer(str(ckpt), cfg, algorithm_config(objective=objective, **fields), seed=0)


def labelled(n: int, seed: int = 0) -> list[LabelledAnswer]:
    """Sampled-style answers (token ids given): half end in GOOD_END (up), half in BAD_END (down)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        up = k % 2 == 0
        ids = [rng.randrange(10, 300) for _ in range(rng.randint(2, 6))] + [GOOD_END if up else BAD_END]
        out.append(
            LabelledAnswer(
                run_id="run", iteration=1, policy_version=0, prompt_id=f"p{k}", prompt="prompt",
                prompt_token_ids=[rng.randrange(10, 300) for _ in range(rng.randint(3, 7))],
                answer=Completion(index=k, text="", token_ids=ids, logprobs=None, finish_reason="length"),
                label=up, source="test",
            )
        )  # fmt: skip
    return out


def end_logprob(trainer: PolicyTrainer, examples: list[LabelledAnswer], token: int) -> float:
    """Mean log-prob of `token` as the last answer token, over the examples' prompts and bodies."""
    prompts = [list(e.prompt_token_ids or []) for e in examples]
    bodies = [list(e.answer.token_ids[:-1]) + [token] for e in examples]
    with torch.no_grad():
        full, _ = sequence_logps(trainer.model, collate_sequences(prompts, bodies, trainer.pad_token_id))
        body, _ = sequence_logps(trainer.model, collate_sequences(prompts, [b[:-1] for b in bodies], trainer.pad_token_id))
    return float((full - body).mean())


@pytest.mark.parametrize(("objective", "metric"), [("kto", "kl"), ("bco", "delta")])
def test_unpaired_objectives_learn_thumbs_up_and_down(ckpt: Path, objective: str, metric: str) -> None:
    trainer = make_trainer(ckpt, objective)
    data = labelled(32)
    good0, bad0 = end_logprob(trainer, data, GOOD_END), end_logprob(trainer, data, BAD_END)
    for it in range(1, 4):
        result = train_unpaired_iteration(trainer, data, iteration=it)
    good, bad = end_logprob(trainer, data, GOOD_END), end_logprob(trainer, data, BAD_END)
    assert good - good0 > 0.5 and bad0 - bad > 0.5, (good0, good, bad0, bad)
    m = result.metrics
    assert m["train/examples"] == 32 and m["train/desirable"] == 16 and m["train/undesirable"] == 16
    assert m["rewards/chosen"] > m["rewards/rejected"] and m["rewards/margins"] > 0
    assert metric in m and m["train/steps"] == 4 and trainer.policy_version == 3


def test_kto_loss_starts_at_one_half(ckpt: Path) -> None:
    """Before the first step policy = reference and z_ref = 0, so every KTO loss is 1 - sigmoid(0) = 0.5."""
    trainer = make_trainer(ckpt, "kto")
    trainer.trainer_cfg = trainer.trainer_cfg.model_copy(update={"learning_rate": 1e-12})
    result = train_unpaired_iteration(trainer, labelled(8), iteration=1)
    assert result.metrics["loss/mean"] == pytest.approx(0.5, abs=1e-4)
    assert result.metrics["kl"] == pytest.approx(0.0, abs=1e-4)


def test_posted_feedback_is_tokenised_with_the_template_and_eos(ckpt: Path) -> None:
    trainer = make_trainer(ckpt, "kto")
    posted = parse_feedback(
        [(1, {"prompt": "hello there", "answer": "general kenobi", "label": "up"}),
         (2, {"messages": [{"role": "user", "content": "hi"}], "answer": "bye", "label": False, "weight": 2})],
        run_id="run",
    )  # fmt: skip
    examples, rejected = tokenize_answers(trainer, posted)
    assert rejected == []
    tok = trainer.tokenizer
    assert examples[0].prompt_ids == prompt_token_ids(tok, "hello there")
    assert examples[0].answer_ids == text_token_ids(tok, "general kenobi") + [tok.eos_token_id]
    assert examples[1].label is False and examples[1].weight == 2.0
    result = train_unpaired_iteration(trainer, posted, iteration=1)
    assert result.metrics["train/examples"] == 2


def test_bad_answers_are_skipped_with_reasons(ckpt: Path) -> None:
    trainer = make_trainer(ckpt, "bco")
    good = labelled(4)
    out_of_vocab = good[0].model_copy(update={"prompt_id": "oov", "answer": good[0].answer.model_copy(update={"token_ids": [10**7]})})
    examples, rejected = tokenize_answers(trainer, [*good, good[1], out_of_vocab])
    assert len(examples) == 4
    assert dict(rejected) == {good[1].record_id: "duplicate record id in this iteration",
                              out_of_vocab.record_id: f"token id outside the model's vocabulary [0, {trainer.vocab_size})"}  # fmt: skip


@pytest.mark.parametrize("n", [2, 3, 17])
def test_kl_partners_are_a_derangement(n: int) -> None:
    partner = kl_partners(n, seed=5)
    assert sorted(partner) == list(range(n)) and all(partner[i] != i for i in range(n))
    assert partner == kl_partners(n, seed=5)
