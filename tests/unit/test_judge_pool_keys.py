"""The judge pool's cache key covers the whole conversation (issue 10, item 3): two conversations ending in
the same user turn never share cached scores."""

from __future__ import annotations

from collections.abc import Sequence

from sparring.shared.records import Completion, GenerationGroup, Judgement
from sparring.workers.judges.pool import JudgePool, prompt_key

TURNS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
         {"role": "user", "content": "tell me about otters"}]  # fmt: skip


def group(messages: list[dict[str, str]] | None) -> GenerationGroup:
    return GenerationGroup(
        run_id="r", iteration=1, policy_version=0, prompt_id="p", prompt="tell me about otters", messages=messages,
        prompt_token_ids=[0],  # as evaluation's pair groups have: the ids say nothing about the conversation
        completions=[Completion(index=i, text=t, token_ids=[i + 1], logprobs=None) for i, t in enumerate(["a", "b"])],
        engine_id="e", seed=0, latency_s=0.0,
    )  # fmt: skip


class SystemAwareJudge:
    """A pointwise judge whose scores depend on the system turn (as a judge that reads it does)."""

    name, order_sensitive = "sys", False

    def __init__(self) -> None:
        self.calls = 0

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        self.calls += 1
        out = []
        for g in groups:
            bonus = 1.0 if any(m["content"] == "answer in French" for m in g.messages or []) else 0.0
            out.append(self.from_scores([len(c.text) + bonus * c.index for c in g.completions]))
        return out

    def from_scores(self, scores: Sequence[float]) -> Judgement:
        return Judgement(judge=self.name, scores=list(scores))


def test_conversations_ending_alike_have_different_keys() -> None:
    french = group([{"role": "system", "content": "answer in French"}, *TURNS])
    german = group([{"role": "system", "content": "answer in German"}, *TURNS])
    keys = {prompt_key(g) for g in (french, german, group(TURNS), group(None))}
    assert len(keys) == 4
    assert prompt_key(french) == prompt_key(group([dict(m) for m in french.messages or []]))


def test_cached_scores_do_not_cross_conversations() -> None:
    judge = SystemAwareJudge()
    pool = JudgePool(judge, timeout_s=10.0)
    german, french = group([{"role": "system", "content": "answer in German"}, *TURNS]), group(
        [{"role": "system", "content": "answer in French"}, *TURNS]
    )
    (first,) = pool.judge_groups([german])
    (second,) = pool.judge_groups([french])
    assert isinstance(first, Judgement) and isinstance(second, Judgement)
    assert first.scores == [1.0, 1.0] and second.scores == [1.0, 2.0]  # the old key served German's cached scores
    assert judge.calls == 2
    (again,) = pool.judge_groups([french])
    assert isinstance(again, Judgement) and again.scores == [1.0, 2.0] and judge.calls == 2  # still cached


def test_the_stop_token_is_part_of_a_response_key() -> None:
    from sparring.shared.records import Completion
    from sparring.workers.judges.pool import response_key

    eos = Completion(index=0, text="ok", token_ids=[5], logprobs=[-0.1], finish_reason="stop", stop_token_id=1)
    eot = eos.model_copy(update={"stop_token_id": 106})
    assert response_key(eos) != response_key(eot)
    assert response_key(eos) == response_key(eos.model_copy(update={"index": 3}))
