"""Wire records: msgpack round trips, validation errors that name the field, deterministic record ids."""

from __future__ import annotations

import math

import msgpack
import pytest
from pydantic import ValidationError

from sparring.shared.records import (
    SCHEMA_VERSION,
    Completion,
    DeadLetter,
    GenerationGroup,
    IterationRecord,
    Judgement,
    LabelledAnswer,
    PreferencePair,
    PromptTask,
    Record,
    as_dict,
    decode,
    encode,
    group_id,
)


def completion(index: int, tokens: list[int]) -> Completion:
    return Completion(
        index=index,
        text=f"answer {index}",
        token_ids=tokens,
        logprobs=[-0.5 * (i + 1) for i in range(len(tokens))],
        finish_reason="stop",
    )


def prompt_task() -> PromptTask:
    return PromptTask(
        run_id="r", iteration=2, policy_version=3, prompt_id="p7", prompt="Say hi", num_samples=4, seed=11
    )


def generation_group() -> GenerationGroup:
    return GenerationGroup(
        run_id="r",
        iteration=2,
        policy_version=3,
        prompt_id="p7",
        prompt="Say hi",
        prompt_token_ids=[1, 2, 3],
        completions=[completion(0, [5, 6]), completion(1, [7])],
        engine_id="gen-0",
        seed=11,
        latency_s=0.25,
    )


def pair() -> PreferencePair:
    return PreferencePair(
        run_id="r",
        iteration=2,
        policy_version=3,
        prompt_id="p7",
        prompt="Say hi",
        prompt_token_ids=[1, 2, 3],
        chosen=completion(1, [7]),
        rejected=completion(0, [5, 6]),
        chosen_score=1.5,
        rejected_score=-0.5,
        win_prob=0.8,
        judge="pairrm",
    )


def iteration_record() -> IterationRecord:
    return IterationRecord(
        run_id="r",
        iteration=1,
        policy_version_in=0,
        policy_version_out=1,
        num_prompts=8,
        num_groups=8,
        num_pairs=8,
        num_dead=0,
        metrics={"loss/total": 0.69},
        stage_seconds={"generate": 1.0},
        eval={"eval/win_rate_vs_iter0": 0.6, "eval/win_rate_vs_iter0_ci_low": 0.5, "eval/kl_vs_iter0": 1.25},
        checkpoint="/tmp/ckpt/1",
        started_at=1.0,
        finished_at=2.0,
    )


ALL_RECORDS: list[Record] = [
    prompt_task(),
    completion(0, [1, 2]),
    generation_group(),
    Judgement(judge="j", scores=[0.1, 0.2], win_matrix=[[0.5, 0.3], [0.7, 0.5]], confidence=[[1, 1], [1, 1]]),
    Judgement(judge="j", scores=[1.0, 2.0, 3.0]),
    pair(),
    DeadLetter(stage="judge", item_id="p7@v3", reason="boom", attempts=3, payload=b"\x00\xffraw"),
    iteration_record(),
    LabelledAnswer(run_id="r", prompt_id="fb-1", prompt="q", answer=completion(0, []), label=True, weight=0.5),
    LabelledAnswer(
        run_id="r", iteration=2, policy_version=1, prompt_id="p1", prompt="q", prompt_token_ids=[1, 2],
        answer=completion(3, [4, 5]), label=False, score=1.0, source="oracle",
    ),  # fmt: skip
]


def test_labelled_answer_ids_are_what_the_item_is() -> None:
    """Posted feedback: a digest of conversation, answer, label and weight (re-posting stores it once; another
    label or weight is another item); a judged sample: its group id and sample index."""
    posted, judged = ALL_RECORDS[-2], ALL_RECORDS[-1]
    assert isinstance(posted, LabelledAnswer) and isinstance(judged, LabelledAnswer)
    assert judged.record_id == "p1@v1:3"
    assert posted.record_id.startswith("feedback:") and posted.record_id == posted.model_copy().record_id
    for change in ({"label": False}, {"weight": 1.0}, {"prompt": "other"}, {"answer": completion(1, [])}):
        assert posted.model_copy(update=change).record_id != posted.record_id, change
    assert posted.model_copy(update={"prompt_id": "fb-2"}).record_id == posted.record_id  # derived, not content


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda r: type(r).__name__)
def test_msgpack_round_trip(record: Record) -> None:
    data = encode(record)
    assert isinstance(data, bytes)
    back = decode(type(record), data)
    assert back == record
    assert encode(back) == data
    assert back.schema_version == SCHEMA_VERSION


def test_every_record_type_is_covered() -> None:
    import sparring.shared.records as records

    types = {
        obj
        for obj in vars(records).values()
        if isinstance(obj, type) and issubclass(obj, Record) and obj is not Record
    }
    assert types == {type(r) for r in ALL_RECORDS}


def test_bytes_payload_survives_as_bytes() -> None:
    letter = DeadLetter(stage="s", item_id="i", reason="r", payload=b"\x80\x81")
    assert decode(DeadLetter, encode(letter)).payload == b"\x80\x81"


def test_as_dict_is_json_friendly() -> None:
    d = as_dict(iteration_record())
    assert d["eval"]["eval/win_rate_vs_iter0"] == 0.6 and d["eval"]["eval/kl_vs_iter0"] == 1.25


def _error_locs(exc: ValidationError) -> list[tuple[object, ...]]:
    return [e["loc"] for e in exc.errors()]


def test_completion_mismatched_logprobs_is_rejected() -> None:
    with pytest.raises(ValidationError) as ei:
        Completion(index=0, text="x", token_ids=[1, 2, 3], logprobs=[-1.0])
    assert "logprobs has 1 entries but token_ids has 3" in str(ei.value)


def test_pair_with_same_sample_is_rejected() -> None:
    same = completion(0, [5, 6])
    with pytest.raises(ValidationError, match="same sample"):
        PreferencePair.model_validate({**pair().model_dump(), "chosen": same, "rejected": same})


def test_pair_with_identical_tokens_is_rejected() -> None:
    with pytest.raises(ValidationError, match="identical tokens"):
        PreferencePair.model_validate(
            {**pair().model_dump(), "chosen": completion(0, [5]), "rejected": completion(1, [5])}
        )


def test_pair_with_nan_score_names_the_field() -> None:
    with pytest.raises(ValidationError) as ei:
        PreferencePair.model_validate({**pair().model_dump(), "chosen_score": math.nan})
    assert ("chosen_score",) in _error_locs(ei.value)


def test_pair_win_prob_out_of_range_names_the_field() -> None:
    with pytest.raises(ValidationError) as ei:
        PreferencePair.model_validate({**pair().model_dump(), "win_prob": 1.5})
    assert ("win_prob",) in _error_locs(ei.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scores": [0.1, math.nan]}, "non-finite"),
        ({"win_matrix": [[0.5, math.inf], [0.0, 0.5]]}, "non-finite"),
        ({}, "needs scores, a win_matrix, or both"),
        ({"scores": [0.1, 0.2], "win_matrix": [[0.5]]}, "win_matrix must be 2x2"),
        ({"scores": [0.1, 0.2], "confidence": [[1.0, 1.0]]}, "confidence must be 2x2"),
    ],
)
def test_bad_judgements_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Judgement(judge="j", **kwargs)  # type: ignore[arg-type]


def test_field_constraints_name_the_field() -> None:
    with pytest.raises(ValidationError) as ei:
        PromptTask.model_validate({**prompt_task().model_dump(), "num_samples": 0})
    assert ("num_samples",) in _error_locs(ei.value)
    with pytest.raises(ValidationError) as ei:
        GenerationGroup.model_validate({**generation_group().model_dump(), "completions": []})
    assert ("completions",) in _error_locs(ei.value)


def test_unknown_fields_and_wrong_types_are_rejected_on_decode() -> None:
    data = prompt_task().model_dump()
    with pytest.raises(ValidationError) as ei:
        decode(PromptTask, msgpack.packb({**data, "surprise": 1}))
    assert ("surprise",) in _error_locs(ei.value)
    with pytest.raises(ValidationError) as ei:
        decode(PromptTask, msgpack.packb({**data, "seed": "not a number"}))
    assert ("seed",) in _error_locs(ei.value)


def test_records_are_frozen() -> None:
    task = prompt_task()
    with pytest.raises(ValidationError):
        task.seed = 3  # type: ignore[misc]


def test_record_ids_are_deterministic() -> None:
    assert prompt_task().record_id == prompt_task().record_id == group_id("p7", 3) == "p7@v3"
    assert generation_group().record_id == "p7@v3"
    assert pair().record_id == "p7@v3:1>0"
    assert iteration_record().record_id == "r:iter1"
    assert DeadLetter(stage="judge", item_id="x", reason="a").record_id == "judge:x"
    # ids depend on what a record is, not on incidental fields like timing or seed
    assert generation_group().model_copy(update={"latency_s": 9.0}).record_id == generation_group().record_id
    other_version = PromptTask.model_validate({**prompt_task().model_dump(), "policy_version": 4})
    assert other_version.record_id != prompt_task().record_id
    # and survive the wire
    assert decode(PreferencePair, encode(pair())).record_id == pair().record_id
