"""`sparring doctor` against real servers: a redis-server with AOF off / on / fsync off / a password, and a real
Ray head (`ray start --head --num-cpus=4`, tests/integration/conftest.py) for resources vs a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sparring.services.cli import main
from sparring.shared.redis_server import PrivateRedis, connect
from tests.integration.conftest import free_port

DEMO = str(Path(__file__).resolve().parents[2] / "tasks" / "arena" / "demo.yaml")


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """Run `sparring doctor ARGS --json` in-process; (exit code, {check name: check})."""
    code = main(["doctor", *args, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is (code == 0)
    return code, {c["name"]: c for c in out["checks"]}


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_redis_without_aof_is_a_problem_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_cluster: None
) -> None:
    with PrivateRedis(tmp_path / "r", extra_args=("--appendonly", "no")) as server:
        monkeypatch.setenv("REDIS_URL", server.url)
        code, checks = doctor(capsys)
        assert code == 1
        assert checks["redis"]["status"] == "ok"
        persistence = checks["redis persistence"]
        assert persistence["status"] == "problem"
        assert "appendonly no" in persistence["detail"]
        assert "appendonly yes" in persistence["fix"] and "deploy/redis.conf" in persistence["fix"]
        # the human output says the same, with the fix on its own line, and exits 1
        assert main(["doctor"]) == 1
        text = capsys.readouterr().out
        assert "problem  redis persistence" in text and "fix: turn on append-only persistence" in text
        assert text.rstrip().endswith("1 problem(s)")


def test_redis_with_fsync_off_or_eviction_is_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_cluster: None
) -> None:
    with PrivateRedis(tmp_path / "r", extra_args=("--appendfsync", "no")) as server:
        monkeypatch.setenv("REDIS_URL", server.url)
        code, checks = doctor(capsys)
        assert code == 1 and "appendfsync no" in checks["redis persistence"]["detail"]
    with PrivateRedis(tmp_path / "r2", extra_args=("--maxmemory-policy", "allkeys-lru")) as server:
        monkeypatch.setenv("REDIS_URL", server.url)
        code, checks = doctor(capsys)
        assert code == 1 and "noeviction" in checks["redis persistence"]["fix"]


def test_redis_with_aof_and_a_password_passes_and_a_wrong_password_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_cluster: None
) -> None:
    with PrivateRedis(tmp_path / "r") as server:
        admin = connect(server.url)
        admin.config_set("requirepass", "s3cret")  # PrivateRedis's own readiness PING has no password
        url = server.url.replace("redis://", "redis://:s3cret@")
        monkeypatch.setenv("REDIS_URL", url)
        code, checks = doctor(capsys, DEMO)
        assert code == 0, checks
        assert checks["redis auth"]["status"] == "ok" and "NOAUTH" in checks["redis auth"]["detail"]
        assert checks["redis persistence"] == {
            "name": "redis persistence", "status": "ok", "fix": "",
            "detail": "appendonly yes, appendfsync everysec, maxmemory-policy noeviction",
        }  # fmt: skip
        assert checks["ray"]["status"] == "ok" and "the local Ray" in checks["ray"]["detail"]
        assert checks["model policy.path"]["status"] == "ok"
        assert {"gpu", "vllm"} <= checks.keys()

        monkeypatch.setenv("REDIS_URL", server.url.replace("redis://", "redis://:wrong@"))
        code, checks = doctor(capsys)
        assert code == 1
        assert checks["redis"]["status"] == "problem" and "password" in checks["redis"]["fix"]
        assert "wrong" not in checks["redis"]["detail"]  # the password is redacted
        admin.config_set("requirepass", "")
        admin.close()


def test_gpus_asked_without_gpus_and_an_incomplete_model_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redis_url: str, no_cluster: None
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU problem cannot occur")  # the CPU CI machines have none
    monkeypatch.setenv("REDIS_URL", redis_url)
    model = tmp_path / "policy"
    model.mkdir()
    (model / "config.json").write_text("{}")
    code, checks = doctor(capsys, DEMO, "--set", "resources.trainer.num_gpus=1", "--set", f"policy.path={model}")
    assert code == 1
    assert checks["gpu"]["status"] == "problem" and "no RAY_ADDRESS" in checks["gpu"]["detail"]
    assert checks["ray"]["status"] == "problem"
    assert "GPU: the config asks for 1 in all (trainer 1 x 1), the cluster has 0" in checks["ray"]["detail"]
    policy = checks["model policy.path"]
    assert policy["status"] == "problem" and "weights" in policy["detail"] and "tokenizer" in policy["detail"]


def test_ray_cluster_resources_against_the_config(
    ray_head: str, ray_auth: dict[str, str], redis_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    from ray._private.authentication_test_utils import reset_auth_token_state

    for k, v in ray_auth.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    monkeypatch.setenv("REDIS_URL", redis_url)
    # Ray caches the first auth token a process reads: an earlier test of the same pytest process (another
    # cluster, another token) would make this join fail. Read this head's token now; drop it afterwards.
    reset_auth_token_state()
    request.addfinalizer(reset_auth_token_state)
    code, checks = doctor(capsys, DEMO)  # 2 x 0.5 + 0.25 + 1 + 0.25 CPUs on a 4-CPU head
    assert checks["ray"]["status"] == "ok", checks["ray"]
    assert f"Ray cluster at {ray_head} (1 node(s)): CPU 4" in checks["ray"]["detail"]
    code, checks = doctor(capsys, DEMO, "--set", "generation.num_generators=8", "--set", "resources.judges.custom={judge_node: 1}")
    assert code == 1
    detail = checks["ray"]["detail"]
    assert "CPU: the config asks for 5.5 in all (generators 8 x 0.5; judges 1 x 0.25; trainer 1 x 1; evaluator 1 x 0.25), the cluster has 4" in detail
    assert "judge_node: the config asks for 1 in all (judges 1 x 1), the cluster has 0" in detail
    assert "one judges worker needs CPU 0.25, judge_node 1; no node has that much" in detail
    # placement colocated on the head's 1 (logical) GPU: the trainer's 0.5 and 2 engines x 0.25 share it
    colocated = [f"resources.{k}" for k in ("placement=colocated", "generators.num_gpus=0.25", "trainer.num_gpus=0.5")]
    code, checks = doctor(capsys, DEMO, *(a for s in colocated for a in ("--set", s)))
    assert checks["ray"]["status"] == "ok", checks["ray"]
    assert "generators 2 x (CPU 0.5, GPU 0.25)" in checks["ray"]["detail"]
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: answered in seconds, not after ray.init's retries
    monkeypatch.setenv("RAY_ADDRESS", dead)
    code, checks = doctor(capsys)
    assert code == 1 and checks["ray"]["status"] == "problem"
    assert f"cannot reach the Ray head at {dead}" in checks["ray"]["detail"] and "RAY_ADDRESS" in checks["ray"]["fix"]


def test_colocated_placement_without_a_gpu_says_what_does_not_fit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redis_url: str, no_cluster: None
) -> None:
    """The local Ray a run would start has the GPUs torch sees: none on the CPU CI machines, so the colocated
    GPU bundle (the trainer's 0.5 + 2 engines x 0.25) fits nowhere; with a GPU it fits (the Ray-head test)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the colocated config fits here")
    monkeypatch.setenv("REDIS_URL", redis_url)
    sets = ["resources.placement=colocated", "resources.generators.num_gpus=0.25", "resources.trainer.num_gpus=0.5"]
    code, checks = doctor(capsys, DEMO, *(a for s in sets for a in ("--set", s)))
    detail = checks["ray"]["detail"]
    assert code == 1 and checks["ray"]["status"] == "problem"
    assert "GPU: the config asks for 1 in all (generators 2 x 0.25; trainer 1 x 0.5), the cluster has 0" in detail
    assert "one colocated bundle (a trainer rank + 2 engine(s) on one GPU) needs CPU 2, GPU 1; no node has that much" in detail
