"""Parquet pool uploads (POST /v1/pools takes a Hugging Face dataset's rows): read by the code a `source: hf`
run uses, bad rows refused with row and column named and nothing stored, the column mapping kept with the
pool and applied to the runs that use it (what an upload accepts, a run accepts)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from sparring.services.pools import PoolRejected, PoolStore
from sparring.services.runs import RunService
from sparring.services.settings import ServiceSettings
from sparring.shared.prompts import run_prompts

datasets = pytest.importorskip("datasets")


def parquet(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    datasets.Dataset.from_list(rows).to_parquet(buf)
    return buf.getvalue()


CHATS = [
    {"qid": i, "conversation": [{"role": "user", "content": f"Tell me about topic {i}."}, {"role": "assistant", "content": "ok"}]}
    for i in range(8)
]


def test_parquet_upload_becomes_an_hf_run_pool(tmp_path: Path, redis_client: Any, unique_run_id: str) -> None:
    settings = ServiceSettings(data_dir=tmp_path / unique_run_id)
    service = RunService(settings, redis_client, "redis://unused")
    data = parquet(CHATS)
    columns = {"messages_column": "conversation", "id_column": "qid"}
    pool, created = service.pools.add("chats.parquet", "prompts", data, columns)
    assert created and pool["format"] == "parquet" and pool["num_items"] == 8 and pool["columns"] == columns
    assert service.pools.path(pool["pool_id"]).suffix == ".parquet"
    assert service.pools.add("chats.parquet", "prompts", data, columns)[1] is False  # same content, same pool

    cfg = service.prepare_config(
        {"policy": {"path": "Qwen/Qwen2.5-0.5B-Instruct"}, "judge": {"kind": "pairrm", "model": "llm-blender/PairRM-hf"},
         "eval": {"num_prompts": 2}},
        pool["pool_id"],
    )  # fmt: skip
    assert (cfg.prompts.source, cfg.prompts.messages_column, cfg.prompts.id_column) == ("hf", "conversation", "qid")
    split = run_prompts(cfg)
    assert len(split.train) == 6 and {p.prompt_id for p in split.train + split.heldout} == {str(i) for i in range(8)}


def test_bad_parquet_rows_are_refused_and_nothing_is_stored(tmp_path: Path, redis_client: Any, unique_run_id: str) -> None:
    store = PoolStore(redis_client, tmp_path / unique_run_id)
    rows = [dict(r) for r in CHATS[:3]]
    rows[2] = {"qid": 2, "conversation": [{"role": "user", "content": ""}]}
    before = store.list()
    with pytest.raises(PoolRejected) as err:
        store.add("bad.parquet", "prompts", parquet(rows), {"messages_column": "conversation", "id_column": "qid"})
    assert err.value.problems == ["row 2: conversation.0.content: String should have at least 1 character"]
    with pytest.raises(PoolRejected) as err:
        store.add("bad.parquet", "prompts", parquet(CHATS), {"prompt_column": "question"})
    assert err.value.problems == ["bad.parquet: prompts.prompt_column: no column 'question' (columns: qid, conversation)"]
    with pytest.raises(PoolRejected) as err:
        store.add("p.jsonl", "prompts", b'{"prompt": "x"}\n', {"prompt_column": "x"})
    assert err.value.problems == ["prompt_column: only for parquet uploads (a JSONL pool names its fields itself)"]
    with pytest.raises(PoolRejected, match="not dsat"):
        store.add("d.parquet", "dsat", parquet(CHATS), {})
    assert store.list() == before and not list((tmp_path / unique_run_id).glob("*.parquet"))


def test_api_configs_cannot_point_mlflow_at_a_local_path(tmp_path: Path, redis_client: Any, unique_run_id: str) -> None:
    from sparring.services.runs import RequestError

    service = RunService(ServiceSettings(data_dir=tmp_path / unique_run_id), redis_client, "redis://unused")
    config = {"policy": {"path": "Qwen/Qwen2.5-0.5B-Instruct"}, "judge": {"kind": "pairrm", "model": "llm-blender/PairRM-hf"},
              "prompts": {"source": "hf", "path": "HuggingFaceH4/ultrafeedback_binarized"},
              "report_to": ["mlflow"], "trackers": {"mlflow": {"tracking_uri": "sqlite:////etc/x.db"}}}  # fmt: skip
    with pytest.raises(RequestError) as err:
        service.prepare_config(config, None)
    assert any(p.startswith("trackers.mlflow.tracking_uri: over the API only a tracking server") for p in err.value.problems)
