"""An impossible generation budget is refused at config time, naming both fields (issue 10, item 10)."""

from __future__ import annotations

import pytest

from sparring.shared.config import ConfigError, parse_config

BASE = {"policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}, "prompts": {"source": "arena"}}


@pytest.mark.parametrize("max_new_tokens", [256, 300])
def test_max_new_tokens_at_or_over_the_context_is_refused(max_new_tokens: int) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "generation": {"max_new_tokens": max_new_tokens, "max_model_len": 256}})
    msg = str(e.value)
    assert "generation" in msg and "max_new_tokens" in msg and "max_model_len" in msg
    assert f"({max_new_tokens})" in msg and "(256)" in msg


def test_a_budget_that_leaves_room_for_a_prompt_is_accepted() -> None:
    cfg = parse_config({**BASE, "generation": {"max_new_tokens": 255, "max_model_len": 256}})
    assert cfg.generation.max_new_tokens == 255
