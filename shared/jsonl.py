"""Line-by-line JSONL reading for uploaded files (prompt pools, DSAT logs).

A bad file is reported whole: callers collect every problem as `line N: ...` and refuse the file if any.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def json_lines(lines: list[str], problems: list[str]) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) of each non-blank line; invalid JSON is added to `problems`."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {n}: not valid JSON ({err.msg})")


def duplicate_id(seen: dict[str, int], record_id: str, n: int) -> str | None:
    """The problem line for an id already seen, else None (and `record_id` is now seen on line `n`)."""
    if record_id in seen:
        return f"line {n}: duplicate id {record_id!r} (first on line {seen[record_id]})"
    seen[record_id] = n
    return None
