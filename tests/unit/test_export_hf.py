"""Exports the other way: a run's pairs as parquet (`file_format=parquet`) and as a `save_to_disk` directory
(`sparring export --to dataset`), in TRL's preference format, standard and conversational: the same rows as
the JSONL export, loadable by `datasets.load_from_disk`, and TRL's DPOTrainer trains a step on one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sparring.services.api.routers import pairs as pairs_router
from sparring.services.auth import require_read
from sparring.shared.hf_data import save_dataset_dir
from tests.unit.test_export import CHAT, PAIRS, FakeService, export, pair

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")


def export_parquet(pairs: list[Any], **params: Any) -> tuple[bytes, dict[str, str]]:
    app = FastAPI()
    app.state.service = FakeService(pairs)
    app.dependency_overrides[require_read] = lambda: "read"
    app.include_router(pairs_router.router)
    with TestClient(app) as c:
        r = c.get("/v1/runs/r1/pairs/export", params={**params, "file_format": "parquet"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.apache.parquet"
    return r.content, dict(r.headers)


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_parquet_and_dataset_dir_hold_the_jsonl_rows(tmp_path: Path, fmt: str) -> None:
    pairs = [*PAIRS, pair(9, prompt=CHAT[-1]["content"], messages=CHAT)]
    rows, headers = export(pairs, format=fmt)
    body, pheaders = export_parquet(pairs, format=fmt)
    assert pheaders["x-pairs-exported"] == headers["x-pairs-exported"] == str(len(rows))
    assert pheaders["x-pairs-left-out-truncated"] == headers["x-pairs-left-out-truncated"]
    assert pq.read_table(io.BytesIO(body)).to_pylist() == rows

    (tmp_path / "pairs.parquet").write_bytes(body)
    assert save_dataset_dir(tmp_path / "pairs.parquet", tmp_path / "ds") == len(rows)
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert ds.column_names == ["prompt", "chosen", "rejected", "chosen_finish_reason", "rejected_finish_reason"]
    assert ds.to_list() == rows
    if fmt == "conversational":
        assert ds[len(rows) - 1]["prompt"] == CHAT


def test_an_empty_export_keeps_its_columns() -> None:
    body, headers = export_parquet([])
    table = pq.read_table(io.BytesIO(body))
    assert table.num_rows == 0 and headers["x-pairs-exported"] == "0"
    assert table.column_names == ["prompt", "chosen", "rejected", "chosen_finish_reason", "rejected_finish_reason"]


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_trl_dpo_trainer_trains_a_step_on_the_exported_dataset(tmp_path: Path, fmt: str) -> None:
    trl = pytest.importorskip("trl", reason="TRL comes with the bench extra: pip install -e '.[cpu,bench]'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers import make_tiny_checkpoint

    pairs = [pair(i, prompt=CHAT[-1]["content"], messages=CHAT) if fmt == "conversational" else pair(i) for i in range(4)]
    body, _ = export_parquet(pairs, format=fmt)
    (tmp_path / "pairs.parquet").write_bytes(body)
    save_dataset_dir(tmp_path / "pairs.parquet", tmp_path / "ds")
    ds = datasets.load_from_disk(str(tmp_path / "ds"))

    ckpt = make_tiny_checkpoint(tmp_path / "model", seed=0)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(ckpt))
    before = {k: v.clone() for k, v in model.named_parameters()}
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-2,
        report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, bf16=False,
    )  # fmt: skip
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    out = trainer.train()
    assert out.global_step == 1
    assert any(not (before[k] == v).all() for k, v in model.named_parameters())
