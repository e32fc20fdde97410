"""The engine layer: prompt token ids + sampling spec -> samples (token ids, behaviour log-probs, text).

Two backends with one contract (`GenerationEngine`):

- `VLLMEngine` — `vllm.LLM` (vLLM's CPU build on CPU machines, its CUDA build on GPUs); production sampler.
- `TransformersEngine` — Hugging Face `generate`; for machines without vLLM and as the correctness
  reference (greedy outputs of the two must be identical for the same weights).

Conventions shared by both backends (the trainer and the judges rely on them):

- **EOS is stripped, and recorded.** Generation stops at an end-of-sequence token (the checkpoint's
  `eos_token_id`s from `config.json` and `generation_config.json`: several for Llama-3 and Gemma instruction
  models); the stop token is *not* included in `Completion.token_ids` nor in `Completion.logprobs`,
  `finish_reason == "stop"`, and `Completion.stop_token_id` is the id that was drawn. A sample that ran out
  of budget has `finish_reason == "length"` and no stop id. When scoring a response the trainer and the
  judges append `stop_token_id` itself iff `finish_reason == "stop"` (the token the policy really sampled,
  not necessarily `tokenizer.eos_token_id`).
- **Behaviour log-probs are raw.** `Completion.logprobs[t]` is `log_softmax(logits_t)[token_t]` of the model's
  *unprocessed* distribution (temperature 1, no top-p), i.e. vLLM's default `logprobs_mode="raw_logprobs"`,
  and the same quantity a trainer computes for log pi(y|x). It is not the log-prob under the tempered /
  truncated sampling distribution (for temperature 1 and top_p 1 the two coincide; for greedy the raw value
  is what both backends report, so they agree).
- **Text** is `tokenizer.decode(token_ids, skip_special_tokens=True)` in both backends (vLLM's incremental
  detokenizer is switched off: it drops a trailing incomplete UTF-8 sequence, HF's decode does not).
- **Seeds.** All `n` samples of a prompt come from one request; sample `i` is drawn with seed `seed + i`
  (vLLM's parallel-sampling convention, mirrored by the transformers backend with one `torch.Generator`
  per sample), so a (prompt, seed) pair reproduces its group regardless of what else is in the batch.
  Callers should space group seeds by at least `n` if groups of the same prompt must not share samples.
  `seed=None` draws fresh randomness.
- **Reloads.** `load_weights(path)` reloads a checkpoint dir; `load_tensors(buckets, manifest, partial=)`
  takes tensors in memory, bucket by bucket (the `memory` weight transport; `partial` = a delta, the other
  tensors keep their values). vLLM: `SyncWorkerExtension` runs vLLM's layerwise reload inside the worker
  process (begin / one `collective_rpc` per bucket / finish), each bucket crossing into that process through
  a reused shared-memory buffer (`SharedBuffer`, one bucket large), so peak extra memory is one bucket; an
  in-process engine (`in_process=True`, the default on CPU: `engine_in_process`) takes the bucket's tensors
  by reference instead.
- **Failed reloads.** A checkpoint (or in-memory manifest) whose tensor names/shapes do not match the serving
  model is refused before anything is touched (`EngineLoadError`, engine keeps serving its old weights). If
  the reload itself fails part-way, the engine is marked unusable: every later `generate` raises
  `EngineUnusableError` so the owner restarts it; it never serves a half-loaded model.

Thread budget: `TransformersEngine(num_threads=...)` sets torch's intra-op threads for the process.
vLLM-CPU binds its worker's OpenMP threads itself (`VLLM_CPU_OMP_THREADS_BIND`, default `auto`: the cores
of one NUMA node minus `VLLM_CPU_NUM_OF_RESERVED_CPU` (default 1) kept for the busy-polling engine-core
process; on a 2-core box the worker gets core 0, core 1 is reserved). `VLLMEngine(cpu_threads=...)`
overrides it for one engine: an int = that many unbound threads (`nobind` + OMP_NUM_THREADS), a string =
a core list such as "1" or "0-1". Measured on the 2-core CI box (busy with other jobs, tiny Llama, 128
prompts x 4 samples x 48 tokens): auto 5.3k tok/s, 1 unbound thread 5.9k, 2 unbound threads 2.5k, bound
"0-1" 2.0k; transformers 1 thread 4.5k tok/s, 2 threads 0.34k. So: one compute thread per engine here,
and several engines on one host should get disjoint `cpu_threads` core lists (auto binds them all to the
same core).

The `vllm.LLM` itself is built by `sparring.workers.vllm_llm`; checkpoint manifests and eos ids come from
`sparring.workers.checkpoints`. This module knows nothing about Ray or Redis.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from sparring.shared.records import Completion
from sparring.workers.checkpoints import (
    TensorManifest,
    aliased_names,
    checkpoint_manifest,
    compare_manifests,
    eos_token_ids,
    load_state_dir,
)
from sparring.workers.vllm_llm import build_vllm_llm, engine_options, shutdown_vllm_llm

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sparring.shared.config import GenerationConfig

log = logging.getLogger(__name__)

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


class EngineError(RuntimeError):
    """Base of generation-engine errors."""


class EngineLoadError(EngineError):
    """New weights could not be loaded. `engine_usable` says whether the old weights are still serving."""

    def __init__(self, message: str, *, engine_usable: bool) -> None:
        super().__init__(message)
        self.engine_usable = engine_usable


class EngineUnusableError(EngineError):
    """The engine failed a weight reload (or was closed) and must be restarted by its owner."""


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample one prompt: `n` samples, temperature 0 = greedy, `seed` per request (None = random)."""

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int | None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@runtime_checkable
class GenerationEngine(Protocol):
    """What a generator actor drives: batched sampling and in-place weight reloads."""

    engine_id: str

    def generate(self, prompts: Sequence[Sequence[int]], specs: Sequence[SamplingSpec]) -> list[list[Completion]]:
        """One list of `spec.n` samples per prompt, in prompt order."""
        ...

    def load_weights(self, path: str) -> float:
        """Load a HF safetensors checkpoint dir into the live engine; return seconds taken."""
        ...

    def load_tensors(
        self, buckets: Iterable[Sequence[tuple[str, torch.Tensor]]], manifest: TensorManifest, *, partial: bool = False
    ) -> float:
        """Load verified in-memory tensors (HF names), bucket by bucket; return seconds taken."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# Shared by both backends


def _validate_batch(
    prompts: Sequence[Sequence[int]], specs: Sequence[SamplingSpec], max_model_len: int
) -> None:
    if len(prompts) != len(specs):
        raise ValueError(f"{len(prompts)} prompts but {len(specs)} sampling specs")
    for i, (p, s) in enumerate(zip(prompts, specs, strict=True)):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        if len(p) + s.max_new_tokens > max_model_len:
            raise ValueError(
                f"prompt {i}: {len(p)} prompt tokens + max_new_tokens {s.max_new_tokens} exceeds "
                f"max_model_len {max_model_len}"
            )


def _strip_eos(
    token_ids: list[int], logprobs: list[float], eos: set[int], stopped: bool, stop_reason: object = None
) -> tuple[list[int], list[float], str, int | None]:
    """Cut at the first eos (dropping it): (ids, logprobs, finish reason, the stop id that was cut).

    Finish reason `stop` if an eos was found (or the backend says it stopped; `stop_reason` is then the
    backend's own stop token id when it is one), else `length`.
    """
    for t, tok in enumerate(token_ids):
        if tok in eos:
            return token_ids[:t], logprobs[:t], FINISH_STOP, int(tok)
    if stopped:
        return token_ids, logprobs, FINISH_STOP, stop_reason if isinstance(stop_reason, int) else None
    return token_ids, logprobs, FINISH_LENGTH, None


# --------------------------------------------------------------------------------------------------
# vLLM


class SyncWorkerExtension:
    """Mixed into each vLLM worker (`LLM(worker_extension_cls=...)`): an in-place reload that leaves no
    layer computing with stale weights.

    vLLM's `reload_weights` reloads layer by layer and re-runs each loaded layer's post-load processing.
    A layer whose weight is an alias of another's (the LM head of a tied model: Qwen2-0.5B, Llama-3.2-1B,
    Gemma) receives no tensor of its own, so it is never re-processed; on vLLM-CPU that processing packs
    the weight into a private GEMM buffer, and the head kept computing logits with the *old* packed
    weights (greedy output then differed from HF on the new weights). After the reload every layer
    sharing a weight is processed again from the (new) shared tensor; for layers whose processing keeps
    no copy (GPU) that is a no-op.
    """

    def sparring_reload_weights(self, weights_path: str) -> int:
        """`reload_weights` from a checkpoint dir, then refresh aliased layers; returns how many."""
        self.reload_weights(weights_path=weights_path, is_checkpoint_format=True)  # type: ignore[attr-defined]
        return refresh_shared_weight_layers(self.model_runner.get_model())  # type: ignore[attr-defined]

    # In-memory updates (the `memory` weight transport): begin, one call per bucket, finish -- the protocol
    # of vLLM's own weight-transfer engines (`start_weight_update` / `update_weights` /
    # `finish_weight_update`, which need a GPU `weight_transfer_config` backend), on vLLM's layerwise
    # reload: `initialize_layerwise_reload` puts every layer on the meta device, `model.load_weights` buffers
    # a layer's tensors until all of them arrived and then materializes, loads and post-processes it (on
    # vLLM-CPU: packs the GEMM weights) into the original storage, `finalize_layerwise_reload` restores the
    # layers that received nothing (a delta). Between begin and finish the model must not run: the engine
    # holds its lock for the whole sequence.

    def sparring_begin_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            initialize_layerwise_reload(self.model_runner.get_model())  # type: ignore[attr-defined]

    def sparring_load_bucket(self, path: str, size: int, entries: list[list[Any]]) -> int:
        """Load one bucket from the shared buffer at `path` (`size` bytes): `entries` are
        [name, dtype, shape, byte offset]; returns the bytes loaded."""
        import torch
        from vllm.config import set_current_vllm_config

        cached = getattr(self, "_sparring_buffer", None)
        if cached is None or cached[0] != (path, size):
            cached = ((path, size), torch.from_file(path, shared=True, size=size, dtype=torch.uint8))
            self._sparring_buffer = cached
        buf = cached[1]
        weights = []
        loaded = 0
        for name, dtype, shape, offset in entries:
            dt = getattr(torch, dtype)
            n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size()
            weights.append((name, buf[offset : offset + n].view(dt).reshape(shape)))
            loaded += n
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        with set_current_vllm_config(self.vllm_config), torch.no_grad():  # type: ignore[attr-defined]
            model.load_weights(iter(weights))
        _detach_pending_from(buf)
        return loaded

    def sparring_load_tensors(self, weights: list[tuple[str, Any]]) -> int:
        """Load one bucket handed over by reference (an in-process engine: `collective_rpc` is a plain call,
        `vllm_llm.build_vllm_llm(in_process=True)`); the tensors stay alive and unchanged until the update
        finishes (the caller's zero-copy views of the object store); returns the bytes loaded."""
        import torch
        from vllm.config import set_current_vllm_config

        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        with set_current_vllm_config(self.vllm_config), torch.no_grad():  # type: ignore[attr-defined]
            model.load_weights(iter(weights))
        return sum(t.numel() * t.element_size() for _, t in weights)

    def sparring_finish_update(self) -> int:
        """Process what is left (layers that got no tensor keep their weights), drop state derived from the
        old weights, refresh aliased layers; returns how many aliased layers were refreshed."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        runner = self.model_runner  # type: ignore[attr-defined]
        model = runner.get_model()
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            finalize_layerwise_reload(model, runner.model_config)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            fn = getattr(runner, reset, None)
            if fn is not None:
                fn()
        self.__dict__.pop("_sparring_buffer", None)
        return refresh_shared_weight_layers(model)


def _detach_pending_from(buf: Any) -> None:
    """A layer still waiting for more of its tensors keeps the ones it got (views of the shared buffer that
    the next bucket overwrites): give those their own copies. The senders' buckets hold whole transformer
    blocks, so this is a safety net, not the common path."""
    import torch
    from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO

    ptr = buf.untyped_storage().data_ptr()
    for info in list(LAYERWISE_INFO.values()):
        for _, bound in getattr(info, "loaded_weights", None) or []:
            for key, value in list(bound.arguments.items()):
                if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() == ptr:
                    bound.arguments[key] = value.clone()


def refresh_shared_weight_layers(model: Any) -> int:
    """Re-run `quant_method.process_weights_after_loading` for every layer whose `weight` is shared with
    another layer (tied embeddings); returns the number of layers processed."""
    import torch

    by_tensor: dict[int, list[Any]] = {}
    for module in model.modules():
        weight = module._parameters.get("weight") if isinstance(module, torch.nn.Module) else None
        if weight is None or weight.is_meta or getattr(module, "quant_method", None) is None:
            continue
        by_tensor.setdefault(weight.data_ptr(), []).append(module)
    refreshed = 0
    for modules in by_tensor.values():
        if len(modules) < 2:
            continue
        for module in modules:
            module.quant_method.process_weights_after_loading(module)
            refreshed += 1
    return refreshed


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py::MaxLoRARanks


def vllm_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that serves adapters of rank `rank`; ValueError above 512."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


_ALIGN = 64


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class SharedBuffer:
    """A file in /dev/shm (else the temp dir) mapped read-write here and, by path, read by the vLLM worker
    process (`SyncWorkerExtension.sparring_load_bucket`): how a bucket of tensors crosses from the engine's
    process into vLLM's worker process with one copy. On Linux the file is unlinked as soon as it is created
    and the worker opens it as `/proc/<pid>/fd/<fd>`: its memory goes back to the system when this process
    closes it or dies (an engine killed without `close` leaks nothing); elsewhere it is removed on `close`."""

    def __init__(self, size: int) -> None:
        import mmap
        import os
        import tempfile

        import torch

        root = (
            "/dev/shm"
            if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
            else tempfile.gettempdir()
        )
        self.size = max(_ALIGN, size)
        name = os.path.join(root, f"sparring-sync-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self._fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(self._fd, self.size)
            self._mmap: Any = mmap.mmap(self._fd, self.size)
        except BaseException:
            os.close(self._fd)
            os.unlink(name)
            raise
        self._name: str | None = name
        self.path = name
        proc_path = f"/proc/{os.getpid()}/fd/{self._fd}"
        if os.path.exists(proc_path):
            os.unlink(name)
            self._name, self.path = None, proc_path
        self.tensor: Any = torch.frombuffer(self._mmap, dtype=torch.uint8)

    def write(self, offset: int, t: torch.Tensor) -> None:
        import torch

        n = t.numel() * t.element_size()
        self.tensor[offset : offset + n].copy_(t.detach().reshape(-1).view(torch.uint8))

    def close(self) -> None:
        import contextlib
        import os

        self.tensor = None
        with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
            self._mmap.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if self._name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name)


class VLLMEngine:
    """A `vllm.LLM` in eager mode fed token-id prompts. Build it inside a function/actor (spawn pitfall)."""

    def __init__(
        self,
        model_path: str,
        *,
        max_model_len: int,
        kv_cache_memory_bytes: int,
        dtype: str = "auto",
        seed: int = 0,
        engine_id: str | None = None,
        cpu_threads: int | str | None = None,
        max_num_seqs: int | None = None,
        llm_options: Mapping[str, Any] | None = None,
        sleep_mode: bool = False,
        lora_rank: int | None = None,
        in_process: bool = False,
    ) -> None:
        """`llm_options`: more `LLM(...)` arguments, e.g. the config's GPU options (`vllm_llm.engine_options`).
        `sleep_mode` (placement colocated): the engine is built with vLLM's `enable_sleep_mode=True` where the
        platform has it (`current_platform.is_sleep_mode_available()`: CUDA, ROCm, XPU); vLLM refuses the flag
        elsewhere ("Sleep mode is not supported on current platform", vllm/config/model.py), so on CPU it is
        left out and `sleep` / `wake_up` free nothing (`sleep_frees_memory` False).
        `lora_rank`: serve LoRA adapters up to this rank (`enable_lora`; `load_adapter`); None = no LoRA.
        `in_process`: vLLM's engine core and worker run in this process (`vllm_llm.build_vllm_llm`); weight
        updates then hand the worker the tensors themselves instead of copying them through `SharedBuffer`."""
        from sparring.shared.models import check_model_path

        self.engine_id = engine_id or f"vllm-{uuid.uuid4().hex[:8]}"
        self.model_path = check_model_path(model_path)
        self.max_model_len = max_model_len
        self._manifest = checkpoint_manifest(self.model_path)
        self._eos = eos_token_ids(self.model_path)
        self._unusable: str | None = None
        self._lock = threading.Lock()
        self._buffer: SharedBuffer | None = None
        extra: dict[str, Any] = dict(
            # Chunked prefill splits a long prompt across steps and then rewinds the request's seeded
            # generator, which CPU generators cannot do ("CPU Generator does not use offset": the engine
            # dies). Whole-prompt prefill keeps per-request seeds (one group = one reproducible draw).
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(8192, max_model_len),
            worker_extension_cls=f"{SyncWorkerExtension.__module__}.{SyncWorkerExtension.__qualname__}",
        )
        if max_num_seqs is not None:
            extra["max_num_seqs"] = max_num_seqs
        self.sleep_frees_memory = False
        self._asleep: set[str] = set()  # vLLM sleep tags not woken yet ("weights", "kv_cache")
        if sleep_mode:
            from vllm.platforms import current_platform

            self.sleep_frees_memory = bool(current_platform.is_sleep_mode_available())
            if self.sleep_frees_memory:
                extra["enable_sleep_mode"] = True
            else:
                log.warning("engine %s: vLLM sleep mode is not available on this platform (%s): sleep and "
                            "wake_up keep the engine's memory", self.engine_id, current_platform.device_type)  # fmt: skip
        self._lora_request: Any = None  # vllm LoRARequest of the adapter every request carries (None: base weights)
        self._lora_dir: Path | None = None
        self._lora_ids = 0
        self.adapter_version: int | None = None  # the policy version of the adapter served (None: no adapter)
        self.max_lora_rank: int | None = None
        if lora_rank is not None:
            self.max_lora_rank = vllm_lora_rank(lora_rank)
            # one adapter per batch; two cached while a sync swaps them (the new one loads before the old goes)
            extra.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1, max_cpu_loras=2)
        extra.update(llm_options or {})
        t0 = time.perf_counter()
        self._llm: Any = build_vllm_llm(
            self.model_path,
            max_model_len=max_model_len,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            dtype=dtype,
            seed=seed,
            cpu_threads=cpu_threads,
            extra=extra,
            in_process=in_process,
        )
        self.in_process = in_process
        self._tokenizer: Any = self._llm.get_tokenizer()
        self.start_seconds = time.perf_counter() - t0
        log.info("vLLM engine %s started in %.1f s from %s", self.engine_id, self.start_seconds, model_path)

    def _check_usable(self) -> None:
        if self._unusable is not None:
            raise EngineUnusableError(f"engine {self.engine_id} is unusable: {self._unusable}")

    def _check_awake(self, what: str, needs: set[str]) -> None:
        """Refuse `what` while any of `needs` sleeps: a sleeping engine's scheduler is paused (a generate call
        would wait forever) and level-2 sleep leaves no weights to load into."""
        asleep = sorted(self._asleep & needs)
        if asleep:
            raise EngineError(f"engine {self.engine_id} cannot {what}: its {', '.join(asleep)} sleep; wake_up first")

    def sleep(self, level: int) -> dict[str, Any]:
        """`LLM.sleep(level)` (vllm/entrypoints/llm.py): level 1 offloads the weights to CPU memory and drops the
        KV cache; level 2 drops both. Returns {"level", "seconds", "frees_memory" (False where the platform has
        no sleep mode: vLLM-CPU's worker logs "sleep mode is not supported on CPU, ignore it"), "sleeping"
        (vLLM's own `is_sleeping()`)}. Sleeping twice is a no-op (vLLM warns "already sleeping")."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        with self._lock:
            self._check_usable()
            t0 = time.perf_counter()
            if not self._asleep:
                self._llm.sleep(level=level)
                self._asleep = {"weights", "kv_cache"}
            return {"level": level, "seconds": time.perf_counter() - t0, "frees_memory": self.sleep_frees_memory,
                    "sleeping": bool(self._llm.llm_engine.is_sleeping())}  # fmt: skip

    def wake_up(self, tags: Sequence[str] | None = None) -> dict[str, Any]:
        """`LLM.wake_up(tags)` for the given tags that still sleep ("weights", "kv_cache"; None = both), so a
        colocated engine can take its weights before its KV cache is reallocated. Returns {"tags" (those woken
        now), "seconds", "awake" (vLLM's `is_sleeping()` is false: every tag is awake and its scheduler runs)}."""
        wanted = {"weights", "kv_cache"} if tags is None else set(tags)
        if not wanted <= {"weights", "kv_cache"}:
            raise ValueError(f"wake_up tags must be 'weights' and/or 'kv_cache', got {sorted(wanted)}")
        with self._lock:
            self._check_usable()
            todo = sorted(wanted & self._asleep)
            t0 = time.perf_counter()
            if todo:
                self._llm.wake_up(tags=todo)
                self._asleep -= set(todo)
            return {"tags": todo, "seconds": time.perf_counter() - t0, "awake": not self._llm.llm_engine.is_sleeping()}

    def generate(self, prompts: Sequence[Sequence[int]], specs: Sequence[SamplingSpec]) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        with self._lock:
            self._check_usable()
            self._check_awake("generate", {"weights", "kv_cache"})
            _validate_batch(prompts, specs, self.max_model_len)
            if not prompts:
                return []
            params = [
                SamplingParams(
                    n=s.n,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    max_tokens=s.max_new_tokens,
                    logprobs=0,
                    seed=s.seed,
                    detokenize=False,
                )
                for s in specs
            ]
            inputs = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
            # every request of the call carries the same adapter (read under the lock: a sync waits for it)
            served = self.adapter_version
            outputs = self._llm.generate(inputs, params, use_tqdm=False, lora_request=self._lora_request)
        result: list[list[Completion]] = []
        for out in outputs:
            samples: list[Completion] = []
            for comp in sorted(out.outputs, key=lambda c: c.index):
                ids = [int(t) for t in comp.token_ids]
                lps = [float(step[tok].logprob) for tok, step in zip(ids, comp.logprobs or [], strict=False)]
                if len(lps) != len(ids):
                    raise EngineError(f"vLLM returned {len(lps)} logprobs for {len(ids)} tokens")
                ids, lps, reason, stop_id = _strip_eos(
                    ids, lps, self._eos, comp.finish_reason == FINISH_STOP, getattr(comp, "stop_reason", None)
                )
                text = self._tokenizer.decode(ids, skip_special_tokens=True)
                samples.append(
                    Completion(
                        index=len(samples),
                        text=text,
                        token_ids=ids,
                        logprobs=lps,
                        finish_reason=reason,
                        stop_token_id=stop_id,
                        policy_version=served,
                    )
                )
            result.append(samples)
        return result

    @contextmanager
    def _loading(self, what: str) -> Iterator[None]:
        """Around a weight load into the live engine: afterwards the prefix cache is cleared (its KV entries were
        computed with the old weights). Any failure inside leaves the engine unusable (half-loaded weights):
        `EngineLoadError(engine_usable=False)` naming `what`."""
        try:
            yield
            if not self._llm.reset_prefix_cache():
                raise EngineError("reset_prefix_cache returned False")
        except Exception as err:
            self._unusable = f"{what} failed: {err!r}"
            log.error("engine %s: %s", self.engine_id, self._unusable)
            raise EngineLoadError(
                f"engine {self.engine_id}: {what} failed; engine must be restarted: {err}", engine_usable=False
            ) from err

    def load_weights(self, path: str) -> float:
        """Reload a checkpoint dir in place (`SyncWorkerExtension`: `reload_weights` + tied layers), then
        drop the prefix cache."""
        with self._lock:
            self._check_usable()
            self._check_awake("load weights", {"weights"})
            try:
                reason = compare_manifests(self._manifest, checkpoint_manifest(path), ignore_missing=set())
            except (OSError, ValueError) as err:
                reason = str(err)
            if reason is not None:
                raise EngineLoadError(
                    f"engine {self.engine_id}: refusing checkpoint {path!r}: {reason}", engine_usable=True
                )
            t0 = time.perf_counter()
            with self._loading(f"reload from {path!r}"):
                self._drop_adapter()  # the new weights are the whole policy
                self._llm.collective_rpc("sparring_reload_weights", kwargs={"weights_path": str(path)})
            seconds = time.perf_counter() - t0
        log.info("engine %s loaded %s in %.3f s", self.engine_id, path, seconds)
        return seconds

    def load_tensors(
        self, buckets: Iterable[Sequence[tuple[str, torch.Tensor]]], manifest: TensorManifest, *, partial: bool = False
    ) -> float:
        """Load in-memory tensors (HF names, bucket by bucket) in place; `partial` = only some of the model's
        tensors (a delta sync: the others keep their values). Names and shapes are checked against the
        serving checkpoint first (`EngineLoadError`, engine usable); a failure after that marks the engine
        unusable. Each bucket is copied once into a shared-memory buffer (`SharedBuffer`, reused across
        buckets and syncs) that the vLLM worker process maps: peak extra memory is one bucket. An in-process
        engine's worker takes the bucket's tensors themselves (no copy; they must stay unchanged until this
        returns: the memory transport's are read-only views of the object store)."""
        with self._lock:
            self._check_usable()
            self._check_awake("load weights", {"weights"})
            expected = {k: v for k, v in self._manifest.items()}
            reason = compare_manifests(
                expected, {k: (tuple(s), d) for k, (s, d) in manifest.items()},
                ignore_missing=set(expected) if partial else set(),
            )  # fmt: skip
            if reason is not None:
                raise EngineLoadError(f"engine {self.engine_id}: refusing in-memory update: {reason}", engine_usable=True)
            t0 = time.perf_counter()
            with self._loading("in-memory update"):
                self._drop_adapter()  # the new weights are the whole policy
                self._llm.collective_rpc("sparring_begin_update")
                for bucket in buckets:
                    if self.in_process:  # the worker is in this process: hand it the tensors, no copy
                        self._llm.collective_rpc("sparring_load_tensors", args=(list(bucket),))
                        continue
                    entries = []
                    offsets = []
                    size = 0
                    for _name, t in bucket:
                        offsets.append(size)
                        size += _align(t.numel() * t.element_size())
                    if self._buffer is None or self._buffer.size < size:
                        if self._buffer is not None:
                            self._buffer.close()
                        self._buffer = SharedBuffer(size)
                    for (name, t), off in zip(bucket, offsets, strict=True):
                        self._buffer.write(off, t)
                        entries.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), off])
                    self._llm.collective_rpc(
                        "sparring_load_bucket",
                        kwargs={"path": self._buffer.path, "size": self._buffer.size, "entries": entries},
                    )
                self._llm.collective_rpc("sparring_finish_update")
            seconds = time.perf_counter() - t0
        log.info("engine %s loaded %d tensors in memory in %.3f s", self.engine_id, len(manifest), seconds)
        return seconds

    def load_adapter(self, tensors: Mapping[str, torch.Tensor], adapter_config: str, version: int, root: Path) -> float:
        """Serve LoRA adapter `tensors` (peft names) of policy `version` from now on; returns seconds taken.

        The adapter is written as a peft dir under `root` (`adapter_config.json` + `adapter_model.safetensors`;
        vLLM 0.32's `LoRARequest` loads from a path: its in-memory `LoRAModel.from_lora_tensors` has no public
        route, and the LRU adapter cache reloads evicted adapters from the path) and loaded with a new adapter
        id (`LLM.llm_engine.add_lora`) *before* it replaces the served one; the previous id is then removed
        (`remove_lora`) and its dir deleted, so at most two adapters are held and only during the swap. Every
        `generate` call after this carries the new `LoRARequest` and stamps `version` on its completions.
        Raises `EngineLoadError(engine_usable=True)` when the engine has no LoRA, the rank exceeds
        `max_lora_rank`, or vLLM refuses the adapter: the previous adapter keeps serving."""
        import json
        import shutil

        from vllm.lora.request import LoRARequest

        from sparring.workers.weight_sync import adapter_problems, write_adapter_dir

        with self._lock:
            self._check_usable()
            if self.max_lora_rank is None:
                raise EngineLoadError(f"engine {self.engine_id} was built without LoRA (lora_rank=None): cannot serve an adapter", engine_usable=True)
            config = json.loads(adapter_config)
            rank = int(config.get("r", 0))
            reason = (
                f"adapter rank {rank} exceeds max_lora_rank {self.max_lora_rank}"
                if rank > self.max_lora_rank
                else adapter_problems(tensors, config, self._manifest)
            )
            if reason is not None:
                raise EngineLoadError(f"engine {self.engine_id}: refusing adapter v{version}: {reason}", engine_usable=True)
            t0 = time.perf_counter()
            target = Path(root) / f"v{version:08d}-{uuid.uuid4().hex[:6]}"
            try:
                write_adapter_dir(target, tensors, adapter_config)
            except OSError as err:
                shutil.rmtree(target, ignore_errors=True)
                raise EngineLoadError(f"engine {self.engine_id}: cannot write adapter v{version} to {str(target)!r}: {err}", engine_usable=True) from err
            # a unique name per load: vLLM keys adapters' prefix-cache blocks by name
            request = LoRARequest(f"{self.engine_id}-v{version}-{self._lora_ids + 1}", self._lora_ids + 1, str(target))
            try:
                if not self._llm.llm_engine.add_lora(request):
                    raise EngineError("add_lora returned False")
            except Exception as err:
                shutil.rmtree(target, ignore_errors=True)
                raise EngineLoadError(
                    f"engine {self.engine_id}: vLLM refused adapter v{version}: {err}; still serving "
                    f"{'the base weights' if self.adapter_version is None else f'adapter v{self.adapter_version}'}",
                    engine_usable=True,
                ) from err
            self._lora_ids += 1
            self._drop_adapter()
            self._lora_request, self._lora_dir, self.adapter_version = request, target, version
            seconds = time.perf_counter() - t0
        log.info("engine %s serves LoRA adapter v%d (id %d) after %.3f s", self.engine_id, version, request.lora_int_id, seconds)
        return seconds

    def _drop_adapter(self) -> None:
        """Stop serving the current adapter (if any): removed from vLLM, its dir deleted. Holds `_lock`."""
        import shutil

        if self._lora_request is None:
            return
        self._llm.llm_engine.remove_lora(self._lora_request.lora_int_id)
        if self._lora_dir is not None:
            shutil.rmtree(self._lora_dir, ignore_errors=True)
        self._lora_request, self._lora_dir, self.adapter_version = None, None, None

    def loaded_adapter_ids(self) -> set[int]:
        """The adapter ids vLLM holds (`list_loras`): the served one only, between syncs."""
        return set(self._llm.llm_engine.list_loras())

    def close(self) -> None:
        if self._unusable == "closed":
            return
        self._unusable = "closed"
        if self._lora_dir is not None:
            import shutil

            shutil.rmtree(self._lora_dir, ignore_errors=True)
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        shutdown_vllm_llm(llm, f"engine {self.engine_id}")
        del self._llm


# --------------------------------------------------------------------------------------------------
# transformers


class _RowSampler:
    """A logits processor that *chooses* each row's next token and forces it (greedy decoding does the rest).

    Per row: temperature 0 -> argmax, else temperature + top-p + inverse-CDF draw from the row's own
    `torch.Generator` (one uniform per step, so a row's stream does not depend on its batch neighbours).
    Records the raw log-prob of the chosen token (see module docstring).
    """

    def __init__(
        self, temperatures: torch.Tensor, top_ps: torch.Tensor, generators: list[torch.Generator | None]
    ) -> None:
        self.temperatures = temperatures
        self.top_ps = top_ps
        self.generators = generators
        self.sampled_rows = [i for i, g in enumerate(generators) if g is not None]
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (chosen ids, raw logprobs) per step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        logits = scores.float()
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        chosen = logits.argmax(dim=-1)
        if self.sampled_rows:
            rows = torch.tensor(self.sampled_rows, dtype=torch.long)
            probs = torch.softmax(logits[rows] / self.temperatures[rows, None], dim=-1)
            sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
            cum = sorted_p.cumsum(dim=-1)
            # keep the smallest prefix whose mass reaches top_p (always at least the top token)
            drop = (cum - sorted_p) >= self.top_ps[rows, None]
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            cum = sorted_p.cumsum(dim=-1)
            u = torch.stack(
                [torch.rand((), generator=self.generators[r], dtype=torch.float64) for r in self.sampled_rows]
            ).to(cum.dtype)
            u = u * cum[:, -1]
            idx = torch.searchsorted(cum, u[:, None], right=True).clamp(max=cum.shape[-1] - 1)
            # never land on a token that top-p dropped (possible only by float rounding at the edge)
            idx = torch.minimum(idx, (~drop).sum(dim=-1, keepdim=True) - 1)
            chosen[rows] = order.gather(1, idx).squeeze(1)
        self.steps.append((chosen, raw_logprobs.gather(1, chosen[:, None]).squeeze(1)))
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, chosen[:, None], 0.0)
        return forced


class TransformersEngine:
    """Hugging Face `generate` with the same contract as `VLLMEngine`; batched with left padding."""

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        engine_id: str | None = None,
        num_threads: int | None = None,
        max_batch_rows: int = 64,
    ) -> None:
        import torch

        from sparring.shared.models import check_model_path, load_causal_lm, load_tokenizer

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.engine_id = engine_id or f"hf-{uuid.uuid4().hex[:8]}"
        self.model_path = check_model_path(model_path)
        self.device = device
        self.max_batch_rows = max_batch_rows
        t0 = time.perf_counter()
        self.tokenizer: PreTrainedTokenizerBase = load_tokenizer(self.model_path)
        self.model: PreTrainedModel = load_causal_lm(self.model_path, dtype=dtype, device=device).eval()
        self.start_seconds = time.perf_counter() - t0
        self._eos = eos_token_ids(self.model_path)
        eos_cfg = self.model.config.eos_token_id
        if not self._eos and eos_cfg is not None:
            self._eos = {eos_cfg} if isinstance(eos_cfg, int) else set(eos_cfg)
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else (min(self._eos) if self._eos else 0)
        self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 1 << 30))
        self._unusable: str | None = None
        self._lock = threading.Lock()

    def _check_usable(self) -> None:
        if self._unusable is not None:
            raise EngineUnusableError(f"engine {self.engine_id} is unusable: {self._unusable}")

    def generate(self, prompts: Sequence[Sequence[int]], specs: Sequence[SamplingSpec]) -> list[list[Completion]]:
        with self._lock:
            self._check_usable()
            _validate_batch(prompts, specs, self.max_model_len)
            result: list[list[Completion]] = []
            chunk: list[int] = []
            rows = 0
            for i, spec in enumerate(specs):
                if chunk and rows + spec.n > self.max_batch_rows:
                    result.extend(
                        self._generate_chunk([prompts[j] for j in chunk], [specs[j] for j in chunk])
                    )
                    chunk, rows = [], 0
                chunk.append(i)
                rows += spec.n
            if chunk:
                result.extend(self._generate_chunk([prompts[j] for j in chunk], [specs[j] for j in chunk]))
            return result

    def _generate_chunk(
        self, prompts: Sequence[Sequence[int]], specs: Sequence[SamplingSpec]
    ) -> list[list[Completion]]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        row_prompts: list[Sequence[int]] = []
        temps: list[float] = []
        top_ps: list[float] = []
        gens: list[torch.Generator | None] = []
        limits: list[int] = []
        for p, s in zip(prompts, specs, strict=True):
            for i in range(s.n):
                row_prompts.append(p)
                temps.append(s.temperature)
                top_ps.append(s.top_p)
                limits.append(s.max_new_tokens)
                if s.greedy:
                    gens.append(None)
                else:
                    g = torch.Generator()
                    if s.seed is None:
                        g.seed()
                    else:
                        g.manual_seed(s.seed + i)
                    gens.append(g)
        width = max(len(p) for p in row_prompts)
        input_ids = torch.full((len(row_prompts), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(row_prompts), width), dtype=torch.long)
        for r, p in enumerate(row_prompts):
            input_ids[r, width - len(p) :] = torch.tensor([int(t) for t in p], dtype=torch.long)
            attention[r, width - len(p) :] = 1
        sampler = _RowSampler(torch.tensor(temps), torch.tensor(top_ps), gens)
        gen_cfg = GenerationConfig(
            max_new_tokens=max(limits),
            do_sample=False,
            num_beams=1,
            eos_token_id=sorted(self._eos) or None,
            pad_token_id=self._pad_id,
            return_dict_in_generate=True,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=gen_cfg,
                logits_processor=LogitsProcessorList([sampler]),
            )
        new = out.sequences[:, width:].cpu()
        steps = len(sampler.steps)
        lp = torch.stack([s[1] for s in sampler.steps], dim=1).cpu() if steps else torch.zeros(len(gens), 0)
        rows_out: list[Completion] = []
        for r in range(len(row_prompts)):
            n_tok = min(limits[r], new.shape[1])
            ids = [int(t) for t in new[r, :n_tok]]
            lps = [float(v) for v in lp[r, :n_tok]]
            ids, lps, reason, stop_id = _strip_eos(ids, lps, self._eos, stopped=False)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            rows_out.append(
                Completion(
                    index=0, text=text, token_ids=ids, logprobs=lps, finish_reason=reason, stop_token_id=stop_id
                )
            )
        grouped: list[list[Completion]] = []
        k = 0
        for s in specs:
            grouped.append([c.model_copy(update={"index": i}) for i, c in enumerate(rows_out[k : k + s.n])])
            k += s.n
        return grouped

    def load_weights(self, path: str) -> float:
        """Copy a checkpoint dir's tensors into the live model (validated first; all-or-nothing on refusal)."""
        import torch

        with self._lock:
            self._check_usable()
            t0 = time.perf_counter()
            live = self.model.state_dict()
            expected: TensorManifest = {k: (tuple(v.shape), str(v.dtype)) for k, v in live.items()}
            tied = aliased_names(self.model)
            try:
                state = load_state_dir(path)
                got: TensorManifest = {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()}
                reason = compare_manifests(expected, got, ignore_missing=tied)
            except (OSError, ValueError) as err:
                reason = str(err)
            if reason is not None:
                raise EngineLoadError(
                    f"engine {self.engine_id}: refusing checkpoint {path!r}: {reason}", engine_usable=True
                )
            try:
                with torch.no_grad():
                    for name, tensor in state.items():
                        live[name].copy_(tensor)
            except Exception as err:
                self._unusable = f"reload from {path!r} failed: {err!r}"
                raise EngineLoadError(
                    f"engine {self.engine_id}: reload from {path!r} failed; engine must be restarted: {err}",
                    engine_usable=False,
                ) from err
            seconds = time.perf_counter() - t0
        log.info("engine %s loaded %s in %.3f s", self.engine_id, path, seconds)
        return seconds

    def load_tensors(
        self, buckets: Iterable[Sequence[tuple[str, torch.Tensor]]], manifest: TensorManifest, *, partial: bool = False
    ) -> float:
        """Copy in-memory tensors (HF names) into the live model; names and shapes are checked first."""
        import torch

        with self._lock:
            self._check_usable()
            t0 = time.perf_counter()
            live = self.model.state_dict()
            expected: TensorManifest = {k: (tuple(v.shape), str(v.dtype)) for k, v in live.items()}
            tied = aliased_names(self.model)
            got = {k: (tuple(s), d) for k, (s, d) in manifest.items()}
            reason = compare_manifests(expected, got, ignore_missing=set(expected) if partial else tied)
            if reason is not None:
                raise EngineLoadError(f"engine {self.engine_id}: refusing in-memory update: {reason}", engine_usable=True)
            try:
                with torch.no_grad():
                    for bucket in buckets:
                        for name, tensor in bucket:
                            live[name].copy_(tensor)
            except Exception as err:
                self._unusable = f"in-memory update failed: {err!r}"
                raise EngineLoadError(
                    f"engine {self.engine_id}: in-memory update failed; engine must be restarted: {err}",
                    engine_usable=False,
                ) from err
            return time.perf_counter() - t0

    def close(self) -> None:
        self._unusable = "closed"
        self.__dict__.pop("model", None)


# --------------------------------------------------------------------------------------------------


def engine_in_process(cfg: GenerationConfig) -> bool:
    """Whether a vLLM engine of `cfg` runs in its owner's process: `cfg.engine_in_process`, or when None,
    on CPU with one tensor-parallel rank (`vllm_llm.build_vllm_llm` says why)."""
    if cfg.engine_in_process is not None:
        return cfg.engine_in_process
    import torch

    return cfg.tensor_parallel_size == 1 and not torch.cuda.is_available()


def make_engine(
    backend: Literal["vllm", "transformers"],
    model_path: str,
    cfg: GenerationConfig,
    engine_id: str,
    seed: int,
    *,
    dtype: str = "auto",
    cpu_threads: int | str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> GenerationEngine:
    """Build the configured backend. `cpu_threads` is the engine's thread budget (None = backend default:
    vLLM's own binding; for transformers, one thread). A vLLM engine runs in this process when
    `engine_in_process(cfg)` says so."""
    kwargs = dict(extra or {})
    if backend == "vllm":
        kwargs.setdefault("in_process", engine_in_process(cfg))
        return VLLMEngine(
            model_path,
            max_model_len=cfg.max_model_len,
            kv_cache_memory_bytes=cfg.kv_cache_memory_mb * 2**20,
            dtype=dtype,
            seed=seed,
            engine_id=engine_id,
            cpu_threads=cpu_threads,
            llm_options=engine_options(cfg),
            **kwargs,
        )
    if backend == "transformers":
        import torch

        threads = cpu_threads if isinstance(cpu_threads, int) else 1
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(seed)
        return TransformersEngine(
            model_path, device=device, dtype=dtype, engine_id=engine_id, num_threads=threads, **kwargs
        )
    raise ValueError(f"unknown generation backend {backend!r} (expected 'vllm' or 'transformers')")
