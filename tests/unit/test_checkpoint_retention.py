"""Checkpoint retention (`retain_checkpoints`) and the resumability check (`resume_problems`) on directories laid
out as the trainer writes them: `checkpoints/v{n}/` with weights, config and `trainer_state.pt`, plus what a
killed save leaves behind (`.v{n}.tmp-*`) and a checkpoint written by a trainer that died before its iteration
was recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparring.workers.trainer_state import (
    SHARDED_DIR,
    TRAINER_STATE_FILE,
    resume_problems,
    retain_checkpoints,
)


def _checkpoint(root: Path, version: int) -> Path:
    d = root / f"v{version}"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"weights")
    (d / TRAINER_STATE_FILE).write_bytes(b"optimizer")
    (d / SHARDED_DIR).mkdir()  # as a sharded trainer writes it (DCP shards of model and optimizer)
    (d / SHARDED_DIR / "__0_0.distcp").write_bytes(b"shard")
    return d


def test_keep_last_whole_every_mth_as_weights_and_remove_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    recorded = [(t, _checkpoint(root, t)) for t in range(1, 8)]  # iterations 1..7 -> v1..v7
    unrecorded = _checkpoint(root, 8)  # a trainer died after saving v8, before iteration 8 was recorded
    leftover = root / ".v8.tmp-abc123"  # a save killed midway
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")

    done = retain_checkpoints(recorded, root, keep_last=2, keep_every=3)

    kept = sorted(p.name for p in root.iterdir())
    assert kept == ["v3", "v6", "v7"]  # v6, v7: the newest two; v3: every 3rd (v6 is both)
    assert not (root / "v3" / TRAINER_STATE_FILE).exists() and (root / "v3" / "model.safetensors").is_file()
    assert not (root / "v3" / SHARDED_DIR).exists()  # the shards are mostly optimizer state too
    for name in ("v6", "v7"):  # whole: resumable
        assert resume_problems(root / name) == []
    assert {p.name for p in done.removed} == {"v1", "v2", "v4", "v5", "v8", ".v8.tmp-abc123"}
    assert [p.name for p in done.weights_only] == ["v3"]
    assert not unrecorded.exists()

    # idempotent: a second pass after the same record changes nothing
    again = retain_checkpoints(recorded, root, keep_last=2, keep_every=3)
    assert again.removed == [] and again.weights_only == []


def test_the_resume_point_is_always_kept(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    recorded = [(1, _checkpoint(root, 1))]
    retain_checkpoints(recorded, root, keep_last=1)
    assert resume_problems(root / "v1") == []
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        retain_checkpoints(recorded, root, keep_last=0)


def test_resume_problems_name_each_missing_file(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, 3)
    (ckpt / TRAINER_STATE_FILE).unlink()
    (ckpt / "model.safetensors").write_bytes(b"")
    problems = resume_problems(ckpt)
    assert problems == [f"{ckpt / TRAINER_STATE_FILE} is missing", f"{ckpt / 'model.safetensors'} is empty"]
    assert resume_problems(tmp_path / "nope") == [f"checkpoint directory {str(tmp_path / 'nope')!r} does not exist"]
