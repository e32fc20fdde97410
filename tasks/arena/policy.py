"""Builds the arena base policy: a tiny Llama pretrained on the arena corpus, cached once per seed.

`build_arena_model(seed)` returns an ordinary Hugging Face checkpoint directory (config.json,
model.safetensors, tokenizer with its chat template) that `sparring.shared.models.load_causal_lm` /
`load_tokenizer` and vLLM load like any other model. The first call for a seed trains it (about two
minutes on a 2-core CPU); later calls return the cached directory.

Training examples are exactly what the samplers and the trainer will see: the prompt rendered by
`sparring.shared.models.prompt_token_ids` (chat template with generation prompt), then the response
tokens, then the eos token `<|end|>`. The loss covers only the response tokens and eos: prompts are
given at sampling time, and modelling them would spend the tiny model's capacity on nothing.

Judge examples (`arena.corpus_judge_example`) teach the policy to judge: the judge prompt rendered the same
way, then the answer token " A" / " B" and eos. They come in a second phase of `judge_steps` steps after
the `steps` of plain pretraining: each step trains on one batch of responses (so generation is kept) and
one batch of judge examples; the loss is the mean response-token loss plus `judge_loss_weight` times the
mean loss of the judge rows. Measured while building this (docs/judges.md): mixed into one pooled mean
from the first step, a verdict (one answer token against ~25 response tokens per response example) got
almost no gradient and the model never judged (agreement 0.50); the comparison is learnt only after the
model can read responses, and only with its own loss term.

Cache layout: `{cache_dir}/arena/seed{seed}-{settings hash}/`. The hash covers the build settings and the
source of this module, `arena.py` and `tiny.py`, so changing any of them builds a fresh model. A build
writes into a temporary sibling directory and renames it into place, so a killed build never leaves a
half-written cache; an fcntl lock serialises two processes building the same seed.

This module knows the arena corpus and how to pretrain on it; it knows nothing about Ray, Redis, vLLM or
the preference loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sparring.shared import tiny
from sparring.shared.cache import build_once, default_cache_dir
from sparring.shared.models import prompt_token_ids
from sparring.tasks.arena import rules as arena

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArenaBuildSettings:
    """Everything that decides the built weights besides the seed (all of it goes into the cache key)."""

    vocab_size: int = 1024  # BPE target; the corpus has fewer distinct words, so the real vocab is smaller
    responses_per_prompt: int = 48  # pretraining corpus = every train prompt x this many responses
    steps: int = 900
    batch_size: int = 64
    learning_rate: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at learning_rate * this
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    log_every: int = 100
    judge_examples_per_prompt: int = 16  # judge-format examples per train prompt (0: no judge phase)
    judge_steps: int = 500  # second phase: responses + judge examples, after `steps` of pretraining
    judge_batch_size: int = 32  # judge examples per step of the second phase, besides `batch_size` responses
    judge_learning_rate: float = 1e-3  # second phase: warmup to this, cosine decay to it * min_lr_ratio
    judge_loss_weight: float = 2.0


DEFAULT_SETTINGS = ArenaBuildSettings()


def settings_hash(settings: ArenaBuildSettings) -> str:
    """Short hash of the settings and of the code that builds the model (a code change invalidates it)."""
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    for module_file in (__file__, arena.__file__, tiny.__file__):
        h.update(Path(str(module_file)).read_bytes())
    return h.hexdigest()[:12]


def arena_model_dir(seed: int = 0, cache_dir: str | Path | None = None, **overrides: int | float) -> Path:
    """Where `build_arena_model` keeps (or will keep) the model for `seed` and these settings."""
    settings = replace(DEFAULT_SETTINGS, **overrides)  # type: ignore[arg-type]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "arena" / f"seed{seed}-{settings_hash(settings)}"


def build_arena_model(
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    threads: int = 1,
    **overrides: int | float,
) -> Path:
    """The arena base policy for `seed`: built on first use, then returned from the cache.

    `overrides` replace fields of `ArenaBuildSettings` (e.g. `steps=50` for a quick test model); they
    are part of the cache key, so they never return a model built with other settings. `threads` is the
    torch intra-op thread count of the build (restored afterwards). It defaults to 1: the build is then
    bitwise reproducible for a seed whatever the machine's core count (float reductions depend on the
    thread split), and on a busy 2-core machine two threads measured ~5x *slower* per step than one
    (thread thrashing against other processes). It is not part of the cache key.
    """
    settings = replace(DEFAULT_SETTINGS, **overrides)  # type: ignore[arg-type]
    report = progress or (lambda msg: log.info("%s", msg))
    return build_once(
        arena_model_dir(seed, cache_dir, **overrides),
        lambda tmp: _build(tmp, seed, settings, report, threads),
    )


# --------------------------------------------------------------------------------------------------
# The build itself


@dataclass(frozen=True)
class _Example:
    prompt_ids: list[int]
    response_ids: list[int]  # response tokens + eos


def _corpus(seed: int, settings: ArenaBuildSettings) -> list[tuple[arena.ArenaPrompt, str]]:
    """Every train prompt with `responses_per_prompt` corpus responses (held-out prompts are never seen)."""
    rng = random.Random(f"arena-corpus-{seed}")
    return [
        (p, arena.corpus_response(p.topic, rng))
        for p in arena.arena_prompts("train")
        for _ in range(settings.responses_per_prompt)
    ]


def _judge_corpus(seed: int, settings: ArenaBuildSettings) -> list[tuple[str, str]]:
    """(judge prompt, answer) examples on train prompts only, `judge_examples_per_prompt` per prompt."""
    rng = random.Random(f"arena-judge-corpus-{seed}")
    return [
        arena.corpus_judge_example(p, rng)
        for p in arena.arena_prompts("train")
        for _ in range(settings.judge_examples_per_prompt)
    ]


def _tokenize_judge(tok: PreTrainedTokenizerBase, judge_corpus: list[tuple[str, str]]) -> list[_Example]:
    answers = {a: tok(a, add_special_tokens=False)["input_ids"] for a in arena.JUDGE_ANSWERS}
    if any(len(ids) != 1 for ids in answers.values()):
        raise RuntimeError(f"judge answers must be single tokens of the arena tokenizer, got {answers}")
    eos = int(tok.eos_token_id)
    return [_Example(prompt_token_ids(tok, q), [*answers[a], eos]) for q, a in judge_corpus]


def _tokenize(tok: PreTrainedTokenizerBase, corpus: list[tuple[arena.ArenaPrompt, str]]) -> list[_Example]:
    prompt_ids = {p.prompt: prompt_token_ids(tok, p.prompt) for p, _ in corpus}
    for prompt in {p.prompt_id.split("-")[1]: p.prompt for p, _ in corpus}.values():  # one per template
        check_prompt_boundary(tok, prompt)
    encoded = tok([r for _, r in corpus], add_special_tokens=False)["input_ids"]
    eos = int(tok.eos_token_id)
    return [
        _Example(prompt_ids[p.prompt], [*map(int, ids), eos])
        for (p, _), ids in zip(corpus, encoded, strict=True)
    ]


def check_prompt_boundary(
    tok: PreTrainedTokenizerBase, prompt: str, response: str = "glad you asked."
) -> None:
    """Raise unless prompt_token_ids + response tokens + eos is exactly the chat template's full rendering.

    This is the contract the sampler relies on: the ids it generates after `prompt_token_ids` are the
    ids the policy was trained to produce there.
    """
    ids: object = tok.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]  # type: ignore[index]
    full = [int(i) for i in ids]  # type: ignore[attr-defined]
    ours = [
        *prompt_token_ids(tok, prompt),
        *tok(response, add_special_tokens=False)["input_ids"],
        int(tok.eos_token_id),
    ]
    if full[: len(ours)] != ours:
        raise RuntimeError(
            f"arena tokenizer boundary mismatch for {prompt!r}: {ours} vs chat template {full}"
        )


def _batch(examples: list[_Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); labels are -100 on prompt and padding."""
    from sparring.workers.logps import collate_sequences

    batch = collate_sequences([e.prompt_ids for e in examples], [e.response_ids for e in examples], pad_id)
    labels = batch.input_ids.masked_fill(~batch.completion_mask, -100)
    return batch.input_ids, batch.attention_mask, labels


def _length_bucketed_batches(
    examples: list[_Example],
    batch_size: int,
    rng: random.Random,
    length: Callable[[_Example], int],
    pool_batches: int = 16,
) -> Iterator[list[_Example]]:
    """Endless random batches; each pool of `pool_batches` batches is sorted by `length` first, so a batch
    holds sequences of similar length and little of it is padding (responses run from 2 to ~45 words)."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        pool = batch_size * pool_batches
        for start in range(0, len(order) - batch_size + 1, pool):
            chunk = sorted(order[start : start + pool], key=lambda i: length(examples[i]))
            group = [chunk[b : b + batch_size] for b in range(0, len(chunk) - batch_size + 1, batch_size)]
            rng.shuffle(group)
            for b in group:
                yield [examples[i] for i in b]


def _response_length(e: _Example) -> int:
    return len(e.response_ids)


def _row_length(e: _Example) -> int:
    """The whole row: judge prompts vary in length, their answers do not."""
    return len(e.prompt_ids) + len(e.response_ids)


def _build(
    out: Path, seed: int, s: ArenaBuildSettings, progress: Callable[[str], None], threads: int
) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    from sparring.workers.batching import WarmupSchedule

    t0 = time.monotonic()
    corpus = _corpus(seed, s)
    judge_corpus = _judge_corpus(seed, s)
    tok_texts = [f" {p.prompt}\n" for p in arena.arena_prompts("train")] + [r for _, r in corpus]
    tok_texts += [q for q, _ in judge_corpus[:2000]]  # the judge template's words and " A" / " B"
    tiny.train_tokenizer(tok_texts, s.vocab_size, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    examples = _tokenize(tok, corpus)
    judge_examples = _tokenize_judge(tok, judge_corpus)
    progress(
        f"arena seed {seed}: corpus of {len(examples)} responses and {len(judge_examples)} judge examples, "
        f"vocab {len(tok)}, {time.monotonic() - t0:.1f}s; training {s.steps} steps"
    )

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        cfg = tiny.tiny_llama_config(len(tok), int(tok.pad_token_id), int(tok.eos_token_id))
        model = LlamaForCausalLM(cfg)
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=s.learning_rate,
        )
        pad_id = int(tok.pad_token_id)
        batches = _length_bucketed_batches(
            examples, s.batch_size, random.Random(f"arena-order-{seed}"), _response_length
        )
        judge_batches = (
            _length_bucketed_batches(
                judge_examples, s.judge_batch_size, random.Random(f"arena-judge-order-{seed}"), _row_length
            )
            if judge_examples and s.judge_batch_size > 0
            else None
        )
        # warmup to the peak, then cosine decay to peak * min_lr_ratio; the judge phase restarts at step 0
        pretrain_lr = WarmupSchedule(
            "cosine", s.steps, s.warmup_steps, min_ratio=s.min_lr_ratio, peak=s.learning_rate, warmup_offset=1
        )
        judge_lr = WarmupSchedule(
            "cosine",
            s.judge_steps,
            s.warmup_steps,
            min_ratio=s.min_lr_ratio,
            peak=s.judge_learning_rate,
            warmup_offset=1,
        )
        total_steps = s.steps + (s.judge_steps if judge_batches is not None else 0)
        loss_sum = judge_sum = 0.0
        loss_n = 0
        for step in range(total_steps):
            judging = step >= s.steps
            lr = judge_lr(step - s.steps) if judging else pretrain_lr(step)
            for group in opt.param_groups:
                group["lr"] = lr
            ids, mask, labels = _batch(next(batches), pad_id)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            total = loss
            if judging:
                assert judge_batches is not None
                ids, mask, labels = _batch(next(judge_batches), pad_id)
                judge_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                total = loss + s.judge_loss_weight * judge_loss
                judge_sum += judge_loss.item()
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
            opt.step()
            loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
            if (step + 1) % s.log_every == 0 or step + 1 == total_steps:
                judged = f" judge loss {judge_sum / loss_n:.4f}" if judging else ""
                progress(
                    f"arena seed {seed}: step {step + 1}/{total_steps} loss {loss_sum / loss_n:.4f}{judged} "
                    f"lr {lr:.2e} elapsed {time.monotonic() - t0:.1f}s"
                )
                loss_sum = judge_sum = 0.0
                loss_n = 0
    finally:
        torch.set_num_threads(threads_before)

    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=int(tok.eos_token_id), pad_token_id=pad_id, bos_token_id=None
    )
    model.save_pretrained(out)
    (out / "arena_build.json").write_text(
        json.dumps({"seed": seed, "settings": asdict(s), "build_seconds": time.monotonic() - t0}, indent=2)
    )
    progress(f"arena seed {seed}: built in {time.monotonic() - t0:.1f}s")
