"""A run's dead letters as the API and the CLI show them, and their re-queue.

A dead letter (`run:{id}:dead`, shared/queue.py) is an entry a stage gave up on: its stage, reason, delivery
count and, where the stage had one, the payload it failed on. Listed here with the prompt it came from
(read from the payload, else from the record id `prompt@vN[:i>j]`), its iteration and policy version.

Re-queue: sync mode trains iteration t only on samples of policy version t - 1, so a re-queued letter's
prompt is dispatched again in the run's *next* iteration, at that iteration's version (the controller's
dispatch reads `RunStore.requeued_prompts`), and the letter leaves the dead stream. A letter whose prompt is
unknown (a trimmed entry) cannot be re-queued. Only a run that will run another iteration takes re-queues:
created, running, pausing, paused, or failed (resumable).
"""

from __future__ import annotations

import re
from typing import Any

import msgpack

from sparring.services.runs import Conflict, RequestError, RunService
from sparring.shared.queue import DEAD
from sparring.shared.records import DeadLetter

REQUEUE_STATES = ("created", "running", "pausing", "paused", "failed")
_RECORD_ID = re.compile(r"^(?P<prompt>.+)@v(?P<version>\d+)(:\d+>\d+)?$")


class DeadLetterNotFound(LookupError):
    """No dead letter with this entry id in the run (404)."""


def _view(entry_id: str, letter: DeadLetter) -> dict[str, Any]:
    about: dict[str, Any] = {}
    if letter.payload:
        try:
            decoded = msgpack.unpackb(letter.payload, raw=False)
            about = decoded if isinstance(decoded, dict) else {}
        except Exception:  # noqa: BLE001 - an undecodable payload is what some letters are about
            about = {}
    match = _RECORD_ID.match(letter.item_id)
    prompt_id = about.get("prompt_id") or (match.group("prompt") if match else None)
    version = about.get("policy_version", int(match.group("version")) if match else None)
    return {
        "entry_id": entry_id,
        "letter_id": letter.record_id,
        "stage": letter.stage,
        "item_id": letter.item_id,
        "prompt_id": prompt_id if isinstance(prompt_id, str) else None,
        "iteration": about.get("iteration") if isinstance(about.get("iteration"), int) else None,
        "policy_version": version if isinstance(version, int) else None,
        "attempts": letter.attempts,
        "reason": letter.reason,
        "requeueable": isinstance(prompt_id, str),
    }


def dead_letters(service: RunService, run_id: str) -> list[dict[str, Any]]:
    """Every dead letter of the run still in its dead stream, oldest first."""
    return [_view(eid, letter) for eid, letter in service.queue(run_id).read_all(DEAD, DeadLetter)]


def requeue(service: RunService, run_id: str, entry_ids: list[str] | None) -> dict[str, Any]:
    """Re-queue the letters `entry_ids` (None: every re-queueable one): their prompts are dispatched again in
    the run's next iteration and the letters leave the dead stream. Raises `DeadLetterNotFound` for an
    unknown id given alone, `RequestError` listing unknown ids among several, `Conflict` for a run that will
    not run another iteration or a single letter that cannot be re-queued."""
    state = service.view(run_id)["state"]
    if state not in REQUEUE_STATES:
        raise Conflict(
            f"run {run_id!r} is {state}: it will not run another iteration to dispatch a re-queued prompt "
            f"(re-queue into a run that is {', '.join(REQUEUE_STATES)})"
        )
    letters = {v["entry_id"]: v for v in dead_letters(service, run_id)}
    if entry_ids is None:
        chosen = list(letters.values())
    else:
        unknown = [e for e in entry_ids if e not in letters]
        if unknown and len(entry_ids) == 1:
            raise DeadLetterNotFound(f"run {run_id!r} has no dead letter {entry_ids[0]!r}")
        if unknown:
            raise RequestError(f"entry_ids: {len(unknown)} unknown dead letter(s)", [f"no dead letter {e!r}" for e in unknown])
        chosen = [letters[e] for e in dict.fromkeys(entry_ids)]
    skipped = [
        {"entry_id": v["entry_id"], "reason": f"no prompt is known for {v['item_id']!r} (its entry was trimmed)"}
        for v in chosen
        if not v["requeueable"]
    ]
    if entry_ids is not None and len(chosen) == 1 and skipped:
        raise Conflict(f"dead letter {chosen[0]['entry_id']!r} cannot be re-queued: {skipped[0]['reason']}")
    done = [v for v in chosen if v["requeueable"]]
    prompts = list(dict.fromkeys(v["prompt_id"] for v in done))
    service.store.requeue_prompts(run_id, prompts)
    service.queue(run_id).remove_dead_letters([v["entry_id"] for v in done])
    return {
        "requeued": [{"entry_id": v["entry_id"], "prompt_id": v["prompt_id"]} for v in done],
        "skipped": skipped,
        "queued_prompts": service.store.requeued_prompts(run_id),
    }
