"""The arena's gold rule, win rate, prompt splits and corpus, with hand-worked expected values."""

from __future__ import annotations

import math
import random

import pytest

from sparring.tasks.arena import rules as arena
from sparring.tasks.arena.rules import (
    POLITE_WORDS,
    TEMPLATES,
    TOPICS,
    arena_prompts,
    arena_stats,
    corpus_response,
    gold_preference,
    gold_score,
    gold_terms,
    gold_win_rate,
    topic_of,
    words,
)

# --------------------------------------------------------------------------------------------------
# words / gold_score


def test_words_lowercases_and_splits_on_non_alphanumerics() -> None:
    assert words("Hello, World! it's 42.") == ["hello", "world", "it", "s", "42"]
    assert words("") == []


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # topic +2, 5 words, nothing else
        ("otters live near the sea", 2),
        # case and punctuation do not matter: "Otters!" is the word "otters"
        ("I really love OTTERS! Truly.", 2),
        # topic only as part of another word does not count (word-based, not substring)
        ("the sea otterskin is warm today", 0),
        ("seaotters are not the same word", 0),
        # one polite word +1
        ("glad you asked about otters", 3),
        # two distinct polite words +2
        ("thanks and please see otters here", 4),
        # three distinct polite words: capped at +2
        ("please thanks glad it is fine", 2),
        # all six polite words: still +2
        ("please thanks glad happy kindly welcome otters", 4),
        # the same polite word twice counts once (distinct), and is not adjacent so no repeat penalty
        ("thanks for otters and thanks again", 3),
        # polite words are whole words too: "unhappy", "thank", "welcomed" are not polite words
        ("unhappy thank you welcomed otters", 2),
        # one immediate repeat -1
        ("otters are very very playful", 1),
        # "the the the": two positions equal their predecessor -> -2
        ("i like the the the otters a lot", 0),
        # repeats ignore case and punctuation: "Stop. stop" is a repeat
        ("Stop. stop now please, otters", 2),
        # a repeat that is not adjacent is fine
        ("otters swim and otters dive", 2),
        # 4 words -1 (too short)
        ("otters are very nice", 1),
        # empty -> 0 words -> -1
        ("", -1),
        # "the the the" alone: -2 repeats, -1 length (3 words)
        ("the the the", -3),
    ],
)
def test_gold_score_hand_cases(response: str, expected: int) -> None:
    assert gold_score("otters", response) == expected


def test_gold_length_bounds_are_inclusive_5_and_40() -> None:
    def distinct(n: int) -> str:
        return " ".join(["otters"] + [f"w{i}" for i in range(n - 1)])

    assert gold_score("otters", distinct(4)) == 2 - 1
    assert gold_score("otters", distinct(5)) == 2
    assert gold_score("otters", distinct(40)) == 2
    assert gold_score("otters", distinct(41)) == 2 - 1


def test_gold_terms_split_the_score() -> None:
    g = gold_terms("otters", "Please, please tell me: OTTERS otters!")
    # words: please please tell me otters otters -> topic +2, polite {please} +1, two repeats -2, 6 words
    assert (g.topic, g.polite, g.repeats, g.length, g.num_words) == (2, 1, -2, 0, 6)
    assert g.total == 1 == gold_score("otters", "Please, please tell me: OTTERS otters!")


def test_max_gold_is_four() -> None:
    assert gold_score("otters", "glad to tell you about otters, thanks") == arena.MAX_GOLD == 4


def test_gold_preference_and_ties() -> None:
    good, bad = "glad you asked about otters", "otters otters"
    assert gold_preference("otters", good, bad) == 1.0
    assert gold_preference("otters", bad, good) == 0.0
    assert gold_preference("otters", good, "thanks for asking about otters") == 0.5  # both score 3
    assert gold_preference("otters", good, good) == 0.5


# --------------------------------------------------------------------------------------------------
# gold_win_rate


def test_gold_win_rate_hand_example() -> None:
    """prefs (b vs a) = [1, 0, 0.5, 1] -> mean 0.625.
    deviations .375, -.625, -.125, .375; squares sum .6875; var(ddof=1) = .6875/3 = .2291667
    sd = .4787136; half width = 1.96 * .4787136 / sqrt(4) = .4691393
    interval [0.1558607, 1.0941393] clipped to [0.1558607, 1.0].
    gold b = [1 (4 words), 1 (1 word), 2, 2] -> 1.5; gold a = [0, 3, 2, -1 (1 word)] -> 1.0."""
    t = "otters"
    b = ["otters swim in rivers", "otters", "otters live near the sea", "otters are fine here too"]
    a = ["nothing about the topic here", "glad to see otters here", "otters are in the sea", "no"]
    b_scores = [gold_score(t, x) for x in b]
    a_scores = [gold_score(t, x) for x in a]
    assert b_scores == [1, 1, 2, 2]
    assert a_scores == [0, 3, 2, -1]
    wr = gold_win_rate([t] * 4, b, a)
    assert wr.num_prompts == 4
    assert wr.win_rate == pytest.approx(0.625)
    assert wr.ci_low == pytest.approx(0.625 - 1.96 * math.sqrt(0.6875 / 3) / 2)
    assert wr.ci_low == pytest.approx(0.1558607, abs=1e-6)
    assert wr.ci_high == 1.0
    # the task evaluator reports the same numbers plus both mean gold scores
    from sparring.shared.prompts import PromptItem
    from sparring.tasks.arena.evaluation import GoldEvaluator

    items = [PromptItem(f"p{i}", "Tell me about otters.") for i in range(4)]
    metrics = GoldEvaluator().evaluate(items, b, a)
    assert metrics["win_rate_vs_iter0"] == pytest.approx(0.625) and metrics["win_rate_vs_iter0_ci_low"] == wr.ci_low
    assert metrics["mean_gold"] == pytest.approx(1.5) and metrics["mean_gold_iter0"] == pytest.approx(1.0)


def test_gold_win_rate_all_equal_has_zero_width() -> None:
    wr = gold_win_rate(["otters"] * 3, ["same"] * 3, ["same"] * 3)
    assert (wr.win_rate, wr.ci_low, wr.ci_high) == (0.5, 0.5, 0.5)


def test_gold_win_rate_single_prompt_and_errors() -> None:
    wr = gold_win_rate(["otters"], ["glad to talk about otters"], ["no"])
    assert (wr.win_rate, wr.ci_low, wr.ci_high) == (1.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        gold_win_rate([], [], [])
    with pytest.raises(ValueError):
        gold_win_rate(["otters", "foxes"], ["a"], ["b", "c"])


# --------------------------------------------------------------------------------------------------
# prompts


def test_topics_and_templates() -> None:
    assert len(TOPICS) >= 64 and len(set(TOPICS)) == len(TOPICS)
    assert all(t.isalpha() and t.islower() and words(t) == [t] for t in TOPICS)
    assert not POLITE_WORDS & set(TOPICS)
    assert len(TEMPLATES) >= 8
    for required in ("Tell me about {topic}.", "What do you know about {topic}?", "Describe {topic}."):
        assert required in TEMPLATES
    template_words = {w for t in TEMPLATES for w in words(t.format(topic=""))}
    assert not template_words & (POLITE_WORDS | set(TOPICS))


def test_splits_sizes_disjoint_and_deterministic() -> None:
    train, heldout = arena_prompts("train"), arena_prompts("heldout")
    assert len(train) >= 512 and len(heldout) >= 256
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in heldout}
    assert len({p.prompt_id for p in train + heldout}) == len(train) + len(heldout)
    assert arena_prompts("train") == train and arena_prompts("heldout") == heldout
    p = train[0]
    t = int(p.prompt_id.split("-")[1][1:])
    assert p.prompt_id == f"arena-t{t}-{p.topic}" and p.prompt == TEMPLATES[t].format(topic=p.topic)
    with pytest.raises(ValueError):
        arena_prompts("test")  # type: ignore[arg-type]


def test_topic_of_round_trips_every_prompt() -> None:
    for p in arena_prompts("train") + arena_prompts("heldout"):
        assert topic_of(p.prompt) == p.topic


@pytest.mark.parametrize(
    "prompt",
    [
        "What is the capital of France?",
        "Tell me about dragons.",
        "tell me about otters.",
        "Tell me about otters",
    ],
)
def test_topic_of_rejects_non_arena_prompts(prompt: str) -> None:
    with pytest.raises(ValueError, match="not an arena prompt"):
        topic_of(prompt)


# --------------------------------------------------------------------------------------------------
# corpus and stats


def test_corpus_fixed_text_shares_no_word_with_topics() -> None:
    """A corpus response can only name its own topic: no fixed fragment contains any topic word."""
    fragments = (
        list(arena.CONTENT_SENTENCES) + list(arena.STAND_INS) + list(arena.SHORT_FILLERS)
        + list(arena.POLITE_PHRASES.values())
    )  # fmt: skip
    fixed = {w for f in fragments for w in words(f.replace("{x}", ""))}
    assert not fixed & set(TOPICS)
    non_polite = {w for f in fragments if f not in arena.POLITE_PHRASES.values() for w in words(f)}
    assert not non_polite & POLITE_WORDS
    for word, phrase in arena.POLITE_PHRASES.items():
        assert set(words(phrase)) & POLITE_WORDS == {word}


def test_corpus_has_headroom_on_every_term() -> None:
    rng = random.Random(0)
    topics = [p.topic for p in arena_prompts("train")[:250] for _ in range(8)]
    responses = [corpus_response(t, rng) for t in topics]
    stats = arena_stats(topics, responses)
    for key in ("topic", "polite_any", "polite_full", "no_repeat", "length_ok"):
        assert 0.1 < stats[key] < 0.95, (key, stats)
    assert 1.0 < stats["gold/mean"] < 2.0
    other_topics = set(TOPICS)
    for t, r in zip(topics, responses, strict=True):
        assert not (set(words(r)) & other_topics) - {t}  # never names another topic
    assert corpus_response("otters", random.Random(5)) == corpus_response("otters", random.Random(5))


def test_arena_stats_hand_example() -> None:
    stats = arena_stats(["otters", "otters"], ["glad thanks otters are here", "no no"])
    assert stats == {
        "gold/mean": (4 + (-1 - 1)) / 2,
        "topic": 0.5,
        "polite_any": 0.5,
        "polite_full": 0.5,
        "no_repeat": 0.5,
        "length_ok": 0.5,
        "words/mean": 3.5,
    }
