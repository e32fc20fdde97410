"""Terminal formatting shared by the CLI's run table and the API client's iteration lines."""

from __future__ import annotations

from typing import Any


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def win_cell(ev: dict[str, float], key: str) -> str:
    """`0.912 [0.880,0.944]` for the win-rate metric `key` of an iteration's eval mapping, or `-`."""
    if key not in ev:
        return "-"
    return f"{ev[key]:.3f} [{ev[key + '_ci_low']:.3f},{ev[key + '_ci_high']:.3f}]"


def eval_columns(iterations: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(header, eval key) of the win-rate columns present: the evaluation judge's, then each task
    evaluator's `eval/<name>/win_rate_vs_iter0`."""
    keys = {k for it in iterations for k in it.get("eval", {})}
    cols = [("win vs iter0", "eval/win_rate_vs_iter0")] if "eval/win_rate_vs_iter0" in keys else []
    for key in sorted(keys):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "win_rate_vs_iter0":
            cols.append((f"{parts[1]} vs iter0", key))
    return cols
