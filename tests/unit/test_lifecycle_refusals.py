"""A lifecycle request the run's state does not allow answers 409 naming the state and the states the action
applies to (a second `sparring resume` of a queued run said only "is created; it cannot become created")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sparring.services.runs import Conflict, RunService
from sparring.services.settings import ServiceSettings


def test_refused_actions_name_the_states_they_apply_to(tmp_path: Path, redis_client: Any, unique_run_id: str) -> None:
    service = RunService(ServiceSettings(data_dir=tmp_path / "data"), redis_client, "redis://unused")
    service.store.create_run(unique_run_id, {"name": "x"}, str(tmp_path / "run"))  # queued: state created
    with pytest.raises(Conflict) as err:
        service.resume(unique_run_id)
    assert str(err.value) == (
        f"run {unique_run_id!r} is created; it cannot become created: resume applies to a paused or failed run"
    )
    service.store.transition(unique_run_id, ("created",), "completed")
    with pytest.raises(Conflict, match=r"is completed; it cannot become pausing: pause applies to a created or running run"):
        service.pause(unique_run_id)
    with pytest.raises(Conflict, match=r"is completed; .*: stop applies to a created, paused, running or pausing run"):
        service.stop(unique_run_id)
    assert service.view(unique_run_id)["state"] == "completed"  # nothing changed
