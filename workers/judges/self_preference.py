"""Self-preference judge (OSP, arXiv 2405.14103): the current policy judges its own samples.

For an ordered pair (a, b) of responses to prompt x the policy reads the judge prompt

    chat_template(user = template.format(question=x, a=a, b=b)) + generation prompt

and the strength that a is better is read from the next-token logits of the two answer tokens
(`answers`, " A" and " B" by default):

    p_AB(a, b) = P(" A") / (P(" A") + P(" B")) = sigmoid(logit_A - logit_B)

A judge prompt puts one response first, so the verdict can carry a position bias. Every unordered pair is
judged in both orders and averaged (our reconstruction: OSP's judge prompt is not published; docs/judges.md,
"Self-preference (OSP)"):

    P[i][j] = 1/2 + (p_AB(i, j) - p_AB(j, i)) / 2,   P[j][i] = 1/2 - (p_AB(i, j) - p_AB(j, i)) / 2

so P[i][i] = 1/2, P + P^T = 1, and two identical responses get exactly 1/2 whatever the bias (their two
judge prompts are the same token ids, scored once). `scores[i]` is response i's mean strength against the
other K - 1 responses (its estimated win rate in the group; the OSP ranked pairing sorts by it).
The flip consistency is the fraction of pairs (distinct texts) whose verdict is the same in both orders:
sign(p_AB(i, j) - 1/2) = -sign(p_AB(j, i) - 1/2). It is kept per call (`last_flip_consistency`) and in
running counters (`flip_pairs`, `flip_consistent`).

Scoring is batched: every judge prompt of every group in a `judge` call goes into right-padded batches
of `batch_size` rows, one forward each, and only the last real position of each row is projected through
the LM head.

The judge's weights follow the policy: `load_weights(path)` loads a checkpoint dir of the same
architecture in place (the controller pushes every new policy version to the judges, through
`sparring.workers.weight_sync.apply_update`, as it does to the generators; `follows_policy` says so).

A multi-turn group's `{question}` is its whole conversation, one "Role: text" line per turn
(`conversation_question`), so a system instruction such as "answer in French" reaches the judge.

The default judge prompt is `DEFAULT_TEMPLATE` with the answers " A" / " B" (tasks that pretrain their
policy to judge, such as the built-in test task, teach it this prompt). For a policy that was not taught it
pass a template it understands; the two answers must each be one token of its tokenizer (checked).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sparring.shared.models import load_causal_lm, load_tokenizer, prompt_token_ids, text_token_ids
from sparring.shared.records import GenerationGroup, Judgement
from sparring.workers.recipes.winrate import matrix_through_baseline

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "Which answer to the question is better, A or B?\nQuestion: {question}\nA: {a}\nB: {b}"
DEFAULT_ANSWERS = (" A", " B")  # each must be one token of the judging policy's tokenizer (checked)


class SelfPreferenceJudge:
    """P[i][j] from the policy's own A/B verdicts, averaged over both orders (see the module docstring)."""

    order_sensitive = True  # a single judge prompt is; `judge` cancels it by scoring both orders itself
    follows_policy = True  # the controller pushes every weight sync to this judge

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        model_path: str,
        template: str | None = None,
        answers: tuple[str, str] | None = None,
        batch_size: int = 64,
        name: str = "self_preference",
        baseline: int | None = None,
    ) -> None:
        """`baseline`: compare every response with that one only (OSP's O(K) baseline pairing,
        `algorithm.pairs: baseline`; the rest of the matrix is composed through it, `matrix_through_baseline`);
        None = every ordered pair (K(K-1) judge prompts per group)."""
        template = DEFAULT_TEMPLATE if template is None else template
        answers = DEFAULT_ANSWERS if answers is None else answers
        for key in ("{question}", "{a}", "{b}"):
            if key not in template:
                raise ValueError(f"judge template needs {key}; got {template!r}")
        ids = [text_token_ids(tokenizer, a) for a in answers]
        if any(len(i) != 1 for i in ids) or ids[0] == ids[1]:
            raise ValueError(
                f"answers {answers!r} must be two distinct single tokens of the tokenizer; they encode to {ids}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_path = str(model_path)  # config + tokenizer files for staged weight updates
        self.template = template
        self.answers = answers
        self.answer_ids = (ids[0][0], ids[1][0])
        self.batch_size = batch_size
        self.baseline = baseline
        self.name = name
        self.engine_id = f"{name}-judge"
        self.version = 0
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad)
        self.flip_pairs = 0
        self.flip_consistent = 0
        self.last_flip_consistency: float | None = None

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: str = "float32", device: str = "cpu", **kwargs: object
    ) -> SelfPreferenceJudge:
        model = load_causal_lm(str(path), dtype=dtype, device=device)
        return cls(model, load_tokenizer(str(path)), model_path=str(path), **kwargs)  # type: ignore[arg-type]

    # -- the judge prompt -------------------------------------------------------------------------------

    def prompt_ids(self, question: str, a: str, b: str) -> list[int]:
        """Token ids of the judge prompt for "is `a` better than `b`" (chat template + generation prompt)."""
        text = self.template.format(question=question, a=a, b=b)
        ids = prompt_token_ids(self.tokenizer, text)
        if self.max_positions is not None and len(ids) > self.max_positions:
            raise ValueError(
                f"judge prompt of {len(ids)} tokens exceeds the model's {self.max_positions} positions"
            )
        return ids

    # -- scoring ----------------------------------------------------------------------------------------

    def answer_probs(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """p_AB = P(A) / (P(A) + P(B)) at the position after each row; one forward per `batch_size` rows."""
        import torch

        from sparring.workers.batching import map_by_length, right_pad

        device = next(self.model.parameters()).device
        a_id, b_id = self.answer_ids

        def forward(idx: list[int]) -> torch.Tensor:
            ids, mask = right_pad([rows[i] for i in idx], self.pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            # right padding: a real token never attends to padding, and position ids start at 0
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.sum(dim=1) - 1
            h = hidden[torch.arange(len(idx), device=device), last]  # (B, H)
            logits = self.model.get_output_embeddings()(h).float()  # (B, V)
            return torch.sigmoid(logits[:, a_id] - logits[:, b_id])  # (B,) float32

        # similar lengths share a batch; results come back in input order
        with torch.inference_mode():
            out = torch.zeros(len(rows), dtype=torch.float32)
            out = map_by_length([len(r) for r in rows], self.batch_size, forward, out)
        return [float(v) for v in out.tolist()]

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        t0 = time.perf_counter()
        unique: dict[tuple[int, ...], int] = {}  # judge prompt ids -> row (identical prompts scored once)
        plans: list[tuple[list[str], dict[tuple[int, int], int]]] = []
        for g in groups:
            texts = [c.text for c in g.completions]
            question = conversation_question(g.prompt, g.messages)
            where: dict[tuple[int, int], int] = {}
            for i in range(len(texts)):
                for j in range(len(texts)):
                    if i != j and (self.baseline is None or self.baseline in (i, j)):
                        key = tuple(self.prompt_ids(question, texts[i], texts[j]))
                        where[(i, j)] = unique.setdefault(key, len(unique))
            plans.append((texts, where))
        probs = self.answer_probs(list(unique))
        latency = (time.perf_counter() - t0) / max(1, len(groups))
        out: list[Judgement] = []
        pairs = consistent = 0
        for texts, where in plans:
            k = len(texts)
            matrix = [[0.5] * k for _ in range(k)]
            for i in range(k):
                for j in range(i + 1, k):
                    if (i, j) not in where:  # baseline mode: composed below
                        continue
                    p_ij, p_ji = probs[where[(i, j)]], probs[where[(j, i)]]
                    half_gap = 0.5 * (p_ij - p_ji)
                    matrix[i][j], matrix[j][i] = 0.5 + half_gap, 0.5 - half_gap
                    if texts[i] != texts[j]:
                        pairs += 1
                        consistent += _sign(p_ij - 0.5) == -_sign(p_ji - 0.5)
            if self.baseline is not None and k > self.baseline:
                matrix = matrix_through_baseline([matrix[i][self.baseline] for i in range(k)], self.baseline)
            scores = [
                sum(matrix[i][j] for j in range(k) if j != i) / (k - 1) if k > 1 else 0.5 for i in range(k)
            ]
            out.append(Judgement(judge=self.name, scores=scores, win_matrix=matrix, latency_s=latency))
        self.flip_pairs += pairs
        self.flip_consistent += consistent
        self.last_flip_consistency = consistent / pairs if pairs else None
        return out

    # -- following the policy ---------------------------------------------------------------------------

    def load_weights(self, path: str) -> float:
        """Load the weights of checkpoint dir `path` (same architecture) in place; returns seconds taken.

        Every tensor of the model must be in the checkpoint (strict), so a half or foreign checkpoint
        raises before the judge scores with mixed weights.
        """
        from sparring.workers.checkpoints import aliased_names, load_state_dir

        t0 = time.perf_counter()
        state = load_state_dir(path)
        own = self.model.state_dict()
        tied = aliased_names(self.model)  # e.g. a tied lm_head: not in the checkpoint, set with what it aliases
        state = {k: v for k, v in state.items() if k not in tied}
        missing = sorted(set(own) - set(state) - tied)
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {path!r} does not match the judge's model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        dtype = next(self.model.parameters()).dtype
        self.model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
        self.model.eval()
        return time.perf_counter() - t0

    def flip_consistency(self) -> float | None:
        """Fraction of all pairs judged so far whose verdict did not depend on the order (None before any)."""
        return self.flip_consistent / self.flip_pairs if self.flip_pairs else None


ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def conversation_question(prompt: str, messages: Sequence[Mapping[str, str]] | None = None) -> str:
    """The `{question}` of the judge prompt: the user message, or for a conversation with more than that one
    message (a system turn, earlier turns) the whole conversation rendered plainly, one "Role: text" line per
    turn, so the judge sees the instructions the answers had to follow."""
    if not messages or (len(messages) == 1 and messages[0].get("role") == "user"):
        return prompt
    return "\n".join(f"{ROLE_NAMES.get(m.get('role', ''), m.get('role', '').title())}: {m['content']}" for m in messages)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)
