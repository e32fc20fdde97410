"""The arena's dissatisfaction logs for DRIFT: the base policy's own low-gold answers, each with a follow-up
naming what was missing.

Kept out of `arena.py` on purpose: the cached arena policy is keyed by the source of the modules that
build it, and these logs do not change the policy.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from sparring.tasks.arena.rules import (
    MAX_GOLD,
    MIN_WORDS,
    POLITE_CAP,
    ArenaPrompt,
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


LOG_TEMPERATURE = 1.0  # the deployed policy's sampling: plain T=1 sampling, as the arena's evaluation samples
LOG_MAX_NEW_TOKENS = 48  # the arena's answer budget (every arena example's generation.max_new_tokens)
LOG_DRAWS = 4  # answers drawn per log and round; a log with no low-gold finished answer among them draws again


def deployed_failures(
    prompts: list[ArenaPrompt], max_gold: int, seed: int = 0, policy_seed: int = 0
) -> list[str]:
    """One answer of the deployed arena policy per prompt that a user would be dissatisfied with: the first of its
    own T=1 samples (`build_arena_model(policy_seed)`, the transformers engine, 48 new tokens) that finished on
    its end token with gold score <= `max_gold`. Deterministic per (prompts, max_gold, seed, policy_seed) and cached
    beside the model as JSON, so a run's CLI and its controller read the same logs.

    Raises RuntimeError if some prompt has no such answer after 16 rounds (a policy that rarely fails)."""
    from sparring.shared.cache import build_once
    from sparring.tasks.arena.policy import build_arena_model

    model = build_arena_model(policy_seed)
    key = hashlib.sha256(
        json.dumps([[p.prompt_id for p in prompts], max_gold, seed, LOG_TEMPERATURE, LOG_MAX_NEW_TOKENS, LOG_DRAWS]).encode()
        + Path(__file__).read_bytes()
    ).hexdigest()[:12]
    final = model.parent / f"dsat-{model.name}-{key}"

    def build(tmp: Path) -> None:
        (tmp / "answers.json").write_text(json.dumps(_sample_failures(str(model), prompts, max_gold, seed)))

    path = build_once(final, build, complete=lambda d: (d / "answers.json").is_file())
    return list(json.loads((path / "answers.json").read_text()))


def _sample_failures(model: str, prompts: list[ArenaPrompt], max_gold: int, seed: int) -> list[str]:
    import torch

    from sparring.shared.models import prompt_token_ids
    from sparring.workers.controller import derive_seed
    from sparring.workers.generation import SamplingSpec, TransformersEngine

    threads = torch.get_num_threads()
    try:
        engine = TransformersEngine(model, num_threads=1)
        ids = [prompt_token_ids(engine.tokenizer, p.prompt) for p in prompts]
        found: dict[int, str] = {}
        for round_ in range(16):
            todo = [i for i in range(len(prompts)) if i not in found]
            if not todo:
                break
            specs = [
                SamplingSpec(n=LOG_DRAWS, temperature=LOG_TEMPERATURE, top_p=1.0, max_new_tokens=LOG_MAX_NEW_TOKENS,
                             seed=derive_seed("arena-dsat", seed, i, round_))
                for i in todo
            ]  # fmt: skip
            for i, group in zip(todo, engine.generate([ids[i] for i in todo], specs), strict=True):
                for c in group:
                    if c.finish_reason == "stop" and c.text.strip() and gold_score(prompts[i].topic, c.text) <= max_gold:
                        found[i] = c.text
                        break
    finally:
        torch.set_num_threads(threads)
    missing = [prompts[i].prompt_id for i in range(len(prompts)) if i not in found]
    if missing:
        raise RuntimeError(f"the arena policy gave no finished answer with gold <= {max_gold} to {len(missing)} prompt(s) in 16 rounds: {missing[:5]}")
    return [found[i] for i in range(len(prompts))]


def arena_dsat_logs(count: int = 512, seed: int = 0, max_gold: int = 1) -> list[dict[str, object]]:
    """Deterministic DSAT logs on the arena's train prompts, in the JSONL schema of `shared/dsat.py`.

    Each logged response is the deployed base policy's own answer with gold score <= `max_gold`
    (`deployed_failures`: what a real DSAT log holds, the deployed model's answer the user disliked) with a
    follow-up complaint naming what was missing. Every `SEED_EVERY`-th log also carries `satisfied`: a corpus
    response with the full gold score (the answer the user was then happy with), DRIFT's seed pair for the
    warm start.
    """
    prompts = arena_prompts("train")
    sat_rng = random.Random(f"arena-sat-{seed}")
    asked = [prompts[i % len(prompts)] for i in range(count)]
    answers = deployed_failures(asked, max_gold, seed)
    logs: list[dict[str, object]] = []
    for i, (p, response) in enumerate(zip(asked, answers, strict=True)):
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
