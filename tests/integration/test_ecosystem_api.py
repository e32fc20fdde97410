"""The API as the ecosystem meets it, on a live server (uvicorn, real Redis, a `ray start` head):

- a Python client generated from the served /openapi.json by openapi-python-client (at test time, so the
  client always matches the schema: nothing generated is committed) uploads a parquet pool with a messages
  column, creates a run from it, polls it to completion and exports its pairs as parquet;
- the Grafana dashboard's metric and label names against the live /metrics;
- `sparring status --json` prints the API's own objects.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sparring.tasks.arena.rules import arena_prompts
from tests.unit.test_grafana import check, dashboard_queries

pytestmark = [pytest.mark.integration, pytest.mark.slow]

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
GENERATOR = Path(sys.executable).parent / "openapi-python-client"


def generate_client(url: str, out: Path) -> Any:
    """openapi-python-client over the live /openapi.json; returns the imported package."""
    if not GENERATOR.exists():
        pytest.skip("openapi-python-client is not installed (dev extra)")
    schema = out / "openapi.json"
    schema.write_text(httpx.get(f"{url}/openapi.json", timeout=30).text)
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its ruff post-hook
    proc = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(schema), "--output-path", str(out / "sparring_api_client"), "--meta", "none"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("sparring_api_client")
    finally:
        sys.path.remove(str(out))


def small_run() -> dict[str, Any]:
    from tests.integration.conftest import SMALL_ARENA_RUN

    return {
        **SMALL_ARENA_RUN,
        "policy": {"path": "arena"},
        "judge": {"kind": "arena_oracle"},
        "schedule": {"iterations": 1, "prompts_per_iteration": 24},
        "eval": {"num_prompts": 8, "prompts": {"source": "arena_heldout"}},
    }


def test_generated_client_uploads_a_parquet_pool_runs_and_exports(api_server, tmp_path: Path) -> None:
    client_pkg = generate_client(api_server.url, tmp_path)
    api = importlib.import_module("sparring_api_client.api")
    pools = importlib.import_module("sparring_api_client.api.pools.upload_pool_v1_pools_post")
    create = importlib.import_module("sparring_api_client.api.runs.create_run_v1_runs_post")
    get_run = importlib.import_module("sparring_api_client.api.runs.get_run_v1_runs_run_id_get")
    export = importlib.import_module("sparring_api_client.api.pairs.export_pairs_v1_runs_run_id_pairs_export_get")
    models = importlib.import_module("sparring_api_client.models")
    types = importlib.import_module("sparring_api_client.types")
    assert api is not None

    prompts = arena_prompts("train")[:32]
    rows = [{"qid": p.prompt_id, "messages": [{"role": "user", "content": p.prompt}]} for p in prompts]
    buf = io.BytesIO()
    datasets.Dataset.from_list(rows).to_parquet(buf)
    c = client_pkg.AuthenticatedClient(base_url=api_server.url, token=api_server.admin_token, timeout=httpx.Timeout(60))

    r = pools.sync_detailed(
        client=c, body=types.File(payload=io.BytesIO(buf.getvalue()), file_name="arena.parquet"), name="arena.parquet",
        messages_column="messages", id_column="qid",
    )  # fmt: skip
    assert r.status_code in (200, 201), r.content
    pool = r.parsed
    assert pool.format_ == "parquet" and pool.num_items == 32

    bad = [dict(rows[0]), {"qid": "x", "messages": [{"role": "assistant", "content": "no user turn"}]}]
    buf = io.BytesIO()
    datasets.Dataset.from_list(bad).to_parquet(buf)
    r = pools.sync_detailed(client=c, body=types.File(payload=io.BytesIO(buf.getvalue())), name="bad", messages_column="messages", id_column="qid")
    assert r.status_code == 422
    assert json.loads(r.content)["problems"] == [
        "row 1: column 'messages' must hold a conversation ending with a user message (trailing assistant turns are dropped)"
    ]

    run = create.sync(client=c, body=models.CreateRun.from_dict({"config": small_run(), "pool_id": pool.pool_id}))
    run_id = run.run_id
    deadline = time.monotonic() + 600
    while (state := get_run.sync(run_id=run_id, client=c).state) not in ("completed", "failed"):
        assert time.monotonic() < deadline, f"run {run_id} still {state}"
        time.sleep(1)
    assert state == "completed", get_run.sync(run_id=run_id, client=c).reason

    fmt = models.ExportPairsV1RunsRunIdPairsExportGetFileFormat
    r = export.sync_detailed(run_id=run_id, client=c, file_format=fmt.PARQUET, format_=models.ExportPairsV1RunsRunIdPairsExportGetFormat.CONVERSATIONAL)
    assert r.status_code == 200 and int(r.headers["x-pairs-exported"]) > 0
    table = pq.read_table(io.BytesIO(r.content)).to_pylist()
    assert len(table) == int(r.headers["x-pairs-exported"])
    assert {row["prompt"][-1]["content"] for row in table} <= {p.prompt for p in prompts}

    # the dashboard's queries against this server's /metrics (the run above has a recorded iteration)
    with api_server.admin as http:
        metrics = http.get("/metrics").text
    assert [p for p in check(metrics, dashboard_queries()) if "on no panel" not in p] == []

    # `sparring status --json`: the API's own objects
    env = {**os.environ, "SPARRING_TOKEN": api_server.read_token, "SPARRING_API_URL": api_server.url}
    out = subprocess.run([sys.executable, "-m", "sparring.services.cli", "status", run_id, "--json"],
                         capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["run"]["run_id"] == run_id and [it["iteration"] for it in shown["iterations"]] == [1]
