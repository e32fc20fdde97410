"""`sparring eval-judges`: every configured judge on held-out arena pairs, against the gold preference.

    sparring eval-judges [--judges arena_oracle,arena_cdr,...] [--pairs 320] [--seed 0] [--json]

The pairs are the ones docs/judges.md measures CDR on (`arena_strong.heldout_pairs`: one pair of corpus
responses with distinct gold scores per held-out prompt; 320 by default) and agreement is computed by the same
code (`arena_strong.gold_agreement`: a score tie counts one half, Wilson 95% interval). Each judge runs
behind the judge pool (`workers/judges/pool.py`), as in a run: batches of 32 two-response groups, the
position-bias cancellation and flip-consistency count for order-sensitive judges, the cache. Prints per judge:
agreement with gold [95% interval], flip consistency (order-sensitive judges, else "-"), pairs/s (judging
only; building or loading the judge is reported separately), as a table, or as JSON with `--json`.

`--judges` takes judge kinds of the registry (`judge.kind`); a kind suffixed `+upo` (`+upo_head`: dropout in
the head only) is that judge composed with the MC-dropout uncertainty filter (`judge.uncertainty`, default
settings), and also reports the share of pairs the filter keeps and the agreement on those. Default: every
kind that needs no user-named model.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
import typing
from typing import Any

DEFAULT_PAIRS = 320
BATCH_GROUPS = 32  # the judge worker's read size
UNNAMED_MODEL_KINDS = ("density_ratio", "pairrm", "none")  # need models a user names: not built by default
# NAME+SUFFIX: the judge composed with the uncertainty filter (default `judge.uncertainty` settings)
UPO_SUFFIXES: dict[str, dict[str, Any] | None] = {"": None, "upo": {}, "upo_head": {"head_only": True}}


def available_kinds() -> list[str]:
    """Judge kinds of the config that can be built with no user-named model."""
    from sparring.shared.config import JudgeConfig

    kinds = typing.get_args(JudgeConfig.model_fields["kind"].annotation)
    return [k for k in kinds if k not in UNNAMED_MODEL_KINDS]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval-judges", help="agreement with gold, flip consistency and pairs/s of judges on held-out arena pairs"
    )
    p.add_argument("--judges", default=None, help="comma-separated judge kinds (NAME+upo, NAME+upo_head add the uncertainty filter); "
                   "default: every kind that needs no model path")  # fmt: skip
    p.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="held-out pairs, one per prompt (max 320)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair draw")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per judge call")
    p.add_argument("--estimator", default=None, help="+upo: the estimator (judge.uncertainty.estimator: a PairRM "
                   "dir, or arena_pairrm, the default)")  # fmt: skip
    p.add_argument("--upo-dropout", type=float, default=None, help="+upo: override the estimator's dropout rates")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def _build(spec: str, upo: dict[str, Any] | None = None) -> Any:
    """A judge from a kind name (`NAME`, `NAME+upo` or `NAME+upo_head`); `upo` adds uncertainty settings."""
    from sparring.shared.config import JudgeConfig, RunConfig
    from sparring.workers.judges.registry import build_judge

    kind, _, suffix = spec.partition("+")
    if suffix not in UPO_SUFFIXES:
        raise ValueError(f"unknown judge suffix {suffix!r} in {spec!r} (one of {', '.join(UPO_SUFFIXES)})")
    settings = UPO_SUFFIXES[suffix]
    cfg = JudgeConfig(kind=kind, uncertainty=None if settings is None else {**settings, **(upo or {})})
    if "run" in inspect.signature(build_judge).parameters:  # judges of the policy read the run config
        judge = build_judge(cfg, run=RunConfig(judge=cfg))
    else:
        judge = build_judge(cfg)
    if judge is None:
        raise ValueError(f"judge kind {kind!r} judges nothing")
    return judge


class _PooledJudge:
    """What `gold_agreement` calls: the judge behind the pool, batched like a worker, timed."""

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
        # gold_agreement reads scores; a matrix-only judgement ranks by its row means (as the recipes do)
        return [
            j if j.scores is not None else j.model_copy(update={"scores": [sum(r) / len(r) for r in j.win_matrix]})
            for j in out
        ]


def evaluate(spec: str, pairs: list[Any], timeout_s: float, upo: dict[str, Any] | None = None) -> dict[str, Any]:
    """One judge's row: agreement [low, high], flip consistency or None, pairs/s, build seconds."""
    from sparring.shared import arena
    from sparring.workers.judges.arena_strong import gold_agreement
    from sparring.workers.judges.pool import JudgePool

    t0 = time.perf_counter()
    judge = _build(spec, upo)
    build_s = time.perf_counter() - t0
    pool = JudgePool(judge, timeout_s=timeout_s)
    pooled = _PooledJudge(pool)
    agreement = gold_agreement(pooled, pairs)
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
        kept = hits = 0.0
        for (p, a, b), jd in zip(pairs, pooled.judgements, strict=True):
            if jd.confidence is None or jd.confidence[0][1] > 0.0:
                kept += 1
                sa, sb = (jd.scores or [0.0, 0.0])[:2]
                gold_a = arena.gold_score(p.topic, a) > arena.gold_score(p.topic, b)
                hits += 0.5 if sa == sb else float((sa > sb) == gold_a)
        row["kept"] = kept / len(pairs) if pairs else 0.0
        row["agreement_kept"] = hits / kept if kept else None
    return row


def _fmt_table(rows: list[dict[str, Any]], num_pairs: int) -> str:
    header = f"{'judge':<24} {'agreement [95% CI]':>24} {'flip consistency':>17} {'pairs/s':>9} {'build s':>8}"
    lines = [f"{num_pairs} held-out arena pairs with distinct gold scores", header, "-" * len(header)]
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
    from sparring.workers.judges.arena_strong import heldout_pairs

    specs = [s.strip() for s in args.judges.split(",") if s.strip()] if args.judges else available_kinds()
    known = set(available_kinds()) | set(UNNAMED_MODEL_KINDS)
    unknown = [s for s in specs if s.partition("+")[0] not in known]
    if unknown or not specs:
        sys.stderr.write(f"error: unknown judge kind(s) {unknown}; known: {', '.join(available_kinds())}\n")
        return 2
    if not 1 <= args.pairs <= DEFAULT_PAIRS:
        sys.stderr.write(f"error: --pairs must be in [1, {DEFAULT_PAIRS}], got {args.pairs}\n")
        return 2
    pairs = heldout_pairs(num_prompts=args.pairs, seed=args.seed)
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
            rows.append(evaluate(spec, pairs, args.timeout_s, upo))
        except Exception as err:  # noqa: BLE001 - one judge failing to build or run must not hide the others
            rows.append({"judge": spec, "error": f"{type(err).__name__}: {err}"})
    if args.json:
        sys.stdout.write(json.dumps({"num_pairs": len(pairs), "seed": args.seed, "judges": rows}, indent=2) + "\n")
    else:
        sys.stdout.write(_fmt_table(rows, len(pairs)) + "\n")
    return 1 if any("error" in r for r in rows) else 0
