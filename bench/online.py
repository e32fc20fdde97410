"""online_dpo against the demo's wall time: the 3-iteration demo, then the online_dpo arena run, back to back.

    .venv/bin/python bench/online.py [--batches N] [--eval-every K] [--target 0.85] [--set KEY=VALUE ...]
        [--variant 'KEY=VALUE ...' ...] [--stop-at-target] [--skip-demo]

Issue 16's goal: "an online_dpo arena run (64-prompt batches) reaching gold win rate >= 0.85 within the same wall
time as the 3-iteration demo". Both runs share one local Ray and one private Redis started here, one after the
other in this process (each with its own in-process `RunController`, workers as Ray actors, as `sparring run`).

- the demo: tasks/arena/demo.yaml unchanged (3 x 512 prompts, K=4, DPO 2 epochs). Its wall time `demo_s` runs
  from building the controller to the run's end (start-up included, as a user waits for it).
- online_dpo: examples/arena-online-dpo.yaml (the `online_dpo` preset at the arena's lr, async, max_staleness 1,
  15 random batches, evaluated on 256 held-out prompts with the `arena_gold` evaluator after every 3rd batch and
  the last: `eval.every`, so evaluation, which is serial, costs 1/k of the batches). `--batches` sets
  `schedule.iterations` (random draws past the 10 disjoint batches the 640 prompts give, else disjoint),
  `--eval-every` sets `eval.every`, `--set` overrides more keys of this run. `reach_s`: from building its controller to the end of the
  first batch whose evaluation has gold win rate vs iteration 0 >= `--target` (start-up included, as in
  `demo_s`); the win rate can only be seen at an evaluated batch, so `reach_s` is up to k - 1 batches late.

Each `--variant` is one more online run, after the demo in the same session, with its own overrides on top of
`--set` (e.g. `--variant eval.every=1 --variant eval.every=3`: evaluation's share of the wall time, measured
under the same load). Prints the demo's row; per online run, one row per evaluated batch (gold, seconds since
its start) and a summary row with the mean per-batch stage seconds (generate_judge, train, their overlap, sync,
eval (over all batches, and over the evaluated ones), `wall`, and `other`: the rest of a batch's wall time,
i.e. dispatch, record, acknowledge, control checks); then one JSON object as the last line with, per online
run, `ratio` = reach_s / demo_s (< 1: online_dpo reaches the target within the demo's wall time; null when it
never does). `--stop-at-target` stops each online run at the end of the batch that reached the target
(saves the rest of its batches; `reach_s` is the same).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from pipeline import GOLD, timed_run  # bench/pipeline.py (this directory is on sys.path when run as a script)

from sparring.services.launch import parse_sets
from sparring.shared.config import load_config
from sparring.shared.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tasks" / "arena" / "demo.yaml"
ONLINE = ROOT / "examples" / "arena-online-dpo.yaml"
DISJOINT_BATCHES = 10  # the arena's 640 train prompts in batches of 64
STAGES = ("generate_judge", "train", "overlap", "sync", "eval")


def online_overrides(args: argparse.Namespace, variant: list[str], run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"storage.run_dir": str(run_dir)}
    if args.batches is not None:
        out["schedule.iterations"] = args.batches
        out["schedule.prompt_schedule"] = "random" if args.batches > DISJOINT_BATCHES else "disjoint"
    if args.eval_every is not None:
        out["eval.every"] = args.eval_every
    out.update(parse_sets(args.set + variant))
    return out


def per_batch_seconds(records: list[Any]) -> dict[str, float]:
    """Mean seconds per batch of each stage, and of `other` (wall time of the batch minus its stages; in async
    mode the overlap stands for generate_judge and train, which ran at the same time)."""
    out = {s: statistics.fmean(r.stage_seconds.get(s, 0.0) for r in records) for s in STAGES}
    evaluated = [r.stage_seconds.get("eval", 0.0) for r in records if r.eval]
    out["eval_when_evaluated"] = statistics.fmean(evaluated) if evaluated else 0.0
    walls = [r.finished_at - r.started_at for r in records]
    out["wall"] = statistics.fmean(walls)
    staged = [r.stage_seconds.get("overlap", r.stage_seconds.get("generate_judge", 0.0) + r.stage_seconds.get("train", 0.0))
              + r.stage_seconds.get("sync", 0.0) + r.stage_seconds.get("eval", 0.0) for r in records]  # fmt: skip
    out["other"] = statistics.fmean(w - s for w, s in zip(walls, staged, strict=True))
    return {k: round(v, 2) for k, v in out.items()}


def online_row(run: dict[str, Any], target: float, demo_s: float | None, variant: list[str]) -> dict[str, Any]:
    """Print an online run's evaluated batches and per-batch stage seconds; return its summary."""
    records, started = run["records"], run["started"]
    reach = None
    for r in records:
        if r.eval:
            print(json.dumps({"variant": variant, "batch": r.iteration, "gold": round(r.eval[GOLD], 3), "at_s": round(r.finished_at - started, 1)}))
            if reach is None and r.eval[GOLD] >= target:
                reach = r
    reach_s = None if reach is None else reach.finished_at - started
    return {
        "variant": variant, "wall_s": round(run["finished"] - started, 1), "startup_s": round(run["loop_start"] - started, 1),
        "reach_s": None if reach_s is None else round(reach_s, 1), "reach_batch": None if reach is None else reach.iteration,
        "ratio": None if reach_s is None or demo_s is None else round(reach_s / demo_s, 3),
        "batches_run": len(records), "gold_last": next((r.eval[GOLD] for r in reversed(records) if r.eval), None),
        "version_violations": sum(r.metrics["version/violations"] for r in records),
        "staleness_max": max(r.metrics["staleness/max"] for r in records),
        "per_batch_s": per_batch_seconds(records), "load_avg_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=None, help="online_dpo batches of 64 prompts (default: the example's)")
    parser.add_argument("--eval-every", type=int, default=None, help="evaluate every k-th batch and the last (default: the example's)")
    parser.add_argument("--target", type=float, default=0.85, help="the gold win rate vs iteration 0 to reach")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of every online run")
    parser.add_argument("--variant", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="one more online run with these overrides (repeatable; none: one run as set)")
    parser.add_argument("--stop-at-target", action="store_true", help="stop each online run once it reaches --target")
    parser.add_argument("--skip-demo", action="store_true", help="online runs only (no ratio)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from sparring.services.launch import init_ray

    init_ray()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, PrivateRedis(Path(tmp) / "redis") as redis:
        root = Path(tmp)
        demo_s = demo_gold = None
        if not args.skip_demo:
            demo = timed_run(load_config(DEMO, {"storage.run_dir": str(root)}), "demo", redis.url, root)
            demo_s = demo["finished"] - demo["started"]
            demo_gold = demo["records"][-1].eval[GOLD]
            print(json.dumps({"run": "demo", "wall_s": round(demo_s, 1), "startup_s": round(demo["loop_start"] - demo["started"], 1),
                              "gold": demo_gold, "load_avg_1m": os.getloadavg()[0]}), flush=True)  # fmt: skip
        for variant in [v.split() for v in args.variant] or [[]]:
            cfg = load_config(ONLINE, online_overrides(args, variant, root))
            stop = (lambda r: GOLD in r.eval and r.eval[GOLD] >= args.target) if args.stop_at_target else None
            run = timed_run(cfg, "online", redis.url, root, stop_when=stop)
            rows.append(online_row(run, args.target, demo_s, variant))
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({
        "target": args.target, "batches": args.batches, "eval_every": args.eval_every, "set": args.set, "load_avg_1m": os.getloadavg()[0],
        "demo_s": None if demo_s is None else round(demo_s, 1), "demo_gold": demo_gold,
        "online": [{k: r[k] for k in ("variant", "reach_s", "reach_batch", "ratio", "gold_last", "version_violations", "staleness_max")} for r in rows],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
