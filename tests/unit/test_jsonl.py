"""shared/jsonl.py: the JSONL reader the API upload and the run share (split on "\\n" only, strict JSON, text
that encodes as UTF-8), and the strict JSON writer (NaN/inf -> null)."""

import json
import math
from pathlib import Path
from typing import Any

import pytest

from sparring.services.pools import PoolRejected, PoolStore
from sparring.shared.config import PromptsConfig
from sparring.shared.dsat import DSATError, parse_dsat_jsonl
from sparring.shared.jsonl import decode_lines, dumps, split_lines
from sparring.shared.prompts import PromptPoolError, load_prompt_pool


class FakeRedis:
    """The two hash calls PoolStore makes."""

    def __init__(self) -> None:
        self.h: dict[str, dict[str, str]] = {}

    def hget(self, key: str, field: str) -> str | None:
        return self.h.get(key, {}).get(field)

    def hsetnx(self, key: str, field: str, value: str) -> bool:
        if field in self.h.setdefault(key, {}):
            return False
        self.h[key][field] = value
        return True

    def hvals(self, key: str) -> list[str]:
        return list(self.h.get(key, {}).values())


def strict_loads(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def upload_then_run(tmp_path: Path, data: bytes, kind: str = "prompts") -> list[Any]:
    """Upload `data` as a pool, then load the stored file the way a run does; returns the run's items."""
    store = PoolStore(FakeRedis(), tmp_path / "pools")  # type: ignore[arg-type]
    pool, created = store.add("p", kind, data)  # type: ignore[arg-type]
    assert created
    path = store.path(pool["pool_id"])
    items = load_prompt_pool(PromptsConfig(source="jsonl" if kind == "prompts" else "dsat", path=str(path)))
    assert len(items) == pool["num_items"]
    return items


def test_split_on_newline_only() -> None:
    text = 'a\u2028b\nc\u0085d\r\ne\x1cf\n'
    assert split_lines(text) == ["a\u2028b", "c\u0085d\r", "e\x1cf"]
    assert text.splitlines() != split_lines(text)  # what the old loaders did: 6 lines
    assert decode_lines(b"x\ny") == ["x", "y"] and decode_lines(b"") == []
    # a UTF-8 byte order mark at the start (Windows editors, Excel) is ignored, not "line 1: not valid JSON"
    assert decode_lines(b'\xef\xbb\xbf{"id": "a"}\n') == ['{"id": "a"}']
    assert decode_lines("x\n\ufeffy".encode()) == ["x", "\ufeffy"]  # only a leading one


def test_raw_line_separators_inside_strings_are_accepted_by_upload_and_run(tmp_path: Path) -> None:
    """A raw U+2028 / U+0085 inside a JSON string is valid JSON Lines; str.splitlines() used to break the
    line there and refuse it as 'not valid JSON'."""
    lines = [
        json.dumps({"id": "a", "prompt": "one\u2028two"}, ensure_ascii=False),
        json.dumps({"id": "b", "prompt": "nel\u0085here"}, ensure_ascii=False),
        json.dumps({"id": "c", "prompt": "crlf"}) + "\r",
    ]
    items = upload_then_run(tmp_path, "\n".join(lines).encode())
    assert [(i.prompt_id, i.prompt) for i in items] == [("a", "one\u2028two"), ("b", "nel\u0085here"), ("c", "crlf")]
    dsat = {
        "messages": [{"role": "user", "content": "q\u2028q"}],
        "response": "r\u2029r",
        "feedback": "f",
    }
    (item,) = upload_then_run(tmp_path, json.dumps(dsat, ensure_ascii=False).encode(), kind="dsat")
    assert item.prompt == "q\u2028q" and item.anchor_text == "r\u2029r"


def test_lone_surrogates_are_refused_at_upload_with_line_and_field(tmp_path: Path) -> None:
    """`{"prompt": "Tell me about cats \\ud83d"}` parses in Python but cannot be encoded as UTF-8: it used to
    be accepted (201) and fail the run in dispatch, on every resume."""
    data = (
        b'{"prompt": "fine \\ud83d\\ude00"}\n'  # an escaped surrogate *pair* is one character: fine
        b'{"prompt": "Tell me about cats \\ud83d"}\n'
        b'{"messages": [{"role": "user", "content": "x\\udc00"}]}\n'
        b'{"id": "\\ud800", "prompt": "p"}\n'
    )
    store = PoolStore(FakeRedis(), tmp_path / "pools")  # type: ignore[arg-type]
    with pytest.raises(PoolRejected) as info:
        store.add("cats", "prompts", data)
    assert info.value.problems == [
        "line 2: field 'prompt': lone surrogate U+D83D (text must be encodable as UTF-8)",
        "line 3: field 'messages.0.content': lone surrogate U+DC00 (text must be encodable as UTF-8)",
        "line 4: field 'id': lone surrogate U+D800 (text must be encodable as UTF-8)",
    ]
    assert not (tmp_path / "pools").exists() or not list((tmp_path / "pools").iterdir())
    # the run reads a file with the same reader, so a pool written around the API is refused the same way
    path = tmp_path / "direct.jsonl"
    path.write_bytes(data)
    with pytest.raises(PromptPoolError, match="line 2: field 'prompt': lone surrogate U\\+D83D"):
        load_prompt_pool(PromptsConfig(source="jsonl", path=str(path)))
    with pytest.raises(DSATError, match="line 1: field 'feedback': lone surrogate"):
        parse_dsat_jsonl(['{"messages": [{"role": "user", "content": "q"}], "response": "r", "feedback": "\\ud83d"}'])


def test_non_json_constants_and_bad_utf8_are_refused(tmp_path: Path) -> None:
    store = PoolStore(FakeRedis(), tmp_path / "pools")  # type: ignore[arg-type]
    with pytest.raises(PoolRejected) as info:
        store.add("n", "prompts", b'{"prompt": "a"}\n{"prompt": "b", "id": NaN}\n')
    assert info.value.problems == ["line 2: not valid JSON (NaN is not JSON)"]
    with pytest.raises(PoolRejected) as info:
        store.add("u", "prompts", b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    assert info.value.problems == ["line 2: invalid UTF-8 byte at offset 28"]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(PromptPoolError, match="line 1: invalid UTF-8 byte at offset 12"):
        load_prompt_pool(PromptsConfig(source="jsonl", path=str(path)))


def test_dumps_writes_strict_json_with_null_for_nan_and_inf() -> None:
    value = {"loss/mean": math.nan, "x": [math.inf, -math.inf, 1.5], "nested": {"t": (math.nan, 2)}, "s": "NaN"}
    text = dumps(value)
    assert strict_loads(text) == {"loss/mean": None, "x": [None, None, 1.5], "nested": {"t": [None, 2]}, "s": "NaN"}
    assert "NaN" not in text.replace('"NaN"', "")
    with pytest.raises(ValueError):
        strict_loads(json.dumps(value))  # what the standard module writes by default
    assert strict_loads(dumps({"a": 1}, indent=2)) == {"a": 1}


def test_an_empty_upload_is_refused_as_empty_not_as_a_bad_line(tmp_path: Path) -> None:
    """An upload with no non-empty line has no bad line to name: the refusal says the file has no prompts
    (it said "1 bad line(s)" before), for a prompt pool and a DSAT pool alike, and nothing is stored."""
    store = PoolStore(FakeRedis(), tmp_path / "pools")  # type: ignore[arg-type]
    for kind, data in (("prompts", b""), ("prompts", b"\n  \n"), ("dsat", b"\n")):
        with pytest.raises(PoolRejected) as info:
            store.add("empty", kind, data)  # type: ignore[arg-type]
        assert "bad line" not in str(info.value)
        assert "no prompts" in str(info.value) or "no DSAT logs" in str(info.value)
        assert "nothing was stored" in str(info.value)
    assert not (tmp_path / "pools").exists() or not any((tmp_path / "pools").iterdir())
