"""Stage timing for iteration records: how long each stage of an iteration was busy, and when.

`IterationRecord.stage_seconds` holds the durations and `IterationRecord.stage_spans` the [start, end]
intervals the dashboard draws as the per-iteration timeline. Both the sync loop (`workers/controller.py`)
and the async pipeline (`workers/pipeline.py`) time their stages with `timed`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(seconds: dict[str, float], stage: str, spans: dict[str, list[float]] | None = None) -> Iterator[None]:
    """Times the block as `stage`: `seconds[stage]` = its duration (perf_counter seconds); `spans[stage]` =
    its [start, end] in unix seconds (wall clock, comparable across processes). Both are set even when the
    block raises."""
    t0, w0 = time.perf_counter(), time.time()
    try:
        yield
    finally:
        seconds[stage] = time.perf_counter() - t0
        if spans is not None:
            spans[stage] = [w0, time.time()]
