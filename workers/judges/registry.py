"""Judge registry: config name -> judge class. The only place a judge is chosen by name."""

from __future__ import annotations

from sparring.shared.config import JudgeConfig
from sparring.workers.judges.base import Judge
from sparring.workers.judges.oracle import ArenaOracleJudge

JUDGES: dict[str, type] = {"arena_oracle": ArenaOracleJudge}


def build_judge(cfg: JudgeConfig) -> Judge:
    return JUDGES[cfg.kind]()
