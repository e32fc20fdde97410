"""Builds the arena's "strong" model for density-ratio judges: the base policy fine-tuned on good answers.

`build_arena_strong(seed)` starts from the arena base policy (`build_arena_model(seed)`) and runs a short
SFT on corpus responses whose gold score is at least `min_gold` (default 3 of 4), for the *train* prompts
only (held-out prompts are never seen). CDR with strong = this model and weak = the base policy then
scores log p_strong(y|x) - log p_weak(y|x): the tokens that the fine-tune made likelier (the topic word,
polite phrases, no stutter, a sensible length) raise the ratio. It is the arena stand-in for CDR's "DPO
model over its SFT model" pair.

Training examples are laid out exactly as the judge scores them: `prompt_token_ids` (chat template with
generation prompt), then the response tokens, then eos; the loss covers the response and eos only.

Cache layout: `{cache_dir}/arena_strong/seed{seed}-{hash}/`, where the hash covers the settings, the
base model directory's name (itself a hash of the base build) and the source of this module and
`arena.py`. A build writes into a temporary sibling and renames it into place; an fcntl lock serialises
two processes building the same model (the same scheme as `sparring.tasks.arena.policy`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sparring.shared.cache import build_once, default_cache_dir
from sparring.tasks.arena import rules as arena
from sparring.tasks.arena.policy import build_arena_model
from sparring.workers.judges.agreement import Agreement, LabelledPair, agreement
from sparring.workers.judges.density_ratio import (
    Backend,
    DensityRatioJudge,
    Reduction,
    build_density_ratio_judge,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArenaStrongSettings:
    """Everything that decides the strong model besides the seed and the base (all in the cache key)."""

    draws_per_prompt: int = 24  # corpus responses drawn per train prompt before the gold filter
    min_gold: int = 3
    steps: int = 150
    batch_size: int = 64
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 50


DEFAULT_STRONG_SETTINGS = ArenaStrongSettings()


def strong_settings_hash(settings: ArenaStrongSettings, base_dir: Path) -> str:
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    h.update(base_dir.name.encode())
    for module_file in (__file__, arena.__file__):
        h.update(Path(str(module_file)).read_bytes())
    return h.hexdigest()[:12]


def arena_strong_dir(
    seed: int, cache_dir: str | Path | None, base_dir: Path, **overrides: int | float
) -> Path:
    """Where `build_arena_strong` keeps the strong model for these arguments."""
    settings = replace(DEFAULT_STRONG_SETTINGS, **overrides)  # type: ignore[arg-type]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "arena_strong" / f"seed{seed}-{strong_settings_hash(settings, base_dir)}"


def build_arena_strong(
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    base_dir: str | Path | None = None,
    threads: int = 1,
    **overrides: int | float,
) -> Path:
    """The strong arena model for `seed`: built on first use (~1 min on a 2-core CPU), then cached.

    `base_dir` is the base policy to fine-tune (default `build_arena_model(seed, cache_dir)`).
    `overrides` replace `ArenaStrongSettings` fields (e.g. `steps=60` for a quick test model) and are
    part of the cache key. `threads` is the torch thread count of the build (1: reproducible, and faster
    on a busy 2-core machine; see `build_arena_model`).
    """
    settings = replace(DEFAULT_STRONG_SETTINGS, **overrides)  # type: ignore[arg-type]
    report = progress or (lambda msg: log.info("%s", msg))
    base = Path(base_dir) if base_dir is not None else build_arena_model(seed, cache_dir, progress=progress)
    return build_once(
        arena_strong_dir(seed, cache_dir, base, **overrides),
        lambda tmp: _build(tmp, base, seed, settings, report, threads),
    )


def good_corpus(seed: int, settings: ArenaStrongSettings) -> list[tuple[arena.ArenaPrompt, str]]:
    """Train prompts with their corpus responses of gold >= `min_gold` (draws independent of the base's)."""
    rng = random.Random(f"arena-strong-corpus-{seed}")
    out = []
    for p in arena.arena_prompts("train"):
        for _ in range(settings.draws_per_prompt):
            r = arena.corpus_response(p.topic, rng)
            if arena.gold_score(p.topic, r) >= settings.min_gold:
                out.append((p, r))
    return out


def _build(
    out: Path, base: Path, seed: int, s: ArenaStrongSettings, progress: Callable[[str], None], threads: int
) -> None:
    import torch

    from sparring.shared.models import load_causal_lm, load_tokenizer, prompt_token_ids, text_token_ids
    from sparring.workers.batching import WarmupSchedule
    from sparring.workers.logps import collate_sequences

    t0 = time.monotonic()
    tok = load_tokenizer(str(base))
    corpus = good_corpus(seed, s)
    if not corpus:
        raise RuntimeError(f"no corpus response reaches gold {s.min_gold}")
    eos = int(tok.eos_token_id)
    prompt_ids = {p.prompt: prompt_token_ids(tok, p.prompt) for p, _ in corpus}
    examples = [(prompt_ids[p.prompt], [*text_token_ids(tok, r), eos]) for p, r in corpus]
    progress(
        f"arena_strong seed {seed}: {len(examples)} responses with gold >= {s.min_gold}, "
        f"{time.monotonic() - t0:.1f}s; fine-tuning {base.name} for {s.steps} steps"
    )
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = load_causal_lm(str(base), dtype="float32")
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
        # warmup to the peak, then cosine decay to learning_rate * min_lr_ratio
        lr_at = WarmupSchedule(
            "cosine", s.steps, s.warmup_steps, min_ratio=s.min_lr_ratio, peak=s.learning_rate, warmup_offset=1
        )
        rng = random.Random(f"arena-strong-order-{seed}")
        order: list[int] = []
        loss_sum, loss_n = 0.0, 0
        for step in range(s.steps):
            if len(order) < s.batch_size:
                fresh = list(range(len(examples)))
                rng.shuffle(fresh)
                order += fresh
            idx, order = order[: s.batch_size], order[s.batch_size :]
            batch = collate_sequences(
                [examples[i][0] for i in idx], [examples[i][1] for i in idx], int(tok.pad_token_id)
            )
            labels = batch.input_ids.masked_fill(~batch.completion_mask, -100)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
            opt.step()
            loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
            if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
                progress(
                    f"arena_strong seed {seed}: step {step + 1}/{s.steps} loss {loss_sum / loss_n:.4f} "
                    f"elapsed {time.monotonic() - t0:.1f}s"
                )
                loss_sum, loss_n = 0.0, 0
    finally:
        torch.set_num_threads(threads_before)
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "arena_strong_build.json").write_text(
        json.dumps(
            {"seed": seed, "base": str(base), "settings": asdict(s), "build_seconds": time.monotonic() - t0},
            indent=2,
        )
    )
    progress(f"arena_strong seed {seed}: built in {time.monotonic() - t0:.1f}s")


# --------------------------------------------------------------------------------------------------
# Measuring a judge against the gold rule on held-out arena pairs


def heldout_pairs(
    num_prompts: int = 320, seed: int = 0, max_draws: int = 64
) -> list[tuple[arena.ArenaPrompt, str, str]]:
    """(prompt, a, b) with gold(a) != gold(b): one pair of corpus responses per held-out prompt."""
    rng = random.Random(f"arena-judge-eval-{seed}")
    out = []
    for p in arena.arena_prompts("heldout")[:num_prompts]:
        a = arena.corpus_response(p.topic, rng)
        for _ in range(max_draws):
            b = arena.corpus_response(p.topic, rng)
            if arena.gold_score(p.topic, b) != arena.gold_score(p.topic, a):
                out.append((p, a, b))
                break
    return out


def labelled_pairs(pairs: list[tuple[arena.ArenaPrompt, str, str]]) -> list[LabelledPair]:
    """`heldout_pairs` as labelled pairs (prompt, a, b, 1.0 if a has the higher gold score else 0.0)."""
    return [(p.prompt, a, b, float(arena.gold_score(p.topic, a) > arena.gold_score(p.topic, b))) for p, a, b in pairs]


def gold_agreement(judge: Any, pairs: list[tuple[arena.ArenaPrompt, str, str]]) -> Agreement:
    """How often `judge` (a `Judge` returning scores) prefers the higher-gold response of each pair
    (`workers/judges/agreement.py`: ties one half, Wilson 95% interval)."""
    return agreement(judge, labelled_pairs(pairs))


def arena_cdr_judge(reduction: Reduction = "sum", backend: Backend = "transformers") -> DensityRatioJudge:
    """`judge.kind: arena_cdr`: CDR with strong = `build_arena_strong(0)` over weak = the arena base policy
    (both built on first use, cached)."""
    base = build_arena_model(0)
    strong = build_arena_strong(0, base_dir=base)
    return build_density_ratio_judge(str(strong), str(base), backend=backend, reduction=reduction, name="arena_cdr")
