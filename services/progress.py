"""Live progress of a run's long steps in a terminal, with rich: the model build, engine start-up, and
each iteration's stages (generation as a bar of prompts done, then train, sync and evaluation), fed by the
run's events. The plain event lines go on being printed above the live bar; where stdout is no terminal
(a pipe, a log file, CI) nothing live is drawn and the output is exactly those lines.

`print_json` is the one writer of `--json` output for the read commands (`tasks`, `status`, `presets`).
"""

from __future__ import annotations

import sys
from typing import Any

from sparring.shared import jsonl


def print_json(value: Any) -> int:
    """Strict JSON (NaN -> null) on stdout, one document; returns exit status 0."""
    sys.stdout.write(jsonl.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return 0


class RunProgress:
    """`with RunProgress() as progress: progress.event(kind, data)` for each run event (module docstring)."""

    def __init__(self, console: Any = None, force: bool = False) -> None:
        from rich.console import Console

        self.console = console or Console()
        self.live = force or self.console.is_terminal
        self.progress: Any = None
        self.task: Any = None
        self.iteration: int | None = None

    def __enter__(self) -> RunProgress:
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=self.console, transient=True, redirect_stdout=True, redirect_stderr=True,
            )  # fmt: skip
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def step(self, description: str, total: int | None = None, done: int | None = None) -> None:
        """Show `description` as the current step (a bar when `total` is known, a spinner otherwise)."""
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task(description, total=total)
        self.progress.update(self.task, description=description, total=total, completed=done or 0)

    def event(self, kind: str, ev: dict[str, Any]) -> None:
        it = ev.get("iteration", self.iteration)
        prefix = f"iteration {it}: " if it is not None else ""
        if kind == "iteration_started":
            self.iteration = ev["iteration"]
            self.step(f"iteration {self.iteration}: dispatch")
        elif kind == "progress":
            stage = ev.get("stage", "")
            if stage == "generate":
                self.step(f"{prefix}generate + judge", total=int(ev["total"]), done=int(ev["done"]))
            elif stage == "startup":
                self.step(f"start-up: {ev.get('message', '')}")
            else:
                self.step(f"{prefix}{stage}: {ev.get('message', '')}")
        elif kind == "iteration_done":
            self.step(f"iteration {ev['record']['iteration']} recorded")
