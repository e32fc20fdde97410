"""The run controller: one per run, drives iterations in sync mode.

    iteration t, policy version v (= t - 1):
      1. dispatch   draw prompts            -> stream prompts      (one PromptTask per prompt, version v)
      2. generate   GeneratorWorker pool    -> stream generations  (K samples per prompt, all from version v)
      3. judge      JudgeWorker pool        -> stream pairs        (judge + recipe)
      4. train      TrainerWorker           -> checkpoint v+1      (reference log-probs, objective, optimizer)
      5. sync       one WeightUpdate message per generator         (every engine now serves v+1)
      6. evaluate   gold win rate of v+1 against version 0 (arena)
      7. record     IterationRecord -> Redis, event -> run:{id}:events

Stages 2 and 3 run concurrently. A generator or judge actor that dies is replaced by a new actor with the
same consumer name, started on the current weights; it resumes the dead actor's pending entries first, so
every prompt of the iteration yields its group exactly once. Ray and Redis plumbing live here; the math
lives in the workers' modules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from sparring.shared.config import RunConfig
from sparring.shared.events import emit
from sparring.shared.prompts import load_run_prompts
from sparring.shared.queue import StreamQueue
from sparring.shared.records import IterationRecord, PromptTask, WinRate
from sparring.shared.redis_server import connect
from sparring.shared.store import RunStore
from sparring.workers.actors import (
    GENERATORS_GROUP,
    JUDGES_GROUP,
    TRAINER_GROUP,
    GeneratorWorker,
    JudgeWorker,
    TrainerWorker,
    VersionMismatch,
)

log = logging.getLogger(__name__)

WORKER_ENV = {
    # vLLM is chatty at INFO; its warnings still reach the worker logs.
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def derive_seed(*parts: object) -> int:
    """A 31-bit seed that depends only on `parts` (never on which engine serves the request)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# Judge-pool counters that add up across drains; rates are recomputed from them, maxima take the max.
_JUDGE_COUNTERS = (
    "calls", "groups", "call_seconds", "timeouts", "failed_groups", "isolation_retries", "cache_hits",
    "cache_misses", "flip_pairs", "pairs_filtered", "uncertainty_pairs", "uncertainty_dropped", "uncertainty_disagreed",
)  # fmt: skip


def combine_judge_metrics(drains: list[dict[str, float]]) -> dict[str, float]:
    """The `judge/*` metrics of one iteration from every judge drain call of it."""
    out: dict[str, float] = {}
    for name in _JUDGE_COUNTERS:
        values = [d[f"judge/{name}"] for d in drains if f"judge/{name}" in d]
        if values:
            out[f"judge/{name}"] = float(sum(values))
    maxima = [d["judge/latency_s_max"] for d in drains if "judge/latency_s_max" in d]
    if maxima:
        out["judge/latency_s_max"] = max(maxima)
    if out.get("judge/calls"):
        out["judge/latency_s_mean"] = out["judge/call_seconds"] / out["judge/calls"]
    looked_up = out.get("judge/cache_hits", 0.0) + out.get("judge/cache_misses", 0.0)
    if looked_up:
        out["judge/cache_hit_rate"] = out["judge/cache_hits"] / looked_up
    flips = [(d["judge/flip_pairs"], d["judge/flip_consistency"]) for d in drains if d.get("judge/flip_pairs")]
    if flips:
        out["judge/flip_consistency"] = sum(n * c for n, c in flips) / sum(n for n, _ in flips)
    for name in ("bald_mean", "weight_mean"):
        weighted = [(d.get("judge/uncertainty_pairs", 0.0), d[f"judge/uncertainty_{name}"]) for d in drains if f"judge/uncertainty_{name}" in d]
        if weighted and sum(n for n, _ in weighted):
            out[f"judge/uncertainty_{name}"] = sum(n * v for n, v in weighted) / sum(n for n, _ in weighted)
    return out


class RunController:
    """Drives one run from version 0 through `schedule.iterations` iterations."""

    def __init__(
        self, run_id: str, config_json: str, redis_url: str, run_dir: str, model_path: str | None = None
    ) -> None:
        self.run_id = run_id
        self.config_json = config_json
        self.cfg = RunConfig.model_validate_json(config_json)
        self.redis_url = redis_url
        self.run_dir = Path(run_dir)
        self.base_model_path = model_path  # None: resolved from `policy.path` when the run starts
        self.client = connect(redis_url)
        self.queue = StreamQueue(self.client, run_id, self.cfg.storage.stream_maxlen)
        self.store = RunStore(self.client)
        self.version = 0
        self.checkpoint = model_path or ""  # weights of `self.version`
        self.generators: dict[str, Any] = {}
        self.judges: dict[str, Any] = {}
        self.trainer: Any = None
        self.incarnation = 0
        self.baseline: list[str] | None = None
        self.eval_prompts: list[Any] = []
        self.restarts = 0
        self.epoch = 0  # how many controllers this run has had (names of this one's workers include it)
        self.queue_peaks: dict[str, int] = {}
        self._thread: Any = None

    # ---------------------------------------------------------------------------------------- workers

    def _actor_name(self, role: str) -> str:
        """A fresh Ray actor name `{run_id}:{role}:{n}`: operators (and the fault test) find a run's workers
        with `ray.util.list_named_actors()`; a replacement never collides with its dead predecessor."""
        self.incarnation += 1
        return f"{self.run_id}:{role}:{self.epoch}.{self.incarnation}"

    def _spawn_generator(self, consumer: str) -> Any:
        import ray

        g = self.cfg.generation
        actor = (
            ray.remote(GeneratorWorker)
            .options(
                name=self._actor_name(consumer),
                num_cpus=g.cpus_per_generator,
                max_restarts=0,
                runtime_env={"env_vars": WORKER_ENV},
            )
            .remote(
                self.run_id,
                self.redis_url,
                self.config_json,
                self.checkpoint,
                self.version,
                consumer,
                str(self.run_dir / "staging" / consumer),
            )
        )
        self.generators[consumer] = actor
        return actor

    def _spawn_judge(self, consumer: str) -> Any:
        import ray

        actor = (
            ray.remote(JudgeWorker)
            .options(name=self._actor_name(consumer), num_cpus=0.25, max_restarts=0, runtime_env={"env_vars": WORKER_ENV})
            .remote(self.run_id, self.redis_url, self.config_json, consumer)
        )
        self.judges[consumer] = actor
        if self.version > 0:  # a judge that follows the policy starts on the current weights, not version 0
            from sparring.workers.weight_sync import safetensors_dir_update

            update = safetensors_dir_update(self.checkpoint, self.version, verify=False)
            ray.get(actor.load_weights.remote(update, self._judge_staging(consumer)))
        return actor

    def start_workers(self) -> None:
        import ray

        for stage, group in (("prompts", GENERATORS_GROUP), ("generations", JUDGES_GROUP), ("pairs", TRAINER_GROUP)):
            self.queue.ensure_group(stage, group)
        self._emit("progress", stage="startup", message=f"starting {self.cfg.generation.num_generators} generator(s)")
        t0 = time.perf_counter()
        for i in range(self.cfg.generation.num_generators):
            self._spawn_generator(f"gen-{i}")
        for i in range(self.cfg.judge.num_judges):
            self._spawn_judge(f"judge-{i}")
        self.trainer = (
            ray.remote(TrainerWorker)
            .options(
                name=self._actor_name("trainer"),
                num_cpus=self.cfg.trainer.cpus,
                max_restarts=0,
                runtime_env={"env_vars": WORKER_ENV},
            )
            .remote(self.run_id, self.redis_url, self.config_json, self.base_model_path, str(self.run_dir))
        )
        ray.get([a.info.remote() for a in self.generators.values()])
        if self.version > 0:  # a resumed run: the trainer continues from the last recorded checkpoint
            ray.get(self.trainer.restore.remote(self.checkpoint))
        ray.get(self.trainer.__ray_ready__.remote())
        self._emit("progress", stage="startup", message=f"workers ready in {time.perf_counter() - t0:.1f}s")

    def stop_workers(self) -> None:
        import ray

        for actor in list(self.generators.values()) + list(self.judges.values()) + [self.trainer]:
            if actor is not None:
                try:
                    ray.kill(actor)
                except Exception:  # already dead is fine
                    pass

    # ---------------------------------------------------------------------------------------- the loop

    def run(self, keep_workers: bool = False) -> dict[str, Any]:
        """Run every iteration not yet recorded; workers are stopped at the end unless `keep_workers` (then
        call `shutdown`).

        A run that already has recorded iterations (resumed after a pause, a crash or a service restart)
        continues from its last recorded iteration: version, checkpoint, trainer state and the iteration-0
        evaluation samples all come back from Redis and the checkpoint directory. Between iterations the
        controller honours a pending pause/stop request (`RunStore.request_control`): it stops its workers
        and leaves the run `paused` / `stopped`; the returned summary then has `"interrupted": <state>`.
        """
        self.epoch = int(self.client.incr(f"run:{self.run_id}:epoch"))
        if self.store.get_run(self.run_id)["state"] == "created":  # the service moves it to running itself
            self.store.set_state(self.run_id, "running")
        try:
            self.resolve_model()
            first = self.restore()
            self.start_workers()
            self.evaluate_baseline()
            for t in range(first, self.cfg.schedule.iterations + 1):
                if (action := self.store.control(self.run_id)) is not None:
                    return self._interrupt(action, t)
                self.run_iteration(t)
            summary = self.write_summary()
            self.store.set_state(self.run_id, "completed")
            self.store.clear_control(self.run_id)
            self._emit("completed", summary=str(self.run_dir / "summary.json"))
            return summary
        except BaseException as err:
            self.store.set_state(self.run_id, "failed", reason=f"{type(err).__name__}: {err}")
            self._emit("failed", reason=f"{type(err).__name__}: {err}")
            self.stop_workers()
            raise
        finally:
            if not keep_workers:
                self.stop_workers()

    def start(self) -> str:
        """Service mode: run in a background thread of this (detached) actor and return at once; the actor
        exits when the run completes, fails, pauses or stops. Nothing waits on the caller, so the API
        process that started the run can restart freely."""
        import threading

        def body() -> None:
            import ray

            try:
                self.run()
            except BaseException:  # already recorded as `failed` with the reason
                log.exception("run %s failed", self.run_id)
            finally:
                ray.kill(ray.get_runtime_context().current_actor)

        self._thread = threading.Thread(target=body, name=f"controller-{self.run_id}", daemon=True)
        self._thread.start()
        return self.run_id

    def alive(self) -> dict[str, Any]:
        """A cheap liveness probe for the service: the run and the version the policy is at."""
        return {"run_id": self.run_id, "version": self.version, "epoch": self.epoch}

    def resolve_model(self) -> None:
        if self.base_model_path is None:
            from sparring.shared.models import resolve_policy_path

            def progress(message: str) -> None:
                self._emit("progress", stage="startup", message=message)

            self.base_model_path = resolve_policy_path(self.cfg.policy.path, self.cfg.seed, progress)
            self.checkpoint = self.checkpoint or self.base_model_path

    def restore(self) -> int:
        """Pick up after the last recorded iteration (0 = a fresh run); returns the next iteration to run."""
        records = self.store.iterations(self.run_id)
        if not records:
            self.checkpoint = self.base_model_path or self.checkpoint
            return 1
        last = records[-1]
        self.version, self.checkpoint = last.policy_version_out, last.checkpoint
        self._emit("progress", stage="startup", message=f"resuming after iteration {last.iteration} (policy version {self.version})")
        return last.iteration + 1

    def _interrupt(self, action: str, next_iteration: int) -> dict[str, Any]:
        state = "stopped" if action == "stop" else "paused"
        self.stop_workers()
        summary = self.write_summary()
        summary["interrupted"] = state
        self.store.clear_control(self.run_id)
        self.store.set_state(self.run_id, state, reason=f"before iteration {next_iteration}")
        self._emit(state, next_iteration=next_iteration)
        return summary

    def engine_greedy(self, prompts: list[str], max_new_tokens: int) -> dict[str, Any]:
        """Greedy completion token ids from every generator, with the version each engine holds."""
        import ray

        refs = {c: (a.greedy.remote(prompts, max_new_tokens), a.info.remote()) for c, a in self.generators.items()}
        return {c: {"tokens": ray.get(g), "version": ray.get(i)["version"]} for c, (g, i) in refs.items()}

    def shutdown(self) -> None:
        self.stop_workers()

    def run_iteration(self, t: int) -> IterationRecord:
        started = time.time()
        v = self.version
        seconds: dict[str, float] = {}
        self._emit("iteration_started", iteration=t, policy_version=v)

        t0 = time.perf_counter()
        dead_before = self.queue.written("dead")
        n_prompts = self.dispatch(t, v)
        gen_stats = self.generate_and_judge(t, n_prompts)
        seconds["generate_judge"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        out = self.train(t, v)
        seconds["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        sync_s = self.sync(out["update"], out["checkpoint"])
        seconds["sync"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        win = self.evaluate(t)
        seconds["eval"] = time.perf_counter() - t0

        metrics = dict(out["metrics"])
        metrics.update(
            {
                "gen/tokens": gen_stats["tokens"],
                "gen/tokens_per_s": gen_stats["tokens"] / max(gen_stats["gen_seconds"], 1e-9),
                "judge/seconds": gen_stats["judge_seconds"],
                "judge/latency_s": gen_stats["judge_seconds"] / max(gen_stats["groups"], 1.0),
                "pairs/per_s": out["num_pairs"] / max(seconds["generate_judge"], 1e-9),
                "staleness/max": float(out.get("max_staleness", 0)),
                "sync/max_engine_s": sync_s,
                "workers/restarts": float(self.restarts),
            }
        )
        metrics.update({f"queue/peak/{stage}": float(n) for stage, n in self.queue_peaks.items()})
        metrics.update(combine_judge_metrics(self.judge_drains))
        record = IterationRecord(
            run_id=self.run_id,
            iteration=t,
            policy_version_in=v,
            policy_version_out=self.version,
            num_prompts=n_prompts,
            num_groups=int(gen_stats["groups"]),
            num_pairs=out["num_pairs"],
            num_dead=self.queue.written("dead") - dead_before,
            metrics=metrics,
            stage_seconds=seconds,
            gold_win_rate_vs_iter0=win,
            checkpoint=out["checkpoint"],
            started_at=started,
            finished_at=time.time(),
        )
        self.store.put_iteration(record)
        self.commit()
        self._emit("iteration_done", iteration=t, record=record.model_dump(mode="json"))
        return record

    # ---------------------------------------------------------------------------------------- stages

    def dispatch(self, t: int, v: int) -> int:
        pool = load_run_prompts(self.cfg)
        n = min(self.cfg.schedule.prompts_per_iteration, len(pool))
        rng = np.random.default_rng([self.cfg.seed, t])
        chosen = rng.choice(len(pool), size=n, replace=False)
        guided = self.cfg.algorithm.pairs == "drift" and self.cfg.algorithm.drift_guided
        for i in chosen:
            item = pool[int(i)]
            self.queue.put(
                "prompts",
                PromptTask(
                    run_id=self.run_id,
                    iteration=t,
                    policy_version=v,
                    prompt_id=item.prompt_id,
                    prompt=item.prompt,
                    messages=item.messages,
                    generation_prompt=item.guided_prompt if guided else None,
                    anchor_text=item.anchor_text,
                    num_samples=self.cfg.generation.samples_per_prompt,
                    seed=derive_seed(self.cfg.seed, item.prompt_id, v),
                ),
            )
        return n


    def generate_and_judge(self, t: int, n_prompts: int) -> dict[str, float]:
        """Run generators and judges until every dispatched prompt is generated and judged.

        Workers drain their input stream and return when it is idle; one that returns while its stage
        still has open entries is relaunched, one that died is replaced (same consumer name).
        """
        import ray

        stats = {"tokens": 0.0, "gen_seconds": 0.0, "judge_seconds": 0.0}
        self.judge_drains: list[dict[str, float]] = []
        self.queue_peaks = {"prompts": 0, "generations": 0}
        groups_before, pairs_before = self.queue.written("generations"), self.queue.written("pairs")
        running: dict[Any, tuple[str, str]] = {}  # ObjectRef of a drain call -> (role, consumer)
        last_done = -1
        while True:
            gen_open = self.queue.outstanding("prompts", GENERATORS_GROUP)
            judge_open = self.queue.outstanding("generations", JUDGES_GROUP)
            self.queue_peaks["prompts"] = max(self.queue_peaks["prompts"], gen_open)
            self.queue_peaks["generations"] = max(self.queue_peaks["generations"], judge_open)
            if gen_open == 0 and judge_open == 0 and not running:
                # exact counts, whichever workers wrote them (a dead worker's own counters are lost)
                stats["groups"] = float(self.queue.written("generations") - groups_before)
                stats["pairs"] = float(self.queue.written("pairs") - pairs_before)
                return stats
            busy = set(running.values())
            for role, pool, has_work in (
                ("gen", self.generators, gen_open > 0),
                ("judge", self.judges, judge_open > 0 or gen_open > 0),
            ):
                for consumer, actor in pool.items():
                    if has_work and (role, consumer) not in busy:
                        running[actor.drain.remote()] = (role, consumer)
            if n_prompts - gen_open != last_done:
                last_done = n_prompts - gen_open
                self._emit("progress", stage="generate", iteration=t, done=last_done, total=n_prompts)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                role, consumer = running.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    log.warning("%s died (%s); replacing it", consumer, err)
                    self._emit("worker_died", consumer=consumer, iteration=t)
                    self.restarts += 1
                    (self._spawn_generator if role == "gen" else self._spawn_judge)(consumer)
                    continue
                except ray.exceptions.RayTaskError as err:
                    if role == "gen" and isinstance(err.cause, VersionMismatch):
                        log.warning("%s: %s; restarting it on version %d", consumer, err.cause, self.version)
                        self._replace_generator(consumer)
                        continue
                    raise
                if role == "gen":
                    stats["tokens"] += out["tokens"]
                    stats["gen_seconds"] += out["seconds"]
                else:
                    stats["judge_seconds"] += out["seconds"]
                    self.judge_drains.append({k: v for k, v in out.items() if k.startswith("judge/")})

    def _replace_generator(self, consumer: str) -> None:
        import ray

        try:
            ray.kill(self.generators[consumer])
        except Exception:
            pass
        self.restarts += 1
        actor = self._spawn_generator(consumer)
        ray.get(actor.info.remote())

    def train(self, t: int, v: int) -> dict[str, Any]:
        import ray

        self._emit("progress", stage="train", iteration=t, message="training")
        self.queue_peaks["pairs"] = self.queue.outstanding("pairs", TRAINER_GROUP)
        return ray.get(self.trainer.train.remote(t, v))

    def commit(self) -> None:
        """The iteration is on record: the trainer acknowledges the pairs it consumed."""
        import ray

        ray.get(self.trainer.commit.remote())

    def sync(self, update: Any, checkpoint: str) -> float:
        """Push `update` to every generator (one message each); one that fails is restarted on `checkpoint`."""
        import ray

        refs = {consumer: actor.load_weights.remote(update) for consumer, actor in self.generators.items()}
        # judges that judge with the policy (self-preference) follow it; the others return at once
        judge_refs = {c: a.load_weights.remote(update, self._judge_staging(c)) for c, a in self.judges.items()}
        self.version, self.checkpoint = update.version, checkpoint
        worst = 0.0
        for consumer, ref in refs.items():
            try:
                worst = max(worst, ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                log.warning("%s failed to load version %d (%s); restarting it on the new checkpoint", consumer, update.version, err)
                self._replace_generator(consumer)
        for consumer, ref in judge_refs.items():
            try:
                worst = max(worst, ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                log.warning("%s failed to load version %d (%s); restarting it on the new checkpoint", consumer, update.version, err)
                try:
                    ray.kill(self.judges[consumer])
                except Exception:
                    pass
                self.restarts += 1
                self._spawn_judge(consumer)
        return worst

    def _judge_staging(self, consumer: str) -> str:
        return str(self.run_dir / "staging" / consumer)

    # ---------------------------------------------------------------------------------------- evaluation

    def _eval_setup(self) -> None:
        from sparring.shared.arena import arena_prompts

        self.eval_prompts = arena_prompts("heldout")[: self.cfg.eval.num_prompts]

    def _sample_eval(self, version: int) -> list[str]:
        import ray

        gen = next(iter(self.generators.values()))
        prompts = [p.prompt for p in self.eval_prompts]
        seeds = [derive_seed(self.cfg.seed, "eval", p.prompt_id, version) for p in self.eval_prompts]
        return ray.get(gen.sample.remote(prompts, seeds))

    def evaluate_baseline(self) -> None:
        if not (self.cfg.eval.gold_win_rate and self.cfg.is_arena):
            return
        self._eval_setup()
        stored = self.store.get_value(self.run_id, "eval:baseline")
        if stored is not None:  # a resumed run compares against the same iteration-0 samples
            self.baseline = json.loads(stored)
            return
        self.baseline = self._sample_eval(0)
        self.store.set_value(self.run_id, "eval:baseline", json.dumps(self.baseline).encode())

    def evaluate(self, t: int) -> WinRate | None:
        if self.baseline is None:
            return None
        from sparring.shared.arena import gold_win_rate

        samples = self._sample_eval(self.version)
        return gold_win_rate([p.topic for p in self.eval_prompts], samples, self.baseline)

    # ---------------------------------------------------------------------------------------- output

    def write_summary(self) -> dict[str, Any]:
        records = self.store.iterations(self.run_id)
        summary = {
            "run_id": self.run_id,
            "config": json.loads(self.config_json),
            "final_checkpoint": self.checkpoint,
            "iterations": [
                {
                    "iteration": r.iteration,
                    "policy_version": r.policy_version_out,
                    "gold_win_rate_vs_iter0": r.gold_win_rate_vs_iter0.win_rate if r.gold_win_rate_vs_iter0 else None,
                    "gold_win_rate_ci95": [r.gold_win_rate_vs_iter0.ci_low, r.gold_win_rate_vs_iter0.ci_high]
                    if r.gold_win_rate_vs_iter0
                    else None,
                    "mean_gold": r.gold_win_rate_vs_iter0.mean_gold_b if r.gold_win_rate_vs_iter0 else None,
                    "mean_gold_iter0": r.gold_win_rate_vs_iter0.mean_gold_a if r.gold_win_rate_vs_iter0 else None,
                    "prompts": r.num_prompts,
                    "groups": r.num_groups,
                    "pairs": r.num_pairs,
                    "dead_letters": r.num_dead,
                    "loss": r.metrics.get("loss/mean"),
                    "reward_accuracy": r.metrics.get("rewards/accuracy"),
                    "reward_margin": r.metrics.get("rewards/margin"),
                    "stage_seconds": r.stage_seconds,
                    "checkpoint": r.checkpoint,
                }
                for r in records
            ],
        }
        path = self.run_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2))
        return summary

    def _emit(self, kind: str, **fields: Any) -> None:
        emit(self.client, self.run_id, kind, **fields)
