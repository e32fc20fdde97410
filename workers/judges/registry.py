"""Judge registry: config name -> judge. The only place a judge is chosen by name."""

from __future__ import annotations

from collections.abc import Callable

from sparring.shared.config import ARENA_MODEL, JudgeConfig, RunConfig
from sparring.workers.judges.base import Judge
from sparring.workers.judges.oracle import ArenaOracleJudge


def _arena_cdr() -> Judge:
    from sparring.workers.judges.density_ratio import ArenaDensityRatioJudge

    return ArenaDensityRatioJudge()


def _arena_pairrm() -> Judge:
    from sparring.workers.judges.pairrm_train import arena_pairrm_judge

    return arena_pairrm_judge()


JUDGES: dict[str, Callable[[], Judge]] = {
    "arena_oracle": ArenaOracleJudge, "arena_cdr": _arena_cdr, "arena_pairrm": _arena_pairrm,
}


def build_judge(cfg: JudgeConfig, run: RunConfig | None = None) -> Judge | None:
    """The configured judge; None for `kind: none` (recipes that pair without judging, e.g. DRIFT).

    `run` is the whole run config: `self_preference` judges with the run's policy (`policy.path`, built for
    `seed` when it is the arena policy), so it needs it.
    """
    if cfg.kind == "none":
        return None
    if cfg.uncertainty is not None:  # composition: primary judge -> MC-dropout uncertainty
        from sparring.workers.judges.uncertainty import wrap_with_uncertainty

        primary = build_judge(cfg.model_copy(update={"uncertainty": None}), run)
        assert primary is not None
        return wrap_with_uncertainty(primary, cfg.uncertainty)
    if cfg.kind == "pairrm":
        from sparring.workers.judges.pairrm import build_pairrm_judge

        assert cfg.model  # config validation
        return build_pairrm_judge(cfg.model)
    if cfg.kind == "density_ratio":
        from sparring.workers.judges.density_ratio import build_density_ratio_judge

        assert cfg.strong_model and cfg.weak_model  # config validation
        return build_density_ratio_judge(
            cfg.strong_model, cfg.weak_model, reduction=cfg.reduction, criteria=cfg.criteria
        )
    if cfg.kind == "self_preference":
        from sparring.workers.judges.self_preference import SelfPreferenceJudge

        if run is None:
            raise ValueError("judge.kind=self_preference judges with the policy: build_judge needs the run config")
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return SelfPreferenceJudge.from_pretrained(policy_checkpoint(run), dtype=run.policy.dtype, device=device)
    return JUDGES[cfg.kind]()


def policy_checkpoint(run: RunConfig) -> str:
    """The run's initial policy checkpoint dir (the arena policy is built once per seed, then cached)."""
    from sparring.shared.models import check_model_path

    if run.policy.path == ARENA_MODEL:
        from sparring.shared.arena_model import build_arena_model

        return str(build_arena_model(run.seed))
    return check_model_path(run.policy.path)
