"""PairRM: a DeBERTa-v2 pairwise ranker (checkpoint-compatible with `llm-blender/PairRM-hf`) as a judge.

Reference: `reference/judges.md` section 1.

Model. `DebertaV2PairRM` is a `DebertaV2PreTrainedModel` with attributes `pretrained_model` (a
`DebertaV2Model`) and `head_layer` = Dropout -> Linear(2H -> H) -> Tanh -> Dropout -> Linear(H -> n_tasks),
so its state-dict keys are exactly the hub's (`pretrained_model.*`, `head_layer.1.*`, `head_layer.4.*`) and
its config reads the hub's extra fields (`n_tasks`, `drop_out`, `source_prefix_id`, `cand1_prefix_id`,
`cand2_prefix_id`, `cand_prefix_id`, `sep_token_id`). A local copy of PairRM-hf loads with
`DebertaV2PairRM.from_pretrained`; the original llm-blender directory (RankerConfig JSON, no transformers
config) loads through `load_pairrm`, which builds the DeBERTa-v3-large config in code
(`original_pairrm_config`) and loads `model.safetensors` into it.

f(x, a, b) is the logit of one forward: mean over tasks of head([h_src; h_a]) - head([h_src; h_b]), h at
each segment's prefix token; f > 0 means a is better.

Input. Three separately tokenised segments, each with its own [CLS] ... [SEP]:
`[CLS] <|source|> x [SEP] [CLS] <|candidate1|> a [SEP] [CLS] <|candidate2|> b [SEP]`. The source is
truncated (right side) to 1224 tokens; each candidate to (2048 - len(source ids)) // 2 tokens (= 412 plus
half of what the source leaves unused). Candidates are encoded once with `<|candidate|>` and that id is
swapped for the cand1/cand2 id (as llm-blender does). User text has "[SEP]" replaced by a space (as the
reference collator) and the four marker strings removed (they would give a row two prefix tokens).

Scores. `rank`: all K(K-1) ordered pairs of every group, batched across groups into forwards of at most
`max_batch_size` rows (length-sorted to cut padding): M[i, j] = f(x, c_i, c_j), M_ii = 0,
s_i = (1/K) sum_j (M_ij - M_ji) (llm-blender's "max_logits" aggregation, so sum_i s_i = 0), and SPPO's
win matrix P_ij = sigmoid(s_i - s_j). `rank_with_ref`: reward_j = f(c_j, ref) - f(ref, c_j), i.e.
-compare(ref, c_j) in the default two-order mode; 2 forwards per non-reference response.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from transformers import DebertaV2Config, DebertaV2Model
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2PreTrainedModel

from sparring.shared.records import GenerationGroup, Judgement
from sparring.workers.batching import map_by_length, right_pad

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SOURCE_PREFIX = "<|source|>"
CAND1_PREFIX = "<|candidate1|>"
CAND2_PREFIX = "<|candidate2|>"
CAND_PREFIX = "<|candidate|>"
MARKERS: tuple[str, ...] = (SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX)

SOURCE_MAX_LENGTH = 1224  # hub ranker_config.json source_maxlength
CANDIDATE_MAX_LENGTH = 412  # hub ranker_config.json candidate_maxlength
MAX_LENGTH = 2048  # source_maxlength + 2 * candidate_maxlength

# The hub config.json of llm-blender/PairRM-hf (judges.md 1.5): DeBERTa-v3-large plus the PairRM fields.
PAIRRM_HF_CONFIG: dict[str, Any] = dict(
    vocab_size=128005,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    relative_attention=True,
    position_buckets=256,
    max_relative_positions=-1,
    pos_att_type=["p2c", "c2p"],
    position_biased_input=False,
    share_att_key=True,
    norm_rel_ebd="layer_norm",
    type_vocab_size=0,
    layer_norm_eps=1e-7,
    pad_token_id=0,
    n_tasks=1,
    drop_out=0.05,
    source_prefix_id=128001,
    cand1_prefix_id=128002,
    cand2_prefix_id=128003,
    cand_prefix_id=128004,
    sep_token_id=2,
)
PAIRRM_FIELDS: tuple[str, ...] = (
    "n_tasks", "drop_out", "source_prefix_id", "cand1_prefix_id", "cand2_prefix_id", "cand_prefix_id",
    "sep_token_id",
)  # fmt: skip


class PairRMLoadError(RuntimeError):
    """A PairRM checkpoint or tokenizer could not be loaded; the message names the path and the cause."""


# --------------------------------------------------------------------------------------------------
# The model


class DebertaV2PairRM(DebertaV2PreTrainedModel):
    """DeBERTa-v2 encoder + PairRM head; the state dict and config match `llm-blender/PairRM-hf`."""

    config_class = DebertaV2Config

    def __init__(self, config: DebertaV2Config) -> None:
        super().__init__(config)
        missing = [f for f in PAIRRM_FIELDS if getattr(config, f, None) is None]
        if missing:
            raise ValueError(f"DebertaV2Config lacks the PairRM fields {missing}")
        self.n_tasks = int(config.n_tasks)
        self.drop_out = float(config.drop_out)
        self.source_prefix_id = int(config.source_prefix_id)
        self.cand1_prefix_id = int(config.cand1_prefix_id)
        self.cand2_prefix_id = int(config.cand2_prefix_id)
        self.cand_prefix_id = int(config.cand_prefix_id)
        self.sep_token_id = int(config.sep_token_id)
        self.pretrained_model = DebertaV2Model(config)
        hidden = config.hidden_size
        self.head_layer = nn.Sequential(
            nn.Dropout(self.drop_out),
            nn.Linear(2 * hidden, hidden),
            nn.Tanh(),
            nn.Dropout(self.drop_out),
            nn.Linear(hidden, self.n_tasks),
        )
        self.post_init()

    def _prefix_positions(self, input_ids: torch.Tensor, token_id: int, name: str) -> torch.Tensor:
        hits = input_ids == token_id
        counts = hits.sum(dim=1)
        if bool((counts != 1).any()):
            bad = int(torch.nonzero(counts != 1)[0, 0])
            raise ValueError(f"row {bad} has {int(counts[bad])} {name} prefix tokens (id {token_id}); need 1")
        return hits.int().argmax(dim=1)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states [B, L', H], prefix positions [B, 3] of source/candidate1/candidate2), after
        dropping the columns that are padding in every row (L' <= L)."""
        keep = attention_mask.ne(0).any(dim=0)  # drop columns that are padding in every row
        input_ids, attention_mask = input_ids[:, keep], attention_mask[:, keep]
        src = self._prefix_positions(input_ids, self.source_prefix_id, "source")
        c1 = self._prefix_positions(input_ids, self.cand1_prefix_id, "candidate1")
        c2 = self._prefix_positions(input_ids, self.cand2_prefix_id, "candidate2")
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, torch.stack([src, c1, c2], dim=1)

    def prefix_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Last hidden states [B, H] at the source, candidate1 and candidate2 prefix tokens of each row."""
        hidden, pos = self.encode(input_ids, attention_mask)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, pos[:, 0]], hidden[rows, pos[:, 1]], hidden[rows, pos[:, 2]]

    def head_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(left, right) head outputs [B, n_tasks] for candidate 1 and candidate 2 of each row."""
        h_src, h_c1, h_c2 = self.prefix_states(input_ids, attention_mask)
        left = self.head_layer(torch.cat([h_src, h_c1], dim=-1))
        right = self.head_layer(torch.cat([h_src, h_c2], dim=-1))
        return left, right

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> SequenceClassifierOutput:
        """logits [B] = mean_tasks(left - right); with `labels` (+1: candidate 1 better, -1: candidate 2)
        also the "instructgpt" loss mean(-log sigmoid(label * (left - right)))."""
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id).long()
        left, right = self.head_scores(input_ids, attention_mask)
        diff = left - right
        loss = None
        if labels is not None:
            loss = pairwise_loss(diff, labels)
        return SequenceClassifierOutput(loss=loss, logits=diff.mean(dim=-1))


def pairwise_loss(diff: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PairRM's "instructgpt" loss: mean of -log sigmoid(sign * (left - right)); `diff` [B] or [B, n_tasks]."""
    sign = labels.to(diff.dtype)
    if diff.dim() == 2:
        sign = sign[:, None]
    return -nn.functional.logsigmoid(sign * diff).mean()


def pairrm_config(**fields: Any) -> DebertaV2Config:
    """A DebertaV2Config with the PairRM-hf flags; `fields` override (e.g. a tiny hidden size)."""
    kwargs = dict(PAIRRM_HF_CONFIG)
    kwargs.update(fields)
    cfg = DebertaV2Config(**kwargs)
    cfg.architectures = ["DebertaV2PairRM"]
    return cfg


def original_pairrm_config() -> DebertaV2Config:
    """The config of the original llm-blender/PairRM weights, built in code (its dir has no DeBERTa config)."""
    return pairrm_config()


# --------------------------------------------------------------------------------------------------
# Loading


def _resolve_dir(path: str) -> Path:
    """A local directory for `path`: itself, or the hub snapshot of an id (cache only when offline)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if path.startswith(("/", "./", "../", "~")):
        raise PairRMLoadError(f"PairRM directory {path!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as err:
        raise PairRMLoadError(f"cannot resolve PairRM hub id {path!r}: {err}") from err


def is_original_layout(directory: Path) -> bool:
    """True for the original llm-blender dir: its config.json is a RankerConfig, not a transformers config."""
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        return (directory / "ranker_config.json").is_file()
    return "model_type" not in json.loads(cfg_file.read_text())


def _load_tokenizer(directory: Path, original: bool) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if original:  # AutoTokenizer would read the RankerConfig config.json; name the class
            try:
                from transformers import DebertaV2Tokenizer

                tok = DebertaV2Tokenizer.from_pretrained(str(directory))
            except Exception:
                tok = PreTrainedTokenizerFast.from_pretrained(str(directory))
        else:
            tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as err:
        raise PairRMLoadError(f"cannot load PairRM tokenizer from {str(directory)!r}: {err}") from err
    tok.truncation_side = "right"  # the reference default: a long source loses its end
    return tok


def load_pairrm(
    path: str | Path,
    device: str = "cpu",
    dtype: str = "auto",
    original_config: DebertaV2Config | None = None,
) -> tuple[DebertaV2PairRM, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) from a PairRM-hf-layout dir, an original llm-blender dir, or a hub id.

    The original layout gets `original_config` (default: `original_pairrm_config()`); its weights load with
    no missing keys allowed and only `*.position_ids` buffers tolerated as unexpected. The tokenizer's
    marker ids must equal the config's prefix ids.
    """
    from sparring.shared.models import torch_dtype

    directory = _resolve_dir(str(path))
    original = is_original_layout(directory)
    tok = _load_tokenizer(directory, original)
    try:
        if original:
            from safetensors.torch import load_model

            model = DebertaV2PairRM(original_config or original_pairrm_config())
            missing, unexpected = load_model(model, str(directory / "model.safetensors"), strict=False)
            bad = [k for k in unexpected if not k.endswith("position_ids")]
            if missing or bad:
                raise PairRMLoadError(f"{directory}: missing keys {missing[:5]}, unexpected keys {bad[:5]}")
        else:
            model = DebertaV2PairRM.from_pretrained(str(directory))
    except PairRMLoadError:
        raise
    except Exception as err:
        raise PairRMLoadError(f"cannot load PairRM model from {str(directory)!r}: {err}") from err
    for marker, field in zip(MARKERS, ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id", "cand_prefix_id"), strict=True):
        tid = tok.convert_tokens_to_ids(marker)
        if tid != getattr(model.config, field):
            raise PairRMLoadError(f"{directory}: tokenizer maps {marker} to {tid}, config {field} is "
                                  f"{getattr(model.config, field)}")
    model = model.to(device=device, dtype=torch_dtype(dtype, device)).eval()
    return model, tok


# --------------------------------------------------------------------------------------------------
# Input formatting


def clean_text(text: str) -> str:
    """User text as the ranker may see it: "[SEP]" -> " " (reference collator), marker strings removed."""
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


# --------------------------------------------------------------------------------------------------
# Aggregation


def scores_from_matrix(m: torch.Tensor) -> torch.Tensor:
    """s_i = (1/K) sum_j (M_ij - M_ji) for a [K, K] logit matrix with zero diagonal (sums to 0)."""
    return (m - m.T).sum(dim=1) / m.shape[0]


def win_matrix(scores: torch.Tensor) -> torch.Tensor:
    """SPPO's P_ij = sigmoid(s_i - s_j): diagonal 1/2, P + P^T = 1."""
    return torch.sigmoid(scores[:, None] - scores[None, :])


RefMode = Literal["first", "last", "longest", "shortest", "median_length", "anchor"]


def reference_index(candidates: Sequence[str], ref_mode: str) -> int:
    """Which candidate is the reference (llm-blender's rank_with_ref modes, lengths in characters)."""
    k = len(candidates)
    if ref_mode == "first":
        return 0
    if ref_mode == "last":
        return k - 1
    order = sorted(range(k), key=lambda i: (len(candidates[i]), i))
    if ref_mode == "longest":
        return order[-1]
    if ref_mode == "shortest":
        return order[0]
    if ref_mode == "median_length":
        return order[k // 2]
    raise ValueError(f"unknown ref_mode {ref_mode!r}")


# --------------------------------------------------------------------------------------------------
# The batched scorer


class PairRM:
    """A loaded ranker + tokenizer that scores many comparisons in few forwards."""

    def __init__(
        self,
        model: DebertaV2PairRM,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int = 32,
        limits: Limits = Limits(),
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.limits = limits
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id)
        self._ids = (model.cand_prefix_id, model.cand1_prefix_id, model.cand2_prefix_id)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str = "auto", max_batch_size: int = 32) -> PairRM:
        model, tok = load_pairrm(path, device=device, dtype=dtype)
        return cls(model, tok, max_batch_size=max_batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def logits(self, rows: Sequence[list[int]]) -> torch.Tensor:
        """f for each input row (float64, CPU), in order; length-sorted batches of <= max_batch_size."""

        def forward(chunk: list[int]) -> torch.Tensor:
            ids, mask = right_pad([rows[i] for i in chunk], self.pad_id)
            logit = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            return logit.double().cpu()  # (b,)

        out = torch.zeros(len(rows), dtype=torch.float64)
        return map_by_length([len(r) for r in rows], self.max_batch_size, forward, out)

    def compare(self, sources: Sequence[str], cands_a: Sequence[str], cands_b: Sequence[str],
                both_orders: bool = True) -> torch.Tensor:
        """f(x, a, b) - f(x, b, a) per item (llm-blender's default "[A,B]+[B,A]"), or f(x, a, b) alone."""
        rows: list[list[int]] = []
        for x, a, b in zip(sources, cands_a, cands_b, strict=True):
            src, (ia, ib) = encode_group(self.tokenizer, x, [a, b], self.limits)
            rows.append(pair_input_ids(src, ia, ib, *self._ids))
            if both_orders:
                rows.append(pair_input_ids(src, ib, ia, *self._ids))
        f = self.logits(rows)
        return f[0::2] - f[1::2] if both_orders else f

    def logit_matrices(self, groups: Sequence[tuple[str, Sequence[str]]]) -> list[torch.Tensor]:
        """M[i, j] = f(x, c_i, c_j) (zero diagonal) for every group, all ordered pairs in one batched pass."""
        rows: list[list[int]] = []
        index: list[tuple[int, int, int]] = []
        for g, (source, cands) in enumerate(groups):
            src, ids = encode_group(self.tokenizer, source, cands, self.limits)
            for i in range(len(cands)):
                for j in range(len(cands)):
                    if i != j:
                        rows.append(pair_input_ids(src, ids[i], ids[j], *self._ids))
                        index.append((g, i, j))
        mats = [torch.zeros(len(c), len(c), dtype=torch.float64) for _, c in groups]
        if rows:
            f = self.logits(rows)
            for (g, i, j), v in zip(index, f.tolist(), strict=True):
                mats[g][i, j] = v
        return mats

    def rank(self, groups: Sequence[tuple[str, Sequence[str]]]) -> list[torch.Tensor]:
        """Per-response scores s (sum 0) of every group, from the full K x K matrix."""
        return [scores_from_matrix(m) for m in self.logit_matrices(groups)]

    def rank_with_ref(self, groups: Sequence[tuple[str, Sequence[str]]], refs: Sequence[str | int]) -> list[torch.Tensor]:
        """reward_j = f(c_j, ref) - f(ref, c_j); `refs[g]` is a candidate index (its reward is 0, no forward)
        or a reference text (every candidate gets 2 forwards)."""
        rows: list[list[int]] = []
        index: list[tuple[int, int, int]] = []  # (group, candidate, sign)
        for g, ((source, cands), ref) in enumerate(zip(groups, refs, strict=True)):
            texts = list(cands) if isinstance(ref, int) else [*cands, ref]
            r = ref if isinstance(ref, int) else len(cands)
            src, ids = encode_group(self.tokenizer, source, texts, self.limits)
            for j in range(len(cands)):
                if j == r:
                    continue
                rows.append(pair_input_ids(src, ids[j], ids[r], *self._ids))
                index.append((g, j, 1))
                rows.append(pair_input_ids(src, ids[r], ids[j], *self._ids))
                index.append((g, j, -1))
        rewards = [torch.zeros(len(c), dtype=torch.float64) for _, c in groups]
        if rows:
            f = self.logits(rows)
            for (g, j, sign), v in zip(index, f.tolist(), strict=True):
                rewards[g][j] += sign * v
        return rewards


# --------------------------------------------------------------------------------------------------
# The judge


class PairRMJudge:
    """`Judge` backed by a PairRM checkpoint: scores s_i and SPPO's P_ij = sigmoid(s_i - s_j) per group.

    mode "full": all K(K-1) ordered comparisons. mode "reference": 2 forwards per response against a
    reference chosen by `ref_mode` (a candidate by position/length, or "anchor": the group's anchor text,
    falling back to the first candidate when a group has none).

    The ranker itself is position-biased, but both modes already evaluate both orders of every compared
    pair, so `order_sensitive` is False (the pool must not double the work).
    """

    order_sensitive = False

    def __init__(
        self,
        model: str | Path,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_size: int = 32,
        mode: Literal["full", "reference"] = "full",
        ref_mode: str = "first",
        name: str = "pairrm",
        scorer: PairRM | None = None,
    ) -> None:
        if mode not in ("full", "reference"):
            raise ValueError(f"mode must be 'full' or 'reference', got {mode!r}")
        if ref_mode not in ("first", "last", "longest", "shortest", "median_length", "anchor"):
            raise ValueError(f"unknown ref_mode {ref_mode!r}")
        self.name = name
        self.mode = mode
        self.ref_mode = ref_mode
        self.scorer = scorer or PairRM.load(model, device=device, dtype=dtype, max_batch_size=max_batch_size)

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        t0 = time.perf_counter()
        inputs = [(g.prompt, [c.text for c in g.completions]) for g in groups]
        if self.mode == "full":
            scores = self.scorer.rank(inputs)
        else:
            refs: list[str | int] = []
            for g, (_, cands) in zip(groups, inputs, strict=True):
                if self.ref_mode == "anchor":
                    refs.append(g.anchor.text if g.anchor is not None else 0)
                else:
                    refs.append(reference_index(cands, self.ref_mode))
            scores = self.scorer.rank_with_ref(inputs, refs)
        latency = (time.perf_counter() - t0) / max(1, len(groups))
        out = []
        for s in scores:
            if not bool(torch.isfinite(s).all()):
                raise ValueError(f"{self.name}: non-finite PairRM scores {s.tolist()}")
            out.append(
                Judgement(judge=self.name, scores=s.tolist(), win_matrix=win_matrix(s).tolist(), latency_s=latency)
            )
        return out


def build_pairrm_judge(model: str | Path, max_batch_size: int = 32, name: str = "pairrm") -> PairRMJudge:
    """`judge.kind: pairrm`: the full K x K judge on a PairRM checkpoint (dir or hub id); on the GPU in bfloat16
    when there is one, else on the CPU in float32."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return PairRMJudge(model, device=device, max_batch_size=max_batch_size, name=name)


