"""Sync vs async (`schedule.mode`): the same arena run, one after the other, wall time and gold win rate.

    .venv/bin/python bench/pipeline.py [--iterations 5] [--prompts 128] [--backend vllm|transformers]

Both runs use the demo's settings (tasks/arena/demo.yaml: the arena policy, K=4 at temperature 1, 48 new
tokens, the oracle judge, best-vs-worst pairs, DPO with the iteration-start reference, lr 3e-4, 2 epochs,
batch 16; evaluation on 256 held-out prompts with the `arena_gold` evaluator) except: `--iterations`
iterations of `--prompts` prompts drawn `disjoint` (the same prompts in the same iterations in both modes, so
both train the same number of versions on the same prompt sets), one generator with one engine thread and a
trainer with one torch thread (on a 2-core machine the overlapped stages then hold one core each), and
`schedule.mode` sync vs async with `max_staleness` 1, and by default evaluation after the last iteration only
(`--eval-every`: evaluation samples on the engines and is serial in both modes; the gold compared is the last
iteration's) and no held-out diagnostic pairs (`--heldout-pairs`: withheld pairs would be up to a quarter of
each of these small iterations' training pairs). Workers are Ray actors (a local Ray started here),
Redis is a private server started here. `--pin sync,async` (default none) also pins, in the modes named, the
engine's processes to core 0 and the trainer to core 1 (`resources.<role>.cpu_cores`).

Measured per mode: `loop_s`, the wall time from the end of start-up (workers up, version-0 held-out samples
taken) to the last record; the busy seconds of each stage summed over iterations (`generate_judge`, `train`,
`sync`, `eval`) and their fraction of `loop_s` (async: generate and train overlap, so fractions can add up
past 1); pairs trained; the last iteration's `eval/arena_gold/win_rate_vs_iter0`; the version-violation
count and the largest staleness. `--rounds` (default 2) runs sync then async that many times, alternately, so
a change of the machine's load shows as two different ratios rather than one wrong one; each row carries the
1-minute load average at its end. Prints one line per run, then one JSON object as the last line with, per
round, `speedup` (sync loop_s / async loop_s), `speedup_excl_eval` (the same without the evaluation seconds,
which are serial in both modes), the busy fractions, `gold_sync`, `gold_async` and `version_violations`;
`speedups` lists the rounds' ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from sparring.shared.config import load_config, parse_config
from sparring.shared.redis_server import PrivateRedis, connect
from sparring.shared.store import RunStore

DEMO = Path(__file__).resolve().parents[1] / "tasks" / "arena" / "demo.yaml"
GOLD = "eval/arena_gold/win_rate_vs_iter0"
STAGES = ("generate_judge", "train", "sync", "eval")


def mode_config(mode: str, args: argparse.Namespace, run_dir: Path) -> Any:
    data = load_config(DEMO).model_dump(mode="json", exclude_none=True)
    data["generation"].update(backend=args.backend, num_generators=1, engine_threads=1)
    data["trainer"].update(torch_threads=1)
    data["schedule"] = {
        "iterations": args.iterations,
        "prompts_per_iteration": args.prompts,
        "prompt_schedule": "disjoint",
        "mode": mode,
        "max_staleness": 1 if mode == "async" else 0,
    }
    if mode in args.pin:  # the engine's processes on core 0, the trainer on core 1 (the judge and the rest: any)
        data["resources"] = {"generators": {"cpu_cores": [0]}, "trainer": {"cpu_cores": [1]}}
    data["storage"].update(run_dir=str(run_dir))
    data["eval"].update(every=args.eval_every or args.iterations, heldout_pairs=args.heldout_pairs)
    return parse_config(data)


def timed_run(cfg: Any, label: str, redis_url: str, root: Path, stop_when: Any = None) -> dict[str, Any]:
    """Run `cfg` to the end with an in-process `RunController` (workers are Ray actors) on a fresh run id, or
    until `stop_when(record)` is true for a recorded iteration (then a stop is requested: the run ends at the
    next iteration boundary). Returns `started` (wall clock before the controller is built), `loop_start`
    (after start-up: workers up, version-0 held-out samples taken), `finished` and the run's iteration `records`."""
    from sparring.workers.controller import RunController

    run_id = f"bench-{label}-{time.time_ns()}"
    run_dir = root / run_id
    run_dir.mkdir()
    store = RunStore(connect(redis_url))
    store.create_run(run_id, cfg.model_dump(mode="json"), str(run_dir))
    marks: dict[str, float] = {}

    class Timed(RunController):
        def evaluate_baseline(self) -> None:
            super().evaluate_baseline()
            marks["loop_start"] = time.time()

        def record_iteration(self, record: Any) -> None:
            super().record_iteration(record)
            if stop_when is not None and stop_when(record):
                store.request_control(run_id, "stop")

    started = time.time()
    Timed(run_id, cfg.model_dump_json(), redis_url, str(run_dir)).run()
    return {"started": started, "loop_start": marks["loop_start"], "finished": time.time(), "records": store.iterations(run_id)}


def run_mode(mode: str, args: argparse.Namespace, redis_url: str, root: Path) -> dict[str, Any]:
    run = timed_run(mode_config(mode, args, root), mode, redis_url, root)
    records = run["records"]
    loop_s = records[-1].finished_at - run["loop_start"]
    busy = {s: sum(r.stage_seconds.get(s, 0.0) for r in records) for s in STAGES}
    return {
        "mode": mode,
        "total_s": round(run["finished"] - run["started"], 1),
        "loop_s": round(loop_s, 1),
        "busy_s": {s: round(v, 1) for s, v in busy.items()},
        "busy_fraction": {s: round(v / loop_s, 2) for s, v in busy.items()},
        "pairs": sum(r.num_pairs for r in records),
        # iteration 1 is the same in both modes (version 0's samples); async samples each later batch one version
        # earlier, and the less-trained policy's groups are tied (no best-vs-worst pair) less often
        "pairs_per_iteration": [r.num_pairs for r in records],
        "versions": records[-1].policy_version_out,
        "gold": records[-1].eval[GOLD],
        "version_violations": sum(r.metrics["version/violations"] for r in records),
        "staleness_max": max(r.metrics["staleness/max"] for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=128, help="prompts per iteration (disjoint parts of the 640)")
    parser.add_argument("--backend", choices=("vllm", "transformers"), default="vllm")
    parser.add_argument("--rounds", type=int, default=2, help="sync, async pairs run alternately (one ratio each)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="eval.every in both modes (default 0: only after the last iteration, whose gold is compared)")
    parser.add_argument("--heldout-pairs", type=int, default=0,
                        help="eval.heldout_pairs in both modes (default 0: every judged pair trains, as before the diagnostics)")
    parser.add_argument("--pin", type=lambda v: [m for m in v.split(",") if m], default=[],
                        help="modes (comma-separated: sync,async) whose engine runs on core 0 and trainer on core 1 "
                        "(resources.<role>.cpu_cores); default none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from sparring.services.launch import init_ray

    init_ray()
    pairs = []
    with tempfile.TemporaryDirectory() as tmp, PrivateRedis(Path(tmp) / "redis") as redis:
        for r in range(1, args.rounds + 1):
            round_rows = []
            for mode in ("sync", "async"):
                row = {"round": r, **run_mode(mode, args, redis.url, Path(tmp)), "load_avg_1m": os.getloadavg()[0]}
                print(json.dumps(row), flush=True)
                round_rows.append(row)
            pairs.append(round_rows)

    def ratios(sync: dict[str, Any], async_: dict[str, Any]) -> dict[str, Any]:
        return {
            "speedup": round(sync["loop_s"] / async_["loop_s"], 3),
            # evaluation runs after every version, serially, in both modes: the speed-up of the rest of the loop
            "speedup_excl_eval": round((sync["loop_s"] - sync["busy_s"]["eval"]) / (async_["loop_s"] - async_["busy_s"]["eval"]), 3),
            "loop_s_sync": sync["loop_s"], "loop_s_async": async_["loop_s"],
            "gold_sync": sync["gold"], "gold_async": async_["gold"],
            "pairs_sync": sync["pairs"], "pairs_async": async_["pairs"],
            "version_violations": sync["version_violations"] + async_["version_violations"],
            "staleness_max_async": async_["staleness_max"],
            "busy_fraction_sync": sync["busy_fraction"], "busy_fraction_async": async_["busy_fraction"],
        }  # fmt: skip

    per_round = [ratios(sync, async_) for sync, async_ in pairs]
    print(json.dumps({
        "iterations": args.iterations, "prompts_per_iteration": args.prompts, "backend": args.backend,
        "speedups": [r["speedup"] for r in per_round],
        "speedups_excl_eval": [r["speedup_excl_eval"] for r in per_round],
        "rounds": per_round,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
