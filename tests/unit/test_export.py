"""The TRL export keeps truncation visible: each row carries both answers' finish_reason, pairs with an answer
cut at max_new_tokens are left out by default (TRL appends EOS and would train them as finished) and counted
in a response header, and a multi-turn prompt is exported whole in conversational format."""

import json
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from sparring.services.api.routers import pairs as pairs_router
from sparring.services.auth import require_read
from sparring.shared.records import Completion, PreferencePair

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Tell me about otters."},
]


def pair(n: int, chosen_finish: str = "stop", rejected_finish: str = "stop", iteration: int = 1, **kw: Any) -> PreferencePair:
    def completion(i: int, text: str, finish: str) -> Completion:
        return Completion(index=i, text=text, token_ids=[1, 2 + i], logprobs=[-0.1, -0.2], finish_reason=finish)

    return PreferencePair(
        run_id="r1",
        iteration=iteration,
        policy_version=iteration - 1,
        prompt_id=f"p{n}",
        prompt=kw.pop("prompt", f"prompt {n}"),
        prompt_token_ids=[5],
        chosen=completion(0, f"good {n}", chosen_finish),
        rejected=completion(1, f"bad {n}", rejected_finish),
        chosen_score=1.0,
        rejected_score=0.0,
        win_prob=0.9,
        judge="test",
        **kw,
    )


PAIRS = [
    pair(0),
    pair(1, chosen_finish="length"),
    pair(2, rejected_finish="length"),
    pair(3, iteration=2),
    pair(4, "length", "length", iteration=2),
    pair(5, rejected_finish="", iteration=2),  # a logged (not sampled) rejected answer, as DRIFT's
]


class FakeService:
    """The one `RunService` method the export reads (`pair_records`: the run's pairs with their entry ids)."""

    def __init__(self, pairs: list[PreferencePair]) -> None:
        self.pairs = pairs

    def view(self, run_id: str) -> dict[str, Any]:
        return {"run_id": run_id}

    def pair_records(self, run_id: str, newest_first: bool = False) -> Any:
        assert not newest_first
        return ((f"{1000 + i}-0", p) for i, p in enumerate(self.pairs))


def export(pairs: list[PreferencePair], **params: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    app = FastAPI()
    app.state.service = FakeService(pairs)
    app.dependency_overrides[require_read] = lambda: "read"
    app.include_router(pairs_router.router)
    with TestClient(app) as c:
        r = c.get("/v1/runs/r1/pairs/export", params=params)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()], dict(r.headers)


def test_truncated_pairs_are_left_out_by_default_and_counted() -> None:
    rows, headers = export(PAIRS)
    assert [r["prompt"] for r in rows] == ["prompt 0", "prompt 3", "prompt 5"]
    assert headers["x-pairs-left-out-truncated"] == "3" and headers["x-pairs-exported"] == "3"
    assert rows[0] == {
        "prompt": "prompt 0",
        "chosen": "good 0",
        "rejected": "bad 0",
        "chosen_finish_reason": "stop",
        "rejected_finish_reason": "stop",
    }
    assert rows[2]["rejected_finish_reason"] is None  # not sampled: no finish reason

    rows, headers = export(PAIRS, include_truncated="true")
    assert len(rows) == 6 and headers["x-pairs-left-out-truncated"] == "0" and headers["x-pairs-exported"] == "6"
    assert [(r["chosen_finish_reason"], r["rejected_finish_reason"]) for r in rows[1:3]] == [("length", "stop"), ("stop", "length")]

    rows, headers = export(PAIRS, iteration=2)
    assert [r["prompt"] for r in rows] == ["prompt 3", "prompt 5"] and headers["x-pairs-left-out-truncated"] == "1"


def test_sample_draws_from_the_kept_pairs_only() -> None:
    many = [pair(i, chosen_finish="length" if i % 2 else "stop") for i in range(40)]
    rows, headers = export(many, sample=5, seed=3)
    assert len(rows) == 5 and all(r["chosen_finish_reason"] == "stop" for r in rows)
    assert headers["x-pairs-left-out-truncated"] == "20" and headers["x-pairs-exported"] == "5"
    again, _ = export(many, sample=5, seed=3)
    assert again == rows
    rows, headers = export(many, sample=100)
    assert len(rows) == 20 and headers["x-pairs-exported"] == "20"


def test_empty_export_has_headers() -> None:
    rows, headers = export([])
    assert rows == [] and headers["x-pairs-left-out-truncated"] == "0" and headers["x-pairs-exported"] == "0"


def test_multi_turn_prompt_is_exported_whole_in_conversational_format() -> None:
    chat = [pair(0, prompt=CHAT[-1]["content"], messages=CHAT), pair(1)]
    rows, _ = export(chat, format="conversational")
    assert rows[0]["prompt"] == CHAT
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "good 0"}]
    assert rows[1]["prompt"] == [{"role": "user", "content": "prompt 1"}]
    rows, _ = export(chat)  # standard format: the last user turn (the chat template needs the tokenizer)
    assert rows[0]["prompt"] == "Tell me about otters."
