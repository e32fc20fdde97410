"""Getting a Redis connection: connect to a URL (failing fast), or run a private `redis-server` for a run.

Knows: how to build and probe a `redis.Redis` client that rides out a Redis outage (`OutageRetry`: reconnect
with exponential back-off for a window of seconds, docs/reliability.md), how to start/stop a loopback-only
`redis-server` with append-only-file persistence in a data directory, and the `REDIS_URL` environment variable.
Does not know: streams, records, runs or any key layout (see `queue.py` and `store.py`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

REDIS_URL_ENV = "REDIS_URL"
# Socket timeout of clients returned by `connect`: long enough for any blocking read the queue issues
# (the queue caps its blocking reads well below this), short enough that a half-open socket is noticed.
DEFAULT_SOCKET_TIMEOUT_S = 30.0
# How long a client keeps reconnecting through an outage by default (`resilience.redis_outage_s`).
DEFAULT_OUTAGE_S = 120.0


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached or started; the message says where and why."""


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***` (safe for logs and error messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class OutageRetry(Retry):
    """redis-py's `Retry`, bounded by time instead of a count: a command that fails with a connection error
    or a timeout (refused, reset, `LOADING` while a restarted server reads its AOF) is retried with
    exponential back-off (`base_s` doubling up to `cap_s`) until `window_s` have passed since the connection
    first failed; then the error is raised. A count cannot say "ride out a 120 s restart": each attempt takes
    from microseconds (refused) to the connect timeout (a dead host).

    redis-py copies the retry object into every connection and retries both the command and, inside it,
    the reconnect with that same object, so the outage clock lives on the object: the nested retries share
    one window instead of multiplying it. A success ends the outage.

    Commands sparring retries are idempotent (the queue's scripts deduplicate by record id, XACK and SET are
    idempotent) or harmless to repeat (an event appended twice); an XREADGROUP whose reply was lost leaves its
    entries pending for the consumer, which reads its pending entries first.
    """

    def __init__(self, window_s: float, base_s: float = 0.05, cap_s: float = 1.0) -> None:
        super().__init__(ExponentialBackoff(cap=cap_s, base=base_s), retries=1_000_000)
        self.window_s = window_s
        self._down_since: float | None = None

    def call_with_retry(
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        failures = 0
        while True:
            try:
                result = do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    logger.warning("Redis unreachable (%s); reconnecting for up to %.0fs", error, self.window_s)
                left = self.window_s - (now - self._down_since)
                if left <= 0:
                    raise
                time.sleep(min(self._backoff.compute(failures), left))
                continue
            if self._down_since is not None:
                logger.warning("Redis reachable again after %.1fs", time.monotonic() - self._down_since)
                self._down_since = None
            return result


def ping(url: str, timeout_s: float = 3.0) -> None:
    """One PING without retries on a fresh connection (readiness probes); `RedisUnavailable` names the URL
    (password redacted) and the cause."""
    safe = redact_url(url)
    try:
        probe = redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
    except (ValueError, redis.RedisError) as exc:
        raise RedisUnavailable(f"cannot reach Redis at {safe}: {exc}") from exc
    try:
        probe.ping()
    except (redis.RedisError, OSError) as exc:
        raise RedisUnavailable(f"cannot reach Redis at {safe}: {exc}") from exc
    finally:
        probe.close()


def connect(
    url: str,
    timeout_s: float = 3.0,
    socket_timeout_s: float | None = DEFAULT_SOCKET_TIMEOUT_S,
    outage_s: float = DEFAULT_OUTAGE_S,
    wait_s: float = 0.0,
) -> redis.Redis:
    """A client for `url` (bytes responses), after a PING that must succeed within about `timeout_s`.

    The client rides out a Redis outage of up to `outage_s` seconds (`OutageRetry`: every command
    reconnects with back-off). The first PING is retried for `wait_s` seconds only (default 0: an
    unreachable server is reported in seconds, by `RedisUnavailable` naming the URL with its password
    redacted); a worker started while its run's Redis may be restarting passes its outage window.
    """
    safe = redact_url(url)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ping(url, timeout_s)
            break
        except RedisUnavailable:
            if time.monotonic() >= deadline:
                raise
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    client = redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=timeout_s,
        socket_timeout=socket_timeout_s,
        socket_keepalive=True,
        health_check_interval=30,
        retry=OutageRetry(outage_s),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    logger.debug("connected to Redis at %s", safe)
    return client


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child (a clean redis shutdown) when this process dies.

    libc is loaded here, in the parent, so the hook itself does no imports or allocation after fork.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def hook() -> None:
        prctl(1, sigterm)  # PR_SET_PDEATHSIG

    return hook


class PrivateRedis:
    """A `redis-server` owned by this process: loopback only, AOF persistence in `data_dir`.

    Use as a context manager (`with PrivateRedis(dir) as r: r.url`) or call `start()`/`stop()`.
    Starting again on the same `data_dir` reloads the previous data from the append-only file; with `port`
    given it listens there (a restart on the same port and directory is what clients reconnect to), else
    on a free loopback port.
    When started from the main thread the server gets SIGTERM (a clean shutdown) if this process dies.
    """

    def __init__(
        self,
        data_dir: Path | str,
        binary: str = "redis-server",
        start_timeout_s: float = 15.0,
        extra_args: tuple[str, ...] = (),
        port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.extra_args = tuple(extra_args)
        self.fixed_port = port
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        if self.port is None or self._proc is None:
            raise RedisUnavailable("PrivateRedis is not running: call start() first")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> PrivateRedis:
        if self.running:
            return self
        exe = shutil.which(self.binary)
        if exe is None:
            raise RedisUnavailable(
                "redis-server not found on PATH: install it (apt-get install redis-server) or set REDIS_URL"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.fixed_port is not None:
            self._launch(exe, self.fixed_port)
            return self
        last_error = ""
        for _attempt in range(3):  # a picked port can be taken by someone else before the server binds it
            port = _free_loopback_port()
            try:
                self._launch(exe, port)
                return self
            except RedisUnavailable as exc:
                last_error = str(exc)
                if "Address already in use" not in last_error:
                    raise
                logger.warning("port %d was taken before redis-server bound it; retrying", port)
        raise RedisUnavailable(last_error)

    def _launch(self, exe: str, port: int) -> None:
        data_dir = self.data_dir.resolve()
        log_path = data_dir / "redis.log"
        self._log_path = log_path
        args = [
            exe,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(log_path),
            *self.extra_args,
        ]  # fmt: skip
        log_start = log_path.stat().st_size if log_path.exists() else 0
        # PDEATHSIG fires when the *thread* that forked exits, so only use it from the main thread.
        hook = _die_with_parent_hook() if threading.current_thread() is threading.main_thread() else None
        with open(log_path, "ab") as log:  # early errors (bad args) go to stderr before the logfile opens
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=data_dir,
                preexec_fn=hook,
            )
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + self.start_timeout_s
        cause = ""
        while True:
            if proc.poll() is not None:
                new_log = _read_from(log_path, log_start)
                raise RedisUnavailable(
                    f"redis-server exited with code {proc.returncode} while starting in {data_dir}:\n{new_log}"
                )
            try:
                c = redis.Redis.from_url(
                    url, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
                )
                try:
                    c.ping()
                finally:
                    c.close()
                break
            except (redis.BusyLoadingError, redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                cause = str(exc)
            if time.monotonic() > deadline:
                _stop_process(proc, None)
                raise RedisUnavailable(
                    f"redis-server on port {port} did not answer PING within {self.start_timeout_s:.0f}s "
                    f"({cause}); log tail:\n{_tail(log_path)}"
                )
            time.sleep(0.02)
        self._proc = proc
        self.port = port
        atexit.register(self.stop)
        logger.info("started private redis-server pid %d at %s (data in %s)", proc.pid, url, data_dir)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SHUTDOWN (the AOF is flushed), falling back to SIGTERM and then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if proc is None:
            return
        url = f"redis://127.0.0.1:{self.port}/0"
        _stop_process(proc, url, timeout_s)
        logger.info("stopped private redis-server pid %d (exit code %s)", proc.pid, proc.returncode)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-20:]) or "<empty log>"


def _stop_process(proc: subprocess.Popen[bytes], url: str | None, timeout_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    if url is not None:
        try:
            c = redis.Redis.from_url(
                url, socket_connect_timeout=1.0, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
            )
            try:
                c.shutdown()
            finally:
                c.close()
        except (redis.RedisError, OSError) as exc:
            logger.warning("SHUTDOWN of redis-server pid %d failed (%s); terminating it", proc.pid, exc)
        try:
            proc.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            logger.warning("redis-server pid %d did not exit after SHUTDOWN; terminating it", proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("redis-server pid %d ignored SIGTERM; killing it", proc.pid)
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def open_redis(
    url: str | None, data_dir: Path, outage_s: float = DEFAULT_OUTAGE_S
) -> Iterator[tuple[redis.Redis, str]]:
    """Yield `(client, url)`: `url`, else env `REDIS_URL`, else a private server in `data_dir/redis`.

    The client rides out an outage of `outage_s` seconds (`connect`). A private server is shut down on
    exit; a client to an external server is only closed.
    """
    url = url or os.environ.get(REDIS_URL_ENV) or None
    if url:
        client = connect(url, outage_s=outage_s)
        try:
            yield client, url
        finally:
            client.close()
        return
    with PrivateRedis(Path(data_dir) / "redis") as server:
        client = connect(server.url, outage_s=outage_s)
        try:
            yield client, server.url
        finally:
            client.close()
