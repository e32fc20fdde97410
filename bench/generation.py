"""Generation throughput: the vLLM engine against the transformers engine, same model, prompts and run.

    .venv/bin/python bench/generation.py [--prompts 128] [--samples 4] [--max-new-tokens 48]

Both engines sample K responses per arena prompt (temperature 1, per-prompt seeds) through the same
`GenerationEngine` interface the generator actors use, one compute thread each. Prints tokens/s of each
and the ratio vLLM / transformers (the baseline is measured in the same run: these machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import time

from sparring.shared.config import GenerationConfig
from sparring.shared.models import load_tokenizer, prompt_token_ids
from sparring.tasks.arena.policy import build_arena_model
from sparring.tasks.arena.rules import arena_prompts
from sparring.workers.generation import SamplingSpec, make_engine


def measure(backend: str, model: str, prompts: list[list[int]], specs: list[SamplingSpec], repeats: int) -> float:
    engine = make_engine(backend, model, GenerationConfig(), f"bench-{backend}", seed=0, cpu_threads=1)
    try:
        engine.generate(prompts[:4], specs[:4])  # warm-up
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = engine.generate(prompts, specs)
            seconds = time.perf_counter() - t0
            tokens = sum(len(s.token_ids) for group in out for s in group)
            best = max(best, tokens / seconds)
        return best
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model = str(build_arena_model(0))
    tok = load_tokenizer(model)
    arena = arena_prompts("train")[: args.prompts]
    prompts = [prompt_token_ids(tok, p.prompt) for p in arena]
    specs = [SamplingSpec(args.samples, 1.0, 1.0, args.max_new_tokens, seed=i) for i in range(len(arena))]
    hf = measure("transformers", model, prompts, specs, args.repeats)
    vllm = measure("vllm", model, prompts, specs, args.repeats)
    result = {
        "prompts": args.prompts,
        "samples_per_prompt": args.samples,
        "transformers_tokens_per_s": round(hf),
        "vllm_tokens_per_s": round(vllm),
        "ratio_vllm_over_transformers": round(vllm / hf, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
