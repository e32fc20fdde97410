"""The three stage workers of a run, run as Ray actors by the controller.

    GeneratorWorker: PromptTask        -> GenerationGroup   (stream prompts     -> stream generations)
    JudgeWorker:     GenerationGroup   -> PreferencePair(s) (stream generations -> stream pairs)
    TrainerWorker:   PreferencePair(s) -> weights v+1       (stream pairs       -> checkpoint + WeightUpdate)
    EvalWorker:      held-out responses -> eval metrics     (the evaluation judge and task evaluators)

Each worker is a plain class (testable without Ray) that talks to Redis through `StreamQueue`: it reads
entries of its consumer group, writes its outputs and acknowledges the inputs in one atomic step
(`StreamQueue.complete`), so a worker killed at any point loses nothing and duplicates nothing; a
replacement with the same consumer name resumes the dead worker's pending entries first.
The workers know nothing about iterations beyond the version stamped on the records; the controller
decides what is dispatched and when a stage is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparring.shared.config import ANCHORED_PAIRS, UNPAIRED_OBJECTIVES, RunConfig
from sparring.shared.events import emit
from sparring.shared.models import load_tokenizer, prompt_token_ids, text_token_ids
from sparring.shared.queue import Entry, StreamQueue
from sparring.shared.records import Completion, GenerationGroup, LabelledAnswer, PreferencePair, PromptTask
from sparring.shared.redis_server import connect
from sparring.workers.groups import Resources, VersionMismatch, current_node, pin_to_cores
from sparring.workers.health import Heartbeat

log = logging.getLogger(__name__)

GENERATORS_GROUP = "generators"
JUDGES_GROUP = "judges"
TRAINER_GROUP = "trainer"


def _queue(run_id: str, redis_url: str, cfg: RunConfig) -> StreamQueue:
    """The run's queue on a client that rides out a Redis restart (and waits for one at start)."""
    outage = cfg.resilience.redis_outage_s
    return StreamQueue(connect(redis_url, outage_s=outage, wait_s=outage), run_id, cfg.storage.stream_maxlen)


def _poison_aware(
    queue: StreamQueue, cfg: RunConfig, stage: str, group: str, consumer: str, cls: type, count: int, failing_stage: str
) -> tuple[Callable[[], list[Entry[Any]]], Callable[[], list[Entry[Any]]]]:
    """The `read` and `claim` of a stage worker's drain. New entries come `count` at a time; a redelivery (a
    pending entry a dead predecessor left, or a stale one claimed from another consumer) comes alone, so a
    poison entry is isolated from its batch, and it is dead-lettered alone once delivered
    `resilience.max_deliveries` times, counted by Redis whether its worker raised or its process died."""
    max_deliveries = cfg.resilience.max_deliveries

    def read() -> list[Entry[Any]]:
        return queue.read(stage, group, consumer, cls, count, 100, max_deliveries=max_deliveries, failing_stage=failing_stage)

    def claim() -> list[Entry[Any]]:
        return queue.claim_stale(
            stage, group, consumer, cls, cfg.storage.claim_idle_ms, 1, max_deliveries=max_deliveries, failing_stage=failing_stage
        )

    return read, claim


def _make_room(queue: StreamQueue, cfg: RunConfig, stage: str, group: str, n: int) -> None:
    """Backpressure: wait until `n` more entries fit in `stage` below `storage.stream_maxlen` counting what
    `group` has not finished, so trimming never drops unread work (TimeoutError names the stream)."""
    queue.wait_for_room(stage, group, timeout_s=cfg.resilience.backpressure_timeout_s, needed=n)


def _drain(
    read: Callable[[], list[Entry[Any]]],
    claim: Callable[[], list[Entry[Any]]],
    process: Callable[[list[Entry[Any]]], None],
    idle_rounds: int,
    stopped: Callable[[], bool] = lambda: False,
    beat: Callable[[], None] = lambda: None,
    finished: Callable[[], bool] = lambda: False,
) -> int:
    """Process batches until the input is idle for `idle_rounds` reads (or `stopped()`); returns entries
    processed. `beat()` (the worker's heartbeat) runs before every read and after every batch.

    `finished()` says that no more input can come (the stage and the stages before it have nothing
    outstanding); a read that finds nothing then ends the drain at once instead of waiting out the idle
    reads (each blocks up to 100 ms): the last batch of an iteration is not followed by `idle_rounds` empty
    reads in every worker before the controller learns that the stage is done."""
    done, idle = 0, 0
    while idle < idle_rounds and not stopped():
        beat()
        entries = read() or claim()
        if not entries:
            if finished():
                break
            idle += 1
            continue
        idle = 0
        process(entries)
        beat()
        done += len(entries)
    return done


# --------------------------------------------------------------------------------------------------


def _engine_dtype(policy_dtype: str) -> Any:
    """The torch dtype the engines serve `policy.dtype` in (`auto`: float32 on CPU, bfloat16 on GPU, as
    `sparring.workers.vllm_llm.resolve_dtype`): what a memory sync casts the trainer's tensors to."""
    import torch

    from sparring.workers.vllm_llm import resolve_dtype

    return getattr(torch, resolve_dtype(policy_dtype))


def resolve_lora_sync(cfg: RunConfig, model_path: str) -> RunConfig:
    """`cfg` with `trainer.lora.sync` settled for the model vLLM engines will serve (`model_path`), before any
    worker starts: `auto`, which picks the adapter sync with the memory transport, becomes `merged` with a
    logged reason when vLLM cannot serve LoRA on the model's architecture (`vllm_llm.lora_unsupported`); an
    explicit `adapter` there raises ValueError naming the architecture. Unchanged without LoRA, with the
    transformers backend (it merges adapters itself) or when the adapter sync is not in play."""
    lora = cfg.trainer.lora
    if lora is None or cfg.lora_sync != "adapter" or cfg.generation.backend != "vllm":
        return cfg
    from sparring.workers.vllm_llm import lora_unsupported

    reason = lora_unsupported(model_path)
    if reason is None:
        return cfg
    if lora.sync == "adapter":
        raise ValueError(f"trainer.lora.sync=adapter: {reason}, so its engines cannot load adapters; set "
                         "trainer.lora.sync to merged (or auto)")  # fmt: skip
    log.warning("trainer.lora.sync=auto: %s; syncing merged weights instead of the adapter", reason)
    merged = lora.model_copy(update={"sync": "merged"})
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"lora": merged})})


def generator_weights(cfg: RunConfig, model_path: str) -> tuple[str, str, Path | None]:
    """(what the generator's engine starts from, the base model later adapter syncs apply to, the adapter dir
    the engine then loads or None) for a generator started on checkpoint `model_path`.

    Without adapter sync: (model_path, model_path, None). With `trainer.lora.sync: adapter` and a LoRA
    checkpoint (a replaced generator, a resumed run: `model_path/adapter/` exists), the later adapters apply to
    the *base* model (`adapter_base_model`), never to the merged checkpoint (they would apply twice): a vLLM
    engine starts from the base and loads the checkpoint's adapter; the transformers engine starts from the
    merged checkpoint (the same policy) and merges each later adapter onto the base."""
    from sparring.workers.trainer import LORA_ADAPTER_DIR
    from sparring.workers.weight_sync import ADAPTER_CONFIG_FILE, adapter_base_model

    adapter_dir = Path(model_path) / LORA_ADAPTER_DIR
    if cfg.lora_sync != "adapter" or not (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
        return model_path, model_path, None
    base = adapter_base_model(adapter_dir)
    if cfg.generation.backend == "vllm":
        return base, base, adapter_dir
    return model_path, base, None


class GeneratorWorker:
    """PromptTask -> GenerationGroup: K samples per prompt from one engine under one policy version."""

    def __init__(
        self,
        run_id: str,
        redis_url: str,
        config_json: str,
        model_path: str,
        version: int,
        consumer: str,
        staging_root: str,
    ) -> None:
        from sparring.workers.generation import make_engine
        from sparring.workers.weight_sync import read_adapter_dir

        self.cfg = RunConfig.model_validate_json(config_json)
        # before the engine starts: its processes inherit the cores
        pin_to_cores(self.cfg.resources.generators.cpu_cores, "resources.generators.cpu_cores")
        self.run_id, self.consumer = run_id, consumer
        self.staging_root = staging_root
        self.queue = _queue(run_id, redis_url, self.cfg)
        self.tokenizer = load_tokenizer(model_path)
        engine_path, self.base_model_path, adapter_dir = generator_weights(self.cfg, model_path)
        vllm_lora = self.cfg.lora_sync == "adapter" and self.cfg.generation.backend == "vllm"
        engine_extra: dict[str, Any] = {}
        if self.cfg.resources.placement == "colocated":  # vLLM only (RunConfig checks): sleeps while the trainer trains
            engine_extra["sleep_mode"] = True
        if vllm_lora:
            engine_extra["lora_rank"] = self.cfg.trainer.lora.rank  # type: ignore[union-attr]
        self.engine = make_engine(
            self.cfg.generation.backend,
            engine_path,
            self.cfg.generation,
            consumer,
            self.cfg.seed,
            dtype=self.cfg.policy.dtype,  # the trainer's dtype: engines sample from the weights it trains
            cpu_threads=self.cfg.generation.engine_threads,
            extra=engine_extra or None,
        )
        if adapter_dir is not None:
            tensors, adapter_config = read_adapter_dir(adapter_dir)
            self.engine.load_adapter(tensors, adapter_config, version, Path(staging_root) / "lora")  # type: ignore[attr-defined]
        self.version = version
        self.tokens_generated = 0
        self.generate_seconds = 0.0
        self._stopped = threading.Event()
        self.heartbeat = Heartbeat(self.queue.client, run_id, consumer, current_node())  # and SIGUSR1 stack dumps

    def stop(self) -> None:
        """Make a running `drain` return at its next read (an in-process worker being replaced)."""
        self._stopped.set()

    def info(self) -> dict[str, Any]:
        """Consumer, policy version, engine id and the GPUs Ray gave this process (`CUDA_VISIBLE_DEVICES`)."""
        return {"consumer": self.consumer, "version": self.version, "engine_id": self.engine.engine_id,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}  # fmt: skip

    def sleep(self, level: int) -> dict[str, Any]:
        """Placement colocated, before the trainer trains: the engine sleeps (`VLLMEngine.sleep`)."""
        return dict(self.engine.sleep(level))

    def wake_up(self, tags: list[str] | None = None) -> dict[str, Any]:
        """Placement colocated, after training: wake `tags` ("weights" before the sync, "kv_cache" after)."""
        return dict(self.engine.wake_up(tags))

    def drain(self, idle_rounds: int = 3) -> dict[str, float]:
        """Generate for prompt tasks until the prompts stream is idle; returns counters of this call."""
        g = self.cfg.generation
        tokens0, secs0 = self.tokens_generated, self.generate_seconds
        self.heartbeat.beat(force=True)  # a drain starts watched (the controller times it from its first beat)
        n = _drain(
            *_poison_aware(self.queue, self.cfg, "prompts", GENERATORS_GROUP, self.consumer, PromptTask, g.prompts_per_request, "generate"),
            self._process,
            idle_rounds,
            self._stopped.is_set,
            self.heartbeat.beat,
            lambda: self.queue.outstanding("prompts", GENERATORS_GROUP) == 0,
        )
        return {
            "groups": n,
            "tokens": self.tokens_generated - tokens0,
            "seconds": self.generate_seconds - secs0,
        }

    def _process(self, entries: list[Entry[PromptTask]]) -> None:
        from sparring.workers.generation import SamplingSpec

        g = self.cfg.generation
        stale = [e.record.record_id for e in entries if e.record.policy_version != self.version]
        if stale:
            # Leave the entries pending (not acked): the controller syncs this engine and they are redelivered.
            raise VersionMismatch(f"{self.consumer} holds version {self.version}; tasks need {stale[:3]}")
        entries, prompts, sampler_prompts = self._fit_context(entries)
        if not entries:
            return
        tasks = [e.record for e in entries]
        specs = [
            SamplingSpec(n=t.num_samples, temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens, seed=t.seed)
            for t in tasks
        ]
        t0 = time.perf_counter()
        held = self.version  # weights change only between requests (`load_weights`); each answer says which it came from
        # an engine serving a LoRA adapter stamps the adapter's version itself (the one that really answered)
        outputs = [
            [c if c.policy_version is not None else c.model_copy(update={"policy_version": held}) for c in out]
            for out in self.engine.generate(sampler_prompts, specs)
        ]
        latency = time.perf_counter() - t0
        self.generate_seconds += latency
        _make_room(self.queue, self.cfg, "generations", JUDGES_GROUP, len(entries))
        for entry, task, ids, samples in zip(entries, tasks, prompts, outputs, strict=True):
            try:
                group = GenerationGroup(
                    run_id=task.run_id,
                    iteration=task.iteration,
                    policy_version=self.version,
                    prompt_id=task.prompt_id,
                    prompt=task.prompt,
                    messages=task.messages,
                    prompt_token_ids=ids,
                    completions=samples,
                    anchor=None
                    if task.anchor_text is None
                    else Completion(
                        index=len(samples),
                        text=task.anchor_text,
                        token_ids=text_token_ids(self.tokenizer, task.anchor_text),
                        logprobs=None,
                        finish_reason="stop",
                    ),
                    engine_id=self.engine.engine_id,
                    seed=task.seed,
                    latency_s=latency / len(tasks),
                )
            except ValueError as err:
                self.queue.fail("prompts", GENERATORS_GROUP, entry, "generate", f"invalid generation: {err}", max_attempts=1)
                continue
            self.tokens_generated += sum(len(c.token_ids) for c in group.completions)
            self.queue.complete("prompts", GENERATORS_GROUP, entry.entry_id, "generations", [group])

    def _fit_context(
        self, entries: list[Entry[PromptTask]]
    ) -> tuple[list[Entry[PromptTask]], list[list[int]], list[list[int]]]:
        """Token ids of each task (the trainer's prompt and what the sampler continues: DRIFT samples from a
        guided transcript but trains on the original prompt); a task that cannot fit the context window is
        dead-lettered with the numbers, never allowed to fail its whole batch."""
        g = self.cfg.generation
        kept: list[Entry[PromptTask]] = []
        prompts: list[list[int]] = []
        sampler_prompts: list[list[int]] = []
        for entry in entries:
            t = entry.record
            ids = prompt_token_ids(self.tokenizer, t.messages or t.prompt)
            sampler_ids = [int(i) for i in self.tokenizer(t.generation_prompt)["input_ids"]] if t.generation_prompt else ids
            if len(sampler_ids) + g.max_new_tokens > g.max_model_len:
                reason = (
                    f"prompt of {len(sampler_ids)} tokens + max_new_tokens {g.max_new_tokens} exceeds "
                    f"generation.max_model_len {g.max_model_len}"
                )
                self.queue.fail("prompts", GENERATORS_GROUP, entry, "generate", reason, max_attempts=1)
                continue
            kept.append(entry)
            prompts.append(ids)
            sampler_prompts.append(sampler_ids)
        return kept, prompts, sampler_prompts

    def sample(
        self, prompts: list[str | list[dict[str, str]]], seeds: list[int]
    ) -> list[tuple[list[int], Completion]]:
        """One temperature-1 sample per prompt (a user message or a whole conversation) for evaluation,
        bypassing the streams: (prompt token ids, the response with its sampled log-probs) per prompt.
        Raises `VersionMismatch` never: the caller knows which version this engine holds (`info`)."""
        from sparring.workers.generation import SamplingSpec

        g = self.cfg.generation
        ids = [prompt_token_ids(self.tokenizer, p) for p in prompts]
        specs = [SamplingSpec(n=1, temperature=1.0, top_p=1.0, max_new_tokens=g.max_new_tokens, seed=s) for s in seeds]
        return [(prompt_ids, samples[0]) for prompt_ids, samples in zip(ids, self.engine.generate(ids, specs), strict=True)]

    def greedy(self, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        from sparring.workers.generation import SamplingSpec

        ids = [prompt_token_ids(self.tokenizer, p) for p in prompts]
        specs = [SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=0) for _ in prompts]
        return [out[0].token_ids for out in self.engine.generate(ids, specs)]

    def load_weights(self, update: Any) -> float:
        """Apply one WeightUpdate (one control message per sync); the version changes only on success."""
        from sparring.workers.weight_sync import apply_update

        seconds = apply_update(self.engine, update, self.base_model_path, self.staging_root, self.version)
        self.version = update.version
        return seconds

    def close(self) -> None:
        self.engine.close()


# --------------------------------------------------------------------------------------------------


class JudgeWorker:
    """GenerationGroup -> PreferencePair(s): the judge scores the group, the recipe builds the pairs."""

    def __init__(self, run_id: str, redis_url: str, config_json: str, consumer: str, judge: Any = None) -> None:
        """`judge` replaces the configured one (embedding, tests); None builds `cfg.judge` from the registry."""
        from sparring.workers.judges.pool import JudgePool
        from sparring.workers.judges.registry import build_judge
        from sparring.workers.recipes.winrate import BASELINE

        self.cfg = RunConfig.model_validate_json(config_json)
        pin_to_cores(self.cfg.resources.judges.cpu_cores, "resources.judges.cpu_cores")
        self.run_id, self.consumer = run_id, consumer
        self.queue = _queue(run_id, redis_url, self.cfg)
        self.judge = judge if judge is not None else build_judge(self.cfg.judge, self.cfg)
        # batching, cache, position-bias cancellation, timing, timeout and per-group isolation (pool.py)
        baseline = BASELINE if self.cfg.algorithm.pairs == "baseline" else None  # OSP: O(K) comparisons
        self.pool = None if self.judge is None else JudgePool(self.judge, self.cfg.judge.timeout_s, self.cfg.judge.cache_size, baseline)
        self.pairs_written = 0
        self.pairs_filtered = 0
        self.version_violations = 0  # pairs whose answers came from different weights (refused; must stay 0)
        self.judge_seconds = 0.0
        self._offloaded_from: Any = None  # placement colocated: the policy judge's device while it sleeps
        self._stopped = threading.Event()
        self.heartbeat = Heartbeat(self.queue.client, run_id, consumer, current_node())  # and SIGUSR1 stack dumps

    def stop(self) -> None:
        """Make a running `drain` return at its next read (an in-process worker being replaced)."""
        self._stopped.set()

    def drain(self, idle_rounds: int = 3) -> dict[str, float]:
        """Judge groups until the generations stream is idle; returns counters and `judge/*` metrics of this
        call (latency per judge call, cache hits, flip consistency, timeouts, failed groups, uncertainty)."""
        pairs0, secs0, filtered0, violations0 = self.pairs_written, self.judge_seconds, self.pairs_filtered, self.version_violations
        counters = getattr(self.judge, "counters", None)  # UncertaintyJudge's running totals
        unc0 = None if counters is None else dict(vars(counters))
        if self.pool is not None:
            self.pool.take_metrics()  # start this drain's window
        self.heartbeat.beat(force=True)  # a drain starts watched (the controller times it from its first beat)
        n = _drain(
            *_poison_aware(self.queue, self.cfg, "generations", JUDGES_GROUP, self.consumer, GenerationGroup, 32, "judge"),
            self._process,
            idle_rounds,
            self._stopped.is_set,
            self.heartbeat.beat,
            # every prompt is generated (a generation is written and its prompt acknowledged in one script) and
            # every generation judged: nothing more can arrive until the controller dispatches again
            lambda: (self.queue.outstanding("prompts", GENERATORS_GROUP) == 0
                     and self.queue.outstanding("generations", JUDGES_GROUP) == 0),
        )
        out: dict[str, float] = {"groups": n, "pairs": self.pairs_written - pairs0, "seconds": self.judge_seconds - secs0}
        if self.pool is not None:
            out.update(self.pool.take_metrics())
        out["judge/pairs_filtered"] = float(self.pairs_filtered - filtered0)
        out["judge/version_violations"] = float(self.version_violations - violations0)
        if counters is not None and unc0 is not None:
            pairs = counters.pairs - unc0["pairs"]
            out["judge/uncertainty_pairs"] = float(pairs)
            out["judge/uncertainty_dropped"] = float(counters.dropped - unc0["dropped"])
            out["judge/uncertainty_disagreed"] = float(counters.disagreed - unc0["disagreed"])
            if pairs:
                out["judge/uncertainty_bald_mean"] = (counters.bald_sum - unc0["bald_sum"]) / pairs
                out["judge/uncertainty_weight_mean"] = (counters.weight_sum - unc0["weight_sum"]) / pairs
        return out

    def _process(self, entries: list[Entry[GenerationGroup]]) -> None:
        from sparring.workers.recipes.pairs import build_anchor_pairs, build_pairs

        if self.cfg.algorithm.pairs in ANCHORED_PAIRS:  # no judge: fresh samples vs the prompt's fixed answer
            for entry in entries:
                try:
                    pairs = self._one_version(entry.record, build_anchor_pairs(entry.record, self.cfg.algorithm.pairs))
                except ValueError as err:
                    self.queue.fail("generations", JUDGES_GROUP, entry, "recipe", str(err), max_attempts=1)
                    continue
                _make_room(self.queue, self.cfg, "pairs", TRAINER_GROUP, len(pairs))
                self.pairs_written += self.queue.complete("generations", JUDGES_GROUP, entry.entry_id, "pairs", pairs)
            return
        from sparring.workers.judges.pool import GroupFailure, apply_confidence

        assert self.pool is not None, "judge.kind=none is only valid with pairs=drift or spin (config validation)"
        t0 = time.perf_counter()
        # A judge failure never stops the run: a group the judge raises on (or a batch that times out) is
        # retried by redelivery, then dead-lettered with the reason; the other groups are judged.
        outcomes = self.pool.judge_groups([e.record for e in entries])
        self.judge_seconds += time.perf_counter() - t0
        for entry, outcome in zip(entries, outcomes, strict=True):
            if isinstance(outcome, GroupFailure):
                self.queue.fail(
                    "generations", JUDGES_GROUP, entry, "judge", outcome.reason, self.cfg.resilience.max_deliveries
                )
                continue
            if self.cfg.algorithm.pairs == "pointwise":  # thumbs up/down per sample, no pairs
                self._complete_labels(entry, outcome)
                continue
            try:
                pairs = self._one_version(entry.record, build_pairs(entry.record, outcome, self.cfg.algorithm.pairs))
            except ValueError as err:
                self.queue.fail("generations", JUDGES_GROUP, entry, "recipe", str(err), max_attempts=1)
                continue
            pairs, dropped = apply_confidence(pairs, outcome)  # the uncertainty filter / sampler's drops
            self.pairs_filtered += dropped
            _make_room(self.queue, self.cfg, "pairs", TRAINER_GROUP, len(pairs))
            self.pairs_written += self.queue.complete("generations", JUDGES_GROUP, entry.entry_id, "pairs", pairs)

    def _complete_labels(self, entry: Entry[GenerationGroup], judgement: Any) -> None:
        """The pointwise recipe: each sample of the group labelled up/down by its judge score against
        `algorithm.label_threshold` (workers/recipes/labels.py), written to the feedback stream."""
        from sparring.workers.recipes.labels import pointwise_labels

        threshold = self.cfg.algorithm.label_threshold
        assert threshold is not None, "pairs=pointwise requires label_threshold (config validation)"
        try:
            labels = pointwise_labels(entry.record, judgement, threshold)
        except ValueError as err:
            self.queue.fail("generations", JUDGES_GROUP, entry, "recipe", str(err), max_attempts=1)
            return
        _make_room(self.queue, self.cfg, "feedback", TRAINER_GROUP, len(labels))
        self.pairs_written += self.queue.complete("generations", JUDGES_GROUP, entry.entry_id, "feedback", labels)

    def _one_version(self, group: GenerationGroup, pairs: list[PreferencePair]) -> list[PreferencePair]:
        """The pairs whose answers all come from the group's policy version; any other is dead-lettered and
        counted (`judge/version_violations`, which must stay 0: an engine takes weights only between requests)."""
        kept = []
        for pair in pairs:
            if pair.version_violation or pair.policy_version != group.policy_version:
                self.version_violations += 1
                versions = (pair.chosen.policy_version, pair.rejected.policy_version)
                self.queue.dead_letter(
                    "judge", pair.record_id, f"version violation: group v{group.policy_version}, answers {versions}"
                )
                continue
            kept.append(pair)
        return kept

    def load_weights(self, update: Any, staging_root: str | None = None) -> float:
        """Load one WeightUpdate into a judge that judges with the policy (`follows_policy`, e.g. self-preference,
        also as the primary of a composition) through the generators' `apply_update`; returns seconds.
        Judges with weights of their own ignore it (0.0)."""
        from sparring.workers.weight_sync import apply_update

        target = self._policy_judge()
        if target is None:
            return 0.0
        seconds = apply_update(target, update, target.model_path, staging_root, getattr(target, "version", None))
        target.version = update.version
        return seconds

    def _policy_judge(self) -> Any:
        """The judge (or the primary of a composition) that judges with the policy's weights, else None."""
        return next(
            (j for j in (self.judge, getattr(self.judge, "primary", None)) if getattr(j, "follows_policy", False)), None
        )

    def sleep(self) -> dict[str, Any]:
        """Placement colocated, while the trainer trains: a judge that judges with the policy (self-preference)
        holds a transformers copy of it; on a GPU that copy moves to CPU memory (`Module.to("cpu")`, then
        `torch.cuda.empty_cache()`) until `wake_up`, which runs before the weight sync. Judges with weights of
        their own (PairRM, density ratio, rule judges) and models already on the CPU stay as they are.
        Returns {"offloaded": bool, "device": the model's device or None}."""
        import torch

        model = getattr(self._policy_judge(), "model", None)
        if model is None:
            return {"offloaded": False, "device": None}
        device = next(model.parameters()).device
        if device.type == "cpu":
            return {"offloaded": False, "device": "cpu"}
        model.to("cpu")
        torch.cuda.empty_cache()
        self._offloaded_from = device
        return {"offloaded": True, "device": str(device)}

    def wake_up(self) -> dict[str, Any]:
        """Undo `sleep`: the policy judge's model goes back to the device it came from. {"restored": bool}."""
        device = self._offloaded_from
        if device is None:
            return {"restored": False}
        self._policy_judge().model.to(device)
        self._offloaded_from = None
        return {"restored": True}


# --------------------------------------------------------------------------------------------------


class TrainerWorker:
    """PreferencePair(s) of version v -> weights v+1: trains one iteration, checkpoints, offers the weights."""

    def __init__(
        self, run_id: str, redis_url: str, config_json: str, model_path: str, run_dir: str, ranks: Resources | None = None
    ) -> None:
        """`ranks`: where the other ranks of a sharded trainer go (`resources.trainer.num_ranks` > 1; this
        worker is rank 0 and spawns them: `sparring.workers.trainer_group.ShardedTrainer`)."""
        from sparring.workers.distributed import training_device
        from sparring.workers.trainer_group import ShardedTrainer, TrainerArgs

        self.cfg = RunConfig.model_validate_json(config_json)
        pin_to_cores(self.cfg.resources.trainer.cpu_cores, "resources.trainer.cpu_cores")  # before torch's threads start
        self.run_id = run_id
        self.client = connect(redis_url, outage_s=self.cfg.resilience.redis_outage_s, wait_s=self.cfg.resilience.redis_outage_s)
        self.queue = StreamQueue(self.client, run_id, self.cfg.storage.stream_maxlen)
        self.run_dir = Path(run_dir)
        args = TrainerArgs(model_path, self.cfg.trainer, self.cfg.algorithm, self.cfg.seed, self.cfg.policy.dtype)
        num_ranks = self.cfg.resources.trainer.num_ranks
        if num_ranks == 1:  # the device Ray assigned (cuda:0 under its CUDA_VISIBLE_DEVICES), else the CPU
            self.trainer: Any = args.build(training_device(), None)
        else:
            from sparring.workers.groups import RayRuntime

            self.trainer = ShardedTrainer(RayRuntime(), ranks or Resources(), f"{run_id}:trainer:{os.getpid()}", num_ranks, args)
        self.model_path = model_path
        self._initial: Any = None  # the initial policy for evaluation's KL, loaded on first use
        self._sender: Any = None  # the memory transport's MemorySender (per-tensor digests for delta syncs)
        self._uncommitted: list[str] = []
        self._uncommitted_feedback: list[str] = []  # feedback-stream entries of the last `train`
        self._feedback_records = 0  # training records the last `train` made of them (pairs or labelled answers)
        self._tokenizer: Any = None  # posted feedback's tokenizer (paired objectives), loaded on first use
        self.unpaired = self.cfg.algorithm.objective in UNPAIRED_OBJECTIVES  # KTO / BCO: workers/unpaired.py
        self._heldout: Any = None  # the diagnostics' held-out pairs (workers/diagnostics.py), read on first use
        self.heartbeat = Heartbeat(self.client, run_id, "trainer", current_node())  # RSS metric, SIGUSR1 stack dumps

    def initial_logps(self, prompts: list[list[int]], completions: list[Completion], batch_size: int = 16) -> list[float]:
        """Summed log-prob of each completion's tokens (as sampled; no stop token appended) under the initial
        policy (version 0), in nats: the reference side of evaluation's KL estimate. The initial policy is the
        trainer's frozen reference when it has one, else it is loaded once from the starting checkpoint."""
        import torch

        from sparring.shared.models import load_causal_lm
        from sparring.workers.logps import collate_sequences, sequence_logps

        model = self.trainer.initial_model
        adapter_off: Any = contextlib.nullcontext()
        if self.trainer.lora is not None:  # the base weights are version 0: the adapter disabled, no copy
            model, adapter_off = self.trainer.model, self.trainer.model.disable_adapter()
        elif model is None:
            if self._initial is None:
                self._initial = load_causal_lm(self.model_path, dtype=self.cfg.policy.dtype, device=self.trainer.device)
                self._initial.eval().requires_grad_(False)
            model = self._initial
        out: list[float] = []
        with torch.no_grad(), adapter_off:
            for i in range(0, len(prompts), batch_size):
                rows = [list(c.token_ids) for c in completions[i : i + batch_size]]
                batch = collate_sequences(prompts[i : i + batch_size], rows, self.trainer.pad_token_id)
                logps, _ = sequence_logps(model, batch)
                out += [float(x) for x in logps.tolist()]
        return out

    def info(self) -> dict[str, Any]:
        """The policy version the trainer holds, its device and process id (a readiness probe)."""
        return {"version": self.trainer.policy_version, "device": str(self.trainer.device), "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}  # fmt: skip

    def restore(self, checkpoint: str) -> int:
        """Continue from a checkpoint this trainer wrote (a resumed run); returns its policy version."""
        version, _ = self.trainer.load_checkpoint(Path(checkpoint))
        return version

    def commit(self, version: int, iteration: int | None = None) -> int:
        """Acknowledge the pairs of version `version` trained by the last `train` call (its iteration is
        recorded); returns how many. A replacement trainer that did not train them itself (its predecessor
        died after training, before the acknowledgement) acknowledges this consumer's pending pairs of
        `version` instead: they are the ones the recorded iteration trained on. In async mode, where an
        iteration trains pairs of several versions, those are the pending pairs of iterations up to
        `iteration` (a later batch's pairs stay pending for their own iteration)."""
        self._commit_feedback(version)
        online = self.cfg.schedule.mode == "async" and iteration is not None
        n = len(self._uncommitted)
        for entry_id in self._uncommitted:
            self.queue.complete("pairs", TRAINER_GROUP, entry_id, None, [])
        self._uncommitted = []
        if n:
            return n
        while ids := [
            e.entry_id
            for e in self.queue.read("pairs", TRAINER_GROUP, "trainer", PreferencePair, 4096, None)
            if (e.record.iteration <= iteration if online else e.record.policy_version == version)  # type: ignore[operator]
        ]:
            for entry_id in ids:
                self.queue.complete("pairs", TRAINER_GROUP, entry_id, None, [])
            n += len(ids)
        return n

    def _read_feedback(self, version: int) -> list[LabelledAnswer]:
        """This iteration's labelled answers from the feedback stream, sorted by record id (arrival order must
        not decide training order): every posted item not yet trained on (any version: it is off-policy) and
        the pointwise recipe's labels of `version` (others are stale: dead-lettered and acknowledged). They are
        acknowledged by `commit` once the iteration is recorded."""
        entries: list[Entry[LabelledAnswer]] = []
        first = True
        while batch := self.queue.read("feedback", TRAINER_GROUP, "trainer", LabelledAnswer, 4096, 0, include_pending=first):
            entries.extend(batch)
            first = False
        fresh = []
        for e in entries:
            if e.record.policy_version in (None, version):
                fresh.append(e)
            else:
                self.queue.dead_letter(
                    "train", e.record.record_id, f"stale: label from version {e.record.policy_version}, training {version}"
                )
                self.queue.complete("feedback", TRAINER_GROUP, e.entry_id, None, [])
        self._uncommitted_feedback = [e.entry_id for e in fresh]
        return sorted((e.record for e in fresh), key=lambda a: a.record_id)

    def _train_unpaired(
        self, pairs: list[PreferencePair], iteration: int, version: int, progress: Callable[[str], None]
    ) -> Any:
        """An unpaired objective's iteration (workers/unpaired.py): each pair of `version` split in two (chosen
        desirable, rejected undesirable), then the feedback stream's labelled answers (`_read_feedback`)."""
        from sparring.workers.recipes.labels import pair_labels
        from sparring.workers.unpaired import train_unpaired_iteration

        labelled = self._read_feedback(version)
        self._feedback_records = len(labelled)
        answers = [a for p in pairs for a in pair_labels(p)] + labelled
        result = train_unpaired_iteration(self.trainer, answers, iteration, progress=progress)
        result.metrics["feedback/posted"] = float(sum(a.policy_version is None for a in labelled))
        result.metrics["feedback/judged"] = float(sum(a.policy_version is not None for a in labelled))
        result.metrics["feedback/from_pairs"] = float(2 * len(pairs))
        return result

    def _feedback_as_pairs(self, iteration: int, version: int) -> tuple[list[PreferencePair], dict[str, float]]:
        """Posted feedback for a PAIRED objective (workers/recipes/labels.py::feedback_pairs): this iteration's
        thumbs-up answers to a conversation over its thumbs-down ones; an answer without an opposite label in
        the same iteration's feedback is not trained (`feedback/unpaired`)."""
        from sparring.workers.recipes.labels import feedback_pairs

        posted = self._read_feedback(version)
        if not posted:
            self._feedback_records = 0
            return [], {}
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_path)
        tok = self._tokenizer

        def tokenize(a: LabelledAnswer) -> tuple[list[int], list[int]]:
            prompt = list(a.prompt_token_ids) if a.prompt_token_ids else prompt_token_ids(tok, a.messages or a.prompt)
            return prompt, text_token_ids(tok, a.answer.text)

        pairs, unmatched = feedback_pairs(posted, tokenize, self.run_id, iteration, version)
        self._feedback_records = len(pairs)
        return pairs, {"feedback/posted": float(len(posted)), "feedback/pairs": float(len(pairs)),
                       "feedback/unpaired": float(len(unmatched))}  # fmt: skip

    def _commit_feedback(self, version: int) -> int:
        """Acknowledge the labelled answers the last `train` trained on (a replacement trainer: this consumer's
        pending ones of `version` and the posted ones, as `commit` does for pairs); returns how many."""
        n = len(self._uncommitted_feedback)
        for entry_id in self._uncommitted_feedback:
            self.queue.complete("feedback", TRAINER_GROUP, entry_id, None, [])
        self._uncommitted_feedback = []
        if n:
            return n
        for e in self.queue.read_pending("feedback", TRAINER_GROUP, "trainer", LabelledAnswer):
            if e.record.policy_version in (None, version):  # pending = delivered to the dead trainer's train
                self.queue.complete("feedback", TRAINER_GROUP, e.entry_id, None, [])
                n += 1
        return n

    def _heldout_split(self, pairs: list[PreferencePair]) -> tuple[list[PreferencePair], list[Any]]:
        """(pairs to train on, the held-out set tokenised) by `workers/diagnostics.py::HeldoutPairs`. A sharded
        trainer withholds the same pairs (so it trains what one rank would) but measures nothing: the set comes
        back empty there, as when `eval.heldout_pairs` is 0."""
        from sparring.workers.diagnostics import HeldoutPairs
        from sparring.workers.trainer import PolicyTrainer

        if not self.cfg.eval.heldout_pairs:
            return pairs, []
        if self._heldout is None:
            from sparring.shared.store import RunStore

            self._heldout = HeldoutPairs(RunStore(self.client), self.run_id, self.cfg.eval.heldout_pairs, self.cfg.seed)
        train = self._heldout.split(pairs)
        if not isinstance(self.trainer, PolicyTrainer):
            return train, []
        examples, _ = self.trainer.tokenize_pairs(self._heldout.pairs)
        return train, examples

    def _heldout_logps(self, examples: list[Any]) -> dict[str, Any] | None:
        """The held-out pairs' log-probs before training: the policy's, and the reference's (the initial
        policy's when the objective has one, else the iteration-start policy's); None without a set."""
        if not examples:
            return None
        before = self.trainer.pair_logps(examples)
        initial = self.cfg.algorithm.reference == "initial" and (self.trainer.lora is not None or self.trainer.initial_model is not None)
        reference = self.trainer.pair_logps(examples, initial=True) if initial else before
        return {"before": before, "reference": reference}

    def _heldout_metrics(self, examples: list[Any], logps: dict[str, Any]) -> dict[str, float]:
        from sparring.workers.diagnostics import heldout_metrics, objective_beta

        after = self.trainer.pair_logps(examples)
        win_prob = [e.win_prob for e in examples]
        return heldout_metrics(logps["before"], after, logps["reference"], win_prob, objective_beta(self.cfg.algorithm))

    def train(self, iteration: int, version: int) -> dict[str, Any]:
        """Train on every pending pair of `version` (sync mode), or of batch `iteration` within
        `schedule.max_staleness` versions of `version` (async mode; the rules: `workers/staleness.py::select_pairs`);
        returns metrics (with the staleness histogram and the drops by reason), counts and the WeightUpdate
        for v+1."""
        from sparring.workers.staleness import select_pairs, selection_metrics

        entries: list[Entry[PreferencePair]] = []
        first = True  # the first read returns this consumer's pending entries (a resumed iteration), then new ones
        while batch := self.queue.read("pairs", TRAINER_GROUP, "trainer", PreferencePair, 4096, 0, include_pending=first):
            entries.extend(batch)
            first = False
        s = self.cfg.schedule
        sel = select_pairs(entries, lambda e: e.record, iteration, version, s.max_staleness, s.mode == "async")
        for reason, dropped in sel.dropped.items():  # acknowledged: never trained, never lost uncounted
            for e in dropped:
                self.queue.dead_letter(
                    "train", e.record.record_id,
                    f"{reason}: pair of iteration {e.record.iteration} from version {e.record.policy_version}, "
                    f"training iteration {iteration} on version {version} (max_staleness {s.max_staleness})",
                )  # fmt: skip
                self.queue.complete("pairs", TRAINER_GROUP, e.entry_id, None, [])
        fresh: list[Entry[PreferencePair]] = sel.train  # later batches' pairs (async) stay pending

        def progress(msg: str) -> None:
            emit(self.client, self.run_id, "progress", stage="train", iteration=iteration, message=msg)
            self.heartbeat.beat()

        # Arrival order depends on which engine finished first; training order must not.
        fresh.sort(key=lambda e: e.record.record_id)
        if self.unpaired:  # KTO / BCO: the pairs split into labels, plus the run's feedback stream
            result = self._train_unpaired([e.record for e in fresh], iteration, version, progress)
        else:
            from_feedback, feedback_metrics = self._feedback_as_pairs(iteration, version)
            judged, heldout = self._heldout_split([e.record for e in fresh])
            before = self._heldout_logps(heldout)
            result = self.trainer.train_iteration(judged + from_feedback, iteration, progress=progress)
            result.metrics.update(feedback_metrics)
            if len(judged) < len(fresh):  # this iteration's pairs of held-out prompts, not trained
                result.metrics["heldout/pairs_withheld"] = float(len(fresh) - len(judged))
            if before is not None:
                result.metrics.update(self._heldout_metrics(heldout, before))
        result.metrics.update(selection_metrics(sel))
        for record_id, reason in result.rejected:
            self.queue.dead_letter("train", record_id, reason)
        # Acknowledged by `commit` once the controller has recorded the iteration: a run resumed after a crash
        # anywhere before that point retrains the iteration from the same pairs (they are still pending).
        self._uncommitted = [e.entry_id for e in fresh]
        ckpt, update = self._publish(result, version + 1, iteration)
        return {
            "metrics": result.metrics,
            # every pair of the iteration (those held out for the diagnostics included: `heldout/pairs_withheld`,
            # `train/pairs` is what was trained) + pairs (paired) or labelled answers (unpaired) of feedback
            "num_pairs": len(fresh) + self._feedback_records,
            "num_rejected": len(result.rejected),
            "num_stale": sum(len(d) for d in sel.dropped.values()),
            "checkpoint": str(ckpt),
            "update": update,
        }

    def warm_start(self) -> dict[str, Any]:
        """DRIFT's warm start (arXiv 2510.02341, the recipe's step 0; cacayaya/DRIFT configs/*/config-seed.yaml): the run's
        objective for `algorithm.drift_warm_start_epochs` epochs on the seed pairs, every DSAT log of the run's
        training pool with a `satisfied` answer (chosen) over its logged response (rejected), before
        iteration 1; then checkpoint and weights of version 1, as `train` returns them. `num_pairs` 0 (and
        nothing trained, version unchanged) when the pool has no seed pair."""
        from sparring.shared.prompts import run_prompts
        from sparring.workers.trainer import PolicyTrainer

        if not isinstance(self.trainer, PolicyTrainer):
            raise ValueError("algorithm.drift_warm_start_epochs needs a single-rank trainer (resources.trainer.num_ranks 1)")
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_path)
        tok, pairs = self._tokenizer, []
        for item in run_prompts(self.cfg).train:
            if item.reference_answer is None or item.anchor_text is None:
                continue
            chosen, rejected = (
                Completion(index=i, text=text, token_ids=text_token_ids(tok, text), logprobs=None, finish_reason="stop")
                for i, text in enumerate((item.reference_answer, item.anchor_text))
            )
            pairs.append(PreferencePair(
                run_id=self.run_id, iteration=0, policy_version=0, prompt_id=item.prompt_id, prompt=item.prompt,
                messages=item.messages, prompt_token_ids=prompt_token_ids(tok, item.messages or item.prompt),
                chosen=chosen, rejected=rejected, chosen_score=1.0, rejected_score=0.0, win_prob=1.0, judge="seed",
            ))  # fmt: skip
        if not pairs:
            return {"num_pairs": 0}
        cfg = self.trainer.trainer_cfg
        self.trainer.trainer_cfg = cfg.model_copy(update={"epochs": self.cfg.algorithm.drift_warm_start_epochs, "schedule_epochs": None})
        try:
            result = self.trainer.train_iteration(pairs, 0)
        finally:
            self.trainer.trainer_cfg = cfg
        for record_id, reason in result.rejected:
            self.queue.dead_letter("warm_start", record_id, reason)
        ckpt, update = self._publish(result, 1, 0)
        return {"metrics": result.metrics, "num_pairs": len(pairs) - len(result.rejected), "checkpoint": str(ckpt), "update": update}

    def _publish(self, result: Any, new_version: int, iteration: int) -> tuple[Path, Any]:
        """Checkpoint `new_version` and the weight update the engines load (the configured transport); sync
        metrics go into `result.metrics`."""
        from sparring.workers.weight_sync import MemorySender, object_store_update, safetensors_dir_update

        ckpt = self.trainer.save_checkpoint(self.run_dir / "checkpoints" / f"v{new_version}", new_version, iteration)
        self.heartbeat.beat(force=True)  # the RSS after training and checkpointing (the memory metrics)
        storage = self.cfg.storage
        if storage.weight_transport == "memory":
            if self._sender is None:  # kept across iterations: a delta sync compares with the last update
                self._sender = MemorySender(
                    storage.sync_bucket_mb << 20, delta=storage.sync_delta, full_every=storage.sync_full_every
                )
            if self.cfg.lora_sync == "adapter":  # the adapter tensors only (vLLM LoRA requests on the engines)
                tensors, adapter_config = self.trainer.adapter_for_sync()
                update = self._sender.update(tensors, new_version, adapter_config=adapter_config)
            else:  # gathered bucket by bucket from a sharded trainer's ranks; cast to the engines' dtype
                update = self.trainer.send_weights(self._sender, new_version, _engine_dtype(self.cfg.policy.dtype))
            result.metrics["sync/bytes"] = float(update.nbytes)  # a delta or an adapter sends fewer
            result.metrics["sync/sender_s"] = sum(self._sender.last_seconds.values())
        elif storage.weight_transport == "object_store":
            update = object_store_update(self.trainer.state_dict_for_sync(), new_version)
        else:
            update = safetensors_dir_update(ckpt, new_version)
        return ckpt, update


# --------------------------------------------------------------------------------------------------


class EvalWorker:
    """Held-out responses -> `eval/*` metrics: the evaluation judge (behind the judge pool) and the task
    evaluators of `eval.evaluators` (arithmetic and metric names: `workers/evaluation.py`). Beats like the
    other workers (consumer `eval`: its RSS in the memory metrics, its stacks on SIGUSR1 when an `evaluate`
    call overruns `resilience.stage_timeout_s.eval`)."""

    def __init__(self, run_id: str, redis_url: str, config_json: str) -> None:
        from sparring.shared import tasks
        from sparring.workers.judges.pool import JudgePool
        from sparring.workers.judges.registry import build_judge

        self.cfg = RunConfig.model_validate_json(config_json)
        self.run_id = run_id
        self.client = connect(redis_url, outage_s=self.cfg.resilience.redis_outage_s, wait_s=self.cfg.resilience.redis_outage_s)
        self.heartbeat = Heartbeat(self.client, run_id, "eval", current_node())  # RSS metric, SIGUSR1 stack dumps
        judge_cfg = self.cfg.eval_judge
        judge = None if judge_cfg is None else build_judge(judge_cfg, self.cfg)
        self.pool = None if judge is None else JudgePool(judge, judge_cfg.timeout_s, judge_cfg.cache_size)  # type: ignore[union-attr]
        self.evaluators = [tasks.require("evaluators", name)(self.cfg) for name in self.cfg.eval.evaluators]

    def evaluate(
        self,
        prompts: list[Any],
        version: int,
        current: list[Completion],
        baseline: list[Completion],
        previous: list[Completion] | None,
    ) -> dict[str, float]:
        """Win rates of `current` against `baseline` (iteration 0) and `previous` (the last iteration; None at
        iteration 1, when it is the baseline), and every task evaluator's metrics. Raises on a judge
        failure (the iteration is not recorded; a resumed run redoes it)."""
        from sparring.workers.evaluation import PREFIX, pair_groups, preference, win_rate_metrics
        from sparring.workers.judges.pool import GroupFailure

        out: dict[str, float] = {}
        self.heartbeat.beat(force=True)
        if self.pool is not None:
            others = {"iter0": baseline} if previous is None else {"iter0": baseline, "prev": previous}
            for name, other in others.items():
                outcomes = self.pool.judge_groups(pair_groups(self.run_id, prompts, current, other, version))
                self.heartbeat.beat()
                failed = [o.reason for o in outcomes if isinstance(o, GroupFailure)]
                if failed:
                    raise RuntimeError(f"evaluation judge failed on {len(failed)} pair(s): {failed[0]}")
                prefs = [preference(o) for o in outcomes]  # type: ignore[arg-type]
                out.update(win_rate_metrics(f"win_rate_vs_{name}", prefs))
                if previous is None:  # iteration 1: the previous policy is version 0, judged once
                    out.update(win_rate_metrics("win_rate_vs_prev", prefs))
        for evaluator in self.evaluators:
            metrics = evaluator.evaluate(prompts, [c.text for c in current], [c.text for c in baseline])
            out.update({f"{PREFIX}{evaluator.name}/{k}": float(v) for k, v in metrics.items()})
            self.heartbeat.beat()
        self.heartbeat.beat(force=True)  # the RSS after evaluating (the memory metrics)
        return out
