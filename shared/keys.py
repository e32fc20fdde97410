"""Every Redis key sparring uses, spelled once. Other modules call these functions; none writes a key string.

Each key: Redis type; who writes it -> who reads it.

Global:
- `runs` (`RUNS`)            sorted set of run ids scored by creation time;
                             `RunStore.create_run` / `delete_run` -> `RunStore.list_runs`.
- `pools` (`POOLS`)          hash pool id -> JSON description; `PoolStore.add` -> `PoolStore.get` / `list`.
- `idempotency:{sha256}`     string, JSON {run id, request fingerprint}, SET NX with a TTL;
                             `RunService.create_run` -> `RunService.create_run` (replays a request).

Per run, all under `run:{run_id}:`:
- `run:{id}:meta`            hash: run id, config, run_dir, state, reason, labels, timestamps;
                             `RunStore` (create, state transitions) -> `RunStore.get_run` / `list_runs`.
- `run:{id}:iterations`      hash: iteration number -> msgpack `IterationRecord` (first write wins), the newest
                             `storage.history_window_iterations` only (all are in `<run dir>/iterations.jsonl`,
                             `history.py`); `RunStore.put_iteration` (controller) -> `RunStore` (API, metrics,
                             resume), which joins the two.
- `run:{id}:kv`              hash of small named blobs; `RunStore.set_value` (controller: cached eval
                             samples, `iteration:{t}:progress` of the iteration not yet recorded) and
                             `RunService` (HINCRBY `orphan_restarts:{iteration}`) -> controller (`get_value`),
                             `RunService`.
- `run:{id}:events`          stream (fields `kind`, `data` = msgpack dict); `RunStore` (run_created, state,
                             iteration) and `shared.events.emit` (controller progress) -> `RunStore.events`
                             (SSE, CLI), which joins it with `<run dir>/events.jsonl`; trimmed to the window's
                             iterations by `RunStore.trim_history` once archived there, and to `EVENTS_MAXLEN`.
                             It is also the `events` stage of `StreamQueue` (same key).
- `run:{id}:control`         string "pause" / "stop"; `RunStore.request_control` (API) -> the controller;
                             cleared by the controller and `RunService`.
- `run:{id}:requeue`         set of prompt ids whose dead letters were re-queued; `RunStore.requeue_prompts`
                             (API) -> the controller's next dispatch (`RunStore.requeued_prompts`), which
                             removes them once that iteration is recorded.
- `run:{id}:incarnation`     counter; the controller INCRs it once per start (it names its workers) -> tests.
                             Neither `delete_run` removes it.
- `run:{id}:{stage}`         stream per work stage; `StreamQueue`: `prompts` by the controller,
                             `generations` by generators, `pairs` by judges, `feedback` (unpaired
                             `LabelledAnswer`s) by the API's feedback route and the pointwise recipe's
                             judges, `dead` by any consumer -> `StreamQueue` consumer groups (the trainer
                             reads `pairs` and `feedback`), the API's pair export.
- `run:{id}:seen:{stage}`    set of the record ids ever written to a stage (written in the same Lua script
                             as the entry) -> `StreamQueue` (deduplication).

`RunStore.delete_run` removes meta, iterations, kv, events, control, requeue and the `runs` entry;
`StreamQueue.delete_run` removes the stage streams and seen-sets.
"""

from __future__ import annotations

import hashlib

RUNS = "runs"
POOLS = "pools"


def meta(run_id: str) -> str:
    """Hash: the run's id, config, run_dir, state, reason, labels and timestamps."""
    return f"run:{run_id}:meta"


def iterations(run_id: str) -> str:
    """Hash: iteration number -> msgpack `IterationRecord` (first write wins)."""
    return f"run:{run_id}:iterations"


def kv(run_id: str) -> str:
    """Hash: small named blobs of a run."""
    return f"run:{run_id}:kv"


def control(run_id: str) -> str:
    """String: a pending "pause" / "stop" request for the run's controller."""
    return f"run:{run_id}:control"


def requeue(run_id: str) -> str:
    """Set: prompt ids re-queued from dead letters, dispatched again in the run's next iteration."""
    return f"run:{run_id}:requeue"


def incarnation(run_id: str) -> str:
    """Counter: how many controllers the run has had."""
    return f"run:{run_id}:incarnation"


def stream(run_id: str, stage: str) -> str:
    """Stream of one work stage (`prompts`, `generations`, `pairs`, `feedback`, `dead`, `events`)."""
    return f"run:{run_id}:{stage}"


def seen(run_id: str, stage: str) -> str:
    """Set of the record ids ever written to a stage's stream."""
    return f"run:{run_id}:seen:{stage}"


def heartbeats(run_id: str) -> str:
    """Hash: consumer -> msgpack dict of its worker's last heartbeat (time, pid, node, RSS, stack-dump file)."""
    return f"run:{run_id}:heartbeats"


def events(run_id: str) -> str:
    """Stream of the run's events (fields `kind`, `data` = msgpack dict); the `events` stage."""
    return stream(run_id, "events")


def run_pattern(run_id: str) -> str:
    """Glob matching every per-run key (for SCAN/KEYS in tests and by operators)."""
    return f"run:{run_id}:*"


def idempotency(request_key: str) -> str:
    """String: the run created for a client's `Idempotency-Key` (stored hashed, so any header value fits)."""
    return f"idempotency:{hashlib.sha256(request_key.encode()).hexdigest()}"
