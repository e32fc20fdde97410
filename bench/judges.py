"""PairRM judge throughput: batched K x K scoring against a one-pair-at-a-time loop, same pairs, same run.

    .venv/bin/python bench/judges.py [--groups 16] [--k 4] [--batch-size 32] [--rounds 3] [--threads 1]
        [--model DIR]

The model is `--model` (a PairRM dir) or a randomly initialised arena-shaped PairRM (DeBERTa-v2 with the
arena PairRM's build settings and tokenizer) built in a temp dir. The pairs are all K(K-1) ordered pairs of
`--groups` held-out arena prompts with K arena-corpus responses each. "Batched" is `PairRM.rank` (all
pairs of all groups, length-sorted, `--batch-size` rows per forward); "loop" runs one forward per pair
(llm-blender's per-pair loop with batch size 1). Rounds alternate after one warm-up of each; the median
per-round ratio is reported. Prints one line per round, then the result as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sparring.tasks.arena import ranker
from sparring.tasks.arena import rules as arena
from sparring.workers.judges import pairrm as prm
from sparring.workers.judges import pairrm_train as pt


def _model_dir(tmp: Path) -> Path:
    rng = random.Random(0)
    train = arena.arena_prompts("train")
    texts = [p.prompt for p in train] + [arena.corpus_response(p.topic, rng) for p in train for _ in range(2)]
    s = ranker.DEFAULT_SETTINGS
    tok = pt.train_pairrm_tokenizer(texts, s.vocab_size, tmp)
    pt.tiny_pairrm(
        tok, seed=0, hidden_size=s.hidden_size, num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
        intermediate_size=s.intermediate_size, position_buckets=s.position_buckets,
    ).save_pretrained(tmp)
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", type=str, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else _model_dir(Path(tmp))
        batched = prm.PairRM.load(path, max_batch_size=args.batch_size)
    rng = random.Random(1)
    prompts = arena.arena_prompts("heldout")[: args.groups]
    groups = [(p.prompt, [arena.corpus_response(p.topic, rng) for _ in range(args.k)]) for p in prompts]
    n_pairs = args.groups * args.k * (args.k - 1)
    rows = []
    for x, cands in groups:
        for i, a in enumerate(cands):
            for j, b in enumerate(cands):
                if i != j:
                    rows.append(prm.format_pair(batched.tokenizer, x, a, b))
    loop = prm.PairRM(batched.model, batched.tokenizer, max_batch_size=1)

    def run_batched() -> float:
        t0 = time.perf_counter()
        batched.rank(groups)
        return time.perf_counter() - t0

    def run_loop() -> float:
        t0 = time.perf_counter()
        for r in rows:  # one forward per pair
            loop.logits([r])
        return time.perf_counter() - t0

    run_batched(), run_loop()  # warm-up
    ratios, tb, tl = [], [], []
    for r in range(args.rounds):
        b, lp = run_batched(), run_loop()
        tb.append(b)
        tl.append(lp)
        ratios.append(lp / b)
        print(f"round {r}: batched {n_pairs / b:.1f} pairs/s, loop {n_pairs / lp:.1f} pairs/s, ratio {lp / b:.2f}x")
    result = {
        "pairs": n_pairs,
        "groups": args.groups,
        "k": args.k,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "batched_pairs_per_s": n_pairs / statistics.median(tb),
        "loop_pairs_per_s": n_pairs / statistics.median(tl),
        "ratio_median": statistics.median(ratios),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
