"""Posted feedback into a run's stream: validation (shared/feedback.py) then one all-or-nothing write.

`store_feedback` is what `POST /v1/runs/{run_id}/feedback` calls: the items are validated whole (one bad item
refuses the batch, every bad one named), then written to the run's `feedback` stream in one Redis script
(`StreamQueue.put_many`), deduplicated by their content ids, so nothing is ever partially stored and re-posting
stores nothing twice. How a run trains on them: docs/algorithms.md, "Feedback".
"""

from __future__ import annotations

import json
from typing import Any

from sparring.services.runs import RunService
from sparring.shared.feedback import FeedbackError, parse_feedback, parse_feedback_jsonl
from sparring.shared.records import LabelledAnswer

JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "text/plain")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(run_id: str, content_type: str, data: bytes) -> list[LabelledAnswer]:
    """The feedback items of a request body: JSONL (`application/x-ndjson` and friends: one item per line,
    problems named `line N`) or JSON `{"items": [...]}` (problems named `item N`). Raises `FeedbackError`."""
    media = content_type.split(";")[0].strip().lower()
    if media in JSONL_TYPES:
        return parse_feedback_jsonl(data, run_id)
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise FeedbackError("the body is not JSON; nothing was stored", [f"body: {err}"]) from None
    if not isinstance(body, dict) or set(body) != {"items"} or not isinstance(body["items"], list):
        raise FeedbackError(
            "the body must be {\"items\": [...]} (or a JSONL upload); nothing was stored",
            ["body: expected an object with exactly one field 'items', a list of feedback items"],
        )
    return parse_feedback(enumerate(body["items"], start=1), run_id, unit="item")


FEEDBACK_CLOSED_STATES = ("completed", "stopped")


def store_feedback(service: RunService, run_id: str, content_type: str, data: bytes) -> dict[str, Any]:
    """Validate and store; {"run_id", "items", "stored", "duplicates"}. Raises `RunNotFound` and `Conflict`
    (a completed or stopped run, which will never train again: before reading the body) and `FeedbackError`
    (nothing stored). A failed run takes feedback: it can resume."""
    from sparring.services.runs import Conflict

    state = service.view(run_id)["state"]  # raises RunNotFound
    if state in FEEDBACK_CLOSED_STATES:
        raise Conflict(
            f"run {run_id!r} is {state}: it will not train again, so feedback would never be used (feedback "
            "applies to a created, running, pausing, paused or failed run)"
        )
    queue = service.queue(run_id)
    records = parse_body(run_id, content_type, data)
    stored = queue.put_many("feedback", records)
    return {"run_id": run_id, "items": len(records), "stored": stored, "duplicates": len(records) - stored}
