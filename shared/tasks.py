"""Tasks: plug-ins that bring prompt sources, named models, judges and evaluators to a run.

A task is a package that exposes a zero-argument factory returning a `Task`, registered under the
entry-point group `sparring.tasks` (pyproject.toml `[project.entry-points."sparring.tasks"]`). The core
never imports a task: it looks components up here by the name a run config uses, and this registry loads
the entry points on first use. A third-party task is a pip-installable package with its own entry point;
nothing in sparring changes.

What a task can register (every name is global: two tasks registering the same name is an error):
- `prompt_sources`: `prompts.source: <name>` -> a function `(PromptsConfig) -> list[PromptItem]`;
- `models`: a model name usable wherever a config names a model (`policy.path: <name>`, an uncertainty
  estimator) -> `(seed, progress) -> checkpoint directory` (built once and cached by the task);
- `judges`: `judge.kind: <name>` -> `(JudgeConfig, RunConfig | None) -> Judge` (workers/judges/base.py);
- `evaluators`: `eval.evaluators: [<name>]` -> `(RunConfig) -> Evaluator`;
- `prompt_check`: for the task's judges that only understand the task's own prompts, a function
  `(prompt text) -> None | reason` that `load_run_prompts` applies to a pool from another source judged
  by one of them;
- `labelled_pairs`: for a task that knows its preference, `(num_pairs, seed) -> [(prompt, a, b, pref)]`
  held-out pairs with pref = 1.0 when `a` is better, 0.0 when `b` is (`sparring eval-judges` measures
  every judge's agreement on them, workers/judges/agreement.py);
- `policy`: the model name of the task's own policy (the policy `sparring eval-judges` gives the
  self-preference judge);
- `demo`: the path of a run config file shipped with the task (package data, found with
  importlib.resources), which `sparring demo` runs when this is the only installed task with one.

This module imports nothing from workers, services or any task (layering test).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sparring.shared.config import JudgeConfig, PromptsConfig, RunConfig
    from sparring.shared.prompts import PromptItem

ENTRY_POINT_GROUP = "sparring.tasks"

Progress = Callable[[str], None]


class Evaluator(Protocol):
    """A task's own quality measure of a policy's held-out responses, run every iteration.

    `evaluate` receives the held-out prompts, one response per prompt from the current policy and one from
    the policy of iteration 0 (the same prompts, the same order), and returns named metrics (floats); the
    controller records them as `eval/<evaluator name>/<metric>` in `IterationRecord.eval`.
    """

    name: str

    def evaluate(
        self, prompts: Sequence[PromptItem], responses: Sequence[str], baseline: Sequence[str]
    ) -> dict[str, float]: ...


@dataclass(frozen=True)
class Task:
    """One task plug-in: the components it registers, by the names a run config uses."""

    name: str
    description: str
    prompt_sources: Mapping[str, Callable[[PromptsConfig], list[PromptItem]]] = field(default_factory=dict)
    models: Mapping[str, Callable[[int, Progress | None], str]] = field(default_factory=dict)
    judges: Mapping[str, Callable[[JudgeConfig, RunConfig | None], Any]] = field(default_factory=dict)
    evaluators: Mapping[str, Callable[[RunConfig], Evaluator]] = field(default_factory=dict)
    prompt_check: Callable[[str], str | None] | None = None
    labelled_pairs: Callable[[int, int], list[tuple[str, str, str, float]]] | None = None
    policy: str | None = None
    demo: str | None = None  # a run config file inside the task's package (`sparring demo`)


class TaskRegistryError(RuntimeError):
    """An entry point that fails to load, or two tasks registering the same component name."""


KINDS = ("prompt_sources", "models", "judges", "evaluators")


@cache
def registry() -> dict[str, Task]:
    """Every installed task by name (entry points loaded once per process)."""
    found: dict[str, Task] = {}
    owners: dict[tuple[str, str], str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            task = ep.load()()
        except Exception as err:
            raise TaskRegistryError(f"task entry point {ep.name!r} ({ep.value}) failed to load: {err}") from err
        if not isinstance(task, Task):
            raise TaskRegistryError(f"task entry point {ep.name!r} ({ep.value}) returned {type(task).__name__}, not a Task")
        if task.name in found:
            raise TaskRegistryError(f"two installed tasks are named {task.name!r}")
        for kind in KINDS:
            for name in getattr(task, kind):
                if (kind, name) in owners:
                    raise TaskRegistryError(
                        f"tasks {owners[kind, name]!r} and {task.name!r} both register {kind} {name!r}"
                    )
                owners[kind, name] = task.name
        found[task.name] = task
    return found


def names(kind: str) -> list[str]:
    """Sorted names of every registered component of `kind` (one of `KINDS`)."""
    return sorted(name for task in registry().values() for name in getattr(task, kind))


def lookup(kind: str, name: str) -> tuple[Task, Callable[..., Any]] | None:
    """The task that registers `name` under `kind`, and the component; None if no task does."""
    for task in registry().values():
        component = getattr(task, kind).get(name)
        if component is not None:
            return task, component
    return None


def require(kind: str, name: str) -> Callable[..., Any]:
    """The component `name` of `kind`; raises `KeyError` naming the installed alternatives."""
    found = lookup(kind, name)
    if found is None:
        raise KeyError(f"no installed task registers {kind} {name!r}; known: {', '.join(names(kind)) or 'none'}")
    return found[1]
