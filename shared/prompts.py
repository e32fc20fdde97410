"""Prompt pools: what the controller draws from each iteration, as `PromptItem`s.

Sources: a JSONL file of `{"id"?, "prompt"}` or `{"id"?, "messages"}` lines; a JSONL dissatisfaction log
(DRIFT, schema in `shared/dsat.py`); or a prompt source a task registers (`shared/tasks.py`). A bad file
is rejected whole, every bad line named with its number and reason.

`run_prompts` splits a run's pool into the prompts training draws from and the held-out prompts the
evaluation samples (`eval.prompts`, or a deterministic split of the run's own pool that is never trained on).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from sparring.shared.config import PromptsConfig, RunConfig
from sparring.shared.dsat import DSATLog, Message, drift_generation_prompt, parse_dsat_jsonl
from sparring.shared.jsonl import JSONLDecodeError, decode_lines, duplicate_id, json_lines


class PromptPoolError(ValueError):
    """A prompt pool that cannot be used; the message lists every bad line."""


@dataclass(frozen=True)
class PromptItem:
    prompt_id: str
    prompt: str  # the user message the policy answers (and is trained on)
    messages: list[dict[str, str]] | None = None  # the whole conversation, when multi-turn
    guided_prompt: str | None = None  # DRIFT's guided transcript
    anchor_text: str | None = None  # DRIFT's logged dissatisfying response
    reference_answer: str | None = None  # a ground-truth answer (SPIN's chosen side; JSONL field `answer`)

    def fixed_answer(self, pairs: str) -> str | None:
        """The answer the recipe `pairs` pairs every sample with: DRIFT's logged response, SPIN's reference
        answer, None for judged recipes."""
        return {"drift": self.anchor_text, "spin": self.reference_answer}.get(pairs)


def parse_jsonl_prompts(lines: list[str], source: str = "prompts") -> list[PromptItem]:
    """A prompt pool file: one `{"id"?, "prompt": str}` or `{"id"?, "messages": [{role, content}, ...]}` per
    line (a conversation ending in the user turn to answer), each with an optional `"answer": str`, a reference
    answer (SPIN's chosen side; other recipes ignore it). Every bad line is reported; none is dropped."""
    pool: list[PromptItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, obj in json_lines(lines, problems):
        if not isinstance(obj, dict):
            problems.append(f"line {n}: expected an object, got {type(obj).__name__}")
            continue
        unknown = sorted(set(obj) - {"id", "prompt", "messages", "answer"})
        if unknown:
            problems.append(
                f"line {n}: unknown field(s) {', '.join(map(repr, unknown))} (expected id, prompt or messages, answer)"
            )
            continue
        answer = obj.get("answer")
        if answer is not None and (not isinstance(answer, str) or not answer.strip()):
            problems.append(f"line {n}: field 'answer' must be a non-empty string")
            continue
        if ("prompt" in obj) == ("messages" in obj):
            problems.append(f"line {n}: needs exactly one of 'prompt' (a string) or 'messages' (a conversation)")
            continue
        messages: list[dict[str, str]] | None = None
        if "messages" in obj:
            try:
                turns = TypeAdapter(list[Message]).validate_python(obj["messages"])
            except ValidationError as err:
                e = err.errors()[0]
                loc = ".".join(str(p) for p in ("messages", *e["loc"]))
                problems.append(f"line {n}: {loc}: {'missing field' if e['type'] == 'missing' else e['msg']}")
                continue
            if not turns or turns[-1].role != "user":
                problems.append(f"line {n}: field 'messages' must end with a user message")
                continue
            prompt = turns[-1].content
            messages = [t.model_dump() for t in turns] if len(turns) > 1 else None
        else:
            prompt = obj["prompt"]
            if not isinstance(prompt, str) or not prompt.strip():
                problems.append(f"line {n}: field 'prompt' must be a non-empty string")
                continue
        pid = obj.get("id", f"line-{n}")
        if not isinstance(pid, str) or not pid:
            problems.append(f"line {n}: field 'id' must be a non-empty string")
            continue
        if dup := duplicate_id(seen, pid, n):
            problems.append(dup)
            continue
        pool.append(PromptItem(pid, prompt, messages=messages, reference_answer=answer))
    if problems:
        raise PromptPoolError(f"{source}: {len(problems)} bad line(s)\n  " + "\n  ".join(problems))
    if not pool:
        raise PromptPoolError(f"{source}: no prompts (the file has no non-empty line)")
    return pool


# Prompt columns looked for, in order, when a dataset's config names none (the common preference layouts: TRL's
# `prompt`, a chat `messages` list, UltraFeedback's `chosen` conversation); id columns likewise.
PROMPT_COLUMNS = ("prompt", "messages", "chosen")
ID_COLUMNS = ("id", "prompt_id")


def dataset_columns(
    columns: list[str], prompt_column: str | None, messages_column: str | None, id_column: str | None, source: str
) -> tuple[str, bool, str | None]:
    """(prompt column, whether it holds conversations only, id column or None) of a dataset with `columns`."""
    have = ", ".join(columns)
    named = prompt_column or messages_column
    if named is not None:
        if named not in columns:
            field = "prompt_column" if prompt_column else "messages_column"
            raise PromptPoolError(f"{source}: prompts.{field}: no column {named!r} (columns: {have})")
        column, conversation = named, messages_column is not None
    else:
        found = [c for c in PROMPT_COLUMNS if c in columns]
        if not found:
            raise PromptPoolError(
                f"{source}: no prompt column (looked for {', '.join(PROMPT_COLUMNS)}; columns: {have}): "
                "set prompts.prompt_column or prompts.messages_column"
            )
        column, conversation = found[0], found[0] != "prompt"
    if id_column is not None and id_column not in columns:
        raise PromptPoolError(f"{source}: prompts.id_column: no column {id_column!r} (columns: {have})")
    return column, conversation, id_column or next((c for c in ID_COLUMNS if c in columns), None)


def _conversation(value: Any, col: str) -> tuple[list[dict[str, str]] | None, str | None]:
    """(turns up to the last user turn, or None with the reason) of a conversation cell."""
    if not isinstance(value, list):
        return None, f"column {col!r} must be a conversation (a list of {{role, content}}), got {type(value).__name__}"
    turns = [{k: v for k, v in t.items() if v is not None} if isinstance(t, dict) else t for t in value]
    try:
        messages = TypeAdapter(list[Message]).validate_python(turns)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in (col, *e["loc"]))
        return None, f"{loc}: {'missing field' if e['type'] == 'missing' else e['msg']}"
    while messages and messages[-1].role == "assistant":  # a preference conversation: keep the prompt part
        messages.pop()
    if not messages or messages[-1].role != "user":
        return None, f"column {col!r} must hold a conversation ending with a user message (trailing assistant turns are dropped)"
    return [m.model_dump() for m in messages], None


def parse_dataset_prompts(
    rows: Iterable[dict[str, Any]], column: str, conversation: bool, id_column: str | None, source: str
) -> list[PromptItem]:
    """A prompt pool from dataset rows (`dataset_columns` picks the columns). Every bad row is reported with its
    row (numbered from 0, as `dataset[i]`) and column; none is dropped. Other columns are ignored."""
    pool: list[PromptItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows):
        value = row.get(column)
        messages: list[dict[str, str]] | None = None
        if value is None:
            problems.append(f"row {n}: column {column!r} is empty (null)")
            continue
        if isinstance(value, str) and not conversation:
            if not value.strip():
                problems.append(f"row {n}: column {column!r} must be a non-empty string")
                continue
            prompt = value
        else:
            turns, why = _conversation(value, column)
            if turns is None:
                problems.append(f"row {n}: {why}")
                continue
            prompt, messages = turns[-1]["content"], turns if len(turns) > 1 else None
        raw_id = row.get(id_column) if id_column else f"row-{n}"
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            raw_id = str(raw_id)
        if not isinstance(raw_id, str) or not raw_id:
            problems.append(f"row {n}: column {id_column!r} must be a non-empty string or an integer, got {raw_id!r}")
            continue
        if raw_id in seen:
            problems.append(f"row {n}: duplicate id {raw_id!r} (first on row {seen[raw_id]})")
            continue
        seen[raw_id] = n
        pool.append(PromptItem(raw_id, prompt, messages=messages))
    if problems:
        shown = problems[:100] + ([f"... and {len(problems) - 100} more"] if len(problems) > 100 else [])
        raise PromptPoolError(f"{source}: {len(problems)} bad row(s) (rows numbered from 0)\n  " + "\n  ".join(shown))
    if not pool:
        raise PromptPoolError(f"{source}: no prompts")
    return pool


def load_dataset_prompts(cfg: PromptsConfig) -> list[PromptItem]:
    """The pool of `prompts: {source: hf, ...}` (shared/hf_data.py opens it); raises `PromptPoolError`."""
    from sparring.shared.hf_data import DatasetError, open_dataset

    assert cfg.path is not None
    try:
        ds = open_dataset(cfg.path, cfg.split)
    except DatasetError as err:
        raise PromptPoolError(f"{cfg.path}: 1 problem\n  {err}") from None
    column, conversation, id_column = dataset_columns(
        list(ds.column_names), cfg.prompt_column, cfg.messages_column, cfg.id_column, cfg.path
    )
    rows = ds.select_columns([c for c in (column, id_column) if c is not None])
    return parse_dataset_prompts(rows, column, conversation, id_column, cfg.path)


def dsat_item(log: DSATLog) -> PromptItem:
    messages = [m.model_dump() for m in log.messages]
    return PromptItem(
        prompt_id=log.id,
        prompt=log.prompt,
        messages=messages if len(messages) > 1 else None,
        guided_prompt=drift_generation_prompt(log),
        anchor_text=log.response,
        reference_answer=log.satisfied,  # DRIFT's seed pair: the satisfying answer over the logged one
    )


def load_prompt_pool(cfg: PromptsConfig) -> list[PromptItem]:
    """The pool `cfg.source` names; raises `PromptPoolError` naming every bad line of a file."""
    if cfg.source == "hf":
        return load_dataset_prompts(cfg)
    if cfg.source not in ("jsonl", "dsat"):
        from sparring.shared import tasks

        return tasks.require("prompt_sources", cfg.source)(cfg)
    assert cfg.path is not None
    path = Path(cfg.path).expanduser()
    try:
        lines = decode_lines(path.read_bytes())  # the reader the API upload uses (shared/jsonl.py)
    except JSONLDecodeError as err:
        raise PromptPoolError(f"{path}: 1 bad line(s)\n  {err}") from None
    if cfg.source == "dsat":
        return [dsat_item(log) for log in parse_dsat_jsonl(lines, str(path))]
    return parse_jsonl_prompts(lines, str(path))


def check_pool(pool: list[PromptItem], prompts: PromptsConfig, cfg: RunConfig, where: str = "prompts") -> None:
    """Refuse a pool the run cannot use, naming every bad prompt: prompts a task's judge cannot score (a
    judge registered by a task with a `prompt_check`, used on a pool from another source), and logged
    responses without DRIFT (or DRIFT without them)."""
    from sparring.shared import tasks

    origin = tasks.lookup("prompt_sources", prompts.source)
    checks: dict[str, tuple[str, Any]] = {}  # one check per task, named by the first of its judges the run uses
    for judge in (cfg.judge, cfg.eval_judge):
        found = None if judge is None else tasks.lookup("judges", judge.kind)
        if judge is None or found is None or found[0].prompt_check is None or (origin and origin[0] is found[0]):
            continue
        checks.setdefault(found[0].name, (judge.kind, found[0].prompt_check))
    bad: list[str] = []
    for kind, check in checks.values():
        bad += [f"id {item.prompt_id!r}: {reason} (judge.kind={kind})" for item in pool if (reason := check(item.prompt))]
    if where == "prompts" and cfg.algorithm.pairs == "spin":
        missing = [item.prompt_id for item in pool if item.reference_answer is None]
        if missing:
            bad.append(
                f"algorithm.pairs=spin needs a reference answer on every prompt (the JSONL field 'answer'); "
                f"{len(missing)} prompt(s) have none, e.g. id {missing[0]!r}"
            )
    elif where == "prompts" and (cfg.algorithm.pairs == "drift") != all(item.anchor_text is not None for item in pool):
        bad.append(
            f"algorithm.pairs={cfg.algorithm.pairs} needs "
            + ("a logged response on every prompt (a dissatisfaction-log source)" if cfg.algorithm.pairs == "drift"
               else "a prompt source without logged responses (those are DRIFT's)")
        )  # fmt: skip
    if bad:
        raise PromptPoolError(f"{prompts.path or where + '.source=' + prompts.source}: {len(bad)} bad prompt(s)\n  " + "\n  ".join(bad[:50]))


def load_run_prompts(cfg: RunConfig) -> list[PromptItem]:
    """The prompt pool of a run, checked against its judges and recipe (`check_pool`)."""
    pool = load_prompt_pool(cfg.prompts)
    check_pool(pool, cfg.prompts, cfg)
    return pool


@dataclass(frozen=True)
class RunPrompts:
    """A run's prompts: those training draws from, and the held-out ones the evaluation samples."""

    train: list[PromptItem]
    heldout: list[PromptItem]


def run_prompts(cfg: RunConfig) -> RunPrompts:
    """Train and held-out prompts of a run.

    With `eval.prompts` the held-out prompts are the first `eval.num_prompts` of that pool and training
    uses the whole run pool. Without it, min(eval.num_prompts, len(pool) // 2) prompts of the run's pool,
    chosen by a permutation seeded with the run seed, are held out and never dispatched for training.
    With `eval.enabled: false` nothing is held out. Raises `PromptPoolError`.
    """
    import random

    pool = load_run_prompts(cfg)
    if not cfg.eval.enabled:
        return RunPrompts(pool, [])
    if cfg.eval.prompts is not None:
        heldout = load_prompt_pool(cfg.eval.prompts)
        check_pool(heldout, cfg.eval.prompts, cfg, where="eval.prompts")
        return RunPrompts(pool, heldout[: cfg.eval.num_prompts])
    n = min(cfg.eval.num_prompts, len(pool) // 2)
    order = list(range(len(pool)))
    random.Random(f"eval-split:{cfg.seed}").shuffle(order)
    held = set(order[:n])
    prompts = RunPrompts([p for i, p in enumerate(pool) if i not in held], [pool[i] for i in sorted(held)])
    check_schedule(len(prompts.train), cfg)
    return prompts


def check_schedule(n_train: int, cfg: RunConfig) -> None:
    """Refuse a training pool too small for `schedule.prompt_schedule: disjoint` (PromptPoolError, numbers named)."""
    s = cfg.schedule
    if s.prompt_schedule == "disjoint" and n_train < s.iterations * s.prompts_per_iteration:
        raise PromptPoolError(
            f"schedule.prompt_schedule=disjoint needs iterations x prompts_per_iteration = {s.iterations} x "
            f"{s.prompts_per_iteration} = {s.iterations * s.prompts_per_iteration} training prompts; the pool has "
            f"{n_train} (after holding out the evaluation prompts). Add prompts, lower prompts_per_iteration, or "
            "use prompt_schedule random"
        )


def iteration_prompt_indices(n_train: int, cfg: RunConfig, iteration: int) -> list[int]:
    """Indices into the training pool that iteration `iteration` (1-based) dispatches, in dispatch order.

    `random`: min(prompts_per_iteration, n_train) drawn without replacement by a generator seeded with (seed,
    iteration): draws of different iterations overlap. `disjoint`: one permutation seeded with the run seed,
    cut into consecutive chunks of prompts_per_iteration; iteration t takes chunk t (SPPO's and RLHFlow's
    per-iteration prompt sets, `uclaml/SPPO` run_sppo_mistral.sh `sppo-iter${i}`, `RLHFlow/Online-RLHF`
    run_loop2.sh `ultrafeedback_iter${i}`). `full`: every training prompt, shuffled per iteration (DRIFT
    regenerates for the same dissatisfaction set each iteration). Deterministic for a config; raises
    PromptPoolError when a disjoint chunk runs past the pool.
    """
    import numpy as np

    s = cfg.schedule
    if s.prompt_schedule == "random":
        rng = np.random.default_rng([cfg.seed, iteration])
        return [int(i) for i in rng.choice(n_train, size=min(s.prompts_per_iteration, n_train), replace=False)]
    if s.prompt_schedule == "full":
        return [int(i) for i in np.random.default_rng([cfg.seed, iteration]).permutation(n_train)]
    check_schedule(n_train, cfg)
    order = np.random.default_rng([cfg.seed, 0x5EED]).permutation(n_train)
    start = (iteration - 1) * s.prompts_per_iteration
    return [int(i) for i in order[start : start + s.prompts_per_iteration]]
