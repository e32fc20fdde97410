"""Getting new weights into an engine: one versioned, checksummed `WeightUpdate` -> the engine serving them.

One control message per engine per sync, never one per tensor. Three transports:

- `memory` (the default) — tensors never touch a disk. The trainer (`MemorySender`) reads its state (HF
  names, cast to the engines' dtype) as a stream into buckets of about `storage.sync_bucket_mb` (a
  transformer block is never split across buckets, so no fused vLLM layer straddles two) and puts each bucket
  as soon as it is full, so it holds one bucket at a time (a sharded trainer gathers its FSDP2 shards one
  tensor at a time, `sparring.workers.distributed.iter_full_tensors`: rank 0 never holds a whole state),
  computes one blake3 checksum per bucket
  (multi-threaded; over each tensor's name, shape, dtype and bytes) and `ray.put`s each bucket once as a
  list of uint8 numpy views (Ray hands every reader zero-copy views of the object store). The control
  message carries the version, the bucket refs, their checksums and the manifest. The engine side fetches
  and verifies *every* bucket before it touches the model, then streams them bucket by bucket into the
  engine's `load_tensors` (vLLM: `SyncWorkerExtension`'s begin / load-bucket / finish, vLLM's layerwise
  reload; see `sparring.workers.generation`). Optional delta syncs (`storage.sync_delta`) send only the
  transformer blocks with a changed tensor checksum since the version the engines hold, with a full sync
  every `storage.sync_full_every` versions; an engine that is not on the delta's base version refuses it.
  LoRA adapter syncs (`trainer.lora.sync: adapter`) use the same buckets for the adapter tensors alone
  (peft's adapter state dict, names as in `adapter_model.safetensors`), with the adapter's
  `adapter_config.json` in the message (`WeightUpdate.adapter_config`); never a delta. A target with
  `load_adapter` (the vLLM engine: a versioned LoRA request) takes them as they are; any other target (the
  transformers engine, the self-preference judge) gets the base weights with the adapter merged in
  (`merge_adapter`, from `base_model_dir`), so it serves the same adapted policy.
- `safetensors_dir` — the trainer wrote a HF checkpoint dir (shared storage or /dev/shm); the engine loads
  from that path. If the update carries a checksum, the dir's tensors are read back and verified first.
- `object_store` — the trainer `ray.put`s its whole state dict once (`{HF name: CPU tensor}`); every
  generator receives the same ObjectRef, verifies the checksum, writes the tensors into a private staging
  dir (`model.safetensors` + the base model's config/tokenizer files; under /dev/shm when it has room,
  else the temp dir) and loads that. Older staging dirs of the same engine are removed afterwards.

A checksum mismatch (or a malformed update) raises `WeightSyncError` *before* the engine is touched, so the
engine stays on its previous weights. Engine-side failures surface as `EngineLoadError` (see
`sparring.workers.generation` for when the engine remains usable). The target is any `WeightLoader`
(`sparring.workers.checkpoints`): a generation engine or a judge that follows the policy's weights; this
module imports neither the engines nor the trainer.

Trainer side: `MemorySender.update(tensors, version)`, `object_store_update(state, version)` and
`safetensors_dir_update(path, version)` build the message. This module imports Ray lazily (only the memory
and object-store transports need it).

Adding a transport: the engine side of `memory` is "fetch + verify every bucket, then `engine.load_tensors`
(an iterable of per-bucket [(name, tensor)] lists)"; `load_tensors` drives the vLLM worker's begin /
load-bucket / finish. A GPU transport (NCCL broadcast from trainer rank 0, or CUDA IPC handles) replaces
the bucket payload and the worker-side bucket fetch (vLLM's own `weight_transfer_config` backends use the
same begin / update / finish protocol), keeping the message, the checksums-before-load rule and the
version bookkeeping here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparring.workers.checkpoints import WeightLoader, load_state_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TRANSPORT_MEMORY = "memory"
TRANSPORT_OBJECT_STORE = "object_store"
TRANSPORT_SAFETENSORS_DIR = "safetensors_dir"
TRANSPORTS = (TRANSPORT_MEMORY, TRANSPORT_OBJECT_STORE, TRANSPORT_SAFETENSORS_DIR)
DEFAULT_BUCKET_BYTES = 512 << 20
FETCH_TIMEOUT_S = 300.0  # one bucket from the object store (another node's, at worst): lost after this
# tensors at least this large are hashed by blake3 with all cores (max_threads=AUTO); smaller ones in one
# thread (spawning the threads costs more than they save)
_PARALLEL_HASH_BYTES = 4 << 20

# States up to this many bytes are hashed in full; larger ones (a 7B model is ~14 GB in bf16) are hashed
# from metadata + a float64 sum per tensor + strided raw-byte blocks (see `state_checksum`).
FULL_HASH_LIMIT_BYTES = 1 << 30
_SAMPLE_BLOCK_BYTES = 1 << 16
_SAMPLE_BLOCKS = 32
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


# seconds of the last memory update applied in this process: verifying every bucket, then loading (read by
# bench/weight_sync.py)
LAST_MEMORY_TIMINGS: dict[str, float] = {}


class WeightSyncError(RuntimeError):
    """An update was refused before touching the engine (bad checksum, malformed message, missing data)."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a bucket: HF name, shape and torch dtype name (e.g. "float32")."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        import torch

        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


@dataclass(frozen=True)
class Bucket:
    """One `ray.put` of the memory transport: a list of uint8 numpy arrays, one per tensor of `tensors`."""

    ref: Any
    checksum: str
    tensors: tuple[TensorEntry, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class WeightUpdate:
    """One versioned push of new weights; `path` for `safetensors_dir`, `state_ref` for `object_store`,
    `buckets` for `memory` (`base_version` set: a delta holding only changed tensors, valid only on an
    engine serving `base_version`; None: every tensor; `adapter_config` set: the buckets hold a LoRA adapter's
    tensors, peft names, and this is its `adapter_config.json` text)."""

    version: int
    transport: str
    path: str | None
    state_ref: Any | None
    checksum: str
    buckets: tuple[Bucket, ...] = ()
    base_version: int | None = None
    adapter_config: str | None = None  # memory transport: the buckets hold a LoRA adapter (its adapter_config.json)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    import torch

    flat = t.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def state_checksum(state: Mapping[str, torch.Tensor], *, full: bool | None = None) -> str:
    """A content checksum of a state dict (names, shapes, dtypes and values), independent of dict order.

    `full=True` hashes every byte (blake2b; ~1 GB/s single-threaded: the tiny and sub-1B models take
    milliseconds to a second, a 7B model ~15 s at *each* end of a sync). `full=False` hashes the metadata,
    a float64 sum of each tensor (one multi-threaded pass, catches any change of non-negligible size
    anywhere) and 32 evenly-strided 64 KiB raw blocks per tensor (catches bit-exact corruption in those
    blocks): a few seconds for 7B, meant to catch truncated, stale, mismatched or reordered transfers, not
    adversarial edits. `full=None` picks full hashing up to `FULL_HASH_LIMIT_BYTES` (1 GiB).
    """
    import torch

    names = sorted(state)
    total = sum(state[n].numel() * state[n].element_size() for n in names)
    if full is None:
        full = total <= FULL_HASH_LIMIT_BYTES
    h = hashlib.blake2b(digest_size=20)
    h.update(b"full" if full else b"sampled")
    for name in names:
        t = state[name]
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        if t.numel() == 0:
            continue
        raw = _tensor_bytes(t)
        if full or len(raw) <= _SAMPLE_BLOCK_BYTES * _SAMPLE_BLOCKS:
            h.update(raw)
            continue
        h.update(repr(float(t.detach().sum(dtype=torch.float64))).encode())
        step = (len(raw) - _SAMPLE_BLOCK_BYTES) // (_SAMPLE_BLOCKS - 1)
        for b in range(_SAMPLE_BLOCKS):
            h.update(raw[b * step : b * step + _SAMPLE_BLOCK_BYTES])
    return f"{'b2' if full else 'b2s'}:{h.hexdigest()}"


# --------------------------------------------------------------------------------------------------
# Trainer side


def object_store_update(state: Mapping[str, torch.Tensor], version: int) -> WeightUpdate:
    """Put a state dict (HF names) into the Ray object store once; the returned update goes to every engine."""
    import ray

    cpu_state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    checksum = state_checksum(cpu_state)
    ref = ray.put(cpu_state)
    return WeightUpdate(
        version=version, transport=TRANSPORT_OBJECT_STORE, path=None, state_ref=ref, checksum=checksum
    )


def safetensors_dir_update(path: str | Path, version: int, *, verify: bool = True) -> WeightUpdate:
    """An update pointing at a checkpoint dir; `verify` stores its checksum so engines can check the files."""
    checksum = state_checksum(load_state_dir(path)) if verify else ""
    return WeightUpdate(
        version=version,
        transport=TRANSPORT_SAFETENSORS_DIR,
        path=str(path),
        state_ref=None,
        checksum=checksum,
    )


def _raw_tensor(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor's bytes as a flat uint8 view (no copy)."""
    import torch

    return t.reshape(-1).view(torch.uint8)


def tensor_digest(raw: Any) -> bytes:
    """blake3 of a buffer (anything exposing the buffer protocol); all cores for large ones."""
    import blake3

    n = memoryview(raw).nbytes
    h = blake3.blake3(max_threads=blake3.blake3.AUTO if n >= _PARALLEL_HASH_BYTES else 1)
    h.update(raw)
    return h.digest()


def bucket_checksum(entries: tuple[TensorEntry, ...] | list[TensorEntry], digests: list[bytes]) -> str:
    """One checksum per bucket: blake3 over each tensor's name, shape, dtype and content digest, in order."""
    import blake3

    h = blake3.blake3()
    for entry, digest in zip(entries, digests, strict=True):
        h.update(f"{entry.name}|{list(entry.shape)}|{entry.dtype}\n".encode())
        h.update(digest)
    return f"b3:{h.hexdigest()}"


_BLOCK = re.compile(r"^(.*?\.(?:layers|h|blocks)\.\d+)\.")


def block_key(name: str) -> str:
    """The transformer block a tensor belongs to (`model.layers.3`), else the tensor's own name.

    Buckets never split a block and delta syncs send whole blocks: vLLM fuses tensors of one block (q/k/v
    into qkv_proj, gate/up into gate_up_proj) into one layer that is reprocessed only when all its parts
    arrive, so a block is the smallest unit that is always safe to send alone."""
    m = _BLOCK.match(name)
    return m.group(1) if m else name


def _blocks(
    items: Iterable[tuple[str, torch.Tensor]], ordered: bool
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """`items` as whole blocks (see `block_key`), one list per block, in order of first appearance.

    `ordered=False` (a mapping, already in memory): a block's tensors may be scattered; they are grouped.
    `ordered=True` (a lazy stream, e.g. tensors gathered from FSDP shards one at a time): each block's tensors
    must be consecutive, and a block is yielded as soon as the next one starts, so at most one block is held
    here; a block that reappears later raises `WeightSyncError` (a Hugging Face state dict lists each block's
    tensors together)."""
    if not ordered:
        grouped: dict[str, list[tuple[str, torch.Tensor]]] = {}
        for name, t in items:
            grouped.setdefault(block_key(name), []).append((name, t))
        yield from grouped.values()
        return
    done: set[str] = set()
    key: str | None = None
    block: list[tuple[str, torch.Tensor]] = []
    for name, t in items:
        k = block_key(name)
        if k != key:
            if block:
                yield block
            if k in done:
                raise WeightSyncError(f"tensor {name!r}: block {k!r} appeared earlier in the stream, not consecutively")
            done.add(k)
            key, block = k, []
        block.append((name, t))
    if block:
        yield block


def _nbytes(group: list[tuple[str, torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for _, t in group)


class MemorySender:
    """Trainer side of the `memory` transport: one `WeightUpdate` per sync, buckets in the object store.

    The tensors are taken as a stream: whole blocks (see `block_key`) fill a bucket of about `bucket_bytes`,
    and a full bucket is checksummed and `put` before the next tensors are read, so the sender holds at most
    one bucket plus one block of tensors it did not already hold (`last_peak_bytes`; with tensors gathered
    from FSDP shards one at a time, `sparring.workers.distributed.iter_full_tensors`, rank 0 never holds a
    whole state).

    `delta=True`: after a full sync, send only the blocks holding a tensor whose blake3 digest changed since
    the previous update, as a delta on that update's version; every `full_every` versions a full sync. The
    sender keeps one 32-byte digest per tensor between syncs, never a copy.
    """

    def __init__(
        self,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        *,
        delta: bool = False,
        full_every: int = 8,
        put: Callable[[Any], Any] | None = None,
    ) -> None:
        """`put` stores one bucket (a list of uint8 numpy arrays) and returns its reference: `ray.put` unless
        given (in-process use: the identity)."""
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
        if full_every < 1:
            raise ValueError(f"full_every must be >= 1, got {full_every}")
        self.bucket_bytes = bucket_bytes
        self._put = put
        self.delta = delta
        self.full_every = full_every
        self._digests: dict[str, bytes] = {}
        self._version: int | None = None
        self._full_version: int | None = None
        self.last_seconds: dict[str, float] = {}
        self.last_peak_bytes = 0  # the most tensor bytes the last update held at once (the open bucket + block)

    def update(
        self,
        tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        version: int,
        *,
        dtype: torch.dtype | None = None,
        full: bool = False,
        adapter_config: str | None = None,
    ) -> WeightUpdate:
        """Bucket, checksum and `put` `tensors` (HF names; a mapping, or a stream of (name, tensor) pairs read
        once, each block's tensors consecutive; cast to `dtype` if given, else as they are); `full=True` forces
        a full update even in delta mode. `adapter_config` (an `adapter_config.json` text): `tensors` are a
        LoRA adapter's (peft names); always a full update. A delta whose stream names a tensor the previous
        update did not have raises `WeightSyncError` (the next update is then a full one)."""
        full = full or adapter_config is not None
        if self._put is None:
            import ray

            self._put = ray.put
        put = self._put
        t0 = time.perf_counter()
        ordered = not isinstance(tensors, Mapping)
        items = tensors.items() if isinstance(tensors, Mapping) else tensors
        delta = (
            self.delta
            and not full
            and self._version is not None
            and self._full_version is not None
            and version - self._full_version < self.full_every
            and (ordered or list(tensors) == list(self._digests))  # type: ignore[arg-type]
        )
        previous, previous_version, digests = self._digests, self._version, {}
        buckets: list[Bucket] = []
        current: list[tuple[str, torch.Tensor]] = []
        hash_s = 0.0
        peak = 0

        def flush(pool: ThreadPoolExecutor) -> None:
            arrays = [_raw_tensor(t).numpy() for _, t in current]
            if delta:  # digested already (they decided what is sent)
                ref = put(arrays)
            else:  # blake3's threads hash while `put` copies the bucket into the object store
                pending = pool.submit(lambda: [tensor_digest(a) for a in arrays])
                ref = put(arrays)
                for (name, _), d in zip(current, pending.result(), strict=True):
                    digests[name] = d
            entries = tuple(TensorEntry(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in current)
            buckets.append(Bucket(ref=ref, checksum=bucket_checksum(entries, [digests[n] for n, _ in current]), tensors=entries))
            current.clear()

        try:
            with ThreadPoolExecutor(1, thread_name_prefix="sync-hash") as pool:
                for raw_block in _blocks(items, ordered):
                    block = []
                    for name, t in raw_block:
                        t = t.detach()
                        if dtype is not None and t.dtype != dtype:
                            t = t.to(dtype)
                        block.append((name, t.to("cpu").contiguous()))
                    del raw_block
                    if delta:
                        t1 = time.perf_counter()
                        for name, t in block:
                            if name not in previous:
                                raise WeightSyncError(
                                    f"v{version}: delta on v{previous_version}: tensor {name!r} was not in that update"
                                )
                            digests[name] = tensor_digest(_raw_tensor(t).numpy())
                        hash_s += time.perf_counter() - t1
                        if all(previous[n] == digests[n] for n, _ in block):
                            continue  # unchanged: not sent, not held
                    size = _nbytes(block)
                    if current and _nbytes(current) + size > self.bucket_bytes:
                        peak = max(peak, _nbytes(current) + size)
                        flush(pool)
                    current.extend(block)
                    del block
                    peak = max(peak, _nbytes(current))
                    if _nbytes(current) >= self.bucket_bytes:
                        flush(pool)
                if current:
                    flush(pool)
            if delta and list(digests) != list(previous):
                raise WeightSyncError(
                    f"v{version}: delta on v{previous_version}: the stream's tensors differ from that update's "
                    f"({len(digests)} vs {len(previous)})"
                )
        except BaseException:
            self._version = None  # the next update is a full one
            raise
        if not delta:
            self._full_version = version
        self._digests, self._version = digests, version
        self.last_peak_bytes = peak
        self.last_seconds = {"hash": hash_s, "put": time.perf_counter() - t0 - hash_s}  # they sum to the update's seconds
        return WeightUpdate(
            version=version,
            transport=TRANSPORT_MEMORY,
            path=None,
            state_ref=None,
            checksum=",".join(b.checksum for b in buckets),
            buckets=tuple(buckets),
            base_version=previous_version if delta else None,
            adapter_config=adapter_config,
        )


# --------------------------------------------------------------------------------------------------
# Engine side


def default_staging_root(needed_bytes: int = 0) -> Path:
    """`/dev/shm/sparring-staging` if /dev/shm exists with room for twice `needed_bytes`, else the temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        try:
            free = shutil.disk_usage(shm).free
        except OSError:
            free = 0
        if free >= 2 * needed_bytes + (64 << 20):
            return shm / "sparring-staging"
    return Path(tempfile.gettempdir()) / "sparring-staging"


def _engine_staging_dir(staging_root: Path, engine_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in engine_id)
    return staging_root / safe


def _stage_state(state: Mapping[str, torch.Tensor], base_model_dir: str | Path, target: Path) -> None:
    """Write `state` as model.safetensors next to copies of the base dir's non-weight files."""
    from safetensors.torch import save_file

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    base = Path(base_model_dir)
    for f in base.iterdir():
        if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(f, tmp / f.name)
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        t = t.detach().contiguous()
        if t.data_ptr() in seen:  # safetensors refuses shared storage (tied weights): give it its own copy
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[name] = t
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _clean_staging(engine_dir: Path, keep: Path | None) -> None:
    if not engine_dir.is_dir():
        return
    for d in engine_dir.iterdir():
        if d != keep:
            shutil.rmtree(d, ignore_errors=True)


def apply_update(
    engine: WeightLoader,
    update: WeightUpdate,
    base_model_dir: str | Path,
    staging_root: str | Path | None = None,
    current_version: int | None = None,
) -> float:
    """Verify `update` and load it into `engine`; return the seconds the whole sync took on this side.

    Raises `WeightSyncError` (engine untouched, still on its old weights) for a malformed update, a
    checksum mismatch, a missing bucket or a delta whose base is not `current_version` (the version the
    engine serves), and `EngineLoadError` from the engine itself.
    """
    t0 = time.perf_counter()
    if update.transport == TRANSPORT_MEMORY:
        _apply_memory(engine, update, base_model_dir, staging_root, current_version)
    elif update.transport == TRANSPORT_SAFETENSORS_DIR:
        if not update.path:
            raise WeightSyncError(f"v{update.version}: safetensors_dir update without a path")
        if update.checksum:
            try:
                got = state_checksum(load_state_dir(update.path))
            except (OSError, ValueError) as err:
                raise WeightSyncError(
                    f"v{update.version}: cannot read checkpoint {update.path!r}: {err}"
                ) from err
            if got != update.checksum:
                raise WeightSyncError(
                    f"v{update.version}: checksum mismatch for {update.path!r} (expected {update.checksum}, "
                    f"got {got}); refusing the update, engine {engine.engine_id} stays on its current weights"
                )
        engine.load_weights(update.path)
    elif update.transport == TRANSPORT_OBJECT_STORE:
        if update.state_ref is None:
            raise WeightSyncError(f"v{update.version}: object_store update without a state_ref")
        if not update.checksum:
            raise WeightSyncError(f"v{update.version}: object_store update without a checksum")
        state = _fetch_state(update.state_ref)
        got = state_checksum(state)
        if got != update.checksum:
            raise WeightSyncError(
                f"v{update.version}: checksum mismatch for object-store state (expected {update.checksum}, "
                f"got {got}); refusing the update, engine {engine.engine_id} stays on its current weights"
            )
        _stage_and_load(engine, state, update.version, base_model_dir, staging_root)
    else:
        raise WeightSyncError(
            f"v{update.version}: unknown transport {update.transport!r} (expected {TRANSPORTS})"
        )
    seconds = time.perf_counter() - t0
    log.info(
        "engine %s now on v%d via %s (%.3f s)", engine.engine_id, update.version, update.transport, seconds
    )
    return seconds


def _stage_and_load(
    engine: WeightLoader,
    state: dict[str, torch.Tensor],
    version: int,
    base_model_dir: str | Path,
    staging_root: str | Path | None,
) -> None:
    """Write `state` into a private staging dir and load that (engines without `load_tensors`)."""
    needed = sum(t.numel() * t.element_size() for t in state.values())
    root = Path(staging_root) if staging_root is not None else default_staging_root(needed)
    engine_dir = _engine_staging_dir(root, engine.engine_id)
    target = engine_dir / f"v{version:08d}-{uuid.uuid4().hex[:6]}"
    try:
        _stage_state(state, base_model_dir, target)
    except OSError as err:
        shutil.rmtree(target, ignore_errors=True)
        raise WeightSyncError(f"v{version}: cannot stage weights under {str(root)!r}: {err}") from err
    state.clear()
    try:
        engine.load_weights(str(target))
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
    _clean_staging(engine_dir, keep=target)


def _fetch_bucket(update: WeightUpdate, index: int) -> list[Any]:
    """The uint8 arrays of bucket `index` (zero-copy views of the object store), sizes checked."""
    import ray

    bucket = update.buckets[index]
    try:
        arrays = ray.get(bucket.ref, timeout=FETCH_TIMEOUT_S) if not isinstance(bucket.ref, list) else bucket.ref
    except Exception as err:
        raise WeightSyncError(
            f"v{update.version}: bucket {index + 1}/{len(update.buckets)} is missing from the object store: {err}"
        ) from err
    if not isinstance(arrays, list) or len(arrays) != len(bucket.tensors):
        raise WeightSyncError(
            f"v{update.version}: bucket {index + 1}/{len(update.buckets)} holds "
            f"{len(arrays) if isinstance(arrays, list) else type(arrays).__name__} arrays, "
            f"expected {len(bucket.tensors)}"
        )
    for entry, arr in zip(bucket.tensors, arrays, strict=True):
        if memoryview(arr).nbytes != entry.nbytes:
            raise WeightSyncError(
                f"v{update.version}: bucket {index + 1}: {entry.name} has {memoryview(arr).nbytes} bytes, "
                f"expected {entry.nbytes}"
            )
    return arrays


def _bucket_tensors(bucket: Bucket, arrays: list[Any]) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) views of a fetched bucket's arrays (no copy; read-only memory: never written)."""
    import numpy as np
    import torch

    out: list[tuple[str, torch.Tensor]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch.from_numpy of a read-only array
        for entry, arr in zip(bucket.tensors, arrays, strict=True):
            flat = torch.from_numpy(np.asarray(arr).reshape(-1).view(np.uint8))
            out.append((entry.name, flat.view(getattr(torch, entry.dtype)).reshape(entry.shape)))
    return out


def update_manifest(update: WeightUpdate) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype)} of every tensor a memory update carries."""
    return {e.name: (e.shape, e.dtype) for b in update.buckets for e in b.tensors}


def _apply_memory(
    engine: WeightLoader,
    update: WeightUpdate,
    base_model_dir: str | Path,
    staging_root: str | Path | None,
    current_version: int | None,
) -> None:
    partial = update.base_version is not None
    if partial and current_version != update.base_version:
        raise WeightSyncError(
            f"v{update.version}: delta update on v{update.base_version}, but engine {engine.engine_id} serves "
            f"v{current_version}; refusing it (a full sync or a restart from the checkpoint brings it up to date)"
        )
    if not partial and not update.buckets:
        raise WeightSyncError(f"v{update.version}: memory update without buckets")
    if partial and update.adapter_config is not None:
        raise WeightSyncError(f"v{update.version}: a LoRA adapter update is never a delta (base v{update.base_version})")
    names = [e.name for b in update.buckets for e in b.tensors]
    if len(names) != len(set(names)):
        raise WeightSyncError(f"v{update.version}: a tensor appears in two buckets")
    # Every bucket arrives and verifies before the model is touched: a corrupt or lost bucket leaves the
    # engine on its previous version, serving.
    t0 = time.perf_counter()
    for i, bucket in enumerate(update.buckets):
        arrays = _fetch_bucket(update, i)
        got = bucket_checksum(bucket.tensors, [tensor_digest(a) for a in arrays])
        del arrays
        if got != bucket.checksum:
            raise WeightSyncError(
                f"v{update.version}: checksum mismatch for bucket {i + 1}/{len(update.buckets)} (expected "
                f"{bucket.checksum}, got {got}); refusing the update, engine {engine.engine_id} stays on its "
                "current weights"
            )

    def buckets() -> Iterator[list[tuple[str, torch.Tensor]]]:
        for i, bucket in enumerate(update.buckets):
            yield _bucket_tensors(bucket, _fetch_bucket(update, i))

    if update.adapter_config is not None:
        _apply_adapter(engine, update, dict(kv for b in buckets() for kv in b), base_model_dir, staging_root, t0)
        return
    load_tensors = getattr(engine, "load_tensors", None)
    if load_tensors is not None:
        t1 = time.perf_counter()
        load_tensors(buckets(), update_manifest(update), partial=partial)
        LAST_MEMORY_TIMINGS.update(verify=t1 - t0, load=time.perf_counter() - t1)
        log.info("v%d: %d bucket(s), %d bytes: verify %.3f s, load %.3f s", update.version, len(update.buckets),
                 update.nbytes, t1 - t0, LAST_MEMORY_TIMINGS["load"])  # fmt: skip
        return
    if partial:
        raise WeightSyncError(
            f"v{update.version}: engine {engine.engine_id} loads checkpoint dirs only and cannot take a delta update"
        )
    state = {name: t for bucket in buckets() for name, t in bucket}
    _stage_and_load(engine, state, update.version, base_model_dir, staging_root)


def _fetch_state(ref: Any) -> dict[str, torch.Tensor]:
    """Resolve an ObjectRef (or accept an in-process mapping, for single-process use) to a state dict."""
    import torch

    if isinstance(ref, Mapping):
        state = dict(ref)
    else:
        import ray

        try:
            state = ray.get(ref)
        except Exception as err:
            raise WeightSyncError(f"cannot fetch weights from the object store: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightSyncError(
            f"object-store payload is not a {{name: tensor}} dict (got {type(state).__name__})"
        )
    return state


# --------------------------------------------------------------------------------------------------
# LoRA adapters (`trainer.lora.sync: adapter`)

ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft `save_pretrained`'s two files
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


def parse_adapter_config(text: str) -> dict[str, Any]:
    """An `adapter_config.json` text -> dict, checked to be a plain LoRA adapter this module can serve and merge:
    `r` >= 1, `lora_alpha`, `target_modules`; no DoRA, per-module rank/alpha patterns or `modules_to_save`
    (raises `WeightSyncError` naming the field)."""
    import json

    try:
        cfg = json.loads(text)
    except ValueError as err:
        raise WeightSyncError(f"adapter_config is not JSON: {err}") from err
    if not isinstance(cfg, dict):
        raise WeightSyncError(f"adapter_config is a {type(cfg).__name__}, expected an object")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise WeightSyncError(f"adapter_config.peft_type is {cfg.get('peft_type')!r}, expected 'LORA'")
    if not isinstance(cfg.get("r"), int) or cfg["r"] < 1 or not isinstance(cfg.get("lora_alpha"), int | float):
        raise WeightSyncError(f"adapter_config needs r >= 1 and lora_alpha, got r={cfg.get('r')!r}, lora_alpha={cfg.get('lora_alpha')!r}")
    for field in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if cfg.get(field):
            raise WeightSyncError(f"adapter_config.{field} = {cfg[field]!r} is not supported (plain LoRA only)")
    return cfg


_LORA_NAME = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def adapter_problems(
    tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], manifest: Mapping[str, tuple[tuple[int, ...], str]]
) -> str | None:
    """Why adapter `tensors` (peft names) cannot serve the model whose checkpoint manifest (HF names -> (shape,
    dtype)) is `manifest`, or None: each adapted module needs lora_A [r, in] and lora_B [out, r] for a base
    `<module>.weight` of shape [out, in] (vLLM copies an adapter into its slots by slicing, so a narrower
    tensor would load without an error and compute garbage)."""
    r = int(config["r"])
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, t in tensors.items():
        m = _LORA_NAME.match(name)
        if m is None:
            return f"{name!r} is not a LoRA A/B weight"
        pairs.setdefault(m.group(1), {})[m.group(2)] = tuple(t.shape)
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            return f"module {module!r} has lora_{next(iter(ab))} without its pair"
        base = manifest.get(f"{module}.weight")
        if base is None:
            return f"module {module!r}: the served model has no {module}.weight"
        out_f, in_f = base[0]
        if ab["A"] != (r, in_f) or ab["B"] != (out_f, r):
            return f"module {module!r}: lora_A {list(ab['A'])}, lora_B {list(ab['B'])}; expected [{r}, {in_f}] and [{out_f}, {r}]"
    return None


def merge_adapter(
    base: Mapping[str, torch.Tensor], adapter: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The base weights (HF names) with a LoRA adapter merged in: `W + s * B @ A` for each adapted linear
    layer, s = lora_alpha / r (lora_alpha / sqrt(r) with `use_rslora`), transposed for `fan_in_fan_out`
    (peft `tuners/lora/layer.py::Linear.get_delta_weight`); every other tensor as it is (not copied). Adapter
    names are peft's (`base_model.model.<module>.lora_A.weight` / `.lora_B.weight`); A: [r, in], B: [out, r].
    Raises `WeightSyncError` for an adapter tensor without its pair or without a base weight of the right shape."""
    import math

    import torch

    r = int(config["r"])
    scale = float(config["lora_alpha"]) / (math.sqrt(r) if config.get("use_rslora") else r)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in adapter.items():
        m = _LORA_NAME.match(name)
        if m is None:
            raise WeightSyncError(f"adapter tensor {name!r} is not a LoRA A/B weight")
        pairs.setdefault(m.group(1), {})[m.group(2)] = t
    out = dict(base)
    for module, ab in pairs.items():
        key = f"{module}.weight"
        if set(ab) != {"A", "B"}:
            raise WeightSyncError(f"adapter module {module!r} has lora_{next(iter(ab))} without its pair")
        if key not in base:
            raise WeightSyncError(f"adapter module {module!r}: the base model has no {key!r}")
        w = base[key]
        delta = ab["B"].to(torch.float32) @ ab["A"].to(torch.float32)
        if config.get("fan_in_fan_out"):
            delta = delta.T
        if tuple(delta.shape) != tuple(w.shape):
            raise WeightSyncError(f"adapter module {module!r}: B @ A is {tuple(delta.shape)}, {key!r} is {tuple(w.shape)}")
        out[key] = (w.to(delta.dtype) + scale * delta).to(w.dtype)
    return out


def write_adapter_dir(target: Path, tensors: Mapping[str, torch.Tensor], config_text: str) -> Path:
    """Write a peft adapter dir (`adapter_config.json` + `adapter_model.safetensors`) at `target`, atomically
    (a `.partial` sibling renamed); returns `target`. What vLLM's `LoRARequest(lora_path=...)` loads."""
    from safetensors.torch import save_file

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / ADAPTER_CONFIG_FILE).write_text(config_text)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def read_adapter_dir(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, adapter_config.json text) of a peft adapter dir (a checkpoint's `adapter/`); raises
    FileNotFoundError naming the missing file."""
    from safetensors.torch import load_file

    p = Path(path)
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
        if not (p / name).is_file():
            raise FileNotFoundError(f"no {name} in adapter dir {str(p)!r}")
    return load_file(str(p / ADAPTER_WEIGHTS_FILE)), (p / ADAPTER_CONFIG_FILE).read_text()


def adapter_base_model(adapter_dir: str | Path) -> str:
    """The base model path an adapter dir was trained on (`base_model_name_or_path` of its adapter_config.json,
    which peft records from the model the trainer loaded); raises FileNotFoundError when it is not a local dir."""
    import json

    cfg = json.loads((Path(adapter_dir) / ADAPTER_CONFIG_FILE).read_text())
    base = cfg.get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise FileNotFoundError(f"adapter {str(adapter_dir)!r}: its base model {base!r} is not a local directory")
    return str(base)


def _apply_adapter(
    engine: WeightLoader,
    update: WeightUpdate,
    tensors: dict[str, torch.Tensor],
    base_model_dir: str | Path,
    staging_root: str | Path | None,
    t0: float,
) -> None:
    """Load a verified adapter update: `engine.load_adapter` where there is one, else the merged weights."""
    assert update.adapter_config is not None
    config = parse_adapter_config(update.adapter_config)
    t1 = time.perf_counter()
    load_adapter = getattr(engine, "load_adapter", None)
    if load_adapter is not None:
        root = Path(staging_root) if staging_root is not None else default_staging_root()
        load_adapter(tensors, update.adapter_config, update.version, _engine_staging_dir(root, engine.engine_id) / "lora")
    else:
        try:
            base = load_state_dir(base_model_dir)
        except (OSError, ValueError) as err:
            raise WeightSyncError(f"v{update.version}: cannot read the base weights {str(base_model_dir)!r}: {err}") from err
        merged = merge_adapter(base, tensors, config)
        load_tensors = getattr(engine, "load_tensors", None)
        if load_tensors is not None:
            load_tensors([list(merged.items())], {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in merged.items()})
        else:
            _stage_and_load(engine, merged, update.version, base_model_dir, staging_root)
    LAST_MEMORY_TIMINGS.update(verify=t1 - t0, load=time.perf_counter() - t1)
    log.info("v%d: LoRA adapter, %d tensors, %d bytes: verify %.3f s, load %.3f s", update.version, len(tensors),
             update.nbytes, t1 - t0, LAST_MEMORY_TIMINGS["load"])  # fmt: skip
