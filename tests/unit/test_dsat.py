"""DRIFT inputs: dissatisfaction logs (parsing, errors by line), the guided transcript, arena DSAT logs,
the fresh-sample-vs-logged-response pairs, and the warm start on seed pairs (an in-process run: LocalRuntime,
transformers backend, real Redis)."""

import json
from pathlib import Path
from typing import Any

import pytest

from sparring.shared.config import ConfigError, parse_config
from sparring.shared.dsat import DSATError, DSATLog, drift_generation_prompt, parse_dsat_jsonl
from sparring.shared.prompts import dsat_item, load_prompt_pool
from sparring.shared.records import Completion, GenerationGroup
from sparring.shared.store import RunStore
from sparring.tasks.arena.dsat import SEED_EVERY, arena_dsat_logs
from sparring.tasks.arena.rules import MAX_GOLD, gold_score, topic_of, words
from sparring.tasks.arena.rules import TOPICS as ARENA_TOPICS
from sparring.workers.recipes.pairs import build_anchor_pairs
from tests.unit.test_spin import TOPICS, answer, answer_logps, policy  # noqa: F401 - `policy` is a fixture

GOOD = {
    "id": "c1",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about otters."}],
    "response": "they are animals",
    "feedback": "You did not even mention otters.",
}


def test_parse_reports_every_bad_line_with_field() -> None:
    lines = [
        json.dumps(GOOD),
        json.dumps({k: v for k, v in GOOD.items() if k != "feedback"} | {"id": "c2"}),
        "{not json",
        json.dumps(GOOD | {"id": "c4", "messages": [{"role": "assistant", "content": "hi"}]}),
        json.dumps(GOOD),
    ]
    with pytest.raises(DSATError) as e:
        parse_dsat_jsonl(lines, "logs.jsonl")
    msg = str(e.value)
    assert "line 2: feedback: missing field" in msg
    assert "line 3: not valid JSON" in msg
    assert "line 4: messages: Value error, must end with a user message" in msg
    assert "line 5: duplicate id 'c1' (first on line 1)" in msg
    assert "line 1:" not in msg


def test_guided_transcript_matches_drift_format() -> None:
    log = DSATLog.model_validate(GOOD)
    assert drift_generation_prompt(log) == (
        "Be brief.\n\nUser: Tell me about otters.\nAssistant: they are animals\n"
        "User: You did not even mention otters.\n"
        "System: Based on the user's latest feedback, please provide an improved response that addresses "
        "their concerns.\nAssistant:"
    )
    item = dsat_item(log)
    assert item.prompt == "Tell me about otters." and item.anchor_text == "they are animals"
    assert item.messages is not None and item.messages[0]["role"] == "system"


def test_arena_dsat_logs_are_low_gold_and_feedback_names_what_is_missing() -> None:
    logs = arena_dsat_logs(64, seed=0)
    assert logs == arena_dsat_logs(64, seed=0)  # deterministic (and cached)
    parsed = parse_dsat_jsonl([json.dumps(d) for d in logs])
    for log in parsed:
        topic = topic_of(log.prompt)
        assert gold_score(topic, log.response) <= 1
        assert log.feedback
    assert any(topic_of(p.prompt) in p.feedback for p in parsed)  # "You did not even mention {topic}."
    # the logged answers are the deployed policy's own failures, not corpus answers: the corpus never names
    # another topic than the prompt's, the pretrained policy sometimes does
    assert any((set(words(p.response)) & set(ARENA_TOPICS)) - {topic_of(p.prompt)} for p in parsed)


def test_anchor_pairs_prefer_each_fresh_sample_over_the_logged_response() -> None:
    anchor = Completion(index=2, text="bad", token_ids=[7, 8], logprobs=None, finish_reason="stop")
    group = GenerationGroup(
        run_id="r", iteration=1, policy_version=0, prompt_id="c1", prompt="Tell me about otters.",
        prompt_token_ids=[1, 2], engine_id="e", seed=0, latency_s=0.0, anchor=anchor,
        completions=[
            Completion(index=0, text="good", token_ids=[5, 6], logprobs=[-1.0, -1.0], finish_reason="stop"),
            Completion(index=1, text="bad", token_ids=[7, 8], logprobs=[-1.0, -1.0], finish_reason="stop"),
        ],
    )  # fmt: skip
    pairs = build_anchor_pairs(group)
    assert [(p.chosen.index, p.rejected.index, p.win_prob) for p in pairs] == [(0, 2, 1.0)]  # identical one dropped
    with pytest.raises(ValueError, match="no logged response"):
        build_anchor_pairs(group.model_copy(update={"anchor": None}))


def test_arena_seed_pairs_are_every_fourth_log_with_a_full_gold_answer() -> None:
    logs = parse_dsat_jsonl([json.dumps(d) for d in arena_dsat_logs(64, seed=0)])
    seeds = [log for log in logs if log.satisfied is not None]
    assert len(seeds) == 64 // SEED_EVERY
    assert all(gold_score(topic_of(log.prompt), log.satisfied) == MAX_GOLD for log in seeds)  # type: ignore[arg-type]
    assert dsat_item(seeds[0]).reference_answer == seeds[0].satisfied and dsat_item(logs[1]).reference_answer is None


def test_warm_start_needs_drift_pairs() -> None:
    base = {"policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}, "prompts": {"source": "arena"}}
    with pytest.raises(ConfigError, match="drift_warm_start_epochs=3 goes with pairs=drift"):
        parse_config({**base, "algorithm": {"drift_warm_start_epochs": 3}})
    assert parse_config({**base, "preset": "drift", "prompts": {"source": "arena_dsat"}}).algorithm.drift_warm_start_epochs == 3


def test_a_drift_run_warm_starts_on_the_seed_pairs_before_iteration_1(
    policy: str, tmp_path: Path, redis_url: str, redis_client: Any, unique_run_id: str  # noqa: F811
) -> None:
    from sparring.workers.controller import RunController
    from sparring.workers.groups import LocalRuntime

    # 12 logs; the first 8 carry the answer the user was then satisfied with (the seed pairs)
    lines = [
        {"id": t, "messages": [{"role": "user", "content": f"tell me about {t}."}], "response": f"{t} {t} {t}.",
         "feedback": "You keep repeating words.", **({"satisfied": answer(t)} if i < 8 else {})}
        for i, t in enumerate(TOPICS)
    ]  # fmt: skip
    path = tmp_path / "dsat.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = parse_config(
        {
            "name": "drift-warm",
            "preset": "drift",
            "policy": {"path": policy},
            "prompts": {"source": "dsat", "path": str(path)},
            "algorithm": {"drift_guided": False, "drift_warm_start_epochs": 3},
            "generation": {"backend": "transformers", "num_generators": 1, "max_new_tokens": 8, "max_model_len": 128,
                           "prompts_per_request": 4},  # fmt: skip
            "trainer": {"optimizer": "adamw", "learning_rate": 3e-3, "batch_size": 4, "micro_batch_size": 4},
            "schedule": {"iterations": 1, "prompts_per_iteration": len(TOPICS)},
            "eval": {"enabled": False},
            "storage": {"run_dir": str(tmp_path), "weight_transport": "safetensors_dir", "stream_maxlen": 1000},
        }
    )
    run_dir = tmp_path / unique_run_id
    store = RunStore(redis_client)
    store.create_run(unique_run_id, cfg.model_dump(mode="json"), str(run_dir))
    summary = RunController(unique_run_id, cfg.model_dump_json(), redis_url, str(run_dir), runtime=LocalRuntime()).run()
    (record,) = store.iterations(unique_run_id)
    # the warm start made version 1; iteration 1 sampled with it and trained version 2
    assert (record.policy_version_in, record.policy_version_out) == (1, 2)
    assert record.metrics["warm_start/pairs"] == 8 and record.metrics["warm_start/train/steps"] == 3 * 2  # 8 pairs, batch 4
    assert record.metrics["warm_start/loss/mean"] < 0.6931 and record.metrics["warm_start/rewards/accuracies"] > 0.5
    assert record.metrics["warm_start/loss/last_epoch"] < record.metrics["warm_start/loss/mean"]  # it learnt over 3 epochs
    assert summary["iterations"][0]["policy_version"] == 2

    # the warm start alone (the trainer worker, no controller): version 1 raises every seed answer's likelihood
    from sparring.workers.actors import TrainerWorker

    worker = TrainerWorker(unique_run_id, redis_url, cfg.model_dump_json(), policy, str(tmp_path / "direct"))
    out = worker.warm_start()
    assert out["num_pairs"] == 8 and out["update"].version == 1 and worker.trainer.policy_version == 1
    seeds = [p for p in load_prompt_pool(cfg.prompts) if p.reference_answer is not None]
    before, after = answer_logps(policy, seeds), answer_logps(out["checkpoint"], seeds)
    assert (after > before).float().mean() >= 0.9, (before, after)
