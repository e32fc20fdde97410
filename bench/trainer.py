"""Training throughput: our DPO trainer against TRL's DPOTrainer, same model, data, batch and run.

    .venv/bin/python bench/trainer.py [--pairs 512] [--batch-size 32] [--rounds 3] [--threads 1]
        [--model arena|qwen2-0.5b-shape] [--layers N] [--device cpu|cuda] [--dtype float32|bfloat16]

Needs the `bench` extra (trl==1.16.0, which brings accelerate and datasets).

Both trainers train a fresh copy of the same initial policy for one epoch of DPO on the same pairs: batch
`--batch-size` pairs per optimizer step, AdamW, linear schedule with 10% warmup, grad-norm clip 1.0,
beta 0.1, dropout off, no gradient checkpointing, reference = a frozen copy of the initial policy whose
log-probs are computed on the fly by TRL (`precompute_ref_log_probs=False`, its default) and once up front
by ours. Rounds alternate (ours, TRL, ours, TRL, ...) after one untimed warm-up of each, and the median of
the per-round ratios is reported, because these machines are noisy.

"Tokens" are prompt+chosen plus prompt+rejected tokens of every pair (docs/benchmarks.md); the time is
the wall time of `PolicyTrainer.train_iteration` / `DPOTrainer.train` (construction, model loading and
TRL's dataset preparation are outside it; the reference pass is inside it for both). TRL gets exactly the
token sequences our trainer trains on (its `tokenize_pairs` output, EOS included), as a pre-tokenised
dataset (`prompt_ids` / `chosen_ids` / `rejected_ids`); the tokens TRL's collator actually delivers are
counted and must equal ours.

Models: `arena` is the cached arena policy (`build_arena_model(0)`, tiny Llama, vocab 888) with pairs of
arena train prompts and two arena-corpus responses of about `--response-tokens` tokens. `qwen2-0.5b-shape`
is a random-init Qwen2ForCausalLM with Qwen2-0.5B's shape (`--layers` overrides its 24 layers) and random
token-id pairs of about `--prompt-tokens` + `--response-tokens` tokens; it is meant for a GPU.

Prints one line per round, then the result as JSON on the last line.

    .venv/bin/python bench/trainer.py --report-memory [--memory-chunks 256] [--threads 1]

`--report-memory` instead measures the peak memory of one DPO iteration (reference pass, then one
optimizer step) at the 131k Tekken vocabulary: tests/families.py's mistral shape (hidden 64, untied head,
2 layers, 16.8M parameters, nearly all in the 131,072-row embedding and head), 8 pairs of exactly 256 prompt
+ 256 answer tokens (batch 8 x 512 tokens, 4,096 answer positions), once with the LM head unchunked
(`trainer.logps_chunk_tokens: null`) and once per chunk size, each in a fresh process. Peak = the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs after loading) during
`train_iteration`, minus its resident set before it: the memory the iteration adds on top of the loaded
models. Prints one line per setting, the ratio unchunked / chunked, and the JSON last line.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from sparring.shared.config import DPOConfig, TrainerConfig
from sparring.shared.models import load_causal_lm, load_tokenizer, prompt_token_ids
from sparring.shared.records import Completion, PreferencePair
from sparring.tasks.arena import rules as arena
from sparring.tasks.arena.policy import build_arena_model
from sparring.workers.trainer import PolicyTrainer

QWEN2_05B_SHAPE: dict[str, Any] = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
BETA = 0.1
WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0


# --------------------------------------------------------------------------------------------------
# Models and data


def build_qwen2_shape_dir(out: Path, layers: int | None, tokenizer_dir: str, seed: int) -> Path:
    """Random-init Qwen2ForCausalLM with Qwen2-0.5B's shape, saved (fp32) with a stand-in tokenizer.

    The tokenizer only supplies pad/eos ids to both trainers; the data is token ids drawn directly.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = load_tokenizer(tokenizer_dir)
    shape = dict(QWEN2_05B_SHAPE)
    if layers is not None:
        shape["num_hidden_layers"] = layers
    cfg = Qwen2Config(
        **shape, pad_token_id=int(tok.pad_token_id), eos_token_id=int(tok.eos_token_id), bos_token_id=None
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _completion(index: int, ids: list[int], finish_reason: str) -> Completion:
    return Completion(
        index=index, text="", token_ids=ids, logprobs=[0.0] * len(ids), finish_reason=finish_reason
    )


def _pair(
    i: int, prompt_id: str, prompt: str, prompt_ids: list[int], chosen: Completion, rejected: Completion
) -> PreferencePair:
    return PreferencePair(
        run_id="bench-trainer",
        iteration=1,
        policy_version=0,
        prompt_id=f"{prompt_id}#{i}",
        prompt=prompt,
        prompt_token_ids=prompt_ids,
        chosen=chosen,
        rejected=rejected,
        chosen_score=1.0,
        rejected_score=0.0,
        win_prob=1.0,
        judge="bench",
    )


def arena_pairs(tok: Any, n: int, response_tokens: int) -> list[PreferencePair]:
    """Arena train prompts (cycled) with two distinct corpus responses of response_tokens +- 8 tokens each.

    Deterministic (seeded per pair). Completions end with finish_reason "stop", so our trainer appends
    EOS as it does for sampled responses; TRL is given the same ids, EOS included.
    """
    prompts = arena.arena_prompts("train")
    lo, hi = max(1, response_tokens - 8), response_tokens + 8
    out = []
    for i in range(n):
        p = prompts[i % len(prompts)]
        rng = random.Random(f"bench-trainer-{i}")
        responses: list[list[int]] = []
        while len(responses) < 2:
            ids = [
                int(t)
                for t in tok(arena.corpus_response(p.topic, rng), add_special_tokens=False)["input_ids"]
            ]
            if lo <= len(ids) <= hi and ids not in responses:
                responses.append(ids)
        out.append(
            _pair(i, p.prompt_id, p.prompt, prompt_token_ids(tok, p.prompt),
                  _completion(0, responses[0], "stop"), _completion(1, responses[1], "stop"))
        )  # fmt: skip
    return out


def random_pairs(
    n: int, vocab: int, prompt_tokens: int, response_tokens: int, seed: int
) -> list[PreferencePair]:
    """Token-id pairs for a tokenizer-free model: prompt 0.5-1.5x, responses 0.75-1.25x the given lengths."""
    rng = random.Random(f"bench-trainer-random-{seed}")
    low = 4  # clear of the stand-in tokenizer's special ids

    def ids(mean: int, spread: float) -> list[int]:
        k = rng.randint(max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread))))
        return [rng.randrange(low, vocab) for _ in range(k)]

    return [
        _pair(i, "random", "random", ids(prompt_tokens, 0.5),
              _completion(0, ids(response_tokens, 0.25), "length"), _completion(1, ids(response_tokens, 0.25), "length"))
        for i in range(n)
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The two trainers


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def make_ours(model_dir: str, args: argparse.Namespace) -> PolicyTrainer:
    trainer_cfg = TrainerConfig(
        learning_rate=args.lr,
        epochs=1,
        batch_size=args.batch_size,
        micro_batch_size=None,
        optimizer="adamw",
        weight_decay=0.0,
        scheduler="linear",
        warmup_ratio=WARMUP_RATIO,
        max_grad_norm=MAX_GRAD_NORM,
        torch_threads=args.threads,
    )
    algo_cfg = DPOConfig(beta=BETA, reference="initial")
    return PolicyTrainer(
        model_dir, trainer_cfg, algo_cfg, seed=args.seed, device=args.device, dtype=args.dtype
    )


def run_ours(model_dir: str, pairs: list[PreferencePair], args: argparse.Namespace) -> dict[str, float]:
    trainer = make_ours(model_dir, args)
    torch.set_num_threads(args.threads)
    _sync(args.device)
    t0, c0 = time.perf_counter(), time.process_time()
    result = trainer.train_iteration(pairs, iteration=1)
    _sync(args.device)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if result.rejected:
        raise RuntimeError(f"our trainer rejected {len(result.rejected)} pairs, e.g. {result.rejected[0]}")
    m = result.metrics
    examples, _ = trainer.tokenize_pairs(pairs)
    padded = sum(
        2 * len(idx) * max(examples[i].width for i in idx.tolist())
        for idx in trainer.epoch_steps(examples, 1, 0, args.batch_size)
    )
    del trainer
    _free(args.device)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens": m["train/tokens"],
        "padded_tokens": float(padded),
        "tokens_per_s": m["train/tokens"] / seconds,
        "reference_seconds": m["train/reference_seconds"],
        "loss": m["loss/mean"],
        "steps": m["train/steps"],
    }


class _CountingCollator:
    """Wraps TRL's collator; counts real (attention_mask) and padded tokens of every batch it builds."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0
        self.padded = 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.inner(examples)
        self.tokens += int(out["attention_mask"].sum())
        self.padded += int(out["input_ids"].numel())
        return out


def _threads_callback_class() -> type:
    from transformers import TrainerCallback

    class ThreadsSeen(TrainerCallback):
        """Records torch's intra-op thread count at every step (nothing in TRL may change it unseen)."""

        def __init__(self) -> None:
            self.seen: set[int] = set()

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            self.seen.add(torch.get_num_threads())

    return ThreadsSeen


def _trl_trainer_class() -> type:
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer that takes a dataset already holding prompt_ids / chosen_ids / rejected_ids as-is.

        TRL 1.16's `_prepare_dataset` always (re)tokenises text columns; these are the exact ids our
        trainer trains on, so its output format is passed straight to TRL's own collator and loss.
        """

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: ANN001
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return PretokenizedDPOTrainer


def trl_config(args: argparse.Namespace, out_dir: str) -> Any:
    from trl import DPOConfig

    return DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=WARMUP_RATIO,  # a float < 1 is a ratio: ceil(0.1 * steps), as ours
        weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM,
        beta=BETA,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=False,
        max_length=None,  # ours never truncates
        disable_dropout=True,
        gradient_checkpointing=False,
        bf16=False,  # TRL's default is bf16=True (mixed precision); weights dtype is --dtype for both
        fp16=False,
        use_cpu=args.device == "cpu",
        seed=args.seed,
        data_seed=args.seed,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def run_trl(model_dir: str, dataset: Any, args: argparse.Namespace) -> dict[str, float]:
    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dtype=args.dtype, device=args.device)
    ref = copy.deepcopy(model).requires_grad_(False).eval()
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out_dir:
        trainer = _trl_trainer_class()(
            model=model,
            ref_model=ref,
            args=trl_config(args, out_dir),
            train_dataset=dataset,
            processing_class=tok,
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # disable_tqdm=True adds it; it prints the final metrics
        threads_seen = _threads_callback_class()()
        trainer.add_callback(threads_seen)
        counter = _CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        torch.set_num_threads(args.threads)
        _sync(args.device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = trainer.train()
        _sync(args.device)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    steps = float(trainer.state.global_step)
    if threads_seen.seen != {args.threads}:
        raise RuntimeError(f"TRL trained with torch thread counts {threads_seen.seen}, not {args.threads}")
    del trainer, model, ref
    _free(args.device)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens": float(counter.tokens),
        "padded_tokens": float(counter.padded),
        "tokens_per_s": counter.tokens / seconds,
        "train_runtime": float(out.metrics["train_runtime"]),  # TRL's own clock: inside train(), after setup
        "loss": float(out.training_loss),
        "steps": steps,
    }


# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# --report-memory: peak memory of one iteration at the 131k Tekken vocabulary, LM head chunked vs not

TEKKEN_VOCAB = 131_072  # Mistral-Nemo-Instruct-2407's tekken.json default_vocab_size (tests/families.py)
MEMORY_PAIRS, MEMORY_PROMPT_TOKENS, MEMORY_ANSWER_TOKENS = 8, 256, 256


def build_tekken_shape_dir(out: Path, tokenizer_dir: str, seed: int) -> Path:
    """tests/families.py's mistral checkpoint shape (hidden 64, untied, vocab 131,072), random init, with a
    stand-in tokenizer for pad/eos ids (the data is token ids drawn directly, as for qwen2-0.5b-shape)."""
    from transformers import MistralConfig, MistralForCausalLM

    tok = load_tokenizer(tokenizer_dir)
    cfg = MistralConfig(
        vocab_size=TEKKEN_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        num_key_value_heads=1, head_dim=64, max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=1_000_000.0,
        sliding_window=None, tie_word_embeddings=False, pad_token_id=int(tok.pad_token_id),
        eos_token_id=int(tok.eos_token_id), bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    MistralForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _rss_kib(field: str) -> int:
    """VmRSS / VmHWM of this process in KiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(model_dir: str, chunk: int | None, args: argparse.Namespace) -> dict[str, Any]:
    """One DPO iteration (batch = all 8 pairs: one reference pass, one optimizer step) with the given
    `logps_chunk_tokens`; the peak resident memory it adds over the loaded trainer, and its wall time."""
    torch.set_num_threads(args.threads)
    trainer = PolicyTrainer(
        model_dir,
        TrainerConfig(
            learning_rate=args.lr, batch_size=MEMORY_PAIRS, torch_threads=args.threads, logps_chunk_tokens=chunk
        ),
        DPOConfig(beta=BETA, reference="initial"),
        seed=args.seed,
    )
    rng = random.Random(f"bench-trainer-memory-{args.seed}")

    def ids(k: int) -> list[int]:
        return [rng.randrange(4, TEKKEN_VOCAB) for _ in range(k)]

    pairs = [
        _pair(i, "random", "random", ids(MEMORY_PROMPT_TOKENS), _completion(0, ids(MEMORY_ANSWER_TOKENS), "length"),
              _completion(1, ids(MEMORY_ANSWER_TOKENS), "length"))
        for i in range(MEMORY_PAIRS)
    ]  # fmt: skip
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = _rss_kib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    result = trainer.train_iteration(pairs, iteration=1)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_kib("VmHWM")
    if result.rejected or result.metrics["train/steps"] != 1:
        raise RuntimeError(f"expected one step on {MEMORY_PAIRS} pairs, got {result.metrics}, {result.rejected}")
    return {
        "chunk": chunk,
        "peak_extra_mib": round((peak - before) / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_before_mib": round(before / 1024, 1),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "loss": result.metrics["loss/mean"],
        "grad_norm": result.metrics["train/grad_norm"],
        "answer_tokens": int(result.metrics["train/tokens"]) - 2 * MEMORY_PAIRS * MEMORY_PROMPT_TOKENS,
    }


def report_memory(args: argparse.Namespace) -> None:
    """Runs `memory_child` in a fresh process per setting (unchunked first), prints the ratio and the JSON."""
    chunks = [int(c) for c in args.memory_chunks.split(",")]
    if any(c < 1 for c in chunks):
        raise SystemExit(f"--memory-chunks must be positive integers, got {args.memory_chunks!r}")
    arena_dir = str(build_arena_model(0))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-trainer-memory-") as tmp:
        model_dir = str(build_tekken_shape_dir(Path(tmp) / "tekken", arena_dir, args.seed))
        for chunk in [None, *chunks]:
            cmd = [sys.executable, __file__, "--memory-child", model_dir, "--threads", str(args.threads),
                   "--lr", str(args.lr), "--seed", str(args.seed), "--memory-chunks", str(chunk or 0)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            runs.append(run)
            print(
                f"logps_chunk_tokens {run['chunk'] or 'null (unchunked)'}: peak +{run['peak_extra_mib']:.0f} MiB over "
                f"the loaded trainer ({run['rss_before_mib']:.0f} MiB -> {run['peak_rss_mib']:.0f} MiB resident), "
                f"{run['seconds']:.1f} s ({run['cpu_seconds']:.1f} s CPU), loss {run['loss']:.6f}, grad norm {run['grad_norm']:.6g}",
                flush=True,
            )
    base = runs[0]
    for run in runs[1:]:  # same data, seed and step: the same loss and gradient, whatever the chunk
        for key in ("loss", "grad_norm"):
            if not math.isclose(run[key], base[key], rel_tol=1e-4):
                raise RuntimeError(f"chunk {run['chunk']}: {key} {run[key]} != unchunked {base[key]}")
    chosen = next(r for r in runs[1:] if r["chunk"] == chunks[0])
    ratio = base["peak_extra_mib"] / chosen["peak_extra_mib"]
    print(f"peak extra memory unchunked / chunk {chunks[0]}: {ratio:.1f}x", flush=True)
    print(json.dumps({
        "report": "memory",
        "vocab": TEKKEN_VOCAB,
        "pairs": MEMORY_PAIRS,
        "tokens_per_sequence": MEMORY_PROMPT_TOKENS + MEMORY_ANSWER_TOKENS,
        "answer_tokens": base["answer_tokens"],
        "threads": args.threads,
        "unchunked_peak_extra_mib": base["peak_extra_mib"],
        "chunk": chunks[0],
        "chunked_peak_extra_mib": chosen["peak_extra_mib"],
        "ratio_unchunked_over_chunked": round(ratio, 2),
        "runs": runs,
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of each trainer, alternating")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="weights dtype of both"
    )
    ap.add_argument("--model", default="arena", choices=["arena", "qwen2-0.5b-shape"])
    ap.add_argument("--layers", type=int, default=None, help="qwen2-0.5b-shape: override its 24 layers")
    ap.add_argument("--prompt-tokens", type=int, default=40, help="qwen2-0.5b-shape: mean prompt length")
    ap.add_argument("--response-tokens", type=int, default=40, help="mean response length")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run of each trainer")
    ap.add_argument(
        "--report-memory", action="store_true", help="peak memory at vocab 131k, LM head chunked vs unchunked"
    )
    ap.add_argument(
        "--memory-chunks", default="256", help="--report-memory: logps_chunk_tokens to measure (comma-separated)"
    )
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # internal: one --report-memory run
    args = ap.parse_args()
    if args.memory_child is not None:
        logging.basicConfig(level=logging.ERROR)
        warnings.filterwarnings("ignore")
        print(json.dumps(memory_child(args.memory_child, int(args.memory_chunks) or None, args)))
        return
    if args.report_memory:
        report_memory(args)
        return

    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "trl", "accelerate", "datasets", "sparring"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)

    arena_dir = str(build_arena_model(0))
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        if args.model == "arena":
            model_dir = arena_dir
            pairs = arena_pairs(load_tokenizer(model_dir), args.pairs, args.response_tokens)
        else:
            model_dir = str(build_qwen2_shape_dir(Path(tmp) / "qwen2", args.layers, arena_dir, args.seed))
            pairs = random_pairs(
                args.pairs, QWEN2_05B_SHAPE["vocab_size"], args.prompt_tokens, args.response_tokens, args.seed
            )

        # TRL trains on exactly the sequences ours does: our trainer's own tokenisation (EOS appended).
        probe = make_ours(model_dir, args)
        examples, rejected = probe.tokenize_pairs(pairs)
        params = sum(p.numel() for p in probe.model.parameters())
        del probe
        _free(args.device)
        if rejected:
            raise RuntimeError(f"{len(rejected)} pairs rejected, e.g. {rejected[0]}")
        dataset = Dataset.from_dict(
            {
                "prompt_ids": [e.prompt_ids for e in examples],
                "chosen_ids": [e.chosen_ids for e in examples],
                "rejected_ids": [e.rejected_ids for e in examples],
            }
        )
        expected_tokens = sum(e.num_tokens for e in examples)
        mean_response = statistics.mean(len(e.chosen_ids) + len(e.rejected_ids) for e in examples) / 2
        mean_prompt = statistics.mean(len(e.prompt_ids) for e in examples)
        print(
            f"model {args.model} ({params / 1e6:.2f}M params, {args.dtype}) on {args.device}, "
            f"{len(examples)} pairs (prompt {mean_prompt:.1f}, response {mean_response:.1f} tokens on average, "
            f"{expected_tokens} tokens), batch {args.batch_size}, {args.threads} thread(s)",
            flush=True,
        )

        if not args.no_warmup:
            n = min(len(pairs), 2 * args.batch_size)
            run_ours(model_dir, pairs[:n], args)
            run_trl(model_dir, dataset.select(range(n)), args)

        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            ours = run_ours(model_dir, pairs, args)
            trl = run_trl(model_dir, dataset, args)
            for name, res in (("ours", ours), ("trl", trl)):
                if int(res["tokens"]) != expected_tokens:
                    raise RuntimeError(
                        f"{name} trained on {res['tokens']} tokens, expected {expected_tokens}"
                    )
            ratio = ours["tokens_per_s"] / trl["tokens_per_s"]
            cpu_ratio = (
                trl["cpu_seconds"] / ours["cpu_seconds"]
            )  # same tokens: the throughput ratio in CPU time
            rounds.append({"ours": ours, "trl": trl, "ratio": ratio, "cpu_ratio": cpu_ratio})
            print(
                f"round {r + 1}: ours {ours['tokens_per_s']:.0f} tok/s ({ours['seconds']:.2f} s, reference "
                f"{ours['reference_seconds']:.2f} s, loss {ours['loss']:.4f}) | TRL {trl['tokens_per_s']:.0f} tok/s "
                f"({trl['seconds']:.2f} s, of which train_runtime {trl['train_runtime']:.2f} s, loss {trl['loss']:.4f}) "
                f"| ratio {ratio:.2f} (CPU-time ratio {cpu_ratio:.2f})",
                flush=True,
            )

    median = statistics.median
    ours_tps = median(r["ours"]["tokens_per_s"] for r in rounds)
    trl_tps = median(r["trl"]["tokens_per_s"] for r in rounds)
    result = {
        "model": args.model,
        "params_m": round(params / 1e6, 2),
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "pairs": len(examples),
        "batch_size": args.batch_size,
        "tokens_per_round": expected_tokens,
        "padding_fraction_ours": round(1 - expected_tokens / rounds[0]["ours"]["padded_tokens"], 3),
        "padding_fraction_trl": round(1 - expected_tokens / rounds[0]["trl"]["padded_tokens"], 3),
        "rounds": args.rounds,
        "ours_tokens_per_s": round(ours_tps),
        "trl_tokens_per_s": round(trl_tps),
        "ratio_ours_over_trl": round(median(r["ratio"] for r in rounds), 3),
        "ratios": [round(r["ratio"], 3) for r in rounds],
        # process CPU time instead of wall time: less sensitive to other processes on a shared machine
        "cpu_time_ratio_ours_over_trl": round(median(r["cpu_ratio"] for r in rounds), 3),
        "cpu_time_ratios": [round(r["cpu_ratio"], 3) for r in rounds],
        "ours_seconds": [round(r["ours"]["seconds"], 2) for r in rounds],
        "trl_seconds": [round(r["trl"]["seconds"], 2) for r in rounds],
        "ours_reference_seconds": [round(r["ours"]["reference_seconds"], 2) for r in rounds],
        "trl_train_runtime": [round(r["trl"]["train_runtime"], 2) for r in rounds],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
