"""Shared test helpers: a seed -> a tiny, ordinary HF checkpoint directory (tokenizer + random Llama).

The checkpoint is built by the same `sparring.shared.tiny` functions the arena uses and loads through
the same code path as a real model. It is deterministic for a given `seed` and takes well under 5 s.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparring.shared.tiny import save_tiny_llama, train_tokenizer

if TYPE_CHECKING:
    from sparring.shared.config import RunConfig
    from sparring.shared.records import PreferencePair
    from sparring.shared.store import RunStore

_WORDS = (
    "the a cat dog bird fish runs jumps sees eats likes red blue green small big quick slow "
    "and or but then after before under over near far one two three four five six seven eight "
    "nine ten hello world yes no maybe always never sometimes river tree stone cloud rain sun"
).split()


def tiny_corpus(num_lines: int = 400, seed: int = 0) -> list[str]:
    """A small deterministic list of pseudo-sentences for training a throwaway BPE tokenizer."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(num_lines)]


def make_tiny_checkpoint(
    out_dir: str | Path, seed: int = 0, vocab_size: int = 512, **config_overrides: object
) -> Path:
    """Save a tiny random Llama (hidden 128, 2 layers, head_dim 64) with its BPE tokenizer to `out_dir`.

    The tokenizer is trained on `tiny_corpus()` (always seed 0, so checkpoints with different `seed`s share
    one tokenizer and vocabulary and their weights are interchangeable); `seed` sets the weights.
    `config_overrides` go to `LlamaConfig` (e.g. `initializer_range`).
    """
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="tiny-tok-") as tok_dir:
        train_tokenizer(tiny_corpus(), vocab_size=vocab_size, out_dir=tok_dir)
        save_tiny_llama(out, tok_dir, seed=seed, **config_overrides)
    return out


def chaos_run_config(tmp_path: Path, name: str, prompts: int, **overrides: Any) -> RunConfig:
    """The small arena run the chaos tests break: the arena policy and oracle, one transformers generator (K=4,
    24 new tokens, `prompts` per request), one iteration of `prompts` prompts, no evaluation, checkpoints
    synced as safetensors dirs. `overrides` are config sections merged key by key over these."""
    from sparring.shared.config import parse_config
    from sparring.shared.presets import deep_merge

    base: dict[str, Any] = {
        "name": name,
        "policy": {"path": "arena"},
        "judge": {"kind": "arena_oracle"},
        "prompts": {"source": "arena"},
        "generation": {"backend": "transformers", "num_generators": 1, "samples_per_prompt": 4,
                       "prompts_per_request": prompts, "max_new_tokens": 24},  # fmt: skip
        "trainer": {"learning_rate": 3e-4, "batch_size": 8, "torch_threads": 1},
        "schedule": {"iterations": 1, "prompts_per_iteration": prompts},
        "eval": {"enabled": False},
        "storage": {"run_dir": str(tmp_path), "weight_transport": "safetensors_dir", "claim_idle_ms": 60_000},
    }
    return parse_config(deep_merge(base, overrides))


def random_pairs(seed: int, num_pairs: int = 8) -> list[PreferencePair]:
    """`num_pairs` preference pairs of random token ids (4-token prompts, 5-token answers, ids 20-299, so any
    tiny test tokenizer's vocabulary holds them), chosen = answer 0 with win probability 0.9: a fixed,
    learnable preference for trainer tests. Deterministic for a given `seed`."""
    from sparring.shared.records import Completion, PreferencePair

    rng = random.Random(seed)

    def answer(i: int) -> Completion:
        ids = [rng.randrange(20, 300) for _ in range(5)]
        return Completion(index=i, text="", token_ids=ids, logprobs=[0.0] * 5, finish_reason="stop")

    return [
        PreferencePair(
            run_id="r", iteration=1, policy_version=0, prompt_id=f"p{k}", prompt="p",
            prompt_token_ids=[rng.randrange(20, 300) for _ in range(4)], chosen=answer(0), rejected=answer(1),
            chosen_score=1.0, rejected_score=0.0, win_prob=0.9, judge="test",
        )  # fmt: skip
        for k in range(num_pairs)
    ]


class EventWatch:
    """Follow a run's events (`RunStore.events`, from the cursor `after` on) and act at the right moment: the
    chaos tests' "watch the events, kill when X happens" loop.

    `until(on_event, ...)` hands each new event's (kind, data) to `on_event` in stream order, every `poll_s`
    seconds, and once per poll calls `on_poll()` (for a condition that is not an event, e.g. a stream's
    length); it returns True as soon as either returns True, False once `timeout_s` have passed. The cursor
    (`last`) stops at the event that ended the watch, so a later `until` goes on from the next one.
    `in_thread` runs `until` in a daemon thread."""

    def __init__(self, store: RunStore, run_id: str, after: str = "0-0") -> None:
        self.store, self.run_id, self.last = store, run_id, after

    def until(
        self,
        on_event: Callable[[str, dict[str, Any]], bool],
        timeout_s: float,
        on_poll: Callable[[], bool] | None = None,
        poll_s: float = 0.02,
    ) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for eid, kind, data in self.store.events(self.run_id, after=self.last):
                self.last = eid
                if on_event(kind, data):
                    return True
            if on_poll is not None and on_poll():
                return True
            time.sleep(poll_s)
        return False

    def in_thread(
        self,
        on_event: Callable[[str, dict[str, Any]], bool],
        timeout_s: float,
        on_poll: Callable[[], bool] | None = None,
        poll_s: float = 0.02,
    ) -> threading.Thread:
        thread = threading.Thread(target=self.until, args=(on_event, timeout_s, on_poll, poll_s), daemon=True)
        thread.start()
        return thread

