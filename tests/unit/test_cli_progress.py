"""The CLI's live progress (rich) follows a run's events, and draws nothing where stdout is no terminal;
`sparring tasks --json` is one JSON document."""

from __future__ import annotations

import io
import json

from rich.console import Console

from sparring.services import cli
from sparring.services.progress import RunProgress

EVENTS = [
    ("progress", {"stage": "startup", "message": "starting 2 generator(s)"}),
    ("iteration_started", {"iteration": 1, "policy_version": 0}),
    ("progress", {"stage": "generate", "iteration": 1, "done": 8, "total": 32}),
    ("progress", {"stage": "generate", "iteration": 1, "done": 32, "total": 32}),
    ("progress", {"stage": "train", "iteration": 1, "message": "training"}),
    ("progress", {"stage": "eval", "iteration": 1, "message": "evaluating version 1"}),
    ("iteration_done", {"iteration": 1, "record": {"iteration": 1}}),
]


def test_progress_follows_the_stages_in_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    seen = []
    with RunProgress(console) as progress:
        for kind, ev in EVENTS:
            progress.event(kind, ev)
            task = progress.progress.tasks[0]
            seen.append((task.description, task.total, task.completed))
    assert seen[0][0] == "start-up: starting 2 generator(s)"
    assert seen[2] == ("iteration 1: generate + judge", 32, 8) and seen[3][2] == 32
    assert seen[4][0] == "iteration 1: train: training" and seen[5][0] == "iteration 1: eval: evaluating version 1"
    assert seen[6][0] == "iteration 1 recorded"


def test_nothing_live_without_a_terminal() -> None:
    out = io.StringIO()
    with RunProgress(Console(file=out, force_terminal=False)) as progress:
        for kind, ev in EVENTS:
            progress.event(kind, ev)
        assert progress.progress is None
    assert out.getvalue() == ""


def test_tasks_json(capsys) -> None:  # noqa: ANN001
    assert cli.main(["tasks", "--json"]) == 0
    tasks = json.loads(capsys.readouterr().out)
    assert all({"description", "prompt_sources", "models", "judges", "evaluators"} <= set(t) for t in tasks.values())


def test_dead_letters_of_an_iteration_are_printed_with_their_reasons() -> None:
    """`sparring run` used to print only "32 pairs" when a prompt too long for the engine went to the dead
    letters; the count and each reason are printed after the iteration now."""
    from sparring.shared.records import DeadLetter

    reason = "prompt of 818 tokens + max_new_tokens 16 exceeds generation.max_model_len 256"
    letters = [DeadLetter(stage="generate", item_id=f"p{i}@v0", reason=reason) for i in range(7)]
    lines = cli.dead_letter_lines(letters, iteration=1, shown=5)
    assert lines[0] == "  [iter 1] 7 dead letter(s), left out of this iteration:"
    assert lines[1] == f"    generate p0@v0: {reason}" and len(lines) == 7
    assert lines[-1].startswith("    ... and 2 more")
    assert cli.dead_letter_lines([], iteration=2) == []
