"""The real API (uvicorn on loopback, real Redis and Ray): uploads, refusals, auth, a run's whole life.

Each refusal must name what is wrong. The lifecycle test uploads a pool of arena prompts, runs a small
arena run from it, pauses and resumes it, exports its pairs in TRL's format and downloads a checkpoint
that transformers loads.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from sparring.shared import keys
from sparring.tasks.arena.rules import arena_prompts

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_health_is_open_everything_else_needs_a_token(api_server) -> None:
    with api_server.client() as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        ready = anon.get("/readyz").json()
        assert ready["checks"] == {"redis": "ok", "ray": "ok"}
        for path in ("/v1/runs", "/v1/pools", "/metrics", "/v1/runs/nope/iterations"):
            r = anon.get(path)
            assert r.status_code == 401, path
            assert "Authorization" in r.json()["detail"]
    with api_server.client("not-a-token") as bad:
        r = bad.get("/v1/runs")
        assert r.status_code == 401 and r.json()["detail"] == "invalid token"
        assert r.headers["www-authenticate"].startswith("Bearer")
    with api_server.client(api_server.read_token) as ro:
        assert ro.get("/v1/runs").status_code == 200
        r = ro.post("/v1/runs", json={"config": {}})
        assert r.status_code == 403 and "read-only token" in r.json()["detail"]
        r = ro.post("/v1/pools", content=b'{"prompt": "x"}\n')
        assert r.status_code == 403


def test_pool_upload_validates_every_line_and_stores_nothing_partial(api_server) -> None:
    with api_server.admin as c:
        before = c.get("/v1/pools").json()["pools"]
        bad = b'{"id": "a", "prompt": "fine"}\nnot json\n{"id": "a", "prompt": "dup id"}\n{"prompt": ""}\n'
        r = c.post("/v1/pools", params={"name": "broken"}, content=bad)
        assert r.status_code == 422
        body = r.json()
        assert "nothing was stored" in body["detail"]
        assert body["problems"] == [
            "line 2: not valid JSON (Expecting value)",
            "line 3: duplicate id 'a' (first on line 1)",
            "line 4: field 'prompt' must be a non-empty string",
        ]
        assert c.get("/v1/pools").json()["pools"] == before

        good = _jsonl([{"id": "p1", "prompt": "same"}, {"id": "p2", "prompt": "same"}, {"messages": [{"role": "user", "content": "hi"}]}])
        r = c.post("/v1/pools", params={"name": "ok"}, content=good)
        assert r.status_code == 201, r.text
        pool = r.json()
        assert pool["num_items"] == 3 and pool["duplicate_prompts"] == 1
        assert pool["duplicates"] == [{"id": "p2", "same_as": "p1"}]
        again = c.post("/v1/pools", params={"name": "ok"}, content=good)
        assert again.status_code == 200 and again.json()["pool_id"] == pool["pool_id"]
        assert c.get(f"/v1/pools/{pool['pool_id']}").json()["num_items"] == 3

        dsat = _jsonl([{"messages": [{"role": "user", "content": "q"}], "response": "r"}])
        r = c.post("/v1/pools", params={"kind": "dsat"}, content=dsat)
        assert r.status_code == 422 and r.json()["problems"] == ["line 1: feedback: missing field"]

        # text the upload accepts is text a run accepts (shared/jsonl.py): a raw U+2028 inside a string is
        # not a line break; a JSON-escaped lone surrogate is refused here, naming line and field
        r = c.post("/v1/pools", params={"name": "ls"}, content='{"prompt": "one\u2028two"}\n'.encode())
        assert r.status_code == 201 and r.json()["num_items"] == 1, r.text
        r = c.post("/v1/pools", params={"name": "cats"}, content=b'{"prompt": "ok"}\n{"prompt": "Tell me about cats \\ud83d"}\n')
        assert r.status_code == 422
        assert r.json()["problems"] == ["line 2: field 'prompt': lone surrogate U+D83D (text must be encodable as UTF-8)"]


def test_oversized_upload_and_body_are_refused(api_server) -> None:
    limit = int(api_server.env["SPARRING_MAX_UPLOAD_BYTES"])
    line = json.dumps({"prompt": "x" * 200}) + "\n"
    big = (line * (10 * limit // len(line) + 1)).encode()
    assert len(big) >= 10 * limit
    with api_server.admin as c:
        before = c.get("/v1/pools").json()["pools"]
        r = c.post("/v1/pools", content=big)
        assert r.status_code == 413
        assert r.json()["detail"] == f"upload too large: the limit is {limit} bytes"

        def chunks():  # no Content-Length: the cap is enforced while reading
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]

        r = c.post("/v1/pools", content=chunks())
        assert r.status_code == 413
        assert c.get("/v1/pools").json()["pools"] == before
        r = c.post("/v1/runs", json={"config": {"name": "x" * 2_000_000}})
        assert r.status_code == 413 and "request body too large" in r.json()["detail"]


def test_configs_cannot_read_arbitrary_files(api_server) -> None:
    with api_server.admin as c:
        r = c.post("/v1/runs", json={"config": {"policy": {"path": "/etc/passwd"}}})
        assert r.status_code == 422
        (problem,) = r.json()["problems"]
        assert problem.startswith("policy.path: '/etc/passwd' is not allowed: a local model must be an absolute path inside a model root")
        for path in ("../../etc", "/etc/../etc/passwd", f"{api_server.data_dir}/models/../../x", "~root"):
            r = c.post("/v1/runs", json={"config": {"judge": {"kind": "density_ratio", "strong_model": path, "weak_model": "arena"}}})
            assert r.status_code == 422 and r.json()["problems"][0].startswith("judge.strong_model:"), path
        r = c.post("/v1/runs", json={"config": {"storage": {"run_dir": "/"}, "prompts": {"path": "/etc/passwd"}}})
        assert r.status_code == 422
        assert r.json()["problems"] == [
            "storage.run_dir: set by the service, not by a run config",
            "prompts.path: set by the service, not by a run config",
        ]
        valid = {**_small(iterations=1), "prompts": {"source": "arena"}}
        r = c.post("/v1/runs", json={"config": {**valid, "trainer": {**valid["trainer"], "learning_rat": 1}}})
        assert r.status_code == 422 and r.json()["problems"] == ["trainer.learning_rat: unknown key (not a field of this section) (got 1)"]
        # prompts are required unless a pool supplies them
        no_prompts = {k: v for k, v in valid.items() if k != "prompts"}
        r = c.post("/v1/runs", json={"config": {**no_prompts, "trainer": {**valid["trainer"], "learning_rat": 1}}})
        assert r.status_code == 422 and len(r.json()["problems"]) == 2
        assert any(p.startswith("prompts: Field required: upload a pool with POST /v1/pools") for p in r.json()["problems"])
        r = c.post("/v1/runs", json={"config": {}, "pool_id": "pool-missing"})
        assert r.status_code == 422 and "no pool 'pool-missing'" in r.json()["detail"]


def test_unknown_runs_and_invalid_transitions(api_server) -> None:
    with api_server.admin as c:
        for method, path in (
            ("GET", "/v1/runs/no-such-run"),
            ("GET", "/v1/runs/no-such-run/iterations"),
            ("GET", "/v1/runs/no-such-run/pairs/export"),
            ("POST", "/v1/runs/no-such-run/pause"),
            ("GET", "/v1/runs/no-such-run/checkpoints/1/archive"),
        ):
            r = c.request(method, path)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["detail"] == "run 'no-such-run' not found"


EXPORT_KEYS = ("prompt", "chosen", "rejected", "chosen_finish_reason", "rejected_finish_reason")


def _arena_pool(n: int) -> bytes:
    return _jsonl([{"id": p.prompt_id, "prompt": p.prompt} for p in arena_prompts("train")[:n]])


def test_run_lifecycle_pause_resume_export_checkpoint(api_server, redis_client, tmp_path: Path) -> None:
    """The paused run is then marked `failed` by hand (what a trainer death past its restart budget leaves):
    resuming it answers 409 naming the missing trainer state while its last checkpoint is incomplete, and
    continues it to completion once the checkpoint is whole."""
    from transformers import AutoModelForCausalLM

    from sparring.shared.store import RunStore

    with api_server.admin as c:
        pool = c.post("/v1/pools", params={"name": "arena-64"}, content=_arena_pool(64)).json()
        body = {
            "config": {**_small(iterations=3)},
            "pool_id": pool["pool_id"],
        }
        r = c.post("/v1/runs", json=body, headers={"Idempotency-Key": "lifecycle-1"})
        assert r.status_code == 201, r.text
        run_id = r.json()["run_id"]
        assert r.json()["pool_id"] == pool["pool_id"]
        replay = c.post("/v1/runs", json=body, headers={"Idempotency-Key": "lifecycle-1"})
        assert replay.status_code == 200 and replay.json()["run_id"] == run_id
        other = c.post("/v1/runs", json={**body, "config": {**body["config"], "seed": 7}}, headers={"Idempotency-Key": "lifecycle-1"})
        assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
        assert sum(run["run_id"].startswith("api-arena") for run in c.get("/v1/runs").json()["runs"] if run["pool_id"] == pool["pool_id"]) == 1

        api_server.wait_for(run_id, lambda run: run["iterations_done"] >= 1, what="iteration 1")
        r = c.post(f"/v1/runs/{run_id}/pause")
        assert r.status_code == 202 and r.json()["state"] in ("pausing", "paused")
        paused = api_server.wait_for(run_id, lambda run: run["state"] == "paused", what="paused")
        assert paused["iterations_done"] < 3
        r = c.post(f"/v1/runs/{run_id}/pause")
        assert r.status_code == 409 and "is paused; it cannot become pausing" in r.json()["detail"]
        RunStore(redis_client).set_state(run_id, "failed", reason="ActorDiedError: the trainer died (simulated)")
        last = c.get(f"/v1/runs/{run_id}/iterations").json()["iterations"][-1]
        state = Path(last["checkpoint"]) / "trainer_state.pt"
        state.rename(state.with_suffix(".moved"))
        r = c.post(f"/v1/runs/{run_id}/resume")
        assert r.status_code == 409 and "is failed and cannot resume" in r.json()["detail"], r.text
        assert r.json()["problems"] == [f"iteration {last['iteration']}: {state} is missing"]
        out = _cli(api_server, "resume", run_id)  # the CLI prints the detail and every problem, exits 2
        assert out.returncode == 2 and "is failed and cannot resume" in out.stderr and f"{state} is missing" in out.stderr
        assert c.get(f"/v1/runs/{run_id}").json()["state"] == "failed"
        state.with_suffix(".moved").rename(state)
        out = _cli(api_server, "resume", run_id)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"run {run_id} ") and f"continues after iteration {last['iteration']}" in out.stdout
        done = api_server.wait_for(run_id, lambda run: run["state"] == "completed", what="completed")
        assert done["iterations_done"] == 3
        r = c.post(f"/v1/runs/{run_id}/resume")
        assert r.status_code == 409 and "is completed; it cannot become created" in r.json()["detail"]

        iterations = c.get(f"/v1/runs/{run_id}/iterations").json()["iterations"]
        assert [it["iteration"] for it in iterations] == [1, 2, 3]
        assert [it["policy_version_out"] for it in iterations] == [1, 2, 3]
        assert all(it["num_pairs"] > 0 for it in iterations)
        for it in iterations:
            ev = it["eval"]
            assert ev["eval/num_prompts"] == SMALL_EVAL["num_prompts"], ev
            # the training judge (the oracle) is the evaluation judge; the task evaluator adds the gold win rate
            for name in ("eval/win_rate_vs_iter0", "eval/win_rate_vs_prev", "eval/arena_gold/win_rate_vs_iter0"):
                assert ev[f"{name}_ci_low"] <= ev[name] <= ev[f"{name}_ci_high"], (name, ev)
                assert 0.0 <= ev[name] <= 1.0, (name, ev)
            for name in ("eval/kl_vs_iter0", "eval/response_length_mean", "eval/truncated_fraction", "eval/arena_gold/mean_gold"):
                assert isinstance(ev[name], float), (name, ev)
        for key in (
            "pairs/per_s", "gen/tokens_per_s", "queue/peak/prompts", "pairs/stale_dropped", "sync/max_engine_s",
            "judge/latency_s", "rewards/accuracies", "rewards/margins",
        ):  # fmt: skip
            assert key in iterations[-1]["metrics"], key

        every = c.get(f"/v1/runs/{run_id}/pairs/export", params={"include_truncated": True})
        rows = [json.loads(line) for line in every.text.splitlines()]
        assert len(rows) >= sum(it["num_pairs"] for it in iterations)
        assert every.headers["x-pairs-exported"] == str(len(rows)) and every.headers["x-pairs-left-out-truncated"] == "0"
        assert all(set(row) == set(EXPORT_KEYS) and row["chosen"] != row["rejected"] for row in rows)
        assert {row["chosen_finish_reason"] for row in rows} | {row["rejected_finish_reason"] for row in rows} <= {"stop", "length"}
        cut = [row for row in rows if "length" in (row["chosen_finish_reason"], row["rejected_finish_reason"])]
        default = c.get(f"/v1/runs/{run_id}/pairs/export")  # pairs with an answer cut at max_new_tokens left out
        kept = [json.loads(line) for line in default.text.splitlines()]
        assert default.headers["x-pairs-left-out-truncated"] == str(len(cut)) and len(kept) == len(rows) - len(cut)
        assert all(row in rows and row not in cut for row in kept)
        pool_prompts = {p.prompt for p in arena_prompts("train")[:64]}
        assert {row["prompt"] for row in rows} <= pool_prompts
        sample = [json.loads(x) for x in c.get(f"/v1/runs/{run_id}/pairs/export", params={"sample": 5, "iteration": 2, "include_truncated": True}).text.splitlines()]
        assert len(sample) == 5 and all(row in rows for row in sample)
        recent = c.get(f"/v1/runs/{run_id}/pairs", params={"limit": 3}).json()["pairs"]
        assert len(recent) == 3 and recent[0]["iteration"] == 3

        ckpts = c.get(f"/v1/runs/{run_id}/checkpoints").json()["checkpoints"]
        assert [ck["version"] for ck in ckpts] == [2, 3]  # retention: checkpoints.keep_last (2) recorded ones
        names = {f["name"] for f in ckpts[-1]["files"]}
        assert {"config.json", "model.safetensors"} <= names
        r = c.get(f"/v1/runs/{run_id}/checkpoints/3/archive")
        assert r.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
            tar.extractall(tmp_path, filter="data")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / f"{run_id}-v3")
        assert sum(p.numel() for p in model.parameters()) > 0
        one = c.get(f"/v1/runs/{run_id}/checkpoints/3/files/config.json")
        assert one.status_code == 200 and json.loads(one.content)["model_type"] == "llama"
        assert c.get(f"/v1/runs/{run_id}/checkpoints/3/files/..%2F..%2Fconfig.yaml").status_code == 404
        assert c.get(f"/v1/runs/{run_id}/checkpoints/9/archive").status_code == 404

        metrics = c.get("/metrics").text
        assert f'sparring_iterations_total{{run="{run_id}"}} 3.0' in metrics
        assert "sparring_generation_tokens_per_second" in metrics and "sparring_judge_latency_seconds" in metrics
        samples = _prometheus_samples(metrics)
        last = iterations[-1]["eval"]
        for metric in ("win_rate_vs_iter0", "arena_gold/win_rate_vs_iter0", "kl_vs_iter0"):
            got = samples.get(("sparring_eval", (("metric", metric), ("run", run_id))))
            assert got == pytest.approx(last[f"eval/{metric}"]), (metric, [k for k in samples if k[0] == "sparring_eval"])
        dropped = samples[("sparring_stale_pairs_dropped", (("run", run_id),))]
        assert dropped == iterations[-1]["metrics"]["pairs/stale_dropped"]
        assert "sparring_gold_win_rate" not in metrics and "sparring_policy_staleness" not in metrics


# The held-out evaluation of the API's runs: the arena's held-out prompts and its gold evaluator.
SMALL_EVAL = {"num_prompts": 32, "prompts": {"source": "arena_heldout"}, "evaluators": ["arena_gold"]}


def _small(iterations: int) -> dict:
    """A small arena run for the API, without `prompts`: these tests give it a pool, which sets them."""
    from tests.integration.conftest import SMALL_ARENA_RUN

    config = {k: v for k, v in SMALL_ARENA_RUN.items() if k != "prompts"}
    return {
        **config,
        "policy": {"path": "arena"},
        "judge": {"kind": "arena_oracle"},
        "eval": SMALL_EVAL,
        "schedule": {**SMALL_ARENA_RUN["schedule"], "iterations": iterations},
    }


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _prometheus_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted (label, value) pairs) -> value of every sample in a Prometheus text exposition (label
    order in the text is the exporter's business, so it is not part of the key)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m is not None, line
            labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def _cli(api_server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**api_server.env, "SPARRING_API_URL": api_server.url, "SPARRING_TOKEN": api_server.admin_token}
    return subprocess.run(
        [sys.executable, "-m", "sparring.services.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_pause_and_stop_reach_the_api(api_server) -> None:
    """`sparring pause|stop RUN_ID` post to the run's lifecycle routes; a refusal prints the API's detail, exit 2."""
    for action in ("pause", "stop"):
        out = _cli(api_server, action, "no-such-run")
        assert out.returncode == 2 and "error: run 'no-such-run' not found" in out.stderr, out.stderr


def test_api_restart_mid_run_loses_nothing(api_server, redis_client, tmp_path: Path) -> None:
    """Submit with the CLI, SIGKILL the API after iteration 1, start it again: the same controller finishes
    the run, every iteration is recorded once, and status/export work against the new process."""
    pool = tmp_path / "arena.jsonl"
    pool.write_bytes(_arena_pool(48))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**_small(iterations=3), "name": "restart"}))
    out = _cli(api_server, "submit", str(config), "--pool", str(pool), "--set", "trainer.epochs=1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("pool pool-") and "48 prompts" in out.stdout
    run_id = out.stdout.splitlines()[-1].split()[1]

    api_server.wait_for(run_id, lambda run: run["iterations_done"] >= 1 and run["state"] == "running", what="iteration 1")
    starts = api_server.starts
    api_server.kill()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api_server.url}/healthz", timeout=2)
    time.sleep(3)  # the run goes on without any API process
    api_server.start()
    assert api_server.starts == starts + 1
    done = api_server.wait_for(run_id, lambda run: run["state"] == "completed", what="completed after restart")
    assert done["iterations_done"] == 3
    assert int(redis_client.get(keys.incarnation(run_id))) == 1  # one controller, never resumed or replaced

    with api_server.client(api_server.read_token) as c:
        iterations = c.get(f"/v1/runs/{run_id}/iterations").json()["iterations"]
        assert [it["iteration"] for it in iterations] == [1, 2, 3]
        events = c.get(f"/v1/runs/{run_id}/events").text
    blocks = [b for b in events.split("\n\n") if b.startswith("id: ")]
    done_iters = [json.loads(b.split("data: ", 1)[1])["iteration"] for b in blocks if "\nevent: iteration_done\n" in b]
    assert done_iters == [1, 2, 3]
    assert events.rstrip().endswith('event: end\ndata: {"state": "completed"}')

    status = _cli(api_server, "status", run_id)
    assert status.returncode == 0 and "completed, 3/3 iterations" in status.stdout
    assert status.stdout.count("  iteration ") == 3
    exported = tmp_path / "pairs.jsonl"
    out = _cli(api_server, "export", run_id, "-o", str(exported), "--iteration", "3")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert f"wrote {len(rows)} pairs" in out.stderr
    left_out = int(out.stderr.split("left out ")[1].split()[0]) if "left out " in out.stderr else 0
    assert len(rows) + left_out == iterations[2]["num_pairs"] and all(set(r) == set(EXPORT_KEYS) for r in rows)
    out = _cli(api_server, "export", run_id, "-o", str(exported), "--iteration", "3", "--include-truncated")
    assert out.returncode == 0 and len(exported.read_text().splitlines()) == iterations[2]["num_pairs"], out.stderr
    bad = _cli(api_server, "status", "no-such-run")
    assert bad.returncode == 2 and "run 'no-such-run' not found" in bad.stderr


def test_dead_letters_are_listed_and_requeued(api_server, redis_client, unique_run_id: str) -> None:
    """Issue 14 item 5: dead letters are listed with prompt id, stage and reason (API, `sparring status RUN
    --dead`) and re-queued (all or one): the prompt waits for the run's next dispatch, the letter leaves."""
    from sparring.shared.queue import StreamQueue
    from sparring.shared.records import PromptTask, encode
    from sparring.shared.store import RunStore

    store = RunStore(redis_client)
    store.create_run(unique_run_id, {"name": "dead", "schedule": {"iterations": 3}}, "/tmp/dead")
    store.set_state(unique_run_id, "paused", reason="test")  # at rest: the scheduler leaves it alone
    q = StreamQueue(redis_client, unique_run_id)
    task = PromptTask(run_id=unique_run_id, iteration=2, policy_version=1, prompt_id="p7", prompt="x", num_samples=2, seed=1)
    q.dead_letter("generate", task.record_id, "delivered 3 times to generators without completing", encode(task), 3)
    q.dead_letter("judge", "p9@v1", "judge raised ValueError: bad scores", attempts=3)  # no payload: id parsed
    q.dead_letter("prompts", "1764466200000-0", "entry 1764466200000-0 was trimmed (MAXLEN) before it was processed")
    base = f"/v1/runs/{unique_run_id}/dead-letters"
    try:
        with api_server.client(api_server.read_token) as c:
            letters = c.get(base).json()["dead_letters"]
        assert [(d["prompt_id"], d["stage"], d["attempts"], d["iteration"], d["policy_version"], d["requeueable"])
                for d in letters] == [("p7", "generate", 3, 2, 1, True), ("p9", "judge", 3, None, 1, True),
                                      (None, "prompts", 1, None, None, False)]  # fmt: skip
        assert letters[0]["reason"].startswith("delivered 3 times")
        out = subprocess.run(
            [sys.executable, "-m", "sparring.services.cli", "status", unique_run_id, "--dead", "--api", api_server.url,
             "--token", api_server.read_token],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "p7" in out.stdout and "generate" in out.stdout and "judge raised ValueError" in out.stdout
        assert "3 dead letter(s)" in out.stdout
        with api_server.client(api_server.read_token) as c:
            assert c.post(f"{base}/requeue").status_code == 403  # read-only token
        with api_server.admin as c:
            r = c.post(f"{base}/{letters[0]['entry_id']}/requeue")
            assert r.status_code == 200, r.text
            assert r.json() == {"requeued": [{"entry_id": letters[0]["entry_id"], "prompt_id": "p7"}], "skipped": [],
                                "queued_prompts": ["p7"]}  # fmt: skip
            assert c.post(f"{base}/{letters[0]['entry_id']}/requeue").status_code == 404  # gone from the list
            r = c.post(f"{base}/{letters[2]['entry_id']}/requeue")
            assert r.status_code == 409 and "trimmed" in r.json()["detail"]
            r = c.post(f"{base}/requeue", json={"entry_ids": ["1-0", "2-0"]})
            assert r.status_code == 422 and len(r.json()["problems"]) == 2
            r = c.post(f"{base}/requeue")  # everything left that can be
            assert r.status_code == 200, r.text
            assert [x["prompt_id"] for x in r.json()["requeued"]] == ["p9"] and len(r.json()["skipped"]) == 1
            assert r.json()["queued_prompts"] == ["p7", "p9"]
            assert [d["stage"] for d in c.get(base).json()["dead_letters"]] == ["prompts"]
            assert store.requeued_prompts(unique_run_id) == ["p7", "p9"]
            store.set_state(unique_run_id, "completed")
            r = c.post(f"{base}/requeue")
            assert r.status_code == 409 and "will not run another iteration" in r.json()["detail"]
            assert c.get("/v1/runs/no-such-run/dead-letters").status_code == 404
    finally:
        q.delete_run()
        store.delete_run(unique_run_id)
