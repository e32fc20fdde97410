"""Evaluation of every iteration's policy on held-out prompts, for every run (`eval` config section).

After iteration t the controller samples one response per held-out prompt from the new policy (temperature
1, the run's `generation.max_new_tokens`, a seed fixed by prompt and version) and compares it with the
responses of iteration 0 and of the previous iteration on the same prompts:

- `eval/win_rate_vs_iter0`, `eval/win_rate_vs_prev` (+ `_ci_low`, `_ci_high`): the evaluation judge's
  P(current beats other) per prompt, averaged, with the normal 95% interval (`shared/stats.py::win_rate`;
  a judge that returns scores but no matrix gives 1 / 0 / 1/2 on a tie). The judge sees each pair as a
  two-response group (current first) through the judge pool, so an order-sensitive judge is scored in both
  orders and averaged. Absent when the run has no evaluation judge (`RunConfig.eval_judge`).
- `eval/response_length_mean` (tokens, the stop token excluded), `eval/response_length_delta` (against the
  previous iteration), `eval/truncated_fraction` (responses that hit `max_new_tokens`).
- `eval/kl_vs_iter0`: KL(policy || initial policy) estimated on the held-out samples as the mean over
  samples of sum_t [log pi(y_t | ...) - log pi_0(y_t | ...)] in nats per response (the k1 estimator;
  Schulman, "Approximating KL divergence", 2020): log pi from the sampler's raw log-probs, log pi_0 from the
  trainer's initial-policy forward on the same tokens. Unbiased, so a single estimate can be negative.
- `eval/<evaluator>/<metric>`: task evaluators (`eval.evaluators`, `shared/tasks.py::Evaluator`).

`EvalWorker` (workers/actors.py) holds the evaluation judge and the task evaluators; this module holds the
arithmetic, which needs neither Ray nor Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sparring.shared.records import Completion, GenerationGroup, Judgement
from sparring.shared.stats import win_rate

PREFIX = "eval/"


def preference(judgement: Judgement) -> float:
    """P(response 0 beats response 1) of a two-response judgement."""
    if judgement.win_matrix is not None:
        return float(judgement.win_matrix[0][1])
    assert judgement.scores is not None  # a Judgement has scores or a matrix
    a, b = judgement.scores
    return 1.0 if a > b else 0.0 if a < b else 0.5


def pair_groups(
    run_id: str, prompts: Sequence[Any], current: Sequence[Completion], other: Sequence[Completion], version: int
) -> list[GenerationGroup]:
    """One two-response group per held-out prompt: [current response, other policy's response], with the
    prompt's whole conversation when it is multi-turn."""
    groups = []
    for item, a, b in zip(prompts, current, other, strict=True):
        groups.append(
            GenerationGroup(
                run_id=run_id,
                iteration=0,
                policy_version=version,
                prompt_id=f"eval:{item.prompt_id}",
                prompt=item.prompt,
                messages=item.messages,  # the judge sees a multi-turn prompt's whole conversation
                prompt_token_ids=[0],
                completions=[a.model_copy(update={"index": 0}), b.model_copy(update={"index": 1})],
                engine_id="eval",
                seed=0,
                latency_s=0.0,
            )
        )
    return groups


def win_rate_metrics(name: str, preferences: Sequence[float]) -> dict[str, float]:
    """`eval/<name>`, `eval/<name>_ci_low`, `eval/<name>_ci_high` of per-prompt preferences."""
    w = win_rate(preferences)
    return {f"{PREFIX}{name}": w.win_rate, f"{PREFIX}{name}_ci_low": w.ci_low, f"{PREFIX}{name}_ci_high": w.ci_high}


def length_metrics(current: Sequence[Completion], previous: Sequence[Completion] | None) -> dict[str, float]:
    """Mean response length in tokens, its change against `previous`, and the truncated fraction."""
    n = len(current)
    mean = sum(len(c.token_ids) for c in current) / n
    out = {
        f"{PREFIX}response_length_mean": mean,
        f"{PREFIX}truncated_fraction": sum(c.finish_reason == "length" for c in current) / n,
        f"{PREFIX}num_prompts": float(n),
    }
    if previous:
        out[f"{PREFIX}response_length_delta"] = mean - sum(len(c.token_ids) for c in previous) / len(previous)
    return out


def kl_estimate(current: Sequence[Completion], initial_logps: Sequence[float]) -> float:
    """k1 estimate of KL(policy || initial) in nats per response: mean of (sum of sampled log-probs - the
    initial policy's summed log-prob of the same tokens). Raises ValueError if a response lacks log-probs."""
    if len(current) != len(initial_logps):
        raise ValueError(f"{len(current)} responses but {len(initial_logps)} initial log-probs")
    total = 0.0
    for c, lp0 in zip(current, initial_logps, strict=True):
        if c.logprobs is None:
            raise ValueError("a held-out response has no sampled log-probs")
        total += sum(c.logprobs) - lp0
    return total / len(current)
