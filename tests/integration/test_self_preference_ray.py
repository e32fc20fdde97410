"""Self-preference (OSP) in a Ray judge worker: the worker's judge follows a weight sync pushed through the
real Ray object store, and judges pairs from a real Redis stream exactly like a judge freshly loaded on the
new weights (tiny checkpoints of tests/helpers.py, with a lower-case template their tokenizer knows); and the
arena policy, pretrained with judge-format examples, agrees with gold on the held-out arena pairs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sparring.shared.config import parse_config
from sparring.shared.queue import StreamQueue
from sparring.shared.records import Completion, GenerationGroup, PreferencePair
from sparring.workers.judges.self_preference import SelfPreferenceJudge
from tests.helpers import make_tiny_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEMPLATE = "which is better {question} one {a} two {b}"
ANSWERS = (" yes", " no")
TEXTS = ["the cat runs", "a big dog eats", "red fish and blue fish", "hello world"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(
        make_tiny_checkpoint(tmp_path_factory.mktemp("selfpref") / "v0", seed=0, initializer_range=0.2)
    )


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _judge(path: str) -> SelfPreferenceJudge:
    return SelfPreferenceJudge.from_pretrained(path, template=TEMPLATE, answers=ANSWERS)


def _group(run_id: str, version: int, prompt_id: str) -> GenerationGroup:
    return GenerationGroup(
        run_id=run_id,
        iteration=version + 1,
        policy_version=version,
        prompt_id=prompt_id,
        prompt="the sun and the rain",
        prompt_token_ids=[1],
        completions=[
            Completion(index=i, text=t, token_ids=[10 + i], logprobs=None, finish_reason="stop")
            for i, t in enumerate(TEXTS)
        ],
        engine_id="test",
        seed=0,
        latency_s=0.0,
    )


def test_judge_worker_follows_a_weight_sync(
    ray_local: Any, redis_url: str, redis_client: Any, ckpt: str, unique_run_id: str, tmp_path: Path
) -> None:
    import torch

    from sparring.workers.actors import JUDGES_GROUP, JudgeWorker
    from sparring.workers.weight_sync import load_state_dir, object_store_update

    cfg = parse_config(
        {
            "policy": {"path": ckpt},
            "prompts": {"source": "jsonl", "path": str(_pool(tmp_path))},
            "judge": {"kind": "self_preference"},
            "algorithm": {"pairs": "all_pairs"},
            "storage": {"run_dir": str(tmp_path)},
        }
    )
    queue = StreamQueue(redis_client, unique_run_id)
    queue.ensure_group("generations", JUDGES_GROUP)
    # the judge the registry would build from this config, with a template the tiny tokenizer can answer
    worker = ray_local.remote(JudgeWorker).remote(
        unique_run_id, redis_url, cfg.model_dump_json(), "judge-0", judge=_judge(ckpt)
    )

    def judged(version: int) -> dict[tuple[int, int], float]:
        queue.put("generations", _group(unique_run_id, version, f"p{version}"))
        assert ray_local.get(worker.drain.remote(idle_rounds=2))["groups"] == 1
        pairs = [p for _, p in queue.read_all("pairs", PreferencePair) if p.policy_version == version]
        assert pairs
        return {(p.chosen.index, p.rejected.index): p.win_prob for p in pairs}

    before = judged(0)
    # "version 1": the arena policy with perturbed weights, pushed as the generators get it (object store)
    gen = torch.Generator().manual_seed(0)
    state = {k: v + 0.2 * torch.randn(v.shape, generator=gen) for k, v in load_state_dir(ckpt).items()}
    seconds = ray_local.get(
        worker.load_weights.remote(object_store_update(state, 1), str(tmp_path / "staging"))
    )
    assert seconds > 0
    after = judged(1)
    assert after != before

    fresh = _judge(ckpt)
    fresh.model.load_state_dict(state)
    (j,) = fresh.judge([_group(unique_run_id, 1, "p1")])
    assert j.win_matrix is not None
    for (i, k), p in after.items():
        assert p == pytest.approx(j.win_matrix[i][k], abs=1e-6)


def _pool(tmp_path: Path) -> Path:
    path = tmp_path / "pool.jsonl"
    path.write_text('{"id": "p0", "prompt": "the sun and the rain"}\n')
    return path


def test_registry_builds_the_self_preference_judge_on_the_run_policy(ckpt: str, tmp_path: Path) -> None:
    from sparring.workers.judges.registry import build_judge

    cfg = parse_config(
        {
            "policy": {"path": ckpt},
            "prompts": {"source": "jsonl", "path": str(_pool(tmp_path))},
            "judge": {"kind": "self_preference"},
            "algorithm": {"pairs": "ranked"},
            "storage": {"run_dir": str(tmp_path)},
        }
    )
    with pytest.raises(ValueError, match="single tokens"):  # the default " A" / " B" are not tokens of it
        build_judge(cfg.judge, cfg)
    with pytest.raises(ValueError, match="needs the run config"):
        build_judge(cfg.judge)


def test_arena_policy_judges_like_gold() -> None:
    """The issue's bar: >= 0.60 agreement on the 320 held-out pairs with distinct gold scores (docs/judges.md)."""
    from sparring.tasks.arena.policy import build_arena_model
    from sparring.tasks.arena.strong import gold_agreement, heldout_pairs

    judge = SelfPreferenceJudge.from_pretrained(build_arena_model(0))
    agreement = gold_agreement(judge, heldout_pairs())
    assert agreement.num_pairs == 320
    assert agreement.agreement >= 0.60 and agreement.ci_low > 0.5, agreement
    consistency = judge.flip_consistency()
    assert consistency is not None and 0.5 < consistency <= 1.0
