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


def test_bad_prompt_file_leaves_no_run_directory(tmp_path: Path) -> None:
    pool = tmp_path / "prompts.jsonl"
    pool.write_text('{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": 3}\n')
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"policy: {{path: arena}}\njudge: {{kind: arena_oracle}}\nprompts: {{source: jsonl, path: {pool}}}\n"
        f"storage:\n  run_dir: {tmp_path}/runs\n"
    )
    code, out, _ = run_cli("run", str(cfg))
    assert code == 2
    assert "line 2: field 'prompt' must be a non-empty string" in out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_run_the_cluster_cannot_hold_fails_with_one_line(tmp_path: Path) -> None:
    """A run asking for a resource no node has ends with exit 1 and the placement numbers, not a traceback."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "policy: {path: arena}\njudge: {kind: arena_oracle}\nprompts: {source: arena}\n"
        "resources: {trainer: {custom: {no_such_node: 1}}}\n"
        f"storage:\n  run_dir: {tmp_path}/runs\n"
    )
    code, out, _ = run_cli("run", str(cfg))
    assert code == 1, out
    assert "Traceback" not in out and "could not settle" not in out, out
    assert "failed: PlacementError: " in out and "no_such_node: the run needs 1" in out and "controller.log" in out


def test_incomplete_judge_model_directory_fails_before_ray(tmp_path: Path) -> None:
    """A judge's model dir without weights is refused with its field before Redis or Ray start."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"policy: {{path: arena}}\njudge: {{kind: density_ratio, strong_model: {broken}, weak_model: arena}}\n"
        f"prompts: {{source: arena}}\nstorage:\n  run_dir: {tmp_path}/runs\n"
    )
    code, out, seconds = run_cli("run", str(cfg))
    assert code == 2, out
    assert f"judge.strong_model: model directory '{broken}' cannot be loaded: missing weights" in out
    assert "Traceback" not in out and not (tmp_path / "runs").exists()


def test_output_into_a_closed_pipe_is_no_traceback() -> None:
    """`sparring presets show sppo | head -1`: the reader leaves early; the CLI stops without a traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparring.services.cli", "presets", "show", "sppo"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
