"""Run state in Redis: runs and their lifecycle state, iteration records, small per-run blobs, run events.
With the run's history on disk (`history.py`): Redis holds a window of the newest iterations' records and
events, `<run dir>/iterations.jsonl` and `events.jsonl` hold all of them, and the readers here
(`iterations`, `last_complete_iteration`, `events`) join the two, so every caller sees the whole run.

Keys (named in `keys.py`, which lists every key with its type and writers): the `runs` index (`keys.RUNS`)
and per run `keys.meta` (run_id, config JSON, run_dir, state, reason, labels, timestamps), `keys.iterations`
(iteration number -> msgpack `IterationRecord`, first write wins), `keys.kv` (small named blobs, e.g.
cached iteration-0 eval samples), `keys.events` (small events, fields `kind` and `data` = msgpack dict, for
dashboards) and `keys.control` (a pending "pause" / "stop" request for the run's controller).

Run states: created -> running -> completed | failed; running -> pausing -> paused -> running (resume);
running | pausing | paused -> stopping -> stopped (a paused run has no controller and stops at once).

Knows: these keys, the run states and when history moves to disk. Does not know: how a run is executed, the work streams and their
seen-sets (see `queue.py`), or checkpoints (which live on disk / fsspec, referenced by path only).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import msgpack
import redis

from . import history, keys
from .events import EVENTS_MAXLEN
from .records import IterationRecord, decode, encode

logger = logging.getLogger(__name__)

RunState = Literal["created", "running", "pausing", "paused", "stopping", "stopped", "completed", "failed"]
RUN_STATES: tuple[str, ...] = ("created", "running", "pausing", "paused", "stopping", "stopped", "completed", "failed")
# A run in one of these states has (or should have) a live controller; the others are at rest.
ACTIVE_STATES: tuple[str, ...] = ("running", "pausing", "stopping")
TERMINAL_STATES: tuple[str, ...] = ("stopped", "completed", "failed")

# KEYS: meta, runs index, events. ARGV: run_id, config json, run_dir, now, event data, events maxlen, labels json.
_CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'config', ARGV[2], 'run_dir', ARGV[3], 'state', 'created',
           'reason', '', 'created_at', ARGV[4], 'updated_at', ARGV[4], 'labels', ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'kind', 'run_created', 'data', ARGV[5])
return 1
"""

# KEYS: meta, events. ARGV: state, reason, now, event data, maxlen, allowed states (space-separated).
# Returns '' after the change, else the current state (or '-' if the run does not exist).
_TRANSITION_LUA = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then
  return '-'
end
for allowed in string.gmatch(ARGV[6], '%S+') do
  if allowed == current then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2], 'updated_at', ARGV[3])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'state', 'data', ARGV[4])
    return ''
  end
end
return current
"""

# KEYS: iterations hash, events. ARGV: iteration, record data, event data, maxlen. Returns 1 if new.
_ITER_LUA = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'kind', 'iteration', 'data', ARGV[3])
return 1
"""


class RunExists(ValueError):
    """A run with this id already exists."""


class RunNotFound(KeyError):
    """No run with this id."""


class InvalidTransition(ValueError):
    """The run is not in a state that allows the requested change."""

    def __init__(self, run_id: str, current: str, target: str) -> None:
        super().__init__(f"run {run_id!r} is {current}; it cannot become {target}")
        self.current, self.target = current, target


def _pack(data: Mapping[str, Any]) -> bytes:
    return msgpack.packb(dict(data), use_bin_type=True)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RunStore:
    """Runs, their state, iteration records and small blobs, in one Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._create = client.register_script(_CREATE_LUA)
        self._iter = client.register_script(_ITER_LUA)
        self._transition = client.register_script(_TRANSITION_LUA)

    # ------------------------------------------------------------------------------------------------
    # runs

    def create_run(
        self, run_id: str, config: Mapping[str, Any], run_dir: str, labels: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Register a new run in state `created`; raises `RunExists` if the id is taken.

        `labels` are small strings kept with the run (e.g. the prompt pool it was created from)."""
        if not run_id or any(c.isspace() for c in run_id):
            raise ValueError(f"invalid run id {run_id!r}: must be non-empty without whitespace")
        config_json = json.dumps(dict(config), sort_keys=True)
        now = time.time()
        created = self._create(
            keys=[keys.meta(run_id), keys.RUNS, keys.events(run_id)],
            args=[
                run_id,
                config_json,
                str(run_dir),
                repr(now),
                _pack({"run_id": run_id, "ts": now}),
                EVENTS_MAXLEN,
                json.dumps(dict(labels or {}), sort_keys=True),
            ],
        )
        if not int(created):
            raise RunExists(f"run {run_id!r} already exists; choose another id or resume it")
        logger.info("created run %s (dir %s)", run_id, run_dir)
        run = self.get_run(run_id)
        if run is None:  # deleted between the two calls
            raise RunNotFound(run_id)
        return run

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's metadata (`config` parsed back to a dict), or None if there is no such run."""
        raw = self.client.hgetall(keys.meta(run_id))
        return self._parse_meta(raw) if raw else None

    @staticmethod
    def _parse_meta(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        m = {_s(k): _s(v) for k, v in raw.items()}
        return {
            "run_id": m["run_id"],
            "config": json.loads(m["config"]),
            "run_dir": m["run_dir"],
            "state": m["state"],
            "reason": m.get("reason", ""),
            "created_at": float(m["created_at"]),
            "updated_at": float(m["updated_at"]),
            "labels": json.loads(m.get("labels") or "{}"),
        }

    def set_state(self, run_id: str, state: str, reason: str = "") -> None:
        """Set the run's lifecycle state (one of `RUN_STATES`), whatever it was, and emit a `state` event."""
        self.transition(run_id, RUN_STATES, state, reason)

    def transition(self, run_id: str, allowed_from: tuple[str, ...], state: str, reason: str = "") -> None:
        """Atomically move the run to `state` if it is in one of `allowed_from`, else `InvalidTransition`."""
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}; expected one of {', '.join(RUN_STATES)}")
        now = time.time()
        current = _s(
            self._transition(
                keys=[keys.meta(run_id), keys.events(run_id)],
                args=[
                    state,
                    reason,
                    repr(now),
                    _pack({"state": state, "reason": reason, "ts": now}),
                    EVENTS_MAXLEN,
                    " ".join(allowed_from),
                ],
            )
        )
        if current == "-":
            raise RunNotFound(run_id)
        if current:
            raise InvalidTransition(run_id, current, state)
        logger.info("run %s -> %s%s", run_id, state, f" ({reason})" if reason else "")

    def request_control(self, run_id: str, action: Literal["pause", "stop"]) -> None:
        """Ask the run's controller to pause or stop at its next iteration boundary (a stop overrides a pause)."""
        self.client.set(keys.control(run_id), action)

    def control(self, run_id: str) -> str | None:
        """The pending control request ("pause" / "stop") or None."""
        v = self.client.get(keys.control(run_id))
        return None if v is None else _s(v)

    def clear_control(self, run_id: str) -> None:
        self.client.delete(keys.control(run_id))

    def requeue_prompts(self, run_id: str, prompt_ids: list[str]) -> int:
        """Ask the run's controller to dispatch these prompts again in its next iteration (re-queued dead
        letters); returns how many were not queued already."""
        return int(self.client.sadd(keys.requeue(run_id), *prompt_ids)) if prompt_ids else 0

    def requeued_prompts(self, run_id: str) -> list[str]:
        """Prompt ids waiting to be dispatched again, sorted (a dispatch is deterministic)."""
        return sorted(_s(p) for p in self.client.smembers(keys.requeue(run_id)))

    def clear_requeued(self, run_id: str, prompt_ids: list[str]) -> None:
        """Forget re-queued prompts once an iteration that dispatched them is recorded."""
        if prompt_ids:
            self.client.srem(keys.requeue(run_id), *prompt_ids)

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first."""
        ids = [_s(i) for i in self.client.zrange(keys.RUNS, 0, -1)]
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(keys.meta(run_id))
        return [self._parse_meta(raw) for raw in pipe.execute() if raw]

    def delete_run(self, run_id: str) -> None:
        """Forget the run's metadata, iterations, blobs and events in Redis (not its work streams: see
        StreamQueue; nor its run directory, where its history files stay with its checkpoints)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(
            *(key(run_id) for key in (keys.meta, keys.iterations, keys.kv, keys.events, keys.control, keys.requeue))
        )
        pipe.zrem(keys.RUNS, run_id)
        pipe.execute()

    # ------------------------------------------------------------------------------------------------
    # iterations

    def put_iteration(self, record: IterationRecord) -> bool:
        """Store an iteration record (the first write for an iteration number wins); True if it was new."""
        if not self.client.exists(keys.meta(record.run_id)):
            raise RunNotFound(record.run_id)
        event = {
            "iteration": record.iteration,
            "policy_version_out": record.policy_version_out,
            "num_pairs": record.num_pairs,
            "ts": record.finished_at,
        }
        new = int(
            self._iter(
                keys=[keys.iterations(record.run_id), keys.events(record.run_id)],
                args=[record.iteration, encode(record), _pack(event), EVENTS_MAXLEN],
            )
        )
        if not new:
            logger.info("iteration %d of run %s was already recorded; keeping the first record",
                        record.iteration, record.run_id)  # fmt: skip
        return bool(new)

    def iterations(self, run_id: str) -> list[IterationRecord]:
        """Every recorded iteration of the run, by iteration number: the window in Redis and the older ones
        from `<run dir>/iterations.jsonl` (Redis is read first, so a record trimmed meanwhile is on disk)."""
        raw = self.client.hgetall(keys.iterations(run_id))
        recent = {r.iteration: r for r in (decode(IterationRecord, v) for v in raw.values())}
        floor = min(recent, default=None)
        path = self.history_path(run_id, history.ITERATIONS_FILE)
        rows = history.read_rows(path) if path is not None else []
        older = history.records_from_rows([r for r in rows if floor is None or int(r["iteration"]) < floor])
        return sorted([*older, *recent.values()], key=lambda r: r.iteration)

    def last_complete_iteration(self, run_id: str) -> int:
        """Highest recorded iteration number, 0 if none (the newest record is always in Redis; the iterations
        file answers only when Redis holds none of the run's records)."""
        numbers = self.client.hkeys(keys.iterations(run_id))
        if numbers:
            return max(int(k) for k in numbers)
        path = self.history_path(run_id, history.ITERATIONS_FILE)
        last = history.last_row(path) if path is not None else None
        return int(last["iteration"]) if last else 0

    # ------------------------------------------------------------------------------------------------
    # history on disk

    def history_path(self, run_id: str, name: str) -> Path | None:
        """`<run dir>/<name>`, or None if the run (or its run_dir) is unknown."""
        run_dir = self.client.hget(keys.meta(run_id), "run_dir")
        return Path(_s(run_dir)) / name if run_dir else None

    def archive(self, run_id: str) -> tuple[int, int]:
        """Append to the run's history files every record and event Redis holds that they do not (the
        records above the file's last iteration, the events after its last entry id): idempotent, so a
        restarted controller calls it to finish what a crash cut short. Returns (records, events) appended.
        Raises `RunNotFound`, OSError if the run directory cannot be written."""
        if not self.client.exists(keys.meta(run_id)):
            raise RunNotFound(run_id)
        it_path = self.history_path(run_id, history.ITERATIONS_FILE)
        ev_path = self.history_path(run_id, history.EVENTS_FILE)
        assert it_path is not None and ev_path is not None  # the run exists
        raw = self.client.hgetall(keys.iterations(run_id))
        records = sorted((decode(IterationRecord, v) for v in raw.values()), key=lambda r: r.iteration)
        n_records = history.append_rows(it_path, (r.model_dump(mode="json") for r in records), history.iteration_key)
        last = history.last_row(ev_path)
        after = str(last["id"]) if last else "0-0"
        n_events = 0
        while True:
            batch = self.events(run_id, after=after, count=1000, archived=False)
            if not batch:
                break
            n_events += history.append_rows(
                ev_path, ({"id": eid, "kind": kind, "data": data} for eid, kind, data in batch), history.event_key
            )
            after = batch[-1][0]
        return n_records, n_events

    def trim_history(self, run_id: str, keep_iterations: int) -> tuple[int, int]:
        """Archive (`archive`), then keep in Redis only the records of the newest `keep_iterations` recorded
        iterations and the events after the last `iteration` / `iteration_done` event of an older iteration
        (XTRIM MINID; the entry cap `EVENTS_MAXLEN` still applies). Returns (records, events) removed from
        Redis; nothing that is not in the history files is removed. Raises ValueError if keep_iterations < 1."""
        if keep_iterations < 1:
            raise ValueError(f"keep_iterations must be >= 1, got {keep_iterations}")
        self.archive(run_id)
        numbers = sorted(int(k) for k in self.client.hkeys(keys.iterations(run_id)))
        if not numbers:
            return 0, 0
        keep_from = numbers[-1] - keep_iterations + 1
        old = [n for n in numbers if n < keep_from]
        removed = int(self.client.hdel(keys.iterations(run_id), *old)) if old else 0
        cut = self._events_cut(run_id, keep_from)
        trimmed = 0
        if cut is not None:
            trimmed = int(self.client.xtrim(keys.events(run_id), minid=f"{cut[0]}-{cut[1] + 1}", approximate=False))
        if removed or trimmed:
            logger.info("run %s: %d record(s) and %d event(s) left Redis (on disk in its run directory)",
                        run_id, removed, trimmed)  # fmt: skip
        return removed, trimmed

    _BOUNDARY_KINDS = (b"iteration", b"iteration_done")

    def _events_cut(self, run_id: str, keep_from: int) -> tuple[int, int] | None:
        """Id of the last event that closes an iteration before `keep_from` (its `iteration` or
        `iteration_done` event), scanning from the stream's head; None if there is none. Never past the last
        archived event."""
        path = self.history_path(run_id, history.EVENTS_FILE)
        last = history.last_row(path) if path is not None else None
        if last is None:
            return None
        archived = history.event_key(last)
        cut: tuple[int, int] | None = None
        cursor = "-"
        while True:
            batch = self.client.xrange(keys.events(run_id), min=cursor, max="+", count=500)
            for eid, fields in batch:
                at = history.entry_key(_s(eid))
                if at > archived:
                    return cut
                if fields.get(b"kind") not in self._BOUNDARY_KINDS:
                    continue
                iteration = msgpack.unpackb(fields[b"data"], raw=False).get("iteration")
                if isinstance(iteration, int) and iteration >= keep_from:
                    return cut
                cut = at
            if len(batch) < 500:
                return cut
            cursor = f"({_s(batch[-1][0])}"

    # ------------------------------------------------------------------------------------------------
    # small blobs and events

    def set_value(self, run_id: str, key: str, value: bytes) -> None:
        self.client.hset(keys.kv(run_id), key, value)

    def get_value(self, run_id: str, key: str) -> bytes | None:
        v = self.client.hget(keys.kv(run_id), key)
        return None if v is None else bytes(v)

    def events(
        self, run_id: str, after: str = "0-0", count: int = 1000, archived: bool = True
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Up to `count` events after stream id `after`, as (entry id, kind, data), oldest first: those that
        have left Redis from `<run dir>/events.jsonl` (with `archived`), then the stream's. Raises ValueError
        if `after` is not an entry id."""
        history.entry_key(after)
        key = keys.events(run_id)
        pipe = self.client.pipeline(transaction=True)  # one snapshot: a trim cannot fall between the reads
        pipe.xrange(key, min=f"({after}" if after != "0-0" else "-", max="+", count=count)
        pipe.xrange(key, min="-", max="+", count=1)
        rows, head = pipe.execute()
        out: list[tuple[str, str, dict[str, Any]]] = []
        first = history.entry_key(_s(head[0][0])) if head else None
        if archived and (first is None or history.entry_key(after) < first):
            out.extend(self._archived_events(run_id, after, first, count))
        for eid, fields in rows:
            if len(out) >= count:
                break
            if b"kind" not in fields:
                continue  # an entry written by someone else (e.g. StreamQueue.put on the events stage)
            out.append((_s(eid), _s(fields[b"kind"]), msgpack.unpackb(fields[b"data"], raw=False)))
        return out

    def _archived_events(
        self, run_id: str, after: str, before: tuple[int, int] | None, count: int
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Events of the events file after `after` and before the stream's first entry `before` (None: all)."""
        path = self.history_path(run_id, history.EVENTS_FILE)
        if path is None:
            return
        low, n = history.entry_key(after), 0
        for row in history.read_rows(path):
            at = history.event_key(row)
            if at <= low:
                continue
            if (before is not None and at >= before) or n >= count:
                return
            n += 1
            yield str(row["id"]), str(row["kind"]), dict(row.get("data") or {})
