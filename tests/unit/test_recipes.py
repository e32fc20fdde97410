
"""Pair construction from judged groups, the oracle judge, and JSONL prompt pools."""

import json

import pytest

from sparring.shared.prompts import PromptPoolError, parse_jsonl_prompts
from sparring.shared.records import Completion, GenerationGroup, Judgement
from sparring.tasks.arena.oracle import ArenaOracleJudge
from sparring.workers.recipes.pairs import build_pairs


def group(texts: list[str], prompt: str = "Tell me about otters.") -> GenerationGroup:
    return GenerationGroup(
        run_id="r",
        iteration=1,
        policy_version=0,
        prompt_id="p1",
        prompt=prompt,
        prompt_token_ids=[1, 2, 3],
        completions=[
            Completion(index=i, text=t, token_ids=[10 + i, 20 + i], logprobs=[-0.5, -0.5]) for i, t in enumerate(texts)
        ],
        engine_id="e",
        seed=0,
        latency_s=0.0,
    )


def test_best_vs_worst_picks_extremes_and_ids_are_deterministic() -> None:
    g = group(["a", "b", "c", "d"])
    j = Judgement(judge="t", scores=[1.0, 3.0, -2.0, 0.0])
    (pair,) = build_pairs(g, j, "best_vs_worst")
    assert (pair.chosen.index, pair.rejected.index) == (1, 2)
    assert pair.record_id == "p1@v0:1>2"
    assert pair.policy_version == 0
    assert 0.99 < pair.win_prob <= 1.0  # sigmoid(5)


def test_all_ties_give_no_pair() -> None:
    assert build_pairs(group(["a", "b", "c"]), Judgement(judge="t", scores=[1.0, 1.0, 1.0]), "best_vs_worst") == []


def test_all_pairs_counts_strict_preferences() -> None:
    pairs = build_pairs(group(["a", "b", "c"]), Judgement(judge="t", scores=[2.0, 1.0, 1.0]), "all_pairs")
    assert sorted((p.chosen.index, p.rejected.index) for p in pairs) == [(0, 1), (0, 2)]


def test_win_matrix_only_ranks_by_row_mean() -> None:
    m = [[0.5, 0.9, 0.8], [0.1, 0.5, 0.4], [0.2, 0.6, 0.5]]
    (pair,) = build_pairs(group(["a", "b", "c"]), Judgement(judge="t", win_matrix=m), "best_vs_worst")
    assert (pair.chosen.index, pair.rejected.index, pair.win_prob) == (0, 1, 0.9)


def test_judge_with_wrong_count_is_refused() -> None:
    with pytest.raises(ValueError, match="scored 2 responses"):
        build_pairs(group(["a", "b", "c"]), Judgement(judge="t", scores=[1.0, 0.0]), "best_vs_worst")


def test_oracle_judge_follows_gold() -> None:
    texts = [
        "otters are glad and happy to swim in rivers all day",  # topic +2, polite +2, len ok -> 4
        "otters otters swim",  # topic +2, repeat -1, short -1 -> 0
        "please tell me more about rivers and lakes today",  # polite +1 -> 1
    ]
    (j,) = ArenaOracleJudge().judge([group(texts)])
    assert j.scores == [4.0, 0.0, 1.0]
    assert j.win_matrix is not None
    assert j.win_matrix[0][1] == 1.0 and j.win_matrix[1][0] == 0.0 and j.win_matrix[2][2] == 0.5


def test_jsonl_pool_names_every_bad_line() -> None:
    lines = ['{"prompt": "ok"}', "not json", '{"prompt": ""}', '{"id": "x", "prompt": "a"}', '{"id": "x", "prompt": "b"}']
    with pytest.raises(PromptPoolError) as e:
        parse_jsonl_prompts(lines, "pool.jsonl")
    msg = str(e.value)
    assert "line 2: not valid JSON" in msg
    assert "line 3: field 'prompt'" in msg
    assert "line 5: duplicate id 'x'" in msg
    assert "line 1:" not in msg and "line 4:" not in msg


def test_jsonl_pool_default_ids() -> None:
    pool = parse_jsonl_prompts(['{"prompt": "a"}', "", '{"prompt": "b"}'])
    assert [(p.prompt_id, p.prompt, p.messages) for p in pool] == [("line-1", "a", None), ("line-3", "b", None)]


def test_prompt_pool_chat_messages() -> None:
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    pool = parse_jsonl_prompts([json.dumps({"id": "c1", "messages": chat}), json.dumps({"messages": chat[1:]})])
    assert (pool[0].prompt_id, pool[0].prompt, pool[0].messages) == ("c1", "hi", chat)
    assert (pool[1].prompt_id, pool[1].prompt, pool[1].messages) == ("line-2", "hi", None)
    bad = [
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
        json.dumps({"messages": [{"role": "robot", "content": "q"}]}),
        json.dumps({"prompt": "p", "messages": chat}),
        json.dumps({"prompt": "p", "text": "x"}),
    ]
    with pytest.raises(PromptPoolError) as info:
        parse_jsonl_prompts(bad, "chat.jsonl")
    msg = str(info.value)
    assert "chat.jsonl: 4 bad line(s)" in msg
    assert "line 1: field 'messages' must end with a user message" in msg
    assert "line 2: messages.0.role" in msg
    assert "line 3: needs exactly one of" in msg
    assert "line 4: unknown field(s) 'text'" in msg


def test_sppo_columns_match_the_reference_vector() -> None:
    """algorithms.md §6: scores [1, .5, 0, -.5, -1] -> P[w][l] = sigmoid(2) = 0.8807970780,
    chosen_probs_win = 0.7103778928, chosen_probs_lose = 0.2896221072 (row means, self term included)."""
    g = group(["a", "b", "c", "d", "e"])
    (pair,) = build_pairs(g, Judgement(judge="t", scores=[1.0, 0.5, 0.0, -0.5, -1.0]), "best_vs_worst")
    assert (pair.chosen.index, pair.rejected.index) == (0, 4)
    assert abs(pair.win_prob - 0.8807970780) < 1e-9
    assert abs(pair.chosen_win_rate - 0.7103778928) < 1e-9
    assert abs(pair.rejected_win_rate - 0.2896221072) < 1e-9


def test_ranked_pairing_goes_outside_in_with_strengths() -> None:
    m = [
        [0.5, 0.2, 0.9, 0.6],
        [0.8, 0.5, 0.95, 0.7],
        [0.1, 0.05, 0.5, 0.3],
        [0.4, 0.3, 0.7, 0.5],
    ]  # row means rank: 1 > 0 > 3 > 2
    pairs = build_pairs(group(["a", "b", "c", "d"]), Judgement(judge="t", win_matrix=m), "ranked")
    assert [(p.chosen.index, p.rejected.index, p.win_prob) for p in pairs] == [(1, 2, 0.95), (0, 3, 0.6)]


def _with_empty(texts: list[str], empty: set[int]) -> GenerationGroup:
    g = group(texts)
    comps = [c.model_copy(update={"text": "", "token_ids": [], "logprobs": []}) if c.index in empty else c
             for c in g.completions]  # fmt: skip
    return g.model_copy(update={"completions": comps})


def test_an_empty_answer_ranked_last_is_skipped_not_the_group() -> None:
    """Empty answers are never a pair's side: best-vs-worst pairs the best with the worst non-empty answer
    (the old code picked the empty one as the worst and dropped the whole group)."""
    g = _with_empty(["a", "b", "c", ""], {3})
    (pair,) = build_pairs(g, Judgement(judge="t", scores=[3.0, 1.0, 2.0, -5.0]), "best_vs_worst")
    assert (pair.chosen.index, pair.rejected.index) == (0, 1)
    # an empty answer ranked first is skipped the same way; ranked and all_pairs never use it either
    g = _with_empty(["", "b", "c", "d"], {0})
    scores = Judgement(judge="t", scores=[9.0, 1.0, 2.0, 0.0])
    (pair,) = build_pairs(g, scores, "best_vs_worst")
    assert (pair.chosen.index, pair.rejected.index) == (2, 3)
    assert [(p.chosen.index, p.rejected.index) for p in build_pairs(g, scores, "ranked")] == [(2, 3)]
    assert all(0 not in (p.chosen.index, p.rejected.index) for p in build_pairs(g, scores, "all_pairs"))


def test_fewer_than_two_distinct_non_empty_answers_is_refused_with_the_reason() -> None:
    from sparring.workers.recipes.pairs import NoDistinctAnswers

    one_left = _with_empty(["a", "", ""], {1, 2})
    with pytest.raises(NoDistinctAnswers, match="1 of 3 answers are non-empty"):
        build_pairs(one_left, Judgement(judge="t", scores=[1.0, 0.0, -1.0]), "best_vs_worst")
    same = group(["a", "a", ""]).model_copy(update={"completions": [
        Completion(index=i, text=t, token_ids=ids, logprobs=[-0.5] * len(ids))
        for i, (t, ids) in enumerate([("a", [5]), ("a", [5]), ("", [])])
    ]})  # fmt: skip
    with pytest.raises(NoDistinctAnswers):
        build_pairs(same, Judgement(judge="t", scores=[1.0, 0.0, -1.0]), "all_pairs")
    assert issubclass(NoDistinctAnswers, ValueError)  # the judge worker dead-letters it (stage "recipe")


def test_pairs_carry_the_conversation() -> None:
    messages = [{"role": "system", "content": "answer in French"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "salut"}, {"role": "user", "content": "Tell me about otters."}]  # fmt: skip
    g = group(["a", "b"]).model_copy(update={"messages": messages})
    (pair,) = build_pairs(g, Judgement(judge="t", scores=[1.0, 0.0]), "best_vs_worst")
    assert pair.messages == messages and pair.prompt == "Tell me about otters."


def test_baseline_pairing_reads_only_the_baseline_column_and_composes_strengths() -> None:
    import math

    from sparring.workers.recipes.winrate import matrix_through_baseline, sigmoid

    # P(y_i beats y_0): s = [1/2 (itself), 0.8, 0.2, 0.6]; the entries off column 0 are garbage on purpose
    m = [
        [0.5, 0.2, 0.8, 0.4],
        [0.8, 0.5, 0.0, 0.0],
        [0.2, 1.0, 0.5, 1.0],
        [0.6, 1.0, 0.0, 0.5],
    ]
    pairs = build_pairs(group(["a", "b", "c", "d"]), Judgement(judge="t", win_matrix=m), "baseline")
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    # ranked by s: 1 (0.8) > 3 (0.6) > 0 (0.5) > 2 (0.2): outside in (1, 2), (3, 0)
    assert [(p.chosen.index, p.rejected.index) for p in pairs] == [(1, 2), (3, 0)]
    assert pairs[0].win_prob == pytest.approx(sigmoid(logit(0.8) - logit(0.2)))  # 0.941
    assert pairs[1].win_prob == pytest.approx(0.6)  # against the baseline itself: its own comparison
    assert pairs[0].chosen_score == 0.8 and pairs[0].rejected_score == 0.2
    composed = matrix_through_baseline([0.5, 0.8, 0.2, 0.6])
    assert all(composed[i][j] + composed[j][i] == pytest.approx(1.0) for i in range(4) for j in range(4))
    assert matrix_through_baseline([0.9, 1.0, 0.0])[1][2] == pytest.approx(1.0, abs=1e-9)  # hard verdicts stay finite
    with pytest.raises(ValueError, match="baseline 3 outside a group of 3"):
        matrix_through_baseline([0.5, 0.5, 0.5], 3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        matrix_through_baseline([0.5, 1.5])
    # a hard-verdict judge: 1 and 2 both beat the baseline, so they tie (2 > 1 in the full matrix is not read)
    hard = [[0.5, 0.0, 0.0, 1.0], [1.0, 0.5, 0.0, 1.0], [1.0, 1.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.5]]
    ranked = build_pairs(group(["a", "b", "c", "d"]), Judgement(judge="t", win_matrix=hard), "baseline")
    # s = [.5, 1, 1, 0]: order 1, 2 (tie, by index), 0, 3 -> (1, 3), (2, 0)
    assert [(p.chosen.index, p.rejected.index) for p in ranked] == [(1, 3), (2, 0)]
    assert build_pairs(group(["a", "b", "c", "d"]), Judgement(judge="t", win_matrix=hard), "ranked")[0].chosen.index == 2
