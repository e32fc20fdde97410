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
