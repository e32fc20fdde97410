"""Judge registry: config name -> judge. The only place a judge is chosen by name."""

from __future__ import annotations

from collections.abc import Callable

from sparring.shared.config import JudgeConfig
from sparring.workers.judges.base import Judge
from sparring.workers.judges.oracle import ArenaOracleJudge


def _arena_cdr() -> Judge:
    from sparring.workers.judges.density_ratio import ArenaDensityRatioJudge

    return ArenaDensityRatioJudge()


JUDGES: dict[str, Callable[[], Judge]] = {"arena_oracle": ArenaOracleJudge, "arena_cdr": _arena_cdr}


def build_judge(cfg: JudgeConfig) -> Judge | None:
    """The configured judge; None for `kind: none` (recipes that pair without judging, e.g. DRIFT)."""
    if cfg.kind == "none":
        return None
    if cfg.uncertainty is not None:  # composition: primary judge -> MC-dropout uncertainty
        from sparring.workers.judges.uncertainty import wrap_with_uncertainty

        primary = build_judge(cfg.model_copy(update={"uncertainty": None}))
        assert primary is not None
        return wrap_with_uncertainty(primary, cfg.uncertainty)
    if cfg.kind == "density_ratio":
        from sparring.workers.judges.density_ratio import build_density_ratio_judge

        assert cfg.strong_model and cfg.weak_model  # config validation
        return build_density_ratio_judge(
            cfg.strong_model, cfg.weak_model, reduction=cfg.reduction, criteria=cfg.criteria
        )
    return JUDGES[cfg.kind]()
