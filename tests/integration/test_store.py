"""RunStore and the Redis plumbing against a real redis-server: run lifecycle, iteration records,
AOF persistence across a private server restart, fail-fast connects and a missing binary."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sparring.shared.queue import StreamQueue
from sparring.shared.records import GenerationGroup, IterationRecord, PromptTask
from sparring.shared.redis_server import PrivateRedis, RedisUnavailable, connect, open_redis, redact_url
from sparring.shared.store import RUN_STATES, InvalidTransition, RunExists, RunNotFound, RunStore

pytestmark = pytest.mark.integration


def iteration(run_id: str, n: int, pairs: int = 8) -> IterationRecord:
    return IterationRecord(
        run_id=run_id, iteration=n, policy_version_in=n - 1, policy_version_out=n, num_prompts=8,
        num_groups=8, num_pairs=pairs, num_dead=0, metrics={"loss/total": 0.5 / n}, started_at=float(n),
        finished_at=n + 0.5,
    )  # fmt: skip


@pytest.fixture
def store(redis_client: redis.Redis, unique_run_id: str) -> Iterator[RunStore]:
    s = RunStore(redis_client)
    yield s
    s.delete_run(unique_run_id)


def test_run_lifecycle(store: RunStore, unique_run_id: str) -> None:
    assert store.get_run(unique_run_id) is None
    config = {"recipe": "sppo", "trainer": {"lr": 5e-7}, "seeds": [1, 2]}
    run = store.create_run(unique_run_id, config, "/tmp/runs/x")
    assert run["state"] == "created" and run["config"] == config and run["run_dir"] == "/tmp/runs/x"
    with pytest.raises(RunExists, match=unique_run_id):
        store.create_run(unique_run_id, {}, "/elsewhere")
    assert store.get_run(unique_run_id)["run_dir"] == "/tmp/runs/x"  # untouched by the refused create

    for state in ("running", "paused", "running"):
        store.set_state(unique_run_id, state)
    store.set_state(unique_run_id, "failed", reason="trainer OOM")
    run = store.get_run(unique_run_id)
    assert run["state"] == "failed" and run["reason"] == "trainer OOM"
    assert run["updated_at"] >= run["created_at"]
    with pytest.raises(ValueError, match="unknown run state"):
        store.set_state(unique_run_id, "exploded")
    with pytest.raises(RunNotFound):
        store.set_state(unique_run_id + "-missing", "running")
    assert set(RUN_STATES) == {
        "created", "running", "pausing", "paused", "stopping", "stopped", "completed", "failed"
    }

    assert unique_run_id in [r["run_id"] for r in store.list_runs()]
    kinds = [kind for _, kind, _ in store.events(unique_run_id)]
    assert kinds == ["run_created", "state", "state", "state", "state"]
    eid, _, data = store.events(unique_run_id)[-1]
    assert data["state"] == "failed" and store.events(unique_run_id, after=eid) == []


def test_list_runs_oldest_first(store: RunStore, unique_run_id: str) -> None:
    ids = [f"{unique_run_id}-{i}" for i in range(3)]
    try:
        for rid in ids:
            store.create_run(rid, {}, f"/runs/{rid}")
        listed = [r["run_id"] for r in store.list_runs() if r["run_id"] in ids]
        assert listed == ids
    finally:
        for rid in ids:
            store.delete_run(rid)
    assert not any(r["run_id"] in ids for r in store.list_runs())


def test_iterations_idempotent_and_sorted(store: RunStore, unique_run_id: str) -> None:
    with pytest.raises(RunNotFound):
        store.put_iteration(iteration(unique_run_id, 1))
    store.create_run(unique_run_id, {}, "/runs/x")
    assert store.last_complete_iteration(unique_run_id) == 0
    assert store.iterations(unique_run_id) == []
    for n in (2, 1, 3):
        assert store.put_iteration(iteration(unique_run_id, n)) is True
    assert store.put_iteration(iteration(unique_run_id, 2, pairs=999)) is False  # first write wins
    got = store.iterations(unique_run_id)
    assert [r.iteration for r in got] == [1, 2, 3]
    assert got[1] == iteration(unique_run_id, 2)
    assert store.last_complete_iteration(unique_run_id) == 3
    events = [(k, d) for _, k, d in store.events(unique_run_id) if k == "iteration"]
    assert [d["iteration"] for _, d in events] == [2, 1, 3]  # one event per new iteration, none for the dup


def test_small_values(store: RunStore, unique_run_id: str) -> None:
    assert store.get_value(unique_run_id, "iter0_samples") is None
    blob = bytes(range(256)) * 10
    store.set_value(unique_run_id, "iter0_samples", blob)
    assert store.get_value(unique_run_id, "iter0_samples") == blob
    store.set_value(unique_run_id, "iter0_samples", b"v2")
    assert store.get_value(unique_run_id, "iter0_samples") == b"v2"


def test_private_redis_aof_survives_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    run_id = "aof-run"
    with PrivateRedis(data_dir) as server:
        first_url = server.url
        client = connect(server.url)
        store = RunStore(client)
        store.create_run(run_id, {"a": 1}, "/runs/aof")
        store.put_iteration(iteration(run_id, 1))
        q = StreamQueue(client, run_id)
        q.ensure_group("prompts", "g")
        task = PromptTask(
            run_id=run_id, iteration=0, policy_version=0, prompt_id="p", prompt="x", num_samples=1, seed=0
        )
        q.put("prompts", task)
        (pending,) = q.read("prompts", "g", "c1", PromptTask)
        client.close()
    assert not server.running
    assert (data_dir / "appendonlydir").is_dir()
    with PrivateRedis(data_dir) as server:
        client = connect(server.url)
        store = RunStore(client)
        assert store.get_run(run_id)["config"] == {"a": 1}
        assert store.last_complete_iteration(run_id) == 1
        q = StreamQueue(client, run_id)
        assert q.put("prompts", task) is None  # the seen-set survived too
        # consumer-group state survived: c1 gets its in-flight entry back
        again = q.read("prompts", "g", "c1", PromptTask)
        assert [e.entry_id for e in again] == [pending.entry_id]
        client.close()
    assert first_url.startswith("redis://127.0.0.1:")


def test_open_redis_private_and_url(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with open_redis(None, tmp_path) as (client, url):
        assert client.ping() and url.startswith("redis://127.0.0.1:")
    assert (tmp_path / "redis" / "redis.log").exists()
    with pytest.raises(RedisUnavailable):
        connect(url, timeout_s=0.5)  # the private server is gone
    with open_redis(redis_url, tmp_path / "unused") as (client, url):
        assert client.ping() and url == redis_url
    monkeypatch.setenv("REDIS_URL", redis_url)
    with open_redis(None, tmp_path / "unused") as (client, url):
        assert url == redis_url
    assert not (tmp_path / "unused").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connect_to_closed_port_fails_fast_naming_the_url() -> None:
    port = _closed_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable) as ei:
        connect(url)
    assert time.monotonic() - t0 < 5
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg and "cannot reach Redis" in msg
    assert "hunter2" not in msg  # the password is redacted


def test_redact_url() -> None:
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


def test_missing_redis_server_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RedisUnavailable, match="redis-server not found on PATH.*REDIS_URL"):
        PrivateRedis(tmp_path).start()


def test_private_redis_start_failure_shows_the_log(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path, extra_args=("--no-such-option", "1"))
    with pytest.raises(RedisUnavailable, match="no-such-option"):
        server.start()
    assert not server.running


def test_private_redis_dies_with_its_owner(tmp_path: Path) -> None:
    """A crashed owner must not leave a redis-server holding the data dir (it gets SIGTERM = clean exit)."""
    import os
    import signal
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from sparring.shared.redis_server import PrivateRedis, connect\n"
        "s = PrivateRedis(sys.argv[1]).start()\n"
        "connect(s.url).set('k', 'survives')\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    pid = int(owner.stdout.readline())
    owner.send_signal(signal.SIGKILL)
    owner.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # exited, waiting for its new parent to reap it
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("redis-server outlived its owner")
    with PrivateRedis(tmp_path) as server:
        assert connect(server.url).get("k") == b"survives"


def test_transition_is_atomic_and_names_the_current_state(redis_client, unique_run_id) -> None:
    store = RunStore(redis_client)
    store.create_run(unique_run_id, {"name": "t"}, "/tmp/x", labels={"pool_id": "p1"})
    assert store.get_run(unique_run_id)["labels"] == {"pool_id": "p1"}
    store.transition(unique_run_id, ("created",), "running")
    with pytest.raises(InvalidTransition, match="is running; it cannot become paused"):
        store.transition(unique_run_id, ("pausing",), "paused")
    assert store.get_run(unique_run_id)["state"] == "running"
    store.transition(unique_run_id, ("running", "created"), "pausing", reason="user")
    run = store.get_run(unique_run_id)
    assert run["state"] == "pausing" and run["reason"] == "user"
    with pytest.raises(RunNotFound):
        store.transition(unique_run_id + "-missing", ("running",), "paused")
    kinds = [(k, d.get("state")) for _, k, d in store.events(unique_run_id)]
    assert kinds[-2:] == [("state", "running"), ("state", "pausing")]


def test_control_requests(redis_client, unique_run_id) -> None:
    store = RunStore(redis_client)
    store.create_run(unique_run_id, {"name": "t"}, "/tmp/x")
    assert store.control(unique_run_id) is None
    store.request_control(unique_run_id, "pause")
    store.request_control(unique_run_id, "stop")
    assert store.control(unique_run_id) == "stop"
    store.clear_control(unique_run_id)
    assert store.control(unique_run_id) is None


def test_client_rides_out_a_sigkilled_redis_restarted_on_the_same_port(tmp_path: Path) -> None:
    """Issue 14 item 2: SIGKILL the server, restart it on the same port and directory 2 s later: a client
    with an outage window reconnects (its blocked command just takes longer), the AOF (appendfsync everysec)
    kept what was written more than a second before the kill, consumer groups included; a client whose
    window is shorter than the outage raises ConnectionError once it has passed."""
    import os
    import signal
    import threading

    data_dir = tmp_path / "redis"
    server = PrivateRedis(data_dir).start()
    port = server.port
    client = connect(server.url, outage_s=30)
    impatient = connect(server.url, outage_s=0.5)
    run_id = "outage-run"
    q = StreamQueue(client, run_id)
    q.ensure_group("prompts", "g")
    task = PromptTask(run_id=run_id, iteration=1, policy_version=0, prompt_id="p", prompt="x", num_samples=2, seed=0)
    q.put("prompts", task)
    (pending,) = q.read("prompts", "g", "c1", PromptTask)
    time.sleep(1.5)  # > appendfsync everysec: on disk
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    restarted: list[PrivateRedis] = []
    timer = threading.Timer(2.0, lambda: restarted.append(PrivateRedis(data_dir, port=port).start()))
    timer.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            impatient.get("k")
        assert time.monotonic() - t0 < 2.0
        # the consumer-group state came back with the AOF: c1's in-flight entry is still its own
        again = q.read("prompts", "g", "c1", PromptTask)
        assert time.monotonic() - t0 >= 1.5, "the read should have waited for the restart"
        assert [(e.entry_id, e.deliveries) for e in again] == [(pending.entry_id, 2)]
        assert q.put("prompts", task) is None  # the seen-set too
        assert restarted and restarted[0].port == port
    finally:
        timer.join()
        client.close()
        impatient.close()
        for s in restarted:
            s.stop()
        server.stop()


def test_connect_waits_for_a_restarting_server_when_asked(tmp_path: Path) -> None:
    """A worker started during an outage (`wait_s`) connects once the server is back; the default fails fast."""
    import threading

    port = _closed_port()
    box: list[PrivateRedis] = []
    timer = threading.Timer(1.0, lambda: box.append(PrivateRedis(tmp_path, port=port).start()))
    timer.start()
    try:
        client = connect(f"redis://127.0.0.1:{port}/0", wait_s=30)
        assert client.ping()
        client.close()
    finally:
        timer.join()
        for s in box:
            s.stop()


def test_what_appendfsync_everysec_loses_and_why_a_rerun_duplicates_nothing(tmp_path: Path) -> None:
    """docs/reliability.md, "What a Redis restart can lose". With `appendfsync everysec` a crash can lose the
    writes of about the last second (up to 2 s when an fsync is slow: Redis then postpones its AOF write but
    still replies). Simulated deterministically: redis-server SIGKILLed after more work, then restarted from a
    copy of its AOF taken before that work. The lost work is still pending in the consumer group (or undelivered),
    is done again, and deterministic record ids make the re-run write nothing twice."""
    import os
    import shutil
    import signal

    data_dir = tmp_path / "redis"
    run_id = "everysec"
    server = PrivateRedis(data_dir).start()
    client = connect(server.url)
    q = StreamQueue(client, run_id)
    q.ensure_group("prompts", "g")
    tasks = [PromptTask(run_id=run_id, iteration=1, policy_version=0, prompt_id=f"p{i}", prompt="x", num_samples=2, seed=i)
             for i in range(6)]  # fmt: skip
    for t in tasks:
        q.put("prompts", t)

    def work(n: int) -> None:
        for e in q.read("prompts", "g", "c", PromptTask, count=n, max_deliveries=3):
            q.complete("prompts", "g", e.entry_id, "generations", [_as_group(e.record)])

    work(3)
    time.sleep(1.5)  # fsynced
    snapshot = tmp_path / "before-last-writes"
    shutil.copytree(data_dir / "appendonlydir", snapshot)  # the disk as a crash a moment later leaves it
    work(3)  # the "last second": three more groups written and acknowledged
    assert q.length("generations") == 6
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    shutil.rmtree(data_dir / "appendonlydir")
    shutil.copytree(snapshot, data_dir / "appendonlydir")
    server = PrivateRedis(data_dir, port=server.port).start()
    try:
        assert q.length("generations") == 3 and q.outstanding("prompts", "g") == 3  # the last writes are gone
        work(6)  # the lost work is read again from the consumer group and done again
        ids = [g.record_id for _, g in q.read_all("generations", GenerationGroup)]
        assert sorted(ids) == sorted(t.record_id for t in tasks) and q.outstanding("prompts", "g") == 0
        for t in tasks:  # a re-dispatch after the restart writes nothing twice either
            assert q.put("prompts", t) is None
        work(6)
        assert q.length("generations") == 6
    finally:
        client.close()
        server.stop()


def _as_group(task: PromptTask) -> GenerationGroup:
    from sparring.shared.records import Completion

    return GenerationGroup(
        run_id=task.run_id, iteration=task.iteration, policy_version=task.policy_version, prompt_id=task.prompt_id,
        prompt=task.prompt, prompt_token_ids=[1], completions=[Completion(index=0, text="a", token_ids=[2], logprobs=[-1.0])],
        engine_id="e", seed=task.seed, latency_s=0.0,
    )  # fmt: skip
