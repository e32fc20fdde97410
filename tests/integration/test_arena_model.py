"""Building the arena policy: loadable checkpoint, cache reuse, determinism, no half-written cache.

Uses a reduced build (few steps, small corpus) in a temporary cache directory; the real default build is
measured by `bench/arena_headroom.py`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from sparring.shared.models import load_causal_lm, load_tokenizer, prompt_token_ids
from sparring.tasks.arena import rules as arena
from sparring.tasks.arena.policy import arena_model_dir, build_arena_model, check_prompt_boundary

pytestmark = pytest.mark.integration

QUICK = {
    "steps": 8, "batch_size": 16, "responses_per_prompt": 2, "log_every": 4,
    "judge_examples_per_prompt": 1, "judge_steps": 4, "judge_batch_size": 8,
}  # fmt: skip


def _weights_hash(path: Path) -> str:
    model = load_causal_lm(str(path))
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_build_load_cache_and_determinism(tmp_path: Path) -> None:
    messages: list[str] = []
    path = build_arena_model(seed=3, cache_dir=tmp_path / "a", progress=messages.append, **QUICK)
    assert path == arena_model_dir(3, tmp_path / "a", **QUICK)
    assert path.parent.name == "arena" and path.name.startswith("seed3-")
    assert any("step 12/12" in m for m in messages) and any("built in" in m for m in messages)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (path / name).is_file(), name
    assert not list(path.parent.glob(".tmp-*"))

    tok = load_tokenizer(str(path))
    model = load_causal_lm(str(path))
    assert 256 <= len(tok) <= 1024 and model.config.vocab_size == len(tok)
    assert model.config.head_dim == 64 and model.config.eos_token_id == tok.eos_token_id
    assert tok.eos_token == "<|end|>" and tok.chat_template
    prompt = arena.arena_prompts("heldout")[0].prompt
    ids = prompt_token_ids(tok, prompt)
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>") and ids[-1] == tok.convert_tokens_to_ids(
        "<|assistant|>"
    )
    check_prompt_boundary(tok, prompt)  # raises on a sampler/trainer token mismatch

    # cache hit: same path, no rebuild
    again: list[str] = []
    t0 = time.monotonic()
    assert build_arena_model(seed=3, cache_dir=tmp_path / "a", progress=again.append, **QUICK) == path
    assert time.monotonic() - t0 < 2.0 and again == []

    # same seed in a fresh cache: identical weights; other seed or settings: another directory
    other = build_arena_model(seed=3, cache_dir=tmp_path / "b", progress=lambda m: None, **QUICK)
    assert other.name == path.name and other != path
    assert _weights_hash(other) == _weights_hash(path)
    assert (other / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()
    assert arena_model_dir(4, tmp_path / "a", **QUICK) != path
    assert arena_model_dir(3, tmp_path / "a", **{**QUICK, "steps": 9}) != path


def test_killed_build_leaves_no_cache(tmp_path: Path) -> None:
    def die(msg: str) -> None:
        if "step" in msg:
            raise KeyboardInterrupt("killed mid-build")

    with pytest.raises(KeyboardInterrupt):
        build_arena_model(seed=1, cache_dir=tmp_path, progress=die, **QUICK)
    root = tmp_path / "arena"
    assert not [p for p in root.iterdir() if p.is_dir()]  # neither a final nor a temporary directory


def test_concurrent_builds_build_once(tmp_path: Path) -> None:
    built: list[str] = []
    paths: list[Path] = []

    def worker() -> None:
        paths.append(build_arena_model(seed=2, cache_dir=tmp_path, progress=built.append, **QUICK))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1]
    assert sum("built in" in m for m in built) == 1
