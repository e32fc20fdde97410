"""Experiment trackers: a run's iteration records, and its resolved config once, in TensorBoard, Weights &
Biases and/or MLflow (`report_to`), through each tracker's own library (`pip install 'sparring[trackers]'`).

Logged for every iteration record, with the iteration as the step (`record_values`):

    record.metrics as named     loss/mean, rewards/accuracies, judge/latency_s, gen/tokens_per_s,
                                sync/max_engine_s, queue/peak/<stream>, ...
    record.eval as named        eval/win_rate_vs_iter0 (+ _ci_low/_ci_high), eval/kl_vs_iter0, eval/<evaluator>/...
    time/<stage>_s              record.stage_seconds: generate_judge, train, sync, eval (+ sleep, wake: colocated)
    iteration/<count>           prompts, groups, pairs, dead, policy_version

The resolved config goes once, when the tracker's run is created: W&B `config` (nested), MLflow params
(dotted keys) and a `config.yaml` artifact, a TensorBoard text summary `config`. A resumed run (a new
controller after a pause or a restart) continues the same tracker run: W&B by id (`resume="allow"`), MLflow by
the `sparring.run_id` tag, TensorBoard in the same directory.

A tracker never fails the run: one that cannot start (library missing, no credentials, server unreachable)
is reported once through `report`, with the fix, and left out; one that fails later is reported once and
dropped. Every tracker writes through after each record, so a run that is paused or killed loses nothing
already recorded. This module knows no Ray and no Redis.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from sparring.shared.config import RunConfig
from sparring.shared.records import IterationRecord

log = logging.getLogger(__name__)

INSTALL = "pip install 'sparring[trackers]'"


@dataclass(frozen=True)
class TrackedRun:
    """What every tracker needs to open (or reopen) its run."""

    run_id: str
    name: str
    run_dir: Path  # runs/<run id>: TensorBoard and W&B write below it
    runs_root: Path  # storage.run_dir: the default MLflow store sits here, shared by the runs
    config: dict[str, Any]  # the resolved config, JSON-compatible
    resumed: bool  # iterations were recorded before: the tracker run exists already


class Tracker(Protocol):
    name: str

    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def record_values(record: IterationRecord) -> dict[str, float]:
    """The scalars one iteration record contributes (module docstring: the names)."""
    values = dict(record.metrics)
    values.update(record.eval)
    values.update({f"time/{stage}_s": seconds for stage, seconds in record.stage_seconds.items()})
    values.update(
        {
            "iteration/prompts": float(record.num_prompts),
            "iteration/groups": float(record.num_groups),
            "iteration/pairs": float(record.num_pairs),
            "iteration/dead": float(record.num_dead),
            "iteration/policy_version": float(record.policy_version_out),
        }
    )
    return {k: float(v) for k, v in values.items()}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys to string values (`trainer.learning_rate: "0.0003"`); lists stay whole."""
    out: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    return out


# ------------------------------------------------------------------------------------------------ trackers


class TensorBoardTracker:
    """Event files in <run dir>/tensorboard (`tensorboard --logdir runs`)."""

    name = "tensorboard"
    fix = INSTALL + " (or pip install tensorboard)"

    def __init__(self, run: TrackedRun, cfg: RunConfig) -> None:
        # raises ImportError naming tensorboard when it is missing
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard"))
        if not run.resumed:
            text = yaml.safe_dump(run.config, sort_keys=False)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "), global_step=0)  # markdown code block
            self.writer.flush()

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run whose id is the run id; offline mode writes <run dir>/wandb/offline-run-*/ only."""

    name = "wandb"
    fix = INSTALL + " (or pip install wandb); set WANDB_API_KEY or run `wandb login`, or use trackers.wandb.mode: offline"

    def __init__(self, run: TrackedRun, cfg: RunConfig) -> None:
        import wandb

        opts = cfg.trackers.wandb
        self.run = wandb.init(
            project=opts.project,
            entity=opts.entity,
            group=opts.group,
            tags=opts.tags or None,
            name=run.name,
            id=re.sub(r"[^A-Za-z0-9_-]", "-", run.run_id),
            resume="allow",
            dir=str(run.run_dir),
            mode=opts.mode,
            config=run.config,
            reinit="create_new",  # several runs (and controllers) may share a process
            settings=wandb.Settings(
                silent=True, console="off", disable_git=True, disable_code=True, x_disable_stats=True,
                init_timeout=opts.init_timeout_s,
            ),
        )  # fmt: skip

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


_MLFLOW_KEY = re.compile(r"[^\w\-. /]")


class MLflowTracker:
    """An MLflow run tagged `sparring.run_id`, in `trackers.mlflow.experiment`."""

    name = "mlflow"
    fix = INSTALL + " (or pip install mlflow-skinny sqlalchemy alembic); check trackers.mlflow.tracking_uri / MLFLOW_TRACKING_URI"
    MAX_PARAMS = 100  # params per log_batch call (MLflow's limit)
    MAX_METRICS = 1000

    def __init__(self, run: TrackedRun, cfg: RunConfig) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        opts = cfg.trackers.mlflow
        local = opts.tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI")
        root = run.runs_root.resolve()
        if local:
            root.mkdir(parents=True, exist_ok=True)
        uri = opts.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root}/mlflow.db"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(opts.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # a local store keeps artifacts beside it (MLflow's default is ./mlruns of the process's cwd)
            artifacts = (root / "mlartifacts").as_uri() if local else None
            experiment_id = self.client.create_experiment(opts.experiment, artifact_location=artifacts)
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`sparring.run_id` = '{run.run_id}'", max_results=1
        )
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            created = self.client.create_run(experiment_id, run_name=run.name, tags={"sparring.run_id": run.run_id})
            self.run_id = created.info.run_id
            params = [Param(k[:250], v[:6000]) for k, v in flatten(run.config).items()]
            for i in range(0, len(params), self.MAX_PARAMS):
                self.client.log_batch(self.run_id, params=params[i : i + self.MAX_PARAMS])
            self.client.log_text(self.run_id, yaml.safe_dump(run.config, sort_keys=False), "config.yaml")
        self.uri = uri

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_MLFLOW_KEY.sub("_", k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), self.MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + self.MAX_METRICS])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS: dict[str, Callable[[TrackedRun, RunConfig], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MLflowTracker,
}
FIXES = {"tensorboard": TensorBoardTracker.fix, "wandb": WandbTracker.fix, "mlflow": MLflowTracker.fix}


def _why(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"


class Trackers:
    """The trackers of one run that started; `log_iteration` after every recorded iteration, `close` at the end
    (the run's last iteration closes them itself)."""

    def __init__(self, trackers: list[Tracker], last_iteration: int, report: Callable[[str], None]) -> None:
        self.trackers = trackers
        self.last_iteration = last_iteration
        self.report = report

    @classmethod
    def open(cls, cfg: RunConfig, run_id: str, run_dir: Path | str, first_iteration: int, report: Callable[[str], None]) -> Trackers:
        """Start every tracker `cfg.report_to` names; each that cannot is reported once (with the fix) and left out."""
        run_dir = Path(run_dir)
        run = TrackedRun(
            run_id=run_id,
            name=cfg.trackers.run_name or run_id,
            run_dir=run_dir,
            runs_root=run_dir.parent,
            config=cfg.model_dump(mode="json"),
            resumed=first_iteration > 1,
        )
        started: list[Tracker] = []
        for name in cfg.report_to:
            try:
                started.append(TRACKERS[name](run, cfg))
            except Exception as err:  # ImportError, a credentials or network error, a timeout: never the run's end
                log.warning("tracker %s not started", name, exc_info=True)
                report(f"tracker {name} is off for this run: {_why(err)}. Fix: {FIXES[name]}")
        if started:
            report("logging to " + ", ".join(t.name for t in started))
        return cls(started, cfg.schedule.iterations, report)

    def log_iteration(self, record: IterationRecord) -> None:
        values = record_values(record)
        for tracker in list(self.trackers):
            try:
                tracker.log(values, record.iteration)
            except Exception as err:
                log.warning("tracker %s failed", tracker.name, exc_info=True)
                self.report(f"tracker {tracker.name} failed and is off for the rest of this run: {_why(err)}")
                self.trackers.remove(tracker)
        if record.iteration >= self.last_iteration:
            self.close()

    def close(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception:
                log.warning("tracker %s did not close cleanly", tracker.name, exc_info=True)
        self.trackers = []

