"""Tiny local models and tokenizers, saved as ordinary checkpoint directories.

Tests and tasks build their tiny models here and load them back through `sparring.shared.models`, the same
code path a real Hugging Face checkpoint takes. Nothing here touches the network.
vLLM's CPU attention needs head_dim >= 64, hence hidden 128 with 2 heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# A chat template in the tokenizer itself, so prompts render through `apply_chat_template` exactly as
# they would for a real chat model.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|> {{ m['content'] }}\n{% endif %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a byte-level BPE tokenizer on `texts`; save it with the chat template as a HF tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        bos_token=None,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


# The tiny decoder shape every test checkpoint uses (head_dim 64: vLLM's CPU attention refuses smaller heads).
TINY_SHAPE: dict[str, int] = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64
)


def tiny_llama_config(vocab_size: int, pad_token_id: int, eos_token_id: int, **overrides: object):  # -> LlamaConfig
    from transformers import LlamaConfig

    kwargs: dict[str, object] = dict(
        vocab_size=vocab_size,
        **TINY_SHAPE,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def save_tiny_llama(
    out_dir: str | Path, tokenizer_dir: str | Path, seed: int = 0, **config_overrides: object
) -> Path:
    """Randomly initialise a tiny Llama for the tokenizer in `tokenizer_dir`; save model + tokenizer to `out_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = tiny_llama_config(len(tok), tok.pad_token_id, tok.eos_token_id, **config_overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
