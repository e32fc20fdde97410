"""Why a run failed, in one line: the reason `sparring status`, the API and the dashboard show.

An exception that crosses Ray arrives wrapped: a `RayTaskError` (or its `RayTaskError(X)` dual class) whose
`cause` is the worker's exception, possibly another wrapped one (a nested actor call); an `ActorDiedError`
whose message embeds the creation task's whole traceback; or an `UnserializableException` holding only the
text of the original traceback. Their `str()` is a traceback with colour codes and `^^^^` markers, and the
real cause is its last line. `failure_reason` unwraps the chain to the innermost cause, strips ANSI codes,
keeps the last meaningful line of any traceback text, and caps the length; the full traceback belongs in
the run's log (`format_failure`).

Duck-typed on the attributes of Ray's exceptions (`cause`, `error_msg`, `traceback_str`,
`_original_stack_trace`), so this module does not import Ray.
"""

from __future__ import annotations

import re
import traceback

MAX_REASON_CHARS = 400
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_MARKER = re.compile(r"^[\s^~\-+|]*$")  # Python 3.11+ caret/tilde lines, separators
_QUALIFIED = re.compile(r"^(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*:)")  # a traceback's module-qualified exception name
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def root_cause(err: BaseException, max_depth: int = 16) -> BaseException:
    """The innermost exception a chain of Ray wrappers carries (`RayTaskError.cause`, repeatedly)."""
    for _ in range(max_depth):
        cause = getattr(err, "cause", None)
        if not isinstance(cause, BaseException) or cause is err:
            break
        err = cause
    return err


def last_meaningful_line(text: str) -> str:
    """The exception line ending a traceback text (`Name: message`), else the text on one line.

    A traceback is recognised by its frame lines (`File "...", line N`; Ray drops the `Traceback` header):
    the frames, their indented source and `^^^^` marker lines are skipped and the unindented line(s) after
    the last frame are the exception (a message spanning several lines is joined with spaces; a
    module-qualified exception name such as `pkg.mod.Error` is shortened to `Error`).
    """
    lines = [line.rstrip() for line in strip_ansi(text).splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if _FRAME.match(line)]
    if not frames:
        return " ".join(line.strip() for line in lines)
    tail = [line for line in lines[frames[-1] + 1 :] if not line.startswith((" ", "\t")) and not _MARKER.match(line)]
    if not tail:  # a traceback cut off after its last frame: the frame is all there is
        return lines[frames[-1]].strip()
    return _QUALIFIED.sub(r"\1", " ".join(line.strip() for line in tail))  # `pkg.mod.Error: x` -> `Error: x`


def failure_reason(err: BaseException, limit: int = MAX_REASON_CHARS) -> str:
    """One line saying why `err` ended a run: `Type: message` of the root cause, at most `limit` characters."""
    cause = root_cause(err)
    original = getattr(cause, "_original_stack_trace", None)  # UnserializableException: only text survives
    if isinstance(original, str):
        line = last_meaningful_line(original)
    else:
        message = getattr(cause, "error_msg", None)  # RayActorError / ActorDiedError
        text = message if isinstance(message, str) and message else str(cause)
        if any(_FRAME.match(line) for line in strip_ansi(text).splitlines()):
            line = last_meaningful_line(text)  # a message embedding a traceback: its exception line
        else:
            body = last_meaningful_line(text)
            line = f"{type(cause).__name__}: {body}" if body else type(cause).__name__
    line = re.sub(r"\s+", " ", line).strip()
    if len(line) > limit:
        line = line[: limit - 1].rstrip() + "…"
    return line


def format_failure(err: BaseException) -> str:
    """The full traceback of `err` for the run's log, Ray's remote traceback included, without colour codes."""
    return strip_ansi("".join(traceback.format_exception(type(err), err, err.__traceback__)))
