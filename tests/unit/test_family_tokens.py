"""Model-family faults outside the trainer (tests/families.py builds the checkpoints; no vLLM here):

- the sampler records which of several stop ids it drew, and the density-ratio judge scores THAT token;
- generators build their engine in the policy's configured dtype.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sparring.shared.config import parse_config
from sparring.shared.records import Completion, GenerationGroup
from sparring.workers.generation import FINISH_LENGTH, FINISH_STOP, _strip_eos
from sparring.workers.judges.density_ratio import build_density_ratio_judge
from tests.families import build_family_checkpoint, second_stop_id


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gemma")
    return build_family_checkpoint("gemma", root / "strong", seed=1), build_family_checkpoint("gemma", root / "weak", seed=2)


def test_strip_eos_keeps_the_stop_id_it_cut() -> None:
    eos = {1, 5}
    assert _strip_eos([9, 8, 5, 1], [0.1, 0.2, 0.3, 0.4], eos, stopped=True) == ([9, 8], [0.1, 0.2], FINISH_STOP, 5)
    assert _strip_eos([9, 1], [0.1, 0.2], eos, stopped=True) == ([9], [0.1], FINISH_STOP, 1)
    assert _strip_eos([9, 8], [0.1, 0.2], eos, stopped=False) == ([9, 8], [0.1, 0.2], FINISH_LENGTH, None)
    # a backend that stopped on a stop id it does not return reports it as its stop reason
    assert _strip_eos([9], [0.1], eos, stopped=True, stop_reason=5) == ([9], [0.1], FINISH_STOP, 5)


@pytest.mark.parametrize("response_tokens", ["ids", "text"])
def test_density_ratio_scores_the_stop_token_that_was_sampled(gemma: tuple[Path, Path], response_tokens: Any) -> None:
    """Gemma stops on [<eos>, <end_of_turn>]: a completion that ended on <end_of_turn> is scored ending in it,
    not in tokenizer.eos_token_id (<eos>), a token the policy never sampled."""
    strong, weak = gemma
    judge = build_density_ratio_judge(str(strong), str(weak), response_tokens=response_tokens)
    end_of_turn = second_stop_id("gemma", strong)
    eos = judge.eos_token_id
    assert eos is not None and end_of_turn != eos
    body = judge.tokenizer("the cat runs", add_special_tokens=False)["input_ids"]

    def comp(i: int, stop: int | None, reason: str = "stop") -> Completion:
        return Completion(
            index=i, text="the cat runs", token_ids=body, logprobs=[0.0] * len(body), finish_reason=reason,
            stop_token_id=stop,
        )  # fmt: skip

    group = GenerationGroup(
        run_id="r", iteration=1, policy_version=0, prompt_id="p", prompt="tell me about the cat",
        prompt_token_ids=[1, 2, 3], completions=[comp(0, end_of_turn), comp(1, eos), comp(2, None), comp(3, None, "length")],
        engine_id="e", seed=0, latency_s=0.0,
    )  # fmt: skip
    rows = judge.scored_tokens(group)
    assert [r.response_ids for r in rows] == [body + [end_of_turn], body + [eos], body + [eos], body]
    scores = judge.score_rows(rows)
    assert scores[0] != scores[1]  # the stop token scored is part of the ratio


def test_generator_builds_its_engine_in_the_policy_dtype(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """policy.dtype bfloat16 trains in bf16; the generators must sample from bf16 weights too."""
    from sparring.workers import actors, generation

    model = build_family_checkpoint("qwen2", tmp_path / "qwen2")
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "the cat"}\n')
    cfg = parse_config(
        {
            "name": "dtype",
            "policy": {"path": str(model), "dtype": "bfloat16"},
            "judge": {"kind": "density_ratio", "strong_model": str(model), "weak_model": str(model)},
            "prompts": {"source": "jsonl", "path": str(pool)},
            "storage": {"run_dir": str(tmp_path)},
        }
    )
    built: dict[str, Any] = {}

    def fake_make_engine(*args: Any, **kwargs: Any) -> Any:
        built.update(kwargs)
        return object()

    monkeypatch.setattr(generation, "make_engine", fake_make_engine)
    monkeypatch.setattr(actors, "_queue", lambda *a: SimpleNamespace(client=None))  # no Redis here: the engine's
    monkeypatch.setattr(actors, "Heartbeat", lambda *a: None)  # dtype is the point
    actors.GeneratorWorker("run", "redis://unused", cfg.model_dump_json(), str(model), 0, "gen-0", str(tmp_path))
    assert built["dtype"] == "bfloat16"


def test_a_system_turn_reaches_a_template_that_refuses_system_turns(gemma: tuple[Path, Path]) -> None:
    """Gemma's template raises on a system turn: a pool line with one must still render (the system text
    before the first user message), not kill the generator; templates with a system role keep theirs."""
    from sparring.shared.models import load_tokenizer, prompt_token_ids

    conversation = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "the cat"},
    ]
    tok = load_tokenizer(str(gemma[0]))
    folded = [{"role": "user", "content": "be brief\n\nhello"}, *conversation[2:]]
    assert prompt_token_ids(tok, conversation) == prompt_token_ids(tok, folded)
    with pytest.raises(Exception, match="alternate"):  # other template errors still surface
        prompt_token_ids(tok, [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}])
