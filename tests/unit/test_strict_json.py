"""Every JSON the product writes is strict JSON: one NaN loss is null in summary.json, in the SSE
`iteration_done` event and in the iterations endpoint (a strict parser reads each; bare NaN used to reach
summary.json and the event stream, and a browser's JSON.parse dropped the event)."""

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from sparring.services.api.routers import events as events_router
from sparring.services.api.routers import runs as runs_router
from sparring.services.auth import require_read
from sparring.shared.records import IterationRecord
from sparring.workers.controller import RunController


def strict_loads(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def nan_record() -> IterationRecord:
    now = time.time()
    return IterationRecord(
        run_id="r1",
        iteration=1,
        policy_version_in=0,
        policy_version_out=1,
        num_prompts=4,
        num_groups=4,
        num_pairs=4,
        num_dead=0,
        metrics={"loss/mean": math.nan, "rewards/margins": math.inf, "rewards/accuracies": 0.5},
        eval={"eval/kl_vs_iter0": -math.inf, "eval/win_rate_vs_iter0": 0.6},
        stage_seconds={"train": 1.0},
        started_at=now,
        finished_at=now,
    )


class FakeStore:
    def __init__(self, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        self._events = events

    def iterations(self, run_id: str) -> list[IterationRecord]:
        return [nan_record()]

    def events(self, run_id: str, after: str, count: int) -> list[tuple[str, str, dict[str, Any]]]:
        out = [e for e in self._events if after == "0-0" or e[0] > after]
        return out[:count]

    def get_run(self, run_id: str) -> dict[str, Any]:
        return {"state": "completed"}


class FakeService:
    def __init__(self) -> None:
        record = nan_record()
        self.store = FakeStore([("1-0", "iteration_done", {"iteration": 1, "record": record.model_dump(mode="json")})])

    def view(self, run_id: str) -> dict[str, Any]:
        return {"run_id": run_id}

    def iterations(self, run_id: str) -> list[IterationRecord]:
        return self.store.iterations(run_id)


def client() -> TestClient:
    app = FastAPI()
    app.state.service = FakeService()
    app.dependency_overrides[require_read] = lambda: "read"
    app.include_router(runs_router.router)
    app.include_router(events_router.router)
    return TestClient(app)


def test_summary_json_is_strict_with_a_nan_loss(tmp_path: Path) -> None:
    controller = SimpleNamespace(
        run_id="r1", config_json="{}", checkpoint="ck", run_dir=tmp_path, store=FakeStore([])
    )
    summary = RunController.write_summary(controller)  # type: ignore[arg-type]
    assert math.isnan(summary["iterations"][0]["loss"])  # the returned dict keeps the float
    written = strict_loads((tmp_path / "summary.json").read_text())
    row = written["iterations"][0]
    assert row["loss"] is None and row["rewards/margins"] is None and row["rewards/accuracies"] == 0.5
    assert row["eval"] == {"eval/kl_vs_iter0": None, "eval/win_rate_vs_iter0": 0.6}


def test_sse_iteration_done_event_is_strict_json() -> None:
    with client() as c:
        body = c.get("/v1/runs/r1/events", params={"max_seconds": 5}).text
    data = [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
    assert len(data) == 2  # iteration_done, then end
    event = strict_loads(data[0])
    assert event["record"]["metrics"]["loss/mean"] is None
    assert event["record"]["eval"]["eval/kl_vs_iter0"] is None
    assert strict_loads(data[1]) == {"state": "completed"}


def test_iterations_endpoint_answers_null_never_500() -> None:
    with client() as c:
        r = c.get("/v1/runs/r1/iterations")
    assert r.status_code == 200
    (it,) = strict_loads(r.text)["iterations"]
    assert it["metrics"] == {"loss/mean": None, "rewards/margins": None, "rewards/accuracies": 0.5}
    assert it["eval"]["eval/kl_vs_iter0"] is None
