"""SPIN's pair rule (arXiv 2401.01335): each prompt's reference answer (chosen) against the policy's own sample
(rejected), no judge. Prompt files carry the answer in an `answer` field; an in-process run (LocalRuntime,
transformers backend, real Redis) trains on exactly those pairs and raises the likelihood of the answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sparring.shared.config import ConfigError, parse_config
from sparring.shared.prompts import PromptPoolError, check_pool, parse_jsonl_prompts
from sparring.shared.queue import StreamQueue
from sparring.shared.records import Completion, GenerationGroup, PreferencePair
from sparring.shared.store import RunStore
from sparring.workers.recipes.pairs import build_anchor_pairs

TOPICS = ["rivers", "bread", "chess", "owls", "rain", "maps", "tea", "glass", "kites", "moss", "salt", "bees"]


def answer(topic: str) -> str:
    return f"{topic} are nice and {topic} are old."


def test_answers_are_read_checked_and_required_only_by_spin(tmp_path: Path) -> None:
    lines = [json.dumps({"id": "a", "prompt": "hi", "answer": "hello"}), json.dumps({"id": "b", "prompt": "yo"})]
    pool = parse_jsonl_prompts(lines)
    assert [p.reference_answer for p in pool] == ["hello", None]
    assert pool[0].fixed_answer("spin") == "hello" and pool[0].fixed_answer("best_vs_worst") is None
    with pytest.raises(PromptPoolError, match="line 1: field 'answer' must be a non-empty string"):
        parse_jsonl_prompts([json.dumps({"prompt": "hi", "answer": ""})])
    base = {"policy": {"path": "arena"}, "prompts": {"source": "jsonl", "path": __file__}}
    spin = parse_config({**base, "judge": {"kind": "none"}, "algorithm": {"pairs": "spin"},
                         "generation": {"samples_per_prompt": 1}})  # fmt: skip
    with pytest.raises(PromptPoolError, match=r"pairs=spin needs a reference answer .* 1 prompt\(s\) have none, e.g. id 'b'"):
        check_pool(pool, spin.prompts, spin)
    check_pool(pool[:1], spin.prompts, spin)
    judged = parse_config({**base, "judge": {"kind": "pairrm", "model": "llm-blender/PairRM-hf"}})
    check_pool(pool, judged.prompts, judged)  # a judged recipe ignores answers
    with pytest.raises(ConfigError, match="judge.kind=none only fits algorithm.pairs=drift or spin"):
        parse_config({**base, "judge": {"kind": "none"}})


def test_the_reference_answer_is_chosen_over_every_distinct_sample() -> None:
    def completion(i: int, ids: list[int]) -> Completion:
        return Completion(index=i, text=str(ids), token_ids=ids, logprobs=[-1.0] * len(ids), finish_reason="stop")

    anchor = Completion(index=3, text="ref", token_ids=[7, 8], logprobs=None, finish_reason="stop")
    group = GenerationGroup(
        run_id="r", iteration=1, policy_version=0, prompt_id="p", prompt="q", prompt_token_ids=[1, 2],
        completions=[completion(0, [5]), completion(1, [7, 8]), completion(2, [])], anchor=anchor,
        engine_id="gen-0", seed=0, latency_s=0.0,
    )  # fmt: skip
    pairs = build_anchor_pairs(group, "spin")
    assert [(p.chosen.token_ids, p.rejected.token_ids) for p in pairs] == [([7, 8], [5])]  # copies and empties skipped
    assert pairs[0].judge == "reference_answer" and pairs[0].win_prob == 1.0
    drift = build_anchor_pairs(group, "drift")
    assert [(p.chosen.token_ids, p.rejected.token_ids) for p in drift] == [([5], [7, 8])]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    from sparring.shared.tiny import save_tiny_llama, train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    texts = [f"tell me about {t}. {answer(t)}" for t in TOPICS] * 20
    tok = train_tokenizer(texts, 300, root / "tok")
    return str(save_tiny_llama(root / "policy", tok, seed=3, hidden_size=64, intermediate_size=128, head_dim=32))


def answer_logps(model_path: str, pool: list[Any]) -> torch.Tensor:
    """Summed log-probs of each prompt's reference answer under the checkpoint at `model_path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparring.shared.models import prompt_token_ids, text_token_ids
    from sparring.workers.logps import collate_sequences, sequence_logps

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    prompts = [prompt_token_ids(tok, [{"role": "user", "content": p.prompt}]) for p in pool]
    answers = [text_token_ids(tok, p.reference_answer) for p in pool]
    with torch.no_grad():
        logps, _ = sequence_logps(model, collate_sequences(prompts, answers, tok.pad_token_id or 0))
    return logps


def test_a_spin_run_trains_on_answer_vs_sample_pairs_and_raises_the_answers_likelihood(
    policy: str, tmp_path: Path, redis_url: str, redis_client: Any, unique_run_id: str
) -> None:
    from sparring.workers.controller import RunController
    from sparring.workers.groups import LocalRuntime

    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"id": t, "prompt": f"tell me about {t}.", "answer": answer(t)}) + "\n" for t in TOPICS))
    cfg = parse_config(
        {
            "name": "spin",
            "preset": "spin",
            "policy": {"path": policy},
            "prompts": {"source": "jsonl", "path": str(path)},
            "generation": {"backend": "transformers", "num_generators": 1, "max_new_tokens": 8, "max_model_len": 128,
                           "prompts_per_request": 4},  # fmt: skip
            "trainer": {"optimizer": "adamw", "learning_rate": 3e-3, "epochs": 3, "batch_size": 4, "micro_batch_size": 4},
            "schedule": {"iterations": 2, "prompts_per_iteration": len(TOPICS)},
            "eval": {"enabled": False},
            "storage": {"run_dir": str(tmp_path), "weight_transport": "safetensors_dir", "stream_maxlen": 1000},
        }
    )
    run_dir = tmp_path / unique_run_id
    RunStore(redis_client).create_run(unique_run_id, cfg.model_dump(mode="json"), str(run_dir))
    summary = RunController(unique_run_id, cfg.model_dump_json(), redis_url, str(run_dir), runtime=LocalRuntime()).run()
    assert [it["policy_version"] for it in summary["iterations"]] == [1, 2]
    pairs = [p for _, p in StreamQueue(redis_client, unique_run_id).read_all("pairs", PreferencePair)]
    assert pairs and all(p.judge == "reference_answer" for p in pairs)
    assert all(p.chosen.text == answer(p.prompt_id) and p.rejected.logprobs is not None for p in pairs)
    pool = parse_jsonl_prompts(path.read_text().splitlines())
    before, after = answer_logps(policy, pool), answer_logps(summary["final_checkpoint"], pool)
    assert (after > before).float().mean() >= 0.9, (before, after)


def test_arena_sft_prompts_carry_a_full_gold_answer_each() -> None:
    from sparring.shared.prompts import load_prompt_pool
    from sparring.tasks.arena.rules import MAX_GOLD, gold_score, topic_of

    cfg = parse_config({"policy": {"path": "arena"}, "judge": {"kind": "none"}, "algorithm": {"pairs": "spin"},
                        "generation": {"samples_per_prompt": 1}, "prompts": {"source": "arena_sft"}})  # fmt: skip
    pool = load_prompt_pool(cfg.prompts)
    assert len(pool) == 640 and len({p.reference_answer for p in pool}) > 300
    assert all(gold_score(topic_of(p.prompt), p.reference_answer or "") == MAX_GOLD for p in pool)
    check_pool(pool, cfg.prompts, cfg)
