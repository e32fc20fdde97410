"""The run controller: one per run, drives iterations in sync mode.

    iteration t, policy version v (= t - 1):
      1. dispatch   draw prompts            -> stream prompts      (one PromptTask per prompt, version v)
      2. generate   GeneratorWorker group   -> stream generations  (K samples per prompt, all from version v)
      3. judge      JudgeWorker group       -> stream pairs        (judge + recipe)
      4. train      TrainerWorker           -> checkpoint v+1      (reference log-probs, objective, optimizer)
      5. sync       one WeightUpdate message per generator         (every engine now serves v+1)
                    (placement colocated: the engines sleep through stage 4 and wake around stage 5)
      6. evaluate   held-out samples of v+1 -> eval/* metrics      (workers/evaluation.py)
      7. record     IterationRecord -> Redis, event -> run:{id}:events

Stages 2 and 3 run concurrently. Spawning, fan-out, draining and replacing workers belong to the worker
groups (`workers/groups.py`): a generator or judge that dies is replaced by a new worker with the same
consumer name, started on the current weights; it resumes the dead one's pending entries first, so every
prompt of the iteration yields its group exactly once. Past `resilience.worker_respawns_per_iteration`
replacements in one iteration the run pauses with the reason (a crash loop is an operator's problem).
A trainer that dies is restarted (`resilience.trainer_restarts` times per controller, with exponential
back-off) from the checkpoint the controller holds and the interrupted call is made again: the pairs of an
iteration are acknowledged only after it is recorded, so a re-trained iteration reads the same pairs.
After each recorded iteration the checkpoint retention runs (`checkpoints.keep_last` / `keep_every`,
`workers/trainer_state.py::retain_checkpoints`); the engines' staging copies go when the run ends.
The controller runs on Ray (`launch_controller`) or, with a `LocalRuntime`, in-process without Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sparring.shared import history, jsonl, keys
from sparring.shared.config import UNPAIRED_OBJECTIVES, RunConfig
from sparring.shared.events import emit, heartbeats
from sparring.shared.prompts import PromptItem, RunPrompts, iteration_prompt_indices, run_prompts
from sparring.shared.queue import StreamQueue
from sparring.shared.records import Completion, IterationRecord, PromptTask
from sparring.shared.redis_server import connect
from sparring.shared.store import RunStore
from sparring.workers.actors import (
    GENERATORS_GROUP,
    JUDGES_GROUP,
    TRAINER_GROUP,
    EvalWorker,
    GeneratorWorker,
    JudgeWorker,
    TrainerWorker,
    resolve_lora_sync,
)
from sparring.workers.failures import failure_reason, format_failure
from sparring.workers.groups import (
    WORKER_ENV,
    PlacementError,
    RayRuntime,
    Resources,
    Runtime,
    StageTimeout,
    WaitingForCapacity,
    WorkerDied,
    WorkerGroup,
    drain_until_idle,
)
from sparring.workers.health import HeartbeatWatch, process_rss_mb, stack_dir
from sparring.workers.timing import timed
from sparring.workers.trackers import Trackers
from sparring.workers.trainer_state import retain_checkpoints

log = logging.getLogger(__name__)

STACK_EVENT_CHARS = 20_000  # a `worker_hung` event's stacks (the whole dump is in controller.log)


def derive_seed(*parts: object) -> int:
    """A 31-bit seed that depends only on `parts` (never on which engine serves the request)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# Judge-pool counters that add up across drains; rates are recomputed from them, maxima take the max.
_JUDGE_COUNTERS = (
    "calls", "groups", "call_seconds", "timeouts", "failed_groups", "isolation_retries", "cache_hits",
    "cache_misses", "flip_pairs", "pairs_filtered", "uncertainty_pairs", "uncertainty_dropped", "uncertainty_disagreed",
    "version_violations",
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


# Ray logical CPUs per worker of each role whose `resources.<role>.num_cpus` is None (the evaluator has no field)
GENERATOR_CPUS = 0.5
JUDGE_CPUS = 0.25
TRAINER_CPUS = 1.0
EVALUATOR_CPUS = 0.25


def role_resources(cfg: RunConfig) -> dict[str, Resources]:
    """What one worker of each role asks for (`resources:`; num_cpus None = the role's default:
    GENERATOR_CPUS, JUDGE_CPUS, TRAINER_CPUS per rank). The evaluator takes EVALUATOR_CPUS."""
    r = cfg.resources

    def of(role: Any, default_cpus: float) -> Resources:
        return Resources(
            num_cpus=role.num_cpus if role.num_cpus is not None else default_cpus,
            num_gpus=role.num_gpus,
            memory_bytes=role.memory_bytes,
            custom=tuple(sorted(role.custom.items())),
        )

    return {
        "generators": of(r.generators, GENERATOR_CPUS),
        "judges": of(r.judges, JUDGE_CPUS),
        "trainer": of(r.trainer, TRAINER_CPUS),
        "evaluator": Resources(num_cpus=EVALUATOR_CPUS),
    }


def role_counts(cfg: RunConfig) -> dict[str, int]:
    """Workers per role: generators, judges, trainer ranks, and the evaluator (when evaluation is on)."""
    return {
        "generators": cfg.generation.num_generators,
        "judges": cfg.judge.num_judges,
        "trainer": cfg.resources.trainer.num_ranks,
        "evaluator": int(cfg.eval.enabled),
    }


def sleep_level(cfg: RunConfig) -> int:
    """The vLLM sleep level of colocated engines while the trainer trains (`LLM.sleep`, vllm/entrypoints/llm.py).

    Level 2 ("discard all GPU memory (weights + KV cache) ... to update the model, where previous model weights
    are not needed") when every sync is a full one: the sync right after training overwrites every tensor, so
    level 1's copy of the weights to CPU memory and back would be wasted time and host memory. Level 1
    ("offload model weights to CPU, discard KV cache") with `storage.sync_delta`: a delta sync sends only the
    changed blocks, and the others must come back from the CPU copy. The KV cache is dropped either way."""
    return 1 if cfg.storage.sync_delta else 2


def check_placement(cfg: RunConfig, cluster: dict[str, float] | None) -> None:
    """Refuse, before any worker starts, what this cluster cannot hold: every role's workers x their
    resources summed per resource (CPU, GPU, memory, each custom resource) against `cluster`
    (`ray.cluster_resources()`; None = no scheduler, nothing to check). Raises `PlacementError` naming each
    shortfall with the numbers per role. (What colocated placement cannot share is refused by `RunConfig`.)"""
    if cluster is None:
        return
    per_role = role_resources(cfg)
    counts = role_counts(cfg)
    needed: dict[str, dict[str, float]] = {}  # resource -> role -> amount
    for role, res in per_role.items():
        for name, amount in res.bundle().items():
            if counts[role]:
                needed.setdefault(name, {})[role] = amount * counts[role]
    problems = []
    for name, by_role in sorted(needed.items()):
        total, have = sum(by_role.values()), cluster.get(name, 0.0)
        if total > have + 1e-9:
            unit = " bytes" if name == "memory" else ""
            parts = ", ".join(f"{role} {counts[role]} x {per_role[role].bundle()[name]:g}" for role in by_role)
            problems.append(f"{name}: the run needs {total:g}{unit} ({parts}), the cluster has {have:g}{unit}")
    if problems:
        raise PlacementError(
            "the run's resources cannot be placed on this Ray cluster: " + "; ".join(problems)
            + ". Lower resources.<role> (or the worker counts) or add nodes"
        )


def colocated_bundle(trainer: Resources, generators: Resources, engines: int) -> Resources:
    """One bundle of placement colocated: a trainer rank's resources plus `engines` engines' (summed per
    resource; e.g. GPU 0.5 + 0.5 = 1, so Ray gives the rank and its engines the same GPU)."""
    custom = dict(trainer.custom)
    for name, amount in generators.custom:
        custom[name] = custom.get(name, 0.0) + engines * amount
    return Resources(
        num_cpus=trainer.num_cpus + engines * generators.num_cpus,
        num_gpus=trainer.num_gpus + engines * generators.num_gpus,
        memory_bytes=(trainer.memory_bytes or 0) + engines * (generators.memory_bytes or 0) or None,
        custom=tuple(sorted(custom.items())),
    )


def place_workers(cfg: RunConfig, runtime: Runtime, run_id: str) -> dict[str, Resources]:
    """Each role's `Resources` for its workers, after `check_placement`. Placement separate: the generators
    in a placement group of one bundle per engine (`resources.engine_strategy`, SPREAD or PACK) and the
    trainer's ranks in one PACKed group (rank r in bundle r). Placement colocated: one PACKed group of one
    bundle per trainer rank (`colocated_bundle`: the rank's share + num_generators / num_ranks engines'
    shares), rank r and engines r*k .. r*k+k-1 in bundle r. Judges and the evaluator are placed by plain
    actor options."""
    check_placement(cfg, runtime.cluster_resources())
    placed = role_resources(cfg)
    counts = role_counts(cfg)
    if cfg.resources.placement == "colocated":
        per_gpu = counts["generators"] // counts["trainer"]  # a whole number (RunConfig checks it)
        bundle = colocated_bundle(placed["trainer"], placed["generators"], per_gpu)
        group = runtime.reserve(bundle, counts["trainer"], "PACK", f"{run_id}:colocated").placement_group
        placed["trainer"] = replace(placed["trainer"], placement_group=group)
        placed["generators"] = replace(placed["generators"], placement_group=group, workers_per_bundle=per_gpu)
        return placed
    placed["generators"] = runtime.reserve(
        placed["generators"], counts["generators"], cfg.resources.engine_strategy, f"{run_id}:generators"
    )
    placed["trainer"] = runtime.reserve(placed["trainer"], counts["trainer"], "PACK", f"{run_id}:trainer")
    return placed


class EmptyIteration(RuntimeError):
    """An iteration produced no group or no training pair; the run fails with the counts and a reason."""


class TrainerLost(RuntimeError):
    """The trainer died once more than `resilience.trainer_restarts` allows; the run fails with this reason."""


class RespawnBudgetSpent(RuntimeError):
    """More generator/judge respawns in one iteration than `resilience.worker_respawns_per_iteration`; the
    run pauses with this reason (resuming it redoes the iteration from its stream state)."""


@dataclass
class GenerationStats:
    """What stage 2-3 of one iteration measured (exact counts come from the streams, not the workers)."""

    groups: int = 0
    tokens: float = 0.0
    gen_seconds: float = 0.0
    judge_seconds: float = 0.0
    judge_drains: list[dict[str, float]] = field(default_factory=list)
    queue_peaks: dict[str, int] = field(default_factory=dict)

    def add_earlier(self, earlier: dict[str, Any]) -> None:
        """Add what earlier attempts of the same iteration measured (`dataclasses.asdict` of their stats): a
        re-run iteration (resumed after a crash) reports the generation it did before, not only the rest."""
        self.tokens += earlier["tokens"]
        self.gen_seconds += earlier["gen_seconds"]
        self.judge_seconds += earlier["judge_seconds"]
        self.judge_drains = earlier["judge_drains"] + self.judge_drains
        for stage, n in earlier["queue_peaks"].items():
            self.queue_peaks[stage] = max(self.queue_peaks.get(stage, 0), n)


class RunController:
    """Drives one run from version 0 through `schedule.iterations` iterations.

    `model_path` is the starting checkpoint (None: resolved from `policy.path` when the run starts);
    `runtime` runs the workers (default: Ray actors).
    """

    def __init__(
        self,
        run_id: str,
        config_json: str,
        redis_url: str,
        run_dir: str,
        model_path: str | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.run_id = run_id
        self.config_json = config_json
        self.cfg = RunConfig.model_validate_json(config_json)
        self.redis_url = redis_url
        self.run_dir = Path(run_dir)
        self.pairs_archive = self.run_dir / history.PAIRS_FILE  # pairs pruned from Redis (retain_streams)
        self.base_model_path = model_path
        self.runtime = runtime or RayRuntime()
        self.client = connect(redis_url, outage_s=self.cfg.resilience.redis_outage_s, wait_s=self.cfg.resilience.redis_outage_s)
        self.queue = StreamQueue(self.client, run_id, self.cfg.storage.stream_maxlen)
        self.store = RunStore(self.client)
        self.version = 0
        self.checkpoint = model_path or ""  # weights of `self.version`
        self.incarnation = 0  # how many controllers this run has had (names of this one's workers include it)
        self.prompts = RunPrompts([], [])
        self.eval_samples: dict[str, list[tuple[list[int], Completion]]] = {}  # "baseline", "previous"
        self.groups: dict[str, WorkerGroup] = {}
        self._pending_previous: list[tuple[list[int], Completion]] | None = None
        self.trainer_restarts = 0  # trainer restarts by this controller (the budget is per controller)
        self._restarts_before: dict[str, int] = {}  # replacements per role when the iteration started
        self._recovery_s = 0.0  # seconds of trainer recovery (back-off, new actor, restore) this iteration
        self._thread: Any = None
        self._requeued_ids: list[str] = []  # re-queued prompts the running iteration dispatched
        self._watch = HeartbeatWatch(lambda: heartbeats(self.client, self.run_id))
        self._rss: dict[str, list[tuple[Any, float]]] = {}  # consumer -> (pid, RSS MB) after each iteration

    # ---------------------------------------------------------------------------------------- workers

    def _group(self, role: str, cls: type, args: Any, resources: Resources, on_spawn: Any = None) -> WorkerGroup:
        group = WorkerGroup(role, cls, self.runtime, args, resources, self.run_id, self._spawned(on_spawn), incarnation=self.incarnation)
        group.on_hung = lambda consumer, handle, reason: self._worker_hung(role, consumer, handle, reason)
        self.groups[role] = group
        return group

    def _generator_args(self, consumer: str) -> tuple[Any, ...]:
        return (self.run_id, self.redis_url, self.config_json, self.checkpoint, self.version, consumer, self._staging(consumer))

    def _judge_joined(self, consumer: str, handle: Any) -> None:
        """A judge that follows the policy starts on the current weights, not version 0."""
        if self.version > 0:
            from sparring.workers.weight_sync import safetensors_dir_update

            update = safetensors_dir_update(self.checkpoint, self.version, verify=False)
            self.runtime.result(self.runtime.submit(handle, "load_weights", update, self._staging(consumer)))

    def start_workers(self) -> None:
        for stage, group in (("prompts", GENERATORS_GROUP), ("generations", JUDGES_GROUP), ("pairs", TRAINER_GROUP),
                             ("feedback", TRAINER_GROUP)):  # fmt: skip
            self.queue.ensure_group(stage, group)
        g, j = self.cfg.generation, self.cfg.judge
        placed = place_workers(self.cfg, self.runtime, self.run_id)  # refuses what the cluster cannot hold
        self._emit("progress", stage="startup", message=f"starting {g.num_generators} generator(s)")
        t0 = time.perf_counter()
        generators = self._group("generators", GeneratorWorker, self._generator_args, placed["generators"])
        judges = self._group(
            "judges", JudgeWorker, lambda c: (self.run_id, self.redis_url, self.config_json, c), placed["judges"],
            on_spawn=self._judge_joined,
        )
        trainer = self._group(
            "trainer", TrainerWorker,
            lambda c: (self.run_id, self.redis_url, self.config_json, self.base_model_path, str(self.run_dir),
                       placed["trainer"]),
            placed["trainer"],
        )  # fmt: skip
        generators.spawn(f"gen-{i}" for i in range(g.num_generators))
        judges.spawn(f"judge-{i}" for i in range(j.num_judges))
        trainer.spawn(["trainer"])
        if self.cfg.eval.enabled:
            self._group("evaluator", EvalWorker, lambda c: (self.run_id, self.redis_url, self.config_json), placed["evaluator"]).spawn(["eval"])
        infos = generators.call_all("info")
        if self.version > 0:  # a resumed run: the trainer continues from the last recorded checkpoint
            trainer.call("trainer", "restore", self.checkpoint)
        infos["trainer"] = trainer.call("trainer", "info")
        devices = {c: info.get("cuda_visible_devices") for c, info in infos.items()}
        self._emit("progress", stage="startup", message=f"workers ready in {time.perf_counter() - t0:.1f}s",
                   placement=self.cfg.resources.placement, cuda_visible_devices=devices)  # fmt: skip

    def stop_workers(self) -> None:
        for group in self.groups.values():
            group.kill_all()
        self.runtime.release()  # the placement groups

    def restarts_this_iteration(self, *roles: str) -> int:
        """Replacements of `roles`' workers since the current iteration started."""
        return sum(self.groups[r].restarts - self._restarts_before.get(r, 0) for r in roles if r in self.groups)

    def _check_respawns(self, t: int, consumer: str) -> None:
        """Before a dead generator or judge is replaced: pause the run (`RespawnBudgetSpent`) instead when the
        replacement would exceed `resilience.worker_respawns_per_iteration` in this iteration."""
        wanted = self.restarts_this_iteration("generators", "judges") + 1
        budget = self.cfg.resilience.worker_respawns_per_iteration
        if wanted > budget:
            raise RespawnBudgetSpent(
                f"{consumer} died in iteration {t}: respawn {wanted} would exceed "
                f"resilience.worker_respawns_per_iteration={budget}; find why the workers die, then resume the run"
            )

    # ---------------------------------------------------------------------------------------- the loop

    def run(self, keep_workers: bool = False) -> dict[str, Any]:
        """Run every iteration not yet recorded; workers are stopped at the end unless `keep_workers` (then
        call `shutdown`).

        A run that already has recorded iterations (resumed after a pause, a crash or a service restart)
        continues from its last recorded iteration: version, checkpoint, trainer state and the evaluation's
        iteration-0 and previous samples all come back from Redis and the checkpoint directory. Between
        iterations the controller honours a pending pause/stop request (`RunStore.request_control`): it stops
        its workers and leaves the run `paused` / `stopped`; the returned summary then has
        `"interrupted": <state>`. An iteration that spends its respawn budget pauses the run the same way, with
        the reason. A run that ends (any way but `keep_workers`) loses its engines' staging copies.
        """
        self.incarnation = int(self.client.incr(keys.incarnation(self.run_id)))
        if self.store.get_run(self.run_id)["state"] == "created":  # the service moves it to running itself
            self.store.set_state(self.run_id, "running")
        try:
            self.resolve_model()
            self.prompts = run_prompts(self.cfg)
            first = self.restore()
            self.trackers = Trackers.open(self.cfg, self.run_id, self.run_dir, first, self._report_tracking)  # report_to
            self.start_workers()
            self.evaluate_baseline()
            self.warm_start()
            if self.cfg.schedule.mode == "async":  # generation overlaps training (workers/pipeline.py)
                from sparring.workers.pipeline import AsyncLoop

                loop = AsyncLoop(self)
                try:
                    if (interrupted := loop.run(first)) is not None:
                        return interrupted
                except (RespawnBudgetSpent, StageTimeout) as err:
                    return self._interrupt("pause", loop.current, reason=str(err))
            else:
                for t in range(first, self.cfg.schedule.iterations + 1):
                    if (action := self.store.control(self.run_id)) is not None:
                        return self._interrupt(action, t)
                    try:
                        self.run_iteration(t)
                    except (RespawnBudgetSpent, StageTimeout) as err:
                        return self._interrupt("pause", t, reason=str(err))
            summary = self.write_summary()
            self.store.set_state(self.run_id, "completed")
            self.store.clear_control(self.run_id)
            self._emit("completed", summary=str(self.run_dir / "summary.json"))
            return summary
        except BaseException as err:
            reason = failure_reason(err)  # one line; the whole traceback goes to the run's log
            log_path = self._log_failure(err)
            self.store.set_state(self.run_id, "failed", reason=reason)
            self._emit("failed", reason=reason, log=log_path)
            self.stop_workers()
            raise
        finally:
            self._archive_history()
            if not keep_workers:
                self.shutdown()

    def _archive_history(self) -> None:
        """Put the events since the last recorded iteration (`completed`, `failed`, a pause) on disk too, so
        the run's history files end where the run did; best effort (Redis may be what failed): a restarted
        controller's `restore` archives whatever this could not."""
        try:
            self.store.archive(self.run_id)
        except Exception as err:  # noqa: BLE001 - the run's outcome is already decided and recorded
            log.warning("run %s: could not archive its last events: %s", self.run_id, err)

    def _log_failure(self, err: BaseException) -> str:
        """Append the full traceback of `err` to `<run_dir>/controller.log`; returns its path ("" if unwritable)."""
        path = self.run_dir / "controller.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} run {self.run_id} failed\n{format_failure(err)}\n")
        except OSError:
            log.exception("cannot write %s", path)
            return ""
        return str(path)

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
        return {"run_id": self.run_id, "version": self.version, "incarnation": self.incarnation}

    def resolve_model(self) -> None:
        from sparring.shared.models import check_config_models

        check_config_models(self.cfg)  # every local model dir the config names, before any worker starts
        if self.base_model_path is None:
            from sparring.shared.models import resolve_model_path

            def progress(message: str) -> None:
                self._emit("progress", stage="startup", message=message)

            self.base_model_path = resolve_model_path(self.cfg.policy.path, self.cfg.seed, progress)
            self.checkpoint = self.checkpoint or self.base_model_path
        from sparring.shared.models import check_context_length

        check_context_length(self.base_model_path, self.cfg.generation.max_model_len)
        resolved = resolve_lora_sync(self.cfg, self.base_model_path)  # `auto` on a model vLLM cannot serve LoRA for
        if resolved is not self.cfg:
            self._emit("progress", stage="startup", message="trainer.lora.sync=auto: merged weights (vLLM has no LoRA for this model)")
            self.cfg, self.config_json = resolved, resolved.model_dump_json()

    def restore(self) -> int:
        """Pick up after the last recorded iteration (0 = a fresh run); returns the next iteration to run."""
        self.store.archive(self.run_id)  # what a crash kept from the history files
        records = self.store.iterations(self.run_id)
        if not records:
            self.checkpoint = self.base_model_path or self.checkpoint
            return 1
        last = records[-1]
        self.version, self.checkpoint = last.policy_version_out, last.checkpoint
        self._emit("progress", stage="startup", message=f"resuming after iteration {last.iteration} (policy version {self.version})")
        return last.iteration + 1

    def _interrupt(self, action: str, next_iteration: int, reason: str | None = None) -> dict[str, Any]:
        state = "stopped" if action == "stop" else "paused"
        self.stop_workers()
        summary = self.write_summary()
        summary["interrupted"] = state
        self.store.clear_control(self.run_id)
        reason = reason or f"before iteration {next_iteration}"
        self.store.set_state(self.run_id, state, reason=reason)
        self._emit(state, next_iteration=next_iteration, reason=reason)
        return summary

    def engine_greedy(self, prompts: list[str], max_new_tokens: int) -> dict[str, Any]:
        """Greedy completion token ids from every generator, with the version each engine holds."""
        group = self.groups["generators"]
        tokens = group.call_all("greedy", prompts, max_new_tokens)
        infos = group.call_all("info")
        return {c: {"tokens": tokens[c], "version": infos[c]["version"]} for c in tokens}

    def shutdown(self) -> None:
        """Stop every worker and remove the engines' staging copies (the checkpoints are the durable record) and
        the run's stack-dump directory on this node (`health.stack_dir`; what was captured is in controller.log)."""
        self.stop_workers()
        shutil.rmtree(self.run_dir / "staging", ignore_errors=True)
        shutil.rmtree(stack_dir(self.run_id), ignore_errors=True)

    def warm_start(self) -> None:
        """DRIFT's warm start on the seed pairs before iteration 1 (`TrainerWorker.warm_start`), once: a run
        with a recorded iteration or weights past version 0 has had it. Its metrics are kept in the run's kv
        (`warm_start`) and go into iteration 1's record as `warm_start/*`; iteration 0's evaluation samples
        are the initial policy's, so win rates count the warm start's gain."""
        epochs = self.cfg.algorithm.drift_warm_start_epochs
        if not epochs or self.version != 0:
            return
        self._emit("progress", stage="warm_start", message=f"DRIFT warm start: {epochs} epoch(s) on the seed pairs")
        out = self.call_trainer(0, "warm_start")
        if not out["num_pairs"]:
            log.warning("run %s: drift_warm_start_epochs=%d but no DSAT log has a `satisfied` answer: no warm start", self.run_id, epochs)
            self._emit("progress", stage="warm_start", message="no seed pairs (no DSAT log has `satisfied`): skipped")
            return
        sync_s = self.sync(out["update"], out["checkpoint"])
        metrics = {f"warm_start/{k}": v for k, v in out["metrics"].items()} | {"warm_start/pairs": float(out["num_pairs"]), "warm_start/sync_s": sync_s}
        self.store.set_value(self.run_id, "warm_start", json.dumps(metrics).encode())
        self._emit("progress", stage="warm_start", message=f"version 1 from {out['num_pairs']} seed pairs, loss {metrics['warm_start/loss/mean']:.4f}")

    def _warm_start_metrics(self) -> dict[str, float]:
        blob = self.store.get_value(self.run_id, "warm_start")
        return {} if blob is None else dict(json.loads(blob))

    def run_iteration(self, t: int) -> IterationRecord:
        """One iteration as named stages; the record is written, then the trainer acknowledges its pairs.

        An iteration re-run after a crash (a resumed run) reports the whole iteration: its start time, the
        stream counts before its first attempt and the generation its earlier attempts measured are kept in
        the run's kv (`_iteration_progress`)."""
        v = self.version
        seconds: dict[str, float] = {}
        spans: dict[str, list[float]] = {}
        self._restarts_before = {role: group.restarts for role, group in self.groups.items()}
        self._recovery_s = 0.0
        progress = self._iteration_progress(t)
        started, dead_before = progress["started_at"], progress["dead_before"]
        self._emit("iteration_started", iteration=t, policy_version=v)
        with timed(seconds, "generate_judge", spans):
            n_prompts = self.dispatch(t, v)
            gen = self.generate_and_judge(t, n_prompts)
        # exact, whichever attempt and workers wrote them (a dead worker's own counters are lost)
        gen.groups = self.queue.written("generations") - progress["generations_before"]
        if progress.get("generation") is not None:
            gen.add_earlier(progress["generation"])
            seconds["generate_judge"] += progress["generate_judge_s"]
        progress.update(generation=asdict(gen), generate_judge_s=seconds["generate_judge"])
        self._save_progress(t, progress)
        pairs_open = gen.queue_peaks["pairs"] = self.queue.outstanding("pairs", TRAINER_GROUP)
        if self.cfg.algorithm.objective in UNPAIRED_OBJECTIVES:  # labelled answers train an unpaired objective
            pairs_open += self.queue.outstanding("feedback", TRAINER_GROUP)
        if gen.groups == 0 or pairs_open == 0:
            self._fail_empty(t, n_prompts, gen.groups, pairs_open, dead_before)
        self.sleep_engines(t, seconds)  # placement colocated: stage seconds "sleep" and "wake"
        with timed(seconds, "train", spans):
            out = self.train(t, v)
        if out["num_pairs"] == 0:  # every pair was from another version: nothing was trained
            self._fail_empty(t, n_prompts, gen.groups, 0, dead_before)
        if out["metrics"].get("heldout/both_logps_fell"):  # the classic DPO failure (workers/diagnostics.py)
            m = out["metrics"]
            log.warning("run %s iteration %d: held-out chosen and rejected log-probs both fell (%.3f, %.3f nats)",
                        self.run_id, t, m["heldout/logps/chosen_delta"], m["heldout/logps/rejected_delta"])  # fmt: skip
            self._emit("likelihood_displacement", iteration=t, chosen_delta=m["heldout/logps/chosen_delta"],
                       rejected_delta=m["heldout/logps/rejected_delta"])  # fmt: skip
        self.wake_engines(t, ["weights"], seconds)  # the sync loads into resident weights
        with timed(seconds, "sync", spans):
            sync_s = self.sync(out["update"], out["checkpoint"])
        self.wake_engines(t, ["kv_cache"], seconds)  # then the KV cache, and generation resumes on v+1
        with timed(seconds, "eval", spans):
            evaluation = self.evaluate(t)
        record = IterationRecord(
            run_id=self.run_id,
            iteration=t,
            policy_version_in=v,
            policy_version_out=self.version,
            num_prompts=n_prompts,
            num_groups=gen.groups,
            num_pairs=out["num_pairs"],
            num_dead=self.queue.written("dead") - dead_before,
            metrics=self.iteration_metrics(gen, out, seconds, sync_s) | (self._warm_start_metrics() if t == 1 else {}),
            stage_seconds=seconds,
            stage_spans=spans,
            eval=evaluation,
            checkpoint=out["checkpoint"],
            started_at=started,
            finished_at=time.time(),
        )
        self.record_iteration(record)
        self.client.hdel(keys.kv(self.run_id), f"iteration:{t}:progress")  # on record now
        return record

    def record_iteration(self, record: IterationRecord) -> None:
        """Stage 7 (both modes): put the record, log it to the trackers, keep the evaluation's samples for
        the next `vs_prev`, then let the trainer acknowledge the iteration's pairs, run stream and checkpoint
        retention and emit `iteration_done`."""
        t = record.iteration
        self.store.put_iteration(record)
        self.store.archive(self.run_id)  # then on disk (<run dir>/iterations.jsonl), before anything else
        self.trackers.log_iteration(record)  # experiment trackers (workers/trackers.py); never raises
        if self._pending_previous is not None:  # the next iteration's `vs_prev` side, once this one is on record
            self._save_samples("previous", self._pending_previous)
            self.eval_samples["previous"], self._pending_previous = self._pending_previous, None
        self.commit(t, record.policy_version_in)
        self.retain_streams(t)
        self._emit("iteration_done", iteration=t, record=record.model_dump(mode="json"))
        self.retain_checkpoints()

    def _iteration_progress(self, t: int) -> dict[str, Any]:
        """Iteration t's bookkeeping from its first attempt (start time, `generations` and `dead` written
        before it, and after stages 2-3 the generation it measured), created now if this is the first."""
        blob = self.store.get_value(self.run_id, f"iteration:{t}:progress")
        if blob is not None:
            return dict(json.loads(blob))
        progress = {
            "started_at": time.time(),
            "generations_before": self.queue.written("generations"),
            "dead_before": self.queue.written("dead"),
        }
        self._save_progress(t, progress)
        return progress

    def _save_progress(self, t: int, progress: dict[str, Any]) -> None:
        self.store.set_value(self.run_id, f"iteration:{t}:progress", json.dumps(progress).encode())

    def retain_checkpoints(self) -> None:
        """Checkpoint retention after a recorded iteration (`checkpoints.keep_last` whole, every
        `keep_every`-th as weights only, everything else under `checkpoints/` removed)."""
        c = self.cfg.checkpoints
        recorded = [(r.iteration, Path(r.checkpoint)) for r in self.store.iterations(self.run_id) if r.checkpoint]
        done = retain_checkpoints(recorded, self.run_dir / "checkpoints", c.keep_last, c.keep_every)
        if done.removed or done.weights_only:
            log.info("run %s: removed %d checkpoint dir(s), kept %d as weights only", self.run_id,
                     len(done.removed), len(done.weights_only))  # fmt: skip

    def _fail_empty(self, t: int, n_prompts: int, n_groups: int, n_pairs: int, dead_before: int) -> None:
        """An iteration with nothing to train on fails the run with the counts and the first dead letter's
        reason: training on 0 pairs would record an iteration (and a run `completed`) that learnt nothing."""
        n_dead = self.queue.written("dead") - dead_before
        letters = self.queue.dead_letters()[-n_dead:] if n_dead > 0 else []
        first = f"; first dead letter ({letters[0].stage} {letters[0].item_id}): {letters[0].reason}" if letters else ""
        raise EmptyIteration(
            f"iteration {t} has nothing to train on: {n_prompts} prompt(s) gave {n_groups} group(s) and {n_pairs} "
            f"pair(s), {n_dead} dead letter(s){first}"
        )

    def iteration_metrics(self, gen: GenerationStats, out: dict[str, Any], seconds: dict[str, float], sync_s: float) -> dict[str, float]:
        metrics = dict(out["metrics"])
        metrics.update(
            {
                "gen/tokens": gen.tokens,
                "gen/tokens_per_s": gen.tokens / max(gen.gen_seconds, 1e-9),
                "judge/seconds": gen.judge_seconds,
                "judge/latency_s": gen.judge_seconds / max(gen.groups, 1),
                "pairs/per_s": out["num_pairs"] / max(seconds["generate_judge"], 1e-9),
                "pairs/stale_dropped": float(out["num_stale"]),
                "sync/max_engine_s": sync_s,
                "workers/restarts": float(self.restarts_this_iteration("generators", "judges", "evaluator")),
                "trainer/restarts": float(self.restarts_this_iteration("trainer")),
                "trainer/recovery_s": self._recovery_s,
            }
        )
        metrics.update(self.memory_metrics())
        metrics.update({f"queue/peak/{stage}": float(n) for stage, n in gen.queue_peaks.items()})
        metrics.update(combine_judge_metrics(gen.judge_drains))
        # pairs whose answers came from other weights than their group's, refused by the judge or the trainer
        metrics.setdefault("judge/version_violations", 0.0)  # absent when no judge drain ran (a batch judged before a resume)
        metrics["version/violations"] = metrics["judge/version_violations"] + metrics.get("version/violations_train", 0.0)
        return metrics

    # ---------------------------------------------------------------------------------------- stages

    def dispatch(self, t: int, v: int) -> int:
        """Stage 1: draw this iteration's prompts from the training pool (never the held-out ones)."""
        pool = self.prompts.train
        items = [pool[int(i)] for i in iteration_prompt_indices(len(pool), self.cfg, t)]
        items += self._requeued(items)
        guided = self.cfg.algorithm.pairs == "drift" and self.cfg.algorithm.drift_guided
        for item in items:
            # backpressure: never more unfinished entries than the stream holds (trimming would drop them)
            self.queue.wait_for_room("prompts", GENERATORS_GROUP, timeout_s=self.cfg.resilience.backpressure_timeout_s)
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
                    anchor_text=item.fixed_answer(self.cfg.algorithm.pairs),
                    num_samples=self.cfg.generation.samples_per_prompt,
                    seed=derive_seed(self.cfg.seed, item.prompt_id, v),
                ),
            )
        return len(items)

    def _requeued(self, drawn: list[PromptItem]) -> list[PromptItem]:
        """Training prompts re-queued from dead letters (`RunStore.requeue_prompts`) that this iteration did
        not draw anyway, as many as the streams hold beside the drawn ones; they leave the queue once the
        iteration is recorded (`retain_streams`)."""
        wanted = self.store.requeued_prompts(self.run_id)
        if not wanted:
            return []
        by_id = {p.prompt_id: p for p in self.prompts.train}
        unknown = [p for p in wanted if p not in by_id]
        if unknown:
            self._emit("progress", stage="dispatch", message=f"re-queued prompt(s) not in the training pool: {unknown[:5]}")
            self.store.clear_requeued(self.run_id, unknown)
        drawn_ids = {p.prompt_id for p in drawn}
        room = self.queue.maxlen // self.cfg.max_pairs_per_group - len(drawn)
        extra = [by_id[p] for p in wanted if p in by_id and p not in drawn_ids][: max(room, 0)]
        self._requeued_ids = [p for p in wanted if p in drawn_ids or p in {e.prompt_id for e in extra}]
        if extra:
            self._emit("progress", stage="dispatch", message=f"dispatching {len(extra)} re-queued prompt(s) again")
        return extra

    def retain_streams(self, t: int) -> None:
        """Retention after iteration t is on record (docs/reliability.md): the prompts and generations of the
        iterations before it, finished, leave their streams and seen-sets (the newest recorded iteration's stay
        for inspection); pairs stay for `storage.pairs_retention_iterations` iterations (2 by default; older ones move to
        `<run dir>/archived_pairs.jsonl`);
        re-queued prompts t dispatched leave the re-queue; records and events older than
        `storage.history_window_iterations` iterations leave Redis for the run's history files."""
        self.queue.prune("prompts", GENERATORS_GROUP, before_iteration=t)
        self.queue.prune("generations", JUDGES_GROUP, before_iteration=t)
        keep = self.cfg.storage.pairs_retention_iterations
        if keep is not None:  # older pairs leave Redis for <run dir>/archived_pairs.jsonl (exports read both)
            self.queue.prune("pairs", TRAINER_GROUP, before_iteration=t + 1 - keep, archive=self.pairs_archive)
        self.store.clear_requeued(self.run_id, self._requeued_ids)
        self._requeued_ids = []
        self.store.trim_history(self.run_id, self.cfg.storage.history_window_iterations)

    def generate_and_judge(self, t: int, n_prompts: int) -> GenerationStats:
        """Stages 2-3: run generators and judges until every dispatched prompt is generated and judged."""
        stats = GenerationStats(queue_peaks={"prompts": 0, "generations": 0})
        open_: dict[str, int] = {}
        last_done = [-1]

        def tick() -> None:
            open_["prompts"] = self.queue.outstanding("prompts", GENERATORS_GROUP)
            open_["generations"] = self.queue.outstanding("generations", JUDGES_GROUP)
            for stage, n in open_.items():
                stats.queue_peaks[stage] = max(stats.queue_peaks[stage], n)
            if n_prompts - open_["prompts"] != last_done[0]:
                last_done[0] = n_prompts - open_["prompts"]
                self._emit("progress", stage="generate", iteration=t, done=last_done[0], total=n_prompts)

        def on_result(group: WorkerGroup, consumer: str, out: dict[str, float]) -> None:
            if group.role == "generators":
                stats.tokens += out["tokens"]
                stats.gen_seconds += out["seconds"]
            else:
                stats.judge_seconds += out["seconds"]
                stats.judge_drains.append({k: v for k, v in out.items() if k.startswith("judge/")})

        def on_replaced(group: WorkerGroup, consumer: str) -> None:
            self._emit("worker_died", consumer=consumer, iteration=t)

        drain_until_idle(
            self.runtime,
            [
                (self.groups["generators"], lambda: open_["prompts"] > 0),
                (self.groups["judges"], lambda: open_["generations"] > 0 or open_["prompts"] > 0),
            ],
            done=lambda: open_["prompts"] == 0 and open_["generations"] == 0,
            on_result=on_result,
            on_tick=tick,
            on_replaced=on_replaced,
            before_replace=lambda group, consumer: self._check_respawns(t, consumer),
            stalled=self._stalled,
            timeout_s=self.cfg.resilience.stage_timeout_s.generate,
        )
        return stats

    def train(self, t: int, v: int) -> dict[str, Any]:
        """Stage 4: the trainer trains on version v's pairs and writes checkpoint v+1 (a trainer that dies
        is restarted from version v's checkpoint and trains the same pairs again)."""
        self._emit("progress", stage="train", iteration=t, message="training")
        return self.call_trainer(t, "train", t, v)

    def commit(self, t: int, v: int) -> None:
        """The iteration is on record: the trainer acknowledges the pairs of version v (async mode: of
        iteration t) it consumed."""
        self.call_trainer(t, "commit", v, t)

    def call_trainer(self, t: int, method: str, *args: Any) -> Any:
        """`method(*args)` on the trainer; a trainer that dies during it is restarted (`restart_trainer`) and
        the call is made again on the new one. Every trainer call is safe to repeat: `train` reads its
        pairs from the stream, where they stay pending until `commit`."""
        limits = self.cfg.resilience.stage_timeout_s
        timeout_s = limits.eval if method == "initial_logps" else limits.train
        while True:
            try:  # a trainer stuck past the deadline is killed (WorkerHung, a WorkerDied): restarted the same way
                return self.groups["trainer"].call("trainer", method, *args, timeout_s=timeout_s)
            except WorkerDied as err:
                self.restart_trainer(t, f"{method} of iteration {t}", err)

    def restart_trainer(self, t: int, during: str, err: BaseException) -> None:
        """Replace a dead trainer by a new actor restored from the checkpoint of `self.version` (the last
        recorded one during training), after a back-off of `restart_backoff_s * 2**(n-1)` before restart n.
        Past `resilience.trainer_restarts` restarts (of this controller) raises `TrainerLost`."""
        r = self.cfg.resilience
        died_at = time.perf_counter()
        while True:
            spent = self.trainer_restarts >= r.trainer_restarts
            backoff = 0.0 if spent else r.restart_backoff_s * 2**self.trainer_restarts
            self._emit("trainer_died", iteration=t, during=during, reason=failure_reason(err),
                       restart=None if spent else self.trainer_restarts + 1, backoff_s=backoff)  # fmt: skip
            if spent:
                raise TrainerLost(
                    f"the trainer died during {during} ({failure_reason(err)}) after {self.trainer_restarts} "
                    f"restart(s); resilience.trainer_restarts={r.trainer_restarts} is spent. Resume the run to "
                    "continue from the checkpoint of its last recorded iteration"
                ) from err
            self.trainer_restarts += 1
            time.sleep(backoff)
            group = self.groups["trainer"]
            self.wait_for_capacity(group, t)
            group.replace("trainer", f"died during {during} ({failure_reason(err)})")
            try:
                if self.version > 0:
                    group.call("trainer", "restore", self.checkpoint, timeout_s=r.stage_timeout_s.train)
                group.call("trainer", "info", timeout_s=r.stage_timeout_s.train)
            except WorkerDied as again:  # died again while starting: the next restart, if the budget allows
                err, during = again, f"its restart from {self.checkpoint}"
                continue
            recovery_s = time.perf_counter() - died_at
            self._recovery_s += recovery_s
            self._emit("trainer_restarted", iteration=t, restart=self.trainer_restarts, version=self.version,
                       checkpoint=self.checkpoint, recovery_s=recovery_s)  # fmt: skip
            return

    def wait_for_capacity(self, group: WorkerGroup, t: int) -> None:
        """Before a replacement of `group`'s worker is started: wait while the runtime says no live node can
        hold it (`Runtime.missing`: its node was lost, e.g. a trainer pinned by a custom resource), at most
        `resilience.capacity_wait_s`, then raise `WaitingForCapacity` (the run pauses with the reason; resume
        it once a node with the resources has joined). Emits one `progress` event when it starts waiting."""
        limit = self.cfg.resilience.capacity_wait_s
        deadline = time.monotonic() + limit
        missing = self.runtime.missing(group.resources)
        if missing is not None:
            self._emit("progress", stage="capacity", iteration=t,
                       message=f"waiting up to {limit:g} s for capacity for the {group.role}: {missing}")  # fmt: skip
        while missing is not None:
            if time.monotonic() >= deadline:
                raise WaitingForCapacity(
                    f"waiting for capacity: the {group.role}'s replacement cannot be placed, {missing}, for "
                    f"{limit:g} s (resilience.capacity_wait_s={limit:g}); resume the run once a node with them has joined"
                )
            time.sleep(1.0)
            missing = self.runtime.missing(group.resources)

    def sync(self, update: Any, checkpoint: str) -> float:
        """Stage 5: push `update` to every generator and policy-following judge (one message each); a worker
        that fails to load it is replaced on `checkpoint`. Returns the slowest engine's seconds."""
        self.version, self.checkpoint = update.version, checkpoint
        limit = self.cfg.resilience.stage_timeout_s.sync
        deadline = time.monotonic() + limit
        judges = self.groups["judges"]
        judge_refs = {c: judges.submit(c, "load_weights", update, self._staging(c)) for c in list(judges.workers)}
        loaded = self.groups["generators"].call_all(
            "load_weights", update, replace_on_error=True, after_replace="info", timeout_s=limit
        )
        worst = max(loaded.values(), default=0.0)
        for consumer, ref in judge_refs.items():
            try:
                worst = max(worst, judges.result(consumer, ref, "load_weights", max(deadline - time.monotonic(), 0.0), limit))
            except Exception as err:
                judges.replace(consumer, f"failed to load version {update.version} ({type(err).__name__}: {err})")
        return worst

    def _staging(self, consumer: str) -> str:
        return str(self.run_dir / "staging" / consumer)

    # ---------------------------------------------------------------------------------------- placement colocated

    def sleep_engines(self, t: int, seconds: dict[str, float]) -> None:
        """Placement colocated, before stage 4: every engine sleeps at `sleep_level` and a judge holding the
        policy on a GPU moves it to CPU memory (`JudgeWorker.sleep`), so the trainer has the GPUs they share.
        Records the stage seconds `seconds["sleep"]` (trackers: `time/sleep_s`) and emits `engines_asleep` with
        `sleeping` (vLLM's own `is_sleeping()` on every engine) and `memory_freed` (False where vLLM has no
        sleep mode, e.g. vLLM-CPU: the calls run and free nothing). No-op for placement separate."""
        if self.cfg.resources.placement != "colocated":
            return
        level, limit = sleep_level(self.cfg), self.cfg.resilience.stage_timeout_s.sync
        t0 = time.perf_counter()
        engines = self.groups["generators"].call_all("sleep", level, timeout_s=limit)
        judges = self.groups["judges"].call_all("sleep", timeout_s=limit)
        seconds["sleep"] = time.perf_counter() - t0
        self._emit("engines_asleep", iteration=t, level=level, seconds=seconds["sleep"],
                   engines=sorted(engines), sleeping=bool(engines) and all(e["sleeping"] for e in engines.values()),
                   memory_freed=bool(engines) and all(e["frees_memory"] for e in engines.values()),
                   judges_offloaded=sorted(c for c, j in judges.items() if j["offloaded"]))  # fmt: skip

    def wake_engines(self, t: int, tags: list[str], seconds: dict[str, float]) -> None:
        """Placement colocated, after stage 4: wake the engines' `tags` ("weights" before the sync, "kv_cache"
        after it; a judge's offloaded policy comes back with the weights). Adds the time to the stage seconds
        `seconds["wake"]` (trackers: `time/wake_s`) and emits `engines_awake` with the tags. No-op for placement separate."""
        if self.cfg.resources.placement != "colocated":
            return
        limit = self.cfg.resilience.stage_timeout_s.sync
        t0 = time.perf_counter()
        engines = self.groups["generators"].call_all("wake_up", tags, timeout_s=limit)
        if "weights" in tags:
            self.groups["judges"].call_all("wake_up", timeout_s=limit)
        took = time.perf_counter() - t0
        seconds["wake"] = seconds.get("wake", 0.0) + took
        self._emit("engines_awake", iteration=t, tags=tags, seconds=took, engines=sorted(engines),
                   awake=bool(engines) and all(e["awake"] for e in engines.values()))  # fmt: skip

    # ---------------------------------------------------------------------------------------- evaluation

    def _sample_eval(self, version: int) -> list[tuple[list[int], Completion]]:
        items = self.prompts.heldout
        seeds = [derive_seed(self.cfg.seed, "eval", p.prompt_id, version) for p in items]
        return self.groups["generators"].call_any(
            "sample", [_conversation(p) for p in items], seeds, timeout_s=self.cfg.resilience.stage_timeout_s.eval
        )

    def _eval_key(self, name: str) -> str:
        """The run's kv field holding held-out samples (`baseline`: version 0, `previous`: the last recorded)."""
        return f"eval:samples:{name}"

    def _save_samples(self, name: str, samples: list[tuple[list[int], Completion]]) -> None:
        blob = json.dumps([[ids, c.model_dump(mode="json")] for ids, c in samples]).encode()
        self.store.set_value(self.run_id, self._eval_key(name), blob)

    def _load_samples(self, name: str) -> list[tuple[list[int], Completion]] | None:
        blob = self.store.get_value(self.run_id, self._eval_key(name))
        if blob is None:
            return None
        return [(ids, Completion.model_validate(c)) for ids, c in json.loads(blob)]

    def evaluate_baseline(self) -> None:
        """Iteration 0's held-out samples (stored, so a resumed run compares against the same ones) and the
        last recorded iteration's (the `vs_prev` side)."""
        if not (self.cfg.eval.enabled and self.prompts.heldout):
            return
        baseline = self._load_samples("baseline")
        if baseline is None:
            self._emit("progress", stage="eval", message=f"sampling {len(self.prompts.heldout)} held-out prompts from version 0")
            baseline = self._sample_eval(0)
            self._save_samples("baseline", baseline)
        self.eval_samples = {"baseline": baseline, "previous": self._load_samples("previous") or baseline}

    def evaluate(self, t: int) -> dict[str, float]:
        """Stage 6: `eval/*` metrics of the policy version just synced (workers/evaluation.py); {} when
        evaluation is off or iteration `t` is not one of every `eval.every` (nor the last). `vs_prev` compares with
        the last version evaluated."""
        from sparring.workers.evaluation import PREFIX, kl_estimate, length_metrics

        if not self.eval_samples or (t % self.cfg.eval.every and t != self.cfg.schedule.iterations):
            return {}
        self._emit("progress", stage="eval", iteration=t, message=f"evaluating version {self.version}")
        current = self._sample_eval(self.version)
        prompt_ids = [ids for ids, _ in current]
        now = [c for _, c in current]
        baseline = [c for _, c in self.eval_samples["baseline"]]
        previous = [c for _, c in self.eval_samples["previous"]]
        # iteration 1 (or a resume before any recorded evaluation): the previous samples are version 0's
        first = self.eval_samples["previous"] is self.eval_samples["baseline"]
        # the KL's reference log-probs (trainer) while the evaluator judges: two workers, one at a time no more
        kl_ref = self.groups["trainer"].submit("trainer", "initial_logps", prompt_ids, now) if self.cfg.eval.kl else None
        out = self.groups["evaluator"].call(
            "eval", "evaluate", self.prompts.heldout, self.version, now, baseline, None if first else previous,
            retry_dead=True, timeout_s=self.cfg.resilience.stage_timeout_s.eval,
        )
        out.update(length_metrics(now, previous))
        if kl_ref is not None:
            try:
                initial = self.groups["trainer"].result("trainer", kl_ref, "initial_logps", self.cfg.resilience.stage_timeout_s.eval)
            except WorkerDied as err:  # restarted and asked again, as `call_trainer` does
                self.restart_trainer(t, f"initial_logps of iteration {t}", err)
                initial = self.call_trainer(t, "initial_logps", prompt_ids, now)
            out[f"{PREFIX}kl_vs_iter0"] = kl_estimate(now, initial)
        self._pending_previous = current
        return out

    # ---------------------------------------------------------------------------------------- output

    def write_summary(self) -> dict[str, Any]:
        """`summary.json`: the resolved config, the final checkpoint and one row per recorded iteration
        (counts, loss and TRL's reward metrics, stage seconds and every `eval/*` metric). Strict JSON: NaN and
        infinite metrics are written as null (shared/jsonl.py `dumps`)."""
        records = self.store.iterations(self.run_id)
        summary = {
            "run_id": self.run_id,
            "config": json.loads(self.config_json),
            "final_checkpoint": self.checkpoint,
            "iterations": [
                {
                    "iteration": r.iteration,
                    "policy_version": r.policy_version_out,
                    "prompts": r.num_prompts,
                    "groups": r.num_groups,
                    "pairs": r.num_pairs,
                    "dead_letters": r.num_dead,
                    "loss": r.metrics.get("loss/mean"),
                    "rewards/accuracies": r.metrics.get("rewards/accuracies"),
                    "rewards/margins": r.metrics.get("rewards/margins"),
                    "heldout": {k: v for k, v in r.metrics.items() if k.startswith("heldout/")},
                    "eval": r.eval,
                    "stage_seconds": r.stage_seconds,
                    "checkpoint": r.checkpoint,
                }
                for r in records
            ],
        }
        path = self.run_dir / "summary.json"
        path.write_text(jsonl.dumps(summary, indent=2))  # strict JSON: a NaN loss is written as null
        return summary

    def _report_tracking(self, message: str) -> None:
        self._emit("progress", stage="trackers", message=message)

    def _emit(self, kind: str, **fields: Any) -> None:
        emit(self.client, self.run_id, kind, **fields)

    # ---------------------------------------------------------------------------------------- health

    def _spawned(self, on_spawn: Any) -> Any:
        """A group's `on_spawn` that first tells the heartbeat watch a consumer has a new worker."""

        def spawned(consumer: str, handle: Any) -> None:
            self._watch.reset(consumer)
            if on_spawn is not None:
                on_spawn(consumer, handle)

        return spawned

    def _stalled(self, group: WorkerGroup, consumer: str, since: float) -> str | None:
        """Why `consumer`, draining since `since` (monotonic), is stuck: no heartbeat for longer than
        `resilience.heartbeat_timeout_s`; None while it beats."""
        limit = self.cfg.resilience.heartbeat_timeout_s
        quiet = self._watch.quiet_s(consumer, since)
        return f"no heartbeat for {quiet:.0f} s (resilience.heartbeat_timeout_s={limit:g})" if quiet > limit else None

    def _worker_hung(self, role: str, consumer: str, handle: Any, reason: str) -> None:
        """Before a stuck worker is killed: its Python stacks (`Runtime.stacks`: faulthandler on SIGUSR1) go to
        `<run_dir>/controller.log` and to a `worker_hung` event (the last STACK_EVENT_CHARS characters)."""
        t0 = time.perf_counter()
        stacks = self.runtime.stacks(handle, self._watch.refresh(force=True).get(consumer))
        path = self.run_dir / "controller.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} run {self.run_id}: {role} {consumer} is stuck: {reason}; "
                        f"its stacks before it was killed:\n{stacks}\n")  # fmt: skip
        except OSError:
            log.exception("cannot write %s", path)
        log.warning("run %s: %s %s is stuck (%s); stacks:\n%s", self.run_id, role, consumer, reason, stacks)
        self._emit("worker_hung", role=role, consumer=consumer, reason=reason, log=str(path),
                   stacks=stacks[-STACK_EVENT_CHARS:], capture_s=time.perf_counter() - t0)  # fmt: skip

    def memory_metrics(self) -> dict[str, float]:
        """`memory/rss_mb/<consumer>` (each live worker's RSS with its child processes at its last heartbeat;
        `controller` for this process), `memory/redis_used_mb` (Redis INFO used_memory) and
        `memory/object_store_mb` (Ray's plasma store in use; absent without one), all in MB (2**20 bytes).
        Emits `memory_growth` (and logs a warning) for a worker whose RSS grew at each of the last
        `resilience.memory_growth_iterations` iterations, by `memory_growth_mb` or more in all."""
        r = self.cfg.resilience
        live = {c for group in self.groups.values() for c in group.workers}
        beats = self._watch.refresh(force=True)
        rss = {c: (hb.get("pid"), float(hb["rss_mb"])) for c, hb in beats.items() if c in live and "rss_mb" in hb}
        rss["controller"] = (None, process_rss_mb())
        out = {f"memory/rss_mb/{c}": mb for c, (_, mb) in sorted(rss.items())}
        out["memory/redis_used_mb"] = int(self.client.info("memory")["used_memory"]) / (1 << 20)
        if (store_mb := self.runtime.object_store_mb()) is not None:
            out["memory/object_store_mb"] = store_mb
        n = r.memory_growth_iterations
        for consumer, (pid, mb) in rss.items():
            history = [h for h in self._rss.get(consumer, []) if h[0] == pid] + [(pid, mb)]  # one process's
            self._rss[consumer] = history[-(n + 1) :]
            series = [m for _, m in self._rss[consumer]]
            if len(series) == n + 1 and all(b > a for a, b in zip(series, series[1:], strict=False)) and series[-1] - series[0] >= r.memory_growth_mb:
                log.warning("run %s: %s's RSS grew %s MB over %d iterations", self.run_id, consumer, [round(m) for m in series], n)
                self._emit("memory_growth", consumer=consumer, rss_mb=series, iterations=n,
                           growth_mb=series[-1] - series[0], threshold_mb=r.memory_growth_mb)  # fmt: skip
        return out


def _conversation(item: PromptItem) -> str | list[dict[str, str]]:
    """What the sampler renders for a prompt: the whole conversation when multi-turn, else the message."""
    return item.messages or item.prompt


def launch_controller(
    run_id: str,
    cfg: RunConfig,
    redis_url: str,
    run_dir: str,
    model_path: str | None = None,
    detached: bool = False,
) -> Any:
    """The run's controller as a Ray actor named `{run_id}:controller` in namespace `sparring`: the one way
    the CLI (`run`: attached, waits on `.run.remote()`) and the service (`detached`, `.start.remote()`, so
    the run outlives the API process) start a run. Raises `ValueError` if the run already has a live one."""
    import ray

    options: dict[str, Any] = {
        "name": f"{run_id}:controller",
        "namespace": "sparring",
        "num_cpus": 0,
        "max_restarts": 0,
        "runtime_env": {"env_vars": WORKER_ENV},
    }
    if detached:
        options["lifetime"] = "detached"
    return ray.remote(RunController).options(**options).remote(run_id, cfg.model_dump_json(), redis_url, run_dir, model_path)
