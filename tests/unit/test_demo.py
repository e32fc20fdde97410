"""`sparring demo` runs the demo config a task ships as package data (`Task.demo`), not a file of the source
tree, so it works from a non-editable install (`pip install .`)."""

from dataclasses import replace
from pathlib import Path

import pytest

import sparring.tasks.arena as arena_package
from sparring.services import cli
from sparring.shared import tasks
from sparring.shared.config import ConfigError, load_config


def test_the_demo_is_the_arena_tasks_package_data() -> None:
    demo = tasks.registry()["arena"].demo
    assert demo is not None and Path(demo).is_file()
    assert Path(demo).parent == Path(arena_package.__file__).parent  # inside the installed package
    assert cli.demo_config() == Path(demo)
    cfg = load_config(cli.demo_config(), {})
    assert cfg.name == "arena-demo" and cfg.schedule.iterations == 3


def test_demo_needs_exactly_one_task_with_a_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    arena = tasks.registry()["arena"]
    monkeypatch.setattr(tasks, "registry", lambda: {"arena": replace(arena, demo=None)})
    with pytest.raises(ConfigError, match="found 0 .*sparring tasks"):
        cli.demo_config()
    other = replace(arena, name="other", demo="/elsewhere/demo.yaml")
    monkeypatch.setattr(tasks, "registry", lambda: {"arena": arena, "other": other})
    with pytest.raises(ConfigError, match="found 2 .*other: /elsewhere/demo.yaml.*sparring run PATH"):
        cli.demo_config()
    monkeypatch.setattr(tasks, "registry", lambda: {"other": other})
    with pytest.raises(ConfigError, match="not installed"):
        cli.demo_config()
