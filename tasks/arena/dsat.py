"""The arena's dissatisfaction logs for DRIFT: low-gold responses with a follow-up naming what was missing.

Kept out of `arena.py` on purpose: the cached arena policy is keyed by the source of the modules that
build it, and these logs do not change the policy.
"""

from __future__ import annotations

import random

from sparring.tasks.arena.rules import (
    MAX_GOLD,
    MIN_WORDS,
    POLITE_CAP,
    arena_prompts,
    corpus_response,
    gold_score,
    gold_terms,
)


def dsat_feedback(topic: str, response: str) -> str:
    """The user's dissatisfied follow-up to `response`: it names every gold term the response missed."""
    terms = gold_terms(topic, response)
    complaints = []
    if terms.topic == 0:
        complaints.append(f"You did not even mention {topic}.")
    if terms.polite < POLITE_CAP:
        complaints.append("Could you be a bit more polite?")
    if terms.repeats < 0:
        complaints.append("You keep repeating words.")
    if terms.length < 0:
        complaints.append("That was too short." if terms.num_words < MIN_WORDS else "That was far too long.")
    return " ".join(complaints) or "That was not what I wanted."


def full_gold_response(topic: str, rng: random.Random) -> str:
    """A corpus response to a prompt about `topic` with the full gold score (`MAX_GOLD`): the answer a user is
    satisfied with (DRIFT's seed pairs) and the arena's SFT answer (SPIN's `arena_sft` prompts)."""
    while gold_score(topic, response := corpus_response(topic, rng)) < MAX_GOLD:
        pass
    return response


def arena_sft_answers(seed: int = 0) -> dict[str, str]:
    """One full-gold answer per arena train prompt (prompt id -> answer), deterministic per seed."""
    rng = random.Random(f"arena-sft-{seed}")
    return {p.prompt_id: full_gold_response(p.topic, rng) for p in arena_prompts("train")}


SEED_EVERY = 4  # one log in 4 is a DRIFT seed pair (the paper's seed set is 491 pairs beside ~11k logs)


def arena_dsat_logs(count: int = 512, seed: int = 0, max_gold: int = 1) -> list[dict[str, object]]:
    """Deterministic DSAT logs on the arena's train prompts, in the JSONL schema of `shared/dsat.py`.

    Each has a response drawn from the base policy's corpus distribution with gold score <= `max_gold`
    (what the base policy says when it does badly) and a follow-up complaint naming what was missing. Every
    `SEED_EVERY`-th log also carries `satisfied`: a corpus response with the full gold score (the answer the
    user was then happy with), DRIFT's seed pair for the warm start (drawn from a separate stream, so the
    logs themselves are the same with or without it).
    """
    rng = random.Random(f"arena-dsat-{seed}")
    sat_rng = random.Random(f"arena-sat-{seed}")
    prompts = arena_prompts("train")
    logs: list[dict[str, object]] = []
    for i in range(count):
        p = prompts[i % len(prompts)]
        while True:
            response = corpus_response(p.topic, rng)
            if gold_score(p.topic, response) <= max_gold:
                break
        log: dict[str, object] = {
            "id": f"dsat-{i}-{p.prompt_id}",
            "messages": [{"role": "user", "content": p.prompt}],
            "response": response,
            "feedback": dsat_feedback(p.topic, response),
        }
        if i % SEED_EVERY == 0:
            log["satisfied"] = full_gold_response(p.topic, sat_rng)
        logs.append(log)
    return logs
