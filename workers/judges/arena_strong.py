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
two processes building the same model (the same scheme as `sparring.shared.arena_model`).
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

from sparring.shared import arena
from sparring.shared.arena_model import build_arena_model
from sparring.shared.cache import build_once, default_cache_dir

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


def _lr_at(step: int, s: ArenaStrongSettings) -> float:
    import math

    if step < s.warmup_steps:
        return s.learning_rate * (step + 1) / s.warmup_steps
    frac = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.learning_rate * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _build(
    out: Path, base: Path, seed: int, s: ArenaStrongSettings, progress: Callable[[str], None], threads: int
) -> None:
    import torch

    from sparring.shared.models import load_causal_lm, load_tokenizer, prompt_token_ids, text_token_ids
    from sparring.workers.trainer import collate_sequences

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
                group["lr"] = _lr_at(step, s)
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


@dataclass(frozen=True)
class Agreement:
    """Fraction of held-out pairs a judge orders like the gold rule (a score tie counts one half)."""

    agreement: float
    ci_low: float
    ci_high: float
    num_pairs: int


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


def gold_agreement(judge: Any, pairs: list[tuple[arena.ArenaPrompt, str, str]]) -> Agreement:
    """How often `judge` (a `Judge` returning scores) prefers the higher-gold response of each pair.

    Pairs are judged as two-response groups whose completions ended on EOS (`finish_reason="stop"`).
    The 95% interval is Wilson's (pairs come from distinct prompts, so they are independent draws).
    """
    import math

    from sparring.shared.records import Completion, GenerationGroup

    tok = getattr(judge, "tokenizer", None)
    groups = []
    for i, (p, a, b) in enumerate(pairs):
        comps = [
            Completion(
                index=j,
                text=t,
                token_ids=[]
                if tok is None
                else [int(x) for x in tok(t, add_special_tokens=False)["input_ids"]],
                logprobs=None,
                finish_reason="stop",
            )
            for j, t in enumerate((a, b))
        ]
        groups.append(
            GenerationGroup(
                run_id="eval",
                iteration=0,
                policy_version=0,
                prompt_id=p.prompt_id,
                prompt=p.prompt,
                prompt_token_ids=[0],
                completions=comps,
                engine_id="corpus",
                seed=i,
                latency_s=0.0,
            )
        )
    judgements = judge.judge(groups)
    hits = 0.0
    for (p, a, b), j in zip(pairs, judgements, strict=True):
        sa, sb = j.scores
        gold_a_wins = arena.gold_score(p.topic, a) > arena.gold_score(p.topic, b)
        hits += 0.5 if sa == sb else float((sa > sb) == gold_a_wins)
    n = len(pairs)
    phat, z = hits / n, 1.96
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Agreement(phat, max(0.0, centre - half), min(1.0, centre + half), n)
