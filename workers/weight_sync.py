"""Getting new weights into an engine: one versioned, checksummed `WeightUpdate` -> the engine serving them.

One control message per engine per sync, never one per tensor. Two transports:

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

Trainer side: `object_store_update(state, version)` and `safetensors_dir_update(path, version)` build the
message. This module imports Ray lazily (only the object-store transport needs it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparring.workers.checkpoints import WeightLoader, load_state_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TRANSPORT_OBJECT_STORE = "object_store"
TRANSPORT_SAFETENSORS_DIR = "safetensors_dir"
TRANSPORTS = (TRANSPORT_OBJECT_STORE, TRANSPORT_SAFETENSORS_DIR)

# States up to this many bytes are hashed in full; larger ones (a 7B model is ~14 GB in bf16) are hashed
# from metadata + a float64 sum per tensor + strided raw-byte blocks (see `state_checksum`).
FULL_HASH_LIMIT_BYTES = 1 << 30
_SAMPLE_BLOCK_BYTES = 1 << 16
_SAMPLE_BLOCKS = 32
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


class WeightSyncError(RuntimeError):
    """An update was refused before touching the engine (bad checksum, malformed message, missing data)."""


@dataclass(frozen=True)
class WeightUpdate:
    """One versioned push of new weights; `path` for `safetensors_dir`, `state_ref` for `object_store`."""

    version: int
    transport: str
    path: str | None
    state_ref: Any | None
    checksum: str


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
) -> float:
    """Verify `update` and load it into `engine`; return the seconds the whole sync took on this side.

    Raises `WeightSyncError` (engine untouched, still on its old weights) for a malformed update or a
    checksum mismatch, and `EngineLoadError` from the engine itself.
    """
    t0 = time.perf_counter()
    if update.transport == TRANSPORT_SAFETENSORS_DIR:
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
        needed = sum(t.numel() * t.element_size() for t in state.values())
        root = Path(staging_root) if staging_root is not None else default_staging_root(needed)
        engine_dir = _engine_staging_dir(root, engine.engine_id)
        target = engine_dir / f"v{update.version:08d}-{uuid.uuid4().hex[:6]}"
        try:
            _stage_state(state, base_model_dir, target)
        except OSError as err:
            shutil.rmtree(target, ignore_errors=True)
            raise WeightSyncError(
                f"v{update.version}: cannot stage weights under {str(root)!r}: {err}"
            ) from err
        del state
        try:
            engine.load_weights(str(target))
        except Exception:
            shutil.rmtree(target, ignore_errors=True)
            raise
        _clean_staging(engine_dir, keep=target)
    else:
        raise WeightSyncError(
            f"v{update.version}: unknown transport {update.transport!r} (expected {TRANSPORTS})"
        )
    seconds = time.perf_counter() - t0
    log.info(
        "engine %s now on v%d via %s (%.3f s)", engine.engine_id, update.version, update.transport, seconds
    )
    return seconds


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
