"""Tiny random-init checkpoints in the shape of real model families, built locally (no network).

Each builder writes an ordinary `save_pretrained` directory with the family's architecture class, config
quirks (tied embeddings, several stop ids in `generation_config.json`), chat template and special tokens,
on a small byte-level BPE vocabulary trained here (the family's special tokens added). head_dim is 64
(vLLM-CPU's attention needs >= 64). Builds take about a second.

- `qwen2`:  Qwen2ForCausalLM, tied embeddings, ChatML (default system turn), eos `<|im_end|>`;
  generation_config eos [<|im_end|>, <|endoftext|>] (as Qwen2-0.5B-Instruct).
- `llama3`: LlamaForCausalLM, tied embeddings (as Llama-3.2-1B), the Llama-3 header template, eos
  `<|eot_id|>`; generation_config eos [<|end_of_text|>, <|eom_id|>, <|eot_id|>].
- `gemma`:  GemmaForCausalLM, tied embeddings, Gemma's template (raises on a system turn), tokenizer eos
  `<eos>` while turns end with `<end_of_turn>`; generation_config eos [<eos>, <end_of_turn>] (as the
  Gemma-3 instruction models' [1, 106]).
- `mistral`: MistralForCausalLM, untied embeddings (as Mistral-Nemo / Ministral), the real Tekken tokenizer
  that ships inside mistral_common (`data/tekken_240718.json`, Mistral-Nemo-Instruct-2407's, saved as
  `tekken.json`: 131,072 ids, 1,000 of them special) with no tokenizer.json / tokenizer_config.json, so
  transformers loads `MistralCommonBackend` (no `chat_template` string; mistral_common renders Mistral's
  instruction format `<s>[INST]...[/INST]`). Hidden size 64 keeps the 131k-row embedding and lm_head small
  (~67 MB in float32); bos `<s>` = 1, eos `</s>` = 2. Not in `FAMILIES` (no trained BPE, no template string).

`seed` sets the weights only: two seeds of one family share the tokenizer, so they can be a density-ratio
judge's strong and weak models.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparring.shared.tiny import TINY_SHAPE
from tests.helpers import tiny_corpus

QWEN2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """What a builder needs: special tokens (in id order), tokenizer roles, template, stop tokens, config."""

    name: str
    specials: tuple[str, ...]
    tokens: dict[str, str | None]  # bos_token / eos_token / pad_token / unk_token
    template: str
    config_eos: tuple[str, ...]  # config.json eos_token_id (one or several)
    generation_eos: tuple[str, ...]  # generation_config.json eos_token_id
    architecture: str

    @property
    def second_stop(self) -> str:
        """A stop token other than the tokenizer's eos (the one the issue's bug mistrains)."""
        return next(t for t in self.generation_eos if t != self.tokens["eos_token"])


FAMILIES: dict[str, Family] = {
    "qwen2": Family(
        name="qwen2",
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        tokens={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None},
        template=QWEN2_TEMPLATE,
        config_eos=("<|im_end|>",),
        generation_eos=("<|im_end|>", "<|endoftext|>"),
        architecture="qwen2",
    ),
    "llama3": Family(
        name="llama3",
        specials=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|finetune_right_pad_id|>",
        ),
        tokens={
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "pad_token": "<|finetune_right_pad_id|>",
            "unk_token": None,
        },
        template=LLAMA3_TEMPLATE,
        config_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        architecture="llama",
    ),
    "gemma": Family(
        name="gemma",
        specials=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        tokens={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
        template=GEMMA_TEMPLATE,
        config_eos=("<eos>",),
        generation_eos=("<eos>", "<end_of_turn>"),
        architecture="gemma",
    ),
}


def _train_family_tokenizer(family: Family, out_dir: Path, vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(family.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        clean_up_tokenization_spaces=False,
        **{k: v for k, v in family.tokens.items() if v is not None},
    )
    fast.chat_template = family.template
    fast.save_pretrained(out_dir)
    return fast


def _config(family: Family, tok: Any, **overrides: Any) -> Any:
    from transformers import GemmaConfig, LlamaConfig, Qwen2Config

    ids = {t: int(tok.convert_tokens_to_ids(t)) for t in family.specials}
    eos = [ids[t] for t in family.config_eos]
    common: dict[str, Any] = dict(
        vocab_size=len(tok),
        **TINY_SHAPE,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        bos_token_id=tok.bos_token_id,
    )
    if family.architecture == "qwen2":
        common["bos_token_id"] = ids["<|endoftext|>"]
        common["rms_norm_eps"] = 1e-6
        common.update(overrides)
        return Qwen2Config(**common)
    if family.architecture == "llama":
        common["rms_norm_eps"] = 1e-5
        common.update(overrides)
        return LlamaConfig(**common)
    common["hidden_activation"] = "gelu_pytorch_tanh"
    common["rms_norm_eps"] = 1e-6
    common.update(overrides)
    return GemmaConfig(**common)


def build_family_checkpoint(
    family: str, out_dir: str | Path, seed: int = 0, vocab_size: int = 512, **config_overrides: Any
) -> Path:
    """Save a tiny random checkpoint of `family` ('qwen2', 'llama3', 'gemma', 'mistral') to `out_dir`; return it.

    `config_overrides` go to the family's config class (e.g. `attention_dropout=0.1`).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if family == "mistral":
        return build_mistral_checkpoint(out_dir, seed=seed, **config_overrides)
    fam = FAMILIES[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"tok-{family}-") as tok_dir:
        tok = _train_family_tokenizer(fam, Path(tok_dir), vocab_size)
    cfg = _config(fam, tok, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id,
        pad_token_id=tok.pad_token_id,
        eos_token_id=[int(tok.convert_tokens_to_ids(t)) for t in fam.generation_eos],
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


TEKKEN_FILE = "tekken_240718.json"  # Mistral-Nemo-Instruct-2407's tekken.json (v3 instruction format)


def tekken_path() -> Path:
    """The real Tekken tokenizer file installed with mistral_common."""
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / TEKKEN_FILE


def build_mistral_checkpoint(out_dir: str | Path, seed: int = 0, **config_overrides: Any) -> Path:
    """A tiny random MistralForCausalLM with Mistral's real Tekken tokenizer, laid out as Mistral publishes a
    transformers checkpoint: config.json, generation_config.json, model.safetensors, tekken.json."""
    import shutil

    import torch
    from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = json.loads(tekken_path().read_text())["config"]["default_vocab_size"]  # 131072
    cfg = MistralConfig(
        **{
            "vocab_size": vocab,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 1,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1_000_000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            **config_overrides,
        }
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    model.save_pretrained(out, safe_serialization=True)
    shutil.copyfile(tekken_path(), out / "tekken.json")
    return out


def stop_ids(model_dir: str | Path) -> list[int]:
    """generation_config.json's eos ids, in file order."""
    value = json.loads((Path(model_dir) / "generation_config.json").read_text())["eos_token_id"]
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def second_stop_id(family: str, model_dir: str | Path) -> int:
    """The id of a stop token that is not the tokenizer's eos (`<|endoftext|>`, `<|eom_id|>`, `<end_of_turn>`)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return int(tok.convert_tokens_to_ids(FAMILIES[family].second_stop))
