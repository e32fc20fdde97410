"""What makes a trainer checkpoint resumable: `trainer_state.pt`, the process RNG states, and writing a
checkpoint directory atomically.

A trainer checkpoint is an ordinary Hugging Face checkpoint directory (weights, config, tokenizer) plus
`trainer_state.pt`: optimizer and scheduler state, the torch / python / numpy (and CUDA) RNG states, the
data position and the policy version, in a dict that `torch.load(weights_only=True)` reads (no pickled
classes). `sparring.workers.trainer.PolicyTrainer.save_checkpoint` / `load_checkpoint` decide what goes
in it; this module knows the file name and format, the RNG round trip, the directory swap, whether a
checkpoint can be resumed from (`resume_problems`) and which checkpoints a run keeps (`retain_checkpoints`).

Knows torch, numpy and the file system; nothing about models, objectives, Ray or Redis.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINER_STATE_FILE = "trainer_state.pt"
TRAINER_STATE_FORMAT = 1  # bump when a key changes meaning; load_trainer_state refuses other formats
SHARDED_DIR = "sharded"  # a sharded trainer's DCP shards of model and optimizer (workers/distributed.py)


def write_dir_atomically(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a fresh temporary sibling of `out_dir`, then rename it to `out_dir`; return it.

    A write killed midway never leaves a half-written `out_dir`: the temporary directory is removed when
    `write` raises (the exception propagates), and an existing `out_dir` is replaced only once the new
    one is complete (see `replace_dir`). Parent directories are created.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; an existing `dst` is moved aside first and removed only after the rename."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.replace(dst, old / dst.name)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def load_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    """The dict saved as `ckpt_dir / trainer_state.pt`, read with `torch.load(weights_only=True)`.

    Raises FileNotFoundError when the file is missing and ValueError when its `format` is not
    `TRAINER_STATE_FORMAT`.
    """
    ckpt_dir = Path(ckpt_dir)
    state: dict[str, Any] = torch.load(ckpt_dir / TRAINER_STATE_FILE, weights_only=True)
    if state.get("format") != TRAINER_STATE_FORMAT:
        raise ValueError(f"{ckpt_dir}: unsupported trainer state format {state.get('format')!r}")
    return state


def rng_states() -> dict[str, Any]:
    """The torch, python and numpy RNG states (and CUDA's, when available), loadable with weights_only."""
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy arrays are not allowed by torch.load(weights_only=True): store the key as a list
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned (CUDA's only when saved and a GPU is present)."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def resume_problems(ckpt_dir: str | Path) -> list[str]:
    """Why a run cannot continue from `ckpt_dir` (each missing or empty file named), or [] if it can.

    A resumable checkpoint has `config.json`, at least one `*.safetensors` file and `trainer_state.pt`
    (optimizer, scheduler, RNG, data position), none of them empty. Reads only the directory listing."""
    path = Path(ckpt_dir)
    if not path.is_dir():
        return [f"checkpoint directory {str(path)!r} does not exist"]
    problems = []
    for name in ("config.json", TRAINER_STATE_FILE):
        f = path / name
        if not f.is_file() or f.stat().st_size == 0:
            problems.append(f"{path / name} is {'empty' if f.is_file() else 'missing'}")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        problems.append(f"{path} has no *.safetensors weights")
    problems += [f"{w} is empty" for w in weights if w.stat().st_size == 0]
    return problems


@dataclass(frozen=True)
class Retention:
    """What `retain_checkpoints` did: checkpoint dirs removed, and those stripped to weights only."""

    removed: list[Path] = field(default_factory=list)
    weights_only: list[Path] = field(default_factory=list)


def retain_checkpoints(
    recorded: list[tuple[int, Path]], root: Path, keep_last: int, keep_every: int = 0
) -> Retention:
    """Apply the checkpoint retention to `root` (a run's `checkpoints/` dir) after an iteration is recorded.

    `recorded` is (iteration, checkpoint dir) of every recorded iteration. The newest `keep_last` recorded
    checkpoints stay whole (resumable: weights and `trainer_state.pt`); with `keep_every` = M > 0 every
    M-th iteration's checkpoint also stays, as weights only (its `trainer_state.pt`, mostly optimizer
    moments, and a sharded trainer's `sharded/` DCP shards are deleted; the HF export stays). Every other
    directory under `root` goes: older recorded checkpoints, checkpoints written by a trainer that died
    before its iteration was recorded, and the temporary / moved-aside directories a killed
    `write_dir_atomically` leaves. The newest recorded checkpoint (the resume point)
    is never touched (`keep_last` >= 1).
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (the resume point), got {keep_last}")
    root = Path(root)
    by_iteration = sorted(recorded)
    whole = {path.resolve() for _, path in by_iteration[-keep_last:]}
    weights = {path.resolve() for it, path in by_iteration if keep_every and it % keep_every == 0} - whole
    out = Retention()
    if not root.is_dir():
        return out
    for child in sorted(root.iterdir()):
        real = child.resolve()
        if real in whole or not child.is_dir():
            continue
        if real in weights:
            state, shards = child / TRAINER_STATE_FILE, child / SHARDED_DIR
            if state.exists() or shards.exists():
                state.unlink(missing_ok=True)
                shutil.rmtree(shards, ignore_errors=True)
                out.weights_only.append(child)
            continue
        shutil.rmtree(child, ignore_errors=True)
        out.removed.append(child)
    return out


__all__ = [
    "SHARDED_DIR",
    "TRAINER_STATE_FILE",
    "TRAINER_STATE_FORMAT",
    "Retention",
    "load_trainer_state",
    "replace_dir",
    "resume_problems",
    "retain_checkpoints",
    "rng_states",
    "set_rng_states",
    "write_dir_atomically",
]
