"""Dissatisfaction (DSAT) logs for DRIFT: one logged turn a user was unhappy with, per JSONL line.

    {"id": "c17",                                   # optional; default line-{n}
     "messages": [{"role": "user", "content": "..."}, ...],   # the conversation BEFORE the bad turn
     "response": "the logged assistant answer the user disliked",
     "feedback": "the user's dissatisfied follow-up"}

`messages` must end with a user message; roles are system/user/assistant. A bad file is rejected whole with
every bad line's number, field and reason (nothing partial is used). `drift_generation_prompt` builds the
plain-text transcript of DRIFT's `gen-drift.py::collate_fn` (cacayaya/DRIFT) that asks the policy for an
improved answer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sparring.shared.jsonl import duplicate_id, json_lines

DRIFT_INSTRUCTION = (
    "Based on the user's latest feedback, please provide an improved response that addresses their concerns."
)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class DSATLog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    response: str = Field(min_length=1, description="the logged assistant response the user was unhappy with")
    feedback: str = Field(min_length=1, description="the user's dissatisfied follow-up")
    satisfied: str | None = Field(
        None,
        min_length=1,
        description="optional: the later assistant response the user was satisfied with; a log that has one is a "
        "DRIFT seed pair (chosen = this, rejected = `response`) for the warm start (`algorithm.drift_warm_start_epochs`)",
    )

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, v: list[Message]) -> list[Message]:
        if v[-1].role != "user":
            raise ValueError(f"must end with a user message (the turn that got the bad response), ends with {v[-1].role}")
        return v

    @property
    def prompt(self) -> str:
        """The last user message (what the bad response answered)."""
        return self.messages[-1].content


class DSATError(ValueError):
    """A DSAT file that cannot be used; the message lists every bad line."""


def parse_dsat_jsonl(lines: list[str], source: str = "dsat") -> list[DSATLog]:
    logs: list[DSATLog] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, obj in json_lines(lines, problems):
        if isinstance(obj, dict):
            obj.setdefault("id", f"line-{n}")
        try:
            log = DSATLog.model_validate(obj)
        except ValidationError as err:
            for e in err.errors():
                loc = ".".join(str(p) for p in e["loc"]) or "(line)"
                msg = "missing field" if e["type"] == "missing" else e["msg"]
                problems.append(f"line {n}: {loc}: {msg}")
            continue
        if dup := duplicate_id(seen, log.id, n):
            problems.append(dup)
            continue
        logs.append(log)
    if problems:
        raise DSATError(f"{source}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))
    if not logs:
        raise DSATError(f"{source}: no DSAT logs")
    return logs


def drift_generation_prompt(log: DSATLog) -> str:
    """DRIFT's guided-generation context (gen-drift.py `collate_fn`): a plain-text transcript, not a chat
    template, ending in the improvement instruction and an open `Assistant:` turn."""
    parts: list[str] = []
    for m in log.messages:
        if m.role == "system":
            parts.append(f"{m.content}\n")
        else:
            parts.append(f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}")
    parts.append(f"Assistant: {log.response}")
    parts.append(f"User: {log.feedback}")
    parts.append(f"System: {DRIFT_INSTRUCTION}")
    return "\n".join(parts) + "\nAssistant:"
