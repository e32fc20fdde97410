"""A two-node local Ray cluster on this one machine, for the multi-node and node-loss tests.

`ray start --head --block` (custom resource `node_a`) and `ray start --address=<head> --block` (custom resource
`node_b`), each in its own process group (`start_new_session`), with their own temp dir and a random auth token,
so they never collide with another test's Ray: teardown signals exactly those two process groups. The worker node
can be stopped alone (`kill_worker`: SIGKILL to its process group: raylet, its object store and its actors'
workers) and started again (`start_worker`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

RAY_BIN = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwoNodes:
    """Head node (`node_a`: 100) and worker node (`node_b`: 100); `address` is the head's GCS address."""

    def __init__(self, head_cpus: int = 2, worker_cpus: int = 2) -> None:
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
        self.temp = Path(tempfile.mkdtemp(prefix="r2n", dir="/tmp"))  # short: Ray's socket paths have a length limit
        self.address = f"127.0.0.1:{_free_port()}"
        self.worker_cpus = worker_cpus
        self.head = self._start(["--head", f"--port={self.address.split(':')[1]}", f"--num-cpus={head_cpus}",
                                 '--resources={"node_a": 100}', "--include-dashboard=false",
                                 f"--dashboard-port={_free_port()}"])  # fmt: skip  (its minimal dashboard: not 8265)
        self._wait(lambda: self._status_ok(), "the head node")
        self.worker: subprocess.Popen[bytes] | None = None

    def _start(self, args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(RAY_BIN), "start", "--block", "--disable-usage-stats", f"--temp-dir={self.temp}", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=self.env,
        )

    def _status_ok(self) -> bool:
        return subprocess.run([str(RAY_BIN), "status", f"--address={self.address}"], capture_output=True, env=self.env).returncode == 0

    def _wait(self, ok: Any, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"{what} of the two-node Ray cluster at {self.address} did not start in {timeout:g} s")

    def alive_resources(self) -> set[str]:
        """The custom node labels (node_a/node_b) of the nodes alive now, as the head's GCS sees them."""
        import ray

        return {k for n in ray.nodes() if n["Alive"] for k in n["Resources"] if k.startswith("node_")}

    def start_worker(self) -> None:
        """Start (or start again) the worker node with `node_b`; returns once it is registered."""
        self.worker = self._start([f"--address={self.address}", f"--num-cpus={self.worker_cpus}", '--resources={"node_b": 100}'])
        out = subprocess.run  # the status text lists each node's resources
        self._wait(lambda: "node_b" in out([str(RAY_BIN), "status", f"--address={self.address}"], capture_output=True,
                                            text=True, env=self.env).stdout, "the worker node")  # fmt: skip

    def kill_worker(self) -> float:
        """SIGKILL the worker node's process group (its raylet, object store and worker processes): the node is
        lost as a machine would be. Returns the kill time (time.time())."""
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=30)
        self.worker = None
        return time.time()

    def stop(self) -> None:
        for proc in (self.worker, self.head):
            if proc is None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


def node_of_actors(run_id: str) -> dict[str, str]:
    """Actor name -> custom node label (node_a/node_b) of the node each of `run_id`'s named actors ran on
    (alive or dead), from the GCS actor table (`ray._private.state.actors`: the state API needs the dashboard,
    which these nodes do not start) and `ray.nodes()`."""
    import ray
    from ray._private.state import actors

    label = {n["NodeID"]: next((k for k in n["Resources"] if k.startswith("node_")), "?") for n in ray.nodes()}
    return {a["Name"]: label.get(a["Address"]["NodeID"], "?") for a in actors().values()
            if a["Name"] and a["Name"].startswith(f"{run_id}:")}  # fmt: skip


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    """The two-node cluster, the test process joined to it (namespace sparring, as the services join)."""
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state

    cluster = TwoNodes()
    old = os.environ.get("RAY_AUTH_TOKEN"), os.environ.get("RAY_AUTH_MODE")
    try:
        cluster.start_worker()
        os.environ["RAY_AUTH_TOKEN"], os.environ["RAY_AUTH_MODE"] = cluster.env["RAY_AUTH_TOKEN"], "token"
        reset_auth_token_state()  # Ray caches the token it read first
        ray.init(address=cluster.address, namespace="sparring", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        for key, value in zip(("RAY_AUTH_TOKEN", "RAY_AUTH_MODE"), old, strict=True):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_auth_token_state()
        cluster.stop()
