"""Build-once caches for locally built artefacts (a task's tiny policy and judges): one directory per key.

`build_once(final, build)` returns `final` if a complete build is there; otherwise, under an fcntl lock
beside it (so two processes never build the same key twice), it removes temp directories left by killed
builds, builds into a fresh temp directory and renames it into place atomically, so a reader never sees a
half-written directory. Knows nothing about what is built.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "SPARRING_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$SPARRING_CACHE_DIR`, else `~/.cache/sparring`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sparring").expanduser()


def is_checkpoint(path: Path) -> bool:
    """A complete HF model directory: config and safetensors weights."""
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def build_once(
    final: Path, build: Callable[[Path], None], complete: Callable[[Path], bool] = is_checkpoint
) -> Path:
    """`final`, built by `build(tmp_dir)` first if it is not complete yet (see the module docstring)."""
    if complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.with_name(final.name + ".lock")):
        if complete(final):  # another process built it while we waited
            return final
        for stale in final.parent.glob(f".tmp-{final.name}-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
