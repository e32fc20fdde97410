"""DRIFT inputs: dissatisfaction logs (parsing, errors by line), the guided transcript, arena DSAT logs,
and the fresh-sample-vs-logged-response pairs."""

import json

import pytest

from sparring.shared.dsat import DSATError, DSATLog, drift_generation_prompt, parse_dsat_jsonl
from sparring.shared.prompts import dsat_item
from sparring.shared.records import Completion, GenerationGroup
from sparring.tasks.arena.dsat import arena_dsat_logs
from sparring.tasks.arena.rules import gold_score, topic_of
from sparring.workers.recipes.pairs import build_anchor_pairs

GOOD = {
    "id": "c1",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about otters."}],
    "response": "they are animals",
    "feedback": "You did not even mention otters.",
}


def test_parse_reports_every_bad_line_with_field() -> None:
    lines = [
        json.dumps(GOOD),
        json.dumps({k: v for k, v in GOOD.items() if k != "feedback"} | {"id": "c2"}),
        "{not json",
        json.dumps(GOOD | {"id": "c4", "messages": [{"role": "assistant", "content": "hi"}]}),
        json.dumps(GOOD),
    ]
    with pytest.raises(DSATError) as e:
        parse_dsat_jsonl(lines, "logs.jsonl")
    msg = str(e.value)
    assert "line 2: feedback: missing field" in msg
    assert "line 3: not valid JSON" in msg
    assert "line 4: messages: Value error, must end with a user message" in msg
    assert "line 5: duplicate id 'c1' (first on line 1)" in msg
    assert "line 1:" not in msg


def test_guided_transcript_matches_drift_format() -> None:
    log = DSATLog.model_validate(GOOD)
    assert drift_generation_prompt(log) == (
        "Be brief.\n\nUser: Tell me about otters.\nAssistant: they are animals\n"
        "User: You did not even mention otters.\n"
        "System: Based on the user's latest feedback, please provide an improved response that addresses "
        "their concerns.\nAssistant:"
    )
    item = dsat_item(log)
    assert item.prompt == "Tell me about otters." and item.anchor_text == "they are animals"
    assert item.messages is not None and item.messages[0]["role"] == "system"


def test_arena_dsat_logs_are_low_gold_and_feedback_names_what_is_missing() -> None:
    logs = arena_dsat_logs(64, seed=0)
    assert logs == arena_dsat_logs(64, seed=0)  # deterministic
    parsed = parse_dsat_jsonl([json.dumps(d) for d in logs])
    for log in parsed:
        topic = topic_of(log.prompt)
        assert gold_score(topic, log.response) <= 1
        assert log.feedback
    assert any(topic_of(p.prompt) in p.feedback for p in parsed)  # "You did not even mention {topic}."


def test_anchor_pairs_prefer_each_fresh_sample_over_the_logged_response() -> None:
    anchor = Completion(index=2, text="bad", token_ids=[7, 8], logprobs=None, finish_reason="stop")
    group = GenerationGroup(
        run_id="r", iteration=1, policy_version=0, prompt_id="c1", prompt="Tell me about otters.",
        prompt_token_ids=[1, 2], engine_id="e", seed=0, latency_s=0.0, anchor=anchor,
        completions=[
            Completion(index=0, text="good", token_ids=[5, 6], logprobs=[-1.0, -1.0], finish_reason="stop"),
            Completion(index=1, text="bad", token_ids=[7, 8], logprobs=[-1.0, -1.0], finish_reason="stop"),
        ],
    )  # fmt: skip
    pairs = build_anchor_pairs(group)
    assert [(p.chosen.index, p.rejected.index, p.win_prob) for p in pairs] == [(0, 2, 1.0)]  # identical one dropped
    with pytest.raises(ValueError, match="no logged response"):
        build_anchor_pairs(group.model_copy(update={"anchor": None}))
