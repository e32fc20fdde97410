"""Human feedback against the running service (uvicorn, real Redis and Ray; issue 13): `POST
/v1/runs/{id}/feedback` takes thumbs up/down on single answers as JSON items or a JSONL upload, refuses a batch
with any bad item naming every bad line (or item) and field, stores nothing of a refused batch, and stores a
re-posted item once; `sparring feedback RUN FILE.jsonl` does the same from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparring.shared import keys
from sparring.shared.queue import StreamQueue
from sparring.shared.records import LabelledAnswer
from sparring.shared.store import RunStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = [
    {"prompt": "Tell me about tides.", "answer": "Tides come from the moon, thank you for asking.", "label": True},
    {"prompt": "Tell me about tides.", "answer": "tides tides tides", "label": "down"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "answer": "Hello!",
     "label": "up", "weight": 0.5},
]  # fmt: skip
BAD_LINES = (
    b'{"prompt": "ok", "answer": "fine", "label": true}\n'  # 1: valid, yet not stored: the batch is refused
    b'{"prompt": "ok", "answer": "fine", "label": "maybe"}\n'  # 2
    b'{"prompt": "ok", "label": false}\n'  # 3
    b"not json\n"  # 4
    b'{"messages": [{"role": "assistant", "content": "x"}], "answer": "a", "label": true}\n'  # 5
    b'{"prompt": "ok", "answer": "a", "label": true, "weight": -1}\n'  # 6
    b'{"prompt": "ok", "answer": "a", "label": true, "score": 3}\n'  # 7
)
BAD_PROBLEMS = [
    "line 2: field 'label' must be true, false, 'up' or 'down', got 'maybe'",
    "line 3: field 'answer' must be a non-empty string, got None",
    "line 4: not valid JSON (Expecting value)",
    "line 5: field 'messages' must end with a user message",
    "line 6: field 'weight' must be in (0, 1000], got -1",
    "line 7: unknown field(s) 'score' (expected prompt or messages, answer, label, weight)",
]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def feedback_run(redis_client, unique_run_id: str) -> str:
    store = RunStore(redis_client)
    store.create_run(unique_run_id, {"name": "fb", "algorithm": {"objective": "kto"}, "schedule": {"iterations": 3}}, "/tmp/fb")
    store.set_state(unique_run_id, "paused", reason="test")  # at rest: the scheduler leaves it alone
    return unique_run_id


def test_feedback_is_validated_whole_and_stored_once(api_server, redis_client, feedback_run: str) -> None:
    url = f"/v1/runs/{feedback_run}/feedback"
    stream = keys.stream(feedback_run, "feedback")
    jsonl = {"Content-Type": "application/x-ndjson"}
    with api_server.admin as c:
        r = c.post("/v1/runs/no-such-run/feedback", json={"items": GOOD})
        assert r.status_code == 404 and r.json()["detail"] == "run 'no-such-run' not found"

        r = c.post(url, content=BAD_LINES, headers=jsonl)
        assert r.status_code == 422
        assert r.json()["detail"] == "6 bad feedback line(s); nothing was stored"
        assert r.json()["problems"] == BAD_PROBLEMS
        assert redis_client.xlen(stream) == 0  # line 1 was valid: still nothing partially stored

        r = c.post(url, json={"items": [GOOD[0], {**GOOD[1], "label": None}, {"answer": "x", "label": True}]})
        assert r.status_code == 422 and r.json()["problems"] == [
            "item 2: field 'label' must be true, false, 'up' or 'down', got None",
            "item 3: needs exactly one of 'prompt' (a string) or 'messages' (a conversation)",
        ]
        huge = "1" + "0" * 400  # a JSON integer past any float: refused by field, not a 500
        r = c.post(url, content=b'{"prompt": "ok", "answer": "a", "label": true, "weight": ' + huge.encode() + b"}\n",
                   headers=jsonl)  # fmt: skip
        assert r.status_code == 422 and r.json()["problems"] == [f"line 1: field 'weight' must be in (0, 1000], got {huge[:80]}"]
        r = c.post(url, json=GOOD)  # a bare list, not {"items": [...]}
        assert r.status_code == 422 and "exactly one field 'items'" in r.json()["problems"][0]
        assert redis_client.xlen(stream) == 0

        r = c.post(url, content=_jsonl(GOOD), headers=jsonl)
        assert r.status_code == 201, r.text
        assert r.json() == {"run_id": feedback_run, "items": 3, "stored": 3, "duplicates": 0}
        r = c.post(url, json={"items": [GOOD[2], GOOD[0]]})  # the same items again, as JSON: stored once
        assert r.status_code == 201 and r.json() == {"run_id": feedback_run, "items": 2, "stored": 0, "duplicates": 2}
        r = c.post(url, json={"items": [{**GOOD[0], "label": False}]})  # the opposite label is another item
        assert r.status_code == 201 and r.json()["stored"] == 1
        assert c.get(f"/v1/runs/{feedback_run}/queues").json()["queues"]["feedback"] == 4  # not trained on yet
    with api_server.client(api_server.read_token) as ro:
        assert ro.post(url, json={"items": GOOD}).status_code == 403
    records = [rec for _, rec in StreamQueue(redis_client, feedback_run).read_all("feedback", LabelledAnswer)]
    assert [(a.answer.text, a.label, a.weight, a.policy_version) for a in records] == [
        (GOOD[0]["answer"], True, 1.0, None), (GOOD[1]["answer"], False, 1.0, None), ("Hello!", True, 0.5, None),
        (GOOD[0]["answer"], False, 1.0, None),
    ]  # fmt: skip
    assert records[2].prompt == "Hi" and records[2].messages == GOOD[2]["messages"]
    assert records[0].prompt_id == records[1].prompt_id != records[2].prompt_id  # one id per conversation

    # a completed run never trains again: feedback to it is refused (409), not stored unused
    RunStore(redis_client).set_state(feedback_run, "completed", reason="test")
    with api_server.admin as c:
        r = c.post(url, json={"items": [{**GOOD[1], "answer": "another answer"}]})
        assert r.status_code == 409, r.text
        assert r.json()["detail"].startswith(f"run '{feedback_run}' is completed: it will not train again")
    assert redis_client.xlen(stream) == 4


def test_cli_posts_a_file_and_prints_every_bad_line(api_server, redis_client, feedback_run: str, tmp_path: Path) -> None:
    env = {**api_server.env, "SPARRING_API_URL": api_server.url, "SPARRING_TOKEN": api_server.admin_token}

    def cli(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sparring.services.cli", "feedback", feedback_run, str(path)],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip

    bad, good = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    bad.write_bytes(BAD_LINES)
    good.write_bytes(_jsonl(GOOD))
    out = cli(bad)
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["error: 6 bad feedback line(s); nothing was stored", *(f"  {p}" for p in BAD_PROBLEMS)]
    assert redis_client.xlen(keys.stream(feedback_run, "feedback")) == 0
    out = cli(good)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"run {feedback_run}: 3 feedback item(s), 3 stored, 0 posted before"
    assert cli(good).stdout.strip().endswith("0 stored, 3 posted before")
