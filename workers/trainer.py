"""PolicyTrainer: list[PreferencePair] -> new policy weights (one iteration of preference optimisation).

The explicit training loop of a run. No Ray and no Redis here: the run's trainer actor
wraps this class. One iteration (`train_iteration`) does, in order:

1. **Validate and tokenise.** Each pair becomes prompt ids + chosen ids + rejected ids. A completion
   whose `finish_reason == "stop"` ended because the sampler drew a stop token, which it does not return
   in `token_ids`; that token (`Completion.stop_token_id`: with several stop ids, e.g. Gemma's `<eos>` and
   `<end_of_turn>`, the one actually sampled; the tokenizer's EOS when unknown) is appended so the policy
   also learns *where to stop* (TRL and the alignment-handbook train on the chat template's end-of-turn
   token the same way). Truncated completions (`"length"`) get no stop token. Bad pairs (empty, identical, non-finite `win_prob`, too long for the model,
   token ids outside the vocabulary, duplicate record ids) are skipped and returned with a reason.
2. **Frozen log-probs once.** The reference (and, for objectives that need it, the iteration-start policy
   pi_t) log-probs are computed once, before the first step, under `no_grad`, and cached per pair
   (they are constants of the loss; TRL's `precompute_ref_log_probs=True` does the same; the saving:
   docs/benchmarks.md, "Where the time goes"). `algorithm.reference ==
   "iteration_start"` makes the reference the policy as it is at the start of the iteration (SPPO, DRIFT,
   iterative DPO); `"initial"` uses a frozen copy of the weights this trainer was constructed from.
   Both go through the same `sequence_logps`.
3. **A fresh optimizer and LR schedule per iteration**, as the SPPO / DRIFT / iterative-DPO scripts launch
   a new training run per iteration (`run_sppo_*.sh`, alignment-handbook `run_dpo.py`): warmup and decay
   span this iteration's steps only, and no Adam moments carry over between iterations.
4. **`epochs` seeded passes.** Each epoch shuffles with a generator seeded from (seed, iteration, epoch);
   an optimizer step covers `batch_size` pairs (the global batch, in micro-batches of `micro_batch_size`),
   the learning-rate schedule spans `schedule_epochs` epochs of steps (default `epochs`), the loss of a
   step is the weighted mean sum(w*l)/sum(w) over its pairs (w = `PreferencePair.weight`, the judge's
   confidence; 1 = the plain mean), gradients are clipped to `max_grad_norm`, and the schedule advances once per step. Optional length bucketing
   (`length_bucket_steps`) sorts pairs by length within runs of a few steps to cut padding.
5. **Metrics** are sums and counts over the iteration, divided at the end: `loss/mean`, `loss/last_epoch`,
   `rewards/{accuracies,chosen,rejected,margins}` and `logps/{chosen,rejected}` (TRL's names), the
   objective's own per-pair metrics, and
   `train/{steps,pairs,rejected_pairs,tokens,tokens_per_s,seconds,reference_seconds,grad_norm}`.
   Tokens count prompt+chosen plus prompt+rejected per pair per epoch; the time includes the
   reference pass (as `bench/trainer.py` measures TRL; docs/benchmarks.md).

Log-probs (`sequence_logps`, in `sparring.workers.logps`, shared with the judges): chosen and rejected
rows go through ONE forward (2B rows, right padded, attention mask), and each sequence's log-prob is the
SUM of its completion tokens' log-probs in fp32 (prompt and padding masked). Only
completion positions are projected through the LM head, and each target's log-prob is
`logit[target] - logsumexp(logits)` in fp32, so the full [2B, T, vocab] log-softmax is never
materialised; the (completion tokens, vocab) logits still are (in the model's dtype, then fp32), and
chunking them is the next lever for 100k+ vocabularies.

Dropout is disabled at load (`disable_dropout`: every dropout probability in the model's config and in
its modules set to 0, as TRL's `disable_dropout=True` default does for `nn.Dropout`), and the model stays in
eval mode outside gradient-checkpointed steps, so the policy's log-probs before the first step equal the
reference's and the loss starts at log 2 for DPO, with or without gradient checkpointing (HF attention
applies `config.attention_dropout` functionally whenever the module is in train mode).

Deviation from TRL's DPOTrainer: prompts and completions are never truncated; a pair longer than the
model's context is rejected instead (the sampler already bounds lengths by `max_model_len`).

This module is the loop; the parts it drives live beside it: `sparring.workers.logps` (batches and
per-sequence log-probs), `sparring.workers.optim` (optimizer and LR schedule),
`sparring.workers.trainer_state` (`trainer_state.pt`, RNG states, atomic checkpoint writes) and
`sparring.workers.batching` (length-sorted chunks for the frozen log-prob pass).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sparring.shared.config import AlgorithmConfig, LoraConfig, TrainerConfig
from sparring.shared.models import load_causal_lm, load_tokenizer
from sparring.shared.records import PreferencePair
from sparring.workers.batching import map_by_length
from sparring.workers.distributed import (
    Ranks,
    clip_grad_norm,
    full_state_dict,
    is_sharded_checkpoint,
    iter_full_tensors,
    load_full,
    load_plain_optimizer,
    load_sharded,
    rank_micro_batches,
    reduce_sum,
    save_sharded,
    shard_model,
    sync_names,
)
from sparring.workers.logps import SequenceBatch, collate_sequences, sequence_logps
from sparring.workers.objectives.base import LossInputs, LossOutput, Objective
from sparring.workers.objectives.registry import build_objective
from sparring.workers.optim import build_optimizer, build_scheduler
from sparring.workers.trainer_state import (
    TRAINER_STATE_FILE,
    TRAINER_STATE_FORMAT,
    load_trainer_state,
    rng_states,
    set_rng_states,
    write_dir_atomically,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sparring.workers.weight_sync import MemorySender, WeightUpdate

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Pairs as token ids


@dataclass(frozen=True)
class TokenizedPair:
    """One validated pair as token ids; completions include the appended EOS where `finish_reason == stop`."""

    record_id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    win_prob: float
    chosen_win_rate: float | None = None  # P-hat(chosen beats pi_t), SPPO
    rejected_win_rate: float | None = None
    weight: float = 1.0  # the pair's loss weight (judge confidence); 1 = plain

    @property
    def width(self) -> int:
        """Padded row width this pair needs: prompt + the longer completion."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def num_tokens(self) -> int:
        """prompt+chosen plus prompt+rejected: the token count of `bench/trainer.py` (docs/benchmarks.md)."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def collate_pairs(pairs: Sequence[TokenizedPair], pad_token_id: int) -> SequenceBatch:
    """2B rows: chosen of every pair, then rejected of every pair (same order)."""
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return collate_sequences(prompts, completions, pad_token_id)


# --------------------------------------------------------------------------------------------------
# Data order


def shuffle_seed(seed: int, iteration: int, epoch: int) -> int:
    """A 63-bit seed that depends on all three numbers (stable across Python processes, unlike hash())."""
    digest = hashlib.sha256(f"{seed}:{iteration}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------------
# The trainer


@dataclass
class IterationResult:
    """Aggregated metrics of one `train_iteration`, the pairs it skipped, and the policy version after it."""

    metrics: dict[str, float]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (record_id, reason)
    policy_version: int = 0


@dataclass
class _FrozenLogps:
    """Per-pair constant log-probs computed once per iteration, indexed like the iteration's pairs."""

    ref_chosen: Tensor | None = None  # (P,)
    ref_rejected: Tensor | None = None
    prev_chosen: Tensor | None = None
    prev_rejected: Tensor | None = None


@dataclass
class _Sums:
    """Sums and counts of one iteration; metrics are divided only at the end."""

    pairs: int = 0
    loss: float = 0.0
    last_epoch_pairs: int = 0
    last_epoch_loss: float = 0.0
    correct: float = 0.0
    chosen_reward: float = 0.0
    rejected_reward: float = 0.0
    tokens: int = 0
    steps: int = 0
    skipped_steps: int = 0
    grad_norm: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, out: LossOutput, last_epoch: bool) -> None:
        n = int(out.losses.shape[0])
        loss_sum = float(out.losses.detach().sum())
        self.pairs += n
        self.loss += loss_sum
        if last_epoch:
            self.last_epoch_pairs += n
            self.last_epoch_loss += loss_sum
        self.correct += float((out.chosen_rewards > out.rejected_rewards).float().sum())
        self.chosen_reward += float(out.chosen_rewards.sum())
        self.rejected_reward += float(out.rejected_rewards.sum())
        for name, values in out.metrics.items():
            self.extra[name] = self.extra.get(name, 0.0) + float(values.detach().float().sum())

    _ADDITIVE = ("pairs", "loss", "last_epoch_pairs", "last_epoch_loss", "correct", "chosen_reward", "rejected_reward", "tokens")

    def over_ranks(self, device: str) -> _Sums:
        """These sums added over every trainer rank (each rank summed its own pairs; steps, skipped steps and
        the grad norm are global already)."""
        local = {name: float(getattr(self, name)) for name in self._ADDITIVE}
        local.update({f"extra/{k}": v for k, v in self.extra.items()})
        total = reduce_sum(local, device)
        out = _Sums(steps=self.steps, skipped_steps=self.skipped_steps, grad_norm=self.grad_norm)
        for name in self._ADDITIVE:
            setattr(out, name, type(getattr(self, name))(total[name]))
        out.extra = {k.removeprefix("extra/"): v for k, v in total.items() if k.startswith("extra/")}
        return out


class PolicyTrainer:
    """Trains a causal LM on preference pairs, one iteration at a time; saves and restores checkpoints.

    `model_path` is the initial policy (a local checkpoint dir or hub id); with
    `algorithm.reference == "initial"` a frozen copy of exactly these weights is the reference for the
    whole run, including after `load_checkpoint`. `dtype` is the weights dtype (`ModelConfig.dtype`);
    `length_bucket_steps` > 1 turns on length bucketing over that many steps (see `epoch_steps`; off by
    default, as TRL's `group_by_length`). `ranks` makes this one rank of a sharded trainer (FSDP2, in a
    process group the caller initialised; `sparring.workers.distributed`): every rank is constructed and
    called alike, on the same pairs, and each trains on its share of every step. `trainer_cfg.lora` wraps the
    model in peft LoRA adapters (`self.model` is then a `peft.PeftModel`; one rank only): the optimizer sees
    the adapters alone, and the reference is `self.model` under `disable_adapter()`.
    """

    def __init__(
        self,
        model_path: str,
        trainer_cfg: TrainerConfig,
        algo_cfg: AlgorithmConfig,
        seed: int,
        device: str = "cpu",
        dtype: str = "auto",
        length_bucket_steps: int = 0,
        ranks: Ranks | None = None,
    ) -> None:
        torch.set_num_threads(trainer_cfg.torch_threads)
        torch.manual_seed(seed)
        self.trainer_cfg = trainer_cfg
        self.algo_cfg = algo_cfg
        self.seed = seed
        self.device = device
        self.length_bucket_steps = length_bucket_steps
        self.objective: Objective = build_objective(algo_cfg)
        self.tokenizer: PreTrainedTokenizerBase = load_tokenizer(model_path)
        if ranks is not None and dtype == "auto":
            dtype = "float32"  # FSDP keeps fp32 master shards; its MixedPrecisionPolicy computes in bf16
        self.model: PreTrainedModel = load_causal_lm(model_path, dtype=dtype, device=device)
        disable_dropout(self.model)
        self.model.eval()  # dropout off for good: see the module docstring
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        eos = self.tokenizer.eos_token_id
        self.eos_token_id: int | None = None if eos is None else int(eos)
        self.vocab_size = int(self.model.get_input_embeddings().weight.shape[0])
        self.max_positions = _max_positions(self.model)
        self.initial_model: PreTrainedModel | None = None
        self.lora = trainer_cfg.lora
        if self.lora is not None:  # the reference is this model with its adapter disabled: no copy below
            self.model = wrap_lora(self.model, self.lora)
        elif algo_cfg.reference == "initial" and self.objective.needs_reference:
            self.initial_model = copy.deepcopy(self.model)
            self.initial_model.requires_grad_(False)
        if trainer_cfg.gradient_checkpointing:
            # HF checkpoints only in train mode; `disable_dropout` above keeps train mode deterministic.
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora is not None:  # frozen embeddings: checkpointed blocks need an input that requires grad
                self.model.enable_input_require_grads()
        use_bf16 = trainer_cfg.mixed_precision == "bf16" or (
            trainer_cfg.mixed_precision == "auto" and str(device).startswith("cuda")
        )
        self.autocast_dtype: torch.dtype | None = torch.bfloat16 if use_bf16 else None
        self.ranks = ranks
        self.rank, self.world_size = (0, 1) if ranks is None else (ranks.rank, ranks.world_size)
        self._fsdp_roots: dict[int, torch.nn.Module] = {}  # id(model) -> its FSDP root (sharded trainer only)
        if ranks is not None:  # FSDP2: the MixedPrecisionPolicy casts to bf16 instead of autocast
            for model in (self.model, self.initial_model):
                if model is not None:
                    self._fsdp_roots[id(model)] = shard_model(model, mixed_precision=use_bf16)
            self.autocast_dtype = None
        self.policy_version = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._scheduler_total_steps = 0
        self._position: dict[str, int] = {"iteration": 0, "epoch": 0, "step": 0}

    # ---------------------------------------------------------------------------------------------
    # One iteration

    def train_iteration(
        self,
        pairs: Sequence[PreferencePair],
        iteration: int,
        progress: Callable[[str], None] | None = None,
    ) -> IterationResult:
        """Train on `pairs` for `epochs` passes; return metrics, skipped pairs and the new policy version."""
        started = time.perf_counter()
        cfg = self.trainer_cfg
        examples, rejected = self.tokenize_pairs(pairs)
        if rejected:
            log.warning(
                "iteration %d: skipping %d pair(s), e.g. %s: %s", iteration, len(rejected), *rejected[0]
            )
        if not examples:
            log.warning("iteration %d: no trainable pairs (%d rejected)", iteration, len(rejected))
            metrics = self._metrics(_Sums(), 0, time.perf_counter() - started, 0.0, len(rejected))
            return IterationResult(metrics, rejected, self.policy_version)

        if self.objective.stateful:
            self.objective.reset()  # like the optimizer: every iteration is a fresh training run
        frozen_started = time.perf_counter()
        frozen = self._frozen_logps(examples)
        frozen_seconds = time.perf_counter() - frozen_started

        pairs_per_step = cfg.batch_size
        micro_batch = cfg.micro_batch_size or cfg.batch_size
        steps_per_epoch = math.ceil(len(examples) / pairs_per_step)
        total_steps = steps_per_epoch * cfg.epochs
        # the schedule may span more epochs than are trained (`schedule_epochs`: SPPO's 18 scheduled, 1 trained)
        schedule_steps = math.ceil(steps_per_epoch * (cfg.schedule_epochs or cfg.epochs))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, schedule_steps)
        self._scheduler_total_steps = schedule_steps
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        report_every = max(1, total_steps // 10)

        sums = _Sums()
        for epoch in range(cfg.epochs):
            last_epoch = epoch == cfg.epochs - 1
            for step_indices in self.epoch_steps(examples, iteration, epoch, pairs_per_step):
                self.optimizer.zero_grad(set_to_none=True)
                # a step's loss is sum(w * l) / sum(w) over its pairs (w: judge confidence, 1 = plain): a weighted
                # mean, so confidences reweight pairs against each other without rescaling the learning rate
                # with several ranks each takes a share of the step; the divisor stays the whole step's weight
                step_weight = sum(examples[i].weight for i in step_indices.tolist())
                for micro in rank_micro_batches(step_indices, self.rank, self.world_size, micro_batch):
                    idle = len(micro) == 0  # this rank's share ran out: a stand-in pair weighted 0 (FSDP collectives)
                    micro = step_indices[:1] if idle else micro
                    out = self._loss(examples, micro, frozen)
                    weights = torch.tensor(
                        [0.0 if idle else examples[i].weight for i in micro.tolist()],
                        dtype=out.losses.dtype, device=out.losses.device,
                    )  # fmt: skip
                    ((out.losses * weights).sum() / step_weight).backward()
                    if not idle:
                        sums.add(out, last_epoch)
                        sums.tokens += sum(examples[i].num_tokens for i in micro.tolist())
                grad_norm = clip_grad_norm(params, max_norm)
                if math.isfinite(grad_norm):
                    self.optimizer.step()
                    sums.grad_norm += grad_norm
                else:
                    sums.skipped_steps += 1
                    log.warning(
                        "iteration %d step %d: non-finite grad norm, step skipped", iteration, sums.steps
                    )
                self.scheduler.step()
                sums.steps += 1
                self._position = {"iteration": iteration, "epoch": epoch, "step": sums.steps}
                if progress is not None and (sums.steps % report_every == 0 or sums.steps == total_steps):
                    elapsed = time.perf_counter() - started
                    _report(
                        progress,
                        f"step {sums.steps}/{total_steps} loss {sums.loss / max(1, sums.pairs):.4f} "
                        f"tokens/s {sums.tokens / max(elapsed, 1e-9):.0f}",
                    )
        self.optimizer.zero_grad(set_to_none=True)
        if self.ranks is not None:
            sums = sums.over_ranks(str(self.device))
        if sums.steps > sums.skipped_steps:
            self.policy_version += 1
        self._position = {"iteration": iteration, "epoch": cfg.epochs, "step": sums.steps}
        seconds = time.perf_counter() - started
        metrics = self._metrics(sums, len(examples), seconds, frozen_seconds, len(rejected))
        log.info(
            "iteration %d: %d pairs (%d rejected), %d steps, loss %.4f, accuracy %.3f, %.0f tokens/s, v%d",
            iteration, len(examples), len(rejected), sums.steps, metrics["loss/mean"],
            metrics["rewards/accuracies"], metrics["train/tokens_per_s"], self.policy_version,
        )  # fmt: skip
        return IterationResult(metrics, rejected, self.policy_version)

    def tokenize_pairs(
        self, pairs: Sequence[PreferencePair]
    ) -> tuple[list[TokenizedPair], list[tuple[str, str]]]:
        """Validated, tokenised pairs in input order, and (record_id, reason) for every pair skipped."""
        examples: list[TokenizedPair] = []
        rejected: list[tuple[str, str]] = []
        seen: set[str] = set()
        for position, pair in enumerate(pairs):
            record_id = _safe_record_id(pair, position)
            try:
                example = self._tokenize(pair, record_id)
            except (AttributeError, TypeError, ValueError) as err:  # a malformed record, not a bug here
                rejected.append((record_id, f"malformed record: {err}"))
                continue
            reason = self._reject_reason(pair, example, seen)
            if reason is not None:
                rejected.append((record_id, reason))
                continue
            seen.add(record_id)
            examples.append(example)
        return examples, rejected

    def _tokenize(self, pair: PreferencePair, record_id: str) -> TokenizedPair:
        return TokenizedPair(
            record_id=record_id,
            prompt_ids=[int(t) for t in pair.prompt_token_ids],
            chosen_ids=self._completion_ids(
                pair.chosen.token_ids, pair.chosen.finish_reason, pair.chosen.stop_token_id
            ),
            rejected_ids=self._completion_ids(
                pair.rejected.token_ids, pair.rejected.finish_reason, pair.rejected.stop_token_id
            ),
            win_prob=float(pair.win_prob),
            chosen_win_rate=pair.chosen_win_rate,
            rejected_win_rate=pair.rejected_win_rate,
            weight=float(pair.weight),
        )

    def _completion_ids(
        self, token_ids: Sequence[int], finish_reason: str, stop_token_id: int | None = None
    ) -> list[int]:
        """Completion ids, plus the stop token the sampler drew (it does not return it in `token_ids`):
        `stop_token_id`, or the tokenizer's EOS when the completion does not say which (a logged response)."""
        ids = [int(t) for t in token_ids]
        stop = self.eos_token_id if stop_token_id is None else int(stop_token_id)
        if ids and finish_reason == "stop" and stop is not None and ids[-1] != stop:
            ids.append(stop)
        return ids

    def _reject_reason(self, pair: PreferencePair, ex: TokenizedPair, seen: set[str]) -> str | None:
        if ex.record_id in seen:
            return "duplicate record id in this iteration"
        if not ex.prompt_ids:
            return "empty prompt"
        if not pair.chosen.token_ids or not pair.rejected.token_ids:
            return "empty completion"
        if ex.chosen_ids == ex.rejected_ids:
            return "chosen and rejected have identical tokens"
        if not math.isfinite(ex.win_prob) or not 0.0 <= ex.win_prob <= 1.0:
            return f"win_prob {ex.win_prob} is not a probability"
        if self.objective.needs_win_rates:
            for name in ("chosen_win_rate", "rejected_win_rate"):
                rate = getattr(ex, name)
                if rate is None or not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
                    return f"{name} {rate} is not a probability ({self.objective.name} needs it)"
        all_ids = ex.prompt_ids + ex.chosen_ids + ex.rejected_ids
        if min(all_ids) < 0 or max(all_ids) >= self.vocab_size:
            return f"token id outside the model's vocabulary [0, {self.vocab_size})"
        if self.max_positions is not None and ex.width > self.max_positions:
            return f"sequence of {ex.width} tokens exceeds the model's {self.max_positions} positions"
        return None

    def epoch_steps(
        self, examples: Sequence[TokenizedPair], iteration: int, epoch: int, pairs_per_step: int
    ) -> Iterator[Tensor]:
        """Pair indices of each optimizer step of one epoch, in a seeded shuffled order.

        With `length_bucket_steps = k > 1`, each run of k steps' pairs of the shuffled order is sorted by
        padded row width and cut into steps, and those k steps are shuffled again: batches then hold
        pairs of similar length, so less compute goes to padding (about 10% on ~40-token responses).
        """
        generator = torch.Generator().manual_seed(shuffle_seed(self.seed, iteration, epoch))
        order = torch.randperm(len(examples), generator=generator)
        if self.length_bucket_steps <= 1:
            yield from order.split(pairs_per_step)
            return
        for chunk in order.split(pairs_per_step * self.length_bucket_steps):
            by_width = sorted(chunk.tolist(), key=lambda i: examples[i].width)  # stable: deterministic
            steps = torch.tensor(by_width, dtype=torch.long).split(pairs_per_step)
            for j in torch.randperm(len(steps), generator=generator).tolist():
                yield steps[j]

    @torch.no_grad()
    def _frozen_logps(self, examples: Sequence[TokenizedPair]) -> _FrozenLogps:
        """Reference and pi_t log-probs for every pair, once per iteration, before the first step."""
        frozen = _FrozenLogps()
        needs_ref = self.objective.needs_reference
        needs_prev = self.objective.needs_prev_policy
        if not (needs_ref or needs_prev):
            return frozen
        start_logps: tuple[Tensor, Tensor] | None = None
        lora_ref = needs_ref and self.lora is not None and self.algo_cfg.reference == "initial"
        if needs_prev or (needs_ref and self.initial_model is None and not lora_ref):
            start_logps = self._all_logps(self.model, examples)  # the policy at the iteration start (pi_t)
        if needs_prev and start_logps is not None:
            frozen.prev_chosen, frozen.prev_rejected = start_logps
        if lora_ref:
            with self.model.disable_adapter():  # the base weights, which LoRA never changes
                frozen.ref_chosen, frozen.ref_rejected = self._all_logps(self.model, examples)
        elif needs_ref:
            initial = self.initial_model
            ref_logps = start_logps if initial is None else self._all_logps(initial, examples)
            assert ref_logps is not None
            frozen.ref_chosen, frozen.ref_rejected = ref_logps
        return frozen

    @torch.no_grad()
    def pair_logps(self, examples: Sequence[TokenizedPair], initial: bool = False) -> tuple[list[float], list[float]]:
        """(chosen, rejected) summed completion log-probs (nats, one per pair) of `examples` under the policy
        now, or with `initial` under the initial policy (the frozen reference; LoRA: the adapter off).
        `ValueError` when `initial` is asked and the trainer holds no initial policy."""
        if not initial:
            chosen, rejected = self._all_logps(self.model, examples)
        elif self.lora is not None:
            with self.model.disable_adapter():
                chosen, rejected = self._all_logps(self.model, examples)
        elif self.initial_model is not None:
            chosen, rejected = self._all_logps(self.initial_model, examples)
        else:
            raise ValueError("initial=True needs a trainer with an initial policy (algorithm.reference: initial)")
        return chosen.tolist(), rejected.tolist()

    def _all_logps(self, model: PreTrainedModel, examples: Sequence[TokenizedPair]) -> tuple[Tensor, Tensor]:
        """(chosen (P,), rejected (P,)) log-probs of every pair; sorted by length to cut padding."""

        def forward(idx: list[int]) -> Tensor:
            with self._autocast():
                batch = collate_pairs([examples[i] for i in idx], self.pad_token_id)
                logps, _ = self._sequence_logps(model, batch)
            return logps.float().cpu().view(2, len(idx))  # (2, b): chosen row, rejected row

        chunk = 2 * self.trainer_cfg.batch_size  # no activations kept: larger batches are cheap
        out = torch.zeros(2, len(examples), dtype=torch.float32)
        chosen, rejected = map_by_length([e.num_tokens for e in examples], chunk, forward, out, dim=1)
        return chosen, rejected

    def _loss(self, examples: Sequence[TokenizedPair], indices: Tensor, frozen: _FrozenLogps) -> LossOutput:
        """The objective on one micro-batch: one policy forward over 2B rows, frozen from the cache."""
        micro = [examples[i] for i in indices.tolist()]
        checkpointing = self.trainer_cfg.gradient_checkpointing
        if checkpointing:
            self.model.train()  # dropout is zeroed; train mode only switches checkpointing on
        try:
            with self._autocast():
                batch = collate_pairs(micro, self.pad_token_id)
                logps, lengths = self._sequence_logps(self.model, batch)
        finally:
            if checkpointing:
                self.model.eval()
        b = len(micro)
        device = logps.device

        def pick(cache: Tensor | None) -> Tensor | None:
            return None if cache is None else cache[indices].to(device)

        def column(name: str, needed: bool) -> Tensor | None:
            if not needed:
                return None
            return torch.tensor([getattr(e, name) for e in micro], dtype=torch.float32, device=device)

        inputs = LossInputs(
            policy_chosen_logps=logps[:b],
            policy_rejected_logps=logps[b:],
            chosen_lengths=lengths[:b],
            rejected_lengths=lengths[b:],
            ref_chosen_logps=pick(frozen.ref_chosen),
            ref_rejected_logps=pick(frozen.ref_rejected),
            prev_chosen_logps=pick(frozen.prev_chosen),
            prev_rejected_logps=pick(frozen.prev_rejected),
            win_prob=column("win_prob", self.objective.needs_win_prob),
            chosen_win_rate=column("chosen_win_rate", self.objective.needs_win_rates),
            rejected_win_rate=column("rejected_win_rate", self.objective.needs_win_rates),
        )
        out = self.objective(inputs)
        # TRL's logps/chosen, logps/rejected: the policy's summed completion log-probs, averaged over pairs
        out.metrics.update({"logps/chosen": logps[:b].detach(), "logps/rejected": logps[b:].detach()})
        return out

    def _sequence_logps(self, model: PreTrainedModel, batch: SequenceBatch) -> tuple[Tensor, Tensor]:
        """`sequence_logps` of `model`; a sharded model's goes through its FSDP root (its unshard hooks)."""
        root = self._fsdp_roots.get(id(model))
        if root is None:
            return sequence_logps(model, batch, self.trainer_cfg.logps_chunk_tokens)
        batch = batch.to(self.device)
        out = root(batch.input_ids, batch.attention_mask, batch.completion_mask, self.trainer_cfg.logps_chunk_tokens)
        if not torch.is_grad_enabled():  # FSDP keeps the root gathered after a forward, for a backward that never comes
            root.reshard()  # type: ignore[operator]
        return out

    def _autocast(self) -> Any:
        """bf16 autocast for the forward when configured; `sequence_logps` upcasts logits to fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=str(self.device).split(":")[0], dtype=self.autocast_dtype)

    def _metrics(
        self, s: _Sums, num_pairs: int, seconds: float, frozen_seconds: float, num_rejected: int
    ) -> dict[str, float]:
        def ratio(num: float, den: float) -> float:
            return num / den if den else 0.0

        metrics = {
            "loss/mean": ratio(s.loss, s.pairs),
            "loss/last_epoch": ratio(s.last_epoch_loss, s.last_epoch_pairs),
            "rewards/accuracies": ratio(s.correct, s.pairs),
            "rewards/chosen": ratio(s.chosen_reward, s.pairs),
            "rewards/rejected": ratio(s.rejected_reward, s.pairs),
            "rewards/margins": ratio(s.chosen_reward - s.rejected_reward, s.pairs),
            "train/steps": float(s.steps),
            "train/skipped_steps": float(s.skipped_steps),
            "train/pairs": float(num_pairs),
            "train/rejected_pairs": float(num_rejected),
            "train/tokens": float(s.tokens),
            "train/tokens_per_s": ratio(s.tokens, seconds),
            "train/seconds": seconds,
            "train/reference_seconds": frozen_seconds,
            "train/grad_norm": ratio(s.grad_norm, s.steps - s.skipped_steps),
        }
        for name, total in s.extra.items():
            metrics[name] = ratio(total, s.pairs)
        return metrics

    # ---------------------------------------------------------------------------------------------
    # Weights out: checkpoints and sync

    def state_dict_for_sync(self) -> dict[str, Tensor]:
        """Policy weights by HF parameter name: contiguous CPU copies in the model's (saved) dtype.

        Exactly the tensors `save_pretrained` writes: a tied alias (`lm_head.weight` of Qwen2, Llama-3.2,
        Gemma) is left out, so an object-store sync holds the same names as the checkpoint the engines
        started from (and a safetensors_dir sync).
        """
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(self._model_state(), self._hf_model())
        return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state.items()}

    def sync_tensors(self) -> dict[str, Tensor]:
        """The same names as `state_dict_for_sync`, as views of the live weights (no copy on CPU; a GPU
        tensor is copied to CPU one at a time by the sender): the memory transport copies each tensor once,
        into its bucket in the object store. Valid until the next optimizer step. With `trainer.lora` the
        adapted layers' tensors are fresh merged copies (`merged_lora_state`), the others views."""
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(self._model_state(), self._hf_model())
        return {name: tensor.detach() for name, tensor in state.items()}

    def send_weights(
        self, sender: MemorySender, version: int, dtype: torch.dtype | None = None
    ) -> WeightUpdate | None:
        """The memory transport's update of the current weights (`sender.update`, cast to the engines' `dtype`).

        One rank: `sync_tensors` (views of the live weights). Sharded: a collective (every rank calls it,
        `ShardedTrainer.send_weights`): the tensors are gathered from the FSDP2 shards one at a time
        (`iter_full_tensors`) and rank 0's sender puts each bucket as soon as it is full, so rank 0 holds about
        one bucket plus the largest tensor, never the whole state; the other ranks drop each gathered tensor
        and return None."""
        if self.ranks is None:
            return sender.update(self.sync_tensors(), version, dtype=dtype)
        if self.lora is not None:
            raise ValueError("trainer.lora trains on one rank only")
        stream = iter_full_tensors(self.model, sync_names(self.model, self._hf_model()), dtype)
        if self.ranks.rank != 0:
            for _ in stream:
                pass
            return None
        return sender.update(stream, version)

    def adapter_for_sync(self) -> tuple[dict[str, Tensor], str]:
        """With `trainer.lora`: (the adapter tensors, peft names as in `adapter_model.safetensors`, detached
        CPU copies; the text of its `adapter_config.json`), what an adapter-only sync ships
        (`trainer.lora.sync: adapter`; peft `get_peft_model_state_dict`). Raises ValueError without LoRA."""
        from peft import get_peft_model_state_dict

        if self.lora is None:
            raise ValueError("adapter_for_sync needs trainer.lora (a full-parameter trainer has no adapter)")
        state = get_peft_model_state_dict(self.model)
        tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in state.items()}
        return tensors, adapter_config_json(self.model)

    def _model_state(self) -> dict[str, Tensor]:
        """The policy's state dict; a sharded trainer's is gathered from every rank (a collective: every rank
        calls it; rank 0 gets the tensors, on the CPU, the others an empty dict). With LoRA: the merged
        weights under the base model's names (`merged_lora_state`)."""
        if self.lora is not None:
            return merged_lora_state(self.model)
        return self.model.state_dict() if self.ranks is None else full_state_dict(self.model)

    def _hf_model(self) -> PreTrainedModel:
        """The transformers model under a LoRA wrapper (its modules hold the adapter layers), else the model."""
        return self.model.get_base_model() if self.lora is not None else self.model

    def save_checkpoint(self, out_dir: Path, version: int, iteration: int) -> Path:
        """Write an ordinary HF checkpoint dir at `out_dir` (+ `trainer_state.pt`), atomically.

        Everything is written to a temporary sibling directory that is renamed to `out_dir` at the end,
        so a save killed midway never leaves a half checkpoint under `out_dir`. An existing `out_dir` is
        replaced. `trainer_state.pt` holds optimizer and scheduler state, torch/python/numpy RNG states,
        the data position (iteration, epoch, step) and the policy version; it loads with
        `torch.load(weights_only=True)`.
        """

        def write(tmp: Path, weights: dict[str, Tensor] | None = None) -> None:
            if self.lora is not None:  # the merged model (engines, recovery) + the adapter alone (resume)
                weights = self.state_dict_for_sync()
                self._hf_model().save_pretrained(tmp, state_dict=weights)
                self.model.save_pretrained(tmp / LORA_ADAPTER_DIR)
            else:
                self.model.save_pretrained(tmp, state_dict=weights)
            self.tokenizer.save_pretrained(tmp)
            torch.save(self._trainer_state(version, iteration), tmp / TRAINER_STATE_FILE)

        if self.ranks is not None:  # + DCP shards of model and optimizer from every rank (workers/distributed.py)
            out_dir = save_sharded(Path(out_dir), self.model, self.optimizer, write)
        else:
            out_dir = write_dir_atomically(Path(out_dir), write)
        self.policy_version = version
        log.info("saved checkpoint v%d (iteration %d) to %s", version, iteration, out_dir)
        return out_dir

    def load_checkpoint(self, ckpt_dir: Path) -> tuple[int, int]:
        """Restore weights, optimizer/scheduler, RNG states and position from `ckpt_dir`; (version, iteration)."""
        ckpt_dir = Path(ckpt_dir)
        state = load_trainer_state(ckpt_dir)
        sharded, optimizer_sharded = is_sharded_checkpoint(ckpt_dir), bool(state.get("optimizer_sharded"))
        if self.lora is not None:  # the adapter only: the base weights are the initial policy's, never trained
            load_lora_adapter(self.model, ckpt_dir / LORA_ADAPTER_DIR)
        elif not sharded:  # the HF weights (a sharded checkpoint's DCP shards load below, resharded to this trainer)
            dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
            loaded = load_causal_lm(str(ckpt_dir), dtype=dtype, device=self.device)
            if self.ranks is None:
                self.model.load_state_dict(loaded.state_dict())
            else:
                load_full(self.model, loaded.state_dict())
            del loaded
        self.model.eval()
        self.optimizer = None
        self.scheduler = None
        self._scheduler_total_steps = int(state["scheduler_total_steps"])
        if sharded and not optimizer_sharded:
            load_sharded(ckpt_dir, self.model, None)
        if state["optimizer"] is not None or optimizer_sharded:
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            self.optimizer = build_optimizer([p for _, p in named], self.trainer_cfg)
            if optimizer_sharded:
                load_sharded(ckpt_dir, self.model, self.optimizer)
            elif self.ranks is None:
                self.optimizer.load_state_dict(state["optimizer"])
            else:  # a one-rank checkpoint resumed on several ranks
                load_plain_optimizer(self.model, self.optimizer, state["optimizer"], [n for n, _ in named])
            self.scheduler = build_scheduler(self.optimizer, self.trainer_cfg, self._scheduler_total_steps)
            self.scheduler.load_state_dict(state["scheduler"])
        if self.objective.stateful and state.get("objective_state") is not None:
            self.objective.load_state_dict(state["objective_state"])
        set_rng_states(state["rng"])
        self._position = {k: int(v) for k, v in state["position"].items()}
        self.policy_version = int(state["policy_version"])
        return self.policy_version, int(state["iteration"])

    def _trainer_state(self, version: int, iteration: int) -> dict[str, Any]:
        return {
            "format": TRAINER_STATE_FORMAT,
            "policy_version": version,
            "iteration": iteration,
            "position": dict(self._position),
            "seed": self.seed,
            "objective": self.objective.name,
            "objective_state": self.objective.state_dict() if self.objective.stateful else None,
            "optimizer": None if self.optimizer is None or self.ranks is not None else self.optimizer.state_dict(),
            "optimizer_sharded": self.optimizer is not None and self.ranks is not None,  # in the DCP shards
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scheduler_total_steps": self._scheduler_total_steps,
            "rng": rng_states(),
        }


# --------------------------------------------------------------------------------------------------
# Helpers

LORA_ADAPTER_DIR = "adapter"  # checkpoints/vN/adapter/: the peft adapter (adapter_config.json + safetensors)


def wrap_lora(model: PreTrainedModel, cfg: LoraConfig) -> Any:  # peft.PeftModel
    """`model` with LoRA adapters on `cfg.target_modules` (peft `get_peft_model`): only the adapters'
    A [r, in] and B [out, r] matrices require grad; B starts at zero, so the wrapped model computes exactly
    what `model` did. Raises ImportError naming the extra when peft is not installed."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("trainer.lora needs the peft library: pip install 'sparring[lora]'") from e
    peft_cfg = PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.target_modules), lora_dropout=cfg.dropout,
        bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, peft_cfg)


def adapter_config_json(peft_model: Any) -> str:
    """The `adapter_config.json` text peft's `save_pretrained` writes for `peft_model`'s active adapter
    (sets as sorted lists; `base_model_name_or_path` = the base model the trainer loaded)."""
    import json

    cfg = peft_model.peft_config[peft_model.active_adapter].to_dict()
    return json.dumps(cfg, indent=2, sort_keys=True, default=lambda v: sorted(v) if isinstance(v, set) else str(v))


@torch.no_grad()
def merged_lora_state(peft_model: Any) -> dict[str, Tensor]:
    """The weights the adapted model computes with, under the base model's HF names: every adapted layer's
    `W + (alpha/r) * B @ A` (peft's `get_delta_weight`), every other tensor as it is; the adapter tensors
    themselves left out. Nothing is changed in place (merging into and unmerging from the live base weights
    would drift them by float rounding, and the reference is those base weights)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    deltas: dict[str, Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            for adapter in module.active_adapters:
                key = f"{name}.base_layer.weight"
                d = module.get_delta_weight(adapter)
                deltas[key] = d if key not in deltas else deltas[key] + d
    out: dict[str, Tensor] = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        if key in deltas:
            tensor = tensor + deltas[key].to(tensor.dtype)
        out[key.replace(".base_layer.", ".")] = tensor
    return out


def load_lora_adapter(peft_model: Any, adapter_dir: Path) -> None:
    """Load the adapter weights a checkpoint's `adapter/` dir holds (peft `save_pretrained`) into
    `peft_model`'s adapter in place. Raises FileNotFoundError when the dir or its weights are missing, and
    ValueError when the saved adapter does not cover exactly this model's adapter tensors."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no LoRA adapter at {weights} (a checkpoint of a full-parameter run?)")
    result = set_peft_model_state_dict(peft_model, load_file(str(weights)))
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"adapter at {adapter_dir} does not fit trainer.lora: missing {missing[:3]}, unexpected "
            f"{list(result.unexpected_keys)[:3]}"
        )


def _is_dropout_name(name: str) -> bool:
    return "dropout" in name or name.endswith("pdrop")


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability of `model` to 0: `nn.Dropout` modules (TRL's `disable_dropout`), the
    dropout fields of its config (and sub-configs), and the float attributes modules copied from them at
    construction (HF attention reads `self.attention_dropout` and drops functionally in train mode)."""
    configs = [getattr(model, "config", None)]
    for cfg in configs:
        if cfg is None:
            continue
        for name, value in list(vars(cfg).items()):
            if _is_dropout_name(name) and isinstance(value, float) and value:
                setattr(cfg, name, 0.0)
            elif hasattr(value, "to_dict") and all(value is not c for c in configs):  # text_config, ...
                configs.append(value)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _is_dropout_name(name) and isinstance(value, float) and value:
                setattr(module, name, 0.0)


def _max_positions(model: PreTrainedModel) -> int | None:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _report(progress: Callable[[str], None], message: str) -> None:
    """Call the progress callback; a failing callback is logged, never allowed to stop training."""
    try:
        progress(message)
    except Exception:  # progress is cosmetic (an event to a dashboard): count it in the log and go on
        log.warning("progress callback failed", exc_info=True)


def _safe_record_id(pair: PreferencePair, position: int) -> str:
    try:
        return str(pair.record_id)
    except Exception:  # a malformed record: still name it in the rejected list
        return f"<pair #{position}>"


__all__ = [
    "IterationResult",
    "PolicyTrainer",
    "TokenizedPair",
    "collate_pairs",
    "disable_dropout",
    "collate_sequences",  # re-exported from sparring.workers.logps for workers/actors.py (being rewritten)
    "sequence_logps",  # idem
    "shuffle_seed",
]
