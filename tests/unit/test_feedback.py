"""Feedback items and labels (no Redis, no model): validation of posted items (shared/feedback.py), the
pointwise recipe's thumbs up/down from judge scores, a judged pair split into labels, and posted feedback
turned into pairs for paired objectives (workers/recipes/labels.py)."""

from __future__ import annotations

import pytest

from sparring.shared.feedback import FeedbackError, conversation_id, parse_feedback, parse_feedback_jsonl
from sparring.shared.records import Completion, GenerationGroup, Judgement, LabelledAnswer
from sparring.workers.recipes.labels import feedback_pairs, pair_labels, pointwise_labels
from sparring.workers.recipes.pairs import build_pairs


def sample(index: int, ids: list[int]) -> Completion:
    return Completion(index=index, text=f"a{index}", token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop")


def group() -> GenerationGroup:
    return GenerationGroup(
        run_id="r", iteration=2, policy_version=1, prompt_id="p", prompt="q", prompt_token_ids=[1, 2],
        completions=[sample(0, [5]), sample(1, [6, 7]), sample(2, []), sample(3, [8])], engine_id="e", seed=0,
        latency_s=0.0,
    )  # fmt: skip


def test_items_accept_up_down_and_refuse_everything_else_by_field() -> None:
    items = parse_feedback(
        [(1, {"prompt": "q", "answer": "a", "label": "up"}), (2, {"prompt": "q", "answer": "b", "label": False, "weight": 3})],
        run_id="r",
    )
    assert [(a.label, a.weight, a.policy_version, a.answer.token_ids) for a in items] == [(True, 1.0, None, []), (False, 3.0, None, [])]
    assert items[0].prompt_id == items[1].prompt_id == conversation_id("q", None)
    with pytest.raises(FeedbackError) as err:
        parse_feedback(
            [(1, {"prompt": "q", "answer": "a", "label": 1}), (2, {"prompt": "q", "answer": "a", "label": True, "weight": float("inf")}),
             (3, {"prompt": " ", "answer": "a", "label": True}), (4, {"prompt": "q", "answer": "a", "label": True, "weight": True}),
             (5, [1])],
            run_id="r", unit="item",
        )  # fmt: skip
    assert err.value.problems == [
        "item 1: field 'label' must be true, false, 'up' or 'down', got 1",
        "item 2: field 'weight' must be a number, got inf",
        "item 3: field 'prompt' must be a non-empty string, got ' '",
        "item 4: field 'weight' must be a number, got True",
        "item 5: expected an object, got list",
    ]


def test_a_weight_too_large_for_a_float_is_refused_by_field_not_raised() -> None:
    """JSON integers are unbounded: a 400-digit weight overflowed `math.isfinite` (OverflowError, a 500 from the
    route) instead of being refused as out of range, with the line named and nothing stored."""
    huge = "1" + "0" * 400
    data = b'{"prompt": "q", "answer": "a", "label": true}\n' + (
        '{"prompt": "q", "answer": "a", "label": true, "weight": ' + huge + "}\n"
    ).encode()
    with pytest.raises(FeedbackError) as err:
        parse_feedback_jsonl(data, "r")
    assert err.value.problems == [f"line 2: field 'weight' must be in (0, 1000], got {huge[:80]}"]
    assert parse_feedback([(1, {"prompt": "q", "answer": "a", "label": True, "weight": 1000})], "r")[0].weight == 1000.0


def test_jsonl_reports_json_and_item_problems_in_line_order() -> None:
    data = b'{"prompt": "q", "answer": "a"}\n\n{"prompt": "q", "answer": "a", "label": NaN}\n\xff\n'
    with pytest.raises(FeedbackError, match="not UTF-8"):
        parse_feedback_jsonl(data, "r")
    with pytest.raises(FeedbackError) as err:
        parse_feedback_jsonl(data[:-2], "r")
    assert err.value.problems == [
        "line 1: field 'label': missing (true/'up' = desirable, false/'down' = undesirable)",
        "line 3: not valid JSON (NaN is not JSON)",
    ]
    with pytest.raises(FeedbackError, match="no feedback items"):
        parse_feedback_jsonl(b"\n \n", "r")


def test_pointwise_labels_threshold_the_judges_scores() -> None:
    judgement = Judgement(judge="oracle", scores=[3.0, 1.0, 4.0, 2.0])
    labels = pointwise_labels(group(), judgement, threshold=2.0)
    assert [(a.answer.index, a.label, a.score) for a in labels] == [(0, True, 3.0), (1, False, 1.0), (3, True, 2.0)]  # empty left out
    assert [a.record_id for a in labels] == ["p@v1:0", "p@v1:1", "p@v1:3"] and labels[0].prompt_token_ids == [1, 2]
    matrix_only = Judgement(judge="m", win_matrix=[[0.5, 1, 1, 1], [0, 0.5, 0, 0], [0, 1, 0.5, 1], [0, 1, 0, 0.5]])
    assert [a.label for a in pointwise_labels(group(), matrix_only, threshold=0.5)] == [True, False, False]  # row means
    with pytest.raises(ValueError, match="scored 2 responses, group has 4"):
        pointwise_labels(group(), Judgement(judge="j", scores=[1.0, 2.0]), 0.0)


def test_a_judged_pair_splits_into_best_up_and_worst_down() -> None:
    (pair,) = build_pairs(group(), Judgement(judge="j", scores=[3.0, 1.0, 0.0, 2.0]), "best_vs_worst")
    up, down = pair_labels(pair)
    assert (up.answer.index, up.label, up.score) == (0, True, 3.0) and (down.answer.index, down.label, down.score) == (1, False, 1.0)


def test_posted_feedback_pairs_every_up_with_every_down_of_a_conversation() -> None:
    items = parse_feedback(
        [(1, {"prompt": "q", "answer": "good", "label": True, "weight": 0.5}), (2, {"prompt": "q", "answer": "bad", "label": False}),
         (3, {"prompt": "q", "answer": "worse", "label": False, "weight": 4}), (4, {"prompt": "other", "answer": "x", "label": True})],
        run_id="r",
    )  # fmt: skip
    ids = {"good": [1], "bad": [2], "worse": [3], "x": [4]}
    pairs, unmatched = feedback_pairs(items, lambda a: ([9], ids[a.answer.text]), "r", iteration=3, version=2)
    assert sorted((p.chosen.text, p.rejected.text, p.weight) for p in pairs) == [("good", "bad", 0.5), ("good", "worse", 0.5)]
    assert all(p.policy_version == 2 and p.iteration == 3 and p.judge == "feedback" and p.win_prob == 1.0 for p in pairs)
    assert len({p.record_id for p in pairs}) == 2
    assert [a.answer.text for a in unmatched] == ["x"]
    assert isinstance(unmatched[0], LabelledAnswer)
