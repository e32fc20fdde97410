"""The sharded trainer as a group of workers: rank 0 (the run's trainer worker) starts ranks 1..N-1 and
forwards every call that touches the model to all of them.

`ShardedTrainer` is what the trainer worker (`sparring.workers.actors.TrainerWorker`) holds instead of a
`PolicyTrainer` when `resources.trainer.num_ranks` > 1; it offers the same methods. Each rank is one process
and one device (`sparring.workers.distributed`: process group, FSDP2, data split, DCP checkpoints); the
other ranks are `FollowerRank` workers started through the runtime (Ray actors in the trainer's placement
group). No Ray import here: spawning, calls and waits go through `sparring.workers.groups.RayRuntime`.
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from sparring.shared.config import AlgorithmConfig, TrainerConfig
from sparring.workers.distributed import Ranks, free_port, init_process_group, training_device
from sparring.workers.groups import RayRuntime, Resources
from sparring.workers.trainer import IterationResult, PolicyTrainer


@dataclass(frozen=True)
class TrainerArgs:
    """What every rank builds its `PolicyTrainer` from (the same on every rank)."""

    model_path: str
    trainer_cfg: TrainerConfig
    algo_cfg: AlgorithmConfig
    seed: int
    dtype: str = "auto"

    def build(self, device: str, ranks: Ranks | None) -> PolicyTrainer:
        return PolicyTrainer(
            self.model_path, self.trainer_cfg, self.algo_cfg, seed=self.seed, device=device, dtype=self.dtype,
            ranks=ranks,
        )  # fmt: skip


class FollowerRank:
    """Rank r >= 1 of a sharded trainer (a worker rank 0 spawns): joins the process group on the device its
    runtime assigned, builds the same `PolicyTrainer`, and runs each call rank 0 forwards (`call`)."""

    def __init__(self, ranks: Ranks, args: TrainerArgs) -> None:
        device = training_device()
        init_process_group(ranks, device)
        self.trainer = args.build(device, ranks)

    def ready(self) -> str:
        return str(self.trainer.device)

    def call(self, method: str, *args: Any) -> None:
        """`PolicyTrainer.<method>(*args)`; the result stays here (rank 0's is the one that counts)."""
        getattr(self.trainer, method)(*args)


class ShardedTrainer:
    """Rank 0 of a sharded trainer: its own `PolicyTrainer` plus N-1 `FollowerRank` workers, used like a
    `PolicyTrainer` by the trainer worker. Every call that touches the model runs on every rank (the
    follower calls are submitted first, then rank 0's runs; rank 0's result is returned). A follower that
    dies or fails raises here at once (`WorkerDied` or its error), even while rank 0 waits in a collective,
    so the controller restarts the whole group (the followers are owned by rank 0 and go with it).

    `resources` place the followers: with a placement group, rank r takes bundle r (rank 0, the trainer
    worker itself, holds bundle 0). Rendezvous: rank 0's node address and a free port.
    """

    def __init__(self, runtime: RayRuntime, resources: Resources, name: str, world_size: int, args: TrainerArgs) -> None:
        if world_size < 2:
            raise ValueError(f"a sharded trainer needs >= 2 ranks, got {world_size}")
        self.runtime = runtime
        device = training_device()
        ranks = Ranks(0, world_size, runtime.node_address(), free_port())
        self.followers = []
        for r in range(1, world_size):
            placed = resources if resources.placement_group is None else replace(resources, bundle_index=r)
            self.followers.append(runtime.spawn(FollowerRank, (replace(ranks, rank=r), args), f"{name}.rank{r}", placed))
        def join_and_build() -> PolicyTrainer:
            init_process_group(ranks, device)  # blocks until every rank joined
            return args.build(device, ranks)

        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rank0")
        building = self._pool.submit(join_and_build)  # in a thread: a follower dying first must not hang us
        self.local = self._wait([runtime.submit(f, "ready") for f in self.followers], building)

    def _wait(self, refs: list[Any], local: Any) -> Any:
        pending = list(refs)
        while pending:
            for ref in self.runtime.wait(pending, timeout=1.0):
                pending.remove(ref)
                self.runtime.result(ref)  # raises WorkerDied, or the follower's own error
            if local.done() and local.exception() is not None:
                raise local.exception()
        return local.result()

    def _collective(self, method: str, *args: Any) -> Any:
        refs = [self.runtime.submit(f, "call", method, *args) for f in self.followers]
        return self._wait(refs, self._pool.submit(getattr(self.local, method), *args))

    # the PolicyTrainer surface the trainer worker uses
    def train_iteration(self, pairs: Any, iteration: int, progress: Any = None) -> IterationResult:
        refs = [self.runtime.submit(f, "call", "train_iteration", pairs, iteration) for f in self.followers]
        return self._wait(refs, self._pool.submit(self.local.train_iteration, pairs, iteration, progress))

    def save_checkpoint(self, out_dir: Path, version: int, iteration: int) -> Path:
        return self._collective("save_checkpoint", out_dir, version, iteration)  # type: ignore[no-any-return]

    def load_checkpoint(self, ckpt_dir: Path) -> tuple[int, int]:
        return self._collective("load_checkpoint", ckpt_dir)  # type: ignore[no-any-return]

    def state_dict_for_sync(self) -> dict[str, Tensor]:
        return self._collective("state_dict_for_sync")  # type: ignore[no-any-return]

    def sync_tensors(self) -> dict[str, Tensor]:
        return self._collective("sync_tensors")  # type: ignore[no-any-return]

    def send_weights(self, sender: Any, version: int, dtype: Any = None) -> Any:
        """Rank 0's `MemorySender` update, the tensors gathered bucket by bucket from every rank
        (`PolicyTrainer.send_weights`: a collective; the followers drop what they gather). If rank 0's send fails
        part-way (a `put` error), the followers wait in their next all-gather: rank 0's error is raised here at
        once and, as for any failed collective, the controller restarts the whole group."""
        refs = [self.runtime.submit(f, "call", "send_weights", None, version, dtype) for f in self.followers]
        return self._wait(refs, self._pool.submit(self.local.send_weights, sender, version, dtype))

    @property
    def policy_version(self) -> int:
        return int(self.local.policy_version)

    @property
    def device(self) -> str:
        return str(self.local.device)

    @property
    def pad_token_id(self) -> int:
        return int(self.local.pad_token_id)

    @property
    def lora(self) -> None:
        """None: `trainer.lora` trains on one rank only (the config refuses it with `num_ranks` > 1)."""
        return None

    @property
    def initial_model(self) -> None:
        """None: the frozen reference is sharded over the ranks, so evaluation's KL loads its own copy."""
        return None


__all__ = ["FollowerRank", "ShardedTrainer", "TrainerArgs"]
