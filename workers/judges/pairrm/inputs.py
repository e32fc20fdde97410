"""PairRM inputs: the token ids of one comparison f(x, a, b), from a prompt and two candidate texts.

Three separately tokenised segments, each with its own [CLS] ... [SEP]:
`[CLS] <|source|> x [SEP] [CLS] <|candidate1|> a [SEP] [CLS] <|candidate2|> b [SEP]`. The source is
truncated (right side) to 1224 tokens; each candidate to (2048 - len(source ids)) // 2 tokens (= 412 plus
half of what the source leaves unused). Candidates are encoded once with `<|candidate|>` and that id is
swapped for the cand1/cand2 id (as llm-blender does). User text has "[SEP]" replaced by a space (as
llm-blender's `CrossCompareCollator`) and the four marker strings removed (they would give a row two prefix
tokens).

Token ids only: no torch and no model here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SOURCE_PREFIX = "<|source|>"
CAND1_PREFIX = "<|candidate1|>"
CAND2_PREFIX = "<|candidate2|>"
CAND_PREFIX = "<|candidate|>"
MARKERS: tuple[str, ...] = (SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX)

SOURCE_MAX_LENGTH = 1224  # hub ranker_config.json source_maxlength
CANDIDATE_MAX_LENGTH = 412  # hub ranker_config.json candidate_maxlength
MAX_LENGTH = 2048  # source_maxlength + 2 * candidate_maxlength


def clean_text(text: str) -> str:
    """User text as the ranker may see it: "[SEP]" -> " " (llm-blender's collator), marker strings removed."""
    text = text.replace("[SEP]", " ")
    while any(m in text for m in MARKERS):  # loop: removing one may join the halves of another
        for m in MARKERS:
            text = text.replace(m, "")
    return text


@dataclass(frozen=True)
class Limits:
    """Token limits (each segment's count includes its [CLS], prefix and [SEP])."""

    source: int = SOURCE_MAX_LENGTH
    candidate: int = CANDIDATE_MAX_LENGTH
    total: int = MAX_LENGTH

    def candidate_budget(self, source_len: int) -> int:
        """Per-candidate limit for a source of `source_len` ids: (total - source_len) // 2."""
        return (self.total - source_len) // 2


def encode_group(
    tokenizer: PreTrainedTokenizerBase, source: str, candidates: Sequence[str], limits: Limits = Limits()
) -> tuple[list[int], list[list[int]]]:
    """(source ids, candidate ids) for one prompt; candidates carry the generic `<|candidate|>` id."""
    src = tokenizer(SOURCE_PREFIX + clean_text(source), max_length=limits.source, truncation=True)["input_ids"]
    budget = limits.candidate_budget(len(src))
    cands = tokenizer(
        [CAND_PREFIX + clean_text(c) for c in candidates], max_length=budget, truncation=True
    )["input_ids"]
    return [int(i) for i in src], [[int(i) for i in c] for c in cands]


def pair_input_ids(src: list[int], cand_a: list[int], cand_b: list[int], cand_id: int, cand1_id: int,
                   cand2_id: int) -> list[int]:
    """source + candidate A (as candidate1) + candidate B (as candidate2)."""
    a = [cand1_id if t == cand_id else t for t in cand_a]
    b = [cand2_id if t == cand_id else t for t in cand_b]
    return src + a + b


def format_pair(
    tokenizer: PreTrainedTokenizerBase, source: str, cand_a: str, cand_b: str, limits: Limits = Limits()
) -> list[int]:
    """Input ids of one comparison f(source, a, b)."""
    src, (a, b) = encode_group(tokenizer, source, [cand_a, cand_b], limits)
    ids = [tokenizer.convert_tokens_to_ids(m) for m in (CAND_PREFIX, CAND1_PREFIX, CAND2_PREFIX)]
    return pair_input_ids(src, a, b, *ids)
