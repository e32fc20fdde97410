"""Loading models and tokenizers from Hugging Face ids or local directories, and rendering prompts.

One code path for real and tiny models: a model a task builds is an ordinary checkpoint directory loaded
here like any other. `prompt_token_ids` is the single place where a user message becomes the token ids
every backend (vLLM, transformers, trainer) sees, so the sampler and the trainer can never disagree about
where the prompt ends and the response starts.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparring.shared.config import RunConfig, looks_local

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message names the path and the cause."""


# What loading a local checkpoint needs besides config.json: weights, and the files of some tokenizer
# (`tokenizer.json` of a fast tokenizer, a sentencepiece model, Mistral's tekken.json, BPE / WordPiece vocab
# files, tiktoken ranks).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tekken.json", "spm.model", "sentencepiece.bpe.model",
                   "vocab.json", "vocab.txt")  # fmt: skip
TOKENIZER_PATTERNS = ("*.tiktoken", "*.spm", "spiece.model")


def missing_model_files(directory: Path) -> list[str]:
    """What a local checkpoint directory lacks to be loaded as a model with its tokenizer (empty: nothing).

    Checked: `config.json`; weights (`*.safetensors` / `*.bin` / `*.pt`, and every shard a weights index
    names); tokenizer files (one of `TOKENIZER_FILES`, or a file matching `TOKENIZER_PATTERNS`; `vocab.json`
    needs its `merges.txt`). Only file names are checked, not their contents.
    """
    import json

    missing: list[str] = []
    if not (directory / "config.json").is_file():
        missing.append("config.json")
    indexes = [directory / name for name in WEIGHT_INDEXES if (directory / name).is_file()]
    if indexes:
        for index in indexes:
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                missing.append(f"a readable {index.name} ({type(err).__name__}: {err})")
                continue
            missing += [f"{shard} (named by {index.name})" for shard in shards if not (directory / shard).is_file()]
    elif not any(f.is_file() for pattern in WEIGHT_PATTERNS for f in directory.glob(pattern)):
        missing.append("weights (*.safetensors or pytorch_model*.bin, or a weights index with its shards)")
    has_tokenizer = any((directory / name).is_file() for name in TOKENIZER_FILES) or any(
        f.is_file() for pattern in TOKENIZER_PATTERNS for f in directory.glob(pattern)
    )
    if not has_tokenizer:
        missing.append("tokenizer files (tokenizer.json, tokenizer.model, tekken.json, or vocab.json + merges.txt)")
    elif (
        (directory / "vocab.json").is_file()
        and not (directory / "merges.txt").is_file()
        and not any((directory / name).is_file() for name in TOKENIZER_FILES if name != "vocab.json")
    ):
        missing.append("merges.txt (vocab.json alone is not a BPE tokenizer)")
    return missing


def check_model_path(path: str) -> str:
    """Return `path` unchanged if it is a loadable local dir or plausibly a hub id; raise otherwise.

    A local directory must hold everything loading needs (`missing_model_files`): the error names each
    missing file, before any worker tries to load the model.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        missing = missing_model_files(p)
        if missing:
            raise ModelLoadError(f"model directory {path!r} cannot be loaded: missing {'; '.join(missing)}")
        return str(p)
    if looks_local(path):
        raise ModelLoadError(f"model directory {path!r} does not exist")
    return path  # a Hugging Face id; resolved by transformers (network or local cache)


def local_model_fields(cfg: RunConfig) -> list[tuple[str, str]]:
    """(dotted field, value) of every model a run config names: the policy and each judge's models."""
    fields = [("policy.path", cfg.policy.path)]
    for prefix, judge in (("judge", cfg.judge), ("eval.judge", cfg.eval.judge)):
        if judge is None:
            continue
        for name in ("model", "strong_model", "weak_model"):
            value = getattr(judge, name, None)
            if isinstance(value, str):
                fields.append((f"{prefix}.{name}", value))
        if judge.uncertainty is not None:
            fields.append((f"{prefix}.uncertainty.estimator", judge.uncertainty.estimator))
    return fields


def config_model_problems(cfg: RunConfig) -> list[str]:
    """`field: why` for every local model directory a run config names that cannot be loaded
    (`check_model_path`). Names a task registers are built on first use and hub ids are resolved by
    transformers, so neither is checked here."""
    from sparring.shared import tasks

    problems = []
    for field, path in local_model_fields(cfg):
        if tasks.lookup("models", path) is not None:
            continue
        try:
            check_model_path(path)
        except ModelLoadError as err:
            problems.append(f"{field}: {err}")
    return problems


def check_config_models(cfg: RunConfig) -> None:
    """Check every local model directory a run config names before any worker starts; raises one
    `ModelLoadError` naming each field and what its directory lacks (`config_model_problems`)."""
    problems = config_model_problems(cfg)
    if problems:
        raise ModelLoadError("; ".join(problems))


def check_context_length(model_path: str, max_model_len: int) -> None:
    """Refuse `generation.max_model_len` longer than the checkpoint's context (`max_position_embeddings`, or
    `text_config.max_position_embeddings`, in its config.json) before any engine starts: vLLM raises at engine
    start otherwise and the generators would be replaced over and over. A hub id (no local config.json) or a
    config without the field is not checked. Raises `ModelLoadError` naming both numbers."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return
    data = json.loads(config.read_text())
    context = data.get("max_position_embeddings") or (data.get("text_config") or {}).get("max_position_embeddings")
    if isinstance(context, int) and max_model_len > context:
        raise ModelLoadError(
            f"generation.max_model_len {max_model_len} is longer than the policy's context: max_position_embeddings "
            f"{context} in {config}; set generation.max_model_len <= {context}"
        )


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
    if not getattr(tok, "name_or_path", None):  # MistralCommonBackend (tekken.json) leaves it empty
        try:
            tok.name_or_path = path
        except AttributeError:
            pass
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

    The tokenizer renders: `apply_chat_template(messages, add_generation_prompt=True, tokenize=True)` is
    asked whenever the tokenizer has it, whatever its attributes say (Mistral's `MistralCommonBackend`, which
    transformers loads for a folder with `tekken.json`, renders with mistral_common and has no
    `chat_template` string). A template that refuses system turns (Gemma's raises "System role not
    supported") gets the system text put before the first user message instead, as the density-ratio
    judge's `render_context` does, so a pool line with a system turn is neither fatal nor silently shortened.

    Only a tokenizer that cannot render a chat at all (it cannot render even one user message, e.g. it has
    no template) gets the raw text of the last message (with BOS if the tokenizer adds one), and a WARNING
    is logged once per tokenizer naming its model. An error that this conversation alone causes is raised.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if callable(getattr(tokenizer, "apply_chat_template", None)):
        try:
            ids: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return _input_ids(ids)
        except Exception:  # no template, or jinja2's TemplateError from raise_exception(...) in the template
            if _renders_chat(tokenizer):
                if not any(m.get("role") == "system" for m in messages):
                    raise
                ids = tokenizer.apply_chat_template(
                    _fold_system_turns(messages), add_generation_prompt=True, tokenize=True
                )
                return _input_ids(ids)
    _warn_no_template(tokenizer)
    return [int(i) for i in tokenizer(messages[-1]["content"])["input_ids"]]


# Tokenizers (weakly held) whose missing template was warned about.
_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()


def _input_ids(ids: Any) -> list[int]:
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _renders_chat(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer renders a one-user-message chat at all (asked, not guessed from attributes)."""
    try:
        _input_ids(
            tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
        )
    except Exception as err:  # no template ("chat_template is not set"), or one that renders nothing
        log.debug("the tokenizer of %s renders no chat: %s", _model_name(tokenizer), err)
        return False
    return True


def _model_name(tokenizer: PreTrainedTokenizerBase) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _warn_no_template(tokenizer: PreTrainedTokenizerBase) -> None:
    try:
        if tokenizer in _WARNED:
            return
        _WARNED.add(tokenizer)
    except TypeError:
        pass
    log.warning(
        "the tokenizer of %s renders no chat (no chat template): each prompt is the raw text of its last "
        "message, without the instruction format, system turn or earlier turns; a chat model needs its "
        "template (tokenizer_config.json's chat_template, chat_template.jinja, or Mistral's tekken.json)",
        _model_name(tokenizer),
    )


def _fold_system_turns(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation without system turns, their text joined before the first user message."""
    systems = [m["content"] for m in messages if m.get("role") == "system"]
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    first = next((m for m in rest if m.get("role") == "user"), None)
    if first is None:
        return rest
    first["content"] = "\n\n".join([*systems, first["content"]])
    return rest


def text_token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of raw text, no template and no special tokens (a logged response, a raw transcript)."""
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
