"""Writing to the per-run events stream (`keys.events`): progress notices for CLIs and dashboards.

Same entry format as `RunStore` (fields `kind` and `data` = msgpack dict), which reads them back with
`RunStore.events`. Events are for people watching a run; nothing in the run's logic depends on them.
A payload may carry a NaN metric (msgpack keeps floats as they are); every JSON view of an event (the API's
server-sent events) is written with `shared/jsonl.py` `dumps`, where it becomes null.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import redis

from . import keys

EVENTS_MAXLEN = 10_000


def emit(client: redis.Redis, run_id: str, kind: str, **data: Any) -> None:
    payload = msgpack.packb({"ts": time.time(), **data}, use_bin_type=True)
    client.xadd(keys.events(run_id), {"kind": kind, "data": payload}, maxlen=EVENTS_MAXLEN, approximate=True)



def beat(client: redis.Redis, run_id: str, consumer: str, **data: Any) -> None:
    """Record a worker's heartbeat: `data` (its `seq` counter, pid, node, RSS, ...) under the consumer's name
    in the run's heartbeats hash (`keys.heartbeats`). Watchers compare (pid, seq) between their reads, with
    their own clock, so no two machines' clocks are ever compared."""
    client.hset(keys.heartbeats(run_id), consumer, msgpack.packb({"ts": time.time(), **data}, use_bin_type=True))


def heartbeats(client: redis.Redis, run_id: str) -> dict[str, dict[str, Any]]:
    """Every consumer's last heartbeat (`beat`'s data plus `ts`, the writer's wall clock), by consumer name."""
    return {k.decode(): msgpack.unpackb(v, raw=False) for k, v in client.hgetall(keys.heartbeats(run_id)).items()}
