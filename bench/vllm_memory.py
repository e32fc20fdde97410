"""Which vLLM call grows the engine's processes: weight reloads alone, generation alone, reloads + malloc_trim.

    .venv/bin/python bench/vllm_memory.py            # 15 calls per phase
    .venv/bin/python bench/vllm_memory.py --calls 30

Builds sparring's vLLM engine (`workers/generation.py`, CPU) on the arena policy, warms it (one generate, one
reload), then measures the anonymous RSS (/proc/PID/status `RssAnon`, MB) of each of the engine's processes
(EngineCore, the model-runner `VLLM::Worker`) after each phase: N `load_weights` of the same checkpoint
(what a safetensors-dir weight sync does), N `generate` calls of 32 prompts x 4 samples x 24 tokens (one
iteration's batches of bench/memory_soak.py), N reloads each followed by glibc `malloc_trim(0)` in the worker
(through `collective_rpc`). Prints MB per call of each phase and, last, one JSON object; the baseline is the
warmed engine of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import psutil


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


def trim(worker: object) -> int:
    """glibc malloc_trim(0) in the worker process: give freed heap pages back to the OS."""
    import ctypes

    return int(ctypes.CDLL("libc.so.6").malloc_trim(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=15, help="calls per phase")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc of `trim` (a function)

    from sparring.shared.config import GenerationConfig
    from sparring.shared.models import load_tokenizer, prompt_token_ids
    from sparring.tasks.arena.policy import build_arena_model
    from sparring.workers.generation import SamplingSpec, make_engine

    model = str(build_arena_model(0))
    engine = make_engine("vllm", model, GenerationConfig(backend="vllm", max_new_tokens=24), "bench", 0, cpu_threads=1)
    tok = load_tokenizer(model)
    prompts = [prompt_token_ids(tok, f"say {i} things about rivers") for i in range(32)]
    specs = [SamplingSpec(n=4, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=i) for i in range(32)]
    engine.generate(prompts, specs)
    engine.load_weights(model)
    phases = {"warm": anon_mb()}
    for _ in range(args.calls):
        engine.load_weights(model)
    phases["reloads"] = anon_mb()
    for _ in range(args.calls):
        engine.generate(prompts, specs)
    phases["generates"] = anon_mb()
    for _ in range(args.calls):
        engine.load_weights(model)
        engine._llm.collective_rpc(trim)  # the engine's vllm.LLM
    phases["reloads_with_trim"] = anon_mb()
    engine.close()
    worker = "VLLM::Worker"
    names = list(phases)
    per_call = {b: round((phases[b].get(worker, 0) - phases[a].get(worker, 0)) / args.calls, 2) for a, b in zip(names, names[1:], strict=False)}
    for name, values in phases.items():
        print(f"{name:18s} " + "  ".join(f"{k} {v:.1f} MB" for k, v in sorted(values.items())))  # noqa: T201
    print(f"{worker} MB per call: " + ", ".join(f"{k} {v:+.2f}" for k, v in per_call.items()))  # noqa: T201
    ratio = phases["generates"].get(worker, 0) / max(phases["warm"].get(worker, 1), 1e-9)
    print(json.dumps({"bench": "vllm_memory", "calls": args.calls, "rss_anon_mb": phases, "worker_mb_per_call": per_call,
                      "worker_ratio_after_generates_vs_warm": round(ratio, 4)}))  # noqa: T201  # fmt: skip


if __name__ == "__main__":
    main()
