"""The per-run events stream (`run:{id}:events`): progress and iteration notices for CLIs and dashboards.

Events are small flat dicts (str -> str/int/float), appended with a bounded length. They are for people
watching a run; nothing in the run's logic depends on them, and losing one loses no state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import redis

EVENTS_MAXLEN = 10_000


def events_stream(run_id: str) -> str:
    return f"run:{run_id}:events"


def emit(client: redis.Redis, run_id: str, kind: str, **fields: Any) -> None:
    payload = {"kind": kind, "time": time.time(), **fields}
    client.xadd(events_stream(run_id), {"json": json.dumps(payload)}, maxlen=EVENTS_MAXLEN, approximate=True)


def read_events(
    client: redis.Redis, run_id: str, last_id: str = "0", block_ms: int | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Events after `last_id` (yields (entry_id, event)); blocks up to `block_ms` for the first one."""
    resp = client.xread({events_stream(run_id): last_id}, count=1000, block=block_ms)
    for _stream, entries in resp or []:
        for entry_id, fields in entries:
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            raw = fields.get(b"json") or fields.get("json")
            yield eid, json.loads(raw)
