"""Loading models and tokenizers from Hugging Face ids or local directories, and rendering prompts.

One code path for real and tiny models: a model a task builds is an ordinary checkpoint directory loaded
here like any other. `prompt_token_ids` is the single place where a user message becomes the token ids
every backend (vLLM, transformers, trainer) sees, so the sampler and the trainer can never disagree about
where the prompt ends and the response starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparring.shared.config import looks_local

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message names the path and the cause."""


def check_model_path(path: str) -> str:
    """Return `path` unchanged if it is a loadable local dir or plausibly a hub id; raise otherwise."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{path!r} is a directory but has no config.json (not a model checkpoint)")
        return str(p)
    if looks_local(path):
        raise ModelLoadError(f"model directory {path!r} does not exist")
    return path  # a Hugging Face id; resolved by transformers (network or local cache)


def resolve_model_path(path: str, seed: int, progress: Callable[[str], None] | None = None) -> str:
    """The checkpoint directory or hub id a config's model field means.

    A name a task registers as a model (`shared/tasks.py`) is built for `seed` on first use and cached by
    the task; anything else must be a checkpoint directory or a hub id (`check_model_path`). Raises
    `ModelLoadError`.
    """
    from sparring.shared import tasks

    found = tasks.lookup("models", path)
    if found is not None:
        return str(found[1](seed, progress))
    return check_model_path(path)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = check_model_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # transformers raises many types; keep the cause
        raise ModelLoadError(f"cannot load tokenizer from {path!r}: {err}") from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def torch_dtype(name: str, device: str) -> torch.dtype:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_causal_lm(path: str, dtype: str = "auto", device: str = "cpu") -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    path = check_model_path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype, device))
    except Exception as err:
        raise ModelLoadError(f"cannot load causal LM from {path!r}: {err}") from err
    return model.to(device)


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]]) -> list[int]:
    """Token ids of a user message (or a whole conversation ending in a user turn) rendered for
    generation: chat template + generation prompt.

    Tokenizers without a chat template get the raw text of the last message (with BOS if the tokenizer
    adds one).
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        ids: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(messages[-1]["content"])["input_ids"]]


def text_token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of raw text, no template and no special tokens (a logged response, a raw transcript)."""
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
