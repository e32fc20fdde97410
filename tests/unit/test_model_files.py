"""A local model directory is checked for everything loading needs before any worker starts, and the error
names what is missing (issue 10, item 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparring.shared.config import parse_config
from sparring.shared.models import ModelLoadError, check_config_models, check_model_path, missing_model_files


def model_dir(root: Path, *files: str, index: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        (root / name).write_text("{}")
    if index is not None:
        (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return root


def test_a_complete_directory_passes(tmp_path: Path) -> None:
    for tokenizer in ("tokenizer.json", "tokenizer.model", "tekken.json", "spm.model"):
        d = model_dir(tmp_path / tokenizer, "config.json", "model.safetensors", tokenizer)
        assert check_model_path(str(d)) == str(d)
    d = model_dir(tmp_path / "bpe", "config.json", "pytorch_model.bin", "vocab.json", "merges.txt")
    assert missing_model_files(d) == []


def test_missing_tokenizer_files_are_named(tmp_path: Path) -> None:
    """The reported fault: weights and config but no tokenizer used to pass the startup check."""
    d = model_dir(tmp_path / "m", "config.json", "model.safetensors", "tokenizer_config.json")
    with pytest.raises(ModelLoadError) as e:
        check_model_path(str(d))
    assert str(d) in str(e.value) and "tokenizer files" in str(e.value) and "tokenizer.json" in str(e.value)
    assert "weights" not in str(e.value)
    d = model_dir(tmp_path / "v", "config.json", "model.safetensors", "vocab.json")
    assert missing_model_files(d) == ["merges.txt (vocab.json alone is not a BPE tokenizer)"]


def test_missing_weights_and_shards_are_named(tmp_path: Path) -> None:
    d = model_dir(tmp_path / "noweights", "config.json", "tokenizer.json")
    with pytest.raises(ModelLoadError, match=r"missing weights \(\*\.safetensors"):
        check_model_path(str(d))
    shards = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}
    d = model_dir(tmp_path / "sharded", "config.json", "tokenizer.json", "model-00001-of-00002.safetensors",
                  index=shards)  # fmt: skip
    assert missing_model_files(d) == ["model-00002-of-00002.safetensors (named by model.safetensors.index.json)"]


def test_every_local_model_field_of_a_config_is_checked(tmp_path: Path) -> None:
    good = model_dir(tmp_path / "good", "config.json", "model.safetensors", "tokenizer.json")
    bad = model_dir(tmp_path / "bad", "config.json", "model.safetensors")
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "hi"}\n')
    cfg = parse_config(
        {"policy": {"path": str(good)}, "prompts": {"source": "jsonl", "path": str(pool)},
         "judge": {"kind": "density_ratio", "strong_model": str(good), "weak_model": str(bad)}}  # fmt: skip
    )
    with pytest.raises(ModelLoadError) as e:
        check_config_models(cfg)
    assert str(e.value).startswith("judge.weak_model: ") and str(bad) in str(e.value)
    assert "policy.path" not in str(e.value) and "strong_model" not in str(e.value)
    check_config_models(cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"weak_model": str(good)})}))


def test_a_context_longer_than_the_model_is_refused_with_both_numbers(tmp_path: Path) -> None:
    """vLLM would raise at engine start and the generators would be replaced over and over; the controller
    checks generation.max_model_len against the checkpoint's config.json first."""
    from sparring.shared.models import check_context_length

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 256}))
    check_context_length(str(tmp_path), 256)
    with pytest.raises(ModelLoadError, match=r"max_model_len 512 is longer .* max_position_embeddings 256"):
        check_context_length(str(tmp_path), 512)
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 128}}))
    with pytest.raises(ModelLoadError, match="set generation.max_model_len <= 128"):
        check_context_length(str(tmp_path), 256)
    check_context_length("org/some-hub-model", 10**6)  # no local config.json: not checked here


def test_a_head_size_vllm_cpu_does_not_serve_is_refused_before_the_engine(tmp_path: Path) -> None:
    """hidden 64 over 4 heads (head_dim 16): a vLLM-CPU engine would start, then die on its first request with
    an EngineDeadError; the engine builder refuses the checkpoint first, naming the head size."""
    from sparring.workers.vllm_llm import check_cpu_head_size

    base = {"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 100}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(base))
    with pytest.raises(ModelLoadError, match=r"attention head size 16 .* \(32, 64, 80, .*generation.backend: transformers"):
        check_cpu_head_size(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(base | {"hidden_size": 128, "num_attention_heads": 2}))
    check_cpu_head_size(str(tmp_path))  # head_dim 64: served
    (tmp_path / "config.json").write_text(json.dumps(base | {"model_type": "llama", "head_dim": 64}))
    check_cpu_head_size(str(tmp_path))  # an explicit head_dim wins over hidden_size / heads
