"""Prompt pools: what the controller draws from each iteration, as `PromptItem`s.

Sources: the arena's train split; a JSONL file of `{"id"?, "prompt"}` lines; a JSONL dissatisfaction log
(DRIFT, schema in `shared/dsat.py`); or the arena's generated dissatisfaction logs. A bad file is rejected
whole, every bad line named with its number and reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparring.shared.config import PromptsConfig
from sparring.shared.dsat import DSATLog, drift_generation_prompt, parse_dsat_jsonl
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


def parse_jsonl_prompts(lines: list[str], source: str = "prompts") -> list[tuple[str, str]]:
    pool: list[tuple[str, str]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, obj in json_lines(lines, problems):
        if not isinstance(obj, dict):
            problems.append(f"line {n}: expected an object, got {type(obj).__name__}")
            continue
        prompt = obj.get("prompt")
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
        pool.append((pid, prompt))
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
    return [PromptItem(pid, prompt) for pid, prompt in parse_jsonl_prompts(lines, str(path))]
