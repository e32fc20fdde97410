"""Read back a W&B offline run (`<dir>/wandb/offline-run-*/run-*.wandb`) without the network.

wandb >= 0.2x writes the run as a LevelDB-style record log (wandb's `datastore` format: a 7-byte header
":W&B" + magic + version, then 32 KiB blocks of records, each `crc32 (4) | length (2, LE) | type (1) | data`,
a record split across blocks as FIRST/MIDDLE/LAST pieces) of `wandb_internal_pb2.Record` protobufs. The
Python reader was dropped from the wandb package, so the tests carry this small one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out: list[bytes] = []
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:  # zero-filled tail
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
    return out


def read_wandb_history(wandb_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(history rows in order, the run's config) of the only offline run under `wandb_dir`."""
    from wandb.proto import wandb_internal_pb2

    (path,) = sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for raw in records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item})
        elif kind == "config":
            for item in rec.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "run":
            for item in rec.run.config.update:
                config[item.key] = json.loads(item.value_json)
    return history, config
