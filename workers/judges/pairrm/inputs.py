"""PairRM inputs: the token ids of one comparison f(x, a, b), from a prompt and two candidate texts.

Three separately tokenised segments, each with its own [CLS] ... [SEP]:
`[CLS] <|source|> x [SEP] [CLS] <|candidate1|> a [SEP] [CLS] <|candidate2|> b [SEP]`. The source is
truncated (right side) to 1224 tokens; each candidate to (2048 - len(source ids)) // 2 tokens (= 412 plus
half of what the source leaves unused). Candidates are encoded once with `<|candidate|>` and that id is
swapped for the cand1/cand2 id (as llm-blender does). User text has "[SEP]" replaced by a space (as
llm-blender's `CrossCompareCollator`) and the four marker strings removed (they would give a row two prefix
tokens).

Multi-turn conversations (a group's `messages`) are formatted as llm-blender formats them
(`llm_blender/blender/blender_utils.py::get_pair_from_conv`, also `Blender.compare_conversations`): the
source is its instruction "Finish the following coversation in each i-th turn by filling in <Response i>
with your response." (sic) directly followed by one "USER: <turn>\nAssistant: <Response i>" block per user
turn, joined with newlines; each candidate is every assistant turn as "<Response i>: <text>" joined with
newlines, the conversation's earlier assistant turns first and the judged answer as the last one. System
turns (which llm-blender's conversations do not have) are put before the source, each on its own line, as
`Blender.rank` prepends its `instructions` to the input. A conversation of one user turn (with or without a
system turn) keeps the single-turn format: the source is the user message.

Token ids only: no torch and no model here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


CONVERSATION_INSTRUCTION = (  # llm-blender's get_pair_from_conv, spelling included
    "Finish the following coversation in each i-th turn by filling in <Response i> with your response."
)


@dataclass(frozen=True)
class RankerInput:
    """What PairRM reads for one prompt: the source text, and how an answer becomes a candidate text."""

    source: str
    earlier: tuple[str, ...] = field(default=())  # the conversation's earlier assistant turns, in order

    def candidate(self, answer: str) -> str:
        """The candidate text of `answer`: itself for a single turn, else every turn's "<Response i>: ..."."""
        if not self.earlier:
            return answer
        turns = [*self.earlier, answer]
        return "\n".join(f"<Response {i}>: {text}" for i, text in enumerate(turns, start=1))


def ranker_input(prompt: str, messages: Sequence[Mapping[str, str]] | None = None) -> RankerInput:
    """PairRM's input for a user message or a whole conversation ending in a user turn (module docstring)."""
    if not messages:
        return RankerInput(prompt)
    system = [m["content"] for m in messages if m.get("role") == "system"]
    turns: list[list[str]] = []  # [role, content], consecutive turns of one role merged
    for m in messages:
        role = m.get("role")
        if role in ("user", "assistant"):
            if turns and turns[-1][0] == role:
                turns[-1][1] += "\n" + m["content"]
            else:
                turns.append([role, m["content"]])
    prefix = "".join(f"{s}\n" for s in system)
    users = [content for role, content in turns if role == "user"]
    if len(users) <= 1:
        return RankerInput(prefix + (users[0] if users else prompt))
    blocks, earlier, n = [], [], 0
    for role, content in turns:
        if role == "user":
            n += 1
            blocks.append(f"USER: {content}\nAssistant: <Response {n}>")
        elif n:  # an assistant turn answers the user turn before it
            earlier.append(content)
        else:  # a conversation opening with an assistant turn: context before the first user turn
            prefix += f"Assistant: {content}\n"
    # merged turns alternate, so every user turn but the last is answered by the assistant turn after it
    return RankerInput(prefix + CONVERSATION_INSTRUCTION + "\n".join(blocks), tuple(earlier))


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
