"""Judge registry: `judge.kind` -> judge. The only place a judge is chosen by name.

The core kinds are built here; any other kind is a judge a task registers (`shared/tasks.py`), built by
the task's builder with the judge config and the run config.
"""

from __future__ import annotations

from sparring.shared import tasks
from sparring.shared.config import JudgeConfig, RunConfig
from sparring.workers.judges.base import Judge


def build_judge(cfg: JudgeConfig, run: RunConfig | None = None) -> Judge | None:
    """The configured judge; None for `kind: none` (recipes that pair without judging, e.g. DRIFT).

    `run` is the whole run config: `self_preference` judges with the run's policy (`policy.path`, resolved
    for `seed` when a task builds it) and needs it; task judges receive it (or None). Model names a task
    registers resolve for `run.seed` (0 without a run). Raises `KeyError` for a kind no installed task
    registers (config validation names them first), ValueError for self_preference without `run`.
    """
    seed = 0 if run is None else run.seed
    if cfg.kind == "none":
        return None
    if cfg.uncertainty is not None:  # composition: primary judge -> MC-dropout uncertainty
        from sparring.workers.judges.uncertainty import wrap_with_uncertainty

        primary = build_judge(cfg.model_copy(update={"uncertainty": None}), run)
        assert primary is not None
        return wrap_with_uncertainty(primary, cfg.uncertainty)
    if cfg.kind == "pairrm":
        from sparring.workers.judges.pairrm import build_pairrm_judge

        return build_pairrm_judge(cfg.model)
    if cfg.kind == "density_ratio":
        from sparring.shared.models import resolve_model_path
        from sparring.workers.judges.density_ratio import build_density_ratio_judge

        return build_density_ratio_judge(
            resolve_model_path(cfg.strong_model, seed),
            resolve_model_path(cfg.weak_model, seed),
            reduction=cfg.reduction,
            criteria=cfg.criteria,
        )
    if cfg.kind == "self_preference":
        if run is None:
            raise ValueError("judge.kind=self_preference judges with the policy: build_judge needs the run config")
        import torch

        from sparring.shared.models import resolve_model_path
        from sparring.workers.judges.self_preference import SelfPreferenceJudge

        device = "cuda" if torch.cuda.is_available() else "cpu"
        from sparring.workers.recipes.winrate import BASELINE

        baseline = BASELINE if run.algorithm.pairs == "baseline" else None  # OSP's O(K) comparisons
        return SelfPreferenceJudge.from_pretrained(
            resolve_model_path(run.policy.path, run.seed), dtype=run.policy.dtype, device=device, baseline=baseline
        )
    return tasks.require("judges", cfg.kind)(cfg, run)
