"""DensityRatioJudge on the transformers backend with tiny random local models (no vLLM, no network).

Checks the contract of judges.md section 2.5/2.6: identical models give exactly 0, the scored tokens are
exactly the response (plus EOS when it stopped on EOS), mean * length = sum, criteria/exemplars change
the context but never the scored tokens, batching equals one-at-a-time, and a planted preference is found.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparring.shared.models import load_causal_lm, load_tokenizer, prompt_token_ids
from sparring.shared.records import Completion, GenerationGroup, Judgement
from sparring.workers.judges.density_ratio import (
    DensityRatioJudge,
    Exemplar,
    ScoredTokens,
    TransformersScorer,
    build_density_ratio_judge,
    render_context,
    win_matrix,
)
from sparring.workers.logps import collate_sequences, sequence_logps_full_softmax
from tests.helpers import make_tiny_checkpoint

RESPONSES = ["the cat runs", "hello world and the dog", "a big blue bird sees the river", "yes"]
PROMPTS = ["tell me about the cat", "what is the sun"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dr")
    return make_tiny_checkpoint(root / "a", seed=1), make_tiny_checkpoint(root / "b", seed=2)


@pytest.fixture(scope="module")
def scorers(ckpts: tuple[Path, Path]) -> tuple[TransformersScorer, TransformersScorer]:
    return TransformersScorer(str(ckpts[0]), batch_size=3), TransformersScorer(str(ckpts[1]), batch_size=3)


def _group(tok, prompt: str, texts: list[str], finish: str = "stop") -> GenerationGroup:
    comps = [
        Completion(
            index=i,
            text=t,
            token_ids=tok(t, add_special_tokens=False)["input_ids"],
            logprobs=None,
            finish_reason=finish,
        )
        for i, t in enumerate(texts)
    ]
    return GenerationGroup(
        run_id="r",
        iteration=0,
        policy_version=0,
        prompt_id=prompt,
        prompt=prompt,
        prompt_token_ids=prompt_token_ids(tok, prompt),
        completions=comps,
        engine_id="e",
        seed=0,
        latency_s=0.0,
    )


def _judge(scorers, ckpts, **kw) -> DensityRatioJudge:
    return DensityRatioJudge(scorers[0], scorers[1], load_tokenizer(str(ckpts[0])), **kw)


def test_identical_models_score_exactly_zero(ckpts, scorers) -> None:
    tok = load_tokenizer(str(ckpts[0]))
    for reduction in ("sum", "mean"):
        judge = DensityRatioJudge(scorers[0], scorers[0], tok, reduction=reduction)
        out = judge.judge([_group(tok, p, RESPONSES) for p in PROMPTS])
        assert all(s == 0.0 for j in out for s in j.scores)
        assert all(v == 0.5 for j in out for row in j.win_matrix for v in row)
    # two separately loaded copies of the same checkpoint also give exactly 0
    twin = build_density_ratio_judge(str(ckpts[0]), str(ckpts[0]))
    assert all(s == 0.0 for s in twin.judge([_group(tok, PROMPTS[0], RESPONSES)])[0].scores)


def test_scored_tokens_are_exactly_the_response(ckpts, scorers) -> None:
    tok = load_tokenizer(str(ckpts[0]))
    for response_tokens in ("text", "ids"):
        judge = _judge(scorers, ckpts, response_tokens=response_tokens)
        for finish in ("stop", "length"):
            group = _group(tok, PROMPTS[0], RESPONSES, finish)
            rows = judge.scored_tokens(group)
            for row, comp in zip(rows, group.completions, strict=True):
                assert row.context_ids == prompt_token_ids(tok, PROMPTS[0])
                resp = row.response_ids
                if finish == "stop":
                    assert resp[-1] == tok.eos_token_id
                    resp = resp[:-1]
                assert tok.eos_token_id not in resp
                assert tok.decode(resp) == comp.text
                # the full row is the chat template's rendering of the whole exchange
                full = tok.apply_chat_template(
                    [{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": comp.text}],
                    tokenize=False,
                )
                assert full.startswith(tok.decode(row.context_ids + row.response_ids))
    no_eos = _judge(scorers, ckpts, score_eos=False)
    assert all(
        tok.eos_token_id not in r.response_ids for r in no_eos.scored_tokens(_group(tok, "hi", RESPONSES))
    )


def test_score_is_strong_minus_weak_over_response_tokens(ckpts, scorers) -> None:
    """Against an independent full-softmax computation (the trainer's slow reference)."""
    tok = load_tokenizer(str(ckpts[0]))
    judge = _judge(scorers, ckpts)
    group = _group(tok, PROMPTS[1], RESPONSES)
    rows = judge.scored_tokens(group)
    batch = collate_sequences([r.context_ids for r in rows], [r.response_ids for r in rows], tok.pad_token_id)
    with torch.inference_mode():
        s, n = sequence_logps_full_softmax(load_causal_lm(str(ckpts[0])), batch)
        w, _ = sequence_logps_full_softmax(load_causal_lm(str(ckpts[1])), batch)
    assert n.tolist() == [len(r.response_ids) for r in rows]
    got = judge.judge([group])[0].scores
    assert got == pytest.approx((s - w).tolist(), abs=1e-4)
    assert all(g != 0.0 for g in got)


def test_mean_times_length_is_sum(ckpts, scorers) -> None:
    tok = load_tokenizer(str(ckpts[0]))
    group = _group(tok, PROMPTS[0], RESPONSES)
    total = _judge(scorers, ckpts, reduction="sum").judge([group])[0].scores
    mean_judge = _judge(scorers, ckpts, reduction="mean")
    mean = mean_judge.judge([group])[0].scores
    lengths = [len(r.response_ids) for r in mean_judge.scored_tokens(group)]
    for m, n, s in zip(mean, lengths, total, strict=True):
        assert m * n == pytest.approx(s, rel=1e-6, abs=1e-6)


def test_criteria_and_exemplars_change_context_not_scored_tokens(ckpts, scorers) -> None:
    tok = load_tokenizer(str(ckpts[0]))
    plain = _judge(scorers, ckpts)
    custom = _judge(
        scorers,
        ckpts,
        criteria="be kind and name the topic",
        exemplars=[Exemplar("what is the cat", "the cat runs", "the the the", "it stutters")],
    )
    group = _group(tok, PROMPTS[0], RESPONSES)
    a, b = plain.scored_tokens(group), custom.scored_tokens(group)
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert a[0].context_ids != b[0].context_ids
    text = tok.decode(b[0].context_ids)
    # the tiny template drops system turns, so the criteria are folded into the user message, never lost
    assert "be kind and name the topic" in text and "Good Assistant: the cat runs" in text
    assert text.endswith(f"User: {PROMPTS[0]}\nGood Assistant:\n<|assistant|>")
    assert b[0].context_ids == render_context(
        tok, PROMPTS[0], custom.criteria, custom.exemplars, custom.exemplar_suffix
    )
    assert plain.judge([group])[0].scores != custom.judge([group])[0].scores


def test_batching_equals_one_at_a_time(ckpts, scorers) -> None:
    tok = load_tokenizer(str(ckpts[0]))
    judge = _judge(scorers, ckpts)
    groups = [_group(tok, p, RESPONSES) for p in PROMPTS] + [_group(tok, "the sun", RESPONSES[:2], "length")]
    together = judge.judge(groups)
    for g, j in zip(groups, together, strict=True):
        for c, s in zip(g.completions, j.scores, strict=True):
            alone = judge.judge([g.model_copy(update={"completions": [c.model_copy(update={"index": 0})]})])
            assert alone[0].scores[0] == pytest.approx(s, abs=1e-5)


def test_planted_preference_is_found(tmp_path: Path, ckpts) -> None:
    """A strong model whose lm_head favours token t rates responses with more t higher; sum scales with
    the count of t, mean does not (judges.md section 2.6 item 3)."""
    tok = load_tokenizer(str(ckpts[0]))
    weak_model = load_causal_lm(str(ckpts[0]))
    strong_model = load_causal_lm(str(ckpts[0]))
    cats = [tok(w, add_special_tokens=False)["input_ids"] for w in ("cat", " cat")]  # byte-level BPE: 2 ids
    assert all(len(c) == 1 for c in cats)
    head = strong_model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        for c in cats:
            biased.bias[c[0]] = 3.0  # +3 nats on the logit of "cat" / " cat"
    strong_model.lm_head = biased
    strong = TransformersScorer(str(ckpts[0]), model=strong_model)
    weak = TransformersScorer(str(ckpts[0]), model=weak_model)
    judge = DensityRatioJudge(strong, weak, tok, reduction="sum", score_eos=False)
    texts = ["dog dog dog dog", "cat dog dog dog", "cat cat dog dog", "cat cat cat cat"]
    group = _group(tok, PROMPTS[0], texts)
    assert all(len(r.response_ids) == 4 for r in judge.scored_tokens(group))
    s = judge.judge([group])[0].scores
    assert s[0] < s[1] < s[2] < s[3]
    # the ratio rises by about the bias per extra "cat": sum scales with the count, mean is sum / 4
    assert 2.0 < (s[3] - s[0]) / 4 < 3.0
    mean = DensityRatioJudge(strong, weak, tok, reduction="mean", score_eos=False).judge([group])[0].scores
    assert mean == pytest.approx([v / 4 for v in s], abs=1e-6)


def test_win_matrix_and_judgement_shape(ckpts, scorers) -> None:
    tok = load_tokenizer(str(ckpts[0]))
    out = _judge(scorers, ckpts, win_matrix_scale=2.0).judge([_group(tok, PROMPTS[0], RESPONSES)])[0]
    assert isinstance(out, Judgement) and out.judge == "density_ratio" and len(out.scores) == 4
    assert out.win_matrix == win_matrix(out.scores, 2.0)
    for i in range(4):
        assert out.win_matrix[i][i] == 0.5
        for j in range(4):
            assert out.win_matrix[i][j] + out.win_matrix[j][i] == pytest.approx(1.0)
    assert _judge(scorers, ckpts, win_matrix=False).judge([_group(tok, "x", RESPONSES)])[0].win_matrix is None
    with pytest.raises(ValueError):
        _judge(scorers, ckpts, reduction="max")


def test_empty_response_scores_zero_and_rows_need_context(ckpts, scorers) -> None:
    tok = load_tokenizer(str(ckpts[0]))
    judge = _judge(scorers, ckpts, score_eos=False)
    assert judge.judge([_group(tok, PROMPTS[0], ["", "the cat"])])[0].scores[0] == 0.0
    with pytest.raises(ValueError):
        scorers[0].response_logps([ScoredTokens([], [1, 2])])


def test_different_vocabularies_are_rejected(tmp_path: Path, ckpts) -> None:
    other = make_tiny_checkpoint(tmp_path / "other", seed=1, vocab_size=300)
    with pytest.raises(ValueError, match="tokenizers differ"):
        build_density_ratio_judge(str(ckpts[0]), str(other))


TURNS = [{"role": "user", "content": "what is the sun"}, {"role": "assistant", "content": "the sun is hot"},
         {"role": "user", "content": PROMPTS[0]}]  # fmt: skip


def test_the_whole_conversation_is_judged_system_turn_included(ckpts, scorers) -> None:
    """A multi-turn group is judged in its whole conversation: two groups ending in the same user turn whose
    system instructions differ get different contexts and different scores (the old judge saw only the last
    user turn, so both scored alike)."""
    tok = load_tokenizer(str(ckpts[0]))
    judge = _judge(scorers, ckpts)
    base = _group(tok, PROMPTS[0], RESPONSES)
    french = base.model_copy(update={"messages": [{"role": "system", "content": "answer in french"}, *TURNS]})
    german = base.model_copy(update={"messages": [{"role": "system", "content": "answer in german"}, *TURNS]})
    text = tok.decode(judge.scored_tokens(french)[0].context_ids)
    # the tiny template drops system turns: the system text goes before the first user message, never lost
    assert text == f"<|user|> answer in french\n\nwhat is the sun\n<|assistant|>the sun is hot<|end|>\n<|user|> {PROMPTS[0]}\n<|assistant|>"
    assert judge.scored_tokens(french)[0].response_ids == judge.scored_tokens(base)[0].response_ids
    s_fr, s_de, s_base = (judge.judge([g])[0].scores for g in (french, german, base))
    assert s_fr != s_de and s_fr != s_base
    # without a system turn, a conversation renders exactly as the sampler renders it
    plain = base.model_copy(update={"messages": TURNS})
    assert judge.scored_tokens(plain)[0].context_ids == prompt_token_ids(tok, TURNS)


def test_criteria_join_a_conversation_system_turn_on_templates_that_render_it(ckpts) -> None:
    tok = load_tokenizer(str(ckpts[0]))
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    conversation = [{"role": "system", "content": "answer in french"}, *TURNS]
    text = tok.decode(render_context(tok, conversation, criteria="be kind"))
    assert text.startswith("[system] be kind\n\nanswer in french\n[user] what is the sun\n")  # one system turn
    assert text.count("[system]") == 1 and text.endswith(f"[user] {PROMPTS[0]}\n[assistant]")
    assert tok.decode(render_context(tok, TURNS, criteria="be kind")).startswith("[system] be kind\n[user]")
