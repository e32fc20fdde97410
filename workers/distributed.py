"""Trainer ranks: devices, the process group, FSDP2 sharding, each rank's share of a global batch, and
sharded checkpoints.

The trainer is a group of N ranks (`resources.trainer.num_ranks`), one process and one device each. Every
rank runs the same `PolicyTrainer` loop on the same pairs; this module holds what differs from one rank:

- **Device** (`training_device`): the GPU Ray assigned (Ray sets `CUDA_VISIBLE_DEVICES` to it, so it is
  `cuda:0` in the process) when CUDA is available, else the CPU; a process that was assigned a GPU but has
  no CUDA refuses to start instead of training on the CPU without saying so (unless
  `SPARRING_LOGICAL_GPUS=1` says the cluster's GPUs are logical ones, `ray start --num-gpus N` on a CPU
  machine: placement tests in CI).
- **Process group** (`init_process_group`): `nccl` on CUDA, `gloo` on CPU, TCP rendezvous at rank 0's
  address and a port it picked (`Ranks`).
- **Sharding** (`shard_model`): PyTorch FSDP2, `torch.distributed.fsdp.fully_shard` on every decoder layer
  (the classes the model lists in `_no_split_modules`) and on a root module (`LogpsModule`) that holds the
  rest (embeddings, final norm, LM head; tied weights stay together). The root wraps `sequence_logps`, so
  every forward enters through FSDP's root hooks. `MixedPrecisionPolicy(param_dtype=bfloat16,
  reduce_dtype=float32)` when mixed precision is on: compute in bf16, gradients reduced in fp32 onto fp32
  sharded master weights (`policy.dtype: auto` loads float32 on this path; the one-rank path keeps its
  bf16-on-GPU meaning). Gradients are SUMMED over ranks
  (`set_gradient_divide_factor(1.0)`), not averaged: each rank's loss is already its share of the global
  step's sum(w * l) / sum(w), so the gradient of a global batch does not depend on N.
- **Data split** (`rank_micro_batches`): an optimizer step's pairs are cut into N contiguous near-equal
  shares, and every rank runs the same number of micro-batches (FSDP's all-gathers and reduce-scatters are
  collectives: a rank with no pairs left runs a forward and backward with weight 0).
- **Checkpoints** (`save_sharded`, `load_sharded`): model and optimizer state as
  `torch.distributed.checkpoint` (DCP) shards under `<checkpoint>/sharded/`, beside the consolidated Hugging
  Face export rank 0 writes from the full state dict (`get_model_state_dict(..., full_state_dict=True,
  cpu_offload=True)`). DCP reshards on load, so a checkpoint written by N ranks resumes on M (M = 1 too,
  without a process group).

Sources: PyTorch FSDP2 (`torch/distributed/fsdp/_fully_shard/_fully_shard.py`), DCP state dicts
(`torch/distributed/checkpoint/state_dict.py`), torchtitan's `parallelize_llama` (per-block `fully_shard`,
then the root). Needs a shared file system between ranks for checkpoints (a run directory every node
mounts). Imports torch only (no Ray, no Redis); the ranks as workers: `sparring.workers.trainer_group`.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sparring.workers.logps import SequenceBatch, sequence_logps
from sparring.workers.trainer_state import SHARDED_DIR, replace_dir


@dataclass(frozen=True)
class Ranks:
    """This process's place in the trainer group and the rendezvous (rank 0's address and port)."""

    rank: int
    world_size: int
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    timeout_s: float = 1800.0  # a collective waiting longer fails (a dead rank)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")


# --------------------------------------------------------------------------------------------------
# Devices and the process group


def assigned_gpu_ids() -> list[str]:
    """The GPU ids this process was given: Ray sets `CUDA_VISIBLE_DEVICES` to the ids it assigned ("" for
    none); unset (not under Ray) = every GPU torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return [d.strip() for d in visible.split(",") if d.strip()]


LOGICAL_GPUS_ENV = "SPARRING_LOGICAL_GPUS"


def training_device() -> str:
    """`cuda:0` (the first GPU this process sees, i.e. the one Ray assigned) when CUDA is available, else
    `cpu`. Raises RuntimeError when a GPU was assigned but CUDA is unavailable (a CPU-only torch, a broken
    driver): training on the CPU there would be silent and ~100x slower. With `SPARRING_LOGICAL_GPUS=1`
    (the cluster's GPUs are Ray logical ones on CPU machines, e.g. CI's placement tests) it trains on the
    CPU instead, with a warning."""
    if torch.cuda.is_available():
        return "cuda:0"
    gpus = assigned_gpu_ids()
    if gpus and os.environ.get(LOGICAL_GPUS_ENV) == "1":
        warnings.warn(f"assigned logical GPU(s) {gpus} without CUDA ({LOGICAL_GPUS_ENV}=1): training on the CPU",
                      stacklevel=2)  # fmt: skip
        return "cpu"
    if gpus:
        raise RuntimeError(
            f"this trainer was assigned GPU(s) {gpus} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}) "
            f"but CUDA is not available in its process (torch {torch.__version__}, CUDA build: "
            f"{torch.version.cuda or 'none'}); install a CUDA build of torch on the GPU nodes, or set "
            "resources.trainer.num_gpus: 0 to train on CPUs"
        )
    return "cpu"


def free_port() -> int:
    """A TCP port free on this host now (the OS picks it), for rank 0's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def init_process_group(ranks: Ranks, device: str) -> None:
    """Join the trainer's process group (`nccl` on CUDA, `gloo` on CPU; TCP rendezvous at rank 0). Blocks
    until all `world_size` ranks have joined."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(
        backend,
        init_method=f"tcp://{ranks.master_addr}:{ranks.master_port}",
        rank=ranks.rank,
        world_size=ranks.world_size,
        timeout=datetime.timedelta(seconds=ranks.timeout_s),
    )


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def reduce_sum(values: dict[str, float], device: str) -> dict[str, float]:
    """`values` summed over every rank, by name (a name some rank lacks counts 0 there); float64, on
    `device` (nccl needs CUDA tensors). A collective."""
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, sorted(values))
    names = sorted(set().union(*every))
    t = torch.tensor([values.get(n, 0.0) for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(names, (float(x) for x in t.cpu().tolist()), strict=True))


# --------------------------------------------------------------------------------------------------
# FSDP2


class LogpsModule(nn.Module):
    """The FSDP root: `sequence_logps` of the wrapped causal LM, so every forward (even the LM-head chunks
    `sequence_logps` projects itself) runs inside the root's unshard/reshard hooks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, chunk_tokens: int | None
    ) -> tuple[Tensor, Tensor]:
        batch = SequenceBatch(input_ids, attention_mask, completion_mask)
        return sequence_logps(self.model, batch, chunk_tokens)  # type: ignore[arg-type]


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules whose class is in its `_no_split_modules` (HF's list of the
    classes that must stay whole, e.g. `Qwen2DecoderLayer`). Raises ValueError when there are none."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(model).__name__}: no decoder layers to shard (its _no_split_modules is {sorted(names) or 'empty'})"
        )
    return layers


def shard_model(model: nn.Module, mixed_precision: bool) -> LogpsModule:
    """FSDP2-shard `model` in place (every decoder layer, then the root `LogpsModule`); returns the root.

    Call on every rank with identical weights, inside an initialised process group. Parameters become
    DTensors sharded on dim 0 over the ranks; the root sums gradients over ranks (see module docstring).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    root = LogpsModule(model)
    fully_shard(root, mp_policy=mp)
    for module in root.modules():
        if hasattr(module, "set_gradient_divide_factor"):  # every FSDP unit: sum, do not average, over ranks
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    return root


def clip_grad_norm(params: Sequence[Tensor], max_norm: float) -> float:
    """Clip gradients to a total L2 norm of `max_norm` (inf: measure only); returns the norm before.

    The norm is over the WHOLE model: with FSDP2 the per-shard norms are DTensors, reduced over ranks by
    `full_tensor()` (as torchtitan's `clip_grad_norm_`). Same result as `torch.nn.utils.clip_grad_norm_`
    on one rank; a non-finite norm is returned as is (the caller skips the step)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if hasattr(total, "full_tensor"):  # a DTensor (FSDP2 shards)
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def rank_micro_batches(step: Tensor, rank: int, world_size: int, micro_batch: int) -> list[Tensor]:
    """This rank's micro-batches of one optimizer step (`step`: the step's pair indices).

    The step is cut into `world_size` contiguous shares of near-equal size (`tensor_split`), and each
    share into micro-batches of `micro_batch`. Every rank gets the same number of micro-batches,
    ceil(ceil(len(step) / world_size) / micro_batch); where a rank's share runs out the list holds empty
    tensors (its forward and backward still run, weighted 0: FSDP's collectives need every rank). With
    one rank this is `step.split(micro_batch)`.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    per_rank = -(-len(step) // world_size)
    count = -(-per_rank // micro_batch)
    share = step.tensor_split(world_size)[rank]
    micros = list(share.split(micro_batch))
    return micros + [share[:0]] * (count - len(micros))


# --------------------------------------------------------------------------------------------------
# Checkpoints


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's state dict on the CPU, gathered from the shards (a collective: call on every
    rank); rank 0 gets every tensor, the other ranks an empty dict. Tied parameters (one Parameter under
    several names, e.g. Qwen2's embedding and LM head) map to one tensor, as in a plain `state_dict()`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    owner: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first = owner.setdefault(id(param), name)
        if first != name and first in full and name in full:
            full[name] = full[first]
    return full


def _state_tensors(model: nn.Module) -> dict[str, Tensor]:
    """`model.state_dict()`'s names and tensors (parameters, then persistent buffers, module by module in the
    same pre-order) as the live objects (DTensor shards under FSDP2), without calling `state_dict()`:
    FSDP2's state-dict hooks allocate a copy the size of the whole model on every rank (measured: the tiny
    Qwen2 of the tests, 1.41 MB of new storages per call)."""
    out: dict[str, Tensor] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, p in module._parameters.items():
            if p is not None:
                out[dot + name] = p
        for name, b in module._buffers.items():
            if b is not None and name not in module._non_persistent_buffers_set:
                out[dot + name] = b
    return out


def sync_names(model: nn.Module, hf_model: nn.Module) -> list[str]:
    """The state-dict names a weight sync sends, in state-dict order: every tensor `save_pretrained` writes
    (a tied alias such as Qwen2's `lm_head.weight` left out), found from the local shards without gathering
    anything (a tied parameter is one DTensor, so its local shards share storage)."""
    from torch.distributed.tensor import DTensor
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    local = {k: v.to_local() if isinstance(v, DTensor) else v for k, v in _state_tensors(model).items()}
    return list(remove_tied_weights_from_state_dict(local, hf_model))  # type: ignore[arg-type]


def iter_full_tensors(
    model: nn.Module, names: Sequence[str], dtype: torch.dtype | None = None
) -> Iterator[tuple[str, Tensor]]:
    """(name, whole tensor on the CPU) for each of `names` of `model`'s state dict, gathered from the FSDP2
    shards one at a time (`DTensor.full_tensor()`, an all-gather: a collective, so every rank iterates the
    same names to the end), each shard cast to `dtype` before the gather (bf16 engines: half the bytes over
    the wire). A rank holds one gathered tensor at a time for as long as its consumer keeps it: rank 0's
    `MemorySender` keeps one bucket, the other ranks drop each at once."""
    from torch.distributed.tensor import DTensor

    state = _state_tensors(model)  # DTensor shards: nothing is gathered or copied here
    with torch.no_grad():
        for name in names:
            t = state[name].detach()
            if dtype is not None and t.dtype != dtype:
                t = t.to(dtype)
            if isinstance(t, DTensor):
                t = t.full_tensor()
            yield name, t.to("cpu")


def save_sharded(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    write_export: Callable[[Path, dict[str, Tensor]], None],
) -> Path:
    """Write a checkpoint directory from every rank, atomically (a collective).

    Every rank writes its DCP shards of the model (and optimizer) to `<tmp>/sharded`; rank 0 then calls
    `write_export(tmp, full_state)` (the consolidated HF checkpoint and `trainer_state.pt`) and renames
    the temporary sibling to `out_dir` once every rank is done. A failure on any rank removes nothing
    but the temporary directory. `out_dir` must be on a file system every rank sees.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    out_dir = Path(out_dir)
    tmp_box: list[Any] = [None]
    if dist.get_rank() == 0:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_box[0] = tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent)
    dist.broadcast_object_list(tmp_box, src=0)
    tmp = Path(tmp_box[0])
    try:
        state: dict[str, Any] = {"model": get_model_state_dict(model)}
        if optimizer is not None:
            state["optimizer"] = get_optimizer_state_dict(model, optimizer)
        dcp.save(state, checkpoint_id=str(tmp / SHARDED_DIR))
        full = full_state_dict(model)
        if dist.get_rank() == 0:
            write_export(tmp, full)
        dist.barrier()
        if dist.get_rank() == 0:
            replace_dir(tmp, out_dir)
    except BaseException:
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()
    return out_dir


def load_sharded(ckpt_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load `<ckpt_dir>/sharded` (DCP) into `model` (and `optimizer`), resharded to this process group's
    size; without a process group (one rank) into a plain model. Raises FileNotFoundError without it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(ckpt_dir) / SHARDED_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"{ckpt_dir} has no sharded checkpoint ({SHARDED_DIR}/)")
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    with warnings.catch_warnings():
        if not dist.is_initialized():  # one plain process (resumed on one rank): DCP warns that it assumes so
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


def load_full(model: nn.Module, full: dict[str, Tensor]) -> None:
    """Load a full (unsharded) state dict, e.g. a Hugging Face checkpoint's, into a sharded model: each rank
    keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=False))


def load_plain_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, plain: dict[str, Any], names: Sequence[str]
) -> None:
    """Load a one-rank `optimizer.state_dict()` (`plain`, keyed by parameter position) into the optimizer of
    a sharded model; `names` are the parameters' FQNs in the order the one-rank optimizer was built with."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    for group, saved in zip(optimizer.param_groups, plain["param_groups"], strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})  # e.g. the scheduler's `initial_lr`
    state = {names[i]: v for i, v in plain["state"].items()}
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in plain["param_groups"]]
    set_optimizer_state_dict(
        model, optimizer, {"state": state, "param_groups": groups}, options=StateDictOptions(full_state_dict=True)
    )


def is_sharded_checkpoint(ckpt_dir: Path) -> bool:
    return (Path(ckpt_dir) / SHARDED_DIR).is_dir()


__all__ = [
    "SHARDED_DIR",
    "LogpsModule",
    "Ranks",
    "assigned_gpu_ids",
    "clip_grad_norm",
    "decoder_layers",
    "destroy_process_group",
    "free_port",
    "full_state_dict",
    "init_process_group",
    "is_sharded_checkpoint",
    "iter_full_tensors",
    "load_full",
    "load_plain_optimizer",
    "load_sharded",
    "rank_micro_batches",
    "reduce_sum",
    "save_sharded",
    "shard_model",
    "sync_names",
    "training_device",
]
