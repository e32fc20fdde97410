"""`sparring eval-judges`: judges on a task's held-out labelled pairs, against the task's known preference.

    sparring eval-judges [--task NAME] [--judges KIND,...] [--pairs N] [--seed 0] [--json]

The pairs come from the task (`Task.labelled_pairs`, shared/tasks.py: (prompt, a, b, which is better)) and
agreement is computed by `workers/judges/agreement.py` (a score tie counts one half, Wilson 95% interval).
Each judge runs behind the judge pool (`workers/judges/pool.py`), as in a run: batches of 32 two-response
groups, the position-bias cancellation and flip-consistency count for order-sensitive judges, the cache.
Prints per judge: agreement [95% interval], flip consistency (order-sensitive judges, else "-"), pairs/s
(judging only; building or loading the judge is reported separately), as a table, or JSON with `--json`.

`--judges` takes judge kinds (`judge.kind`); a kind suffixed `+upo` (`+upo_head`: dropout in the head only)
is that judge composed with the MC-dropout uncertainty filter (`judge.uncertainty`; `--estimator` names the
estimator), and also reports the share of pairs the filter keeps and the agreement on those. Default: the
task's judges, and `self_preference` on the task's policy when it names one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

DEFAULT_PAIRS = 320  # --pairs default (a task may hold fewer)
BATCH_GROUPS = 32  # the judge worker's read size
UNNAMED_MODEL_KINDS = ("density_ratio", "pairrm", "none")  # need models a user names: not built by default
# NAME+SUFFIX: the judge composed with the uncertainty filter (default `judge.uncertainty` settings)
UPO_SUFFIXES: dict[str, dict[str, Any] | None] = {"": None, "upo": {}, "upo_head": {"head_only": True}}


def labelled_task(name: str | None) -> Any:
    """The task whose labelled pairs to use: `name`, or the one installed task that has labelled pairs."""
    from sparring.shared import tasks

    with_pairs = {t.name: t for t in tasks.registry().values() if t.labelled_pairs is not None}
    if name is None and len(with_pairs) == 1:
        return next(iter(with_pairs.values()))
    if name in with_pairs:
        return with_pairs[name]
    raise ValueError(f"--task {name!r}: tasks with labelled pairs: {', '.join(sorted(with_pairs)) or 'none installed'}")


def available_kinds(task: Any) -> list[str]:
    """Judge kinds that need no user-named model: the task's judges and, with a task policy, self_preference."""
    return sorted(task.judges) + (["self_preference"] if task.policy else [])


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval-judges", help="agreement with a task's known preference, flip consistency and pairs/s of judges"
    )
    p.add_argument("--task", default=None, help="the task whose labelled pairs to use (default: the only one with them)")
    p.add_argument("--judges", default=None, help="comma-separated judge kinds (NAME+upo, NAME+upo_head add the uncertainty filter); "
                   "default: the task's judges and self_preference")  # fmt: skip
    p.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="held-out pairs, one per prompt (max 320)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair draw")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per judge call")
    p.add_argument("--estimator", default=None, help="+upo: the estimator (judge.uncertainty.estimator: a PairRM "
                   "dir or hub id, or a PairRM model a task registers)")  # fmt: skip
    p.add_argument("--upo-dropout", type=float, default=None, help="+upo: override the estimator's dropout rates")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def _build(spec: str, task: Any, upo: dict[str, Any] | None = None) -> Any:
    """A judge from a kind name (`NAME`, `NAME+upo` or `NAME+upo_head`); `upo` adds uncertainty settings.
    Judges of the policy (self_preference) judge with the task's policy."""
    from sparring.shared.config import RunConfig, judge_config
    from sparring.workers.judges.registry import build_judge

    kind, _, suffix = spec.partition("+")
    if suffix not in UPO_SUFFIXES:
        raise ValueError(f"unknown judge suffix {suffix!r} in {spec!r} (one of {', '.join(UPO_SUFFIXES)})")
    settings = UPO_SUFFIXES[suffix]
    cfg = judge_config(kind=kind, uncertainty=None if settings is None else {**settings, **(upo or {})})
    run = None
    if task.policy and task.prompt_sources:
        run = RunConfig.model_validate(
            {"policy": {"path": task.policy}, "judge": cfg.model_dump(), "prompts": {"source": next(iter(task.prompt_sources))}}
        )
    judge = build_judge(cfg, run)
    if judge is None:
        raise ValueError(f"judge kind {kind!r} judges nothing")
    return judge


class _PooledJudge:
    """What `agreement` calls: the judge behind the pool, batched like a worker, timed."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        judge = pool.judge
        self.tokenizer = getattr(judge, "tokenizer", None) or getattr(getattr(judge, "primary", None), "tokenizer", None)
        self.seconds = 0.0
        self.judgements: list[Any] = []

    def judge(self, groups: list[Any]) -> list[Any]:
        t0 = time.perf_counter()
        out = []
        for start in range(0, len(groups), BATCH_GROUPS):
            out += self.pool.judge_batch(groups[start : start + BATCH_GROUPS])
        self.seconds += time.perf_counter() - t0
        self.judgements = out
        # agreement reads scores; a matrix-only judgement ranks by its row means (as the recipes do)
        return [
            j if j.scores is not None else j.model_copy(update={"scores": [sum(r) / len(r) for r in j.win_matrix]})
            for j in out
        ]


def evaluate(spec: str, task: Any, pairs: list[Any], timeout_s: float, upo: dict[str, Any] | None = None) -> dict[str, Any]:
    """One judge's row: agreement [low, high], flip consistency or None, pairs/s, build seconds."""
    from sparring.workers.judges.agreement import agreement as measure
    from sparring.workers.judges.agreement import hits
    from sparring.workers.judges.pool import JudgePool

    t0 = time.perf_counter()
    judge = _build(spec, task, upo)
    build_s = time.perf_counter() - t0
    pool = JudgePool(judge, timeout_s=timeout_s)
    pooled = _PooledJudge(pool)
    agreement = measure(pooled, pairs)
    metrics = pool.take_metrics()
    row: dict[str, Any] = {
        "judge": spec,
        "name": getattr(judge, "name", spec),
        "pairs": agreement.num_pairs,
        "agreement": agreement.agreement,
        "ci95": [agreement.ci_low, agreement.ci_high],
        "order_sensitive": bool(getattr(judge, "order_sensitive", False)),
        "flip_consistency": metrics.get("judge/flip_consistency") if getattr(judge, "order_sensitive", False) else None,
        "pairs_per_s": agreement.num_pairs / pooled.seconds if pooled.seconds > 0 else math.inf,
        "judge_seconds": pooled.seconds,
        "build_seconds": build_s,
    }
    unc = getattr(judge, "head_only", None)
    if unc is not None:
        row["uncertainty"] = {"passes": judge.passes, "head_only": judge.head_only, "mode": judge.mode}
    if getattr(judge, "counters", None) is not None:  # an uncertainty composition: what does the filter keep?
        keep = [jd.confidence is None or jd.confidence[0][1] > 0.0 for jd in pooled.judgements]
        kept = [(jd, pair) for jd, pair, k in zip(pooled.judgements, pairs, keep, strict=True) if k]
        scored = hits([jd for jd, _ in kept], [pair for _, pair in kept])
        row["kept"] = len(kept) / len(pairs) if pairs else 0.0
        row["agreement_kept"] = sum(scored) / len(kept) if kept else None
    return row


def _fmt_table(rows: list[dict[str, Any]], num_pairs: int, task: str) -> str:
    header = f"{'judge':<24} {'agreement [95% CI]':>24} {'flip consistency':>17} {'pairs/s':>9} {'build s':>8}"
    lines = [f"{num_pairs} held-out {task} pairs with a known preference", header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['judge']:<24} error: {r['error']}")
            continue
        agree = f"{r['agreement']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        flip = "-" if r["flip_consistency"] is None else f"{r['flip_consistency']:.3f}"
        line = f"{r['judge']:<24} {agree:>24} {flip:>17} {r['pairs_per_s']:>9.1f} {r['build_seconds']:>8.1f}"
        if "kept" in r:
            kept_agree = "-" if r["agreement_kept"] is None else f"{r['agreement_kept']:.3f}"
            line += f"   (filter keeps {r['kept']:.3f}, agreement on kept {kept_agree})"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        task = labelled_task(args.task)
    except ValueError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    specs = [s.strip() for s in args.judges.split(",") if s.strip()] if args.judges else available_kinds(task)
    known = set(available_kinds(task)) | set(UNNAMED_MODEL_KINDS)
    unknown = [s for s in specs if s.partition("+")[0] not in known]
    if unknown or not specs:
        sys.stderr.write(f"error: unknown judge kind(s) {unknown}; known: {', '.join(available_kinds(task))}\n")
        return 2
    pairs = task.labelled_pairs(args.pairs, args.seed) if args.pairs >= 1 else []
    if not 1 <= args.pairs <= len(pairs):
        sys.stderr.write(f"error: --pairs must be in [1, {len(task.labelled_pairs(DEFAULT_PAIRS, args.seed))}] for task {task.name}, got {args.pairs}\n")
        return 2
    upo: dict[str, Any] = {}
    if args.estimator:
        upo["estimator"] = args.estimator
    if args.upo_dropout is not None:
        upo["dropout"] = args.upo_dropout
    rows = []
    for spec in specs:
        if not args.json:
            sys.stderr.write(f"  evaluating {spec} ...\n")
            sys.stderr.flush()
        try:
            rows.append(evaluate(spec, task, pairs, args.timeout_s, upo))
        except Exception as err:  # noqa: BLE001 - one judge failing to build or run must not hide the others
            rows.append({"judge": spec, "error": f"{type(err).__name__}: {err}"})
    if args.json:
        sys.stdout.write(json.dumps({"task": task.name, "num_pairs": len(pairs), "seed": args.seed, "judges": rows}, indent=2) + "\n")
    else:
        sys.stdout.write(_fmt_table(rows, len(pairs), task.name) + "\n")
    return 1 if any("error" in r for r in rows) else 0
