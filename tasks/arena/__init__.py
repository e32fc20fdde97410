"""The arena: a deterministic synthetic task with a verifiable preference (docs/arena.md).

Prompts "Tell me about {topic}."-style; the gold score rewards naming the topic and polite words and
penalises stutters and odd lengths (`rules.py`). The task registers, by the names a run config uses:

- prompt sources `arena` (the 640 train prompts), `arena_heldout` (the 320 held-out prompts),
  `arena_dsat` (`prompts.count` generated dissatisfaction logs for DRIFT, `dsat.py`) and `arena_sft` (the
  train prompts with a full-gold reference answer each, SPIN's chosen side);
- models `arena` (the tiny pretrained policy, `policy.py`), `arena_strong` (its fine-tune on good answers,
  the strong side of CDR, `strong.py`) and `arena_pairrm` (a tiny PairRM ranker, `ranker.py`), each built
  once per seed and cached;
- judges `arena_oracle` (the gold rule), `arena_cdr` (CDR strong over base) and `arena_pairrm`;
- the evaluator `arena_gold` (gold win rate against iteration 0 and mean gold score, `evaluation.py`);
- a prompt check: the arena's judges score arena prompts only;
- labelled pairs for `sparring eval-judges`: one pair of corpus responses with distinct gold scores per
  held-out prompt (at most 320), the pairs docs/judges.md measures every judge on;
- the demo: `demo.yaml` beside this module (package data), the config `sparring demo` runs.

Nothing here is imported at registry time beyond this module: every builder imports its module lazily.
"""

from __future__ import annotations

import importlib.resources
from typing import TYPE_CHECKING, Any

from sparring.shared.tasks import Progress, Task

if TYPE_CHECKING:
    from sparring.shared.config import JudgeConfig, PromptsConfig, RunConfig
    from sparring.shared.prompts import PromptItem


def _prompts(split: str) -> Any:
    def load(cfg: PromptsConfig) -> list[PromptItem]:
        from sparring.shared.prompts import PromptItem
        from sparring.tasks.arena.rules import arena_prompts

        return [PromptItem(p.prompt_id, p.prompt) for p in arena_prompts(split)]  # type: ignore[arg-type]

    return load


def _sft(cfg: PromptsConfig) -> list[PromptItem]:
    from sparring.shared.prompts import PromptItem
    from sparring.tasks.arena.dsat import arena_sft_answers
    from sparring.tasks.arena.rules import arena_prompts

    answers = arena_sft_answers()
    return [PromptItem(p.prompt_id, p.prompt, reference_answer=answers[p.prompt_id]) for p in arena_prompts("train")]


def _dsat(cfg: PromptsConfig) -> list[PromptItem]:
    from sparring.shared.dsat import DSATLog
    from sparring.shared.prompts import dsat_item
    from sparring.tasks.arena.dsat import arena_dsat_logs

    return [dsat_item(DSATLog.model_validate(d)) for d in arena_dsat_logs(cfg.count)]


def _policy(seed: int, progress: Progress | None) -> str:
    from sparring.tasks.arena.policy import build_arena_model

    return str(build_arena_model(seed, progress=progress))


def _strong(seed: int, progress: Progress | None) -> str:
    from sparring.tasks.arena.strong import build_arena_strong

    return str(build_arena_strong(seed, progress=progress))


def _ranker(seed: int, progress: Progress | None) -> str:
    from sparring.tasks.arena.ranker import build_arena_pairrm

    return str(build_arena_pairrm(seed, progress=progress))


def _oracle(cfg: JudgeConfig, run: RunConfig | None) -> Any:
    from sparring.tasks.arena.oracle import ArenaOracleJudge

    return ArenaOracleJudge()


def _cdr(cfg: JudgeConfig, run: RunConfig | None) -> Any:
    from sparring.tasks.arena.strong import arena_cdr_judge

    return arena_cdr_judge()


def _pairrm(cfg: JudgeConfig, run: RunConfig | None) -> Any:
    from sparring.tasks.arena.ranker import arena_pairrm_judge

    return arena_pairrm_judge()


def _gold(run: RunConfig) -> Any:
    from sparring.tasks.arena.evaluation import GoldEvaluator

    return GoldEvaluator()


def _check_prompt(prompt: str) -> str | None:
    from sparring.tasks.arena.rules import topic_of

    try:
        topic_of(prompt)
    except ValueError:
        return "not an arena prompt (the arena's judges and evaluator score arena prompts only)"
    return None


def _labelled_pairs(num_pairs: int, seed: int) -> list[tuple[str, str, str, float]]:
    from sparring.tasks.arena.strong import heldout_pairs, labelled_pairs

    return labelled_pairs(heldout_pairs(num_prompts=num_pairs, seed=seed))


def task() -> Task:
    """The arena task (entry point `sparring.tasks: arena`)."""
    return Task(
        name="arena",
        description="deterministic synthetic task with a verifiable gold preference (tests, demo)",
        prompt_sources={"arena": _prompts("train"), "arena_heldout": _prompts("heldout"), "arena_dsat": _dsat, "arena_sft": _sft},
        models={"arena": _policy, "arena_strong": _strong, "arena_pairrm": _ranker},
        judges={"arena_oracle": _oracle, "arena_cdr": _cdr, "arena_pairrm": _pairrm},
        evaluators={"arena_gold": _gold},
        prompt_check=_check_prompt,
        labelled_pairs=_labelled_pairs,
        policy="arena",
        demo=str(importlib.resources.files(__name__) / "demo.yaml"),
    )
