"""Prompt pools: what the controller draws from each iteration, as `PromptItem`s.

Sources: the arena's train split; a JSONL file of `{"id"?, "prompt"}` or `{"id"?, "messages"}` lines; a JSONL dissatisfaction log
(DRIFT, schema in `shared/dsat.py`); or the arena's generated dissatisfaction logs. A bad file is rejected
whole, every bad line named with its number and reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from sparring.shared.config import PromptsConfig, RunConfig
from sparring.shared.dsat import DSATLog, Message, drift_generation_prompt, parse_dsat_jsonl
from sparring.shared.jsonl import duplicate_id, json_lines


class PromptPoolError(ValueError):
    """A prompt pool that cannot be used; the message lists every bad line."""


@dataclass(frozen=True)
class PromptItem:
    prompt_id: str
    prompt: str  # the user message the policy answers (and is trained on)
    messages: list[dict[str, str]] | None = None  # the whole conversation, when multi-turn
    guided_prompt: str | None = None  # DRIFT's guided transcript
    anchor_text: str | None = None  # DRIFT's logged dissatisfying response


def parse_jsonl_prompts(lines: list[str], source: str = "prompts") -> list[PromptItem]:
    """A prompt pool file: one `{"id"?, "prompt": str}` or `{"id"?, "messages": [{role, content}, ...]}` per
    line (a conversation ending in the user turn to answer). Every bad line is reported; none is dropped."""
    pool: list[PromptItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, obj in json_lines(lines, problems):
        if not isinstance(obj, dict):
            problems.append(f"line {n}: expected an object, got {type(obj).__name__}")
            continue
        unknown = sorted(set(obj) - {"id", "prompt", "messages"})
        if unknown:
            problems.append(f"line {n}: unknown field(s) {', '.join(map(repr, unknown))} (expected id, prompt or messages)")
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
        pool.append(PromptItem(pid, prompt, messages=messages))
    if problems:
        raise PromptPoolError(f"{source}: {len(problems)} bad line(s)\n  " + "\n  ".join(problems))
    if not pool:
        raise PromptPoolError(f"{source}: no prompts")
    return pool


def dsat_item(log: DSATLog) -> PromptItem:
    messages = [m.model_dump() for m in log.messages]
    return PromptItem(
        prompt_id=log.id,
        prompt=log.prompt,
        messages=messages if len(messages) > 1 else None,
        guided_prompt=drift_generation_prompt(log),
        anchor_text=log.response,
    )


def load_prompt_pool(cfg: PromptsConfig) -> list[PromptItem]:
    if cfg.source == "arena":
        from sparring.shared.arena import arena_prompts

        return [PromptItem(p.prompt_id, p.prompt) for p in arena_prompts("train")]
    if cfg.source == "arena_dsat":
        from sparring.shared.arena_dsat import arena_dsat_logs

        return [dsat_item(DSATLog.model_validate(d)) for d in arena_dsat_logs(cfg.dsat_count)]
    assert cfg.path is not None
    path = Path(cfg.path).expanduser()
    lines = path.read_text().splitlines()
    if cfg.source == "dsat":
        return [dsat_item(log) for log in parse_dsat_jsonl(lines, str(path))]
    return parse_jsonl_prompts(lines, str(path))


def load_run_prompts(cfg: RunConfig) -> list[PromptItem]:
    """The prompt pool of a run; a JSONL pool judged by an arena judge must hold only arena prompts."""
    pool = load_prompt_pool(cfg.prompts)
    if cfg.is_arena and cfg.prompts.source == "jsonl":
        from sparring.shared.arena import topic_of

        bad = []
        for item in pool:
            try:
                topic_of(item.prompt)
            except ValueError:
                bad.append(f"id {item.prompt_id!r}: not an arena prompt (judge.kind={cfg.judge.kind} needs them)")
        if bad:
            raise PromptPoolError(f"{cfg.prompts.path}: {len(bad)} bad prompt(s)\n  " + "\n  ".join(bad[:50]))
    return pool
