"""Experiment trackers (workers/trackers.py) fed IterationRecords directly, read back with each tracker's own
reader: TensorBoard's EventAccumulator, MlflowClient, and W&B's offline run file. A tracker that cannot start
is reported once with the fix and never fails the run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from sparring.shared.config import parse_config
from sparring.shared.records import IterationRecord
from sparring.workers.trackers import Trackers, record_values
from tests.wandb_offline import read_wandb_history

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")


def config(tmp_path: Path, report_to: list[str], iterations: int = 2, **trackers: Any) -> Any:
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": "ho"}\n')
    return parse_config(
        {
            "policy": {"path": "some/model"},
            "judge": {"kind": "pairrm", "model": "some/pairrm"},
            "prompts": {"source": "jsonl", "path": str(tmp_path / "p.jsonl")},
            "schedule": {"iterations": iterations},
            "storage": {"run_dir": str(tmp_path / "runs")},
            "report_to": report_to,
            "trackers": {"wandb": {"mode": "offline"}, **trackers},
        }
    )


def record(t: int, loss: float = 0.5) -> IterationRecord:
    return IterationRecord(
        run_id="r-1", iteration=t, policy_version_in=t - 1, policy_version_out=t, num_prompts=8, num_groups=8,
        num_pairs=6, num_dead=0, metrics={"loss/mean": loss / t, "rewards/accuracies": 0.75, "judge/latency_s": 0.01,
        "sync/max_engine_s": 0.2},
        stage_seconds={"generate_judge": 1.5, "train": 2.0, "sync": 0.25, "eval": 0.5},
        eval={"eval/win_rate_vs_iter0": 0.5 + 0.1 * t, "eval/gold/win_rate_vs_iter0": 0.6},
        started_at=0.0, finished_at=1.0,
    )  # fmt: skip


def test_record_values_names_every_part_of_the_record() -> None:
    v = record_values(record(2))
    assert v["loss/mean"] == 0.25 and v["eval/win_rate_vs_iter0"] == pytest.approx(0.7)
    assert v["time/sync_s"] == 0.25 and v["sync/max_engine_s"] == 0.2 and v["judge/latency_s"] == 0.01
    assert v["iteration/pairs"] == 6.0 and v["iteration/policy_version"] == 2.0


def test_every_tracker_holds_every_iteration_and_the_config(tmp_path: Path) -> None:
    cfg = config(tmp_path, ["tensorboard", "mlflow", "wandb"])
    run_dir = tmp_path / "runs" / "r-1"
    run_dir.mkdir(parents=True)
    reports: list[str] = []
    trackers = Trackers.open(cfg, "r-1", run_dir, 1, reports.append)
    assert reports == ["logging to tensorboard, mlflow, wandb"]
    for t in (1, 2):
        trackers.log_iteration(record(t))
    assert trackers.trackers == []  # the last iteration closed them

    # TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("loss/mean")] == [(1, 0.5), (2, 0.25)]
    assert [e.step for e in acc.Scalars("eval/win_rate_vs_iter0")] == [1, 2]
    assert "config/text_summary" in acc.Tags()["tensors"]

    # MLflow: the local SQLite store beside the runs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sparring").experiment_id])
    assert run.data.tags["sparring.run_id"] == "r-1" and run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss/mean")] == [(1, 0.5), (2, 0.25)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/win_rate_vs_iter0")] == [1, 2]
    assert run.data.params["trainer.learning_rate"] == "5.0e-07" and run.data.params["report_to"] == "[tensorboard, mlflow, wandb]"

    # W&B offline run file
    history, run_config = read_wandb_history(run_dir / "wandb")
    assert [(h["_step"], h["loss/mean"]) for h in history] == [(1, 0.5), (2, 0.25)]
    assert [round(h["eval/win_rate_vs_iter0"], 4) for h in history] == [0.6, 0.7]
    assert run_config["trainer"]["learning_rate"] == 5e-07


def test_a_resumed_run_continues_the_same_tracker_runs(tmp_path: Path) -> None:
    cfg = config(tmp_path, ["mlflow", "tensorboard"], iterations=3)
    run_dir = tmp_path / "runs" / "r-1"
    first = Trackers.open(cfg, "r-1", run_dir, 1, lambda m: None)
    first.log_iteration(record(1))  # then the controller is gone (a pause); nothing closes it
    second = Trackers.open(cfg, "r-1", run_dir, 2, lambda m: None)
    for t in (2, 3):
        second.log_iteration(record(t))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sparring").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/mean")] == [1, 2, 3]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/mean")] == [1, 2, 3]


def test_a_tracker_that_cannot_start_is_reported_once_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = config(tmp_path, ["wandb", "mlflow"], mlflow={"tracking_uri": "http://127.0.0.1:1"})
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    reports: list[str] = []
    trackers = Trackers.open(cfg, "r-1", tmp_path / "runs" / "r-1", 1, reports.append)
    assert len(reports) == 2 and trackers.trackers == []
    assert reports[0].startswith("tracker wandb is off for this run: ModuleNotFoundError") and "pip install 'sparring[trackers]'" in reports[0]
    assert reports[1].startswith("tracker mlflow is off for this run") and "MLFLOW_TRACKING_URI" in reports[1]
    trackers.log_iteration(record(1))  # nothing to log to, nothing raised


def test_a_tracker_failing_mid_run_is_dropped_after_one_report(tmp_path: Path) -> None:
    class Broken:
        name = "broken"
        calls = 0

        def log(self, values: dict[str, float], step: int) -> None:
            Broken.calls += 1
            raise OSError("disk full")

        def close(self) -> None:
            pass

    reports: list[str] = []
    trackers = Trackers([Broken()], 3, reports.append)
    trackers.log_iteration(record(1))
    trackers.log_iteration(record(2))
    assert Broken.calls == 1 and reports == ["tracker broken failed and is off for the rest of this run: OSError: disk full"]
