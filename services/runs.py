"""Runs as the API sees them: creation from a config and a pool, lifecycle, and the scheduler that keeps
every run that should be executing attached to a live controller.

Nothing about a run lives only in the API process. A run's state, config and iteration records are in
Redis (`RunStore`); its controller is a *detached* Ray actor (`{run_id}:controller`) that keeps running
when the API process exits. The scheduler loop (`reconcile`, every few seconds) is what makes that
restart-safe:

- a queued run (`created`) starts when fewer than `max_active_runs` runs execute;
- an executing run (`running` / `pausing` / `stopping`) whose controller is gone (the API's embedded Ray
  died with it, a node failed) is resumed from its last recorded iteration by a new controller — or, if it
  was pausing/stopping anyway, just marked paused/stopped. A run whose controller is lost repeatedly
  without recording an iteration is failed with the reason.

Pause and stop are requests: the controller honours them at the next iteration boundary, so an iteration
is never half-recorded. Resume moves a paused run, or a failed one whose last recorded checkpoint is intact
(`resume_problems`), back to the queue; it continues from that checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import yaml

from sparring.services.pools import PoolStore
from sparring.services.settings import ServiceSettings
from sparring.shared import history, keys, tasks
from sparring.shared.config import ConfigError, RunConfig, looks_local, parse_config
from sparring.shared.models import config_model_problems
from sparring.shared.prompts import PromptPoolError, load_run_prompts
from sparring.shared.queue import StreamQueue
from sparring.shared.records import IterationRecord, PreferencePair
from sparring.shared.store import ACTIVE_STATES, InvalidTransition, RunNotFound, RunStore

log = logging.getLogger(__name__)

# Fields of a run config that name a model: each must be a model a task registers, a Hugging Face id, or a
# directory inside one of the configured model roots.
MODEL_FIELDS = (
    "policy.path", "judge.strong_model", "judge.weak_model", "judge.model", "judge.uncertainty.estimator",
    "eval.judge.strong_model", "eval.judge.weak_model", "eval.judge.model", "eval.judge.uncertainty.estimator",
)  # fmt: skip
# Fields only the service sets.
SERVICE_FIELDS = ("storage.run_dir", "storage.redis_url", "prompts.path", "eval.prompts.path")
HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
MAX_ORPHAN_RESTARTS = 3
# The states each lifecycle action applies to (docs/operations.md, "Lifecycle").
ACTION_STATES = {
    "pause": ("created", "running"), "resume": ("paused", "failed"), "stop": ("created", "paused", "running", "pausing"),
}  # fmt: skip
# A submitted config with neither a pool nor a prompt source: what the API user can do about it.
NO_PROMPTS = (
    "prompts: Field required: upload a pool with POST /v1/pools and pass its pool_id, or set prompts.source to a "
    "task's prompt source (`sparring tasks`)"
)
IDEMPOTENCY_TTL_S = 7 * 24 * 3600


class RequestError(ValueError):
    """A request the service refuses (422), with every problem listed."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class CheckpointNotFound(LookupError):
    """No such checkpoint version or file (the run exists)."""


class Conflict(ValueError):
    """409: the request conflicts with the current state (a lifecycle transition, a reused key)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def check_model_reference(field: str, value: Any, roots: tuple[Path, ...]) -> str | None:
    """Why `value` may not be used as a model reference through the API, or None if it may."""
    if not isinstance(value, str):
        return None  # the config validation reports the type
    if tasks.lookup("models", value) is not None:
        return None
    shown = value if len(value) <= 200 else value[:200] + "..."
    if looks_local(value) or value.startswith(".") or Path(value).exists():
        path = Path(value).expanduser()
        if path.is_absolute():
            real = Path(*path.parts).resolve()
            for root in roots:
                root_real = root.expanduser().resolve()
                if real == root_real or root_real in real.parents:
                    return None
        where = ", ".join(str(r) for r in roots) or "none are configured (SPARRING_MODEL_ROOTS)"
        return f"{field}: {shown!r} is not allowed: a local model must be an absolute path inside a model root ({where})"
    if not HF_ID.fullmatch(value) or ".." in value:
        return f"{field}: {shown!r} is neither a Hugging Face model id (owner/name) nor an allowed local directory"
    return None


def _ray() -> Any:
    import ray

    return ray


class RunService:
    def __init__(self, settings: ServiceSettings, client: redis.Redis, redis_url: str) -> None:
        self.settings = settings
        self.client = client
        self.redis_url = redis_url
        self.store = RunStore(client)
        self.pools = PoolStore(client, settings.pools_dir)
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}  # run id -> when this process started its controller

    # ------------------------------------------------------------------------------------------ create

    def prepare_config(self, raw: Any, pool_id: str | None) -> RunConfig:
        """Validate a config submitted over the API; RequestError lists every problem."""
        if not isinstance(raw, dict):
            raise RequestError(f"config must be an object, got {type(raw).__name__}")
        data = json.loads(json.dumps(raw))  # a private deep copy
        problems = [f"{f}: set by the service, not by a run config" for f in SERVICE_FIELDS if _get(data, f) is not None]
        for field in MODEL_FIELDS:
            if (why := check_model_reference(field, _get(data, field), self.settings.model_roots)) is not None:
                problems.append(why)
        uri = _get(data, "trackers.mlflow.tracking_uri")
        if isinstance(uri, str) and not uri.startswith(("http://", "https://", "databricks")):
            problems.append(
                "trackers.mlflow.tracking_uri: over the API only a tracking server (http(s)://, databricks) is allowed; "
                "a local store is the service's (MLFLOW_TRACKING_URI, or mlflow.db in its runs directory)"
            )
        if problems:
            raise RequestError(f"config: {len(problems)} problem(s)", problems)
        if pool_id is not None:
            pool = self.pools.get(pool_id)
            if pool is None:
                raise RequestError(f"pool_id: no pool {pool_id!r} (upload it with POST /v1/pools)")
            kind = "dsat" if pool["kind"] == "dsat" else "hf" if pool.get("format") == "parquet" else "jsonl"
            source = _get(data, "prompts.source")
            if source not in (None, kind):
                raise RequestError(f"prompts.source: {source!r} conflicts with pool {pool_id!r} (a {pool['kind']} pool)")
            _set(data, "prompts.source", kind)
            _set(data, "prompts.path", str(self.pools.path(pool_id)))
            for field, column in (pool.get("columns") or {}).items():  # a parquet pool's mapping, as uploaded
                _set(data, f"prompts.{field}", column)
        elif _get(data, "prompts.source") in ("jsonl", "dsat"):
            raise RequestError("pool_id: prompts.source jsonl/dsat needs a pool uploaded with POST /v1/pools")
        _set(data, "storage.run_dir", str(self.settings.runs_dir))
        try:
            cfg = parse_config(data, "config")
        except ConfigError as err:
            lines = str(err).splitlines()
            problems = [line.strip() for line in lines[1:]] or lines
            raise RequestError(lines[0], [NO_PROMPTS if p == "prompts: Field required" else p for p in problems]) from None
        if problems := config_model_problems(cfg):  # a model dir without weights or tokenizer, before it queues
            raise RequestError(f"config: {len(problems)} problem(s)", problems)
        try:
            load_run_prompts(cfg)
        except PromptPoolError as err:
            lines = str(err).splitlines()
            raise RequestError(lines[0], [line.strip() for line in lines[1:]] or lines) from None
        return cfg

    def create_run(self, raw_config: Any, pool_id: str | None, idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """Create a queued run; returns (run view, created). The same Idempotency-Key returns the same run."""
        fingerprint = hashlib.sha256(json.dumps([raw_config, pool_id], sort_keys=True).encode()).hexdigest()
        if idempotency_key is not None:
            key = keys.idempotency(idempotency_key)
            existing = self.client.get(key)
            if existing is not None:
                return self._replay(json.loads(existing), fingerprint)
        cfg = self.prepare_config(raw_config, pool_id)
        run_id = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        if idempotency_key is not None:
            claimed = self.client.set(key, json.dumps({"run_id": run_id, "fingerprint": fingerprint}), nx=True, ex=IDEMPOTENCY_TTL_S)
            if not claimed:  # a concurrent request with the same key won
                return self._replay(json.loads(self.client.get(key) or b"{}"), fingerprint)
        run_dir = self.settings.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        labels = {"pool_id": pool_id} if pool_id else {}
        self.store.create_run(run_id, cfg.model_dump(mode="json"), str(run_dir), labels=labels)
        log.info("created run %s", run_id)
        self.reconcile()
        return self.view(run_id), True

    def _replay(self, stored: dict[str, Any], fingerprint: str) -> tuple[dict[str, Any], bool]:
        if stored.get("fingerprint") != fingerprint:
            raise Conflict("Idempotency-Key was already used for a different request")
        for _ in range(50):  # the first request may still be writing the run
            if self.store.get_run(stored["run_id"]) is not None:
                return self.view(stored["run_id"]), False
            time.sleep(0.1)
        raise Conflict("Idempotency-Key is in use by a request that has not finished")

    # ------------------------------------------------------------------------------------------ read

    def view(self, run_id: str) -> dict[str, Any]:
        run = self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return self._view(run)

    def _view(self, run: dict[str, Any]) -> dict[str, Any]:
        cfg = run["config"]
        return {
            "run_id": run["run_id"],
            "name": cfg.get("name", ""),
            "state": run["state"],
            "reason": run["reason"],
            "created_at": run["created_at"],
            "updated_at": run["updated_at"],
            "iterations_done": self.store.last_complete_iteration(run["run_id"]),
            "iterations_total": cfg.get("schedule", {}).get("iterations"),
            "pool_id": run["labels"].get("pool_id"),
            "algorithm": cfg.get("algorithm", {}).get("objective"),
            "judge": cfg.get("judge", {}).get("kind"),
        }

    def list_runs(self) -> list[dict[str, Any]]:
        return [self._view(r) for r in self.store.list_runs()]

    def config(self, run_id: str) -> dict[str, Any]:
        run = self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run["config"]

    def iterations(self, run_id: str) -> list[IterationRecord]:
        self.view(run_id)
        return self.store.iterations(run_id)

    def queue(self, run_id: str) -> StreamQueue:
        self.view(run_id)
        return StreamQueue(self.client, run_id)

    def queue_depths(self, run_id: str) -> dict[str, int]:
        from sparring.workers.actors import GENERATORS_GROUP, JUDGES_GROUP, TRAINER_GROUP

        q = self.queue(run_id)
        out = {}
        for stage, group in (("prompts", GENERATORS_GROUP), ("generations", JUDGES_GROUP), ("pairs", TRAINER_GROUP),
                             ("feedback", TRAINER_GROUP)):  # fmt: skip
            try:
                out[stage] = q.outstanding(stage, group)
            except redis.ResponseError:  # the stream/group does not exist yet
                out[stage] = 0
        out["dead"] = q.length("dead")
        return out

    def pair_records(self, run_id: str, newest_first: bool = False) -> Iterator[tuple[str, PreferencePair]]:
        """(entry id, pair) of every judged pair of the run, oldest first (or newest first): those the
        retention moved to `<run dir>/archived_pairs.jsonl`, then those still in the pairs stream."""
        archive = self.store.history_path(run_id, history.PAIRS_FILE)
        return self.queue(run_id).iter_records("pairs", PreferencePair, newest_first, archive=archive)

    def _pair_entries(self, run_id: str, newest_first: bool = False) -> Iterator[PreferencePair]:
        return (pair for _, pair in self.pair_records(run_id, newest_first))

    def recent_pairs(self, run_id: str, limit: int, iteration: int | None = None) -> list[dict[str, Any]]:
        out = []
        for pair in self._pair_entries(run_id, newest_first=True):
            if iteration is not None and pair.iteration != iteration:
                continue
            out.append(
                {
                    "record_id": pair.record_id,
                    "iteration": pair.iteration,
                    "policy_version": pair.policy_version,
                    "prompt_id": pair.prompt_id,
                    "prompt": pair.prompt,
                    "chosen": pair.chosen.text,
                    "rejected": pair.rejected.text,
                    "chosen_score": pair.chosen_score,
                    "rejected_score": pair.rejected_score,
                    "win_prob": pair.win_prob,
                    "judge": pair.judge,
                }
            )
            if len(out) >= limit:
                break
        return out

    def _recorded_checkpoints(self, run_id: str) -> Iterator[tuple[IterationRecord, Path]]:
        """Each recorded iteration's checkpoint that exists inside the run's own directory (nothing outside
        it is ever listed or served)."""
        run = self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        run_dir = Path(run["run_dir"]).resolve()
        for rec in self.store.iterations(run_id):
            path = Path(rec.checkpoint)
            if rec.checkpoint and run_dir in path.resolve().parents and path.is_dir():
                yield rec, path

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        out = []
        for rec, path in self._recorded_checkpoints(run_id):
            files = [{"name": f.name, "bytes": f.stat().st_size} for f in sorted(path.iterdir()) if f.is_file()]
            out.append(
                {
                    "version": rec.policy_version_out,
                    "iteration": rec.iteration,
                    "files": files,
                    "bytes": sum(f["bytes"] for f in files),
                }
            )
        return out

    def checkpoint_dir(self, run_id: str, version: int) -> Path:
        for rec, path in self._recorded_checkpoints(run_id):
            if rec.policy_version_out == version:
                return path
        raise CheckpointNotFound(f"run {run_id!r} has no recorded checkpoint for policy version {version}")

    def checkpoint_file(self, run_id: str, version: int, name: str) -> Path:
        directory = self.checkpoint_dir(run_id, version)
        names = {f.name for f in directory.iterdir() if f.is_file()}
        if name not in names:  # only names listed in the directory: no path ever comes from the request
            raise CheckpointNotFound(f"checkpoint v{version} of run {run_id!r} has no file {name!r}")
        return directory / name

    # ------------------------------------------------------------------------------------------ lifecycle

    def _transition(self, action: str, run_id: str, allowed: tuple[str, ...], state: str, reason: str) -> None:
        """`store.transition`, refused (409) with the action the user asked for and the states it applies to:
        "run 'x' is created; it cannot become created: resume applies to a paused or failed run"."""
        try:
            self.store.transition(run_id, allowed, state, reason=reason)
        except InvalidTransition as err:
            *others, last = ACTION_STATES[action]
            raise Conflict(f"{err}: {action} applies to a {', '.join(others)} or {last} run") from None

    def pause(self, run_id: str) -> dict[str, Any]:
        state = self.view(run_id)["state"]
        if state == "created":
            self._transition("pause", run_id, ("created",), "paused", reason="paused before it started")
        else:
            self._transition("pause", run_id, ("running",), "pausing", reason="pause requested")
            self.store.request_control(run_id, "pause")
        return self.view(run_id)

    def resume_problems(self, run_id: str) -> list[str]:
        """Why the run cannot continue from its last recorded iteration (each missing file or state named),
        or [] if it can: the checkpoint of that iteration must hold its config, weights and trainer state.
        A run with no recorded iteration starts again from its base model."""
        from sparring.workers.trainer_state import resume_problems

        records = self.store.iterations(run_id)
        if not records:
            return []
        last = records[-1]
        if not last.checkpoint:
            return [f"iteration {last.iteration} recorded no checkpoint"]
        return [f"iteration {last.iteration}: {p}" for p in resume_problems(last.checkpoint)]

    def resume(self, run_id: str) -> dict[str, Any]:
        """A paused run, or a failed one whose last recorded checkpoint is intact, goes back to the queue and
        continues after its last recorded iteration. 409 (`Conflict`, every problem listed) otherwise."""
        run = self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        reason = "resume requested; waiting for a slot"
        if run["state"] == "failed":
            problems = self.resume_problems(run_id)
            if problems:
                raise Conflict(
                    f"run {run_id!r} is failed and cannot resume: the checkpoint of its last recorded iteration is "
                    f"not intact ({len(problems)} problem(s), each listed)",
                    problems,
                )
            done = self.store.last_complete_iteration(run_id)
            reason = f"resume of a failed run ({run['reason']}) requested: continues after iteration {done}"
        self._transition("resume", run_id, ("paused", "failed"), "created", reason=reason)
        self.reconcile()
        return self.view(run_id)

    def stop(self, run_id: str) -> dict[str, Any]:
        state = self.view(run_id)["state"]
        if state in ("created", "paused"):
            self._transition("stop", run_id, ("created", "paused"), "stopped", reason="stopped by request")
        else:
            self._transition("stop", run_id, ("running", "pausing"), "stopping", reason="stop requested")
            self.store.request_control(run_id, "stop")
        return self.view(run_id)

    # ------------------------------------------------------------------------------------------ scheduler

    def _controller_alive(self, run_id: str) -> bool:
        ray = _ray()
        try:
            ray.get_actor(f"{run_id}:controller", namespace="sparring")
        except ValueError:
            return False
        return True

    def _start_controller(self, run: dict[str, Any]) -> None:
        _ray()
        from sparring.workers.controller import launch_controller

        run_id = run["run_id"]
        cfg = RunConfig.model_validate(run["config"])
        launch_controller(run_id, cfg, self.redis_url, run["run_dir"], detached=True).start.remote()
        self._started[run_id] = time.monotonic()
        log.info("started controller of run %s", run_id)

    def reconcile(self) -> None:
        """Start queued runs while there is room; re-attach executing runs that lost their controller."""
        with self._lock:
            runs = self.store.list_runs()
            executing = 0
            for run in runs:
                if run["state"] not in ACTIVE_STATES:
                    continue
                executing += 1
                run_id = run["run_id"]
                started = self._started.get(run_id)
                if started is not None and time.monotonic() - started < 30:
                    continue  # just started by us: its actor may not be registered yet
                if self._controller_alive(run_id):
                    continue
                self._orphaned(run)
            for run in runs:
                if run["state"] != "created" or executing >= self.settings.max_active_runs:
                    continue
                try:
                    self.store.transition(run["run_id"], ("created",), "running", reason="")
                except (InvalidTransition, RunNotFound):
                    continue
                executing += 1
                if self._controller_alive(run["run_id"]):
                    # a Redis restart lost the last second of writes (appendfsync everysec), among them this
                    # run's move to running: its controller is alive, so it is running again, not started twice
                    log.warning("run %s was queued but its controller is alive (Redis lost a write?)", run["run_id"])
                    continue
                self._start_controller(run)

    def _orphaned(self, run: dict[str, Any]) -> None:
        run_id, state = run["run_id"], run["state"]
        current = self.store.get_run(run_id)
        if current is None or current["state"] != state:
            return  # it moved on while we looked
        if state == "stopping":
            self.store.transition(run_id, ("stopping",), "stopped", reason="stopped (its controller had exited)")
            self.store.clear_control(run_id)
            return
        if state == "pausing":
            self.store.transition(run_id, ("pausing",), "paused", reason="paused (its controller had exited)")
            self.store.clear_control(run_id)
            return
        done = self.store.last_complete_iteration(run_id)
        attempts = int(self.client.hincrby(keys.kv(run_id), f"orphan_restarts:{done}", 1))
        if attempts > MAX_ORPHAN_RESTARTS:
            self.store.transition(
                run_id, ("running",), "failed", reason=f"controller lost {attempts - 1} times after iteration {done}"
            )
            return
        log.warning("run %s lost its controller; resuming after iteration %d (attempt %d)", run_id, done, attempts)
        self._start_controller(run)

    def scheduler_loop(self, stop: threading.Event) -> None:
        """`reconcile` every few seconds, for as long as the API runs: a pass that fails (Redis down past the
        client's outage window, Ray unreachable) is logged and the next one tries again. This is also what
        catches the runs a Redis outage orphaned: a controller that gave up on Redis could not record its
        end, so its run is executing without a controller and is resumed (or failed) here."""
        while not stop.wait(self.settings.scheduler_interval_s):
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - the loop must outlive a Redis/Ray hiccup
                log.exception("scheduler pass failed")
