"""Worker health: heartbeats with each worker's memory, and Python stack dumps of a stuck worker.

Every stage worker owns a `Heartbeat`. It beats (at most once a second) whenever the worker makes progress
(`drain` at every read of its input stream and after every batch, the trainer at every training progress
report), writing its pid, node, RSS and a sequence number to the run's heartbeats hash in Redis
(`shared/events.py::beat`). The controller watches the sequence numbers with its own clock: a draining worker
whose heartbeat has not changed for `resilience.heartbeat_timeout_s` is stuck (`workers/groups.py`).

Stack dumps use the standard library's `faulthandler`: `Heartbeat` registers SIGUSR1 in the worker's process
(`faulthandler.register(SIGUSR1, file, all_threads=True)`) to write every thread's Python stack into a file of
its own (`<tmp>/sparring-stacks/<run id>/<consumer>-<pid>.txt` on the worker's node). The dump is written by
the C signal handler, so it works while the worker's Python code is blocked (a sleep, a lock, a C call that
holds the GIL) — exactly when a Python-level probe would not get the GIL. `dump_stacks(pid, path)` sends the
signal and reads what was appended. (Ray's own `ray stack` and the dashboard's stack view need py-spy, which
is not a dependency of sparring; faulthandler needs nothing.)

Retention: the controller removes its run's stack directory on its own node when the run ends (what it captured
is in `<run dir>/controller.log` and the `worker_hung` event); every new `Heartbeat` removes the directories of
other runs on its node untouched for `STACK_RETENTION_S` (7 days): those of runs whose workers ran on other
nodes, or whose controller died.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import psutil

from sparring.shared.events import beat

log = logging.getLogger(__name__)

STACK_SIGNAL = signal.SIGUSR1
STACK_RETENTION_S = 7 * 24 * 3600.0  # other runs' stack-dump directories older than this go (`prune_stack_dirs`)
MB = 1 << 20


def process_rss_mb(pid: int | None = None) -> float:
    """Resident set size of process `pid` (default: this one) plus its child processes (a vLLM engine's
    EngineCore), in MB (2**20 bytes); children that exit while being measured are skipped."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return total / MB


def stack_dir(run_id: str) -> Path:
    """The directory of `run_id`'s stack-dump files on this node: `<tmp>/sparring-stacks/<run id>`."""
    return stack_root() / run_id.replace("/", "_").replace(":", "_")


def stack_root() -> Path:
    """`<tmp>/sparring-stacks` on this node (read when used: the temp dir can change)."""
    return Path(tempfile.gettempdir()) / "sparring-stacks"


def stack_file(run_id: str, consumer: str, pid: int | None = None) -> Path:
    """Where the worker `consumer` of `run_id` in process `pid` writes its stack dumps (the node's temp dir)."""
    return stack_dir(run_id) / f"{consumer}-{pid or os.getpid()}.txt"


def prune_stack_dirs(keep: str, max_age_s: float = STACK_RETENTION_S) -> list[Path]:
    """Remove the stack-dump directories of other runs on this node not written for `max_age_s` seconds
    (default `STACK_RETENTION_S`, 7 days; a directory's mtime changes when a worker of its run starts).
    The directory of run `keep` stays. Returns the removed paths; errors (a directory another process is
    removing) are skipped. The controller removes its own run's directory when the run ends (the dumps it
    captured are in `<run dir>/controller.log`); this rule reclaims the ones on other nodes."""
    removed: list[Path] = []
    root, now, mine = stack_root(), time.time(), stack_dir(keep)
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for path in entries:
        try:
            if path != mine and path.is_dir() and now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path)
                removed.append(path)
        except OSError:
            continue
    return removed


class Heartbeat:
    """A worker's heartbeats (`beat`) and its stack-dump handler (installed at construction).

    `client` is the worker's Redis client; `node` names the worker's machine for the controller (a Ray node
    id, or None outside Ray); beats closer together than `min_interval_s` are skipped unless forced.
    """

    def __init__(self, client: Any, run_id: str, consumer: str, node: str | None, min_interval_s: float = 1.0) -> None:
        self.client, self.run_id, self.consumer, self.node = client, run_id, consumer, node
        self.min_interval_s = min_interval_s
        self.seq = 0
        self._last = 0.0
        self.stack_path = stack_file(run_id, consumer)
        self._stack_out: TextIO | None = None
        try:
            prune_stack_dirs(keep=run_id)
            self.stack_path.parent.mkdir(parents=True, exist_ok=True)
            self._stack_out = self.stack_path.open("a")  # open for the process's lifetime: the handler writes to its fd
            faulthandler.register(STACK_SIGNAL, file=self._stack_out, all_threads=True, chain=False)
        except (OSError, RuntimeError, ValueError) as err:  # no writable temp dir, or not allowed to take a signal
            log.warning("%s: no stack dumps on SIGUSR1 (%s)", consumer, err)
            self._stack_out = None
        self.beat(force=True)

    def beat(self, force: bool = False) -> None:
        """Tell the controller this worker made progress (and how much memory it holds); at most one beat per
        `min_interval_s` unless `force`. A Redis error is logged, never raised: a beat is not worth a task."""
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last, self.seq = now, self.seq + 1
        try:
            beat(self.client, self.run_id, self.consumer, seq=self.seq, pid=os.getpid(), node=self.node,
                 rss_mb=process_rss_mb(), stacks=str(self.stack_path) if self._stack_out else None)  # fmt: skip
        except Exception as err:  # a Redis outage longer than the client's window: the next beat may succeed
            log.warning("%s: heartbeat not written (%s: %s)", self.consumer, type(err).__name__, err)


def dump_stacks(pid: int, path: str, wait_s: float = 2.0) -> str:
    """Every thread's Python stack of process `pid` on this machine: sends it SIGUSR1 (the handler a
    `Heartbeat` registered) and returns what it appended to its stack file `path` within `wait_s` seconds.
    Returns a line saying why when the process is gone or wrote nothing (no handler, not on this machine)."""
    file = Path(path)
    before = file.stat().st_size if file.exists() else 0
    try:
        os.kill(pid, STACK_SIGNAL)
    except OSError as err:
        return f"(no stack dump: cannot signal pid {pid}: {err})"
    deadline = time.monotonic() + wait_s
    size = before
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = file.stat().st_size if file.exists() else 0
        if now > before and now == size:  # written and no longer growing
            break
        size = now
    if not file.exists() or file.stat().st_size <= before:
        return f"(no stack dump: pid {pid} wrote nothing to {path} in {wait_s:.0f} s)"
    with file.open() as f:
        f.seek(before)
        return f.read()


class HeartbeatWatch:
    """The controller's view of the heartbeats: how long each worker has shown no progress, by this process's
    monotonic clock (a beat counts when its (pid, seq) differs from the last one seen).

    `read()` returns every consumer's last heartbeat (`shared/events.py::heartbeats`); it is called at most
    once per `refresh_s` seconds.
    """

    def __init__(self, read: Any, refresh_s: float = 1.0) -> None:
        self.read, self.refresh_s = read, refresh_s
        self.beats: dict[str, dict[str, Any]] = {}
        self._read_at = float("-inf")
        self._changed: dict[str, tuple[Any, float]] = {}  # consumer -> ((pid, seq), when it was first seen)
        self._stale: dict[str, Any] = {}  # consumer -> the (pid, seq) its replaced predecessor beat last

    def refresh(self, force: bool = False) -> dict[str, dict[str, Any]]:
        """The heartbeats as of now (re-read when older than `refresh_s`, or `force`)."""
        now = time.monotonic()
        if force or now - self._read_at >= self.refresh_s:
            self.beats, self._read_at = self.read(), now
            for consumer, hb in self.beats.items():
                key = (hb.get("pid"), hb.get("seq"))
                if self._changed.get(consumer, (None, 0.0))[0] != key:
                    self._changed[consumer] = (key, now)
        return self.beats

    def reset(self, consumer: str) -> None:
        """`consumer` has a new worker: its predecessor's last beat no longer counts, and the new one is not
        watched until it beats (a worker that hangs while starting is the stage deadline's business)."""
        self.refresh(force=True)
        hb = self.beats.get(consumer)
        self._stale[consumer] = None if hb is None else (hb.get("pid"), hb.get("seq"))

    def quiet_s(self, consumer: str, since: float) -> float:
        """Seconds since `consumer` last beat, counted from `since` (a monotonic time: when its call was
        made) if that is later: a worker idle between calls owes no beats. 0 while its worker has not beaten
        since it was started (`reset`) or ever."""
        self.refresh()
        seen = self._changed.get(consumer)
        if seen is None or (consumer in self._stale and seen[0] == self._stale[consumer]):
            return 0.0
        return time.monotonic() - max(seen[1], since)
