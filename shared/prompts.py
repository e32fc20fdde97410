"""Prompt pools: the arena's train split or a JSONL file, as (prompt_id, prompt) pairs.

A JSONL pool has one object per line with a non-empty string `prompt` and an optional string `id`
(default: `line-{n}`). A bad file is rejected whole, every bad line named with its number and reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from sparring.shared.config import PromptsConfig


class PromptPoolError(ValueError):
    """A prompt pool that cannot be used; the message lists every bad line."""


def parse_jsonl_prompts(lines: list[str], source: str = "prompts") -> list[tuple[str, str]]:
    pool: list[tuple[str, str]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {n}: not valid JSON ({err.msg})")
            continue
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
        if pid in seen:
            problems.append(f"line {n}: duplicate id {pid!r} (first on line {seen[pid]})")
            continue
        seen[pid] = n
        pool.append((pid, prompt))
    if problems:
        raise PromptPoolError(f"{source}: {len(problems)} bad line(s)\n  " + "\n  ".join(problems))
    if not pool:
        raise PromptPoolError(f"{source}: no prompts")
    return pool


def load_prompt_pool(cfg: PromptsConfig) -> list[tuple[str, str]]:
    if cfg.source == "arena":
        from sparring.shared.arena import arena_prompts

        return [(p.prompt_id, p.prompt) for p in arena_prompts("train")]
    assert cfg.path is not None
    path = Path(cfg.path).expanduser()
    return parse_jsonl_prompts(path.read_text().splitlines(), str(path))
