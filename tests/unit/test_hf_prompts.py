"""Prompt pools from Hugging Face datasets (`prompts: {source: hf, ...}`): a parquet file, an arrow file, a
`save_to_disk` directory (a DatasetDict and its split), the common column layouts (a `prompt` string, a
`messages` conversation, UltraFeedback's `prompt` + `chosen`), and bad rows refused with row and column named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sparring.shared.config import ConfigError, parse_config
from sparring.shared.prompts import PromptPoolError, load_prompt_pool, run_prompts

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Tell me about otters."},
]


def chats(n: int) -> list[dict[str, Any]]:
    return [{"id": f"c{i}", "messages": CHAT[:3] + [{"role": "user", "content": f"Tell me about topic {i}."}]} for i in range(n)]


def prompts_config(path: Path | str, **fields: Any) -> Any:
    return parse_config(
        {
            "policy": {"path": "some/model"},
            "judge": {"kind": "pairrm", "model": "some/pairrm"},
            "prompts": {"source": "hf", "path": str(path), **fields},
            "eval": {"num_prompts": 2},
        }
    )


def test_parquet_file_with_a_messages_column(tmp_path: Path) -> None:
    path = tmp_path / "chats.parquet"
    datasets.Dataset.from_list(chats(6)).to_parquet(str(path))
    cfg = prompts_config(path)
    pool = load_prompt_pool(cfg.prompts)
    assert [p.prompt_id for p in pool] == [f"c{i}" for i in range(6)]
    assert pool[0].prompt == "Tell me about topic 0." and pool[0].messages is not None and len(pool[0].messages) == 4
    split = run_prompts(cfg)  # what the controller calls: 2 held out, never trained on
    assert len(split.train) == 4 and len(split.heldout) == 2


def test_dataset_directory_with_splits_and_an_arrow_file(tmp_path: Path) -> None:
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(chats(4)), "test": datasets.Dataset.from_list(chats(2))}
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    assert len(load_prompt_pool(prompts_config(tmp_path / "ds").prompts)) == 4
    assert len(load_prompt_pool(prompts_config(tmp_path / "ds", split="test").prompts)) == 2
    with pytest.raises(PromptPoolError, match=r"no split 'dev' \(splits: train, test\)"):
        load_prompt_pool(prompts_config(tmp_path / "ds", split="dev").prompts)
    datasets.Dataset.from_list(chats(3)).save_to_disk(str(tmp_path / "one"))
    assert len(load_prompt_pool(prompts_config(tmp_path / "one").prompts)) == 3
    (arrow,) = (tmp_path / "one").glob("*.arrow")
    assert [p.prompt_id for p in load_prompt_pool(prompts_config(arrow).prompts)] == ["c0", "c1", "c2"]


def test_ultrafeedback_layout_and_column_mapping(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": f"Question {i}?",
            "prompt_id": f"h{i}",
            "chosen": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Good."}],
            "rejected": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Bad."}],
            "score_chosen": 8.0,
        }
        for i in range(3)
    ]
    path = tmp_path / "uf.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    pool = load_prompt_pool(prompts_config(path).prompts)  # `prompt` string, ids from `prompt_id`
    assert [(p.prompt_id, p.prompt, p.messages) for p in pool][0] == ("h0", "Question 0?", None)
    pool = load_prompt_pool(prompts_config(path, messages_column="chosen").prompts)  # the assistant turn dropped
    assert pool[1].prompt == "Question 1?" and pool[1].messages is None
    # TRL's conversational format: `prompt` is itself a conversation; integer ids become strings
    trl = [{"prompt": CHAT, "chosen": [{"role": "assistant", "content": "x"}], "n": i} for i in range(2)]
    datasets.Dataset.from_list(trl).to_parquet(str(tmp_path / "trl.parquet"))
    pool = load_prompt_pool(prompts_config(tmp_path / "trl.parquet", id_column="n").prompts)
    assert [p.prompt_id for p in pool] == ["0", "1"] and pool[0].messages == CHAT


def test_bad_rows_are_refused_with_row_and_column_named(tmp_path: Path) -> None:
    rows = chats(5)
    rows[1]["messages"] = [{"role": "user"}]  # no content
    rows[2]["messages"] = [{"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}]
    rows[3]["messages"] = [{"role": "assistant", "content": "only me"}]
    rows[4]["id"] = "c0"
    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(PromptPoolError) as err:
        load_prompt_pool(prompts_config(path).prompts)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 4 bad row(s) (rows numbered from 0)"
    assert lines[1].strip() == "row 1: messages.0.content: missing field"
    assert lines[2].strip().startswith("row 2: messages.1.role: Input should be 'system', 'user' or 'assistant'")
    assert lines[3].strip() == "row 3: column 'messages' must hold a conversation ending with a user message (trailing assistant turns are dropped)"
    assert lines[4].strip() == "row 4: duplicate id 'c0' (first on row 0)"

    datasets.Dataset.from_list([{"prompt": "ok"}, {"prompt": None}, {"prompt": "  "}]).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(PromptPoolError) as err:
        load_prompt_pool(prompts_config(tmp_path / "p.parquet").prompts)
    assert "row 1: column 'prompt' is empty (null)" in str(err.value)
    assert "row 2: column 'prompt' must be a non-empty string" in str(err.value)


def test_missing_columns_and_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    datasets.Dataset.from_list([{"text": "a", "label": 1}]).to_parquet(str(path))
    with pytest.raises(PromptPoolError, match=r"no prompt column \(looked for prompt, messages, chosen; columns: text, label\)"):
        load_prompt_pool(prompts_config(path).prompts)
    with pytest.raises(PromptPoolError, match=r"prompts.prompt_column: no column 'question' \(columns: text, label\)"):
        load_prompt_pool(prompts_config(path, prompt_column="question").prompts)
    assert load_prompt_pool(prompts_config(path, prompt_column="text").prompts)[0].prompt_id == "row-0"
    with pytest.raises(ConfigError, match="dataset .*missing.parquet' does not exist"):
        prompts_config(tmp_path / "missing.parquet")
    with pytest.raises(ConfigError, match="prompt_column or messages_column, not both"):
        prompts_config(path, prompt_column="a", messages_column="b")
    with pytest.raises(ConfigError, match="prompts.prompt_column applies to source=hf only"):
        parse_config({"policy": {"path": "m/m"}, "judge": {"kind": "pairrm", "model": "p/p"},
                      "prompts": {"source": "jsonl", "path": str(path), "prompt_column": "text"}})  # fmt: skip
