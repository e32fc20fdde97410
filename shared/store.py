"""Run state in Redis: runs and their lifecycle state, iteration records, small per-run blobs, run events.

Keys (named in `keys.py`, which lists every key with its type and writers): the `runs` index (`keys.RUNS`)
and per run `keys.meta` (run_id, config JSON, run_dir, state, reason, labels, timestamps), `keys.iterations`
(iteration number -> msgpack `IterationRecord`, first write wins), `keys.kv` (small named blobs, e.g.
cached iteration-0 eval samples), `keys.events` (small events, fields `kind` and `data` = msgpack dict, for
dashboards) and `keys.control` (a pending "pause" / "stop" request for the run's controller).

Run states: created -> running -> completed | failed; running -> pausing -> paused -> running (resume);
running | pausing | paused -> stopping -> stopped (a paused run has no controller and stops at once).

Knows: these keys and the run states. Does not know: how a run is executed, the work streams and their
seen-sets (see `queue.py`), or checkpoints (which live on disk / fsspec, referenced by path only).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

import msgpack
import redis

from . import keys
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
        """Forget the run's metadata, iterations, blobs and events (not its work streams: see StreamQueue)."""
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
        """Every recorded iteration of the run, by iteration number."""
        raw = self.client.hgetall(keys.iterations(run_id))
        recs = [decode(IterationRecord, v) for v in raw.values()]
        return sorted(recs, key=lambda r: r.iteration)

    def last_complete_iteration(self, run_id: str) -> int:
        """Highest recorded iteration number, 0 if none."""
        numbers = self.client.hkeys(keys.iterations(run_id))
        return max((int(k) for k in numbers), default=0)

    # ------------------------------------------------------------------------------------------------
    # small blobs and events

    def set_value(self, run_id: str, key: str, value: bytes) -> None:
        self.client.hset(keys.kv(run_id), key, value)

    def get_value(self, run_id: str, key: str) -> bytes | None:
        v = self.client.hget(keys.kv(run_id), key)
        return None if v is None else bytes(v)

    def events(
        self, run_id: str, after: str = "0-0", count: int = 1000
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Up to `count` events after stream id `after`, as (entry id, kind, data)."""
        rows = self.client.xrange(
            keys.events(run_id), min=f"({after}" if after != "0-0" else "-", max="+", count=count
        )
        out: list[tuple[str, str, dict[str, Any]]] = []
        for eid, fields in rows:
            if b"kind" not in fields:
                continue  # an entry written by someone else (e.g. StreamQueue.put on the events stage)
            out.append((_s(eid), _s(fields[b"kind"]), msgpack.unpackb(fields[b"data"], raw=False)))
        return out
