"""Self-preference judge (OSP) on tiny random checkpoints: position-bias cancellation, K x K properties,
batching, flip consistency, and the judge's weights following a sync (load_weights / apply_update)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparring.shared.records import Completion, GenerationGroup
from sparring.workers.judges.self_preference import SelfPreferenceJudge
from tests.helpers import make_tiny_checkpoint

# The helper tokenizer knows lower-case words only: its single tokens " yes" / " no" play " A" / " B".
TEMPLATE = "which is better {question} one {a} two {b}"
ANSWERS = (" yes", " no")
RESPONSES = ["the cat runs", "a big dog eats", "red fish and blue fish", "hello world"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("selfpref")
    # two checkpoints with one tokenizer and different weights (a "before" and "after" of a sync)
    return (
        make_tiny_checkpoint(root / "v0", seed=0, initializer_range=0.2),
        make_tiny_checkpoint(root / "v1", seed=1, initializer_range=0.2),
    )


def judge_for(path: Path, **kwargs: object) -> SelfPreferenceJudge:
    return SelfPreferenceJudge.from_pretrained(path, template=TEMPLATE, answers=ANSWERS, **kwargs)  # type: ignore[arg-type]


def group(texts: list[str], prompt: str = "the sun and the rain") -> GenerationGroup:
    return GenerationGroup(
        run_id="t",
        iteration=1,
        policy_version=0,
        prompt_id="p0",
        prompt=prompt,
        prompt_token_ids=[1],
        completions=[
            Completion(index=i, text=t, token_ids=[1, 2], logprobs=None, finish_reason="stop")
            for i, t in enumerate(texts)
        ],
        engine_id="e",
        seed=0,
        latency_s=0.0,
    )


def add_answer_bias(judge: SelfPreferenceJudge, value: float) -> None:
    """A fixed extra logit on the first answer token: a pure position bias ("always say A")."""
    head = judge.model.get_output_embeddings()
    bias = torch.zeros(head.weight.shape[0])
    bias[judge.answer_ids[0]] = value
    head.bias = torch.nn.Parameter(bias)


def test_identical_responses_are_exactly_one_half_even_with_position_bias(ckpts: tuple[Path, Path]) -> None:
    judge = judge_for(ckpts[0])
    add_answer_bias(judge, 4.0)
    same = "a big dog eats the red fish"
    # the bias is real: one order alone says "A" with high probability
    (p_ab,) = judge.answer_probs([judge.prompt_ids("the sun and the rain", same, same)])
    assert p_ab > 0.9
    (j,) = judge.judge([group([same, same])])
    assert j.win_matrix == [[0.5, 0.5], [0.5, 0.5]]
    assert j.scores == [0.5, 0.5]
    # two identical responses among different ones
    (j,) = judge.judge([group([same, "the cat runs", same])])
    assert j.win_matrix is not None
    assert j.win_matrix[0][2] == 0.5 and j.win_matrix[2][0] == 0.5


def test_matrix_properties_and_antisymmetry(ckpts: tuple[Path, Path]) -> None:
    judge = judge_for(ckpts[0])
    add_answer_bias(judge, 1.5)
    (j,) = judge.judge([group(RESPONSES)])
    p = j.win_matrix
    assert p is not None and len(p) == 4
    for i in range(4):
        assert p[i][i] == 0.5
        for k in range(4):
            assert abs(p[i][k] + p[k][i] - 1.0) < 1e-12
            assert 0.0 <= p[i][k] <= 1.0
    assert j.scores == pytest.approx([sum(p[i][k] for k in range(4) if k != i) / 3 for i in range(4)])
    assert len({round(v, 6) for row in p for v in row}) > 2  # not a constant matrix
    # swapping the two responses swaps the verdict
    (ab,) = judge.judge([group(RESPONSES[:2])])
    (ba,) = judge.judge([group(RESPONSES[1::-1])])
    assert ab.win_matrix is not None and ba.win_matrix is not None
    assert ab.win_matrix[0][1] == pytest.approx(ba.win_matrix[1][0], abs=1e-6)
    # strength = average over both orders of P(A) / (P(A) + P(B))
    q = "the sun and the rain"
    p_ab, p_ba = judge.answer_probs(
        [judge.prompt_ids(q, RESPONSES[0], RESPONSES[1]), judge.prompt_ids(q, RESPONSES[1], RESPONSES[0])]
    )
    assert ab.win_matrix[0][1] == pytest.approx(0.5 * (p_ab + 1 - p_ba), abs=1e-9)


def test_batched_equals_one_row_at_a_time(ckpts: tuple[Path, Path]) -> None:
    groups = [group(RESPONSES), group(RESPONSES[:3], prompt="one two three"), group(RESPONSES[1:])]
    batched = judge_for(ckpts[0], batch_size=64).judge(groups)
    single = judge_for(ckpts[0], batch_size=1).judge(groups)
    for a, b in zip(batched, single, strict=True):
        assert a.win_matrix is not None and b.win_matrix is not None
        for ra, rb in zip(a.win_matrix, b.win_matrix, strict=True):
            assert ra == pytest.approx(rb, abs=1e-5)


def test_flip_consistency(ckpts: tuple[Path, Path]) -> None:
    judge = judge_for(ckpts[0])
    add_answer_bias(judge, 30.0)  # always "A" in either order: no verdict survives the swap
    judge.judge([group(RESPONSES)])
    assert judge.last_flip_consistency == 0.0
    add_answer_bias(judge, 0.0)
    judge.judge([group(RESPONSES)])
    q = "the sun and the rain"
    expected = 0
    for i in range(4):
        for k in range(i + 1, 4):
            p_ik, p_ki = judge.answer_probs(
                [
                    judge.prompt_ids(q, RESPONSES[i], RESPONSES[k]),
                    judge.prompt_ids(q, RESPONSES[k], RESPONSES[i]),
                ]
            )
            expected += (p_ik > 0.5) == (p_ki < 0.5)
    assert judge.last_flip_consistency == pytest.approx(expected / 6)
    assert judge.flip_pairs == 12
    assert judge.flip_consistency() == pytest.approx(expected / 12)


def test_answers_must_be_single_tokens(ckpts: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="single tokens"):
        judge_for(ckpts[0]).__class__.from_pretrained(ckpts[0], template=TEMPLATE, answers=(" yes", " zebra"))
    with pytest.raises(ValueError, match="needs"):
        SelfPreferenceJudge.from_pretrained(ckpts[0], template="{question} {a}", answers=ANSWERS)


def test_weights_follow_a_sync(ckpts: tuple[Path, Path], tmp_path: Path) -> None:
    from sparring.workers.checkpoints import load_state_dir
    from sparring.workers.weight_sync import (
        TRANSPORT_OBJECT_STORE,
        WeightUpdate,
        apply_update,
        safetensors_dir_update,
        state_checksum,
    )

    v0, v1 = ckpts
    groups = [group(RESPONSES), group(RESPONSES[:3], prompt="one two three")]
    fresh_v1 = [j.win_matrix for j in judge_for(v1).judge(groups)]

    judge = judge_for(v0)
    before = [j.win_matrix for j in judge.judge(groups)]
    assert before != fresh_v1
    # safetensors_dir transport, through the same apply_update the generators use
    apply_update(judge, safetensors_dir_update(v1, 1), judge.model_path, tmp_path / "staging")
    after = [j.win_matrix for j in judge.judge(groups)]
    assert after != before
    assert after == fresh_v1  # the same weights give the same judgements as a freshly loaded judge

    # object-store transport (in-process state mapping): back to v0, staged with v0's config + tokenizer
    state = load_state_dir(v0)
    update = WeightUpdate(2, TRANSPORT_OBJECT_STORE, None, state, state_checksum(state))
    apply_update(judge, update, judge.model_path, tmp_path / "staging")
    assert [j.win_matrix for j in judge.judge(groups)] == before


def test_load_weights_refuses_a_foreign_checkpoint(ckpts: tuple[Path, Path], tmp_path: Path) -> None:
    other = make_tiny_checkpoint(tmp_path / "deeper", seed=0, num_hidden_layers=3)
    judge = judge_for(ckpts[0])
    before = [j.win_matrix for j in judge.judge([group(RESPONSES)])]
    with pytest.raises(ValueError, match="does not match"):
        judge.load_weights(str(other))
    assert [j.win_matrix for j in judge.judge([group(RESPONSES)])] == before


def test_the_judge_prompt_shows_the_whole_conversation(ckpts: tuple[Path, Path]) -> None:
    """A multi-turn group's `{question}` is its conversation, one "Role: text" line per turn, so two groups
    ending in the same user turn with different system instructions get different judge prompts and verdicts
    (the old judge put only the last user turn in the prompt)."""
    from sparring.workers.judges.self_preference import conversation_question

    turns = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "the cat runs"},
             {"role": "user", "content": "the sun and the rain"}]  # fmt: skip
    first = [{"role": "system", "content": "answer with the dog"}, *turns]
    second = [{"role": "system", "content": "answer with the fish"}, *turns]
    assert conversation_question("the sun and the rain", first) == (
        "System: answer with the dog\nUser: the cat\nAssistant: the cat runs\nUser: the sun and the rain"
    )
    assert conversation_question("the sun", None) == "the sun"
    assert conversation_question("the sun", [{"role": "user", "content": "the sun"}]) == "the sun"
    judge = judge_for(ckpts[0])
    g = group(RESPONSES[:3])
    a, b = (judge.judge([g.model_copy(update={"messages": m})])[0] for m in (first, second))
    assert a.win_matrix != b.win_matrix
    asked: list[str] = []
    prompt_ids = judge.prompt_ids
    judge.prompt_ids = lambda question, x, y: asked.append(question) or prompt_ids(question, x, y)  # type: ignore[method-assign]
    judge.judge([g.model_copy(update={"messages": first})])
    assert set(asked) == {conversation_question(g.prompt, first)}


def test_a_tied_policy_follows_a_sync(tmp_path: Path) -> None:
    """Qwen2-shaped (tied embeddings): the checkpoint has no lm_head.weight; the judge loads it all the same
    and then holds exactly the weights of a judge built from the new checkpoint."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from tests.families import build_family_checkpoint

    old = build_family_checkpoint("qwen2", tmp_path / "v0", seed=0)
    new = build_family_checkpoint("qwen2", tmp_path / "v1", seed=1)
    assert "lm_head.weight" not in load_file(str(new / "model.safetensors"))
    vocab = AutoTokenizer.from_pretrained(str(old))
    answers = tuple(t for t in ("a", "b", "the", "e", "t", "s") if len(vocab(t, add_special_tokens=False)["input_ids"]) == 1)[:2]
    assert len(answers) == 2  # the judge's answers must be single tokens of this vocabulary
    template = "{question} A: {a} B: {b} better:"
    judge = SelfPreferenceJudge.from_pretrained(str(old), template=template, answers=answers)  # type: ignore[arg-type]
    assert judge.model.config.tie_word_embeddings
    judge.load_weights(str(new))
    fresh = SelfPreferenceJudge.from_pretrained(str(new), template=template, answers=answers)  # type: ignore[arg-type]
    for (name, a), (_, b) in zip(judge.model.state_dict().items(), fresh.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_baseline_mode_scores_2k_minus_2_prompts_and_keeps_the_baseline_column(ckpts: tuple[Path, Path]) -> None:
    """OSP's O(K) pairing (`algorithm.pairs: baseline`): each answer against answer 0 only, both orders."""
    full, based = judge_for(ckpts[0]), judge_for(ckpts[0], baseline=0)
    add_answer_bias(full, 1.5)
    add_answer_bias(based, 1.5)
    seen: list[int] = []
    original = based.answer_probs
    based.answer_probs = lambda rows: seen.append(len(rows)) or original(rows)  # type: ignore[method-assign]
    (f,) = full.judge([group(RESPONSES)])
    (b,) = based.judge([group(RESPONSES)])
    assert seen == [2 * (len(RESPONSES) - 1)]  # 6 judge prompts for K=4, not 12
    assert f.win_matrix is not None and b.win_matrix is not None
    for i in range(len(RESPONSES)):
        assert b.win_matrix[i][0] == pytest.approx(f.win_matrix[i][0], abs=1e-5)  # the same comparisons (batch padding: ~1e-7)
        for j in range(len(RESPONSES)):
            assert b.win_matrix[i][j] + b.win_matrix[j][i] == pytest.approx(1.0)
    assert based.flip_pairs == len(RESPONSES) - 1
