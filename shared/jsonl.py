"""Strict JSON in and out: the one JSONL reader for uploaded files (prompt pools, DSAT logs) and the one JSON
writer for everything the product writes (summary.json, the events stream, API bodies built by hand).

Reading follows JSON Lines (jsonlines.org): the file is UTF-8, lines are separated by "\\n" only (a trailing
"\\r" is JSON whitespace), so a raw U+2028 or U+0085 inside a string is text, not a line break (str.splitlines
would split there). Each line must be strict JSON (no NaN/Infinity) whose strings can be encoded as UTF-8: a
JSON-escaped lone surrogate such as "\\ud83d" parses in Python but can never be tokenized, sent to Redis or
written back, so it is refused with the line and field named. The API upload and the run read a file with
this same code, so text the upload accepts is text the run accepts, and the reverse. A bad file is reported
whole: callers collect every problem as `line N: ...` and refuse the file if any.

Writing (`dumps`) is strict JSON: a NaN or infinite float (a diverged loss, say) becomes null, never the bare
`NaN` Python's json module writes by default, which strict parsers (browsers' JSON.parse, jq) refuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

JSON_BLANK = " \t\r"  # JSON whitespace (besides the "\n" lines are split on)


class JSONLDecodeError(ValueError):
    """The file is not UTF-8 text; the message names the line and byte offset."""


def decode_lines(data: bytes) -> list[str]:
    """The lines of a JSONL file's bytes: strict UTF-8, split on "\\n" only; a leading byte order mark (what
    Windows editors and Excel write) is ignored, as RFC 8259 section 8.1 lets a parser do. Raises
    `JSONLDecodeError`."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise JSONLDecodeError(f"line {line}: invalid UTF-8 byte at offset {err.start}") from None
    return split_lines(text)


def split_lines(text: str) -> list[str]:
    """JSON Lines' lines: split on "\\n" only, never on the other characters str.splitlines() breaks at."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unencodable(value: Any, path: str = "") -> tuple[str, str] | None:
    """(field path, character) of the first string (key or value) that cannot be encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return path, value[err.start]
    elif isinstance(value, dict):
        for key, item in value.items():
            if found := _unencodable(key, path):
                return found
            if found := _unencodable(item, f"{path}.{key}" if path else key):
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _unencodable(item, f"{path}.{i}" if path else str(i)):
                return found
    return None


def json_lines(lines: list[str], problems: list[str]) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) of each non-blank line. A line that is not strict JSON, or whose
    text cannot be encoded as UTF-8 (a lone surrogate), is added to `problems` and not yielded."""
    for n, line in enumerate(lines, start=1):
        if not line.strip(JSON_BLANK):
            continue
        try:
            value = json.loads(line, parse_constant=_refuse_constant)
        except json.JSONDecodeError as err:
            problems.append(f"line {n}: not valid JSON ({err.msg})")
            continue
        except ValueError as err:
            problems.append(f"line {n}: not valid JSON ({err})")
            continue
        if bad := _unencodable(value):
            where = f"field '{bad[0]}'" if bad[0] else "the value"
            problems.append(
                f"line {n}: {where}: lone surrogate U+{ord(bad[1]):04X} (text must be encodable as UTF-8)"
            )
            continue
        yield n, value


def duplicate_id(seen: dict[str, int], record_id: str, n: int) -> str | None:
    """The problem line for an id already seen, else None (and `record_id` is now seen on line `n`)."""
    if record_id in seen:
        return f"line {n}: duplicate id {record_id!r} (first on line {seen[record_id]})"
    seen[record_id] = n
    return None


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (at any depth of dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of `value`: NaN and +-inf become null (documented in docs/operations.md); any other
    `json.dumps` keyword (indent, default, ensure_ascii) passes through. Never writes a bare NaN."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
