"""Human feedback: unpaired thumbs-up/down on single answers, validated into `LabelledAnswer` records.

Production systems collect a label on one answer at a time, not a pair. An item is one JSON object:

    {"prompt": "Explain tides.", "answer": "The moon pulls ...", "label": true}
    {"messages": [{"role": "user", "content": "Hi"}], "answer": "Hello!", "label": "down", "weight": 0.5}

- `prompt` (a non-empty string: the user message) or `messages` (a conversation of {role, content} turns,
  roles system/user/assistant, ending in the user turn answered), exactly one of the two;
- `answer`: a non-empty string, the answer labelled;
- `label`: true = desirable (thumbs up), false = undesirable (thumbs down); the strings "up" and "down" are
  accepted as the same two values (any other string is refused);
- `weight` (optional, default 1): a finite number in (0, 1000], the example's loss weight (the trainer's
  step loss is sum(w*l)/sum(w)).

Nothing else is accepted (an unknown field is refused by name). Validation is the prompt pools' (shared/prompts.py,
shared/jsonl.py): every bad item is reported as `line N: field: problem` (JSONL upload) or `item N: ...` (a JSON
body's `items`, counted from 1), and one bad item refuses the whole batch, so nothing is partially stored.
Items are stored with deterministic ids (`LabelledAnswer.record_id`, a digest of conversation, answer, label and
weight): posting the same item again stores nothing twice.

This module knows nothing about Redis or HTTP.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from sparring.shared.dsat import Message
from sparring.shared.jsonl import JSONLDecodeError, decode_lines, json_lines
from sparring.shared.records import Completion, LabelledAnswer

FIELDS = ("prompt", "messages", "answer", "label", "weight")
LABEL_WORDS = {"up": True, "down": False}
MAX_WEIGHT = 1000.0


class FeedbackError(ValueError):
    """Feedback that cannot be stored; `problems` lists every bad item (`line N: ...` / `item N: ...`)."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


def conversation_id(prompt: str, messages: list[dict[str, str]] | None) -> str:
    """The `prompt_id` of posted feedback: a digest of the conversation, so answers to one prompt share it."""
    return "fb-" + hashlib.sha256(json.dumps([prompt, messages], sort_keys=True).encode()).hexdigest()[:16]


def _item(obj: Any, run_id: str) -> tuple[LabelledAnswer | None, str | None]:
    """(record, None) for a valid item, else (None, "field: problem")."""
    if not isinstance(obj, dict):
        return None, f"expected an object, got {type(obj).__name__}"
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        return None, f"unknown field(s) {', '.join(map(repr, unknown))} (expected prompt or messages, answer, label, weight)"
    if ("prompt" in obj) == ("messages" in obj):
        return None, "needs exactly one of 'prompt' (a string) or 'messages' (a conversation)"
    messages: list[dict[str, str]] | None = None
    if "messages" in obj:
        try:
            turns = TypeAdapter(list[Message]).validate_python(obj["messages"])
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(p) for p in ("messages", *e["loc"]))
            return None, f"field '{loc}': {'missing field' if e['type'] == 'missing' else e['msg']}"
        if not turns or turns[-1].role != "user":
            return None, "field 'messages' must end with a user message"
        prompt = turns[-1].content
        messages = [t.model_dump() for t in turns] if len(turns) > 1 else None
    else:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            return None, f"field 'prompt' must be a non-empty string, got {prompt!r:.80}"
    answer = obj.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        return None, f"field 'answer' must be a non-empty string, got {answer!r:.80}"
    if "label" not in obj:
        return None, "field 'label': missing (true/'up' = desirable, false/'down' = undesirable)"
    label = obj["label"]
    if isinstance(label, str) and label in LABEL_WORDS:
        label = LABEL_WORDS[label]
    if not isinstance(label, bool):
        return None, f"field 'label' must be true, false, 'up' or 'down', got {obj['label']!r:.80}"
    weight = obj.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or isinstance(weight, float) and not math.isfinite(weight):
        return None, f"field 'weight' must be a number, got {weight!r:.80}"
    if not 0.0 < weight <= MAX_WEIGHT:  # compared exactly: a JSON integer may be too large for a float
        return None, f"field 'weight' must be in (0, {MAX_WEIGHT:g}], got {weight!r:.80}"
    record = LabelledAnswer(
        run_id=run_id,
        prompt_id=conversation_id(prompt, messages),
        prompt=prompt,
        messages=messages,
        answer=Completion(index=0, text=answer, token_ids=[], logprobs=None, finish_reason="stop"),
        label=label,
        weight=float(weight),
    )
    return record, None


def parse_feedback(values: Iterable[tuple[int, Any]], run_id: str, unit: str = "line") -> list[LabelledAnswer]:
    """`LabelledAnswer`s of (number, JSON value) items, or `FeedbackError` listing every bad one as
    `{unit} N: problem` (nothing is returned when any item is bad). Raises it too for an empty batch."""
    records: list[LabelledAnswer] = []
    problems: list[str] = []
    for n, obj in values:
        record, problem = _item(obj, run_id)
        if problem is not None:
            problems.append(f"{unit} {n}: {problem}")
        elif record is not None:
            records.append(record)
    if problems:
        raise FeedbackError(f"{len(problems)} bad feedback {unit}(s); nothing was stored", problems)
    if not records:
        raise FeedbackError("no feedback items", [f"the {'file' if unit == 'line' else 'body'} holds no item"])
    return records


def parse_feedback_jsonl(data: bytes, run_id: str) -> list[LabelledAnswer]:
    """A JSONL upload (one item per line, strict JSON and UTF-8 as shared/jsonl.py reads it); `FeedbackError`
    names every bad line (undecodable text, invalid JSON and invalid items alike)."""
    try:
        lines = decode_lines(data)
    except JSONLDecodeError as err:
        raise FeedbackError("the upload is not UTF-8 text; nothing was stored", [str(err)]) from None
    problems: list[str] = []
    values = list(json_lines(lines, problems))
    try:
        records = parse_feedback(values, run_id, "line")
    except FeedbackError as err:
        if not problems:
            raise
        merged = sorted(problems + err.problems if values else problems, key=_line_number)
        raise FeedbackError(f"{len(merged)} bad feedback line(s); nothing was stored", merged) from None
    if problems:
        raise FeedbackError(f"{len(problems)} bad feedback line(s); nothing was stored", problems)
    return records


def _line_number(problem: str) -> int:
    head = problem.split(":", 1)[0].split()
    return int(head[1]) if len(head) == 2 and head[1].isdigit() else 0
