"""The `sparring` command line.

    sparring demo [--iterations N] [--set KEY=VALUE ...]   the built-in arena run (examples/arena-demo.yaml)
    sparring run CONFIG.yaml [--set KEY=VALUE ...]          run a config to completion
    sparring serve [--host H] [--port P]                     the API service (services/api.py)
    sparring submit | status | export ...                    talk to a running API (services/client.py)

A run starts (or joins, with RAY_ADDRESS) Ray, uses Redis at REDIS_URL or a private redis-server in the
run directory, runs one controller actor, prints its progress from the run's events stream, a table per
iteration, and the path of `summary.json` as the last line.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sparring.services.launch import init_ray, parse_sets
from sparring.shared.config import ConfigError, RunConfig, load_config

log = logging.getLogger("sparring")

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "arena-demo.yaml"


def resolve_model_path(cfg: RunConfig) -> str:
    """The policy checkpoint to start from; builds (or reuses) the arena policy for `policy.path: arena`."""
    from sparring.shared.models import resolve_policy_path

    return resolve_policy_path(cfg.policy.path, cfg.seed, progress=lambda m: print(f"  [arena] {m}", flush=True))


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(summary: dict[str, Any]) -> None:
    header = f"{'iter':>4} {'pairs':>6} {'loss':>7} {'acc':>5} {'gold win vs iter0':>22} {'gen+judge':>9} {'train':>6} {'sync':>5} {'eval':>5}"
    print(header)
    print("-" * len(header))
    for it in summary["iterations"]:
        ci = it["gold_win_rate_ci95"]
        win = f"{_fmt(it['gold_win_rate_vs_iter0'])} [{_fmt(ci[0])},{_fmt(ci[1])}]" if ci else "-"
        s = it["stage_seconds"]
        print(
            f"{it['iteration']:>4} {it['pairs']:>6} {_fmt(it['loss'], '.4f'):>7} {_fmt(it['reward_accuracy'], '.2f'):>5} "
            f"{win:>22} {s.get('generate_judge', 0):>8.1f}s {s.get('train', 0):>5.1f}s {s.get('sync', 0):>4.1f}s "
            f"{s.get('eval', 0):>4.1f}s"
        )


def _print_event(kind: str, ev: dict[str, Any]) -> None:
    if kind == "progress":
        if ev.get("stage") == "generate":
            print(f"  [iter {ev['iteration']}] generated {ev['done']}/{ev['total']} prompts", flush=True)
        else:
            it = f"[iter {ev['iteration']}] " if "iteration" in ev else ""
            print(f"  {it}{ev.get('stage')}: {ev.get('message', '')}", flush=True)
    elif kind == "iteration_started":
        print(f"iteration {ev['iteration']} (policy version {ev['policy_version']})", flush=True)
    elif kind == "iteration_done":
        r = ev["record"]
        w = r.get("gold_win_rate_vs_iter0")
        win = f", gold win rate vs iter0 {w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}]" if w else ""
        print(f"iteration {r['iteration']} done: {r['num_pairs']} pairs, loss {r['metrics'].get('loss/mean', float('nan')):.4f}{win}", flush=True)
    elif kind == "worker_died":
        print(f"  worker {ev['consumer']} died; replaced (iteration {ev['iteration']})", flush=True)
    elif kind == "failed":
        print(f"run failed: {ev['reason']}", flush=True)


def execute(cfg: RunConfig) -> Path:
    """Run `cfg` to completion; returns the path of summary.json."""
    import ray

    from sparring.shared.prompts import load_prompt_pool
    from sparring.shared.redis_server import open_redis
    from sparring.shared.store import RunStore
    from sparring.workers.controller import RunController

    run_id = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    run_dir = Path(cfg.storage.run_dir).expanduser().resolve() / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    print(f"run {run_id} in {run_dir}", flush=True)

    load_prompt_pool(cfg.prompts)  # a bad prompt or DSAT file fails here, before anything starts
    with open_redis(cfg.storage.redis_url, run_dir) as (client, url):
        model_path = resolve_model_path(cfg)
        store = RunStore(client)
        store.create_run(run_id, cfg.model_dump(mode="json"), str(run_dir))
        init_ray()
        try:
            controller = (
                ray.remote(RunController)
                .options(name=f"{run_id}:controller", num_cpus=0, max_restarts=0)
                .remote(run_id, cfg.model_dump_json(), url, str(run_dir), model_path)
            )
            done = controller.run.remote()
            last = "0-0"
            while True:
                finished, _ = ray.wait([done], timeout=0.5)
                events = store.events(run_id, after=last)
                for _, kind, data in events:
                    _print_event(kind, data)
                if events:
                    last = events[-1][0]
                if finished:
                    break
            summary = ray.get(done)
        finally:
            ray.shutdown()
    print()
    print_table(summary)
    return run_dir / "summary.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparring", description="online iterative self-play alignment")
    parser.add_argument("--log-level", default=os.environ.get("SPARRING_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the built-in arena demo (3 iterations)")
    p_demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p_run = sub.add_parser("run", help="run CONFIG.yaml to completion")
    p_run.add_argument("config")
    p_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    from sparring.services import client

    client.add_parsers(sub)
    from sparring.services import eval_judges

    eval_judges.add_parser(sub).set_defaults(handler=eval_judges.run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from sparring.shared.dsat import DSATError
    from sparring.shared.models import ModelLoadError
    from sparring.shared.prompts import PromptPoolError
    from sparring.shared.redis_server import RedisUnavailable

    if hasattr(args, "handler"):
        try:
            return int(args.handler(args))
        except (ConfigError, RedisUnavailable) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except client.ApiError as err:
            print(f"error: {err.detail}" + "".join(f"\n  {p}" for p in err.problems), file=sys.stderr)
            return 2 if err.status < 500 else 1
    try:
        path = DEMO_CONFIG if args.command == "demo" else Path(args.config)
        cfg = load_config(path, parse_sets(args.set))
        summary = execute(cfg)
    except (ConfigError, RedisUnavailable, ModelLoadError, PromptPoolError, DSATError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
