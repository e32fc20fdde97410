"""Does a vLLM CPU engine's memory grow with its calls: sparring's engine settings against vLLM's defaults.

    .venv/bin/python bench/vllm_memory.py            # 15 calls per phase
    .venv/bin/python bench/vllm_memory.py --calls 30

Builds sparring's vLLM engine (`workers/generation.py`, CPU) on the arena policy twice in one run: first with
the allocator settings of `workers/vllm_llm.py::CPU_ENGINE_ENV` at oneDNN's and glibc's defaults (the baseline:
ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024, MALLOC_ARENA_MAX=8 x cores), then as sparring starts it. Each engine is
warmed (one generate, one reload), then the anonymous RSS (/proc/PID/status `RssAnon`, MB) of each of its
processes (EngineCore, the model-runner `VLLM::Worker`) is measured after N `load_weights` of the same
checkpoint (what a safetensors-dir weight sync does) and after every 5 of N `generate` calls of 32 prompts x 4
samples x 24 tokens (one iteration's batches of bench/memory_soak.py), timed. Prints each engine's series, MB
per call and generated tokens per second, and last one JSON object with the ratios sparring / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import psutil

WORKER = "VLLM::Worker"


def anon_mb() -> dict[str, float]:
    """RssAnon (MB) of every child process of this one, by process title."""
    out: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = (proc.cmdline() or [proc.name()])[0].split()[0]
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except (psutil.Error, OSError, IndexError):
            continue
        kb = next((line.split()[1] for line in status.splitlines() if line.startswith("RssAnon")), "0")
        out[Path(title).name] = round(int(kb) / 1024, 1)
    return out


def measure(env: dict[str, str], calls: int) -> dict[str, Any]:
    """One engine spawned with `env` over the process's environment: its RSS series and generation speed."""
    from sparring.shared.config import GenerationConfig
    from sparring.shared.models import load_tokenizer, prompt_token_ids
    from sparring.tasks.arena.policy import build_arena_model
    from sparring.workers.generation import SamplingSpec, make_engine

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # read by the engine's processes when they are spawned (vllm_llm.engine_env keeps it)
    try:
        model = str(build_arena_model(0))
        engine = make_engine("vllm", model, GenerationConfig(backend="vllm", max_new_tokens=24), "bench", 0, cpu_threads=1)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    tok = load_tokenizer(model)
    prompts = [prompt_token_ids(tok, f"say {i} things about rivers") for i in range(32)]
    specs = [SamplingSpec(n=4, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=i) for i in range(32)]
    engine.generate(prompts, specs)
    engine.load_weights(model)
    series = {"warm": anon_mb()}
    for _ in range(calls):
        engine.load_weights(model)
    series["reloads"] = anon_mb()
    tokens, seconds = 0, 0.0
    for i in range(1, calls + 1):
        t0 = time.perf_counter()
        out = engine.generate(prompts, specs)
        seconds += time.perf_counter() - t0
        tokens += sum(len(c.token_ids) for group in out for c in group)
        if i % 5 == 0 or i == calls:
            series[f"generate_{i}"] = anon_mb()
    engine.close()
    worker = {phase: v.get(WORKER, 0.0) for phase, v in series.items()}
    first = min(5, calls)  # growth after the first 5 calls: warm-up over, or still growing?
    return {
        "rss_anon_mb": series,
        "worker_mb_per_reload": round((worker["reloads"] - worker["warm"]) / calls, 2),
        "worker_mb_per_generate": round((worker[f"generate_{calls}"] - worker["reloads"]) / calls, 2),
        "worker_mb_per_generate_after_5": round((worker[f"generate_{calls}"] - worker[f"generate_{first}"]) / max(calls - first, 1), 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=15, help="calls per phase (a multiple of 5 reads best)")
    args = ap.parse_args()
    from sparring.workers.vllm_llm import CPU_ENGINE_ENV

    defaults = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))}
    assert set(defaults) == set(CPU_ENGINE_ENV), "the baseline must undo every setting of CPU_ENGINE_ENV"
    results = {"defaults": measure(defaults, args.calls), "sparring": measure({}, args.calls)}
    for name, r in results.items():
        print(f"== {name}: {WORKER} {r['worker_mb_per_reload']:+.2f} MB per reload, {r['worker_mb_per_generate']:+.2f} MB "  # noqa: T201
              f"per generate ({r['worker_mb_per_generate_after_5']:+.2f} after the first 5), {r['tokens_per_s']} tokens/s")  # fmt: skip
        for phase, values in r["rss_anon_mb"].items():
            print(f"   {phase:12s} " + "  ".join(f"{k} {v:.1f} MB" for k, v in sorted(values.items())))  # noqa: T201
    d, s = results["defaults"], results["sparring"]
    print(json.dumps({"bench": "vllm_memory", "calls": args.calls, "env": CPU_ENGINE_ENV, "results": results,  # noqa: T201
                      "worker_growth_ratio": round(s["worker_mb_per_generate"] / d["worker_mb_per_generate"], 3)
                      if d["worker_mb_per_generate"] else None,
                      "tokens_per_s_ratio": round(s["tokens_per_s"] / d["tokens_per_s"], 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
