"""A run's history outside Redis (shared/history.py, `RunStore.archive` / `trim_history`): real Redis, real
files, the real API app (no scheduler, no Ray).

- after 30 iterations with a window of 5, Redis holds 5 records and the events of the last iterations, and the
  API (`GET /iterations`, `GET /v1/runs/{id}`, the events stream from the start and from a cursor, /metrics)
  still answers with all 30 and every event, once each, in order;
- a restarted controller (`RunController.restore`) continues after the last iteration, with or without the
  run's records in Redis, and `summary.json` lists every iteration;
- the disk writer never duplicates an iteration: archived twice, after a crash between Redis and the file,
  with a half-written last line, or by two writers at once.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from sparring.services.api.app import create_app
from sparring.services.settings import ServiceSettings
from sparring.shared import history, keys
from sparring.shared.config import parse_config
from sparring.shared.events import emit
from sparring.shared.records import IterationRecord, PreferencePair
from sparring.shared.store import RunStore
from sparring.workers.controller import RunController
from sparring.workers.groups import LocalRuntime

pytestmark = pytest.mark.integration

WINDOW = 5


def record(run_id: str, t: int, **metrics: float) -> IterationRecord:
    return IterationRecord(
        run_id=run_id, iteration=t, policy_version_in=t - 1, policy_version_out=t, num_prompts=8, num_groups=8,
        num_pairs=10 + t, num_dead=0, metrics={"loss/mean": 0.7 - t / 100, **metrics},
        stage_seconds={"train": 1.0}, checkpoint="", started_at=1000.0 + t, finished_at=1001.0 + t,
    )  # fmt: skip


def run_iterations(store: RunStore, run_id: str, first: int, last: int) -> None:
    """What the controller does per iteration: progress events, the record (Redis, then disk), the window."""
    for t in range(first, last + 1):
        for step in range(3):
            emit(store.client, run_id, "progress", stage="generate", iteration=t, done=step, total=3)
        store.put_iteration(record(run_id, t))
        store.archive(run_id)
        store.trim_history(run_id, WINDOW)
        emit(store.client, run_id, "iteration_done", iteration=t)


@pytest.fixture
def run(redis_client: redis.Redis, unique_run_id: str, tmp_path: Path):
    store = RunStore(redis_client)
    cfg = parse_config({"name": "history", "policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"},
                        "prompts": {"source": "arena"}, "storage": {"history_window_iterations": WINDOW}})  # fmt: skip
    store.create_run(unique_run_id, cfg.model_dump(mode="json"), str(tmp_path / unique_run_id))
    yield store, unique_run_id, tmp_path / unique_run_id
    store.delete_run(unique_run_id)


def test_the_api_serves_every_iteration_and_event_after_the_early_ones_left_redis(
    run, redis_client, redis_url, tmp_path
) -> None:
    store, run_id, run_dir = run
    run_iterations(store, run_id, 1, 30)
    # Redis holds the window only
    assert sorted(int(k) for k in redis_client.hkeys(keys.iterations(run_id))) == list(range(26, 31))
    # 5 events for each of iterations 26-30 (3 progress, `iteration`, `iteration_done`), but iteration 30's
    # `iteration_done`, emitted after the trim, with iteration 25's `iteration_done` trimmed in its place
    in_redis = store.events(run_id, after="0-0", count=10_000, archived=False)
    assert len(in_redis) == 25 and in_redis[0][1:] == (
        "progress",
        {**in_redis[0][2], "iteration": 26, "done": 0},
    )
    # the disk holds everything up to the last archive, once
    rows = history.read_rows(run_dir / history.ITERATIONS_FILE)
    assert [r["iteration"] for r in rows] == list(range(1, 31))

    settings = ServiceSettings(api_tokens=["adm"], data_dir=str(tmp_path / "svc"))
    with TestClient(create_app(settings, redis_client, redis_url, scheduler=False)) as c:
        c.headers["Authorization"] = "Bearer adm"
        body = c.get(f"/v1/runs/{run_id}/iterations").json()
        assert [r["iteration"] for r in body["iterations"]] == list(range(1, 31))
        assert [r["num_pairs"] for r in body["iterations"]] == [10 + t for t in range(1, 31)]
        assert body["iterations"][0] == record(run_id, 1).model_dump(mode="json")
        assert c.get(f"/v1/runs/{run_id}").json()["iterations_done"] == 30
        store.set_state(run_id, "completed")  # the events stream ends once the run is at rest

        def sse(after: str) -> list[tuple[str, str, dict]]:
            text = c.get(f"/v1/runs/{run_id}/events", params={"after": after, "max_seconds": 5}).text
            out = []
            for block in text.split("\n\n"):
                fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
                if "id" in fields:
                    out.append((fields["id"], fields["event"], json.loads(fields["data"])))
            return out

        everything = sse("0-0")
        kinds = [k for _, k, _ in everything]
        assert kinds.count("run_created") == 1 and kinds.count("completed") == 0 and kinds[-1] == "state"
        assert [d["iteration"] for _, k, d in everything if k == "iteration"] == list(range(1, 31))
        assert [d["iteration"] for _, k, d in everything if k == "iteration_done"] == list(range(1, 31))
        assert sum(k == "progress" for k in kinds) == 90
        ids = [history.entry_key(e) for e, _, _ in everything]
        assert ids == sorted(set(ids))  # in stream order, none twice
        # from a cursor on disk: the rest, across the disk/Redis boundary, once
        middle = everything[40][0]
        assert sse(middle) == everything[41:]
        # paging by `count` across the boundary gives the same sequence
        paged, cursor = [], "0-0"
        while batch := store.events(run_id, after=cursor, count=7):
            paged.extend(batch)
            cursor = batch[-1][0]
        assert [e for e, _, _ in paged] == [e for e, _, _ in everything]
        metrics = c.get("/metrics").text
        assert f'sparring_iterations_total{{run="{run_id}"}} 30.0' in metrics
        assert f'sparring_pairs_total{{run="{run_id}"}} {sum(10 + t for t in range(1, 31))}.0' in metrics


def test_a_restarted_controller_continues_after_the_last_iteration(run, redis_client, redis_url) -> None:
    store, run_id, run_dir = run
    run_iterations(store, run_id, 1, 12)
    cfg_json = json.dumps(store.get_run(run_id)["config"])

    def restored() -> tuple[int, int]:
        controller = RunController(run_id, cfg_json, redis_url, str(run_dir), "base-model", LocalRuntime())
        try:
            nxt = controller.restore()
            summary = controller.write_summary()
            assert [row["iteration"] for row in summary["iterations"]] == list(range(1, nxt))
            return nxt, controller.version
        finally:
            controller.client.close()

    assert restored() == (13, 12)
    # a crash after the record reached Redis and before the file: the restart appends it, once
    store.put_iteration(record(run_id, 13))
    assert history.last_row(run_dir / history.ITERATIONS_FILE)["iteration"] == 12
    assert restored() == (14, 13)
    assert [r["iteration"] for r in history.read_rows(run_dir / history.ITERATIONS_FILE)] == list(
        range(1, 14)
    )
    # Redis lost the run's records (not its meta): the files still say where the run is
    redis_client.delete(keys.iterations(run_id))
    assert store.last_complete_iteration(run_id) == 13
    assert [r.iteration for r in store.iterations(run_id)] == list(range(1, 14))
    assert restored() == (14, 13)


def test_the_disk_writer_never_duplicates_an_iteration(run, redis_client) -> None:
    store, run_id, run_dir = run
    path = run_dir / history.ITERATIONS_FILE
    for t in range(1, 4):
        store.put_iteration(record(run_id, t, **{"loss/nan": math.nan}))
    assert store.archive(run_id) == (3, 4)  # and the events: run_created, 3 x iteration
    assert store.archive(run_id) == (0, 0)  # nothing new
    # a write cut short: half a line at the end is ignored by readers and cut off by the next append
    with path.open("ab") as f:
        f.write(b'{"iteration": 4, "run_id": "half a li')
    assert [r.iteration for r in store.iterations(run_id)] == [1, 2, 3]
    store.put_iteration(record(run_id, 4))
    assert store.archive(run_id) == (1, 1)
    lines = path.read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2, 3, 4]
    # strict JSON on disk; a NaN metric reads back as NaN
    assert "NaN" not in path.read_text() and json.loads(lines[0])["metrics"]["loss/nan"] is None
    redis_client.hdel(keys.iterations(run_id), "1")
    assert math.isnan(store.iterations(run_id)[0].metrics["loss/nan"])
    # two writers at once (an old controller and its replacement): each row once
    for t in range(5, 40):
        store.put_iteration(record(run_id, t))
    threads = [threading.Thread(target=store.archive, args=(run_id,)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [r["iteration"] for r in history.read_rows(path)] == list(range(1, 40))
    ev = history.read_rows(run_dir / history.EVENTS_FILE)
    assert len({r["id"] for r in ev}) == len(ev) == len(redis_client.xrange(keys.events(run_id)))
    # rows out of order are refused, not written
    with pytest.raises(ValueError, match="increasing order"):
        history.append_rows(
            path,
            [record(run_id, 41).model_dump(mode="json"), record(run_id, 40).model_dump(mode="json")],
            history.iteration_key,
        )
    assert history.last_row(path)["iteration"] == 39
    # a complete last line that is not JSON: readers leave it out, the writer refuses to guess what it held
    with path.open("ab") as f:
        f.write(b"garbage\n")
    assert [r["iteration"] for r in history.read_rows(path)] == list(range(1, 40))
    store.put_iteration(record(run_id, 40))
    with pytest.raises(ValueError, match="iterations.jsonl: its last line is not a JSON object"):
        store.archive(run_id)


def test_trimming_archives_first_and_keeps_the_newest_iterations(run, redis_client) -> None:
    store, run_id, run_dir = run
    run_iterations(store, run_id, 1, 8)
    before = time.time()
    emit(redis_client, run_id, "progress", stage="generate", iteration=9, done=0, total=3)  # not archived yet
    with pytest.raises(ValueError, match="keep_iterations"):
        store.trim_history(run_id, 0)
    removed, trimmed = store.trim_history(run_id, 1)  # archives first: iterations 1-7 leave Redis
    assert removed == 4 and trimmed > 0
    assert [int(k) for k in redis_client.hkeys(keys.iterations(run_id))] == [8]
    on_disk = {r["id"] for r in history.read_rows(run_dir / history.EVENTS_FILE)}
    assert {e.decode() for e, _ in redis_client.xrange(keys.events(run_id))} <= on_disk
    last = store.events(run_id, count=10_000)[-1]
    assert last[1] == "progress" and last[2]["iteration"] == 9 and last[2]["ts"] >= before


def test_exports_and_recent_pairs_include_the_pairs_pruned_from_redis(run, redis_client, redis_url, tmp_path) -> None:
    """The pairs stream keeps `storage.pairs_retention_iterations` iterations; the pruned ones are in
    `<run dir>/archived_pairs.jsonl`, and `GET /pairs/export` (all, one iteration, a sample) and `GET /pairs`
    still see every pair of the run, once each."""
    from sparring.shared.queue import StreamQueue
    from sparring.workers.actors import TRAINER_GROUP
    from tests.helpers import random_pairs

    store, run_id, run_dir = run
    queue = StreamQueue(redis_client, run_id)
    queue.ensure_group("pairs", TRAINER_GROUP)
    for t in (1, 2, 3):
        for p in random_pairs(t, 4):
            queue.put("pairs", p.model_copy(update={"run_id": run_id, "iteration": t, "prompt_id": f"{p.prompt_id}-{t}"}))
    for e in queue.read("pairs", TRAINER_GROUP, "trainer", PreferencePair, count=100):
        queue.complete("pairs", TRAINER_GROUP, e.entry_id, None, [])
    assert queue.prune("pairs", TRAINER_GROUP, before_iteration=3, archive=run_dir / history.PAIRS_FILE) == 8
    assert queue.length("pairs") == 4  # iteration 3's; 1 and 2 are on disk only

    settings = ServiceSettings(api_tokens=["adm"], data_dir=str(tmp_path / "svc"))
    with TestClient(create_app(settings, redis_client, redis_url, scheduler=False)) as c:
        c.headers["Authorization"] = "Bearer adm"
        rows = [json.loads(line) for line in c.get(f"/v1/runs/{run_id}/pairs/export").text.splitlines()]
        assert len(rows) == 12
        assert len([json.loads(x) for x in c.get(f"/v1/runs/{run_id}/pairs/export", params={"iteration": 1}).text.splitlines()]) == 4
        sample = c.get(f"/v1/runs/{run_id}/pairs/export", params={"sample": 6, "seed": 1}).text.splitlines()
        assert len(sample) == 6
        recent = c.get(f"/v1/runs/{run_id}/pairs", params={"limit": 100}).json()["pairs"]
        assert [p["iteration"] for p in recent] == [3] * 4 + [2] * 4 + [1] * 4  # newest first, across the boundary
