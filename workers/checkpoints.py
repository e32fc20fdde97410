"""Checkpoint directories as data: which tensors a safetensors dir holds, whether it can replace another,
its stop tokens, and its tensors on CPU.

Shared by the generation engines (refusing a mismatched reload before touching the model), weight sync
(checksums, staging) and the judges that follow the policy's weights. `WeightLoader` is what weight sync
drives: anything with an id that can load a checkpoint dir in place (a generation engine, a judge).

Knows nothing about engines, training, Ray or Redis; imports torch/safetensors lazily.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

TensorManifest = dict[str, tuple[tuple[int, ...], str]]


class WeightLoader(Protocol):
    """Something that loads a HF safetensors checkpoint dir into its live model (`apply_update`'s target).

    A target that also has `load_tensors(buckets, manifest, partial=)` (the generation engines) takes the
    `memory` transport's tensors in place; one without it gets them staged as a checkpoint dir first (full
    updates only)."""

    engine_id: str

    def load_weights(self, path: str) -> float:
        """Load the checkpoint dir in place; return the seconds it took."""
        ...


def safetensors_files(path: str | Path) -> list[Path]:
    """The `*.safetensors` files of a checkpoint dir (sharded or not); raises if there are none."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(p)!r} does not exist")
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint directory {str(p)!r} has no *.safetensors files")
    return files


def load_state_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors checkpoint dir (sharded or not), on CPU."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in safetensors_files(path):
        state.update(load_file(str(f)))
    return state


def checkpoint_manifest(path: str | Path) -> TensorManifest:
    """{tensor name: (shape, dtype)} of a safetensors checkpoint dir, read from the headers only."""
    from safetensors import safe_open

    manifest: TensorManifest = {}
    for f in safetensors_files(path):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open has keys(), not __iter__
                sl = fh.get_slice(name)
                manifest[name] = (tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype()))
    return manifest


def compare_manifests(
    expected: TensorManifest, got: TensorManifest, *, ignore_missing: set[str]
) -> str | None:
    """A human-readable reason why `got` cannot replace `expected` (names and shapes), or None if it can."""
    problems: list[str] = []
    missing = sorted(set(expected) - set(got) - ignore_missing)
    extra = sorted(set(got) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        problems.append(f"unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for name in sorted(set(expected) & set(got)):
        if expected[name][0] != got[name][0]:
            problems.append(f"{name}: shape {list(got[name][0])} != serving {list(expected[name][0])}")
            if len(problems) > 8:
                break
    return "; ".join(problems) if problems else None


def eos_token_ids(model_dir: str | Path) -> set[int]:
    """End-of-sequence ids of a checkpoint: `eos_token_id` of config.json and generation_config.json."""
    ids: set[int] = set()
    for fname in ("config.json", "generation_config.json"):
        f = Path(model_dir) / fname
        if not f.is_file():
            continue
        value = json.loads(f.read_text()).get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    return ids


def aliased_names(model: Any) -> set[str]:
    """State-dict names of `model` (an `nn.Module`) that alias an earlier tensor, such as a tied `lm_head.weight`:
    `save_pretrained` leaves them out of a checkpoint, and loading the tensor they alias sets them too."""
    seen: set[int] = set()
    tied: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            tied.add(name)
        seen.add(ptr)
    return tied
