"""A failed run's reason is one line naming the real cause, on real Ray exception objects (issue 10, item 15)."""

from __future__ import annotations

import traceback

import pytest

from sparring.workers.failures import MAX_REASON_CHARS, failure_reason, format_failure, last_meaningful_line

ray_exceptions = pytest.importorskip("ray.exceptions")
MISSING = "model directory '/m' cannot be loaded: missing tokenizer files (tokenizer.json, ...)"


class ModelLoadError(RuntimeError):
    pass


def raised(err: BaseException) -> tuple[BaseException, str]:
    """`err` raised and caught (so it has a traceback), with that traceback as Python prints it."""
    try:
        raise err
    except BaseException as caught:  # noqa: BLE001
        return caught, "".join(traceback.format_exception(caught))


def task_error(cause: BaseException, function: str = "GeneratorWorker.__init__") -> BaseException:
    """A RayTaskError as a remote call surfaces it: colour codes, frames, ^^^^ markers, the cause last."""
    cause, tb = raised(cause)
    tb = tb.replace("    raise err\n", "    raise err\n    ^^^^^^^^^\n")
    text = f"\x1b[36mray::{function}()\x1b[39m (pid=7, ip=10.0.0.1)\n{tb}"
    return ray_exceptions.RayTaskError(function, text, cause, proctitle=f"ray::{function}", pid=7, ip="10.0.0.1")


def test_ray_task_error_shows_its_cause() -> None:
    err = task_error(ModelLoadError(MISSING))
    assert "\x1b[" in str(err) and "^^^" in str(err)  # what the old `f"{type(err).__name__}: {err}"` showed
    assert failure_reason(err) == f"ModelLoadError: {MISSING}"
    dual = err.as_instanceof_cause()  # what `ray.get` raises: RayTaskError(ModelLoadError)
    assert type(dual).__name__ == "RayTaskError(ModelLoadError)"
    assert failure_reason(dual) == f"ModelLoadError: {MISSING}"


def test_nested_cause_is_unwrapped() -> None:
    inner = task_error(ValueError("prompt of 300 tokens exceeds generation.max_model_len 256"))
    outer = task_error(inner.as_instanceof_cause(), "RunController.run")
    assert failure_reason(outer) == "ValueError: prompt of 300 tokens exceeds generation.max_model_len 256"


def test_actor_died_in_its_constructor_shows_the_constructor_error() -> None:
    died = ray_exceptions.ActorDiedError(task_error(ModelLoadError(MISSING)))
    assert "\n" in died.error_msg
    assert failure_reason(died) == f"ModelLoadError: {MISSING}"
    assert failure_reason(ray_exceptions.ActorDiedError()) == (
        "ActorDiedError: The actor died unexpectedly before finishing this task."
    )


def test_unserializable_exception_keeps_the_original_last_line() -> None:
    _, tb = raised(ModelLoadError(MISSING))
    err = ray_exceptions.UnserializableException(tb)
    assert str(err).startswith("Failed to deserialize exception")
    assert failure_reason(err) == f"ModelLoadError: {MISSING}"


def test_plain_errors_ansi_and_length() -> None:
    assert failure_reason(RuntimeError("iteration 1 has nothing to train on")) == (
        "RuntimeError: iteration 1 has nothing to train on"
    )
    assert failure_reason(ValueError("\x1b[31mred\x1b[0m\n  second line")) == "ValueError: red second line"
    long = failure_reason(ValueError("x" * 5000))
    assert len(long) == MAX_REASON_CHARS and long.endswith("…")
    assert failure_reason(KeyboardInterrupt()) == "KeyboardInterrupt"
    # a traceback whose exception message spans lines keeps them, joined
    text = 'Traceback (most recent call last):\n  File "a.py", line 1, in f\n    g()\n    ^^^\nValueError: one\ntwo'
    assert last_meaningful_line(text) == "ValueError: one two"


def test_the_full_traceback_is_kept_for_the_log() -> None:
    err = task_error(ModelLoadError(MISSING))
    full = format_failure(err)
    assert "ray::GeneratorWorker.__init__()" in full and MISSING in full and "\x1b[" not in full
