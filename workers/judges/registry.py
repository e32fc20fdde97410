"""Judge registry: config name -> judge class. The only place a judge is chosen by name."""

from __future__ import annotations

from sparring.shared.config import JudgeConfig
from sparring.workers.judges.base import Judge
from sparring.workers.judges.oracle import ArenaOracleJudge

JUDGES: dict[str, type] = {"arena_oracle": ArenaOracleJudge}


def build_judge(cfg: JudgeConfig) -> Judge | None:
    """The configured judge; None for `kind: none` (recipes that pair without judging, e.g. DRIFT)."""
    return None if cfg.kind == "none" else JUDGES[cfg.kind]()
