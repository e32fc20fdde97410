"""Worker groups: the one place that spawns, calls, drains and replaces a run's workers.

A `WorkerGroup` holds the named workers of one role (generators, judges, the trainer, the evaluator) and
owns everything the controller used to spell per role (in the spirit of OpenRLHF's `RayActorGroup` and
verl's `RayWorkerGroup`):

- spawning with a fresh name (`{run_id}:{consumer}:{incarnation}.{n}`, so operators find a run's actors with
  `ray.util.list_named_actors()` and a replacement never collides with its dead predecessor) and the
  role's resources;
- fan-out calls (`call_all`) that replace a worker whose call fails with `WorkerDied` and, where the caller
  asks, a worker whose call raised (`replace_on_error`);
- drain-until-idle (`drain_until_idle`): keep every worker of several groups draining its input stream
  until the controller says the stage is done, replacing the dead (same consumer name, so the replacement
  resumes the dead worker's pending stream entries first) and the ones whose engine holds a stale policy
  version (`VersionMismatch`).

Workers are plain classes; a `Runtime` runs them. `RayRuntime` makes each a Ray actor (`max_restarts=0`:
the group, not Ray, decides about replacements). `LocalRuntime` runs them in this process, one thread per
call, so the controller can be driven without Ray (tests/unit/test_controller_local.py); `LocalRuntime.kill`
makes the worker's pending and later calls fail with `WorkerDied`, as a killed actor's would.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

log = logging.getLogger(__name__)

WORKER_ENV = {
    # vLLM is chatty at INFO; its warnings still reach the worker logs.
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


class WorkerDied(RuntimeError):
    """The worker's process is gone (a killed or crashed actor); the call's work may be half done."""


class WorkerHung(WorkerDied):
    """The worker made no progress (no heartbeat) or its call overran its stage's deadline: its stacks were
    captured and it was killed, so whoever handles a dead worker (replacement, trainer restart) handles it."""


class StageTimeout(RuntimeError):
    """A whole stage (an iteration's generation and judging) overran `resilience.stage_timeout_s`; the stuck
    workers' stacks were captured. The controller pauses the run with this message as the reason."""


class WaitingForCapacity(StageTimeout):
    """A worker's replacement cannot be placed: no live node has the resources it needs (its node was lost)
    and none joined within `resilience.capacity_wait_s`. The controller pauses the run with this message."""


def current_node() -> str | None:
    """The Ray node id of this process when it runs under Ray (a worker's heartbeat names its node), else None."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else None
    except Exception:  # no Ray, or a process Ray does not know
        return None


def pin_to_cores(cores: list[int] | None, field: str) -> None:
    """Restrict this process (every thread it has: Linux pins threads, `/proc/self/task`), and the threads and
    processes it starts from now on (they inherit it), to CPU `cores` (`os.sched_setaffinity`); None leaves it
    on any core. `field` names the config field in the error: ValueError when a core does not exist here or the
    platform cannot pin (the allowed cores are named)."""
    import os

    if cores is None:
        return
    try:
        os.sched_setaffinity(0, cores)  # this thread first: a bad core list fails here, before any other thread moved
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(tid), cores)
    except (OSError, ValueError, AttributeError) as err:  # AttributeError: no sched_setaffinity (macOS)
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "unknown"
        raise ValueError(f"{field}={cores}: cannot pin this worker to those cores ({err}); this node allows {allowed}") from err


class VersionMismatch(RuntimeError):
    """A task asks for a policy version this engine does not hold; the controller must sync it first."""


@dataclass(frozen=True)
class Resources:
    """What one worker of a role asks the runtime for (Ray actor options), and where it goes.

    `memory_bytes` is Ray's `memory` (a scheduling reservation), `custom` its custom resources (node labels).
    `placement_group` is a group reserved by `RayRuntime.reserve` (None: anywhere); a `WorkerGroup` puts each
    consumer in a bundle of its own (`bundle_index`), and a replacement in the same bundle; with
    `workers_per_bundle` k > 1 (placement colocated: k engines beside a trainer rank) consumer n goes to
    bundle n // k.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None
    custom: tuple[tuple[str, float], ...] = ()
    placement_group: Any = None
    bundle_index: int = -1
    workers_per_bundle: int = 1

    def bundle(self) -> dict[str, float]:
        """One Ray placement-group bundle holding one such worker: {"CPU": .., "GPU": .., "memory": .., custom}."""
        out = {"CPU": self.num_cpus, "GPU": self.num_gpus, "memory": float(self.memory_bytes or 0), **dict(self.custom)}
        return {k: v for k, v in out.items() if v}

    def ray_options(self) -> dict[str, Any]:
        """Ray actor options (`num_cpus`, `num_gpus`, `memory`, `resources`, `scheduling_strategy`)."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        if self.custom:
            options["resources"] = dict(self.custom)
        if self.placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.placement_group, placement_group_bundle_index=self.bundle_index
            )
        return options


class PlacementError(RuntimeError):
    """The run's resources cannot be placed on this cluster (the message has the numbers)."""


class Runtime(Protocol):
    """Runs workers: spawn one, submit a method call, wait for calls, get a result, kill one."""

    def spawn(self, cls: type, args: tuple[Any, ...], name: str, resources: Resources) -> Any: ...

    def submit(self, handle: Any, method: str, *args: Any) -> Any: ...

    def wait(self, refs: list[Any], timeout: float) -> list[Any]: ...

    def result(self, ref: Any) -> Any:
        """The call's return value; raises `WorkerDied` if the worker died, else the exception it raised."""
        ...

    def kill(self, handle: Any) -> None: ...

    def stacks(self, handle: Any, heartbeat: dict[str, Any] | None) -> str:
        """Every thread's Python stack of the worker behind `handle` (its last `heartbeat` says its pid, node
        and stack file; `workers/health.py`), or a line saying why there is none."""
        ...

    def object_store_mb(self) -> float | None:
        """MB (2**20 bytes) in use in the object store of the cluster, or None when there is none."""
        ...

    def reserve(self, resources: Resources, count: int, strategy: str, name: str) -> Resources:
        """`resources` placed in a reserved group of `count` bundles (Ray: a placement group with `strategy`,
        PACK or SPREAD); a runtime without placement returns `resources` unchanged."""
        ...

    def cluster_resources(self) -> dict[str, float] | None:
        """Total resources of the cluster (Ray's `cluster_resources()`), or None when nothing is scheduled."""
        ...

    def missing(self, resources: Resources) -> str | None:
        """Why no worker asking for `resources` can be placed now (no live node has all of `bundle()` in
        total), or None when one could be (always None without placement)."""
        ...

    def release(self) -> None:
        """Give back every reservation `reserve` made."""
        ...


class RayRuntime:
    """Workers as Ray actors (`ray.remote(cls).options(name=..., **resources.ray_options())`)."""

    def __init__(self, namespace: str | None = None, reserve_timeout_s: float = 120.0) -> None:
        self.namespace = namespace
        self.reserve_timeout_s = reserve_timeout_s
        self.placement_groups: list[Any] = []

    def spawn(self, cls: type, args: tuple[Any, ...], name: str, resources: Resources) -> Any:
        import ray

        env = dict(WORKER_ENV)
        if not resources.num_gpus:  # Ray sets CUDA_VISIBLE_DEVICES only for GPU workers: others must see no GPU
            env["CUDA_VISIBLE_DEVICES"] = ""
        options: dict[str, Any] = {
            "name": name,
            "max_restarts": 0,
            "runtime_env": {"env_vars": env},
            **resources.ray_options(),
        }
        return ray.remote(cls).options(**options).remote(*args)

    def reserve(self, resources: Resources, count: int, strategy: str, name: str) -> Resources:
        """A Ray placement group of `count` bundles `resources.bundle()` (`strategy` PACK or SPREAD), ready
        within `reserve_timeout_s`; raises `PlacementError` with the bundles when the cluster cannot hold it."""
        from ray.util.placement_group import placement_group, remove_placement_group

        bundles = [resources.bundle() for _ in range(count)]
        group = placement_group(bundles, strategy=strategy, name=name)
        if not group.wait(timeout_seconds=self.reserve_timeout_s):
            remove_placement_group(group)
            raise PlacementError(
                f"{name}: placement group of {count} bundle(s) {bundles[0]} ({strategy}) not placed within "
                f"{self.reserve_timeout_s:.0f} s; cluster resources: {self.cluster_resources()}"
            )
        self.placement_groups.append(group)
        return replace(resources, placement_group=group)

    def cluster_resources(self) -> dict[str, float]:
        import ray

        return {k: float(v) for k, v in ray.cluster_resources().items()}

    def missing(self, resources: Resources) -> str | None:
        """None when some live Ray node has every resource of `resources.bundle()` in total (busy or not: a
        placement group's bundle is rescheduled there), else a line naming what is missing and the live
        nodes' resources (`ray.nodes()`)."""
        import ray

        need = resources.bundle()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if any(all(n.get("Resources", {}).get(k, 0.0) >= v for k, v in need.items()) for n in nodes):
            return None
        have = [{k: v for k, v in n.get("Resources", {}).items() if not k.startswith("node:")} for n in nodes]
        return f"no live node has {need} (live nodes: {have})"

    def node_address(self) -> str:
        """This process's node IP as Ray knows it (the address other nodes reach it at)."""
        import ray

        return str(ray.util.get_node_ip_address())

    def release(self) -> None:
        from ray.util.placement_group import remove_placement_group

        while self.placement_groups:
            try:
                remove_placement_group(self.placement_groups.pop())
            except Exception:  # already gone with its creator
                log.debug("placement group already removed", exc_info=True)

    def submit(self, handle: Any, method: str, *args: Any) -> Any:
        return getattr(handle, method).remote(*args)

    def wait(self, refs: list[Any], timeout: float) -> list[Any]:
        import ray

        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        return ready

    def result(self, ref: Any) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as err:
            raise WorkerDied(str(err)) from err
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else err
            raise cause from err

    def kill(self, handle: Any) -> None:
        import ray

        try:
            ray.kill(handle)
        except Exception:  # already dead is fine
            pass

    def stacks(self, handle: Any, heartbeat: dict[str, Any] | None) -> str:
        """SIGUSR1 to the worker's process and its faulthandler dump (`health.dump_stacks`): directly when the
        worker runs on this node, else in a zero-CPU Ray task pinned to the worker's node."""
        import ray

        from sparring.workers.health import dump_stacks

        if not heartbeat or not heartbeat.get("pid") or not heartbeat.get("stacks"):
            return "(no stack dump: the worker never sent a heartbeat with its pid and stack file)"
        pid, path, node = int(heartbeat["pid"]), str(heartbeat["stacks"]), heartbeat.get("node")
        if node is None or node == current_node():
            return dump_stacks(pid, path)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(num_cpus=0, max_retries=0)(dump_stacks).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        )
        try:
            return str(ray.get(remote.remote(pid, path), timeout=60))
        except Exception as err:  # the node is gone or unreachable
            return f"(no stack dump: node {node} did not answer: {type(err).__name__}: {err})"

    def object_store_mb(self) -> float | None:
        """Plasma memory in use on every node, from the raylets' memory summary (`ray memory --stats-only`;
        Ray has no public API for it); None when the summary cannot be read."""
        import re

        import ray
        from ray._private.internal_api import memory_summary

        try:
            text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
        except Exception:  # a raylet that does not answer: no number this time
            log.debug("no object store summary", exc_info=True)
            return None
        m = re.search(r"Plasma memory usage (\d+(?:\.\d+)?) MiB", text)
        return float(m.group(1)) if m else None


class _LocalHandle:
    def __init__(self, instance: Any, name: str) -> None:
        self.instance, self.name, self.dead = instance, name, threading.Event()


class LocalRuntime:
    """Workers as objects of this process; each call runs in a thread of a shared pool."""

    def __init__(self, max_workers: int = 16) -> None:
        self.pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="worker")
        self.handles: list[_LocalHandle] = []

    def spawn(self, cls: type, args: tuple[Any, ...], name: str, resources: Resources) -> _LocalHandle:
        handle = _LocalHandle(cls(*args), name)
        self.handles.append(handle)
        return handle

    def submit(self, handle: _LocalHandle, method: str, *args: Any) -> cf.Future[Any]:
        def call() -> Any:
            if handle.dead.is_set():
                raise WorkerDied(f"{handle.name} was killed")
            out = getattr(handle.instance, method)(*args)
            if handle.dead.is_set():  # killed while the call ran: its result is lost, as an actor's would be
                raise WorkerDied(f"{handle.name} was killed")
            return out

        return self.pool.submit(call)

    def wait(self, refs: list[cf.Future[Any]], timeout: float) -> list[cf.Future[Any]]:
        done, _ = cf.wait(refs, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, ref: cf.Future[Any]) -> Any:
        return ref.result()

    def kill(self, handle: _LocalHandle) -> None:
        handle.dead.set()
        stop = getattr(handle.instance, "stop", None)  # lets a draining worker notice at its next read
        if stop is not None:
            stop()

    def stacks(self, handle: _LocalHandle, heartbeat: dict[str, Any] | None) -> str:
        """Every thread of this process (the in-process workers are threads of it), by faulthandler."""
        import faulthandler
        import tempfile

        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(f, all_threads=True)
            f.seek(0)
            return f.read()

    def object_store_mb(self) -> None:
        return None  # one process: no object store

    def reserve(self, resources: Resources, count: int, strategy: str, name: str) -> Resources:
        return resources  # one process: nothing to place

    def cluster_resources(self) -> None:
        return None

    def missing(self, resources: Resources) -> None:
        return None  # one process: a worker always fits

    def release(self) -> None:
        pass


@dataclass(eq=False)  # identity: groups are dict keys while their drain calls run
class WorkerGroup:
    """The workers of one role, by consumer name (`gen-0`, `judge-1`, `trainer`, ...).

    `make_args(consumer)` gives the worker's constructor arguments at spawn time (so a replacement starts
    on the weights the controller holds *now*); `on_spawn(consumer, handle)` runs after every spawn (a judge
    that follows the policy loads the current weights there). `restarts` counts replacements.
    """

    role: str
    cls: type
    runtime: Runtime
    make_args: Callable[[str], tuple[Any, ...]]
    resources: Resources
    name_prefix: str
    on_spawn: Callable[[str, Any], None] | None = None
    incarnation: int = 0  # how many controllers the run has had: part of every worker's name
    on_hung: Callable[[str, Any, str], None] | None = None  # (consumer, handle, reason) before a stuck one is killed
    workers: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    _spawned: int = 0
    _bundles: dict[str, int] = field(default_factory=dict)  # consumer -> its placement-group bundle

    def spawn(self, consumers: Iterable[str]) -> None:
        for consumer in consumers:
            self._spawn(consumer)

    def _spawn(self, consumer: str) -> Any:
        self._spawned += 1
        name = f"{self.name_prefix}:{consumer}:{self.incarnation}.{self._spawned}"
        resources = self.resources
        if resources.placement_group is not None:  # a bundle per consumer; a replacement reuses its bundle
            index = self._bundles.setdefault(consumer, len(self._bundles))
            resources = replace(resources, bundle_index=index // resources.workers_per_bundle)
        handle = self.runtime.spawn(self.cls, self.make_args(consumer), name, resources)
        self.workers[consumer] = handle
        if self.on_spawn is not None:
            self.on_spawn(consumer, handle)
        return handle

    def replace(self, consumer: str, reason: str) -> Any:
        """Kill `consumer`'s worker (if still alive) and start a new one with the same consumer name."""
        log.warning("%s %s: %s; replacing it", self.role, consumer, reason)
        self.runtime.kill(self.workers[consumer])
        self.restarts += 1
        return self._spawn(consumer)

    def submit(self, consumer: str, method: str, *args: Any) -> Any:
        return self.runtime.submit(self.workers[consumer], method, *args)

    def hung(self, consumer: str, reason: str) -> None:
        """`consumer`'s worker is stuck: `on_hung` captures its stacks, then it is killed (not yet replaced)."""
        log.warning("%s %s is stuck: %s", self.role, consumer, reason)
        if self.on_hung is not None:
            self.on_hung(consumer, self.workers[consumer], reason)
        self.runtime.kill(self.workers[consumer])

    def result(self, consumer: str, ref: Any, method: str, timeout_s: float | None, limit_s: float | None = None) -> Any:
        """The result of `consumer`'s call `ref` of `method`. Not done after `timeout_s` more seconds (the
        stage's deadline `limit_s`, default `timeout_s`, has passed), the worker is stuck: its stacks are
        captured, it is killed and `WorkerHung` (a `WorkerDied`) is raised."""
        if timeout_s is not None and not self.runtime.wait([ref], timeout=timeout_s):
            reason = f"{method} ran past its deadline of {limit_s or timeout_s:g} s (resilience.stage_timeout_s)"
            self.hung(consumer, reason)
            raise WorkerHung(reason)
        return self.runtime.result(ref)

    def call(self, consumer: str, method: str, *args: Any, retry_dead: bool = False, timeout_s: float | None = None) -> Any:
        """`method(*args)` on one worker, within `timeout_s` seconds if given (else `WorkerHung`). With
        `retry_dead`, a worker that dies (or hangs) during the call is replaced and the call is made once more
        on the replacement (for calls that are safe to repeat)."""
        try:
            return self.result(consumer, self.submit(consumer, method, *args), method, timeout_s)
        except WorkerDied as err:
            if not retry_dead:
                raise
            self.replace(consumer, f"died during {method} ({err})")
            return self.result(consumer, self.submit(consumer, method, *args), method, timeout_s)

    def call_any(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """`method` on the first worker, replaced and retried once if it dies or hangs past `timeout_s`
        (evaluation sampling, probes)."""
        return self.call(next(iter(self.workers)), method, *args, retry_dead=True, timeout_s=timeout_s)

    def call_all(
        self,
        method: str,
        *args: Any,
        replace_on_error: bool = False,
        after_replace: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """`method(*args)` on every worker at once; results by consumer.

        A worker that died, or whose call is not done `timeout_s` seconds after the calls were made (stacks
        captured, killed: `hung`), is replaced and its result is missing from the output; with
        `replace_on_error` so is one whose call raised. `after_replace` names a method to call on the
        replacement (e.g. `info` to wait until its engine is up). Other exceptions propagate.
        """
        refs = {consumer: self.submit(consumer, method, *args) for consumer in self.workers}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        out: dict[str, Any] = {}
        for consumer, ref in refs.items():
            try:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                out[consumer] = self.result(consumer, ref, method, left, timeout_s)
            except WorkerDied as err:
                self._replace_and_wait(consumer, f"died during {method} ({err})", after_replace)
            except Exception as err:
                if not replace_on_error:
                    raise
                self._replace_and_wait(consumer, f"{method} failed ({type(err).__name__}: {err})", after_replace)
        return out

    def _replace_and_wait(self, consumer: str, reason: str, after: str | None) -> None:
        handle = self.replace(consumer, reason)
        if after is not None:
            self.runtime.result(self.runtime.submit(handle, after))

    def kill_all(self) -> None:
        for handle in self.workers.values():
            self.runtime.kill(handle)
        self.workers.clear()


def drain_until_idle(
    runtime: Runtime,
    groups: list[tuple[WorkerGroup, Callable[[], bool]]],
    done: Callable[[], bool],
    on_result: Callable[[WorkerGroup, str, Any], None],
    on_tick: Callable[[], None] = lambda: None,
    on_replaced: Callable[[WorkerGroup, str], None] = lambda group, consumer: None,
    poll_s: float = 0.5,
    before_replace: Callable[[WorkerGroup, str], None] = lambda group, consumer: None,
    stalled: Callable[[WorkerGroup, str, float], str | None] = lambda group, consumer, since: None,
    timeout_s: float | None = None,
) -> None:
    """Keep every worker of `groups` calling `drain()` while its group `has_work()`, until `done()` holds
    and no drain call is in flight.

    A drain returns when the worker's input stream is idle; a worker whose stage still has open entries is
    relaunched. A worker that died is replaced (same consumer name: it resumes the dead one's pending
    entries); one that raises `VersionMismatch` is replaced on the group's current weights. Every other
    exception propagates. `on_result(group, consumer, counters)` receives each finished drain's counters;
    `before_replace(group, consumer)` runs before a dead worker is replaced (raising there stops the drain
    with the worker not replaced: a respawn budget), `on_replaced(group, consumer)` after.

    Hangs: `stalled(group, consumer, since)` (the monotonic time its drain was submitted) returns why a
    worker whose drain is in flight is stuck (no heartbeat), or None; a stuck worker is `hung` (stacks
    captured, killed) and replaced like a dead one. Past `timeout_s` seconds in all, the in-flight workers are
    `hung` and `StageTimeout` is raised.
    """
    running: dict[Any, tuple[WorkerGroup, str]] = {}
    since: dict[Any, float] = {}  # ref -> when its drain was submitted
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        on_tick()
        if not running and done():
            return
        if deadline is not None and time.monotonic() > deadline:
            stuck = sorted(consumer for _, consumer in running.values())
            for group, consumer in running.values():
                group.hung(consumer, f"its stage ran past the deadline of {timeout_s:g} s")
            raise StageTimeout(
                f"generation and judging ran past resilience.stage_timeout_s.generate={timeout_s:g} s; still "
                f"draining: {', '.join(stuck) or 'none'} (their stacks are in the run's log); resume the run to retry"
            )
        busy = set(running.values())
        for group, has_work in groups:
            if not has_work():
                continue
            for consumer in list(group.workers):
                if (group, consumer) not in busy:
                    ref = group.submit(consumer, "drain")
                    running[ref], since[ref] = (group, consumer), time.monotonic()
        for ref, (group, consumer) in list(running.items()):
            reason = stalled(group, consumer, since[ref])
            if reason is None:
                continue
            del running[ref], since[ref]  # the killed worker's call is abandoned
            group.hung(consumer, reason)
            before_replace(group, consumer)
            group.replace(consumer, f"stuck ({reason})")
            on_replaced(group, consumer)
        for ref in runtime.wait(list(running), timeout=poll_s) if running else []:
            group, consumer = running.pop(ref)
            since.pop(ref, None)
            try:
                out = runtime.result(ref)
            except WorkerDied as err:
                before_replace(group, consumer)
                group.replace(consumer, f"died ({err})")
                on_replaced(group, consumer)
                continue
            except VersionMismatch as err:
                group.replace(consumer, str(err))
                continue
            on_result(group, consumer, out)
        if not running and not any(has_work() for _, has_work in groups) and not done():
            time.sleep(poll_s)  # nothing in flight and no open work, yet not done: wait for the accounting
