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


def test_adapter_sync_payload_merges_to_what_the_trainer_computes(ckpt: Path, tmp_path: Path) -> None:
    """What an adapter-only sync ships (peft's adapter state + adapter_config.json) is what the checkpoint's
    `adapter/` holds, and merged onto the base weights (`merge_adapter`: the route of engines and judges
    without LoRA support) gives the weights the trainer's merged sync sends."""
    import json

    from sparring.workers.checkpoints import load_state_dir
    from sparring.workers.trainer import merged_lora_state
    from sparring.workers.weight_sync import (
        WeightSyncError,
        merge_adapter,
        parse_adapter_config,
        read_adapter_dir,
    )

    trainer = lora_trainer(ckpt)
    trainer.train_iteration(synthetic_pairs(32), iteration=1)
    tensors, config_text = trainer.adapter_for_sync()
    assert tensors and all(".lora_A." in n or ".lora_B." in n for n in tensors)
    assert any(t.abs().max() > 0 for n, t in tensors.items() if ".lora_B." in n)  # trained: B moved off zero
    config = parse_adapter_config(config_text)
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (8, 16, ["down_proj", "q_proj", "v_proj"])
    assert config["base_model_name_or_path"] == str(ckpt)
    saved, saved_config = read_adapter_dir(trainer.save_checkpoint(tmp_path / "v1", 1, 1) / LORA_ADAPTER_DIR)
    assert saved.keys() == tensors.keys() and all(torch.equal(saved[k], tensors[k]) for k in tensors)
    assert json.loads(saved_config)["r"] == 8

    merged = merge_adapter(load_state_dir(ckpt), tensors, config)
    want = merged_lora_state(trainer.model)
    changed = [k for k in want if not torch.equal(want[k], load_state_dir(ckpt).get(k, want[k]))]
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight")) for k in changed)
    for key in want:
        if key in merged:
            torch.testing.assert_close(merged[key], want[key], atol=1e-6, rtol=0)
    with pytest.raises(WeightSyncError, match="without its pair"):
        merge_adapter(load_state_dir(ckpt), {k: v for k, v in tensors.items() if ".lora_B." not in k}, config)
    with pytest.raises(WeightSyncError, match="use_dora"):
        parse_adapter_config(json.dumps({**config, "use_dora": True}))


def test_lora_sync_mode_follows_the_transport() -> None:
    base = {"policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}, "prompts": {"source": "arena"},
            "trainer": {"lora": {"rank": 4}}}  # fmt: skip
    assert RunConfig.model_validate(base).lora_sync == "adapter"  # auto + the default memory transport
    on_disk = {**base, "storage": {"weight_transport": "safetensors_dir"}}
    assert RunConfig.model_validate(on_disk).lora_sync == "merged"
    assert RunConfig.model_validate({**base, "trainer": {"lora": {"rank": 4, "sync": "merged"}}}).lora_sync == "merged"
    with pytest.raises(ValueError, match="storage.weight_transport must be memory"):
        RunConfig.model_validate({**on_disk, "trainer": {"lora": {"rank": 4, "sync": "adapter"}}})
    with pytest.raises(ValueError, match="vLLM serves LoRA ranks up to 512"):
        RunConfig.model_validate({**base, "trainer": {"lora": {"rank": 1024, "sync": "adapter"}}})
    full = {k: v for k, v in base.items() if k != "trainer"}
    assert RunConfig.model_validate(full).lora_sync is None


def test_lora_checkpoint_exports_merged_or_adapter(ckpt: Path, tmp_path: Path) -> None:
    """The API's two archives of a LoRA checkpoint (`archive?part=merged|adapter`, both `tar_stream`): the
    merged one is an ordinary HF model computing the adapted log-probs (no adapter files in it); the adapter
    one is a peft dir that, on the base model, computes them too."""
    import io
    import tarfile

    from peft import PeftModel

    from sparring.services.api.routers.checkpoints import tar_stream

    trainer = lora_trainer(ckpt)
    trainer.train_iteration(synthetic_pairs(32), iteration=1)
    adapted = logps(trainer.model, trainer.pad_token_id)
    out = trainer.save_checkpoint(tmp_path / "v1", version=1, iteration=1)
    for directory, prefix in ((out, "run-v1"), (out / LORA_ADAPTER_DIR, "run-v1-adapter")):
        with tarfile.open(fileobj=io.BytesIO(b"".join(tar_stream(directory, prefix)))) as tar:
            tar.extractall(tmp_path / "x", filter="data")
    merged_dir, adapter_dir = tmp_path / "x" / "run-v1", tmp_path / "x" / "run-v1-adapter"
    assert not any("adapter" in p.name for p in merged_dir.iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter_dir.iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    torch.testing.assert_close(logps(merged, trainer.pad_token_id), adapted, atol=1e-4, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, adapter_dir).eval()
    torch.testing.assert_close(logps(peft, trainer.pad_token_id), adapted, atol=1e-4, rtol=0)


def test_self_preference_judge_follows_an_adapter_sync(ckpt: Path, tmp_path: Path) -> None:
    """A judge that follows the policy has no LoRA support: an adapter update reaches it merged onto its base
    weights (`apply_update` -> `merge_adapter` -> staged dir -> `load_weights`), so it judges with the adapted
    policy; a corrupt bucket is refused first and the judge keeps its weights."""
    from dataclasses import replace

    import numpy as np

    from sparring.shared.models import load_causal_lm, load_tokenizer
    from sparring.workers.judges.self_preference import SelfPreferenceJudge
    from sparring.workers.weight_sync import MemorySender, WeightSyncError, apply_update

    trainer = lora_trainer(ckpt)
    trainer.train_iteration(synthetic_pairs(32), iteration=1)
    adapted = logps(trainer.model, trainer.pad_token_id)
    tensors, config = trainer.adapter_for_sync()
    update = MemorySender(put=lambda arrays: arrays).update(tensors, 1, adapter_config=config)
    judge = SelfPreferenceJudge(load_causal_lm(str(ckpt)), load_tokenizer(str(ckpt)), model_path=str(ckpt),
                                answers=("a", "b"))  # fmt: skip
    before = logps(judge.model, trainer.pad_token_id)
    arrays = [np.array(a, copy=True) for a in update.buckets[0].ref]
    arrays[-1][-1] ^= 0x01
    with pytest.raises(WeightSyncError, match="checksum mismatch"):
        apply_update(judge, replace(update, buckets=(replace(update.buckets[0], ref=arrays), *update.buckets[1:])), ckpt, tmp_path)
    torch.testing.assert_close(logps(judge.model, trainer.pad_token_id), before)
    apply_update(judge, update, judge.model_path, tmp_path)
    torch.testing.assert_close(logps(judge.model, trainer.pad_token_id), adapted, atol=1e-4, rtol=0)


def test_a_generator_started_on_a_lora_checkpoint_adapts_the_base(ckpt: Path, tmp_path: Path) -> None:
    """A replaced generator (or a resumed run) starts on the last checkpoint: with adapter sync its engine must
    start from the base model + the checkpoint's adapter (vLLM) and every later adapter must apply to the base,
    never to the merged checkpoint (it would apply twice)."""
    from sparring.workers.actors import generator_weights

    out = lora_trainer(ckpt).save_checkpoint(tmp_path / "v1", version=1, iteration=1)
    base = {"policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}, "prompts": {"source": "arena"},
            "trainer": {"lora": LORA}}  # fmt: skip
    adapter = RunConfig.model_validate(base)
    assert generator_weights(adapter, str(out)) == (str(ckpt), str(ckpt), out / LORA_ADAPTER_DIR)
    assert generator_weights(adapter, str(ckpt)) == (str(ckpt), str(ckpt), None)  # version 0: the base itself
    hf = RunConfig.model_validate({**base, "generation": {"backend": "transformers"}})
    assert generator_weights(hf, str(out)) == (str(out), str(ckpt), None)  # merged start, later merges on the base
    merged = RunConfig.model_validate({**base, "trainer": {"lora": {**LORA, "sync": "merged"}}})
    assert generator_weights(merged, str(out)) == (str(out), str(out), None)


def test_lora_sync_auto_falls_back_to_merged_where_vllm_has_no_lora(tmp_path: Path) -> None:
    """`auto` (the adapter sync with the memory transport) on a model whose vLLM class lacks LoRA support (a
    tiny local GPT-2: vLLM's GPT2LMHeadModel has no SupportsLoRA) becomes `merged` before any worker starts;
    an explicit `adapter` is refused naming the architecture; a Llama keeps the adapter sync; the transformers
    backend (it merges adapters itself) keeps it too."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from sparring.workers.actors import resolve_lora_sync

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(gpt2)
    base = {"policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}, "prompts": {"source": "arena"},
            "generation": {"backend": "vllm"}, "trainer": {"lora": {"rank": 4}}}  # fmt: skip
    auto = RunConfig.model_validate(base)
    assert auto.lora_sync == "adapter"
    resolved = resolve_lora_sync(auto, str(gpt2))
    assert resolved.lora_sync == "merged" and resolved.trainer.lora.sync == "merged"  # type: ignore[union-attr]
    assert RunConfig.model_validate_json(resolved.model_dump_json()).lora_sync == "merged"  # what workers get
    explicit = RunConfig.model_validate({**base, "trainer": {"lora": {"rank": 4, "sync": "adapter"}}})
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel \(architecture GPT2LMHeadModel\) has no LoRA support"):
        resolve_lora_sync(explicit, str(gpt2))
    llama = make_tiny_checkpoint(tmp_path / "llama", seed=0)
    assert resolve_lora_sync(auto, str(llama)) is auto
    hf = RunConfig.model_validate({**base, "generation": {"backend": "transformers"}})
    assert resolve_lora_sync(hf, str(gpt2)) is hf
