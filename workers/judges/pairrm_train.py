"""Training a PairRM ranker from scratch: a PairRM-style tokenizer, a tiny DeBERTa-v2 PairRM, PPMI-SVD word
embeddings from a corpus, and the pairwise training loop.

Loss: PairRM's "instructgpt" pairwise loss, -log sigmoid(sign * (left - right)), on comparisons drawn from
all pairs of a prompt's candidates with the left/right order swapped at random (yuchenlin/LLM-Blender
`llm_blender/pair_ranker/ranker.py::CrossCompareReranker.compute_loss` and `.sampling`, mode all_pair).

Tokenizer choice: DeBERTa-v3 uses a SentencePiece model. `train_pairrm_tokenizer` trains a `tokenizers`
BPE model (lower-casing normalizer; Metaspace pre-tokenizer, i.e. SentencePiece's "▁" word boundaries, then
punctuation split; no network, no `sentencepiece` package) with [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, then
[MASK] and the four markers added at the end of the vocabulary (as in PairRM, where they are
128000..128004), and a "[CLS] $A [SEP]" post-processor. It is saved as a `PreTrainedTokenizerFast`
directory that `AutoTokenizer` loads (it is not a `DebertaV2Tokenizer`, which needs an `spm.model`).

A task builds its own ranker with these pieces (the built-in test task's: `tasks/<name>/ranker.py`).
"""

from __future__ import annotations

import logging
import random
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sparring.workers.batching import WarmupSchedule, right_pad
from sparring.workers.judges import pairrm as prm

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")

# --------------------------------------------------------------------------------------------------
# Tokenizer and tiny model


def train_pairrm_tokenizer(texts: list[str], vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerBase:
    """A BPE tokenizer (SentencePiece-style word boundaries) with the PairRM markers; saved to `out_dir`."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    # what the gold rule reads: lower-cased words, punctuation dropped ("otters." -> "otters"), so the same
    # word is one token wherever it stands and a word-sized vocabulary covers a small synthetic task
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[^a-z0-9\s]+"), " "),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation),  # unseen text: no [UNK]
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens({"additional_special_tokens": list(prm.MARKERS)})
    fast.truncation_side = "right"
    fast.save_pretrained(Path(out_dir))
    return fast


def tiny_pairrm(tokenizer: PreTrainedTokenizerBase, seed: int = 0, **overrides: Any) -> prm.DebertaV2PairRM:
    """A randomly initialised small PairRM for `tokenizer` (PairRM-hf flags; `overrides` set config fields)."""
    fields: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=512,
        pad_token_id=int(tokenizer.pad_token_id),
        sep_token_id=int(tokenizer.sep_token_id),
        source_prefix_id=tokenizer.convert_tokens_to_ids(prm.SOURCE_PREFIX),
        cand1_prefix_id=tokenizer.convert_tokens_to_ids(prm.CAND1_PREFIX),
        cand2_prefix_id=tokenizer.convert_tokens_to_ids(prm.CAND2_PREFIX),
        cand_prefix_id=tokenizer.convert_tokens_to_ids(prm.CAND_PREFIX),
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    return prm.DebertaV2PairRM(prm.pairrm_config(**fields))


def corpus_embeddings(tokenizer: PreTrainedTokenizerBase, texts: list[str], dim: int, window: int = 2) -> torch.Tensor:
    """[vocab, dim] word vectors from a corpus of texts: truncated SVD of the positive PMI matrix of token
    co-occurrences within `window` positions (special tokens get zero rows), scaled to unit variance.

    Words used in the same slots get nearly the same vector (every topic follows "about", every polite
    word opens or closes an answer), so the ranker starts out knowing which words are alike and learns a
    rule about one topic word for all of them.
    """
    vocab = len(tokenizer)
    counts = torch.zeros(vocab, vocab, dtype=torch.float64)
    firsts: list[int] = []
    seconds: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        for k in range(1, window + 1):
            firsts += ids[:-k]
            seconds += ids[k:]
    a, b = torch.tensor(firsts, dtype=torch.long), torch.tensor(seconds, dtype=torch.long)
    ones = torch.ones(len(firsts), dtype=torch.float64)
    counts.index_put_((a, b), ones, accumulate=True)
    counts.index_put_((b, a), ones, accumulate=True)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    counts[special, :] = 0.0
    counts[:, special] = 0.0
    total = counts.sum()
    row = counts.sum(dim=1, keepdim=True)
    pmi = torch.log((counts * total).clamp(min=1e-12) / (row * row.T).clamp(min=1e-12))
    ppmi = torch.where(counts > 0, pmi.clamp(min=0.0), torch.zeros_like(pmi))
    u, sv, _ = torch.linalg.svd(ppmi)
    vecs = u[:, :dim] * sv[:dim].sqrt()
    vecs = vecs / vecs[vecs.abs().sum(dim=1) > 0].std().clamp(min=1e-12)
    return vecs.float()


# --------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class PairExample:
    """One labelled comparison: input ids of f(x, a, b) and its sign (+1: a better)."""

    input_ids: list[int]
    label: int


def train_pairwise(
    model: prm.DebertaV2PairRM,
    examples: list[PairExample],
    pad_id: int,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    warmup_steps: int = 50,
    min_lr_ratio: float = 0.05,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    log_every: int = 100,
) -> list[float]:
    """AdamW on the instructgpt pairwise loss with warmup + cosine decay; returns the per-step losses."""
    rng = random.Random(f"pairrm-order-{seed}")
    decay = [p for _, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
    )

    lr_at = WarmupSchedule(
        "cosine", steps, warmup_steps, min_ratio=min_lr_ratio, peak=learning_rate, warmup_offset=1
    )

    model.train()
    order: list[int] = []
    losses: list[float] = []
    window: list[float] = []
    t0 = time.monotonic()
    for step in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        batch = [examples[i] for i in order[:batch_size]]
        del order[:batch_size]
        ids, mask = right_pad([e.input_ids for e in batch], pad_id)
        labels = torch.tensor([e.label for e in batch])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        losses.append(loss.item())
        window.append(losses[-1])
        if progress is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            progress(f"pairrm: step {step + 1}/{steps} loss {sum(window) / len(window):.4f} "
                     f"lr {lr_at(step):.2e} elapsed {time.monotonic() - t0:.1f}s")
            window = []
    model.eval()
    return losses
