"""Recovery of the in-process controller (`LocalRuntime`, real Redis, the tiny models of
test_controller_local.py), each compared with one uninterrupted reference run of the same config:

- resume equivalence: a generator crash loop spends the respawn budget in iteration 2, the run pauses with the
  reason; resumed by a new controller, iteration 2 trains the same pairs and ends on the same weights as the
  uninterrupted run, and its record counts the whole iteration (all 8 groups, the generation seconds before
  the pause);
- the trainer killed mid-training in iteration 1 is restarted from the last checkpoint (restart recorded), killed
  again in iteration 2 past `resilience.trainer_restarts` the run fails with the reason; the failed run is
  resumable (`RunService.resume_problems`), resumes, and still equals the uninterrupted run: 0 pairs lost or
  trained twice.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from sparring.shared.config import RunConfig
from sparring.shared.queue import StreamQueue
from sparring.shared.records import GenerationGroup, PreferencePair
from sparring.shared.store import RunStore
from sparring.workers.actors import TRAINER_GROUP
from tests.helpers import EventWatch
from tests.unit.test_controller_local import config, controller, models  # noqa: F401 - `models` is a fixture

ITERATIONS = 2


def recovery_config(tmp_path: Path, models: dict[str, str], pool: str, **resilience: Any) -> RunConfig:  # noqa: F811
    base = config(tmp_path, models, pool)
    return base.model_copy(
        update={
            # one generator, one prompt per request: every batch, hence every sample, is the same in every run
            "generation": base.generation.model_copy(update={"num_generators": 1, "prompts_per_request": 1}),
            "schedule": base.schedule.model_copy(update={"iterations": ITERATIONS}),
            "eval": base.eval.model_copy(update={"enabled": False}),
            "resilience": base.resilience.model_copy(update={"restart_backoff_s": 0.05, **resilience}),
        }
    )


def new_run(cfg: RunConfig, redis_client: Any, tmp_path: Path, name: str) -> tuple[str, Path]:
    run_id = f"test-recovery-{name}-{time.time_ns()}"
    run_dir = tmp_path / run_id
    run_dir.mkdir(parents=True)
    RunStore(redis_client).create_run(run_id, cfg.model_dump(mode="json"), str(run_dir))
    return run_id, run_dir


def trained_pairs(redis_client: Any, run_id: str, iteration: int) -> set[tuple[str, str, str]]:
    pairs = StreamQueue(redis_client, run_id).read_all("pairs", PreferencePair)
    return {(p.prompt_id, p.chosen.text, p.rejected.text) for _, p in pairs if p.iteration == iteration}


def final_weights(store: RunStore, run_id: str) -> dict[str, torch.Tensor]:
    from sparring.workers.checkpoints import load_state_dir

    return load_state_dir(store.iterations(run_id)[-1].checkpoint)


@pytest.fixture(scope="module")
def pool_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    import json

    from tests.unit.test_controller_local import TOPICS

    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"tell me about {t}."}) + "\n" for i, t in enumerate(TOPICS)))
    return str(path)


@pytest.fixture(scope="module")
def reference(
    models: dict[str, str], pool_path: str, tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_client: Any  # noqa: F811
) -> dict[str, Any]:
    """The uninterrupted run: iteration 2's pairs and the final weights."""
    tmp_path = tmp_path_factory.mktemp("reference")
    cfg = recovery_config(tmp_path, models, pool_path)
    run_id, run_dir = new_run(cfg, redis_client, tmp_path, "reference")
    controller(cfg, run_id, redis_url, run_dir).run()
    store = RunStore(redis_client)
    assert [r.iteration for r in store.iterations(run_id)] == [1, 2]
    return {"pairs": trained_pairs(redis_client, run_id, ITERATIONS), "weights": final_weights(store, run_id), "run_id": run_id}


def assert_same_as_reference(reference: dict[str, Any], redis_client: Any, run_id: str) -> None:
    store = RunStore(redis_client)
    assert trained_pairs(redis_client, run_id, ITERATIONS) == reference["pairs"]
    got = final_weights(store, run_id)
    assert got.keys() == reference["weights"].keys()
    for name, tensor in reference["weights"].items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    # every pair of the run trained exactly once: none left unacknowledged, none rejected as a duplicate
    queue = StreamQueue(redis_client, run_id)
    assert queue.pending_count("pairs", TRAINER_GROUP) == 0
    for record in store.iterations(run_id):
        assert record.num_pairs == len(trained_pairs(redis_client, run_id, record.iteration)) > 0
        assert record.metrics["train/rejected_pairs"] == 0


def resume_to_completion(cfg: RunConfig, run_id: str, run_dir: Path, redis_url: str, redis_client: Any) -> list[Any]:
    """What `POST .../resume` does (back to `created`), then a new controller runs the rest; the records. The
    resumed iteration 2 counts the whole iteration: its 8 groups and the generation of every attempt."""
    store = RunStore(redis_client)
    store.set_state(run_id, "created")
    controller(cfg, run_id, redis_url, run_dir).run()
    records = store.iterations(run_id)
    assert [r.iteration for r in records] == [1, 2] and store.get_run(run_id)["state"] == "completed"
    assert records[1].num_groups == 8 and records[1].num_prompts == 8
    assert records[1].metrics["gen/tokens"] > 0 and records[1].stage_seconds["generate_judge"] > 0
    return records


def test_resume_after_a_respawn_pause_equals_the_uninterrupted_run(
    models: dict[str, str], pool_path: str, tmp_path: Path, redis_url: str, redis_client: Any, reference: dict[str, Any]  # noqa: F811
) -> None:
    cfg = recovery_config(tmp_path, models, pool_path, worker_respawns_per_iteration=0)
    run_id, run_dir = new_run(cfg, redis_client, tmp_path, "respawn")
    store = RunStore(redis_client)
    first = controller(cfg, run_id, redis_url, run_dir)
    queue = StreamQueue(redis_client, run_id)

    def groups_of_iteration_2() -> int:
        return sum(g.iteration == 2 for _, g in queue.read_all("generations", GenerationGroup))

    def kill_gen0_in_iteration_2() -> None:
        deadline = time.monotonic() + 300
        while groups_of_iteration_2() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.runtime.kill(first.groups["generators"].workers["gen-0"])

    killer = threading.Thread(target=kill_gen0_in_iteration_2, daemon=True)
    killer.start()
    summary = first.run()
    killer.join(timeout=5)
    run = store.get_run(run_id)
    assert summary["interrupted"] == "paused" and run["state"] == "paused"
    assert run["reason"].startswith("gen-0 died in iteration 2: respawn 1 would exceed "
                                    "resilience.worker_respawns_per_iteration=0")  # fmt: skip
    paused = [d for _, kind, d in store.events(run_id) if kind == "paused"]
    assert paused and paused[-1]["reason"] == run["reason"]
    assert [r.iteration for r in store.iterations(run_id)] == [1]
    assert 0 < groups_of_iteration_2() < 8, "iteration 2 was not interrupted midway"

    records = resume_to_completion(cfg, run_id, run_dir, redis_url, redis_client)
    assert records[1].metrics["workers/restarts"] == 0  # counted per iteration (the paused attempt's is not carried)
    assert_same_as_reference(reference, redis_client, run_id)


def kill_trainer_while_training(ctrl: Any, store: RunStore, run_id: str, iterations: list[int]) -> threading.Thread:
    """Kill the trainer once in each of `iterations`, when it reports its first optimizer step."""
    todo = list(iterations)

    def on_event(kind: str, data: dict[str, Any]) -> bool:
        if kind == "progress" and data.get("stage") == "train" and data.get("iteration") == todo[0] \
                and str(data.get("message", "")).startswith("step"):  # fmt: skip
            ctrl.runtime.kill(ctrl.groups["trainer"].workers["trainer"])
            todo.pop(0)
        return not todo

    return EventWatch(store, run_id).in_thread(on_event, 300, poll_s=0.01)


def test_trainer_killed_restarts_then_fails_past_the_budget_and_resumes(
    models: dict[str, str], pool_path: str, tmp_path: Path, redis_url: str, redis_client: Any, reference: dict[str, Any]  # noqa: F811
) -> None:
    from sparring.services.runs import RunService
    from sparring.services.settings import ServiceSettings

    cfg = recovery_config(tmp_path, models, pool_path, trainer_restarts=1)
    run_id, run_dir = new_run(cfg, redis_client, tmp_path, "trainer")
    store = RunStore(redis_client)
    first = controller(cfg, run_id, redis_url, run_dir)
    killer = kill_trainer_while_training(first, store, run_id, [1, 2])
    with pytest.raises(RuntimeError, match="trainer_restarts=1 is spent"):
        first.run()
    killer.join(timeout=5)

    # iteration 1: killed, restarted from version 0, re-trained and recorded with the restart
    (rec1,) = store.iterations(run_id)
    assert rec1.metrics["trainer/restarts"] == 1 and rec1.metrics["trainer/recovery_s"] > 0
    kinds = [(kind, d.get("iteration")) for _, kind, d in store.events(run_id) if kind.startswith("trainer_")]
    assert kinds == [("trainer_died", 1), ("trainer_restarted", 1), ("trainer_died", 2)]
    # iteration 2: killed again, past the budget: failed with the reason, resumable from iteration 1's checkpoint
    run = store.get_run(run_id)
    assert run["state"] == "failed"
    assert run["reason"].startswith("TrainerLost: the trainer died during train of iteration 2 (WorkerDied: ")
    assert "resilience.trainer_restarts=1 is spent" in run["reason"]
    service = RunService(ServiceSettings(data_dir=tmp_path / "service"), redis_client, redis_url)
    assert service.resume_problems(run_id) == []

    records = resume_to_completion(cfg, run_id, run_dir, redis_url, redis_client)
    assert records[1].metrics["trainer/restarts"] == 0
    assert_same_as_reference(reference, redis_client, run_id)

    # retention (keep_last 2 by default) kept both checkpoints whole; the staging copies went with the run
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["v1", "v2"]
    assert not (run_dir / "staging").exists()
