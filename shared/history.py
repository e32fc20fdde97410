"""A run's durable history on disk: its iteration records and events as JSON Lines in the run's directory.

Redis is the run's working store, not its archive (docs/reliability.md, "Run history"): it keeps the records
and events of the newest `storage.history_window_iterations` iterations, and every older one lives only here,
in `<run dir>/iterations.jsonl` (one `IterationRecord` per line, `model_dump(mode="json")`, in iteration
order) and `<run dir>/events.jsonl` (one `{"id", "kind", "data"}` per line, the events stream's entry id,
kind and payload, in stream order). `RunStore` writes both (a record is in Redis before it is appended here)
and reads the window from Redis and everything older from these files; nothing else opens them.

The files only grow, and each is written by appending whole lines under an exclusive `flock`, then flushed
and fsync'ed. A row is appended only if its key (iteration number, stream entry id) is above the file's last
row's, so appending the same rows again (a restarted controller re-archiving what Redis holds) never
duplicates one. A crash in the middle of a write leaves a last line without its "\\n": readers ignore it and
the next append cuts it off before writing. Lines are strict JSON (`shared/jsonl.py` `dumps`): a NaN or
infinite float is written as null (`records_from_rows` reads a null metric back as NaN).

The judged pairs a run prunes from its Redis pairs stream (`storage.pairs_retention_iterations`) go to
`<run dir>/archived_pairs.jsonl` the same way (one `{"id", "data"}` per line: the stream entry id and the
record as the stream holds it, msgpack-decoded), written by `StreamQueue.prune` before it trims them, read back by
`StreamQueue.iter_records(..., archive=...)`.

Knows: the file names, the line format and the append protocol. Does not know: Redis, or when a run
archives (see `store.py`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import jsonl
from .records import IterationRecord

logger = logging.getLogger(__name__)

ITERATIONS_FILE = "iterations.jsonl"
EVENTS_FILE = "events.jsonl"
PAIRS_FILE = "archived_pairs.jsonl"  # judged pairs pruned from the pairs stream: {"id": entry id, "data": the pair}
_TAIL_CHUNK = 1 << 16

K = TypeVar("K")


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id "ms-seq" as (ms, seq), which orders like the stream; raises ValueError otherwise."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def iteration_key(row: dict[str, Any]) -> int:
    """The order key of an iterations file row: its iteration number."""
    return int(row["iteration"])


def event_key(row: dict[str, Any]) -> tuple[int, int]:
    """The order key of an events file row: its stream entry id as (ms, seq)."""
    return entry_key(str(row["id"]))


def _parse(line: bytes) -> dict[str, Any]:
    """One line of a history file as a dict; ValueError if it is not a JSON object (UTF-8, json.loads)."""
    value = json.loads(line.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a history file, parsed, in file order; [] if there is no file. A last line
    without its newline (a write cut short) is left out; a line that is not a JSON object is logged and left
    out (the rest of the history is still served)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    rows = []
    for n, line in enumerate(data[: data.rfind(b"\n") + 1].split(b"\n")[:-1], start=1):  # complete lines only
        if not line.strip():
            continue
        try:
            rows.append(_parse(line))
        except ValueError as err:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
            logger.warning("history file %s: line %d is not a JSON object (%s); left out", path, n, err)
    return rows


def last_row(path: Path) -> dict[str, Any] | None:
    """The last complete line of a history file, parsed (reads only the file's tail), or None if it has none.
    Raises ValueError if that line is not a JSON object (a damaged file: appending after it could duplicate)."""
    try:
        with path.open("rb") as f:
            return _last_row(f)
    except FileNotFoundError:
        return None


def _last_row(f: Any) -> dict[str, Any] | None:
    end = _complete_end(f, f.seek(0, os.SEEK_END))
    if end == 0:
        return None
    start = _complete_end(f, end - 1)
    f.seek(start)
    line = f.read(end - start)
    try:
        return _parse(line)
    except ValueError as err:  # appending after a line that cannot be read could duplicate rows: look first
        raise ValueError(
            f"history file {f.name}: its last line is not a JSON object ({err}): {line[:80]!r}"
        ) from None


def _complete_end(f: Any, size: int) -> int:
    """Offset just past the file's last "\\n" (0 if none): where its complete lines end."""
    pos = size
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return pos + i + 1
    return 0


def append_rows(path: Path, rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], K]) -> int:
    """Append the rows whose `key` is above the file's last row's key (all of them to a new file), in the
    order given (which must be increasing in `key`), under an exclusive lock; flush and fsync. A partial last
    line is cut off first. Returns how many rows were written. Creates the file and its directory.

    Raises ValueError if `rows` are not in increasing key order, OSError if the file cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            size = f.seek(0, os.SEEK_END)
            end = _complete_end(f, size)
            if end != size:
                logger.warning(
                    "history file %s ended in a partial line (%d bytes); cut off", path, size - end
                )
                f.truncate(end)
            last = _last_row(f)
            floor = key(last) if last is not None else None
            out: list[str] = []
            previous = floor
            for row in rows:
                k = key(row)
                if floor is not None and k <= floor:  # type: ignore[operator]
                    continue
                if previous is not None and k <= previous:  # type: ignore[operator]
                    raise ValueError(
                        f"history rows for {path.name} are not in increasing order: {k!r} after {previous!r}"
                    )
                out.append(jsonl.dumps(row, default=str) + "\n")  # ASCII: a lone surrogate is escaped
                previous = k
            if out:
                f.seek(0, os.SEEK_END)
                f.write("".join(out).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            return len(out)
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_FLOAT_MAPS = ("metrics", "stage_seconds", "eval")


def records_from_rows(rows: Sequence[dict[str, Any]]) -> list[IterationRecord]:
    """`IterationRecord`s from iterations file rows; a null in a float map (a NaN or infinite value written
    as strict JSON) reads back as NaN. Raises `pydantic.ValidationError` naming the bad field."""
    out = []
    for row in rows:
        fixed = dict(row)
        for name in _FLOAT_MAPS:
            if isinstance(fixed.get(name), dict):
                fixed[name] = {k: math.nan if v is None else v for k, v in fixed[name].items()}
        out.append(IterationRecord.model_validate(fixed))
    return out
