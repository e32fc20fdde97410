"""Placement on a real local Ray with 2 logical GPUs (`ray.init(num_gpus=2)`): each role's workers get the
GPUs `resources:` asks for, through the controller's own path (`place_workers` -> placement groups ->
`WorkerGroup` -> `RayRuntime.spawn`), and each sees exactly the CUDA_VISIBLE_DEVICES Ray gave it. The
workers are probes (a cheap method reporting what the process got) instead of vLLM engines and trainers;
the trainer's device rule is checked inside the probe with the trainer's own `training_device`."""

from __future__ import annotations

from typing import Any

import pytest

from sparring.shared.config import parse_config
from sparring.workers.controller import place_workers
from sparring.workers.groups import PlacementError, RayRuntime, WorkerGroup

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def ray_two_gpus() -> Any:
    import sys

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class Probe:
    """Reports the GPUs Ray assigned, the CUDA devices the process sees, and the trainer's device choice."""

    def report(self) -> dict[str, Any]:
        import os

        import ray

        from sparring.workers.distributed import training_device

        try:
            device = training_device()
        except RuntimeError as err:
            device = f"refused: {err}"
        return {
            "gpu_ids": sorted(str(g) for g in ray.get_gpu_ids()),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": device,
        }


def _config(**resources: Any) -> Any:
    return parse_config(
        {
            "policy": {"path": "arena"},
            "judge": {"kind": "arena_oracle"},
            "prompts": {"source": "arena"},
            "generation": {"num_generators": 2},
            "schedule": {"prompts_per_iteration": 8},
            "resources": resources,
        }
    )


def test_trainer_and_generators_get_the_gpus_they_ask_for(ray_two_gpus: Any) -> None:
    """Must-show (issue 11): trainer num_gpus 1, generators 0.5 x 2 on 2 logical GPUs: the trainer holds
    one GPU alone, the two generators share the other; each process sees exactly its GPU; the trainer
    refuses to fall back to the CPU (no CUDA in this torch) instead of training there silently."""
    import torch

    cfg = _config(trainer={"num_gpus": 1}, generators={"num_gpus": 0.5}, engine_strategy="PACK")
    runtime = RayRuntime()
    try:
        placed = place_workers(cfg, runtime, "placement-test")
        groups = {role: WorkerGroup(role, Probe, runtime, lambda c: (), placed[role], "placement-test")
                  for role in ("generators", "trainer", "judges")}  # fmt: skip
        groups["generators"].spawn(["gen-0", "gen-1"])
        groups["trainer"].spawn(["trainer"])
        groups["judges"].spawn(["judge-0"])
        reports = {role: group.call_all("report") for role, group in groups.items()}
    finally:
        for group in groups.values():
            group.kill_all()
        runtime.release()

    (trainer,) = reports["trainer"].values()
    gen0, gen1 = reports["generators"]["gen-0"], reports["generators"]["gen-1"]
    assert len(trainer["gpu_ids"]) == 1 and len(gen0["gpu_ids"]) == 1
    assert gen0["gpu_ids"] == gen1["gpu_ids"] != trainer["gpu_ids"]  # 0.5 + 0.5 share the GPU the trainer lacks
    assert {*gen0["gpu_ids"], *trainer["gpu_ids"]} == {"0", "1"}
    for report in (trainer, gen0, gen1):
        assert report["cuda_visible_devices"] == report["gpu_ids"][0]
    assert reports["judges"]["judge-0"]["gpu_ids"] == [] and reports["judges"]["judge-0"]["cuda_visible_devices"] == ""
    assert reports["judges"]["judge-0"]["device"] == "cpu"
    if torch.cuda.is_available():  # a real GPU machine would train there
        assert trainer["device"] == "cuda:0"
    else:
        gpu = trainer["gpu_ids"][0]
        assert trainer["device"].startswith(f"refused: this trainer was assigned GPU(s) ['{gpu}']")
        assert "CUDA is not available" in trainer["device"]


def test_placement_refuses_more_gpus_than_the_cluster_has(ray_two_gpus: Any) -> None:
    cfg = _config(trainer={"num_gpus": 1, "num_ranks": 2}, generators={"num_gpus": 1})
    runtime = RayRuntime()
    with pytest.raises(PlacementError, match=r"GPU: the run needs 4 \(generators 2 x 1, trainer 2 x 1\), the cluster has 2"):
        place_workers(cfg, runtime, "too-big")
    assert runtime.placement_groups == []  # refused before reserving anything


def test_colocated_puts_each_trainer_rank_and_its_engines_on_one_gpu(ray_two_gpus: Any) -> None:
    """Placement colocated, 2 trainer ranks x 0.5 GPU and 4 engines x 0.25 GPU on 2 logical GPUs: one bundle
    per rank holds the rank and 2 engines (0.5 + 2 x 0.25 = 1 GPU), so rank 0 shares its GPU with gen-0 and
    gen-1, rank 1 (bundle 1, as `ShardedTrainer` places it) with gen-2 and gen-3."""
    cfg = parse_config(
        {
            "policy": {"path": "arena"},
            "judge": {"kind": "arena_oracle"},
            "prompts": {"source": "arena"},
            "generation": {"num_generators": 4},
            "resources": {"placement": "colocated", "trainer": {"num_gpus": 0.5, "num_ranks": 2, "num_cpus": 0.5},
                          "generators": {"num_gpus": 0.25, "num_cpus": 0.25}},
        }
    )  # fmt: skip
    runtime = RayRuntime()
    try:
        placed = place_workers(cfg, runtime, "colocated-test")
        assert len(runtime.placement_groups) == 1  # one group: the shared bundles
        groups = {role: WorkerGroup(role, Probe, runtime, lambda c: (), placed[role], "colocated-test")
                  for role in ("generators", "trainer")}  # fmt: skip
        groups["generators"].spawn([f"gen-{i}" for i in range(4)])
        groups["trainer"].spawn(["trainer", "rank1"])
        reports = {role: group.call_all("report") for role, group in groups.items()}
    finally:
        for group in groups.values():
            group.kill_all()
        runtime.release()

    gens, ranks = reports["generators"], reports["trainer"]
    for report in [*gens.values(), *ranks.values()]:
        assert len(report["gpu_ids"]) == 1 and report["cuda_visible_devices"] == report["gpu_ids"][0]
    assert gens["gen-0"]["gpu_ids"] == gens["gen-1"]["gpu_ids"] == ranks["trainer"]["gpu_ids"]
    assert gens["gen-2"]["gpu_ids"] == gens["gen-3"]["gpu_ids"] == ranks["rank1"]["gpu_ids"]
    assert {*ranks["trainer"]["gpu_ids"], *ranks["rank1"]["gpu_ids"]} == {"0", "1"}
