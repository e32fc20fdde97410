"""Issue 10, item 13: a model folder as Mistral publishes it (tekken.json, no tokenizer_config.json) loads as
transformers' `MistralCommonBackend`, which has no `chat_template` string but renders Mistral's instruction
format itself. `prompt_token_ids` asks the tokenizer to render instead of guessing from that attribute, and
warns (once per tokenizer) when a tokenizer really cannot render a chat.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sparring.shared.models import load_tokenizer, prompt_token_ids
from tests.families import build_family_checkpoint

CONVERSATION = [
    {"role": "system", "content": "Answer in French."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Bonjour !"},
    {"role": "user", "content": "What is the capital of Germany?"},
    {"role": "assistant", "content": "Berlin."},
    {"role": "user", "content": "And of Italy?"},
]


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_family_checkpoint("mistral", tmp_path_factory.mktemp("mistral") / "policy", seed=0)


def test_mistral_folder_renders_the_whole_conversation_in_mistral_format(
    mistral: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    tok = load_tokenizer(str(mistral))
    assert not getattr(tok, "chat_template", None)  # the attribute the old code trusted says "no template"
    with caplog.at_level(logging.WARNING, logger="sparring.shared.models"):
        ids = prompt_token_ids(tok, CONVERSATION)
    assert not [r for r in caplog.records if "chat template" in r.getMessage()]

    # exactly what mistral_common itself encodes for this request
    reference = MistralTokenizer.from_file(str(mistral / "tekken.json"))
    assert ids == reference.encode_chat_completion(ChatCompletionRequest(messages=CONVERSATION)).tokens

    text = tok.decode(ids)
    assert text.startswith("<s>[INST]Hi![/INST]Bonjour !</s>[INST]What is the capital of Germany?[/INST]Berlin.</s>")
    assert text.endswith("[INST]Answer in French.\n\nAnd of Italy?[/INST]")  # v3: system before the last turn
    assert text.count("[INST]") == 3 and ids[0] == tok.bos_token_id
    # a plain prompt is one instruction too, not '<s>' + raw text
    assert tok.decode(prompt_token_ids(tok, "hello")) == "<s>[INST]hello[/INST]"


def _untemplated_tokenizer(name: str):  # noqa: ANN202 - a transformers tokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<s>", "</s>", "<unk>", "hello", "hi", "be", "brief", "world"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.name_or_path = name
    return tok


def test_a_tokenizer_without_template_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    tok = _untemplated_tokenizer("/models/base-no-template")
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    with caplog.at_level(logging.WARNING, logger="sparring.shared.models"):
        assert prompt_token_ids(tok, turns) == tok("hello world")["input_ids"]
        assert prompt_token_ids(tok, "hi") == tok("hi")["input_ids"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per tokenizer
    assert "/models/base-no-template" in warnings[0].getMessage()
    assert "no chat template" in warnings[0].getMessage()

    # another tokenizer gets its own warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparring.shared.models"):
        prompt_token_ids(_untemplated_tokenizer("/models/other"), "hi")
    assert ["/models/other" in r.getMessage() for r in caplog.records] == [True]


def test_a_template_error_of_one_conversation_is_raised_not_hidden() -> None:
    """Falling back is for tokenizers that render no chat at all; a template that renders chats but refuses
    this one (Gemma-style alternation check) raises, and a refused system turn is still folded in."""
    tok = _untemplated_tokenizer("/models/strict")
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}{{ m['content'] }} {% endfor %}"
    )
    assert prompt_token_ids(tok, [{"role": "system", "content": "be"}, {"role": "user", "content": "brief"}]) == (
        tok("be\n\nbrief ", add_special_tokens=False)["input_ids"]
    )
    with pytest.raises(Exception, match="roles must alternate"):
        prompt_token_ids(tok, [{"role": "user", "content": "hi"}, {"role": "user", "content": "hello"}])


def test_the_density_ratio_judge_asks_the_mistral_tokenizer_to_render_the_system_turn(tmp_path: Path) -> None:
    """Mistral's tokenizer has no `chat_template` attribute, yet renders system turns: the judge's context
    is the sampler's rendering of the same conversation (system text placed where Mistral puts it)."""
    from sparring.shared.models import load_tokenizer, prompt_token_ids
    from sparring.workers.judges.density_ratio import _template_renders_system, render_context
    from tests.families import build_family_checkpoint

    path = build_family_checkpoint("mistral", tmp_path / "mistral", seed=0)
    tok = load_tokenizer(str(path))
    assert getattr(tok, "chat_template", None) is None and _template_renders_system(tok)
    turns = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Capital of Italy?"}]
    assert render_context(tok, turns) == prompt_token_ids(tok, turns)
