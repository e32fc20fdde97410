"""Hangs and memory (issue 14 items 4 and 6) on the in-process controller (`LocalRuntime`, real Redis, the tiny
models of test_controller_local.py):

- a generator stuck forever on one prompt stops beating; after `resilience.heartbeat_timeout_s` its stacks go
  to the run's log and a `worker_hung` event, it is killed and replaced, the prompt is redelivered and, stuck
  every time, dead-lettered after `max_deliveries`; the run completes with the rest;
- a trainer stuck in `train` past `resilience.stage_timeout_s.train` is killed and restarted from the last
  checkpoint (a trainer restart, within `trainer_restarts`); the run completes;
- every record carries the `memory/*` metrics; a worker whose RSS grows at each of the last N iterations
  raises a `memory_growth` event;
- the heartbeat watch's clock and the stage-timeout config forms.

The Ray path (SIGUSR1 stack dumps of a real actor process) is tests/chaos/test_hang.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sparring.shared.config import ConfigError, StageTimeouts, parse_config
from sparring.shared.events import beat
from sparring.shared.queue import StreamQueue
from sparring.shared.store import RunStore
from sparring.workers.health import HeartbeatWatch
from tests.unit.test_controller_local import controller, models  # noqa: F401 - `models` is a fixture
from tests.unit.test_controller_recovery import new_run, pool_path, recovery_config  # noqa: F401 - `pool_path` is a fixture


def stuck_generator(prompt_id: str) -> type:
    """GeneratorWorker that blocks in `stuck_on_the_prompt` (no beats) whenever `prompt_id` is in its batch,
    until it is stopped (killed)."""
    from sparring.workers.actors import GeneratorWorker

    class StuckGenerator(GeneratorWorker):
        def _process(self, entries: list[Any]) -> None:
            if any(e.record.prompt_id == prompt_id for e in entries):
                self.stuck_on_the_prompt()
                return
            super()._process(entries)

        def stuck_on_the_prompt(self) -> None:
            self._stopped.wait()

    return StuckGenerator


def test_a_stuck_generator_is_killed_its_stacks_logged_and_its_prompt_dead_lettered(
    models: dict[str, str], pool_path: str, tmp_path: Path, redis_url: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import sparring.workers.controller as controller_module
    from sparring.shared.prompts import iteration_prompt_indices, run_prompts

    cfg = recovery_config(tmp_path, models, pool_path, heartbeat_timeout_s=2.0, max_deliveries=3)
    cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"iterations": 1})})
    pool = run_prompts(cfg).train
    stuck = pool[int(iteration_prompt_indices(len(pool), cfg, 1)[3])].prompt_id
    monkeypatch.setattr(controller_module, "GeneratorWorker", stuck_generator(stuck))
    run_id, run_dir = new_run(cfg, redis_client, tmp_path, "hang")
    t0 = time.monotonic()
    controller(cfg, run_id, redis_url, run_dir).run()
    store = RunStore(redis_client)
    assert store.get_run(run_id)["state"] == "completed"
    (record,) = store.iterations(run_id)
    assert (record.num_prompts, record.num_groups, record.num_dead) == (8, 7, 1)
    (letter,) = StreamQueue(redis_client, run_id).dead_letters()
    assert (letter.stage, letter.item_id, letter.attempts) == ("generate", f"{stuck}@v0", 3)
    hung = [d for _, kind, d in store.events(run_id) if kind == "worker_hung"]
    assert len(hung) == 3 and {d["consumer"] for d in hung} == {"gen-0"}  # once per delivery, none after
    assert all(d["reason"].startswith("no heartbeat for ") and "heartbeat_timeout_s=2" in d["reason"] for d in hung)
    assert all("stuck_on_the_prompt" in d["stacks"] for d in hung)  # the stuck thread's frame, by faulthandler
    log_text = (run_dir / "controller.log").read_text()
    assert log_text.count("gen-0 is stuck: no heartbeat") == 3 and "in stuck_on_the_prompt" in log_text
    assert record.metrics["workers/restarts"] == 3
    # each hang costs about the heartbeat timeout, not more
    assert time.monotonic() - t0 < 120
    # the memory metrics of item 4, on every record
    assert record.metrics["memory/rss_mb/gen-0"] > 50 and record.metrics["memory/rss_mb/trainer"] > 50
    assert record.metrics["memory/rss_mb/controller"] > 50 and record.metrics["memory/redis_used_mb"] > 0
    assert "memory/object_store_mb" not in record.metrics  # no object store in one process


def stuck_trainer() -> type:
    """TrainerWorker whose first `train` call blocks (no return) until it is stopped (killed)."""
    from sparring.workers.actors import TrainerWorker

    class StuckTrainer(TrainerWorker):
        calls = 0

        def stop(self) -> None:  # LocalRuntime.kill calls it
            if hasattr(self, "released"):
                self.released.set()

        def train(self, iteration: int, version: int) -> dict[str, Any]:
            type(self).calls += 1
            if type(self).calls == 1:
                self.released = threading.Event()
                self.released.wait()
                raise RuntimeError("killed while stuck")
            return super().train(iteration, version)

    return StuckTrainer


def test_a_trainer_stuck_past_the_train_deadline_is_restarted_within_its_budget(
    models: dict[str, str], pool_path: str, tmp_path: Path, redis_url: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import sparring.workers.controller as controller_module

    cfg = recovery_config(tmp_path, models, pool_path, trainer_restarts=1,
                           stage_timeout_s=StageTimeouts(generate=600, train=8, sync=600, eval=600))  # fmt: skip
    cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"iterations": 1})})
    monkeypatch.setattr(controller_module, "TrainerWorker", stuck_trainer())
    run_id, run_dir = new_run(cfg, redis_client, tmp_path, "stuck-trainer")
    controller(cfg, run_id, redis_url, run_dir).run()
    store = RunStore(redis_client)
    assert store.get_run(run_id)["state"] == "completed"
    (record,) = store.iterations(run_id)
    assert record.metrics["trainer/restarts"] == 1 and record.num_pairs > 0
    events = [(kind, d) for _, kind, d in store.events(run_id) if kind in ("worker_hung", "trainer_died", "trainer_restarted")]
    assert [kind for kind, _ in events] == ["worker_hung", "trainer_died", "trainer_restarted"]
    hung = events[0][1]
    assert hung["role"] == "trainer" and "train ran past its deadline of 8 s" in hung["reason"]
    assert "in train" in hung["stacks"]
    assert "WorkerHung" in events[1][1]["reason"]


def test_memory_growth_warns_after_n_growing_iterations_of_one_process(
    tmp_path: Path, redis_url: str, redis_client: Any, models: dict[str, str], pool_path: str  # noqa: F811
) -> None:
    from sparring.workers.controller import RunController
    from sparring.workers.groups import LocalRuntime, Resources, WorkerGroup

    cfg = recovery_config(tmp_path, models, pool_path, memory_growth_mb=30.0, memory_growth_iterations=3)
    run_id, run_dir = new_run(cfg, redis_client, tmp_path, "memory")
    ctrl = RunController(run_id, cfg.model_dump_json(), redis_url, str(run_dir), runtime=LocalRuntime())
    group = WorkerGroup("generators", object, ctrl.runtime, lambda c: (), Resources(), run_id)
    group.workers["gen-0"] = object()
    ctrl.groups["generators"] = group

    def iteration(pid: int, rss: float) -> dict[str, float]:
        beat(redis_client, run_id, "gen-0", seq=time.monotonic_ns(), pid=pid, rss_mb=rss)
        return ctrl.memory_metrics()

    def warnings() -> list[dict[str, Any]]:
        return [d for _, kind, d in RunStore(redis_client).events(run_id) if kind == "memory_growth"]

    # grows 3 times but by 25 MB in all: below the threshold; then flat; then a new process starts over
    for rss in (100, 110, 120, 125, 125):
        assert iteration(7, rss)["memory/rss_mb/gen-0"] == rss
    for rss in (300, 310, 320):  # a replacement (new pid) at a higher RSS is not growth; 3 points only
        iteration(8, rss)
    assert warnings() == []
    metrics = iteration(8, 340)  # 300 -> 340 over 3 growing iterations
    (warning,) = warnings()
    assert warning["consumer"] == "gen-0" and warning["rss_mb"] == [300, 310, 320, 340] and warning["growth_mb"] == 40
    assert metrics["memory/rss_mb/controller"] > 0 and metrics["memory/redis_used_mb"] > 0


def test_heartbeat_watch_counts_quiet_time_by_its_own_clock() -> None:
    beats: dict[str, dict[str, Any]] = {}
    watch = HeartbeatWatch(lambda: dict(beats), refresh_s=0.0)
    t0 = time.monotonic()
    assert watch.quiet_s("gen-0", t0) == 0.0  # never beat: starting, not stuck
    beats["gen-0"] = {"pid": 1, "seq": 1, "ts": 0.0}  # the writer's wall clock is never compared
    time.sleep(0.2)
    assert 0.0 <= watch.quiet_s("gen-0", t0) < 0.1
    time.sleep(0.3)
    assert 0.25 < watch.quiet_s("gen-0", t0) < 1.0  # no new beat
    assert watch.quiet_s("gen-0", time.monotonic()) < 0.05  # a call made just now owes no beats yet
    beats["gen-0"] = {"pid": 1, "seq": 2, "ts": 0.0}
    assert watch.quiet_s("gen-0", t0) < 0.05
    watch.reset("gen-0")  # replaced: the predecessor's last beat does not count
    time.sleep(0.2)
    assert watch.quiet_s("gen-0", t0) == 0.0
    beats["gen-0"] = {"pid": 2, "seq": 1, "ts": 0.0}  # the new worker's first beat: watched from when it is read
    assert watch.quiet_s("gen-0", t0) < 0.05
    time.sleep(0.2)
    assert 0.15 < watch.quiet_s("gen-0", t0) < 1.0


def test_stage_timeouts_take_one_value_a_mapping_or_a_default_with_overrides() -> None:
    def timeouts(value: Any) -> dict[str, float]:
        cfg = parse_config({"name": "t", "policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"},
                            "prompts": {"source": "arena"}, "resilience": {"stage_timeout_s": value}})  # fmt: skip
        return cfg.resilience.stage_timeout_s.model_dump()

    assert timeouts(30) == {"generate": 30, "train": 30, "sync": 30, "eval": 30}
    assert timeouts({"default": 60, "train": 900}) == {"generate": 60, "train": 900, "sync": 60, "eval": 60}
    assert timeouts({"sync": 5})["sync"] == 5 and timeouts({"sync": 5})["train"] == 7200
    with pytest.raises(ConfigError, match="gen"):
        timeouts({"gen": 5})
    with pytest.raises(ConfigError):
        timeouts(0)


def stuck_evaluator() -> type:
    """EvalWorker whose first `evaluate` call blocks (no return) until it is stopped (killed)."""
    from sparring.workers.actors import EvalWorker

    class StuckEvaluator(EvalWorker):
        calls = 0

        def stop(self) -> None:  # LocalRuntime.kill calls it
            if hasattr(self, "released"):
                self.released.set()

        def evaluate(self, *args: Any) -> dict[str, float]:
            type(self).calls += 1
            if type(self).calls == 1:
                self.released = threading.Event()
                self.stuck_evaluating()
                raise RuntimeError("killed while stuck")
            return super().evaluate(*args)

        def stuck_evaluating(self) -> None:
            self.released.wait()

    return StuckEvaluator


def test_the_evaluator_beats_and_is_replaced_with_its_stacks_when_stuck_past_the_eval_deadline(
    models: dict[str, str], pool_path: str, tmp_path: Path, redis_url: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import sparring.workers.controller as controller_module
    from sparring.shared.events import heartbeats
    from sparring.workers.health import stack_dir, stack_file

    cfg = recovery_config(tmp_path, models, pool_path, stage_timeout_s=StageTimeouts(generate=600, train=600, sync=600, eval=15))
    cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"iterations": 1}),
                                 "eval": cfg.eval.model_copy(update={"enabled": True, "num_prompts": 4})})  # fmt: skip
    monkeypatch.setattr(controller_module, "EvalWorker", stuck_evaluator())
    run_id, run_dir = new_run(cfg, redis_client, tmp_path, "stuck-eval")
    controller(cfg, run_id, redis_url, run_dir).run()
    store = RunStore(redis_client)
    assert store.get_run(run_id)["state"] == "completed"
    (record,) = store.iterations(run_id)
    (hung,) = [d for _, kind, d in store.events(run_id) if kind == "worker_hung"]
    assert (hung["role"], hung["consumer"]) == ("evaluator", "eval")
    assert "evaluate ran past its deadline of 15 s" in hung["reason"] and "in stuck_evaluating" in hung["stacks"]
    # the evaluator's heartbeat: its pid and stack file in the run's heartbeats hash, its RSS in the record
    beat_ = heartbeats(redis_client, run_id)["eval"]
    assert beat_["pid"] > 0 and beat_["stacks"] == str(stack_file(run_id, "eval", beat_["pid"]))
    assert record.metrics["memory/rss_mb/eval"] > 50
    assert not stack_dir(run_id).exists()  # the run's stack files go when it ends


def test_other_runs_stack_dirs_older_than_the_retention_are_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tempfile

    from sparring.workers.health import STACK_RETENTION_S, prune_stack_dirs, stack_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old, recent, mine = stack_dir("old-run"), stack_dir("recent-run"), stack_dir("my:run")
    for path in (old, recent, mine):
        path.mkdir(parents=True)
        (path / "gen-0-1.txt").write_text("")
    stale = time.time() - STACK_RETENTION_S - 60
    os.utime(old, (stale, stale))
    os.utime(mine, (stale, stale))  # the caller's own run is never pruned, whatever its age
    assert prune_stack_dirs(keep="my:run") == [old]
    assert not old.exists() and recent.exists() and mine.exists()
