"""Chaos: the trainer actor SIGKILLed by PID while it trains (real local Ray, real Redis, the arena policy).

- `test_trainer_sigkilled_mid_training_restarts`: the run completes every iteration, the restart is in the
  interrupted iteration's record and events, 0 prompts lost, 0 pairs lost or trained twice;
- `test_trainer_killed_past_the_budget_fails_then_resumes`: with `resilience.trainer_restarts: 0` the run fails
  with the reason; the failed run is resumable (its last checkpoint is intact) and a new controller finishes it
  with the same accounting.

Each repetition prints one row of the chaos table (docs/reliability.md):
`failure | runs | completed | lost prompts | duplicate pairs | recovery seconds`. The default test run makes 1
repetition; `make chaos` sets CHAOS_REPETITIONS=3.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sparring.shared import history
from sparring.shared.config import RunConfig
from sparring.shared.queue import StreamQueue
from sparring.shared.records import PreferencePair
from sparring.shared.store import RunStore
from sparring.workers.actors import TRAINER_GROUP
from tests.helpers import EventWatch, chaos_run_config

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

REPETITIONS = int(os.environ.get("CHAOS_REPETITIONS", "1"))
ITERATIONS = 2
KILL_ITERATION = 2


def chaos_config(tmp_path: Path, **resilience: Any) -> RunConfig:
    return chaos_run_config(
        tmp_path, "chaos", 24, generation={"prompts_per_request": 16},
        # several optimizer steps per iteration, so the kill lands while the trainer trains
        trainer={"epochs": 3, "batch_size": 4}, schedule={"iterations": ITERATIONS},
        resilience={"restart_backoff_s": 1.0, **resilience},
    )  # fmt: skip


def start(ray: Any, cfg: RunConfig, redis_client: Any, redis_url: str, model: str, tmp_path: Path, run_id: str | None = None) -> tuple[str, Any]:
    from sparring.workers.controller import RunController

    if run_id is None:
        run_id = f"chaos-{time.time_ns()}"
        (tmp_path / run_id).mkdir()
        RunStore(redis_client).create_run(run_id, cfg.model_dump(mode="json"), str(tmp_path / run_id))
    controller = ray.remote(RunController).options(num_cpus=0).remote(
        run_id, cfg.model_dump_json(), redis_url, str(tmp_path / run_id), model
    )
    return run_id, controller.run.remote()


def kill_trainer_mid_training(ray: Any, store: RunStore, run_id: str, iteration: int) -> dict[str, float]:
    """Wait for `iteration`'s training to report its first optimizer step, then SIGKILL the trainer actor's
    process (its PID from `info`, asked while it idles after the previous iteration). Returns the kill time."""
    out: dict[str, float] = {}

    def trainer_handle() -> Any:
        names = [n["name"] if isinstance(n, dict) else n for n in ray.util.list_named_actors(all_namespaces=False)]
        return ray.get_actor(next(n for n in names if n.startswith(f"{run_id}:trainer:")))

    pid: list[int] = []

    def on_event(kind: str, data: dict[str, Any]) -> bool:
        if kind == "iteration_done" and data["iteration"] == iteration - 1:
            pid[:] = [ray.get(trainer_handle().info.remote())["pid"]]  # idle between iterations
        elif (pid and kind == "progress" and data.get("stage") == "train"
              and data.get("iteration") == iteration and str(data.get("message", "")).startswith("step")):  # fmt: skip
            os.kill(pid[0], signal.SIGKILL)
            out["killed_at"] = time.time()
            return True
        return False

    out["thread"] = EventWatch(store, run_id).in_thread(on_event, 600)  # type: ignore[assignment]
    return out


def accounting(redis_client: Any, run_id: str) -> dict[str, int]:
    """Lost prompts (dispatched without a group), duplicate pairs (a pair id written or trained twice) and
    unacknowledged pairs, from the records and the run's pairs (those the retention archived, then the stream)."""
    store = RunStore(redis_client)
    records = store.iterations(run_id)
    queue = StreamQueue(redis_client, run_id)
    pairs = queue.read_all("pairs", PreferencePair, archive=Path(store.get_run(run_id)["run_dir"]) / history.PAIRS_FILE)
    ids = Counter(p.record_id for _, p in pairs)
    by_iteration = Counter(p.iteration for _, p in pairs)
    trained_twice = sum(max(r.num_pairs - by_iteration[r.iteration], 0) for r in records)
    return {
        "iterations": len(records),
        "lost_prompts": sum(r.num_prompts - r.num_groups for r in records),
        "duplicate_pairs": sum(n - 1 for n in ids.values()) + trained_twice,
        "untrained_pairs": sum(max(by_iteration[r.iteration] - r.num_pairs, 0) for r in records),
        "unacked_pairs": queue.pending_count("pairs", TRAINER_GROUP),
    }


def row(failure: str, runs: int, completed: int, lost: int, duplicates: int, recovery: list[float]) -> str:
    rec = f"{min(recovery):.1f}-{max(recovery):.1f}" if recovery else "-"
    return f"| {failure} | {runs} | {completed} | {lost} | {duplicates} | {rec} |"


def test_trainer_sigkilled_mid_training_restarts(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, tmp_path: Path
) -> None:
    store = RunStore(redis_client)
    completed = lost = duplicates = 0
    recovery: list[float] = []
    for _ in range(REPETITIONS):
        cfg = chaos_config(tmp_path)
        run_id, done = start(ray_local, cfg, redis_client, redis_url, arena_model, tmp_path)
        kill = kill_trainer_mid_training(ray_local, store, run_id, KILL_ITERATION)
        summary = ray_local.get(done, timeout=900)
        kill["thread"].join(timeout=5)  # type: ignore[attr-defined]
        assert "killed_at" in kill, "the trainer was never killed"
        assert "interrupted" not in summary and store.get_run(run_id)["state"] == "completed"
        records = store.iterations(run_id)
        assert [r.iteration for r in records] == list(range(1, ITERATIONS + 1))
        assert [r.metrics["trainer/restarts"] for r in records] == [1.0 if r.iteration == KILL_ITERATION else 0.0 for r in records]
        restarted = [d for _, kind, d in store.events(run_id) if kind == "trainer_restarted"]
        died = [d for _, kind, d in store.events(run_id) if kind == "trainer_died"]
        assert len(restarted) == len(died) == 1 and died[0]["during"] == f"train of iteration {KILL_ITERATION}"
        counts = accounting(redis_client, run_id)
        assert counts == {"iterations": ITERATIONS, "lost_prompts": 0, "duplicate_pairs": 0, "untrained_pairs": 0, "unacked_pairs": 0}
        completed += 1
        lost += counts["lost_prompts"]
        duplicates += counts["duplicate_pairs"]
        recovery.append(restarted[0]["ts"] - kill["killed_at"])
    print("\n" + row("trainer SIGKILL mid-training (restart)", REPETITIONS, completed, lost, duplicates, recovery))  # noqa: T201


def test_trainer_killed_past_the_budget_fails_then_resumes(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, tmp_path: Path
) -> None:
    from sparring.services.runs import RunService
    from sparring.services.settings import ServiceSettings

    store = RunStore(redis_client)
    service = RunService(ServiceSettings(data_dir=tmp_path / "service"), redis_client, redis_url)
    completed = lost = duplicates = 0
    recovery: list[float] = []
    for _ in range(REPETITIONS):
        cfg = chaos_config(tmp_path, trainer_restarts=0)
        run_id, done = start(ray_local, cfg, redis_client, redis_url, arena_model, tmp_path)
        kill = kill_trainer_mid_training(ray_local, store, run_id, KILL_ITERATION)
        with pytest.raises(Exception, match="trainer_restarts=0 is spent"):
            ray_local.get(done, timeout=900)
        kill["thread"].join(timeout=5)  # type: ignore[attr-defined]
        run = store.get_run(run_id)
        assert run["state"] == "failed" and run["reason"].startswith(
            f"TrainerLost: the trainer died during train of iteration {KILL_ITERATION} ("
        )
        assert [r.iteration for r in store.iterations(run_id)] == list(range(1, KILL_ITERATION))
        assert service.resume_problems(run_id) == []

        store.transition(run_id, ("failed",), "created", reason="resumed by the chaos test")  # as POST .../resume
        _, done = start(ray_local, cfg, redis_client, redis_url, arena_model, tmp_path, run_id=run_id)
        ray_local.get(done, timeout=900)
        assert store.get_run(run_id)["state"] == "completed"
        records = store.iterations(run_id)
        assert [r.iteration for r in records] == list(range(1, ITERATIONS + 1))
        resumed = records[KILL_ITERATION - 1]
        assert resumed.num_groups == resumed.num_prompts == 24 and resumed.stage_seconds["generate_judge"] > 0
        counts = accounting(redis_client, run_id)
        assert counts == {"iterations": ITERATIONS, "lost_prompts": 0, "duplicate_pairs": 0, "untrained_pairs": 0, "unacked_pairs": 0}
        completed += 1
        lost += counts["lost_prompts"]
        duplicates += counts["duplicate_pairs"]
        recovery.append(resumed.finished_at - kill["killed_at"])
    print("\n" + row("trainer SIGKILL past the budget (failed, resumed)", REPETITIONS, completed, lost, duplicates, recovery))  # noqa: T201
