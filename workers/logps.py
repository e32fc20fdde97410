"""Per-sequence log-probs of completions under a causal LM: right-padded batches and one forward.

Shared by the trainer (policy and reference log-probs of preference pairs) and the density-ratio judges
(teacher-forced scoring of responses), so both compute exactly the same quantity.

Chosen and rejected rows (or any rows of prompt + completion) go through ONE forward (right padded,
attention mask), and each sequence's log-prob is the SUM of its completion tokens' log-probs in fp32
(prompt and padding masked, as uclaml/SPPO `get_batch_logps(average_log_prob=False)` and TRL's
DPOTrainer). Only completion positions are projected through the LM head, and each target's log-prob is
`logit[target] - logsumexp(logits)` in fp32, so the full [N, T, vocab] log-softmax is never materialised.

Large vocabularies: even the [M, vocab] logits of the M completion tokens are ~2 MB per token at the 131k
Tekken vocabulary in fp32 (8 pairs x 512 answer tokens: 4.3 GB per copy, and autograd keeps several).
The head is therefore applied `chunk_tokens` completion positions at a time, each chunk under
`torch.utils.checkpoint` (non-reentrant): the forward keeps only each chunk's (chunk,) log-probs, and the
backward recomputes one chunk's logits at a time, so the largest live tensor is [chunk, vocab] whatever
the batch (the recompute-in-backward idea of Liger-Kernel's fused linear cross-entropy,
linkedin/Liger-Kernel `src/liger_kernel/ops/fused_linear_cross_entropy.py`, with plain torch ops).
`sequence_logps_full_softmax` is the slow full-softmax version the tests compare against.

Imports torch only (no training, engines, Ray or Redis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Config attributes that change logits after the LM head; a model with any of them set takes the plain
# full-logits path in `sequence_logps` instead of projecting hidden states itself.
_LOGIT_POSTPROCESSING_ATTRS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
)

# Completion positions per LM-head chunk when the caller names none (the judges, evaluation's KL); also
# trainer.logps_chunk_tokens' default. Chosen by `bench/trainer.py --report-memory --memory-chunks 256,512,1024,2048`
# at vocabulary 131,072 (docs/benchmarks.md): every chunk size cost the same CPU time (+8-15% over unchunked,
# the recomputed head matmul) while the iteration's peak grew with the chunk (+671 MiB at 256, +2.2 GiB at
# 1024, +8.1 GiB unchunked); [256, 131072] fp32 is 128 MiB per live copy, and 256 positions still make a large
# matmul on a GPU (Liger-Kernel sizes its chunks near tokens x hidden / vocab: 256 for 8k tokens, H 4096).
DEFAULT_CHUNK_TOKENS = 256


@dataclass(frozen=True)
class SequenceBatch:
    """Right-padded rows for one forward: 2B rows for B pairs, the B chosen rows first.

    `completion_mask[i, t]` is True where token t of row i is a completion token (its log-prob counts).
    """

    input_ids: Tensor  # (N, T) int64
    attention_mask: Tensor  # (N, T) int64, 1 on real tokens
    completion_mask: Tensor  # (N, T) bool

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: str | torch.device) -> SequenceBatch:
        return SequenceBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device)
        )


def collate_sequences(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_token_id: int
) -> SequenceBatch:
    """Rows `prompt + completion`, right padded to the longest row."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
    width = max(lengths)
    n = len(lengths)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    completion_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        row = list(p) + list(c)
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
        completion_mask[i, len(p) : len(row)] = True
    return SequenceBatch(input_ids, attention_mask, completion_mask)


def _needs_full_logits(model: PreTrainedModel) -> bool:
    """True when hidden states cannot simply be projected by the output embedding to get the logits."""
    if model.base_model is model or model.get_output_embeddings() is None:
        return True
    cfg = getattr(model, "config", None)
    return any(getattr(cfg, attr, None) not in (None, 0, 1, 1.0) for attr in _LOGIT_POSTPROCESSING_ATTRS)


def sequence_logps(
    model: PreTrainedModel, batch: SequenceBatch, chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS
) -> tuple[Tensor, Tensor]:
    """Per-row SUM of completion-token log-probs (fp32) and completion lengths, from one forward.

    Token t is predicted by position t-1. Only positions that predict a completion token are projected
    through the LM head, `chunk_tokens` of the M completion positions at a time (`completion_token_logps`);
    each log-prob is `logit[target] - logsumexp(logits)` in fp32. `chunk_tokens=None` projects all M at
    once (the unchunked path; same values and gradients). Models whose logits are post-processed after the
    head (soft-capping, scaling) take the full-logits path, which computes the same quantity unchunked.
    Returns (logps (N,), lengths (N,)), both float32 on the model's device.
    Raises ValueError when chunk_tokens is not None and < 1.
    """
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1 or None (unchunked), got {chunk_tokens}")
    if hasattr(model, "get_base_model"):  # a peft LoRA wrapper: its transformers model holds the adapters
        model = model.get_base_model()
    device = next(model.parameters()).device
    batch = batch.to(device)
    target_mask = batch.completion_mask[:, 1:]  # (N, T-1) position t-1 predicts token t
    targets = batch.input_ids[:, 1:][target_mask]  # (M,)
    rows = target_mask.nonzero(as_tuple=True)[0]  # (M,) row of each target
    if _needs_full_logits(model):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        token_logps = _token_logps(lambda x: x, logits[:, :-1][target_mask], targets)  # (M,)
    else:
        hidden = model.base_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state  # (N, T, H)
        head = model.get_output_embeddings()
        assert head is not None  # guaranteed by _needs_full_logits
        token_logps = completion_token_logps(hidden[:, :-1][target_mask], head, targets, chunk_tokens)  # (M,)
    n = batch.num_rows
    logps = torch.zeros(n, dtype=torch.float32, device=device).index_add(0, rows, token_logps)  # (N,)
    lengths = target_mask.sum(dim=1).to(torch.float32)  # (N,)
    return logps, lengths


def completion_token_logps(
    hidden: Tensor, head: Callable[[Tensor], Tensor], targets: Tensor, chunk_tokens: int | None
) -> Tensor:
    """fp32 log-prob of each target under `head(hidden)`: (M, H) hidden states, (M,) int64 targets -> (M,).

    With `chunk_tokens` set and M larger, the rows go through `head` chunk by chunk; while autograd records,
    each chunk runs under `torch.utils.checkpoint(use_reentrant=False)`, which saves only the chunk's inputs
    and recomputes its [chunk, vocab] logits in the backward. Peak memory is then O(chunk x vocab), not
    O(M x vocab). `head` is the model's output-embedding module (any bias, tied weights or autocast apply
    as in a plain call); `chunk_tokens=None` is one chunk of all M rows, recorded normally.
    Raises ValueError when hidden and targets disagree on M.
    """
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden has {hidden.shape[0]} rows but targets has {targets.shape[0]}")
    m = hidden.shape[0]
    if chunk_tokens is None or m <= chunk_tokens:
        return _token_logps(head, hidden, targets)
    record = torch.is_grad_enabled()
    parts = []
    for start in range(0, m, chunk_tokens):
        h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if record:
            parts.append(checkpoint(_token_logps, head, h, t, use_reentrant=False))
        else:
            parts.append(_token_logps(head, h, t))
    return torch.cat(parts)


def _token_logps(head: Callable[[Tensor], Tensor], hidden: Tensor, targets: Tensor) -> Tensor:
    """(c,) fp32 `logit[target] - logsumexp(logits)` for (c, H) hidden and (c,) targets."""
    logits = head(hidden).float()  # (c, V)
    return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)


def sequence_logps_full_softmax(model: PreTrainedModel, batch: SequenceBatch) -> tuple[Tensor, Tensor]:
    """Slow reference for `sequence_logps`: full fp32 log-softmax over every position (tests only)."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # (N, T-1, V)
    token_logps = logprobs.gather(2, batch.input_ids[:, 1:].unsqueeze(2)).squeeze(2)  # (N, T-1)
    mask = batch.completion_mask[:, 1:].to(torch.float32)
    return (token_logps * mask).sum(dim=1), mask.sum(dim=1)
