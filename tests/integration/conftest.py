"""Fixtures for tests that drive the real API: a Ray head (`ray start --head`) and `sparring serve` in a
subprocess on loopback, against the session's real Redis.

`api_server` (module scope) is an `ApiServer`: `.url`, `.admin_token`, `.read_token`, `.client(token)`,
`.start_arena_run(iterations=N, **overrides)`, `.wait_for(...)`, and `.restart()` / `.kill()` to restart the
API process while runs continue in Ray.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

SMALL_ARENA_RUN: dict[str, Any] = {
    "name": "api-arena",
    "preset": "dpo",
    "generation": {"samples_per_prompt": 2, "max_new_tokens": 24, "prompts_per_request": 32},
    "trainer": {"learning_rate": 3e-4, "batch_size": 8, "epochs": 1},
    "schedule": {"prompts_per_iteration": 32},
    "eval": {"num_prompts": 32},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class ApiServer:
    url: str
    port: int
    admin_token: str
    read_token: str
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sparring.services.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sparring serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"sparring serve not ready in 120 s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the API process (no clean shutdown at all)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    @property
    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def start_arena_run(self, iterations: int = 3, **overrides: Any) -> str:
        config = _merge(SMALL_ARENA_RUN, {"schedule": {"iterations": iterations}})
        config = _merge(config, overrides)
        with self.admin as c:
            r = c.post("/v1/runs", json={"config": config})
        assert r.status_code == 201, r.text
        return str(r.json()["run_id"])

    def wait_for(self, run_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 600, what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                with self.client(self.read_token) as c:
                    run = c.get(f"/v1/runs/{run_id}").json()
            except httpx.HTTPError:  # the API may be restarting
                time.sleep(0.5)
                continue
            if done(run):
                return run
            if run.get("state") == "failed":
                raise AssertionError(f"run failed: {run.get('reason')}\n{self.log_tail()}")
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what or 'condition'}; last {run}\n{self.log_tail()}")


@pytest.fixture(scope="module")
def ray_auth() -> dict[str, str]:
    """`ray start` clusters require token authentication (Ray >= 2.5x): one random token per module."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def ray_head(ray_auth: dict[str, str]) -> Iterator[str]:
    """A Ray head node (4 CPUs, 1 logical GPU: GPU configs can be placed) in its own process group, torn down
    at the end of the module."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    ray_bin = Path(sys.executable).parent / "ray"
    proc = subprocess.Popen(
        [
            str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=4", "--num-gpus=1",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **ray_auth, "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        r = subprocess.run(
            [str(ray_bin), "status", f"--address={address}"], capture_output=True, text=True, env={**os.environ, **ray_auth}
        )
        if r.returncode == 0:
            break
        time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"ray head at {address} did not start")
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def arena_policy() -> str:
    """Build (or reuse) the cached arena policy before any run needs it, so runs start fast."""
    from sparring.tasks.arena.policy import build_arena_model

    return str(build_arena_model(0))


def launch_api_server(
    redis_url: str, ray_head: str, ray_auth: dict[str, str], data_dir: Path, **env_overrides: str
) -> ApiServer:
    models = data_dir / "models"
    models.mkdir(exist_ok=True)
    admin, read = "adm-" + secrets.token_hex(16), "ro-" + secrets.token_hex(16)
    port = free_port()
    env = {
        **os.environ,
        **ray_auth,
        "REDIS_URL": redis_url,
        "RAY_ADDRESS": ray_head,
        "SPARRING_API_TOKENS": admin,
        "SPARRING_READONLY_TOKENS": read,
        "SPARRING_DATA_DIR": str(data_dir),
        "SPARRING_MODEL_ROOTS": str(models),
        "SPARRING_MAX_UPLOAD_BYTES": str(64 * 1024),
        "SPARRING_MAX_ACTIVE_RUNS": "1",
        **env_overrides,
    }
    server = ApiServer(f"http://127.0.0.1:{port}", port, admin, read, data_dir, env, data_dir / "serve.log")
    server.start()
    return server


def shut_down(server: ApiServer) -> None:
    """Stop every run this module left queued or executing (they share Redis with later modules), then the API."""
    with server.admin as c:
        for run in c.get("/v1/runs").json()["runs"]:
            if run["state"] in ("running", "pausing", "created", "paused"):
                c.post(f"/v1/runs/{run['run_id']}/stop")
    server.stop()


@pytest.fixture(scope="module")
def api_server(
    redis_url: str, ray_head: str, ray_auth: dict[str, str], arena_policy: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    server = launch_api_server(redis_url, ray_head, ray_auth, tmp_path_factory.mktemp("api"))
    yield server
    shut_down(server)
