"""Chunked LM-head log-probs (workers/logps.py): same values and gradients as unchunked, peak memory bounded
by the chunk at the 131k Tekken vocabulary.

Peak memory is measured with `LiveTensorBytes`, a TorchDispatchMode that sees every tensor an aten op
returns (forward, autograd's backward and checkpoint recomputation alike) and keeps a running total of the
bytes of the storages still alive (a weakref finalizer on each storage subtracts it when freed). It counts
tensor bytes only, exactly and deterministically on CPU; process RSS would mix in the allocator's caching,
the interpreter and whatever the 2-core box is doing, and tracemalloc cannot see torch's allocations.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from sparring.shared.config import TrainerConfig
from sparring.workers.logps import (
    DEFAULT_CHUNK_TOKENS,
    collate_sequences,
    completion_token_logps,
    sequence_logps,
    sequence_logps_full_softmax,
)

TEKKEN_VOCAB = 131_072  # Mistral-Nemo's tekken.json default_vocab_size (tests/families.py)


class LiveTensorBytes(TorchDispatchMode):
    """Running total and peak of the bytes of live tensor storages created while the mode is active (a storage
    is counted when an op first returns a tensor on it: `existing` tensors' storages, e.g. the model's own
    weights that views and detaches return, are never counted; a DTensor is a wrapper, its local tensor is
    what holds memory)."""

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0  # the largest single storage, bytes
        self._seen: set[int] = {t.untyped_storage()._cdata for t in existing}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or isinstance(t, DTensor):  # a DTensor wraps a local tensor, owns nothing
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self._seen:  # a view or an in-place result: already counted
                continue
            self._seen.add(key)
            n = storage.nbytes()
            self.live += n
            self.peak = max(self.peak, self.live)
            self.largest = max(self.largest, n)
            weakref.finalize(storage, self._freed, key, n)
        return out

    def _freed(self, key: int, n: int) -> None:
        self.live -= n
        self._seen.discard(key)


def _llama(vocab: int, tie: bool, seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=128, tie_word_embeddings=tie,
        pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def _tekken_mistral(seed: int = 0) -> MistralForCausalLM:
    """tests/families.py's mistral shape (hidden 64, untied, the 131k Tekken vocabulary), one layer."""
    cfg = MistralConfig(
        vocab_size=TEKKEN_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1,
        num_key_value_heads=1, head_dim=64, max_position_embeddings=1024, sliding_window=None,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return MistralForCausalLM(cfg).eval()


def _batch(vocab: int, rows: int, prompt: int, answer: int, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (prompt + i % 3,), generator=g).tolist() for i in range(rows)]
    answers = [torch.randint(3, vocab, (answer - 2 * (i % 4),), generator=g).tolist() for i in range(rows)]
    return collate_sequences(prompts, answers, pad_token_id=0)


def _values_and_grads(model: torch.nn.Module, batch: Any, chunk: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logps, _ = sequence_logps(model, batch, chunk_tokens=chunk)
    # a loss that weights rows differently, so a row-mixing bug cannot cancel out
    (logps * torch.linspace(0.5, 1.5, logps.numel())).sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_chunked_logps_and_gradients_equal_unchunked(tie: bool) -> None:
    """fp32: the same log-probs and the same gradient of every parameter (LM head, embeddings (tied to the
    head or not), layers) for chunks that split rows unevenly, one token, and one chunk of everything."""
    model = _llama(vocab=500, tie=tie)
    batch = _batch(500, rows=6, prompt=5, answer=11)
    m = int(batch.completion_mask[:, 1:].sum())
    ref_logps, ref_grads = _values_and_grads(model, batch, chunk=None)
    with torch.no_grad():
        slow, _ = sequence_logps_full_softmax(model, batch)
    torch.testing.assert_close(ref_logps, slow, atol=1e-5, rtol=0)
    head_name = "model.embed_tokens.weight" if tie else "lm_head.weight"
    assert head_name in ref_grads and ref_grads[head_name].abs().sum() > 0
    for chunk in (1, 7, m - 1, m):
        logps, grads = _values_and_grads(model, batch, chunk=chunk)
        torch.testing.assert_close(logps, ref_logps, atol=1e-5, rtol=1e-6)
        assert grads.keys() == ref_grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], atol=1e-6, rtol=1e-5, msg=f"{name}, chunk {chunk}")


def test_chunked_gradients_wrt_hidden_states_and_head_with_bias() -> None:
    """`completion_token_logps` on leaf hidden states and a biased head: value, d/dhidden, d/dW, d/db."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=True)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 300, (37,))
    weights = torch.rand(37)

    def run(chunk: int | None) -> tuple[torch.Tensor, ...]:
        hidden.grad = head.weight.grad = head.bias.grad = None
        out = completion_token_logps(hidden, head, targets, chunk)
        (out * weights).sum().backward()
        return out.detach(), hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()

    expected = run(None)
    # the definition: log_softmax of the full logits at the target
    torch.testing.assert_close(
        expected[0], torch.log_softmax(head(hidden).detach(), -1).gather(1, targets[:, None]).squeeze(1)
    )
    for chunk in (1, 5, 36, 64):
        for got, want in zip(run(chunk), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_no_grad_and_inference_mode_take_the_chunked_path_without_checkpointing() -> None:
    model = _llama(vocab=200, tie=False)
    batch = _batch(200, rows=3, prompt=4, answer=9)
    with torch.no_grad():
        ref, _ = sequence_logps(model, batch, chunk_tokens=None)
        got, _ = sequence_logps(model, batch, chunk_tokens=4)
    with torch.inference_mode():
        inf, _ = sequence_logps(model, batch, chunk_tokens=3)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(inf, ref, atol=1e-5, rtol=0)


def test_bad_chunk_is_refused_naming_the_value() -> None:
    model = _llama(vocab=50, tie=False)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1 or None .*got 0"):
        sequence_logps(model, _batch(50, rows=1, prompt=2, answer=3), chunk_tokens=0)
    with pytest.raises(ValueError, match="trainer.logps_chunk_tokens"):
        TrainerConfig.model_validate({"logps_chunk_tokens": 0})
    assert TrainerConfig().logps_chunk_tokens == DEFAULT_CHUNK_TOKENS


def _peak(model: torch.nn.Module, batch: Any, chunk: int | None) -> LiveTensorBytes:
    model.zero_grad(set_to_none=True)
    with LiveTensorBytes() as mem:
        logps, _ = sequence_logps(model, batch, chunk_tokens=chunk)
        logps.sum().backward()
    return mem


def test_peak_memory_at_131k_vocab_grows_with_the_chunk_not_the_batch() -> None:
    """Forward + backward at the Tekken vocabulary: with a chunk of C positions the peak of live tensor bytes
    stays within a few [C, vocab] fp32 copies plus the parameter gradients, and quadrupling the batch moves it
    by less than one [C, vocab] copy; unchunked, the peak holds several [M, vocab] copies."""
    model = _tekken_mistral()
    params = sum(p.numel() * p.element_size() for p in model.parameters())  # gradients: as many bytes
    chunk = 64
    row = chunk * TEKKEN_VOCAB * 4  # one [chunk, vocab] fp32 tensor: 32 MiB
    small = _batch(TEKKEN_VOCAB, rows=2, prompt=8, answer=128, seed=1)  # M ~ 250 completion tokens
    large = _batch(TEKKEN_VOCAB, rows=8, prompt=8, answer=128, seed=2)  # M ~ 1000
    m_large = int(large.completion_mask[:, 1:].sum())

    chunked_small = _peak(model, small, chunk)
    chunked_large = _peak(model, large, chunk)
    assert chunked_large.largest <= row, (chunked_large.largest, row)
    assert chunked_large.peak <= params + 5 * row, (chunked_large.peak, params, row)
    assert abs(chunked_large.peak - chunked_small.peak) < row, (chunked_small.peak, chunked_large.peak)

    unchunked = _peak(model, large, None)
    logits = m_large * TEKKEN_VOCAB * 4  # one [M, vocab] fp32 tensor: ~500 MiB
    assert unchunked.largest >= logits
    assert unchunked.peak >= params + 2 * logits
    assert chunked_large.peak * 4 < unchunked.peak, (chunked_large.peak, unchunked.peak)


def test_fsdp2_ranks_with_chunks_train_like_one_unchunked_rank(tmp_path: Path) -> None:
    """The chunks' checkpoint recomputation runs in the backward, after FSDP2 has resharded the root (tied
    embedding + LM head): 2 gloo ranks with 3-position chunks end 3 optimizer steps with the metrics and
    weights of one unchunked rank (tests/unit/test_sharded_trainer.py's harness and tolerances)."""
    from tests.families import build_family_checkpoint
    from tests.unit import test_sharded_trainer as sharded

    model = build_family_checkpoint("qwen2", tmp_path / "qwen2", seed=0)
    cfg = sharded._cfg(logps_chunk_tokens=3)
    unchunked, (expected,) = sharded._one_rank(model, [sharded._pairs()], sharded._cfg(logps_chunk_tokens=None))
    ranked = sharded._run_ranks(2, {"model": str(model), "cfg": cfg.model_dump_json(), "pairs": [sharded._pairs()],
                                    "out": str(tmp_path / "out.pt")})  # fmt: skip
    (metrics,) = ranked["metrics"]
    assert metrics["train/steps"] == 3
    # a micro-batch is one pair: its completion positions (chosen + rejected) span several chunks of 3
    assert min(len(p.chosen.token_ids) + len(p.rejected.token_ids) for p in sharded._pairs()) > 2 * 3
    sharded._assert_same_metrics(metrics, expected)
    sharded._assert_same_weights(ranked["weights"], unchunked.state_dict_for_sync())
