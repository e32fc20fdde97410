"""`resources:`: validation of the section, each role's Ray actor options, and the run-start check that
refuses what the cluster cannot hold (with the numbers). No Ray here: tests/integration/test_placement_ray.py
places real actors on logical GPUs."""

from __future__ import annotations

from typing import Any

import pytest

from sparring.shared.config import ConfigError, RunConfig, parse_config
from sparring.workers.controller import check_placement, colocated_bundle, role_resources, sleep_level
from sparring.workers.groups import PlacementError, Resources, pin_to_cores


def config(**sections: Any) -> RunConfig:
    data: dict[str, Any] = {
        "policy": {"path": "arena"},
        "judge": {"kind": "arena_oracle"},
        "prompts": {"source": "arena"},
        "generation": {"num_generators": 2},
        "schedule": {"prompts_per_iteration": 8},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data)


def test_role_resources_become_ray_actor_options() -> None:
    cfg = config(
        resources={
            "generators": {"num_gpus": 0.5, "memory_gb": 2, "custom": {"engine_node": 1}},
            "trainer": {"num_gpus": 1, "num_cpus": 4, "num_ranks": 2},
        }
    )
    roles = role_resources(cfg)
    gen = roles["generators"]
    assert gen.ray_options() == {
        "num_cpus": 0.5,  # GENERATOR_CPUS: the default when resources leaves num_cpus out
        "num_gpus": 0.5,
        "memory": 2 * 2**30,
        "resources": {"engine_node": 1.0},
    }
    assert gen.bundle() == {"CPU": 0.5, "GPU": 0.5, "memory": float(2 * 2**30), "engine_node": 1.0}
    assert roles["trainer"].ray_options() == {"num_cpus": 4.0, "num_gpus": 1.0}
    assert roles["judges"] == Resources(num_cpus=0.25)
    assert Resources(num_cpus=1).bundle() == {"CPU": 1}  # zero amounts are left out of a bundle


def test_check_placement_names_every_shortfall_with_numbers() -> None:
    cfg = config(resources={"generators": {"num_gpus": 0.5}, "trainer": {"num_gpus": 1, "num_ranks": 2}})
    check_placement(cfg, {"CPU": 8, "GPU": 3, "memory": 1e12})  # fits exactly: 2 x 0.5 + 2 x 1
    with pytest.raises(PlacementError) as err:
        check_placement(cfg, {"CPU": 2, "GPU": 2})
    message = str(err.value)
    assert "GPU: the run needs 3 (generators 2 x 0.5, trainer 2 x 1), the cluster has 2" in message
    # CPU: 2 generators x 0.5 + 1 judge x 0.25 + 2 ranks x 1 + the evaluator's 0.25 = 3.5
    assert "CPU: the run needs 3.5" in message and "the cluster has 2" in message
    with pytest.raises(PlacementError, match="engine_node: the run needs 2 .* the cluster has 0"):
        check_placement(config(resources={"generators": {"custom": {"engine_node": 1}}}), {"CPU": 8})
    check_placement(cfg, None)  # no scheduler (the in-process runtime): nothing to check


def test_colocated_bundle_holds_a_rank_and_its_engines() -> None:
    """Placement colocated: 4 engines x 0.25 GPU beside each of 2 trainer ranks x 0.5 GPU; one bundle per rank
    holds the rank and num_generators / num_ranks = 2 engines, 0.5 + 2 x 0.25 = 1 GPU, and the run-start
    check accepts it on 2 GPUs (the totals are the same as placed separately)."""
    cfg = config(
        generation={"num_generators": 4},
        resources={"placement": "colocated", "generators": {"num_gpus": 0.25, "memory_gb": 1, "custom": {"n": 1}},
                   "trainer": {"num_gpus": 0.5, "num_ranks": 2, "memory_gb": 4}},
    )  # fmt: skip
    roles = role_resources(cfg)
    bundle = colocated_bundle(roles["trainer"], roles["generators"], 2)
    assert bundle.bundle() == {"CPU": 1 + 2 * 0.5, "GPU": 1.0, "memory": float(6 * 2**30), "n": 2.0}
    check_placement(cfg, {"CPU": 8, "GPU": 2, "memory": 1e12, "n": 4})
    with pytest.raises(PlacementError, match=r"GPU: the run needs 2 \(generators 4 x 0.25, trainer 2 x 0.5\), the cluster has 1"):
        check_placement(cfg, {"CPU": 8, "GPU": 1, "memory": 1e12, "n": 4})
    assert sleep_level(cfg) == 2  # full syncs overwrite every weight: nothing to keep on the CPU
    assert sleep_level(config(resources=cfg.resources.model_dump(), storage={"sync_delta": True},
                              generation={"num_generators": 4})) == 1  # a delta keeps the unchanged blocks


COLOCATED = {"placement": "colocated", "generators": {"num_gpus": 0.5}, "trainer": {"num_gpus": 0.5}}


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"schedule": {"mode": "async", "max_staleness": 1}}, "colocated needs schedule.mode sync, got async: the engines sleep while the "
                                          "trainer trains, and async mode generates while it trains"),
        ({"generation": {"backend": "transformers"}}, "colocated needs generation.backend vllm"),
        ({"generation": {"num_generators": 2}},
         r"one GPU would hold trainer.num_gpus 0.5 \+ 2 engine\(s\) x generators.num_gpus 0.5 = 1.5 GPUs \(at most 1\)"),
        ({"generation": {"num_generators": 3}, "resources": {"trainer": {"num_gpus": 0.25, "num_ranks": 2}}},
         "generation.num_generators 3 is not a multiple of resources.trainer.num_ranks 2"),
        ({"generation": {"tensor_parallel_size": 2}, "resources": {"generators": {"num_gpus": 2}}},
         r"trainer.num_gpus 0.5 \+ 1 engine\(s\) x generators.num_gpus 2 = 2.5 GPUs"),
    ],
)
def test_colocated_refuses_what_cannot_share_a_gpu(sections: dict[str, Any], message: str) -> None:
    resources = {**COLOCATED, **{k: {**COLOCATED.get(k, {}), **v} for k, v in sections.pop("resources", {}).items()}}
    generation = {"num_generators": 1, **sections.pop("generation", {})}
    config(resources=COLOCATED, generation={"num_generators": 1})  # one engine beside the trainer fits
    with pytest.raises(ConfigError, match=message):
        config(resources=resources, generation=generation, **sections)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"resources": {"placement": "colocated"}}, "placement colocated shares GPUs"),
        ({"resources": {"trainer": {"num_gpus": 2}}}, "a trainer rank uses one device; for more GPUs raise num_ranks"),
        ({"resources": {"generators": {"num_gpus": 1.5}}}, "above 1 a worker takes whole GPUs"),
        ({"resources": {"judges": {"custom": {"GPU": 1}}}}, "CPU/GPU/memory have their own fields"),
        ({"resources": {"trainer": {"num_ranks": 0}}}, "greater than or equal to 1"),
        ({"generation": {"tensor_parallel_size": 2}}, "resources.generators.num_gpus must be 2, got 0"),
        ({"generation": {"gpu_memory_utilization": 1.5}}, "less than or equal to 1"),
        ({"resources": {"generators": {"cpu_cores": []}}}, r"cpu_cores \[\]: a non-empty list of distinct core ids"),
        ({"resources": {"trainer": {"cpu_cores": [1, 1]}}}, r"cpu_cores \[1, 1\]: a non-empty list of distinct"),
        ({"resources": {"judges": {"cpu_cores": [-1]}}}, "distinct core ids >= 0"),
        ({"resources": {"trainer": {"cpu_cores": [1], "num_ranks": 2}}}, "cores pin a one-rank trainer only"),
    ],
)
def test_resources_config_refuses_what_cannot_work(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**sections)


def test_tensor_parallel_engines_take_that_many_gpus() -> None:
    cfg = config(generation={"tensor_parallel_size": 2}, resources={"generators": {"num_gpus": 2}})
    assert role_resources(cfg)["generators"].num_gpus == 2


def test_vllm_gpu_options_reach_the_engine_arguments() -> None:
    from sparring.workers.vllm_llm import engine_options, llm_kwargs

    default = config().generation
    assert engine_options(default) == {"enforce_eager": True, "tensor_parallel_size": 1}  # None: vLLM's defaults
    plain = llm_kwargs("m", max_model_len=256, kv_cache_memory_bytes=64 << 20, extra=engine_options(default))
    assert plain["kv_cache_memory_bytes"] == 64 << 20 and "gpu_memory_utilization" not in plain

    gpu = config(
        generation={"gpu_memory_utilization": 0.85, "max_num_seqs": 128, "enable_prefix_caching": True,
                    "enforce_eager": False, "tensor_parallel_size": 2},
        resources={"generators": {"num_gpus": 2}},
    ).generation  # fmt: skip
    kwargs = llm_kwargs("m", max_model_len=256, kv_cache_memory_bytes=64 << 20, extra=engine_options(gpu))
    assert {k: kwargs[k] for k in ("gpu_memory_utilization", "max_num_seqs", "enable_prefix_caching",
                                   "enforce_eager", "tensor_parallel_size")} == {  # fmt: skip
        "gpu_memory_utilization": 0.85, "max_num_seqs": 128, "enable_prefix_caching": True,
        "enforce_eager": False, "tensor_parallel_size": 2,
    }  # fmt: skip
    assert "kv_cache_memory_bytes" not in kwargs  # the fraction sizes the KV cache, no byte budget over it


def test_the_old_cpu_fields_name_their_new_place() -> None:
    """One way to give a role CPUs: `resources.<role>.num_cpus`; the fields it replaced are refused with it."""
    from sparring.shared.config import ConfigError, parse_config

    base = {"policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}, "prompts": {"source": "arena"}}
    with pytest.raises(ConfigError, match="generation.cpus_per_generator moved to resources.generators.num_cpus"):
        parse_config({**base, "generation": {"cpus_per_generator": 1.0}})
    with pytest.raises(ConfigError, match="trainer.cpus moved to resources.trainer.num_cpus"):
        parse_config({**base, "trainer": {"cpus": 2.0}})


def test_cpu_cores_pin_every_thread_and_a_child_process_inherits_them() -> None:
    """`resources.<role>.cpu_cores` (`pin_to_cores`, run by each worker when it starts): every thread of the
    process moves, a process started afterwards (a vLLM engine's) inherits the cores, and a core the node
    does not have is refused with the field's name."""
    import os
    import subprocess
    import sys
    import threading

    allowed = sorted(os.sched_getaffinity(0))
    started, stop = threading.Event(), threading.Event()
    tids: list[int] = []

    def idle() -> None:
        tids.append(threading.get_native_id())
        started.set()
        stop.wait()

    thread = threading.Thread(target=idle)
    thread.start()
    started.wait()
    try:
        pin_to_cores([allowed[-1]], "resources.trainer.cpu_cores")
        assert os.sched_getaffinity(0) == {allowed[-1]}
        assert os.sched_getaffinity(tids[0]) == {allowed[-1]}  # a thread that existed before
        child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        assert child.stdout.strip() == str([allowed[-1]])
        with pytest.raises(ValueError, match=r"resources.trainer.cpu_cores=\[4096\]: cannot pin"):
            pin_to_cores([4096], "resources.trainer.cpu_cores")
        pin_to_cores(None, "resources.trainer.cpu_cores")  # None: unchanged
        assert os.sched_getaffinity(0) == {allowed[-1]}
    finally:
        stop.set()
        thread.join()
        pin_to_cores(allowed, "restore")
