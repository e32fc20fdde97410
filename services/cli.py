"""The `sparring` command line.

    sparring demo [--set KEY=VALUE ...]                     the demo run (the installed task's `demo` config)
    sparring run CONFIG.yaml [--set KEY=VALUE ...]          run a config to completion
    sparring tasks                                           installed tasks and the components they register
    sparring serve [--host H] [--port P]                     the API service (services/api.py)
    sparring submit | status | resume | export ...           talk to a running API (services/client.py)
    sparring doctor [CONFIG.yaml] [--json]                   preflight checks, each problem with its fix (services/doctor.py)

A run starts (or joins, with RAY_ADDRESS) Ray, uses Redis at REDIS_URL or a private redis-server in the
run directory, runs one controller actor, prints its progress from the run's events stream, a table per
iteration, and the path of `summary.json` as the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sparring.services.display import eval_columns, fmt, win_cell
from sparring.services.launch import init_ray, parse_sets
from sparring.services.progress import RunProgress, print_json
from sparring.shared.config import ConfigError, RunConfig, load_config

log = logging.getLogger("sparring")



def demo_config() -> Path:
    """The demo config of the only installed task that ships one (`Task.demo`, package data, so it works
    from any install, not only from a source tree); `ConfigError` when none or several do."""
    from sparring.shared import tasks

    demos = {name: task.demo for name, task in tasks.registry().items() if task.demo}
    if len(demos) != 1:
        found = ", ".join(f"{name}: {path}" for name, path in sorted(demos.items()))
        raise ConfigError(
            f"`sparring demo` runs the demo of the only installed task that has one; found {len(demos)}"
            + (f" ({found}): run one with `sparring run PATH`" if demos else " (`sparring tasks` lists the installed tasks)")
        )
    path = Path(next(iter(demos.values())))
    if not path.is_file():
        raise ConfigError(f"the demo config {path} is not installed (package data missing?)")
    return path


def resolve_model_path(cfg: RunConfig) -> str:
    """The policy checkpoint to start from (a model a task registers is built, or reused, for the seed)."""
    from sparring.shared.models import resolve_model_path as resolve

    return resolve(cfg.policy.path, cfg.seed, progress=lambda m: print(f"  [{cfg.policy.path}] {m}", flush=True))


def print_table(summary: dict[str, Any]) -> None:
    """One row per iteration: pairs, loss, reward accuracy, the eval win rates with their 95% intervals,
    KL to the initial policy, mean response length, truncated share, and the stage times."""
    iterations = summary["iterations"]
    cols = eval_columns(iterations)
    header = f"{'iter':>4} {'pairs':>6} {'loss':>7} {'acc':>5} " + " ".join(f"{h:>22}" for h, _ in cols)
    header += f" {'KL':>6} {'len':>5} {'trunc':>5} {'gen+judge':>9} {'train':>6} {'sync':>5} {'eval':>5}"
    print(header)
    print("-" * len(header))
    for it in iterations:
        ev, s = it.get("eval", {}), it["stage_seconds"]
        print(
            f"{it['iteration']:>4} {it['pairs']:>6} {fmt(it['loss'], '.4f'):>7} {fmt(it['rewards/accuracies'], '.2f'):>5} "
            + " ".join(f"{win_cell(ev, key):>22}" for _, key in cols)
            + f" {fmt(ev.get('eval/kl_vs_iter0'), '.2f'):>6} {fmt(ev.get('eval/response_length_mean'), '.1f'):>5}"
            f" {fmt(ev.get('eval/truncated_fraction'), '.2f'):>5} {s.get('generate_judge', 0):>8.1f}s"
            f" {s.get('train', 0):>5.1f}s {s.get('sync', 0):>4.1f}s {s.get('eval', 0):>4.1f}s"
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
        wins = "".join(f", {h} {win_cell(r.get('eval', {}), key)}" for h, key in eval_columns([r]))
        print(f"iteration {r['iteration']} done: {r['num_pairs']} pairs, loss {r['metrics'].get('loss/mean', float('nan')):.4f}{wins}", flush=True)
    elif kind == "worker_died":
        print(f"  worker {ev['consumer']} died; replaced (iteration {ev['iteration']})", flush=True)
    elif kind == "trainer_died":
        then = "no restart left" if ev["restart"] is None else f"restart {ev['restart']} in {ev['backoff_s']:.1f}s"
        print(f"  [iter {ev['iteration']}] trainer died during {ev['during']} ({ev['reason']}); {then}", flush=True)
    elif kind == "trainer_restarted":
        print(f"  [iter {ev['iteration']}] trainer restarted from version {ev['version']} in {ev['recovery_s']:.1f}s", flush=True)
    elif kind == "paused" and ev.get("reason"):
        print(f"run paused: {ev['reason']}", flush=True)
    elif kind == "likelihood_displacement":
        print(f"  [iter {ev['iteration']}] held-out chosen and rejected log-probs both fell "
              f"({ev['chosen_delta']:+.3f}, {ev['rejected_delta']:+.3f} nats)", flush=True)  # fmt: skip
    elif kind == "failed":
        print(f"run failed: {ev['reason']}", flush=True)


def dead_letter_lines(letters: list[Any], iteration: int, shown: int = 5) -> list[str]:
    """What `sparring run` prints after an iteration whose entries went to `run:{id}:dead` (a prompt longer
    than generation.max_model_len, say): how many, and each one's stage, item and reason (`shown` at most)."""
    if not letters:
        return []
    lines = [f"  [iter {iteration}] {len(letters)} dead letter(s), left out of this iteration:"]
    lines += [f"    {d.stage} {d.item_id}: {d.reason}" for d in letters[:shown]]
    if len(letters) > shown:
        lines.append(f"    ... and {len(letters) - shown} more (GET /v1/runs/RUN_ID/dead-letters on a service)")
    return lines


def tasks_view() -> dict[str, Any]:
    """`sparring tasks --json`: {task: {description, prompt_sources, models, judges, evaluators}}."""
    from sparring.shared import tasks

    kinds = ("prompt_sources", "models", "judges", "evaluators")
    return {t.name: {"description": t.description, **{k: sorted(getattr(t, k)) for k in kinds}} for t in tasks.registry().values()}


def print_tasks() -> None:
    """Every installed task (entry points `sparring.tasks`) and what a config can name from it."""
    from sparring.shared import tasks

    for task in tasks.registry().values():
        print(f"{task.name}: {task.description}")
        for kind, label in (("prompt_sources", "prompts.source"), ("models", "model names"), ("judges", "judge.kind"),
                            ("evaluators", "eval.evaluators")):  # fmt: skip
            names = sorted(getattr(task, kind))
            if names:
                print(f"  {label:<16} {', '.join(names)}")


def print_presets(args: argparse.Namespace) -> int:
    """`sparring presets`: the shipped paper presets; `sparring presets show NAME`: every value it sets and the
    upstream file or paper section each comes from (`--json`: one object {key: {value, source}})."""
    from sparring.shared.presets import flatten, load_preset, preset_names, preset_sources, preset_summary

    if args.name is None:
        for name in preset_names():
            print(f"{name:<24} {preset_summary(name)}")
        return 0
    try:
        values, sources = flatten(load_preset(args.name)), preset_sources(args.name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.json:
        print(json.dumps({k: {"value": v, "source": sources.get(k, "")} for k, v in values.items()}, indent=2))
        return 0
    shown = {k: json.dumps(v) for k, v in values.items()}
    kw, vw = max(map(len, shown)), max(map(len, shown.values()))
    for key, value in shown.items():
        print(f"{key:<{kw}}  {value:<{vw}}  {sources.get(key, '')}")
    return 0


def execute(cfg: RunConfig) -> Path:
    """Run `cfg` to completion; returns the path of summary.json."""
    import ray

    from sparring.shared.models import check_config_models
    from sparring.shared.prompts import run_prompts
    from sparring.shared.queue import StreamQueue
    from sparring.shared.redis_server import open_redis
    from sparring.shared.store import RunStore
    from sparring.workers.controller import launch_controller

    check_config_models(cfg)  # every local model dir (policy, judges) complete, each problem with its field
    run_prompts(cfg)  # a bad prompt file, or prompts the run's judges cannot score, fail here, before anything starts
    run_id = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    run_dir = Path(cfg.storage.run_dir).expanduser().resolve() / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    print(f"run {run_id} in {run_dir}", flush=True)

    # the event reader below rides out a Redis restart like the controller and workers do
    with open_redis(cfg.storage.redis_url, run_dir, outage_s=cfg.resilience.redis_outage_s) as (client, url), RunProgress() as progress:
        progress.step(f"model {cfg.policy.path}: resolving (a task's model is built once, then cached)")
        model_path = resolve_model_path(cfg)
        store = RunStore(client)
        store.create_run(run_id, cfg.model_dump(mode="json"), str(run_dir))
        init_ray()
        try:
            controller = launch_controller(run_id, cfg, url, str(run_dir), model_path)
            done = controller.run.remote()
            last, dead_shown = "0-0", 0
            queue = StreamQueue(client, run_id)
            while True:
                finished, _ = ray.wait([done], timeout=0.5)
                events = store.events(run_id, after=last)
                for _, kind, data in events:
                    _print_event(kind, data)
                    if kind == "iteration_done" and data["record"].get("num_dead"):  # say what was left out, and why
                        letters = queue.dead_letters()
                        for line in dead_letter_lines(letters[dead_shown:], data["record"]["iteration"]):
                            print(line, flush=True)
                        dead_shown = len(letters)
                    progress.event(kind, data)  # the live bar of the current step, in a terminal
                if events:
                    last = events[-1][0]
                if finished:
                    break
            summary = ray.get(done)
        except BaseException as err:
            settle_orphan(store, run_id, err)
            if isinstance(err, ray.exceptions.RayError):  # the controller raised or died: one line, not Ray's traceback
                from sparring.workers.failures import failure_reason

                raise RunFailed(f"run {run_id} failed: {failure_reason(err)} (traceback: {run_dir / 'controller.log'})") from None
            raise
        finally:
            ray.shutdown()
    print()
    print_table(summary)
    return run_dir / "summary.json"


class RunFailed(Exception):
    """`sparring run`/`demo`: the run ended as failed (the controller raised, e.g. a `PlacementError`, or its
    actor died); the message names the run, the reason and where the traceback is."""


def settle_orphan(store: Any, run_id: str, err: BaseException) -> None:
    """The run's controller is gone (it died, was interrupted, or gave up on Redis before it could record the
    run's end): a run it left executing is marked failed with the reason, never left `running` with no
    controller (a failed run with an intact checkpoint can be resumed)."""
    from sparring.shared.store import ACTIVE_STATES, InvalidTransition
    from sparring.workers.failures import failure_reason

    try:
        store.transition(
            run_id, ACTIVE_STATES, "failed", reason=f"its controller exited without recording an end: {failure_reason(err)}"
        )
    except InvalidTransition:
        pass  # already at rest: the controller recorded the run's end (e.g. `failed` with its reason)
    except Exception:  # noqa: BLE001 - Redis is gone for good
        log.warning("could not settle the state of run %s", run_id, exc_info=True)


def build_parser() -> argparse.ArgumentParser:
    """The `sparring` argument parser with every subcommand (tests parse deploy/ commands with it)."""
    parser = argparse.ArgumentParser(prog="sparring", description="online iterative self-play alignment")
    parser.add_argument("--log-level", default=os.environ.get("SPARRING_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the demo config of the installed task that has one")
    p_demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p_run = sub.add_parser("run", help="run CONFIG.yaml to completion")
    p_run.add_argument("config")
    p_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p_tasks = sub.add_parser("tasks", help="installed tasks and the prompt sources, models, judges, evaluators they register")
    p_tasks.add_argument("--json", action="store_true", help="one JSON object {task: {description, prompt_sources, ...}}")
    p_presets = sub.add_parser("presets", help="paper presets; `presets show NAME` prints its values and their sources")
    p_presets.add_argument("show", nargs="?", choices=["show"], help=argparse.SUPPRESS)
    p_presets.add_argument("name", nargs="?", help="the preset to show")
    p_presets.add_argument("--json", action="store_true", help="one JSON object {key: {value, source}}")
    p_presets.set_defaults(handler=print_presets)
    from sparring.services import client

    client.add_parsers(sub)
    from sparring.services import eval_judges

    eval_judges.add_parser(sub).set_defaults(handler=eval_judges.run)
    from sparring.services import doctor

    doctor.add_parser(sub).set_defaults(handler=doctor.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `sparring` entry point: exit status 0 done, 1 failed, 2 refused input."""
    try:
        return _main(argv)
    except BrokenPipeError:  # `sparring presets show sppo | head`: the reader left (the recipe of Python's `signal` docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when stdout is flushed at exit
        return 1


def _main(argv: list[str] | None = None) -> int:
    from sparring.services import client

    args = build_parser().parse_args(argv)
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
    if args.command == "tasks":
        if args.json:
            return print_json(tasks_view())
        print_tasks()
        return 0
    try:
        path = demo_config() if args.command == "demo" else Path(args.config)
        cfg = load_config(path, parse_sets(args.set))
        summary = execute(cfg)
    except (ConfigError, RedisUnavailable, ModelLoadError, PromptPoolError, DSATError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
