"""The trainer's path for unpaired objectives (KTO, unpaired BCO): list[LabelledAnswer] -> new policy weights.

The same iteration as `PolicyTrainer.train_iteration` (workers/trainer.py), over labelled answers instead of
pairs, with the trainer's model, optimizer, schedule and checkpoint state; kept apart so that the pair loop is
untouched. One iteration (`train_unpaired_iteration`):

1. **Tokenise and validate.** A posted answer (no token ids) is tokenised here: the prompt with the chat
   template (`prompt_token_ids`, as the sampler renders it), the answer as raw text (`text_token_ids`) plus the
   tokenizer's EOS, since a posted answer is a finished one. A sampled answer keeps its ids plus the stop token
   it ended on (as pairs do). Empty, too long, out-of-vocabulary and duplicate answers are skipped with a reason.
2. **Mismatched pairs for KTO's reference point**, fixed for the iteration: example i's KL partner is
   (x_i, y_j) with j the example after i in a seeded shuffle of the iteration's examples (a rotation by one,
   as TRL's `add_kl_completion_ids` rotates a batch's completions; the shuffle keeps the K samples of one prompt,
   adjacent in record-id order, from being each other's partners). The reference's log-probs of the examples
   and of their partners are computed once, before the first step (`no_grad`, as pairs' are); the policy's on a
   micro-batch's partners is one extra `no_grad` forward per micro-batch (z_ref is detached: TRL's KL term).
3. **Steps** as pairs': a fresh optimizer and schedule, `epochs` seeded shuffles (`PolicyTrainer.epoch_steps`),
   `batch_size` examples per step in micro-batches, loss sum(w*l)/sum(w) with w the example's weight, gradient
   clipping; a stateful objective (BCO's running mean) is reset at the iteration start.
4. **Metrics** (TRL's KTO/BCO names): `loss/mean`, `loss/last_epoch`, `rewards/chosen` (mean beta*r of the
   desirable answers), `rewards/rejected` (undesirable), `rewards/margins`, `logps/chosen`, `logps/rejected`,
   `kl` (KTO) or `delta` (BCO) averaged over micro-batches, `train/{examples,desirable,undesirable,
   rejected_examples,steps,skipped_steps,tokens,tokens_per_s,seconds,reference_seconds,grad_norm}`.

One rank only: a sharded trainer (`resources.trainer.num_ranks` > 1) raises ValueError (not built yet).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparring.shared.models import prompt_token_ids, text_token_ids
from sparring.shared.records import LabelledAnswer
from sparring.workers.batching import map_by_length
from sparring.workers.distributed import clip_grad_norm
from sparring.workers.logps import collate_sequences
from sparring.workers.objectives.base import UnpairedInputs, UnpairedObjective, UnpairedOutput
from sparring.workers.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from sparring.workers.trainer import IterationResult, PolicyTrainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizedAnswer:
    """One validated labelled answer as token ids (the answer with its stop token appended)."""

    record_id: str
    prompt_ids: list[int]
    answer_ids: list[int]
    label: bool
    weight: float = 1.0

    @property
    def width(self) -> int:
        """Padded row width: prompt + answer (what `PolicyTrainer.epoch_steps` buckets by)."""
        return len(self.prompt_ids) + len(self.answer_ids)

    @property
    def num_tokens(self) -> int:
        return self.width


def tokenize_answers(
    trainer: PolicyTrainer, answers: Sequence[LabelledAnswer]
) -> tuple[list[TokenizedAnswer], list[tuple[str, str]]]:
    """Validated, tokenised answers in input order, and (record_id, reason) for each one skipped."""
    examples: list[TokenizedAnswer] = []
    rejected: list[tuple[str, str]] = []
    seen: set[str] = set()
    for a in answers:
        record_id = a.record_id
        if record_id in seen:
            rejected.append((record_id, "duplicate record id in this iteration"))
            continue
        conversation = a.messages or a.prompt
        prompt = list(a.prompt_token_ids) if a.prompt_token_ids else prompt_token_ids(trainer.tokenizer, conversation)
        sampled = bool(a.answer.token_ids)
        ids = list(a.answer.token_ids) if sampled else text_token_ids(trainer.tokenizer, a.answer.text)
        # a posted answer is a finished one: its end is the tokenizer's EOS (stop_token_id None)
        answer = trainer._completion_ids(ids, a.answer.finish_reason if sampled else "stop", a.answer.stop_token_id)
        reason = None
        if not prompt:
            reason = "empty prompt"
        elif not ids:
            reason = "empty answer"
        elif min(prompt + answer) < 0 or max(prompt + answer) >= trainer.vocab_size:
            reason = f"token id outside the model's vocabulary [0, {trainer.vocab_size})"
        elif trainer.max_positions is not None and len(prompt) + len(answer) > trainer.max_positions:
            reason = f"sequence of {len(prompt) + len(answer)} tokens exceeds the model's {trainer.max_positions} positions"
        if reason is not None:
            rejected.append((record_id, reason))
            continue
        seen.add(record_id)
        examples.append(TokenizedAnswer(record_id, prompt, answer, bool(a.label), float(a.weight)))
    return examples, rejected


def kl_partners(n: int, seed: int) -> list[int]:
    """partner[i]: whose answer example i's prompt is paired with for KTO's reference point; a rotation by one of
    a seeded shuffle, so partner[i] != i whenever n > 1 (module docstring)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    partner = [0] * n
    for pos, i in enumerate(order):
        partner[i] = order[(pos + 1) % n]
    return partner


@dataclass
class _Frozen:
    ref: Tensor | None = None  # (N,) reference log-probs of the examples
    ref_kl: Tensor | None = None  # (N,) reference log-probs of (x_i, y_partner(i))


def _logps(
    trainer: PolicyTrainer, model: PreTrainedModel, prompts: Sequence[list[int]], answers: Sequence[list[int]]
) -> Tensor:
    """Summed answer log-probs of each (prompt, answer) row under `model`, (N,) fp32 on the CPU; no_grad."""

    def forward(idx: list[int]) -> Tensor:
        with trainer._autocast():
            batch = collate_sequences([prompts[i] for i in idx], [answers[i] for i in idx], trainer.pad_token_id)
            logps, _ = trainer._sequence_logps(model, batch)
        return logps.float().cpu()

    out = torch.zeros(len(prompts), dtype=torch.float32)
    with torch.no_grad():
        return map_by_length([len(p) + len(a) for p, a in zip(prompts, answers, strict=True)],
                             2 * trainer.trainer_cfg.batch_size, forward, out)  # fmt: skip


def train_unpaired_iteration(
    trainer: PolicyTrainer,
    answers: Sequence[LabelledAnswer],
    iteration: int,
    progress: Callable[[str], None] | None = None,
) -> IterationResult:
    """Train `trainer`'s policy on `answers` with its unpaired objective for `epochs` passes (module docstring);
    returns metrics, skipped answers and the new policy version. Raises ValueError for a pair objective or a
    sharded trainer."""
    from sparring.workers.trainer import IterationResult, _report

    objective = trainer.objective
    if not getattr(objective, "unpaired", False):
        raise ValueError(f"objective {objective.name!r} trains on pairs, not labelled answers")
    if trainer.ranks is not None:
        raise ValueError("unpaired objectives train on one rank (resources.trainer.num_ranks 1); sharding is not built")
    assert isinstance(objective, UnpairedObjective)
    started = time.perf_counter()
    cfg = trainer.trainer_cfg
    examples, rejected = tokenize_answers(trainer, answers)
    if rejected:
        log.warning("iteration %d: skipping %d labelled answer(s), e.g. %s: %s", iteration, len(rejected), *rejected[0])
    if not examples:
        return IterationResult(_metrics({}, 0, [], time.perf_counter() - started, 0.0, len(rejected)), rejected, trainer.policy_version)
    if objective.stateful:
        objective.reset()  # type: ignore[attr-defined]  # StatefulObjective

    frozen_started = time.perf_counter()
    prompts = [e.prompt_ids for e in examples]
    partner = kl_partners(len(examples), trainer.seed * 1_000_003 + iteration)
    kl_answers = [examples[partner[i]].answer_ids for i in range(len(examples))]
    frozen = _Frozen()
    if objective.needs_reference:
        reference = trainer.initial_model if trainer.initial_model is not None else trainer.model
        frozen.ref = _logps(trainer, reference, prompts, [e.answer_ids for e in examples])
        if objective.needs_kl:
            frozen.ref_kl = _logps(trainer, reference, prompts, kl_answers)
    frozen_seconds = time.perf_counter() - frozen_started

    micro_batch = cfg.micro_batch_size or cfg.batch_size
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    schedule_steps = math.ceil(steps_per_epoch * (cfg.schedule_epochs or cfg.epochs))
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.optimizer = build_optimizer(params, cfg)
    trainer.scheduler = build_scheduler(trainer.optimizer, cfg, schedule_steps)
    trainer._scheduler_total_steps = schedule_steps
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
    report_every = max(1, total_steps // 10)

    sums: dict[str, float] = {}
    batch_metrics: list[dict[str, float]] = []
    steps = skipped = 0
    grad_norm_sum = 0.0
    for epoch in range(cfg.epochs):
        last_epoch = epoch == cfg.epochs - 1
        for step_indices in trainer.epoch_steps(examples, iteration, epoch, cfg.batch_size):
            trainer.optimizer.zero_grad(set_to_none=True)
            idx_all = step_indices.tolist()
            step_weight = sum(examples[i].weight for i in idx_all)
            for start in range(0, len(idx_all), micro_batch):
                idx = idx_all[start : start + micro_batch]
                out, policy_logps = _micro_loss(trainer, objective, examples, idx, frozen, kl_answers)
                weights = torch.tensor([examples[i].weight for i in idx], dtype=out.losses.dtype, device=out.losses.device)
                ((out.losses * weights).sum() / step_weight).backward()
                _add(sums, out, policy_logps, [examples[i].label for i in idx], last_epoch)
                sums["tokens"] = sums.get("tokens", 0.0) + sum(examples[i].num_tokens for i in idx)
                batch_metrics.append({k: float(v) for k, v in out.batch_metrics.items()})
            grad_norm = clip_grad_norm(params, max_norm)
            if math.isfinite(grad_norm):
                trainer.optimizer.step()
                grad_norm_sum += grad_norm
            else:
                skipped += 1
                log.warning("iteration %d step %d: non-finite grad norm, step skipped", iteration, steps)
            trainer.scheduler.step()
            steps += 1
            trainer._position = {"iteration": iteration, "epoch": epoch, "step": steps}
            if progress is not None and (steps % report_every == 0 or steps == total_steps):
                _report(progress, f"step {steps}/{total_steps} loss {sums['loss'] / max(1.0, sums['n']):.4f}")
    trainer.optimizer.zero_grad(set_to_none=True)
    if steps > skipped:
        trainer.policy_version += 1
    trainer._position = {"iteration": iteration, "epoch": cfg.epochs, "step": steps}
    sums.update(steps=steps, skipped_steps=skipped, grad_norm=grad_norm_sum)
    metrics = _metrics(sums, len(examples), batch_metrics, time.perf_counter() - started, frozen_seconds, len(rejected))
    metrics["train/desirable"] = float(sum(e.label for e in examples))
    metrics["train/undesirable"] = float(sum(not e.label for e in examples))
    log.info(
        "iteration %d: %d labelled answers (%d desirable, %d rejected), %d steps, loss %.4f, v%d",
        iteration, len(examples), metrics["train/desirable"], len(rejected), steps, metrics["loss/mean"],
        trainer.policy_version,
    )  # fmt: skip
    return IterationResult(metrics, rejected, trainer.policy_version)


def _micro_loss(
    trainer: PolicyTrainer,
    objective: UnpairedObjective,
    examples: Sequence[TokenizedAnswer],
    idx: list[int],
    frozen: _Frozen,
    kl_answers: Sequence[list[int]],
) -> tuple[UnpairedOutput, Tensor]:
    """The objective on one micro-batch: one policy forward with the graph, plus (KTO) one no_grad forward of
    the micro-batch's mismatched pairs."""
    prompts = [examples[i].prompt_ids for i in idx]
    checkpointing = trainer.trainer_cfg.gradient_checkpointing
    if checkpointing:
        trainer.model.train()  # dropout is zeroed; train mode only switches checkpointing on
    try:
        with trainer._autocast():
            batch = collate_sequences(prompts, [examples[i].answer_ids for i in idx], trainer.pad_token_id)
            logps, lengths = trainer._sequence_logps(trainer.model, batch)
    finally:
        if checkpointing:
            trainer.model.eval()
    device = logps.device
    rows = torch.tensor(idx, dtype=torch.long)
    policy_kl = None
    if objective.needs_kl:
        policy_kl = _logps(trainer, trainer.model, prompts, [kl_answers[i] for i in idx]).to(device)
    inputs = UnpairedInputs(
        policy_logps=logps,
        labels=torch.tensor([examples[i].label for i in idx], dtype=torch.bool, device=device),
        lengths=lengths,
        ref_logps=None if frozen.ref is None else frozen.ref[rows].to(device),
        policy_kl_logps=policy_kl,
        ref_kl_logps=None if frozen.ref_kl is None else frozen.ref_kl[rows].to(device),
    )
    return objective(inputs), logps.detach()


def _add(sums: dict[str, float], out: UnpairedOutput, logps: Tensor, labels: list[bool], last_epoch: bool) -> None:
    """Sums of one micro-batch: losses over all examples, rewards and log-probs per label."""

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + value

    losses = out.losses.detach().float()
    add("n", float(losses.numel()))
    add("loss", float(losses.sum()))
    if last_epoch:
        add("last_n", float(losses.numel()))
        add("last_loss", float(losses.sum()))
    mask = torch.tensor(labels, dtype=torch.bool, device=losses.device)
    for side, m in (("chosen", mask), ("rejected", ~mask)):
        add(f"n/{side}", float(m.sum()))
        add(f"rewards/{side}", float(out.rewards.float()[m].sum()))
        add(f"logps/{side}", float(logps.float()[m].sum()))
    for name, values in out.metrics.items():
        add(f"extra/{name}", float(values.detach().float().sum()))


def _metrics(
    sums: dict[str, float],
    num_examples: int,
    batch_metrics: list[dict[str, float]],
    seconds: float,
    frozen_seconds: float,
    num_rejected: int,
) -> dict[str, float]:
    def ratio(num: float, den: float) -> float:
        return num / den if den else 0.0

    s = sums.get
    chosen = ratio(s("rewards/chosen", 0.0), s("n/chosen", 0.0))
    rejected = ratio(s("rewards/rejected", 0.0), s("n/rejected", 0.0))
    out = {
        "loss/mean": ratio(s("loss", 0.0), s("n", 0.0)),
        "loss/last_epoch": ratio(s("last_loss", 0.0), s("last_n", 0.0)),
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "logps/chosen": ratio(s("logps/chosen", 0.0), s("n/chosen", 0.0)),
        "logps/rejected": ratio(s("logps/rejected", 0.0), s("n/rejected", 0.0)),
        "train/examples": float(num_examples),
        "train/rejected_examples": float(num_rejected),
        "train/steps": float(s("steps", 0.0)),
        "train/skipped_steps": float(s("skipped_steps", 0.0)),
        "train/tokens": s("tokens", 0.0),
        "train/tokens_per_s": ratio(s("tokens", 0.0), seconds),
        "train/seconds": seconds,
        "train/reference_seconds": frozen_seconds,
        "train/grad_norm": ratio(s("grad_norm", 0.0), s("steps", 0.0) - s("skipped_steps", 0.0)),
    }
    for name in sorted({k for b in batch_metrics for k in b}):
        values = [b[name] for b in batch_metrics if name in b]
        out[name] = sum(values) / len(values)
    for key, total in sums.items():
        if key.startswith("extra/"):
            out[key.removeprefix("extra/")] = ratio(total, s("n", 0.0))
    return out
