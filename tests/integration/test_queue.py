"""StreamQueue against a real redis-server: dedup, ack-after-output, recovery of in-flight work, dead letters,
trimming, backpressure and concurrent consumers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis

from sparring.shared import history, keys
from sparring.shared.queue import Entry, StreamQueue
from sparring.shared.records import Completion, DeadLetter, GenerationGroup, PromptTask, decode

pytestmark = pytest.mark.integration

G = "generators"


@pytest.fixture
def q(redis_client: redis.Redis, unique_run_id: str) -> Iterator[StreamQueue]:
    queue = StreamQueue(redis_client, unique_run_id, maxlen=10_000)
    queue.ensure_group("prompts", G)
    yield queue
    queue.delete_run()


def task(run_id: str, i: int, version: int = 0) -> PromptTask:
    return PromptTask(
        run_id=run_id, iteration=0, policy_version=version, prompt_id=f"p{i}", prompt=f"prompt {i}",
        num_samples=2, seed=i,
    )  # fmt: skip


def generate(t: PromptTask) -> GenerationGroup:
    """What a generator would produce for `t` (deterministic, so its record id is t's group id)."""
    return GenerationGroup(
        run_id=t.run_id, iteration=t.iteration, policy_version=t.policy_version, prompt_id=t.prompt_id,
        prompt=t.prompt, prompt_token_ids=[1, 2],
        completions=[Completion(index=k, text="x", token_ids=[3 + k], logprobs=[-1.0]) for k in range(2)],
        engine_id="e0", seed=t.seed, latency_s=0.01,
    )  # fmt: skip


def fill(q: StreamQueue, n: int) -> list[PromptTask]:
    tasks = [task(q.run_id, i) for i in range(n)]
    for t in tasks:
        assert q.put("prompts", t) is not None
    return tasks


def test_stream_names(q: StreamQueue) -> None:
    assert keys.stream("abc", "pairs") == "run:abc:pairs"
    assert keys.seen("abc", "pairs") == "run:abc:seen:pairs"
    assert keys.events("abc") == "run:abc:events" == keys.stream("abc", "events")
    assert q.stream("dead") == f"run:{q.run_id}:dead"
    with pytest.raises(ValueError, match="unknown stage"):
        q.stream("nope")


def test_put_dedups_by_record_id(q: StreamQueue) -> None:
    t = task(q.run_id, 0)
    first = q.put("prompts", t)
    assert first is not None
    assert q.put("prompts", t) is None
    assert q.put("prompts", t.model_copy(update={"seed": 99})) is None  # same group id = same record
    assert q.put("prompts", task(q.run_id, 0, version=1)) is not None
    assert q.length("prompts") == 2
    assert q.written("prompts") == 2
    assert [rec for _, rec in q.read_all("prompts", PromptTask)] == [t, task(q.run_id, 0, version=1)]
    assert q.read_all("prompts", PromptTask)[0][0] == first


def test_iter_records_pages_in_both_directions(q: StreamQueue) -> None:
    tasks = [task(q.run_id, i) for i in range(5)]
    for t in tasks:
        q.put("prompts", t)
    q.client.xadd(q.stream("prompts"), {"data": b"not msgpack"})  # an undecodable entry is skipped
    assert [rec for _, rec in q.iter_records("prompts", PromptTask, page=2)] == tasks
    assert [rec for _, rec in q.iter_records("prompts", PromptTask, newest_first=True, page=2)] == tasks[::-1]
    assert [rec for _, rec in q.read_all("prompts", PromptTask)] == tasks


def test_read_then_complete_acks_only_with_output(q: StreamQueue) -> None:
    fill(q, 3)
    assert q.lag("prompts", G) == 3
    entries = q.read("prompts", G, "c1", PromptTask, count=2)
    assert [e.record.prompt_id for e in entries] == ["p0", "p1"]
    assert all(isinstance(e, Entry) and e.deliveries == 1 for e in entries)
    assert q.pending_count("prompts", G) == 2 and q.lag("prompts", G) == 1
    assert q.length("generations") == 0  # nothing written, nothing acked

    assert q.complete("prompts", G, entries[0].entry_id, "generations", [generate(entries[0].record)]) == 1
    assert q.pending_count("prompts", G) == 1
    out = q.read_all("generations", GenerationGroup)
    assert [g.record_id for _, g in out] == ["p0@v0"]

    # an ack-only completion (a stage with no output)
    assert q.complete("prompts", G, entries[1].entry_id, None, []) == 0
    assert q.pending_count("prompts", G) == 0
    rest = q.read("prompts", G, "c1", PromptTask, count=10)
    assert [e.record.prompt_id for e in rest] == ["p2"]
    assert q.outstanding("prompts", G) == 1


def test_failed_output_write_does_not_ack(q: StreamQueue, redis_client: redis.Redis) -> None:
    fill(q, 1)
    (e,) = q.read("prompts", G, "c1", PromptTask)
    redis_client.set(q.stream("generations"), b"not a stream")  # make XADD fail inside the script
    with pytest.raises(redis.ResponseError):
        q.complete("prompts", G, e.entry_id, "generations", [generate(e.record)])
    assert q.pending_count("prompts", G) == 1  # still pending: it will be redelivered
    redis_client.delete(q.stream("generations"))
    # the failed write did not mark the output as seen, so the retry writes it
    assert q.complete("prompts", G, e.entry_id, "generations", [generate(e.record)]) == 1
    assert q.length("generations") == 1 and q.pending_count("prompts", G) == 0


def test_restarted_consumer_resumes_its_pending_entries(q: StreamQueue, redis_client: redis.Redis) -> None:
    fill(q, 2)
    got = q.read("prompts", G, "gen-0", PromptTask, count=1)
    assert [e.record.prompt_id for e in got] == ["p0"]
    # "gen-0" dies without completing; a new process (new connection) starts with the same name
    fresh_client = redis.Redis(
        connection_pool=redis.ConnectionPool(**redis_client.connection_pool.connection_kwargs)
    )
    try:
        q2 = StreamQueue(fresh_client, q.run_id)
        again = q2.read("prompts", G, "gen-0", PromptTask, count=1)
        assert [(e.entry_id, e.deliveries) for e in again] == [(got[0].entry_id, 2)]
        # another consumer does not get it, only the next new entry
        other = q2.read("prompts", G, "gen-1", PromptTask, count=5)
        assert [e.record.prompt_id for e in other] == ["p1"]
        # pending first, then new: with room left, gen-0 gets its pending entry and nothing else is left
        both = q2.read("prompts", G, "gen-0", PromptTask, count=5)
        assert [e.record.prompt_id for e in both] == ["p0"]
    finally:
        fresh_client.close()


def test_reassign_moves_a_dead_consumers_entries(q: StreamQueue, redis_client: redis.Redis) -> None:
    fill(q, 3)
    taken = q.read("prompts", G, "dead-one", PromptTask, count=3)
    assert len(taken) == 3
    moved = q.reassign("prompts", G, "dead-one", "heir", PromptTask)
    assert [e.entry_id for e in moved] == [e.entry_id for e in taken]
    assert all(e.deliveries == 2 for e in moved)
    assert redis_client.xpending_range(q.stream("prompts"), G, "-", "+", 10, consumername="dead-one") == []
    assert len(redis_client.xpending_range(q.stream("prompts"), G, "-", "+", 10, consumername="heir")) == 3
    assert q.reassign("prompts", G, "dead-one", "heir", PromptTask) == []
    # the heir sees them as its own pending work
    assert [e.entry_id for e in q.read("prompts", G, "heir", PromptTask, count=3)] == [
        e.entry_id for e in taken
    ]


def test_claim_stale_takes_only_idle_entries(q: StreamQueue) -> None:
    fill(q, 2)
    q.read("prompts", G, "slow", PromptTask, count=2)
    assert q.claim_stale("prompts", G, "rescuer", PromptTask, min_idle_ms=60_000) == []
    time.sleep(0.06)
    claimed = q.claim_stale("prompts", G, "rescuer", PromptTask, min_idle_ms=50, count=1)
    assert [(e.record.prompt_id, e.deliveries) for e in claimed] == [("p0", 2)]
    claimed += q.claim_stale("prompts", G, "rescuer", PromptTask, 50, 10)
    assert [e.record.prompt_id for e in claimed] == ["p0", "p1"]


def test_redelivered_input_writes_output_once(q: StreamQueue) -> None:
    fill(q, 1)
    (slow,) = q.read("prompts", G, "slow", PromptTask)
    time.sleep(0.02)
    (rescued,) = q.claim_stale("prompts", G, "fast", PromptTask, min_idle_ms=10)
    assert rescued.entry_id == slow.entry_id
    assert q.complete("prompts", G, rescued.entry_id, "generations", [generate(rescued.record)]) == 1
    # the slow consumer was not dead after all and finishes too
    assert q.complete("prompts", G, slow.entry_id, "generations", [generate(slow.record)]) == 0
    assert q.length("generations") == 1
    assert q.pending_count("prompts", G) == 0


def test_undecodable_entries_go_to_the_dead_stream(q: StreamQueue, redis_client: redis.Redis) -> None:
    key = q.stream("prompts")
    redis_client.xadd(key, {"id": "junk", "data": b"\xc1\xc1 not msgpack"})
    bad = task(q.run_id, 1).model_dump()
    del bad["seed"]
    redis_client.xadd(key, {"id": "p1@v0", "data": msgpack.packb(bad)})
    redis_client.xadd(key, {"nodata": "1"})
    q.put("prompts", task(q.run_id, 2))
    entries = q.read("prompts", G, "c1", PromptTask, count=10)
    assert [e.record.prompt_id for e in entries] == ["p2"]
    assert q.pending_count("prompts", G) == 1  # the three bad ones were acked
    letters = q.dead_letters()
    assert len(letters) == 3
    by_item = {d.item_id: d for d in letters}
    assert "PromptTask" in by_item["junk"].reason and by_item["junk"].payload.startswith(b"\xc1")
    assert "seed" in by_item["p1@v0"].reason  # the validation error names the missing field
    assert any("no 'data' field" in d.reason for d in letters)
    assert all(d.stage == "prompts" for d in letters)


def test_fail_dead_letters_after_max_attempts(q: StreamQueue) -> None:
    (t,) = fill(q, 1)
    results = []
    for attempt in range(1, 4):
        (e,) = q.read("prompts", G, "c1", PromptTask)
        assert e.deliveries == attempt
        results.append(q.fail("prompts", G, e, "generate", f"engine crashed #{attempt}", max_attempts=3))
    assert results == [False, False, True]
    assert q.pending_count("prompts", G) == 0
    assert q.read("prompts", G, "c1", PromptTask) == []
    (letter,) = q.dead_letters()
    assert letter == DeadLetter(
        stage="generate", item_id=t.record_id, reason="engine crashed #3", attempts=3, payload=letter.payload
    )
    assert decode(PromptTask, letter.payload) == t
    # dead letters are deduplicated by their own id
    assert q.dead_letter("generate", t.record_id, "again") is None
    assert len(q.dead_letters()) == 1


def test_maxlen_bounds_the_stream(redis_client: redis.Redis, unique_run_id: str) -> None:
    q = StreamQueue(redis_client, unique_run_id, maxlen=50)
    try:
        fill(q, 1000)
        n = q.length("prompts")
        assert 50 <= n <= 250, n  # approximate trimming removes whole 100-entry nodes
        # trimmed ids stay "seen": a late duplicate is still refused
        assert q.put("prompts", task(unique_run_id, 0)) is None
    finally:
        q.delete_run()


def test_pending_entry_trimmed_away_is_dead_lettered(redis_client: redis.Redis, unique_run_id: str) -> None:
    q = StreamQueue(redis_client, unique_run_id, maxlen=10_000)
    try:
        q.ensure_group("prompts", G)
        fill(q, 2)
        (e,) = q.read("prompts", G, "c1", PromptTask, count=1)
        redis_client.xdel(q.stream("prompts"), e.entry_id)
        got = q.read("prompts", G, "c1", PromptTask, count=1)
        assert got == []  # the pending entry is gone: dead-lettered and acked, not returned
        assert q.pending_count("prompts", G) == 0
        (letter,) = q.dead_letters()
        assert letter.item_id == e.entry_id and "trimmed" in letter.reason
    finally:
        q.delete_run()


def test_wait_for_room_blocks_until_a_consumer_acks(q: StreamQueue) -> None:
    fill(q, 4)
    q.wait_for_room("prompts", G, max_outstanding=5, timeout_s=0.1)  # room: returns at once
    with pytest.raises(TimeoutError, match=f"run:{q.run_id}:prompts"):
        q.wait_for_room("prompts", G, max_outstanding=4, timeout_s=0.15)

    released = threading.Event()
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            q.wait_for_room("prompts", G, max_outstanding=4, timeout_s=10, poll_s=0.01)
            released.set()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    th = threading.Thread(target=producer)
    th.start()
    (e,) = q.read("prompts", G, "c1", PromptTask, count=1)  # reading alone frees nothing (pending)
    assert not released.wait(0.2)
    q.complete("prompts", G, e.entry_id, "generations", [generate(e.record)])
    assert released.wait(5)
    th.join(5)
    assert not errors


def test_blocking_read_wakes_on_new_entry(q: StreamQueue) -> None:
    timer = threading.Timer(0.1, lambda: q.put("prompts", task(q.run_id, 0)))
    timer.start()
    t0 = time.monotonic()
    got = q.read("prompts", G, "c1", PromptTask, count=1, block_ms=5000)
    assert [e.record.prompt_id for e in got] == ["p0"]
    assert time.monotonic() - t0 < 3
    timer.join()
    assert q.read("prompts", G, "c2", PromptTask, count=1, block_ms=50) == []


def test_two_consumers_drain_exactly_once(q: StreamQueue) -> None:
    n = 200
    fill(q, n)
    written: list[int] = []
    processed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def consumer(name: str) -> None:
        try:
            mine = StreamQueue(q.client, q.run_id)
            idle = 0
            while idle < 3:
                entries = mine.read("prompts", G, name, PromptTask, count=7, block_ms=50)
                if not entries:
                    idle += 1
                    continue
                idle = 0
                for e in entries:
                    k = mine.complete("prompts", G, e.entry_id, "generations", [generate(e.record)])
                    with lock:
                        written.append(k)
                        processed.append(e.record.prompt_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=consumer, args=(f"c{i}",)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not errors
    assert sum(written) == n
    assert sorted(processed) == sorted(f"p{i}" for i in range(n))
    outs = q.read_all("generations", GenerationGroup)
    ids = [g.record_id for _, g in outs]
    assert len(ids) == n and len(set(ids)) == n
    assert q.pending_count("prompts", G) == 0 and q.lag("prompts", G) == 0


def test_delete_run_removes_every_key(q: StreamQueue, redis_client: redis.Redis) -> None:
    fill(q, 3)
    q.dead_letter("x", "y", "z")
    assert q.delete_run() >= 3
    run = q.run_id
    assert redis_client.keys(keys.run_pattern(run)) == []
    assert not redis_client.exists(keys.seen(run, "prompts"))


def test_read_creates_a_missing_group(q: StreamQueue) -> None:
    fill(q, 1)
    got = q.read("prompts", "late-group", "c1", PromptTask)
    assert [e.record.prompt_id for e in got] == ["p0"]
    assert q.outstanding("prompts", "late-group") == 1
    assert q.outstanding("prompts", "never-created") == 1  # no group: the whole stream is outstanding


def test_read_new_only_gathers_batches(q: StreamQueue) -> None:
    fill(q, 5)
    first = q.read("prompts", G, "trainer", PromptTask, count=2)
    assert [e.record.prompt_id for e in q.read("prompts", G, "trainer", PromptTask, count=2)] == ["p0", "p1"]
    more = q.read("prompts", G, "trainer", PromptTask, count=2, include_pending=False)
    rest = q.read("prompts", G, "trainer", PromptTask, count=2, include_pending=False)
    assert [e.record.prompt_id for e in first + more + rest] == ["p0", "p1", "p2", "p3", "p4"]
    assert q.pending_count("prompts", G) == 5


def _poison_worker_loop(q: StreamQueue, consumer: str, poison: str, max_deliveries: int = 3) -> tuple[int, list[str]]:
    """A generator that dies (leaves everything pending) whenever its batch holds `poison`; every death is a
    new incarnation under the same consumer name. Returns (deaths, prompt ids completed)."""
    deaths, done = 0, []
    for _ in range(50):
        batch = q.read("prompts", G, consumer, PromptTask, count=16, max_deliveries=max_deliveries, failing_stage="generate")
        if not batch:
            return deaths, done
        if any(e.record.prompt_id == poison for e in batch):
            deaths += 1  # os._exit: nothing completed, nothing acked
            continue
        for e in batch:
            q.complete("prompts", G, e.entry_id, "generations", [generate(e.record)])
            done.append(e.record.prompt_id)
    raise AssertionError("the worker never ran out of work")


def test_poison_entry_is_dead_lettered_alone_and_its_batch_still_generated(q: StreamQueue) -> None:
    """Issue 14 item 3: an entry whose processing kills the worker every time is redelivered alone (its batch
    split), dead-lettered alone after max_deliveries deliveries, and the 15 other prompts of its batch are
    generated; the delivery count comes from Redis, not from an exception."""
    fill(q, 16)
    deaths, done = _poison_worker_loop(q, "gen-0", poison="p5")
    assert deaths == 3  # delivery 1 in the batch, 2 and 3 alone
    assert sorted(done) == sorted(f"p{i}" for i in range(16) if i != 5)
    (letter,) = q.dead_letters()
    assert (letter.stage, letter.item_id, letter.attempts) == ("generate", "p5@v0", 3)
    assert "delivered 3 times" in letter.reason and "max_deliveries 3" in letter.reason
    assert decode(PromptTask, letter.payload).prompt_id == "p5"  # kept whole for a re-queue
    assert q.outstanding("prompts", G) == 0
    assert {g.prompt_id for _, g in q.read_all("generations", GenerationGroup)} == set(done)


def test_redeliveries_come_one_at_a_time_and_new_work_waits_behind_them(q: StreamQueue) -> None:
    fill(q, 4)
    first = q.read("prompts", G, "c1", PromptTask, count=3, max_deliveries=3)
    assert [e.deliveries for e in first] == [1, 1, 1]
    # the worker died: its three pending entries come back one by one, each counted once
    again = q.read("prompts", G, "c1", PromptTask, count=3, max_deliveries=3)
    assert [(e.record.prompt_id, e.deliveries) for e in again] == [("p0", 2)]
    q.complete("prompts", G, again[0].entry_id, None, [])
    nxt = q.read("prompts", G, "c1", PromptTask, count=3, max_deliveries=3)
    assert [(e.record.prompt_id, e.deliveries) for e in nxt] == [("p1", 2)]
    pending = q.client.xpending_range(q.stream("prompts"), G, "-", "+", 10, consumername="c1")
    assert [int(r["times_delivered"]) for r in pending] == [2, 1]  # p2 was not redelivered yet
    q.complete("prompts", G, nxt[0].entry_id, None, [])
    q.complete("prompts", G, q.read("prompts", G, "c1", PromptTask, count=3, max_deliveries=3)[0].entry_id, None, [])
    assert [e.record.prompt_id for e in q.read("prompts", G, "c1", PromptTask, count=3, max_deliveries=3)] == ["p3"]


def test_claimed_entry_past_max_deliveries_is_dead_lettered(q: StreamQueue) -> None:
    """A stale entry another consumer takes over (XAUTOCLAIM counts as a delivery) is dead-lettered alone
    once it would be delivered more than max_deliveries times."""
    fill(q, 2)
    q.read("prompts", G, "dies-1", PromptTask, count=2)  # delivery 1 of p0 and p1
    time.sleep(0.02)
    (c,) = q.claim_stale("prompts", G, "dies-2", PromptTask, 10, 1, max_deliveries=2, failing_stage="generate")
    assert (c.record.prompt_id, c.deliveries) == ("p0", 2)
    time.sleep(0.02)
    # p0's third delivery would exceed 2: dead-lettered; p1 (2nd delivery) is handed over
    got = q.claim_stale("prompts", G, "rescuer", PromptTask, 10, 2, max_deliveries=2, failing_stage="generate")
    assert [(e.record.prompt_id, e.deliveries) for e in got] == [("p1", 2)]
    (letter,) = q.dead_letters()
    assert (letter.item_id, letter.attempts, letter.stage) == ("p0@v0", 2, "generate")
    assert q.pending_count("prompts", G) == 1


def test_wait_for_room_counts_the_entries_to_write(redis_client: redis.Redis, unique_run_id: str) -> None:
    q = StreamQueue(redis_client, unique_run_id, maxlen=100)
    try:
        q.ensure_group("prompts", G)
        fill(q, 95)
        q.wait_for_room("prompts", G, timeout_s=0.1, needed=5)  # 95 + 5 fit in maxlen 100
        with pytest.raises(TimeoutError, match=f"run:{unique_run_id}:prompts.*'{G}'"):
            q.wait_for_room("prompts", G, timeout_s=0.1, needed=6)
        with pytest.raises(ValueError, match="can never fit"):
            q.wait_for_room("prompts", G, timeout_s=0.1, needed=101)
    finally:
        q.delete_run()


def test_prune_removes_finished_iterations_and_keeps_memory_flat(redis_client: redis.Redis, unique_run_id: str) -> None:
    """Issue 14 item 4: a stream and its seen-set hold only unfinished iterations once each recorded one is
    pruned, so 10 iterations take the room of one; nothing pending or undelivered is ever pruned."""
    q = StreamQueue(redis_client, unique_run_id, maxlen=1000)
    q.ensure_group("prompts", G)
    sizes = []
    try:
        for it in range(1, 11):
            for i in range(20):
                q.put("prompts", task(unique_run_id, i, version=it - 1).model_copy(update={"iteration": it}))
            for e in q.read("prompts", G, "c", PromptTask, count=100):
                q.complete("prompts", G, e.entry_id, None, [])
            assert q.prune("prompts", G, before_iteration=it) == (20 if it > 1 else 0)  # iteration it - 1 goes
            sizes.append((q.length("prompts"), q.written("prompts"), redis_client.memory_usage(q.stream("prompts"))))
        assert {(n, w) for n, w, _ in sizes[1:]} == {(20, 20)}
        assert max(m for _, _, m in sizes[1:]) <= 1.2 * sizes[1][2]
        # an unacknowledged entry, and everything after it, stays
        for i in range(3):
            q.put("prompts", task(unique_run_id, 100 + i, version=10).model_copy(update={"iteration": 11}))
        first, *rest = q.read("prompts", G, "c", PromptTask, count=3)
        for e in rest:
            q.complete("prompts", G, e.entry_id, None, [])
        assert q.prune("prompts", G, before_iteration=12) == 20  # iteration 10 only: p100 is pending
        assert q.length("prompts") == 3 and q.written("prompts") == 3
        q.put("prompts", task(unique_run_id, 200, version=10).model_copy(update={"iteration": 11}))  # undelivered
        q.complete("prompts", G, first.entry_id, None, [])
        assert q.prune("prompts", G, before_iteration=12) == 3
        assert [t.prompt_id for _, t in q.read_all("prompts", PromptTask)] == ["p200"]
    finally:
        q.delete_run()


def test_prune_with_an_archive_keeps_every_entry_readable_once(
    redis_client: redis.Redis, unique_run_id: str, tmp_path: Path
) -> None:
    """Issue 14 item 4 for pairs: a pruned head goes to the history file first, and `iter_records` with that
    archive reads the whole stage once, oldest first or newest first, also when a prune crashed between its
    archive write and its trim (the rows are then in both places) and when the file has a row that does not
    validate (skipped, the rest still read)."""
    archive = tmp_path / history.PAIRS_FILE
    q = StreamQueue(redis_client, unique_run_id, maxlen=1000)
    q.ensure_group("prompts", G)
    try:
        for it in (1, 2, 3):
            for i in range(4):
                q.put("prompts", task(unique_run_id, 10 * it + i, version=it - 1).model_copy(update={"iteration": it}))
        for e in q.read("prompts", G, "c", PromptTask, count=100):
            q.complete("prompts", G, e.entry_id, None, [])
        every = [(eid, t.prompt_id) for eid, t in q.read_all("prompts", PromptTask)]
        assert q.prune("prompts", G, before_iteration=3, archive=archive) == 8
        assert q.length("prompts") == 4 and [r["id"] for r in history.read_rows(archive)] == [e for e, _ in every[:8]]
        joined = [(eid, t.prompt_id) for eid, t in q.read_all("prompts", PromptTask, archive=archive)]
        assert joined == every
        newest = [(eid, t.prompt_id) for eid, t in q.iter_records("prompts", PromptTask, newest_first=True, archive=archive)]
        assert newest == every[::-1]
        # a prune cut short after its archive write: the next entry is archived but still in the stream
        data = msgpack.unpackb(redis_client.xrange(q.stream("prompts"), count=1)[0][1][b"data"], raw=False)
        history.append_rows(archive, [{"id": every[8][0], "data": data}], history.event_key)
        assert [(eid, t.prompt_id) for eid, t in q.read_all("prompts", PromptTask, archive=archive)] == every
        # the same prune again writes no row twice
        assert q.prune("prompts", G, before_iteration=4, archive=archive) == 4
        assert [r["id"] for r in history.read_rows(archive)] == [e for e, _ in every]
        # a damaged row is skipped, not fatal
        with archive.open("a") as f:
            f.write('{"id": "9999999999999-0", "data": {"iteration": "not a number"}}\n')
        assert [(eid, t.prompt_id) for eid, t in q.read_all("prompts", PromptTask, archive=archive)] == every
    finally:
        q.delete_run()
