"""`trainer.lora`: PolicyTrainer trains peft LoRA adapters on a tiny Llama (workers/trainer.py).

Checked: only adapter parameters change while the loss falls; the reference (adapter disabled) equals the
untouched base model's log-probs; the merged weights (sync and checkpoint) compute what the adapted model
computes; a checkpoint round trip restores the adapter; the config refuses LoRA with FSDP2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sparring.shared.config import DPOConfig, RunConfig, TrainerConfig
from sparring.workers.logps import collate_sequences, sequence_logps
from sparring.workers.trainer import LORA_ADAPTER_DIR, PolicyTrainer
from tests.helpers import make_tiny_checkpoint
from tests.unit.test_trainer import make_trainer, synthetic_pairs

LORA = {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-lora") / "policy", seed=0)


def lora_trainer(ckpt: Path, reference: str = "initial") -> PolicyTrainer:
    cfg = TrainerConfig.model_validate(
        dict(learning_rate=5e-3, batch_size=8, epochs=2, scheduler="constant", warmup_ratio=0.0, torch_threads=1,
             lora=LORA)
    )  # fmt: skip
    return PolicyTrainer(str(ckpt), cfg, DPOConfig(beta=0.1, reference=reference), seed=0)


PROMPTS = [[11, 12, 13], [14, 15, 16, 17, 18, 19], [20]]
ANSWERS = [[30, 31, 32, 33, 7], [40, 41, 8], [50, 51, 52, 53]]


def logps(model: torch.nn.Module, pad: int) -> torch.Tensor:
    with torch.no_grad():
        out, _ = sequence_logps(model, collate_sequences(PROMPTS, ANSWERS, pad))
    return out


def test_lora_trains_only_the_adapter_and_the_reference_is_the_base_model(ckpt: Path) -> None:
    trainer = lora_trainer(ckpt)
    assert trainer.initial_model is None  # no second model in memory
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    base = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    base_logps = logps(base, trainer.pad_token_id)
    torch.testing.assert_close(logps(trainer.model, trainer.pad_token_id), base_logps)  # B = 0 at the start

    pairs = synthetic_pairs(48)
    first = trainer.train_iteration(pairs, iteration=1)
    second = trainer.train_iteration(pairs, iteration=2)
    assert second.metrics["loss/mean"] < first.metrics["loss/mean"]
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= trainable  # base weights untouched
    assert any(".lora_B." in n for n in changed)
    adapted = logps(trainer.model, trainer.pad_token_id)
    assert not torch.allclose(adapted, base_logps, atol=1e-4)
    with trainer.model.disable_adapter():  # the reference DPO trained against
        torch.testing.assert_close(logps(trainer.model, trainer.pad_token_id), base_logps)

    # the merged weights (what the engines get) compute the adapted model's log-probs, under HF names
    merged = trainer.state_dict_for_sync()
    assert set(merged) == set(base.state_dict())
    base.load_state_dict(merged)
    torch.testing.assert_close(logps(base, trainer.pad_token_id), adapted, atol=1e-4, rtol=0)


def test_lora_checkpoint_round_trip_and_merged_export(ckpt: Path, tmp_path: Path) -> None:
    trainer = lora_trainer(ckpt, reference="iteration_start")
    trainer.train_iteration(synthetic_pairs(32), iteration=1)
    adapted = logps(trainer.model, trainer.pad_token_id)
    out = trainer.save_checkpoint(tmp_path / "v1", version=1, iteration=1)
    assert (out / LORA_ADAPTER_DIR / "adapter_config.json").is_file()
    assert (out / LORA_ADAPTER_DIR / "adapter_model.safetensors").is_file()
    # the checkpoint dir itself is the merged model: an ordinary HF dir computing the adapted log-probs
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(logps(merged, trainer.pad_token_id), adapted, atol=1e-4, rtol=0)
    # peft's own merge_and_unload of the saved adapter on the base model agrees
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    unloaded = PeftModel.from_pretrained(base, out / LORA_ADAPTER_DIR).merge_and_unload().eval()
    torch.testing.assert_close(logps(unloaded, trainer.pad_token_id), adapted, atol=1e-4, rtol=0)

    fresh = lora_trainer(ckpt, reference="iteration_start")
    assert not torch.allclose(logps(fresh.model, fresh.pad_token_id), adapted, atol=1e-4)
    version, iteration = fresh.load_checkpoint(out)
    assert (version, iteration) == (1, 1)
    torch.testing.assert_close(logps(fresh.model, fresh.pad_token_id), adapted)
    assert fresh.optimizer is not None  # Adam moments of the adapter came back: training continues
    a = trainer.train_iteration(synthetic_pairs(16, seed=3), iteration=2).metrics["loss/mean"]
    b = fresh.train_iteration(synthetic_pairs(16, seed=3), iteration=2).metrics["loss/mean"]
    assert a == pytest.approx(b, abs=1e-5)


def test_lora_checkpoint_of_a_full_run_is_refused(ckpt: Path, tmp_path: Path) -> None:
    full = make_trainer(ckpt).save_checkpoint(tmp_path / "v1", version=1, iteration=1)  # no adapter/ inside
    with pytest.raises(FileNotFoundError, match="no LoRA adapter"):
        lora_trainer(ckpt).load_checkpoint(full)


def test_lora_with_fsdp2_or_unpaired_is_refused() -> None:
    base = {"policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}, "prompts": {"source": "arena"},
            "trainer": {"lora": {"rank": 4}}}  # fmt: skip
    assert RunConfig.model_validate(base).trainer.lora.rank == 4  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="trainer.lora trains on one trainer rank"):
        RunConfig.model_validate({**base, "resources": {"trainer": {"num_ranks": 2}}})
    with pytest.raises(ValueError, match="LoRA with FSDP2"):
        RunConfig.model_validate({**base, "algorithm": {"objective": "kto"}})
