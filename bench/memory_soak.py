"""Memory soak: does any process of a long run grow? N iterations of a small arena run, every process measured.

    .venv/bin/python bench/memory_soak.py                          # 50 iterations, vLLM engine, 32 prompts each
    .venv/bin/python bench/memory_soak.py --iterations 12 --at 4,12 --backend transformers

A real run (private redis-server, local Ray, the arena policy, one generator, the oracle judge, eval off) is
driven by `RunController` in this process. After every recorded iteration the bench measures
(psutil) the resident set size of every process of the run: this one (the driver and controller), its
redis-server, Ray's own processes (gcs_server, raylet, ...) and every actor process with its children (a
vLLM engine's EngineCore), named by the actor's class (`ray::GeneratorWorker`), and Redis `used_memory`
(INFO memory), each Redis key's exact `MEMORY USAGE` (to tell which key grows) and the Ray object store's
used bytes. It prints a table of each process's RSS at the two
iterations of `--at` (default 10 and 50) with their ratio (iteration 10 is the baseline: start-up and the
first iterations' allocations are over by then), writes every iteration's numbers to `--out` (JSON) and
prints one JSON object as its last line: `max_ratio` over the processes and Redis, and `within_10pct`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from sparring.shared.config import parse_config
from sparring.shared.redis_server import PrivateRedis, connect
from sparring.shared.store import RunStore

MB = 1 << 20
_LABELS: dict[int, str] = {}  # pid -> its label when first seen (a busy actor's title names its method)


def label(proc: psutil.Process, driver_pid: int) -> str:
    """A stable name for a process of the run: the driver, `ray::<ActorClass>` (Ray's process title), a child
    of an actor (`<actor>/<name>`), or the executable's name (redis-server, gcs_server, raylet, ...)."""
    if proc.pid == driver_pid:
        return "driver+controller"
    try:
        cmd = proc.cmdline()
        title = cmd[0] if cmd else proc.name()
    except psutil.Error:
        return proc.name()
    if title.startswith("ray::"):
        return "ray::" + re.split(r"[.(\s]", title[5:], maxsplit=1)[0]
    parent = proc.parent()
    if parent is not None and parent.pid != driver_pid:
        try:
            ptitle = (parent.cmdline() or [parent.name()])[0]
        except psutil.Error:
            ptitle = ""
        if ptitle.startswith("ray::"):
            return "ray::" + re.split(r"[.(\s]", ptitle[5:], maxsplit=1)[0] + "/" + proc.name()
    name = Path(title.split()[0]).name if title else proc.name()
    if "python" in name and len(cmd) > 1:  # Ray's python helpers: dashboard agent, log monitor, ...
        name = Path(next((c for c in cmd[1:] if c.endswith(".py")), cmd[1])).stem
    return name


def snapshot(driver_pid: int) -> dict[str, float]:
    """RSS in MB of every descendant of this process (and itself), summed per label; labels that repeat
    (two idle Ray workers) get `#n` suffixes by PID order."""
    me = psutil.Process(driver_pid)
    out: dict[str, float] = {}
    for proc in sorted([me, *me.children(recursive=True)], key=lambda p: p.pid):
        try:
            rss = proc.memory_info().rss / MB
            name = _LABELS.setdefault(proc.pid, label(proc, driver_pid))
        except psutil.Error:
            continue
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name}#{n}"
        out[key] = rss
    return out


def breakdown(driver_pid: int) -> dict[str, dict[str, float]]:
    """Per label (as `snapshot`): RssAnon, RssFile, RssShmem (MB, /proc/PID/status) and the number of mapped
    files already deleted (a checkpoint file still mapped after retention removed it), to tell what grows."""
    me = psutil.Process(driver_pid)
    out: dict[str, dict[str, float]] = {}
    for proc in sorted([me, *me.children(recursive=True)], key=lambda p: p.pid):
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            continue
        kb = {k: float(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in status.splitlines()) if k.startswith("Rss")}
        deleted = {line.split(None, 5)[-1] for line in maps.splitlines() if line.endswith("(deleted)")}
        name = _LABELS.get(proc.pid) or label(proc, driver_pid)
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name}#{n}"
        out[key] = {"anon_mb": kb.get("RssAnon", 0.0), "file_mb": kb.get("RssFile", 0.0),
                    "shmem_mb": kb.get("RssShmem", 0.0), "deleted_mapped_files": float(len(deleted))}  # fmt: skip
    return out


def redis_key_bytes(client: Any) -> dict[str, int]:
    """Every key of the (private) Redis with its exact `MEMORY USAGE ... SAMPLES 0`
    in bytes (every stream node and consumer-group entry counted, not the 5-node sample of the default)."""
    out = {}
    for key in sorted(client.scan_iter(match="*", count=1000)):
        size = client.memory_usage(key, samples=0)
        if size is not None:
            out[key.decode()] = int(size)
    return out


def object_store_mb() -> float:
    """Bytes of Ray's object store in use (plasma), from the raylet's memory summary, in MB."""
    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    m = re.search(r"Plasma memory usage (\d+(?:\.\d+)?) MiB", text)
    return float(m.group(1)) if m else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--at", default="10,50", help="baseline and final iteration of the ratio")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per iteration")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--backend", default="vllm", choices=["vllm", "transformers"])
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--pairs-retention", type=int, default=2,
                    help="storage.pairs_retention_iterations (2, a run's default; 0: every pair kept in Redis)")  # fmt: skip
    ap.add_argument("--out", default=None, help="JSON file for every iteration's numbers")
    args = ap.parse_args()
    base, final = (int(x) for x in args.at.split(","))
    assert 1 <= base < final <= args.iterations, "--at needs 1 <= baseline < final <= --iterations"
    logging.basicConfig(level=logging.WARNING)

    import ray

    from sparring.services.launch import init_ray
    from sparring.tasks.arena.policy import build_arena_model
    from sparring.workers.controller import RunController
    from sparring.workers.groups import RayRuntime

    work = Path(tempfile.mkdtemp(prefix="memory-soak-"))
    cfg = parse_config(
        {
            "name": "memory-soak",
            "policy": {"path": "arena"},
            "judge": {"kind": "arena_oracle"},
            "prompts": {"source": "arena"},
            "generation": {"backend": args.backend, "num_generators": 1, "samples_per_prompt": args.samples,
                           "prompts_per_request": 16, "max_new_tokens": args.max_new_tokens},  # fmt: skip
            "trainer": {"learning_rate": 1e-4, "batch_size": 8, "torch_threads": 1},
            "schedule": {"iterations": args.iterations, "prompts_per_iteration": args.prompts},
            "eval": {"enabled": False},
            "storage": {"run_dir": str(work), "weight_transport": "safetensors_dir",
                        "pairs_retention_iterations": args.pairs_retention or None},  # fmt: skip
        }
    )
    model = str(build_arena_model(0))
    per_iter: list[dict[str, Any]] = []
    with PrivateRedis(work / "redis") as server:
        client = connect(server.url)
        init_ray()
        run_id = f"soak-{time.time_ns()}"
        run_dir = work / run_id
        run_dir.mkdir()
        store = RunStore(client)
        store.create_run(run_id, cfg.model_dump(mode="json"), str(run_dir))
        t0 = time.monotonic()

        class SoakController(RunController):
            """Measures after each recorded iteration, in the controller's thread: the workers are idle and alive."""

            def run_iteration(self, t: int) -> Any:
                record = super().run_iteration(t)
                row = {
                    "iteration": t,
                    "seconds": round(time.monotonic() - t0, 1),
                    "rss_mb": snapshot(os.getpid()),
                    "rss_parts": breakdown(os.getpid()),
                    "redis_used_mb": int(client.info("memory")["used_memory"]) / MB,
                    "redis_key_bytes": redis_key_bytes(client),
                    "object_store_mb": object_store_mb(),
                }
                per_iter.append(row)
                total = sum(row["rss_mb"].values())
                print(f"iteration {t:3d}  {row['seconds']:7.1f}s  rss total {total:8.1f} MB  "  # noqa: T201
                      f"redis {row['redis_used_mb']:6.2f} MB  object store {row['object_store_mb']:.1f} MB", flush=True)  # fmt: skip
                if args.out:
                    Path(args.out).write_text(json.dumps(per_iter, indent=1))
                return record

        controller = SoakController(run_id, cfg.model_dump_json(), server.url, str(run_dir), model, RayRuntime())
        try:
            controller.run(keep_workers=True)
        finally:
            controller.shutdown()
            ray.shutdown()
            client.close()
    by_iteration = {row["iteration"]: row for row in per_iter}
    a, b = by_iteration[base], by_iteration[final]
    print(f"\n| process | RSS MB at iteration {base} | at iteration {final} | ratio |")  # noqa: T201
    print("|---|---|---|---|")  # noqa: T201
    ratios: dict[str, float] = {}
    for name in sorted(set(a["rss_mb"]) | set(b["rss_mb"])):
        x, y = a["rss_mb"].get(name), b["rss_mb"].get(name)
        if x is None or y is None:
            print(f"| {name} | {x if x is None else f'{x:.1f}'} | {y if y is None else f'{y:.1f}'} | - |")  # noqa: T201
            continue
        ratios[name] = y / x
        print(f"| {name} | {x:.1f} | {y:.1f} | {y / x:.3f} |")  # noqa: T201
    ratios["redis used_memory"] = b["redis_used_mb"] / a["redis_used_mb"]
    print(f"| redis used_memory | {a['redis_used_mb']:.2f} | {b['redis_used_mb']:.2f} | {ratios['redis used_memory']:.3f} |")  # noqa: T201
    print(f"| object store (used) | {a['object_store_mb']:.1f} | {b['object_store_mb']:.1f} | - |")  # noqa: T201
    grown = sorted(ratios, key=lambda k: -ratios[k])[:3]
    print(f"\nwhat grew (the 3 largest ratios; MB from iteration {base} to {final}):")  # noqa: T201
    for name in grown:
        pa, pb = a.get("rss_parts", {}).get(name), b.get("rss_parts", {}).get(name)
        if pa and pb:
            print(f"  {name}: " + ", ".join(f"{k} {pa[k]:.1f} -> {pb[k]:.1f}" for k in pa))  # noqa: T201
    worst = max(ratios, key=lambda k: ratios[k])
    result = {
        "bench": "memory_soak",
        "iterations": args.iterations,
        "baseline_iteration": base,
        "final_iteration": final,
        "backend": args.backend,
        "prompts_per_iteration": args.prompts,
        "pairs_retention_iterations": args.pairs_retention or None,
        "seconds": per_iter[-1]["seconds"],
        "max_ratio": round(ratios[worst], 4),
        "max_ratio_process": worst,
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
        "within_10pct": all(r <= 1.10 for r in ratios.values()),
    }
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
