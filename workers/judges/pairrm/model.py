"""The PairRM model (`DebertaV2PairRM`), its configs and loss, and `load_pairrm`.

`DebertaV2PairRM` is a `DebertaV2PreTrainedModel` with attributes `pretrained_model` (a `DebertaV2Model`)
and `head_layer` = Dropout -> Linear(2H -> H) -> Tanh -> Dropout -> Linear(H -> n_tasks), so its
state-dict keys are exactly the hub's (`pretrained_model.*`, `head_layer.1.*`, `head_layer.4.*`) and its
config reads the hub's extra fields (`n_tasks`, `drop_out`, `source_prefix_id`, `cand1_prefix_id`,
`cand2_prefix_id`, `cand_prefix_id`, `sep_token_id`). A local copy of PairRM-hf loads with
`DebertaV2PairRM.from_pretrained`; the original llm-blender directory (RankerConfig JSON, no transformers
config) loads through `load_pairrm`, which builds the DeBERTa-v3-large config in code
(`original_pairrm_config`) and loads `model.safetensors` into it.

f(x, a, b) is the logit of one forward: mean over tasks of head([h_src; h_a]) - head([h_src; h_b]), h at
each segment's prefix token; f > 0 means a is better.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import DebertaV2Config, DebertaV2Model
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2PreTrainedModel

from sparring.workers.judges.pairrm.inputs import MARKERS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# The hub config.json of llm-blender/PairRM-hf: DeBERTa-v3-large plus the PairRM fields.
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
    tok.truncation_side = "right"  # the tokenizer default llm-blender runs with: a long source loses its end
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
