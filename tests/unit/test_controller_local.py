"""The run controller driven in-process (no Ray) through `LocalRuntime`, on a model that is not the arena's:
a tiny random-init Llama with its own tokenizer and chat template, a JSONL prompt pool with multi-turn
conversations, a density-ratio judge between two local checkpoints (training and evaluation), the
transformers generation backend, real Redis.

One run: iteration 1 is paused after it is recorded; a new controller resumes it (a resumed run), a
generator is killed in the middle of iteration 2 and replaced; iteration 3 completes. Every iteration
records the generic `eval` metrics, and they reach summary.json, the CLI table and /metrics' collector.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sparring.shared import history
from sparring.shared.config import parse_config
from sparring.shared.queue import StreamQueue
from sparring.shared.records import GenerationGroup
from sparring.shared.store import RunStore

TOPICS = ["rivers", "bread", "chess", "owls", "rain", "maps", "tea", "glass", "kites", "moss", "salt", "bees"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tokenizer with a chat template, a tiny policy and a second tiny model (the density ratio's strong side)."""
    from sparring.shared.tiny import save_tiny_llama, train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    texts = [f"tell me about {t}. {t} are nice and {t} are old." for t in TOPICS] * 20
    tok = train_tokenizer(texts, 300, root / "tok")
    policy = save_tiny_llama(root / "policy", tok, seed=1, hidden_size=64, intermediate_size=128, head_dim=32)
    strong = save_tiny_llama(root / "strong", tok, seed=2, hidden_size=64, intermediate_size=128, head_dim=32)
    return {"policy": str(policy), "strong": str(strong)}


@pytest.fixture
def pool(tmp_path: Path) -> str:
    lines = [{"id": f"p{i}", "prompt": f"tell me about {t}."} for i, t in enumerate(TOPICS)]
    lines += [
        {"id": f"m{i}", "messages": [{"role": "user", "content": f"hi, {t}?"}, {"role": "assistant", "content": "yes."},
                                     {"role": "user", "content": f"more about {t}."}]}  # fmt: skip
        for i, t in enumerate(TOPICS)
    ]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def config(tmp_path: Path, models: dict[str, str], pool: str) -> Any:
    judge = {"kind": "density_ratio", "strong_model": models["strong"], "weak_model": models["policy"]}
    return parse_config(
        {
            "name": "local",
            "policy": {"path": models["policy"]},
            "judge": judge,
            "prompts": {"source": "jsonl", "path": pool},
            "generation": {"backend": "transformers", "num_generators": 2, "samples_per_prompt": 2,
                           "max_new_tokens": 6, "prompts_per_request": 2, "max_model_len": 128},  # fmt: skip
            "trainer": {"learning_rate": 1e-3, "batch_size": 4, "epochs": 1},
            "schedule": {"iterations": 3, "prompts_per_iteration": 8},
            "eval": {"num_prompts": 6},
            "storage": {"run_dir": str(tmp_path), "weight_transport": "safetensors_dir", "claim_idle_ms": 60_000},
        }
    )


def controller(cfg: Any, run_id: str, redis_url: str, run_dir: Path) -> Any:
    from sparring.workers.controller import RunController
    from sparring.workers.groups import LocalRuntime

    return RunController(run_id, cfg.model_dump_json(), redis_url, str(run_dir), runtime=LocalRuntime())


def test_pause_resume_and_a_replaced_worker_without_ray(
    models: dict[str, str], pool: str, tmp_path: Path, redis_url: str, redis_client: Any, unique_run_id: str
) -> None:
    from sparring.services.cli import print_table
    from sparring.services.display import eval_columns
    from sparring.services.metrics import RunCollector

    cfg = config(tmp_path, models, pool)
    run_dir = tmp_path / unique_run_id
    run_dir.mkdir()
    store = RunStore(redis_client)
    store.create_run(unique_run_id, cfg.model_dump(mode="json"), str(run_dir))

    # 1. iteration 1, then a pause request honoured at the iteration boundary
    first = controller(cfg, unique_run_id, redis_url, run_dir)
    run_iteration = first.run_iteration

    def then_pause(t: int) -> Any:
        record = run_iteration(t)
        store.request_control(unique_run_id, "pause")
        return record

    first.run_iteration = then_pause
    summary = first.run()
    assert summary["interrupted"] == "paused" and store.get_run(unique_run_id)["state"] == "paused"
    assert [r.iteration for r in store.iterations(unique_run_id)] == [1]
    assert not any(group.workers for group in first.groups.values())  # every worker stopped

    # 2. a new controller resumes after iteration 1; gen-0 is killed while iteration 2 generates
    store.set_state(unique_run_id, "created")
    second = controller(cfg, unique_run_id, redis_url, run_dir)
    queue = StreamQueue(redis_client, unique_run_id)
    killed: list[str] = []

    def kill_gen0() -> None:
        deadline = time.monotonic() + 300
        while queue.written("generations") < 9 and time.monotonic() < deadline:  # 8 groups of iteration 1 + 1
            time.sleep(0.01)
        group = second.groups["generators"]
        second.runtime.kill(group.workers["gen-0"])
        killed.append("gen-0")

    killer = threading.Thread(target=kill_gen0, daemon=True)
    killer.start()
    summary = second.run(keep_workers=True)
    killer.join(timeout=5)
    # the KL estimator is consistent: the initial policy's own samples score ~0 (sampler vs trainer log-probs)
    from sparring.workers.evaluation import kl_estimate

    baseline = second.eval_samples["baseline"]
    initial = second.groups["trainer"].call("trainer", "initial_logps", [ids for ids, _ in baseline], [c for _, c in baseline])
    assert abs(kl_estimate([c for _, c in baseline], initial)) < 1e-3
    second.shutdown()
    assert killed == ["gen-0"] and "interrupted" not in summary
    assert store.get_run(unique_run_id)["state"] == "completed"
    assert history.last_row(run_dir / history.EVENTS_FILE)["kind"] == "completed"  # the history file ends with the run

    records = store.iterations(unique_run_id)
    assert [r.iteration for r in records] == [1, 2, 3]
    assert [r.policy_version_out for r in records] == [1, 2, 3]
    assert records[1].metrics["workers/restarts"] >= 1  # the replaced generator, counted in its iteration
    assert records[2].metrics["workers/restarts"] == 0
    # every stream's peak depth: 8 prompts and 8 groups dispatched, and the pairs the trainer found waiting
    # every pair consumed is trained or held out for the diagnostics (workers/diagnostics.py)
    assert all(r.metrics["queue/peak/prompts"] == 8 and r.metrics["queue/peak/pairs"] == r.num_pairs for r in records)
    assert all(r.metrics["train/pairs"] == r.num_pairs - r.metrics.get("heldout/pairs_withheld", 0) for r in records)
    sizes = [r.metrics["heldout/pairs"] for r in records]
    assert 0 < sizes[0] <= 2 and sizes == sorted(sizes)  # at most a quarter of iteration 1's 8 pairs, then growing
    for r in records:
        assert 0.0 <= r.metrics["heldout/ranking_accuracy"] <= 1.0 and 0.0 <= r.metrics["heldout/idealized_ranking_accuracy"] <= 1.0
        assert r.metrics["heldout/logps/chosen"] < 0 and r.metrics["heldout/logps/rejected"] < 0
    died = [d["consumer"] for _, kind, d in store.events(unique_run_id) if kind == "worker_died"]
    assert died == ["gen-0"]
    groups = Counter(g.record_id for _, g in queue.read_all("generations", GenerationGroup))
    # 3 x 8 prompts, each group exactly once; retention (docs/reliability.md) keeps only the newest recorded
    # iteration's groups in the stream, the records count every iteration's
    assert [r.num_groups for r in records] == [8, 8, 8]
    assert len(groups) == 8 and max(groups.values()) == 1 and {g.iteration for _, g in queue.read_all("generations", GenerationGroup)} == {3}

    # held-out prompts are never trained on; every iteration is evaluated on all of them
    heldout = {r.prompt_id for r in second.prompts.heldout}
    assert len(heldout) == 6 and not heldout & {g.prompt_id for _, g in queue.read_all("generations", GenerationGroup)}
    for r in records:
        ev = r.eval
        assert ev["eval/num_prompts"] == 6
        for name in ("win_rate_vs_iter0", "win_rate_vs_prev"):
            assert 0.0 <= ev[f"eval/{name}_ci_low"] <= ev[f"eval/{name}"] <= ev[f"eval/{name}_ci_high"] <= 1.0
        assert 0.0 < ev["eval/response_length_mean"] <= 6 and 0.0 <= ev["eval/truncated_fraction"] <= 1.0
        assert "eval/response_length_delta" in ev and "eval/kl_vs_iter0" in ev
    # iteration 1's previous policy is version 0: the same win rate, judged once
    assert records[0].eval["eval/win_rate_vs_prev"] == records[0].eval["eval/win_rate_vs_iter0"]
    # the policy moved away from the initial one: the KL estimate is not ~0 after three updates at lr 1e-3
    assert abs(records[2].eval["eval/kl_vs_iter0"]) > 1e-3

    # summary.json, the CLI table and the /metrics collector all show the eval metrics
    written = json.loads((run_dir / "summary.json").read_text())
    assert [it["eval"] for it in written["iterations"]] == [r.eval for r in records]
    assert eval_columns(written["iterations"]) == [("win vs iter0", "eval/win_rate_vs_iter0")]
    print_table(written)

    class Service:
        def __init__(self) -> None:
            self.store = store

        def queue_depths(self, run_id: str) -> dict[str, int]:
            return {}

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in RunCollector(Service()).collect()  # type: ignore[arg-type]
        for s in family.samples
    }
    key = ("sparring_eval", (("metric", "win_rate_vs_iter0"), ("run", unique_run_id)))
    assert samples[key] == records[2].eval["eval/win_rate_vs_iter0"]
    key = ("sparring_heldout", (("metric", "ranking_accuracy"), ("run", unique_run_id)))
    assert samples[key] == records[2].metrics["heldout/ranking_accuracy"]
    # the timeline: each stage's busy interval, one after another within the iteration (sync mode), and its
    # Prometheus gauges; every trained pair at lag 0 in the staleness histogram
    for r in records:
        spans = r.stage_spans
        assert list(spans) == ["generate_judge", "train", "sync", "eval"]
        edges = [r.started_at] + [x for stage in spans.values() for x in stage] + [r.finished_at]
        assert edges == sorted(edges)
        assert all(abs((b - a) - r.stage_seconds[s]) < 0.05 for s, (a, b) in spans.items())
    for stage in ("generate_judge", "train", "sync", "eval"):
        assert samples[("sparring_stage_seconds", (("run", unique_run_id), ("stage", stage)))] == records[2].stage_seconds[stage]
    assert samples[("sparring_iteration_seconds", (("run", unique_run_id),))] == records[2].finished_at - records[2].started_at
    lag0 = ("sparring_staleness_pairs_total", (("lag", "0"), ("run", unique_run_id)))
    assert samples[lag0] == sum(r.num_pairs for r in records) > 0
    assert samples[("sparring_staleness_max", (("run", unique_run_id),))] == 0


def test_an_iteration_without_pairs_fails_the_run_with_the_reason(
    models: dict[str, str], tmp_path: Path, redis_url: str, redis_client: Any, unique_run_id: str
) -> None:
    """Every prompt is longer than the context leaves room for, so every one is dead-lettered at generation: the
    run fails at iteration 1 naming the counts and the first dead letter's reason, instead of training on
    nothing and ending `completed` with 0 pairs. The reason is one line; the traceback is in controller.log."""
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"tell me about {t}. " * 6}) + "\n"
                            for i, t in enumerate(TOPICS)))  # fmt: skip
    cfg = config(tmp_path, models, str(path))
    cfg = cfg.model_copy(update={
        "generation": cfg.generation.model_copy(update={"max_new_tokens": 6, "max_model_len": 16}),
        "eval": cfg.eval.model_copy(update={"enabled": False}),
    })  # fmt: skip
    run_dir = tmp_path / unique_run_id
    run_dir.mkdir()
    store = RunStore(redis_client)
    store.create_run(unique_run_id, cfg.model_dump(mode="json"), str(run_dir))
    with pytest.raises(RuntimeError, match="nothing to train on"):
        controller(cfg, unique_run_id, redis_url, run_dir).run()
    run = store.get_run(unique_run_id)
    assert run["state"] == "failed" and store.iterations(unique_run_id) == []
    reason = run["reason"]
    assert reason.startswith("EmptyIteration: iteration 1 has nothing to train on: 8 prompt(s) gave 0 group(s)")
    assert "8 dead letter(s)" in reason and "exceeds generation.max_model_len 16" in reason and "\n" not in reason
    assert "EmptyIteration" in (run_dir / "controller.log").read_text()
    assert history.last_row(run_dir / history.EVENTS_FILE)["kind"] == "failed"


def test_eval_pairs_carry_the_whole_conversation() -> None:
    from sparring.shared.prompts import PromptItem
    from sparring.shared.records import Completion
    from sparring.workers.evaluation import pair_groups

    turns = [{"role": "system", "content": "answer in French"}, {"role": "user", "content": "hello?"}]
    a = Completion(index=0, text="bonjour", token_ids=[1], logprobs=[-0.1], finish_reason="stop")
    b = Completion(index=0, text="hi", token_ids=[2], logprobs=[-0.2], finish_reason="stop")
    (group,) = pair_groups("r", [PromptItem("p", "hello?", messages=turns)], [a], [b], 1)
    assert group.messages == turns and [c.index for c in group.completions] == [0, 1]
