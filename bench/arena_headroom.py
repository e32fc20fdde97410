"""How much headroom the arena base policy leaves: sampled gold terms, best-of-K, and optionally a quick DPO.

    .venv/bin/python bench/arena_headroom.py                     # default build, stats + best-of-4
    .venv/bin/python bench/arena_headroom.py --dpo-iterations 3  # plus a plain-torch iterative DPO check

Samples the built policy with transformers `generate` (temperature 1, no top-k/top-p, max 48 new tokens) on
the held-out prompts and prints the mean gold score, the fraction of responses satisfying each gold term,
how often a response ends with eos, and the gold win rate of best-of-K (by gold) against one random sample.
With `--dpo-iterations N` it runs N iterations of a minimal iterative DPO (train prompts, K samples,
oracle best-vs-worst pairs, reference = the iteration's start policy) and prints the gold win rate of each
iteration against iteration 0 on held-out prompts. It is a calibration of the task, not the service's
trainer: it imports nothing from `sparring.workers`.
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from sparring.shared.models import load_causal_lm, load_tokenizer, prompt_token_ids
from sparring.tasks.arena import rules as arena
from sparring.tasks.arena.policy import build_arena_model


def sample(
    model: Any, tok: Any, prompts: list[str], k: int, max_new_tokens: int, seed: int, batch: int = 128
) -> tuple[list[list[str]], list[list[list[int]]], float]:
    """K samples per prompt: texts, response token ids (eos included when emitted), fraction ending in eos."""
    torch.manual_seed(seed)
    eos, pad = int(tok.eos_token_id), int(tok.pad_token_id)
    rows = [(i, prompt_token_ids(tok, p)) for i, p in enumerate(prompts) for _ in range(k)]
    texts: list[list[str]] = [[] for _ in prompts]
    ids_out: list[list[list[int]]] = [[] for _ in prompts]
    ended = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        width = max(len(ids) for _, ids in chunk)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in chunk])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in chunk])
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        for (i, _), seq in zip(chunk, out[:, width:].tolist(), strict=True):
            resp = seq[: seq.index(eos) + 1] if eos in seq else seq
            ended += eos in seq
            ids_out[i].append(resp)
            texts[i].append(tok.decode(resp, skip_special_tokens=True))
    return texts, ids_out, ended / len(rows)


def seq_logps(model: Any, prompt_ids: list[list[int]], resp_ids: list[list[int]], pad: int) -> torch.Tensor:
    """Sum of log p(response | prompt) per row."""
    width = max(len(p) + len(r) for p, r in zip(prompt_ids, resp_ids, strict=True))
    ids = torch.full((len(prompt_ids), width), pad)
    mask = torch.zeros_like(ids)
    resp_mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, (p, r) in enumerate(zip(prompt_ids, resp_ids, strict=True)):
        ids[row, : len(p) + len(r)] = torch.tensor(p + r)
        mask[row, : len(p) + len(r)] = 1
        resp_mask[row, len(p) : len(p) + len(r)] = True
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp * resp_mask[:, 1:]).sum(-1)


def dpo_iteration(
    policy: Any,
    tok: Any,
    prompts: list[arena.ArenaPrompt],
    k: int,
    epochs: int,
    lr: float,
    beta: float,
    batch: int,
    seed: int,
) -> tuple[Any, int]:
    ref = copy.deepcopy(policy).eval()
    texts, ids, _ = sample(policy, tok, [p.prompt for p in prompts], k, 48, seed)
    pairs = []
    for p, ts, rs in zip(prompts, texts, ids, strict=True):
        scores = [arena.gold_score(p.topic, t) for t in ts]
        best, worst = max(range(k), key=scores.__getitem__), min(range(k), key=scores.__getitem__)
        if scores[best] > scores[worst] and rs[best] != rs[worst]:
            pairs.append((prompt_token_ids(tok, p.prompt), rs[best], rs[worst]))
    pad = int(tok.pad_token_id)
    with torch.no_grad():
        ref_c = torch.cat(
            [
                seq_logps(ref, [q[0] for q in pairs[i : i + 64]], [q[1] for q in pairs[i : i + 64]], pad)
                for i in range(0, len(pairs), 64)
            ]
        )
        ref_r = torch.cat(
            [
                seq_logps(ref, [q[0] for q in pairs[i : i + 64]], [q[2] for q in pairs[i : i + 64]], pad)
                for i in range(0, len(pairs), 64)
            ]
        )
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    order = list(range(len(pairs)))
    rng = random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(order)
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            pc = seq_logps(policy, [pairs[i][0] for i in idx], [pairs[i][1] for i in idx], pad)
            pr = seq_logps(policy, [pairs[i][0] for i in idx], [pairs[i][2] for i in idx], pad)
            h = (pc - ref_c[idx]) - (pr - ref_r[idx])
            loss = -torch.nn.functional.logsigmoid(beta * h).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
    policy.eval()
    return policy, len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument(
        "--steps", type=int, default=None, help="override the pretraining steps (default: builder's)"
    )
    ap.add_argument("--model-dir", default=None, help="evaluate this checkpoint instead of building one")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--dpo-iterations", type=int, default=0)
    ap.add_argument("--dpo-prompts", type=int, default=512)
    ap.add_argument("--dpo-epochs", type=int, default=2)
    ap.add_argument("--dpo-lr", type=float, default=3e-4)
    ap.add_argument("--dpo-beta", type=float, default=0.1)
    ap.add_argument("--eval-prompts", type=int, default=256)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    t0 = time.monotonic()
    overrides = {} if args.steps is None else {"steps": args.steps}
    if args.model_dir:
        path = Path(args.model_dir)
    else:
        path = build_arena_model(args.seed, args.cache_dir, progress=print, **overrides)
    print(f"model: {path} (build or cache hit: {time.monotonic() - t0:.1f}s)")
    tok = load_tokenizer(str(path))
    model = load_causal_lm(str(path)).eval()
    print(f"params: {sum(p.numel() for p in model.parameters()) / 1e6:.3f}M, vocab {len(tok)}")

    heldout = arena.arena_prompts("heldout")[: args.eval_prompts]
    t1 = time.monotonic()
    texts, ids, eos_frac = sample(model, tok, [p.prompt for p in heldout], args.k, 48, seed=1234)
    print(f"sampled {len(heldout)} x {args.k} in {time.monotonic() - t1:.1f}s")
    topics = [p.topic for p in heldout]
    flat_t = [t for p in heldout for t in [p.topic] * args.k]
    flat_r = [r for rs in texts for r in rs]
    stats = arena.arena_stats(flat_t, flat_r)
    lens = sorted(len(r) for rs in ids for r in rs)
    print("base policy on held-out prompts (all samples):")
    for key, value in stats.items():
        print(f"  {key:12s} {value:.3f}")
    print(
        f"  ends_in_eos  {eos_frac:.3f}   response tokens median {lens[len(lens) // 2]} p90 {lens[int(0.9 * len(lens))]}"
    )
    best = [max(rs, key=lambda r, t=t: arena.gold_score(t, r)) for t, rs in zip(topics, texts, strict=True)]
    first = [rs[0] for rs in texts]
    wr = arena.gold_win_rate(topics, best, first)
    print(
        f"best-of-{args.k} vs one random sample: win rate {wr.win_rate:.3f} [{wr.ci_low:.3f}, {wr.ci_high:.3f}], "
        f"mean gold {arena.arena_stats(topics, best)['gold/mean']:.3f} vs {arena.arena_stats(topics, first)['gold/mean']:.3f}"
    )
    for p, rs in zip(heldout[:4], texts[:4], strict=True):
        print(f"  {p.prompt!r} -> {rs[0]!r} (gold {arena.gold_score(p.topic, rs[0])})")

    if args.dpo_iterations:
        base_eval = [rs[0] for rs in sample(model, tok, [p.prompt for p in heldout], 1, 48, seed=999)[0]]
        policy = model
        train = arena.arena_prompts("train")[: args.dpo_prompts]
        for it in range(1, args.dpo_iterations + 1):
            t2 = time.monotonic()
            policy, n_pairs = dpo_iteration(
                policy,
                tok,
                train,
                args.k,
                args.dpo_epochs,
                args.dpo_lr,
                args.dpo_beta,
                batch=32,
                seed=100 + it,
            )
            ev = [rs[0] for rs in sample(policy, tok, [p.prompt for p in heldout], 1, 48, seed=999 + it)[0]]
            wr = arena.gold_win_rate(topics, ev, base_eval)
            st = arena.arena_stats(topics, ev)
            print(
                f"DPO iteration {it}: {n_pairs} pairs, {time.monotonic() - t2:.1f}s; win rate vs iter0 "
                f"{wr.win_rate:.3f} [{wr.ci_low:.3f}, {wr.ci_high:.3f}]; gold {st['gold/mean']:.2f} vs "
                f"{arena.arena_stats(topics, base_eval)['gold/mean']:.2f}; " + " ".join(f"{k}={v:.2f}" for k, v in st.items())
            )


if __name__ == "__main__":
    main()
