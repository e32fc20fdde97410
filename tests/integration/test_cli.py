"""The CLI fails fast, naming the problem: a typo'd key, a missing model directory, an unreachable Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sparring.services.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_typo_key(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("schedule:\n  iteratons: 3\n")
    code, out, _ = run_cli("run", str(cfg))
    assert code == 2
    assert "schedule.iteratons: unknown key" in out


def test_missing_model_directory(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"policy:\n  path: {tmp_path}/does-not-exist\n")
    code, out, _ = run_cli("run", str(cfg))
    assert code == 2
    assert f"{tmp_path}/does-not-exist" in out and "does not exist" in out


def test_unreachable_redis_fails_fast(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "policy: {path: arena}\njudge: {kind: arena_oracle}\nprompts: {source: arena}\n"
        f"storage:\n  run_dir: {tmp_path}/runs\n"
    )
    url = f"redis://127.0.0.1:{closed_port()}/0"
    code, out, seconds = run_cli("run", str(cfg), env={"REDIS_URL": url})
    assert code == 2
    assert "cannot reach Redis" in out and url.split("//")[1].split("/")[0] in out
    assert seconds < 30  # includes interpreter start-up and imports; the Redis check itself is ~instant


def test_demo_overrides_are_validated() -> None:
    code, out, _ = run_cli("demo", "--set", "generation.samples_per_prompt=1")
    assert code == 2
    assert "generation.samples_per_prompt" in out
