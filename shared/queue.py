"""The per-run work queue: Redis Streams with consumer groups, idempotent by record id, with a dead-letter stream.

Knows: the streams of a run (one per stage plus a per-stage seen-set, named by `keys.stream` and
`keys.seen`), the entry layout (fields `id` = record id, `data` = msgpack of the record), at-least-once
delivery (`XREADGROUP`/`XACK`/`XAUTOCLAIM`/`XCLAIM`), and how to make it effectively-once: every write of
a record is deduplicated by its deterministic `record_id` in the same Lua script that writes it, and
`complete()` writes a stage's outputs and acknowledges its input in one script.
Does not know: what a stage does with a record, Ray, staleness rules, or run state (see `store.py`).

Operational notes:
- Streams are trimmed with `MAXLEN ~ maxlen`. Trimming can drop entries nobody has read yet, so producers
  call `wait_for_room` (backpressure) to keep the outstanding work of a group below `maxlen`.
  An entry trimmed while still pending is dead-lettered when it is next read or claimed.
- Seen-sets grow with the number of distinct records of a run; `prune` removes finished entries of recorded
  iterations with their ids (the controller's per-iteration retention), `delete_run` removes everything.
- Poison entries: a consumer reading with `max_deliveries` gets redeliveries one at a time and dead-letters
  one delivered that often alone (Redis counts deliveries, so a worker that died counts too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal

import msgpack
import redis

from . import history, keys
from .history import entry_key  # an entry id as (ms, seq), which orders like the stream
from .records import DeadLetter, R, Record, decode, encode

logger = logging.getLogger(__name__)

Stage = Literal["prompts", "generations", "pairs", "feedback", "dead", "events"]
STAGES: tuple[str, ...] = ("prompts", "generations", "pairs", "feedback", "dead", "events")
DEAD = "dead"
DEFAULT_MAXLEN = 100_000
# Blocking reads are capped so they always return well inside the client's socket timeout.
MAX_BLOCK_MS = 10_000

# Scripts are not rolled back on error, so each writes the entry before marking its id seen: an id in a
# seen-set always has its entry written (a failed XADD leaves the id unseen, so a retry writes it).
# KEYS: seen-set, stream. ARGV: record id, data, maxlen. Returns the new entry id, or nil for a duplicate.
_PUT_LUA = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[1], 'data', ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
return id
"""

# KEYS: seen-set, stream. ARGV: maxlen, then (record id, data) pairs. Writes every record whose id is unseen, in
# one script (all of them or, if Redis fails before it runs, none). Returns how many were new.
_PUT_MANY_LUA = """
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'id', ARGV[i], 'data', ARGV[i + 1])
    redis.call('SADD', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""

# KEYS: input stream[, output seen-set, output stream]. ARGV: group, input entry id, maxlen, then
# (record id, data) pairs. Writes the new outputs, then acks the input. Returns how many outputs were new.
_COMPLETE_LUA = """
local n = 0
if #KEYS >= 3 then
  for i = 4, #ARGV, 2 do
    if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[i], 'data', ARGV[i + 1])
      redis.call('SADD', KEYS[2], ARGV[i])
      n = n + 1
    end
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return n
"""


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _before(key: tuple[int, int]) -> tuple[int, int]:
    """The largest entry id below `key` (entry ids are (ms, seq) pairs)."""
    ms, seq = key
    return (ms, seq - 1) if seq > 0 else (ms - 1, 2**64 - 1)


def _unpacked(fields: dict[bytes, bytes]) -> Any:
    """An entry's record as plain data (msgpack-decoded, not validated); None for undecodable junk."""
    try:
        return msgpack.unpackb(fields[b"data"], raw=False)
    except Exception:  # noqa: BLE001
        return None


def _last_archived_id(archive: Path) -> str | None:
    """The entry id of an archive's last row (its tail only), None for no file or no rows."""
    try:
        last = history.last_row(archive)
    except ValueError:  # a damaged last line: the last row that reads
        rows = history.read_rows(archive)
        last = rows[-1] if rows else None
    return str(last["id"]) if last else None


def _archived_records(rows: list[dict[str, Any]], cls: type[R], archive: Path | None) -> Iterator[tuple[str, R]]:
    """(entry id, record) of archive rows; a row that does not validate as `cls` is skipped (logged)."""
    for row in rows:
        try:
            yield str(row["id"]), cls.model_validate(row["data"])
        except Exception as exc:  # noqa: BLE001
            logger.warning("skipping undecodable row %s of %s: %s", row.get("id"), archive, exc)


def _iteration(fields: dict[bytes, bytes]) -> int:
    """The `iteration` of an entry's record without validating it (-1 when it has none: undecodable junk,
    dead-lettered when it was read, is as finished as its neighbours)."""
    try:
        return int(msgpack.unpackb(fields[b"data"], raw=False).get("iteration", -1))
    except Exception:  # noqa: BLE001
        return -1


@dataclass(frozen=True)
class Entry(Generic[R]):
    """One delivered stream entry: its stream id, the decoded record, and how often it has been delivered."""

    entry_id: str
    record: R
    deliveries: int


class StreamQueue:
    """The streams of one run. Thread-safe as far as the underlying client is (redis-py pools connections)."""

    def __init__(self, client: redis.Redis, run_id: str, maxlen: int = DEFAULT_MAXLEN) -> None:
        if not run_id:
            raise ValueError("run_id must be non-empty")
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self.client = client
        self.run_id = run_id
        self.maxlen = maxlen
        self._put_script = client.register_script(_PUT_LUA)
        self._put_many_script = client.register_script(_PUT_MANY_LUA)
        self._complete_script = client.register_script(_COMPLETE_LUA)

    # ------------------------------------------------------------------------------------------------
    # keys

    def stream(self, stage: str) -> str:
        self._check_stage(stage)
        return keys.stream(self.run_id, stage)

    def _seen(self, stage: str) -> str:
        self._check_stage(stage)
        return keys.seen(self.run_id, stage)

    @staticmethod
    def _check_stage(stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")

    # ------------------------------------------------------------------------------------------------
    # writing

    def ensure_group(self, stage: str, group: str) -> None:
        """Create consumer group `group` on the stage's stream (and the stream), reading from the start."""
        try:
            self.client.xgroup_create(self.stream(stage), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def put(self, stage: str, record: Record) -> str | None:
        """Append `record` unless a record with its `record_id` was ever written to this stage.

        Returns the new entry id, or None for a duplicate.
        """
        result = self._put_script(
            keys=[self._seen(stage), self.stream(stage)],
            args=[record.record_id, encode(record), self.maxlen],
        )
        return None if result is None else _s(result)

    def put_many(self, stage: str, records: Sequence[Record]) -> int:
        """Append every record of `records` whose `record_id` was never written to this stage, in ONE script:
        Redis runs it whole, so a caller never leaves part of a batch stored (the feedback route's
        all-or-nothing). Returns how many were new (0 when all were written before)."""
        if not records:
            return 0
        args: list[Any] = [self.maxlen]
        for rec in records:
            args += [rec.record_id, encode(rec)]
        return int(self._put_many_script(keys=[self._seen(stage), self.stream(stage)], args=args))

    def complete(
        self,
        stage: str,
        group: str,
        entry_id: str,
        out_stage: str | None,
        out_records: Sequence[Record] = (),
    ) -> int:
        """Atomically write the new ones of `out_records` to `out_stage`, then ack `entry_id` on `stage`.

        Outputs are deduplicated by record id, so completing a redelivered entry again writes nothing
        twice. Returns how many outputs were new.
        """
        script_keys = [self.stream(stage)]
        args: list[Any] = [group, entry_id, self.maxlen]
        if out_records:
            if out_stage is None:
                raise ValueError("out_records given without an out_stage")
            script_keys += [self._seen(out_stage), self.stream(out_stage)]
            for rec in out_records:
                args += [rec.record_id, encode(rec)]
        return int(self._complete_script(keys=script_keys, args=args))

    def dead_letter(
        self, stage_of_failure: str, record_id: str, reason: str, payload: bytes = b"", attempts: int = 1
    ) -> str | None:
        """Record a give-up on the dead stream (deduplicated by the dead letter's record id)."""
        letter = DeadLetter(
            stage=stage_of_failure, item_id=record_id, reason=reason, attempts=attempts, payload=payload
        )
        logger.warning(
            "dead-lettering %s at %s after %d attempt(s): %s", record_id, stage_of_failure, attempts, reason
        )
        return self.put(DEAD, letter)

    def fail(
        self,
        stage: str,
        group: str,
        entry: Entry[Any],
        failing_stage: str,
        reason: str,
        max_attempts: int = 3,
    ) -> bool:
        """Report that processing `entry` failed.

        After `max_attempts` deliveries the entry is dead-lettered and acked in one script (returns True);
        before that it stays pending, so the consumer's next `read` (or a claim) delivers it again (False).
        """
        if entry.deliveries < max_attempts:
            logger.info(
                "entry %s on %s failed (delivery %d of %d): %s",
                entry.entry_id, self.stream(stage), entry.deliveries, max_attempts, reason,
            )  # fmt: skip
            return False
        letter = DeadLetter(
            stage=failing_stage,
            item_id=entry.record.record_id,
            reason=reason,
            attempts=entry.deliveries,
            payload=encode(entry.record),
        )
        logger.warning(
            "dead-lettering %s at %s after %d attempt(s): %s",
            letter.item_id, failing_stage, entry.deliveries, reason,
        )  # fmt: skip
        self.complete(stage, group, entry.entry_id, DEAD, [letter])
        return True

    # ------------------------------------------------------------------------------------------------
    # reading

    def read_pending(self, stage: str, group: str, consumer: str, cls: type[R], count: int = 4096) -> list[Entry[R]]:
        """Up to `count` of `consumer`'s pending entries (delivered, not acknowledged), never new ones: what a
        replacement consumer acknowledges for the work its predecessor finished."""
        key = self.stream(stage)
        return self._decode_delivered(stage, group, consumer, cls, self._xreadgroup(group, consumer, key, "0", count, None), fresh=False)

    def read(
        self,
        stage: str,
        group: str,
        consumer: str,
        cls: type[R],
        count: int = 16,
        block_ms: int | None = None,
        include_pending: bool = True,
        max_deliveries: int | None = None,
        failing_stage: str | None = None,
    ) -> list[Entry[R]]:
        """Up to `count` entries for `consumer`: its own pending entries first, then new ones.

        With `max_deliveries` (poison entries, docs/reliability.md) a consumer's pending entries are
        redeliveries of work a predecessor died on (or gave up on): they come back one at a time, each alone
        (so one poison entry cannot take its batch down with it again), and one already delivered
        `max_deliveries` times is dead-lettered alone instead (its dead letter names `failing_stage`, default
        `stage`, and the delivery count). Only when nothing is pending are new entries read, `count` at once.

        Re-reading pending entries first means a restarted consumer with the same name resumes its
        in-flight work (and that an entry left pending by `fail` is retried). `block_ms` (capped at
        `MAX_BLOCK_MS`) waits for new entries only when there is nothing pending. Undecodable entries
        are dead-lettered and acked, never returned. A missing group is created (reading from the start).

        Pending entries are returned again on every call until completed; a consumer that gathers several
        batches before completing any passes `include_pending=False` after its first call.
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        key = self.stream(stage)
        if max_deliveries is not None and include_pending:
            redelivered = self._redelivery(stage, group, consumer, cls, max_deliveries, failing_stage or stage)
            if redelivered is not None:
                return redelivered
            include_pending = False  # nothing pending: only new entries
        pending = self._xreadgroup(group, consumer, key, "0", count, None) if include_pending else []
        entries = self._decode_delivered(stage, group, consumer, cls, pending, fresh=False)
        if pending:
            # Pending entries (possibly all undecodable) were found: don't block behind them.
            if len(pending) >= count:
                return entries
            block_ms = None
        block = None if block_ms is None or block_ms <= 0 else min(int(block_ms), MAX_BLOCK_MS)
        fresh = self._xreadgroup(group, consumer, key, ">", count - len(pending), block)
        entries += self._decode_delivered(stage, group, consumer, cls, fresh, fresh=True)
        return entries

    def _redelivery(
        self, stage: str, group: str, consumer: str, cls: type[R], max_deliveries: int, failing_stage: str
    ) -> list[Entry[R]] | None:
        """The consumer's oldest pending entry, redelivered alone; None when nothing is pending. Entries
        already delivered `max_deliveries` times are dead-lettered on the way (XPENDING reads the count
        without delivering)."""
        key = self.stream(stage)
        while True:
            rows = self.client.xpending_range(key, group, min="-", max="+", count=1, consumername=consumer)
            if not rows:
                return None
            entry_id, delivered = _s(rows[0]["message_id"]), int(rows[0]["times_delivered"])
            if delivered >= max_deliveries:
                self._give_up(stage, group, entry_id, delivered, max_deliveries, failing_stage)
                continue
            got = self._decode_delivered(
                stage, group, consumer, cls, self._xreadgroup(group, consumer, key, "0", 1, None), fresh=False
            )
            if got:
                return got
            # it was undecodable or trimmed: dead-lettered by the decode, look at the next one

    def _give_up(
        self, stage: str, group: str, entry_id: str, delivered: int, max_deliveries: int, failing_stage: str
    ) -> None:
        """Dead-letter entry `entry_id` alone (its payload kept for a re-queue) and acknowledge it."""
        rows = self.client.xrange(self.stream(stage), min=entry_id, max=entry_id, count=1)
        fields = rows[0][1] if rows else {}
        item_id = _s(fields.get(b"id", entry_id.encode()))
        reason = (
            f"delivered {delivered} times to {group} without completing (resilience.max_deliveries "
            f"{max_deliveries}): the worker processing it died or gave up each time; dead-lettered alone, "
            "the rest of its batch goes on"
        )
        self._dead_letter_and_ack(stage, group, entry_id, item_id, reason, fields.get(b"data", b""), delivered,
                                  failing_stage)  # fmt: skip

    def _xreadgroup(
        self, group: str, consumer: str, key: str, start: str, count: int, block: int | None
    ) -> list[tuple[str, dict[bytes, bytes] | None]]:
        try:
            resp = self.client.xreadgroup(group, consumer, {key: start}, count=count, block=block)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The consumer started before anyone created its group: create it (from the start) and retry.
            self.client.xgroup_create(key, group, id="0", mkstream=True)
            resp = self.client.xreadgroup(group, consumer, {key: start}, count=count, block=block)
        if not resp:
            return []
        # RESP2: [[stream, [(id, fields), ...]]]; RESP3: {stream: [[(id, fields), ...]]}
        if isinstance(resp, dict):
            items = next(iter(resp.values()))
            items = items[0] if items and isinstance(items[0], list) else items
        else:
            items = resp[0][1]
        return [(_s(eid), fields or None) for eid, fields in items]

    def _deliveries(self, key: str, group: str, consumer: str, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for eid in ids:
            pipe.xpending_range(key, group, min=eid, max=eid, count=1, consumername=consumer)
        out: dict[str, int] = {}
        for eid, rows in zip(ids, pipe.execute(), strict=True):
            out[eid] = int(rows[0]["times_delivered"]) if rows else 1
        return out

    def _decode_delivered(
        self,
        stage: str,
        group: str,
        consumer: str,
        cls: type[R],
        items: Sequence[tuple[str, dict[bytes, bytes] | None]],
        fresh: bool,
    ) -> list[Entry[R]]:
        if not items:
            return []
        key = self.stream(stage)
        counts = (
            {eid: 1 for eid, _ in items}
            if fresh
            else self._deliveries(key, group, consumer, [e for e, _ in items])
        )
        out: list[Entry[R]] = []
        for eid, fields in items:
            entry = self._decode_or_dead_letter(stage, group, cls, eid, fields, counts.get(eid, 1))
            if entry is not None:
                out.append(entry)
        return out

    def _decode_or_dead_letter(
        self,
        stage: str,
        group: str,
        cls: type[R],
        entry_id: str,
        fields: dict[bytes, bytes] | None,
        deliveries: int,
    ) -> Entry[R] | None:
        if fields is None:
            self._dead_letter_and_ack(
                stage, group, entry_id, entry_id,
                f"entry {entry_id} was trimmed from {self.stream(stage)} (MAXLEN) before it was processed",
                b"", deliveries,
            )  # fmt: skip
            return None
        data = fields.get(b"data")
        item_id = _s(fields.get(b"id", entry_id.encode()))
        try:
            if data is None:
                raise ValueError("entry has no 'data' field")
            record = decode(cls, data)
        except Exception as exc:  # noqa: BLE001 - any undecodable payload is dead-lettered, never raised
            self._dead_letter_and_ack(
                stage, group, entry_id, item_id,
                f"cannot decode entry {entry_id} of {self.stream(stage)} as {cls.__name__}: {exc}",
                data or b"", deliveries,
            )  # fmt: skip
            return None
        return Entry(entry_id=entry_id, record=record, deliveries=deliveries)

    def _dead_letter_and_ack(
        self,
        stage: str,
        group: str,
        entry_id: str,
        item_id: str,
        reason: str,
        payload: bytes,
        attempts: int,
        failing_stage: str | None = None,
    ) -> None:
        logger.error("%s: %s", item_id, reason)
        letter = DeadLetter(
            stage=failing_stage or stage, item_id=item_id, reason=reason, attempts=attempts, payload=payload
        )
        self.complete(stage, group, entry_id, DEAD, [letter])

    def claim_stale(
        self,
        stage: str,
        group: str,
        consumer: str,
        cls: type[R],
        min_idle_ms: int,
        count: int = 100,
        max_deliveries: int | None = None,
        failing_stage: str | None = None,
    ) -> list[Entry[R]]:
        """Move up to `count` entries pending longer than `min_idle_ms` (any consumer) to `consumer` (XAUTOCLAIM).

        Claiming is a delivery: with `max_deliveries`, a claimed entry delivered more often than that is
        dead-lettered alone (as in `read`) instead of returned. A poison-aware consumer claims one at a time.
        """
        key = self.stream(stage)
        claimed: list[tuple[str, dict[bytes, bytes] | None]] = []
        cursor = "0-0"
        while len(claimed) < count:
            resp = self.client.xautoclaim(
                key, group, consumer, min_idle_ms, start_id=cursor, count=count - len(claimed)
            )
            cursor = _s(resp[0])
            claimed += [(_s(eid), fields or None) for eid, fields in resp[1]]
            deleted = resp[2] if len(resp) > 2 else []
            for eid in deleted:  # already removed from the PEL by Redis; record the loss
                eid_s = _s(eid)
                self.dead_letter(
                    stage, eid_s, f"entry {eid_s} was trimmed from {key} (MAXLEN) before it was processed"
                )
            if cursor == "0-0":
                break
        if claimed:
            logger.info("%s claimed %d stale entries on %s", consumer, len(claimed), key)
        entries = self._decode_delivered(stage, group, consumer, cls, claimed, fresh=False)
        if max_deliveries is None:
            return entries
        kept = []
        for e in entries:
            if e.deliveries > max_deliveries:
                self._give_up(stage, group, e.entry_id, e.deliveries - 1, max_deliveries, failing_stage or stage)
            else:
                kept.append(e)
        return kept

    def reassign(
        self, stage: str, group: str, from_consumer: str, to_consumer: str, cls: type[R]
    ) -> list[Entry[R]]:
        """Move every entry pending for `from_consumer` (known dead) to `to_consumer` now (XCLAIM, min idle 0)."""
        key = self.stream(stage)
        claimed: list[tuple[str, dict[bytes, bytes] | None]] = []
        while True:
            rows = self.client.xpending_range(
                key, group, min="-", max="+", count=500, consumername=from_consumer
            )
            if not rows:
                break
            ids = [_s(r["message_id"]) for r in rows]
            got = self.client.xclaim(key, group, to_consumer, 0, ids)
            got_ids = set()
            for eid, fields in got:
                got_ids.add(_s(eid))
                claimed.append((_s(eid), fields or None))
            missing = [i for i in ids if i not in got_ids]
            for eid in missing:  # trimmed entries: XCLAIM drops them from the PEL without returning them
                self.dead_letter(
                    stage, eid, f"entry {eid} was trimmed from {key} (MAXLEN) before it was processed"
                )
            if len(rows) < 500:
                break
        if claimed:
            logger.info(
                "reassigned %d entries on %s from %s to %s", len(claimed), key, from_consumer, to_consumer
            )
        return self._decode_delivered(stage, group, to_consumer, cls, claimed, fresh=False)

    # ------------------------------------------------------------------------------------------------
    # inspection and backpressure

    def written(self, stage: str) -> int:
        """Distinct records written to `stage` (its seen-set size; unaffected by MAXLEN trimming, reduced only
        by `prune` of recorded iterations)."""
        return int(self.client.scard(self._seen(stage)))

    def length(self, stage: str) -> int:
        return int(self.client.xlen(self.stream(stage)))

    def pending_count(self, stage: str, group: str) -> int:
        """Entries delivered to `group` and not yet acked (0 if the group or stream does not exist)."""
        try:
            info = self.client.xpending(self.stream(stage), group)
        except redis.ResponseError:
            return 0
        return int(info["pending"])

    def _group_info(self, stage: str, group: str) -> dict[str, Any] | None:
        try:
            groups = self.client.xinfo_groups(self.stream(stage))
        except redis.ResponseError:
            return None
        for g in groups:
            if _s(g["name"]) == group:
                return g
        return None

    def lag(self, stage: str, group: str) -> int:
        """Entries in the stream not yet delivered to `group` (the whole stream if the group does not exist)."""
        info = self._group_info(stage, group)
        if info is None:
            return self.length(stage)
        return self._lag_of(stage, info)

    def _lag_of(self, stage: str, info: dict[str, Any]) -> int:
        lag = info.get("lag")
        if lag is not None:
            return int(lag)
        # Redis cannot compute lag after some deletions (XDEL): count entries past last-delivered instead.
        last = _s(info["last-delivered-id"])
        n, start = 0, f"({last}"
        key = self.stream(stage)
        while True:
            batch = self.client.xrange(key, min=start, max="+", count=1000)
            n += len(batch)
            if len(batch) < 1000:
                return n
            start = f"({_s(batch[-1][0])}"

    def outstanding(self, stage: str, group: str) -> int:
        """Pending + lag of `group`: work it has not finished (the whole stream if the group does not exist).

        Both numbers come from one XINFO GROUPS reply, so an entry moving from lag to pending while this
        runs is never missed.
        """
        info = self._group_info(stage, group)
        if info is None:
            return self.length(stage)
        return int(info["pending"]) + self._lag_of(stage, info)

    def wait_for_room(
        self,
        stage: str,
        group: str,
        max_outstanding: int | None = None,
        timeout_s: float = 600.0,
        poll_s: float = 0.05,
        needed: int = 1,
    ) -> None:
        """Block until `needed` more entries fit: while `group`'s outstanding work on the stage plus `needed`
        exceeds `max_outstanding` (default `maxlen`: an entry trimmed by MAXLEN is then always one `group` has
        finished). TimeoutError, naming the stream and group, if it stays full for `timeout_s`."""
        limit = self.maxlen if max_outstanding is None else max_outstanding
        if needed > limit:
            raise ValueError(f"{needed} entries can never fit in {self.stream(stage)} (limit {limit})")
        deadline = time.monotonic() + timeout_s
        while True:
            n = self.outstanding(stage, group)
            if n + needed <= limit:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.stream(stage)}: consumer group {group!r} still has {n} outstanding entries "
                    f"(limit {max_outstanding}) after {timeout_s:g}s"
                )
            time.sleep(poll_s)

    def read_all(self, stage: str, cls: type[R], archive: Path | None = None) -> list[tuple[str, R]]:
        """Every (entry id, record) of the stage, oldest first: those `prune` moved to `archive` (when given),
        then those still in the stream; undecodable entries are skipped (logged)."""
        return list(self.iter_records(stage, cls, archive=archive))

    def iter_records(
        self, stage: str, cls: type[R], newest_first: bool = False, page: int = 1000, archive: Path | None = None
    ) -> Iterator[tuple[str, R]]:
        """(entry id, record) of every entry of the stage, a page at a time (for exports of any size): with
        `archive` (the history file `prune` wrote the stage's pruned head to, `shared/history.py`), the archived
        entries first and then the stream's entries after the last archived id (an entry archived but not yet
        trimmed, by a prune a crash cut short, is read once); `newest_first` reverses the whole order.
        Undecodable entries are skipped (logged)."""
        after = _last_archived_id(archive) if archive is not None else None  # the file's tail only
        if not newest_first and archive is not None:
            yield from _archived_records(history.read_rows(archive), cls, archive)
        for eid, record in self._stream_records(stage, cls, newest_first, page):
            if after is not None and entry_key(eid) <= entry_key(after):
                if newest_first:
                    break
                continue
            yield eid, record
        if newest_first and archive is not None:  # read only when a reader gets past the stream (e.g. /pairs)
            yield from _archived_records(history.read_rows(archive)[::-1], cls, archive)

    def _stream_records(self, stage: str, cls: type[R], newest_first: bool, page: int) -> Iterator[tuple[str, R]]:
        key = self.stream(stage)
        cursor = "+" if newest_first else "-"
        while True:
            if newest_first:
                batch = self.client.xrevrange(key, max=cursor, min="-", count=page)
            else:
                batch = self.client.xrange(key, min=cursor, max="+", count=page)
            for eid, fields in batch:
                eid_s = _s(eid)
                try:
                    record = decode(cls, fields[b"data"])
                except Exception as exc:  # noqa: BLE001
                    logger.warning("skipping undecodable entry %s of %s: %s", eid_s, key, exc)
                    continue
                yield eid_s, record
            if len(batch) < page:
                return
            cursor = f"({_s(batch[-1][0])}"

    def dead_letters(self) -> list[DeadLetter]:
        return [rec for _, rec in self.read_all(DEAD, DeadLetter)]

    def remove_dead_letters(self, entry_ids: Sequence[str]) -> int:
        """Delete dead letters by entry id (they were re-queued); their ids stay in the dead seen-set, so the
        iteration counts of dead letters (`written("dead")`) never go backwards."""
        return int(self.client.xdel(self.stream(DEAD), *entry_ids)) if entry_ids else 0

    # ------------------------------------------------------------------------------------------------
    # retention

    def prune(
        self, stage: str, group: str, before_iteration: int, page: int = 500, archive: Path | None = None
    ) -> int:
        """Remove the finished head of `stage`: oldest first, every entry `group` has been delivered and has
        acknowledged whose record's `iteration` is below `before_iteration`, stopping at the first entry that
        is not; the removed records' ids leave the stage's seen-set. Returns how many entries were removed.
        With `archive`, the head is first appended to that history file (`{"id", "data"}` lines,
        `shared/history.py`; idempotent by entry id), so `iter_records(..., archive=...)` still reads it; an
        OSError writing it leaves the stream untouched.

        This is the per-iteration retention that keeps Redis flat over a long run (docs/reliability.md): a
        finished entry is never read again, and its record id can never be written again (ids carry the
        policy version, and a recorded iteration's version is never generated again).
        """
        key = self.stream(stage)
        info = self._group_info(stage, group)
        if info is None:
            return 0
        bound = entry_key(_s(info["last-delivered-id"]))  # entries after it were never delivered
        summary = self.client.xpending(key, group)
        if summary["pending"]:
            bound = min(bound, _before(entry_key(_s(summary["min"]))))  # nor acknowledged from here on
        ids: list[bytes] = []
        rows: list[dict[str, Any]] = []
        last: tuple[int, int] | None = None
        cursor = "-"
        while True:
            batch = self.client.xrange(key, min=cursor, max="+", count=page)
            for eid, fields in batch:
                at = entry_key(_s(eid))
                if at > bound or _iteration(fields) >= before_iteration:
                    return self._drop_head(stage, ids, last, archive, rows)
                ids.append(fields.get(b"id", b""))
                if archive is not None and (data := _unpacked(fields)) is not None:  # junk is not kept
                    rows.append({"id": _s(eid), "data": data})
                last = at
            if len(batch) < page:
                return self._drop_head(stage, ids, last, archive, rows)
            cursor = f"({_s(batch[-1][0])}"

    def _drop_head(
        self, stage: str, ids: list[bytes], last: tuple[int, int] | None, archive: Path | None,
        rows: list[dict[str, Any]],
    ) -> int:  # fmt: skip
        if last is None:
            return 0
        if archive is not None:
            history.append_rows(archive, rows, history.event_key)  # before the trim: nothing leaves unarchived
        seen = [i for i in ids if i]
        for start in range(0, len(seen), 1000):
            self.client.srem(self._seen(stage), *seen[start : start + 1000])
        removed = int(self.client.xtrim(self.stream(stage), minid=f"{last[0]}-{last[1] + 1}", approximate=False))
        logger.info("pruned %d finished entries of %s", removed, self.stream(stage))
        return removed

    def delete_run(self) -> int:
        """Delete every stream and seen-set of this run; returns the number of keys removed."""
        names = [keys.stream(self.run_id, s) for s in STAGES] + [keys.seen(self.run_id, s) for s in STAGES]
        return int(self.client.delete(*names))
