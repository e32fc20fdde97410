"""The arena's tiny PairRM judge checkpoint (built once, cached).

Loss: PairRM's "instructgpt" pairwise loss, -log sigmoid(sign * (left - right)), on comparisons drawn from
all pairs of a prompt's candidates with the left/right order swapped at random (yuchenlin/LLM-Blender
`llm_blender/pair_ranker/ranker.py::CrossCompareReranker.compute_loss` and `.sampling`, mode all_pair).

`build_arena_pairrm(seed)` returns an ordinary PairRM-hf-layout directory (config.json with the PairRM
fields, model.safetensors, tokenizer) that `sparring.workers.judges.pairrm.load_pairrm` loads like a real
one. The model is a tiny DeBERTa-v2 (hidden 64, 2 layers, 4 heads; the PairRM-hf key names, config fields
and relative-attention flags, except position_buckets 32 and initializer_range 0.1, see
`PairRMBuildSettings`) trained on NOISY gold labels: all pairs with distinct gold scores among 12 arena
corpus responses per train prompt, each label flipped with probability `label_noise`. Held-out prompts are
never seen. It depends on the arena's prompts, gold rule and corpus only, never on the arena policy.

What made it learn (it stayed at chance before): (1) a tokenizer matched to the arena: lower-cased, with
punctuation split off, so every arena word is one token ("otters." was "▁o", "tter", "s." in the old
600-piece vocabulary, and a word's tokens changed with the punctuation after it); (2) initializer_range
0.1 instead of 0.02: with the hub's init the attention of a tiny from-scratch encoder is uniform at step
0, every prefix token then averages the whole row, the two candidates' prefix states are nearly equal and
the loss sits at log 2 for hundreds of steps; (3) word embeddings initialised from a truncated SVD of the
positive-PMI co-occurrence matrix of the arena texts (`corpus_embeddings`): all topic words start out
alike, so what is learnt about one topic word carries over to all 96 (without it, held-out pairs that
differ in the topic term were the weakest: 0.71 agreement); (4) 4 heads, batch 32, 1000 steps at lr 2e-3.

Tokenizer choice: DeBERTa-v3 uses a SentencePiece model. We train a `tokenizers` BPE model (lower-casing
normalizer; Metaspace pre-tokenizer, i.e. SentencePiece's "▁" word boundaries, then punctuation split; no
network, no `sentencepiece` package) on the arena texts, with [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, then
[MASK] and the four markers added at the end of the vocabulary (as in PairRM, where they are
128000..128004), and a "[CLS] $A [SEP]" post-processor. It is saved as a `PreTrainedTokenizerFast`
directory that `AutoTokenizer` loads (it is not a `DebertaV2Tokenizer`, which needs an `spm.model`).

Caching: `shared/cache.py::build_once` at `$SPARRING_CACHE_DIR` (or ~/.cache/sparring) / `pairrm/` /
`seed{seed}-{hash of the settings and of the source of this module, pairrm.py and arena.py}`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sparring.shared.cache import build_once, default_cache_dir
from sparring.shared.stats import wilson_interval
from sparring.tasks.arena import rules as arena
from sparring.workers.judges import pairrm as prm
from sparring.workers.judges import pairrm_train
from sparring.workers.judges.pairrm_train import (
    PairExample,
    corpus_embeddings,
    tiny_pairrm,
    train_pairrm_tokenizer,
    train_pairwise,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PairRMBuildSettings:
    """Everything that decides the built arena PairRM besides the seed (all of it is in the cache key)."""

    vocab_size: int = 1000  # BPE merges run out near 670: every arena word is one token
    responses_per_prompt: int = 12  # training candidates per train prompt
    label_noise: float = 0.15  # probability a gold preference label is flipped
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    position_buckets: int = 32  # relative positions up to 16 exact, log-bucketed beyond (hub: 256)
    initializer_range: float = 0.1  # hub: 0.02; a tiny model from scratch needs non-uniform attention at step 0
    embedding_window: int = 2  # word embeddings start from a PPMI-SVD of the arena texts (0: random init)
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    log_every: int = 100


DEFAULT_SETTINGS = PairRMBuildSettings()


def arena_pair_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[arena.ArenaPrompt],
    responses_per_prompt: int,
    label_noise: float,
    rng: random.Random,
) -> list[PairExample]:
    """All pairs with distinct gold of `responses_per_prompt` corpus responses per prompt, noisy labels,
    random left/right order."""
    ids = [tokenizer.convert_tokens_to_ids(m) for m in (prm.CAND_PREFIX, prm.CAND1_PREFIX, prm.CAND2_PREFIX)]
    out: list[PairExample] = []
    for p in prompts:
        cands = [arena.corpus_response(p.topic, rng) for _ in range(responses_per_prompt)]
        gold = [arena.gold_score(p.topic, c) for c in cands]
        src, enc = prm.encode_group(tokenizer, p.prompt, cands)
        for i in range(len(cands)):
            for j in range(i + 1, len(cands)):
                if gold[i] == gold[j]:
                    continue
                label = 1 if gold[i] > gold[j] else -1
                if rng.random() < label_noise:
                    label = -label
                a, b = (i, j) if rng.random() < 0.5 else (j, i)
                out.append(PairExample(prm.pair_input_ids(src, enc[a], enc[b], *ids), label if a == i else -label))
    return out


# --------------------------------------------------------------------------------------------------
# Held-out agreement with gold


def heldout_pairs(num_pairs: int, seed: int = 0) -> list[tuple[str, str, str, float]]:
    """(prompt, a, b, gold P(a beats b)) for held-out prompts, corpus responses with distinct gold scores."""
    rng = random.Random(f"pairrm-heldout-{seed}")
    prompts = arena.arena_prompts("heldout")
    out: list[tuple[str, str, str, float]] = []
    while len(out) < num_pairs:
        p = prompts[len(out) % len(prompts)]
        a, b = arena.corpus_response(p.topic, rng), arena.corpus_response(p.topic, rng)
        pref = arena.gold_preference(p.topic, a, b)
        if pref != 0.5:
            out.append((p.prompt, a, b, pref))
    return out


def evaluate_agreement(scorer: prm.PairRM, num_pairs: int = 1000, seed: int = 0) -> dict[str, float]:
    """Agreement of sign(f(x,a,b) - f(x,b,a)) with gold on held-out pairs, with a 95% Wilson interval."""
    pairs = heldout_pairs(num_pairs, seed)
    diff = scorer.compare([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs])
    hits = sum(1 for d, p in zip(diff.tolist(), pairs, strict=True) if (d > 0) == (p[3] == 1.0) and d != 0)
    rate, low, high = wilson_interval(hits, len(pairs))
    return {"agreement": rate, "ci_low": low, "ci_high": high, "num_pairs": float(len(pairs))}


# --------------------------------------------------------------------------------------------------
# The cached arena build


def settings_hash(settings: PairRMBuildSettings) -> str:
    """Short hash of the settings and of the code that builds the model."""
    import hashlib

    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    pairrm_files = sorted(Path(str(prm.__file__)).parent.glob("*.py"))  # every module of the package
    for module_file in (__file__, pairrm_train.__file__, *pairrm_files, arena.__file__):
        h.update(Path(str(module_file)).read_bytes())
    return h.hexdigest()[:12]


def arena_pairrm_dir(seed: int = 0, cache_dir: str | Path | None = None, **overrides: Any) -> Path:
    """Where `build_arena_pairrm` keeps (or will keep) the judge for `seed` and these settings."""
    settings = replace(DEFAULT_SETTINGS, **overrides)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "pairrm" / f"seed{seed}-{settings_hash(settings)}"


def build_arena_pairrm(
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    threads: int = 1,
    **overrides: Any,
) -> Path:
    """The arena PairRM judge for `seed`: built on first use (about 2-3 min on a 2-core CPU), then cached.

    `overrides` replace `PairRMBuildSettings` fields (e.g. `steps=100` for a quick test) and are part of
    the cache key. `threads` is the torch intra-op thread count during the build (restored afterwards;
    not in the key): 1 keeps the build reproducible and avoids thrashing on a busy small machine.
    """
    settings = replace(DEFAULT_SETTINGS, **overrides)
    report = progress or (lambda msg: log.info("%s", msg))
    return build_once(
        arena_pairrm_dir(seed, cache_dir, **overrides), lambda tmp: _build(tmp, seed, settings, report, threads)
    )


def _build(out: Path, seed: int, s: PairRMBuildSettings, progress: Callable[[str], None], threads: int) -> None:
    t0 = time.monotonic()
    rng = random.Random(f"pairrm-arena-{seed}")
    train = arena.arena_prompts("train")
    tok_texts = [p.prompt for p in train] + [arena.corpus_response(p.topic, rng) for p in train for _ in range(4)]
    tok = train_pairrm_tokenizer(tok_texts, s.vocab_size, out)
    examples = arena_pair_examples(tok, train, s.responses_per_prompt, s.label_noise, rng)
    progress(f"pairrm seed {seed}: {len(examples)} noisy pairs (noise {s.label_noise}), vocab {len(tok)}, "
             f"{time.monotonic() - t0:.1f}s; training {s.steps} steps")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = tiny_pairrm(
            tok, seed, hidden_size=s.hidden_size, num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
            intermediate_size=s.intermediate_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            position_buckets=s.position_buckets, initializer_range=s.initializer_range,
        )
        if s.embedding_window > 0:
            vectors = corpus_embeddings(tok, tok_texts, s.hidden_size, s.embedding_window)
            with torch.no_grad():
                known = vectors.abs().sum(dim=1) > 0  # special tokens and markers keep their random rows
                model.pretrained_model.embeddings.word_embeddings.weight[known] = vectors[known]
            progress(f"pairrm seed {seed}: word embeddings from the arena texts' PPMI-SVD "
                     f"({int(known.sum())} tokens), {time.monotonic() - t0:.1f}s")
        train_pairwise(
            model, examples, int(tok.pad_token_id), s.steps, batch_size=s.batch_size,
            learning_rate=s.learning_rate, warmup_steps=s.warmup_steps, min_lr_ratio=s.min_lr_ratio,
            weight_decay=s.weight_decay, max_grad_norm=s.max_grad_norm, seed=seed, progress=progress,
            log_every=s.log_every,
        )
    finally:
        torch.set_num_threads(threads_before)
    model.save_pretrained(out)
    (out / "pairrm_build.json").write_text(
        json.dumps({"seed": seed, "settings": asdict(s), "build_seconds": time.monotonic() - t0}, indent=2)
    )
    progress(f"pairrm seed {seed}: built in {time.monotonic() - t0:.1f}s")


def arena_pairrm_judge(seed: int = 0, max_batch_size: int = 64) -> prm.PairRMJudge:
    """`judge.kind: arena_pairrm`: the full K x K PairRM judge on the arena's tiny ranker (built on first use)."""
    return prm.PairRMJudge(build_arena_pairrm(seed), max_batch_size=max_batch_size, name="arena_pairrm")
