"""The one place a `vllm.LLM` is constructed and shut down (the generation engine and the vLLM log-prob
scorer of the density-ratio judges both build theirs here).

Every engine runs eager (`enforce_eager=True`: no CUDA-graph / compile warm-up, which the tiny and CPU
models do not repay), with an explicit KV-cache budget in bytes (`kv_cache_memory_bytes`: on vLLM-CPU the
`gpu_memory_utilization` fraction means a share of the NUMA node's CPU memory, vLLM's
`vllm/v1/worker/cpu_worker.py::CPUWorker`) and an explicit dtype (`auto` = float32 on CPU, bfloat16 on GPU,
as the transformers backends load).

Memory: a CPU engine's processes are spawned with `CPU_ENGINE_ENV` (oneDNN's global primitive cache off, one
glibc malloc arena) unless the environment sets those variables; without them the model-runner process grows
with every generate call (the measurements are at `CPU_ENGINE_ENV`).

Thread budget: vLLM-CPU binds its worker's OpenMP threads itself (`VLLM_CPU_OMP_THREADS_BIND`, default
`auto`). `cpu_threads` overrides it for one engine while its processes are spawned (they inherit the
environment): an int = that many unbound threads (`nobind` + OMP_NUM_THREADS), a string = a core list such
as "1" or "0-1". See `sparring.workers.generation` for the measurements behind one thread per engine.

GPU engines: `engine_options` turns the generation config's vLLM options (`enforce_eager`,
`tensor_parallel_size`, `gpu_memory_utilization`, `max_num_seqs`, `enable_prefix_caching`) into `LLM(...)`
arguments. With `gpu_memory_utilization` set the engine sizes its KV cache from that fraction of the GPU and
no `kv_cache_memory_bytes` is passed (vLLM lets an explicit byte budget override the fraction,
`vllm/config/cache.py::CacheConfig`). The engine runs on the GPU Ray assigned to its actor (Ray sets the
actor's CUDA_VISIBLE_DEVICES; `sparring.workers.groups.RayRuntime.spawn` hides every GPU from actors
that asked for none).

In-process engines (`in_process=True`): vLLM's engine core and its one model-runner worker run in the
calling process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`: vLLM's `InprocClient` and `UniProcExecutor`,
vllm/v1/engine/core_client.py and vllm/v1/executor/uniproc_executor.py) instead of two spawned processes
(`EngineCore` and `Worker`, joined by a shared-memory broadcast whose readers spin on `sched_yield` for 1 s
after each message, vllm/distributed/device_communicators/shm_broadcast.py::SpinCondition). One process per
engine: the generator actor's cores are the engine's, start-up skips two process spawns, and a weight update
hands the worker its tensors by reference (`collective_rpc` is a plain call). The calling process's thread
budget becomes the engine's (`torch.set_num_threads(cpu_threads)`; a core list cannot bind an in-process
engine's threads: pin the process, `resources.generators.cpu_cores`), and `CPU_ENGINE_ENV` is applied to the
process itself (oneDNN reads its variable at its first primitive; glibc's malloc arena count is set by `mallopt`).
vLLM also seeds the process's global random state with the engine's seed. One tensor-parallel rank only.

Build engines inside a function or actor, never at module import (vLLM's spawn pitfall).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sparring.shared.config import GenerationConfig

log = logging.getLogger(__name__)


def resolve_dtype(dtype: str) -> str:
    """The project's dtype names -> an explicit dtype (`auto` = float32 on CPU, bfloat16 on GPU)."""
    import torch

    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.cuda.is_available() else "float32"


# A CPU engine's memory settings, set while its processes are spawned unless the environment already sets them.
# With oneDNN's and glibc's defaults the model-runner process (`VLLM::Worker`) grew ~6 MB per generate call of
# 32 prompts x 4 samples for as long as it ran (1.13x in 40 soak iterations); measured one at a time on the
# engine alone (bench/vllm_memory.py, 2026-11-30), only the oneDNN setting stops it:
# - ONEDNN_PRIMITIVE_CACHE_CAPACITY=0: oneDNN's process-wide primitive cache (default 1024 primitives, each with
#   its JIT code) off; with it alone the worker grew +47 MB over its first 15 calls, then +1.1 MB over 15 more.
#   vLLM-CPU's linear layers keep their own cache of 32 primitives per weight
#   (`vllm/model_executor/layers/utils.py`: `create_onednn_mm(weight, 32)`), so repeated batch shapes still
#   reuse a primitive.
# - MALLOC_ARENA_MAX=1: one glibc malloc arena instead of 8 per core (memory one thread frees is reused by the
#   others); alone it only slowed the growth (4.5 instead of 6.1 MB per call); with the oneDNN setting the
#   worker was flat from its 5th call (+42 MB over the first 5, then +1.4 MB over 25 more).
# Tried and not kept (growth per call): MALLOC_MMAP_THRESHOLD_=65536 5.6, MALLOC_TRIM_THRESHOLD_=0 6.7, jemalloc
# (LD_PRELOAD) 5.2. vLLM preloads its bundled tcmalloc only where its wheel ships it (this one does not).
CPU_ENGINE_ENV: dict[str, str] = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "MALLOC_ARENA_MAX": "1"}


def engine_env(cpu_threads: int | str | None, on_cpu: bool) -> dict[str, str]:
    """The environment variables an engine's processes are spawned with: on CPU (`on_cpu`) those of
    `CPU_ENGINE_ENV` the environment does not set already (an operator's value wins), and vLLM-CPU's thread
    binding for `cpu_threads` (see the module docstring; None: vLLM's own)."""
    new = {k: v for k, v in CPU_ENGINE_ENV.items() if k not in os.environ} if on_cpu else {}
    if isinstance(cpu_threads, int):
        new.update({"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(cpu_threads)})
    elif cpu_threads is not None:
        new["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads
    return new


@contextmanager
def spawn_env(new: Mapping[str, str]) -> Iterator[None]:
    """Set `new` in this process's environment while the engine's processes are spawned (they inherit it),
    then restore what was there."""
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def engine_options(cfg: GenerationConfig) -> dict[str, Any]:
    """`LLM(...)` keyword arguments from the generation config's vLLM engine options: `enforce_eager` and
    `tensor_parallel_size` always, `gpu_memory_utilization`, `max_num_seqs` and `enable_prefix_caching`
    when set (None leaves vLLM's default)."""
    out: dict[str, Any] = {"enforce_eager": cfg.enforce_eager, "tensor_parallel_size": cfg.tensor_parallel_size}
    for name in ("gpu_memory_utilization", "max_num_seqs", "enable_prefix_caching"):
        value = getattr(cfg, name)
        if value is not None:
            out[name] = value
    return out


def llm_kwargs(
    model_path: str,
    *,
    max_model_len: int,
    kv_cache_memory_bytes: int,
    dtype: str = "auto",
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `LLM(...)` keyword arguments `build_vllm_llm` passes: eager, the KV-cache budget in bytes (left
    out when `extra` sets `gpu_memory_utilization`), then `extra` over them."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        tokenizer=model_path,
        dtype=resolve_dtype(dtype),
        max_model_len=max_model_len,
        kv_cache_memory_bytes=kv_cache_memory_bytes,
        enforce_eager=True,
        seed=seed,
    )
    kwargs.update(extra or {})
    if kwargs.get("gpu_memory_utilization") is not None:  # the fraction sizes the cache: no byte budget over it
        kwargs.pop("kv_cache_memory_bytes")
    return kwargs


def build_vllm_llm(
    model_path: str,
    *,
    max_model_len: int,
    kv_cache_memory_bytes: int,
    dtype: str = "auto",
    seed: int = 0,
    cpu_threads: int | str | None = None,
    extra: Mapping[str, Any] | None = None,
    in_process: bool = False,
) -> Any:  # vllm.LLM; vllm is imported lazily (absent on machines without it)
    """A `vllm.LLM` for the checkpoint at `model_path` (its own tokenizer), eager, with the given KV-cache
    budget and thread budget. `extra` adds or overrides `LLM(...)` keyword arguments (`llm_kwargs`).
    `in_process`: the engine core and model runner run in this process (module docstring); raises
    ValueError with `tensor_parallel_size` > 1 or a core-list `cpu_threads`."""
    from vllm import LLM

    kwargs = llm_kwargs(
        model_path, max_model_len=max_model_len, kv_cache_memory_bytes=kv_cache_memory_bytes, dtype=dtype, seed=seed,
        extra=extra,
    )  # fmt: skip
    import torch

    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        check_cpu_head_size(model_path)
    if not in_process:
        with spawn_env(engine_env(cpu_threads, on_cpu=on_cpu)):
            return LLM(**kwargs)
    if int(kwargs.get("tensor_parallel_size") or 1) > 1:
        raise ValueError(
            f"an in-process vLLM engine runs one model-runner worker; tensor_parallel_size "
            f"{kwargs['tensor_parallel_size']} needs vLLM's own processes (generation.engine_in_process: false)"
        )
    if isinstance(cpu_threads, str):
        raise ValueError(
            f"cpu_threads {cpu_threads!r}: a core list binds the threads of vLLM's spawned worker; an in-process "
            "engine takes a thread count (pin its process with resources.generators.cpu_cores)"
        )
    set_num_threads = torch.set_num_threads  # vLLM-CPU's worker replaces it with a no-op in its process
    if on_cpu:
        apply_cpu_engine_env()
        if cpu_threads is not None:
            torch.set_num_threads(cpu_threads)
    try:
        with spawn_env({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}):
            return LLM(**kwargs)
    finally:
        torch.set_num_threads = set_num_threads
        import vllm.envs

        # vLLM caches every VLLM_* variable once an engine core starts (`enable_envs_cache`); in this process
        # that would pin the value above for every engine built later (a spawned one included)
        disable = getattr(vllm.envs, "disable_envs_cache", None)
        if disable is not None:
            disable()


def apply_cpu_engine_env() -> None:
    """`CPU_ENGINE_ENV` for an engine in this (already running) process: oneDNN's primitive-cache variable is
    set in the environment (unless set already), which oneDNN reads when it creates its first primitive, and
    glibc's `MALLOC_ARENA_MAX` is applied with `mallopt(-8, n)` (malloc.h's option for the malloc arena
    count; glibc reads the variable only at start-up). Not on glibc: the environment only."""
    import ctypes
    import ctypes.util

    for key, value in CPU_ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):
        return
    count = int(os.environ.get("MALLOC_ARENA_MAX", CPU_ENGINE_ENV["MALLOC_ARENA_MAX"]))
    mallopt(-8, count)  # -8: the malloc arena count option


def check_cpu_head_size(model_path: str) -> None:
    """Refuse a checkpoint whose attention head size vLLM's CPU attention does not serve
    (`CPUAttentionBackend.get_supported_head_sizes()`, `vllm/v1/attention/backends/cpu_attn.py`: 32, 64, 80,
    ... in vllm-cpu 0.32): such an engine starts, then dies on its first request ("Unsupported CPU attention
    configuration: head_dim=16", an `EngineDeadError` whose cause is only in the worker's log). The head size
    is the config's `head_dim`, else `hidden_size / num_attention_heads` (of `text_config` when nested).
    Raises `ModelLoadError` naming the checkpoint, its head size and the supported ones."""
    from transformers import AutoConfig
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from sparring.shared.models import ModelLoadError

    config = AutoConfig.from_pretrained(model_path).get_text_config()
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise ModelLoadError(
            f"model {model_path!r}: attention head size {head} (head_dim, or hidden_size / num_attention_heads) is "
            f"not one vLLM's CPU attention serves ({', '.join(map(str, supported))}); use a checkpoint with one of "
            "those, a GPU for the engines, or generation.backend: transformers"
        )


def lora_unsupported(model_path: str) -> str | None:
    """Why vLLM cannot serve LoRA adapters on the checkpoint at `model_path`, or None when it can: the
    `architectures` of its config.json resolved in vLLM's model registry to a class without `SupportsLoRA`
    (`vllm/model_executor/models/interfaces.py::supports_lora`; e.g. GPT2LMHeadModel, BloomForCausalLM in vLLM
    0.32), where `LLM(enable_lora=True)` fails at build. None too when vLLM has no native class for them (its
    Transformers backend, which supports LoRA, or an error at build that names the architecture)."""
    import json
    from pathlib import Path

    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_lora

    archs = json.loads((Path(model_path) / "config.json").read_text()).get("architectures") or []
    for arch in archs:
        cls = ModelRegistry._try_load_model_cls(arch)  # the class `LLM` would build; None: not a native one
        if cls is not None:
            return None if supports_lora(cls) else f"vLLM's {cls.__name__} (architecture {arch}) has no LoRA support"
    return None


def shutdown_vllm_llm(llm: Any, label: str) -> None:
    """Stop an `LLM`'s engine-core and worker processes; errors are logged, never raised (shutting down a
    dead engine must not mask the error that killed it)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:
        log.exception("%s: error during vLLM shutdown", label)
