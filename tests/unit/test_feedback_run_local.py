"""Feedback reaching a run's trainer, driven in-process (no Ray: `LocalRuntime`, real Redis, a tiny Llama, the
transformers backend, a density-ratio judge): a KTO run with the pointwise recipe trains each iteration on its
judge's thumbs up/down plus the feedback posted for it (each posted item once, in the next iteration), and a
DPO run mixes posted feedback in as pairs (a conversation's up answer over its down answer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparring.shared.feedback import parse_feedback
from sparring.shared.queue import StreamQueue
from sparring.shared.store import RunStore
from tests.unit.test_controller_local import config, controller, models, pool  # noqa: F401  (fixtures)

POSTED = [
    {"prompt": "tell me about owls.", "answer": "owls are nice and owls are old.", "label": True},
    {"prompt": "tell me about owls.", "answer": "bread bread bread", "label": False},
    {"prompt": "tell me about tea.", "answer": "tea is old.", "label": "up", "weight": 2},
]


def _run(cfg: Any, run_id: str, redis_url: str, redis_client: Any, tmp_path: Path, posted: list[dict]) -> list[Any]:
    run_dir = tmp_path / run_id
    run_dir.mkdir()
    RunStore(redis_client).create_run(run_id, cfg.model_dump(mode="json"), str(run_dir))
    queue = StreamQueue(redis_client, run_id)
    items = parse_feedback(enumerate(posted, start=1), run_id)
    assert queue.put_many("feedback", items) == len(items)  # what POST /v1/runs/{id}/feedback does
    assert queue.put_many("feedback", items) == 0
    controller(cfg, run_id, redis_url, run_dir).run()
    return RunStore(redis_client).iterations(run_id)


def test_kto_trains_on_pointwise_labels_and_each_posted_item_once(
    models: dict[str, str], pool: str, tmp_path: Path, redis_url: str, redis_client: Any, unique_run_id: str  # noqa: F811
) -> None:
    cfg = config(tmp_path, models, pool)
    cfg = cfg.model_validate({
        **cfg.model_dump(mode="json"),
        "algorithm": {"objective": "kto", "pairs": "pointwise", "label_threshold": 0.0},
        "schedule": {"iterations": 2, "prompts_per_iteration": 8},
        "eval": {"enabled": False},
    })  # fmt: skip
    records = _run(cfg, unique_run_id, redis_url, redis_client, tmp_path, POSTED)
    assert [r.iteration for r in records] == [1, 2]
    first, second = records[0].metrics, records[1].metrics
    assert first["feedback/posted"] == 3 and second["feedback/posted"] == 0  # trained once, then acknowledged
    for r in records:
        m = r.metrics
        assert m["feedback/judged"] == 16 and m["feedback/from_pairs"] == 0  # 8 prompts x K=2, each labelled
        assert m["train/examples"] == m["train/desirable"] + m["train/undesirable"] == m["feedback/posted"] + 16
        assert r.num_pairs == m["train/examples"] and "kl" in m and m["train/steps"] > 0
    assert StreamQueue(redis_client, unique_run_id).outstanding("feedback", "trainer") == 0


def test_dpo_pairs_a_conversations_up_and_down_feedback(
    models: dict[str, str], pool: str, tmp_path: Path, redis_url: str, redis_client: Any, unique_run_id: str  # noqa: F811
) -> None:
    cfg = config(tmp_path, models, pool)
    cfg = cfg.model_validate({**cfg.model_dump(mode="json"), "schedule": {"iterations": 1, "prompts_per_iteration": 8},
                              "eval": {"enabled": False}})  # fmt: skip
    (record,) = _run(cfg, unique_run_id, redis_url, redis_client, tmp_path, POSTED)
    m = record.metrics
    assert (m["feedback/posted"], m["feedback/pairs"], m["feedback/unpaired"]) == (3, 1, 1)  # owls: up > down; tea alone
    assert m["train/pairs"] == record.num_pairs - m.get("heldout/pairs_withheld", 0)  # held-out judged pairs are not trained
    assert StreamQueue(redis_client, unique_run_id).outstanding("feedback", "trainer") == 0
