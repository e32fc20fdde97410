"""Prompt pools uploaded over the API: validated whole, stored once, referenced by runs.

A pool is a JSONL file of prompts (`{"id"?, "prompt"}` or `{"id"?, "messages"}` lines) or of DRIFT
dissatisfaction logs (`shared/dsat.py`). An upload is read with the JSONL reader a run uses (`shared/jsonl.py`:
UTF-8, lines split on "\\n" only, strict JSON, lone surrogates refused with line and field), so what is stored
here is what a run can read; a file with any bad line is refused whole (every bad line named) and nothing
is stored. A prompt pool may also be a parquet file (a Hugging Face dataset's rows; told apart by its magic
bytes), read by the code a run with `prompts: {source: hf}` uses (`shared/hf_data.py`,
`shared/prompts.py::parse_dataset_prompts`: bad rows named with row and column), with the column mapping
given at upload (`prompt_column` / `messages_column` / `id_column`), stored with the pool and applied to the
runs that use it. A valid pool is written under `pools/<pool_id>.jsonl` or `.parquet` (pool_id = hash of
kind, column mapping and content, so uploading the same file twice gives the same pool) and described in the
Redis hash `pools`. Repeated prompt texts are accepted and reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import redis

from sparring.shared import keys
from sparring.shared.dsat import DSATError, parse_dsat_jsonl
from sparring.shared.jsonl import JSONLDecodeError, decode_lines
from sparring.shared.prompts import (
    PromptItem,
    PromptPoolError,
    dataset_columns,
    dsat_item,
    parse_dataset_prompts,
    parse_jsonl_prompts,
)

PoolKind = Literal["prompts", "dsat"]
MAX_REPORTED_DUPLICATES = 100


class PoolRejected(ValueError):
    """The upload is not a valid pool; `problems` lists every bad line."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class PoolNotFound(KeyError):
    pass


def _problems(err: Exception) -> list[str]:
    lines = str(err).splitlines()
    return [line.strip() for line in lines[1:]] or [str(err)]


class PoolStore:
    def __init__(self, client: redis.Redis, pools_dir: Path) -> None:
        self.client = client
        self.pools_dir = Path(pools_dir)

    def _parquet_items(self, source: str, kind: PoolKind, data: bytes, columns: dict[str, str]) -> list[PromptItem]:
        """The prompts of a parquet upload, read as a run with `prompts: {source: hf}` reads the stored file."""
        from sparring.shared.hf_data import DatasetError, open_dataset

        if kind != "prompts":
            raise PoolRejected(f"{source}: a parquet pool holds prompts (kind=prompts), not {kind}", [f"kind={kind}"])
        self.pools_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.pools_dir, prefix=".upload.", suffix=".parquet")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            ds = open_dataset(tmp)
            col, conversation, id_col = dataset_columns(
                list(ds.column_names), columns.get("prompt_column"), columns.get("messages_column"),
                columns.get("id_column"), source,
            )  # fmt: skip
            return parse_dataset_prompts(ds.select_columns([c for c in (col, id_col) if c]), col, conversation, id_col, source)
        except DatasetError as err:
            raise PoolRejected(f"{source}: not a readable parquet file; nothing was stored", [str(err)]) from None
        except PromptPoolError as err:
            problems = _problems(err)
            raise PoolRejected(f"{source}: {len(problems)} bad row(s); nothing was stored", problems) from None
        finally:
            os.unlink(tmp)

    def add(
        self, name: str, kind: PoolKind, data: bytes, columns: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Validate and store a pool; returns (pool, created). `columns` (prompt_column, messages_column,
        id_column) map a parquet upload's columns. Raises `PoolRejected`."""
        from sparring.shared.hf_data import is_parquet

        columns = {k: v for k, v in (columns or {}).items() if v}
        if is_parquet(data):
            return self._store(name, kind, data, self._parquet_items(name or "upload", kind, data, columns), columns)
        if columns:
            bad = [f"{k}: only for parquet uploads (a JSONL pool names its fields itself)" for k in columns]
            raise PoolRejected("column mapping given for a JSONL upload", bad)
        try:
            lines = decode_lines(data)  # read as a run reads it (shared/jsonl.py)
        except JSONLDecodeError as err:
            raise PoolRejected("the upload is not UTF-8 text", [str(err)]) from None
        source = name or "upload"
        try:
            items = [dsat_item(log) for log in parse_dsat_jsonl(lines, source)] if kind == "dsat" else parse_jsonl_prompts(lines, source)
        except (PromptPoolError, DSATError) as err:
            if "\n" not in str(err):  # not a list of bad lines: the file as a whole (no prompts at all)
                raise PoolRejected(f"{err}; nothing was stored", [str(err)]) from None
            problems = _problems(err)
            raise PoolRejected(f"{source}: {len(problems)} bad line(s); nothing was stored", problems) from None
        return self._store(name, kind, data, items, None)

    def _store(
        self, name: str, kind: PoolKind, data: bytes, items: list[PromptItem], columns: dict[str, str] | None
    ) -> tuple[dict[str, Any], bool]:
        fmt = "jsonl" if columns is None else "parquet"
        mapping = b"" if columns is None else json.dumps(columns, sort_keys=True).encode() + b"\0"
        digest = hashlib.sha256(kind.encode() + b"\0" + mapping + data).hexdigest()
        pool_id = f"pool-{digest[:16]}"
        existing = self.get(pool_id)
        if existing is not None:
            return existing, False
        first_seen: dict[str, str] = {}
        duplicates: list[dict[str, str]] = []
        for item in items:
            key = json.dumps(item.messages) if item.messages else item.prompt
            if key in first_seen:
                duplicates.append({"id": item.prompt_id, "same_as": first_seen[key]})
            else:
                first_seen[key] = item.prompt_id
        self.pools_dir.mkdir(parents=True, exist_ok=True)
        path = self.pools_dir / f"{pool_id}.{fmt}"
        fd, tmp = tempfile.mkstemp(dir=self.pools_dir, prefix=f".{pool_id}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        pool = {
            "pool_id": pool_id,
            "name": name,
            "kind": kind,
            "format": fmt,
            "columns": columns,
            "num_items": len(items),
            "bytes": len(data),
            "sha256": digest,
            "duplicate_prompts": len(duplicates),
            "duplicates": duplicates[:MAX_REPORTED_DUPLICATES],
            "created_at": time.time(),
        }
        created = bool(self.client.hsetnx(keys.POOLS, pool_id, json.dumps(pool)))
        return (pool if created else self.get(pool_id) or pool), created

    def get(self, pool_id: str) -> dict[str, Any] | None:
        raw = self.client.hget(keys.POOLS, pool_id)
        return None if raw is None else json.loads(raw)

    def require(self, pool_id: str) -> dict[str, Any]:
        pool = self.get(pool_id)
        if pool is None:
            raise PoolNotFound(pool_id)
        return pool

    def path(self, pool_id: str) -> Path:
        return self.pools_dir / f"{pool_id}.{self.require(pool_id).get('format', 'jsonl')}"

    def list(self) -> list[dict[str, Any]]:
        pools = [json.loads(v) for v in self.client.hvals(keys.POOLS)]
        return sorted(pools, key=lambda p: p["created_at"])
