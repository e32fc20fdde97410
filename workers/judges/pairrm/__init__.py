"""PairRM: a DeBERTa-v2 pairwise ranker (checkpoint-compatible with `llm-blender/PairRM-hf`) as a judge.

Upstream: yuchenlin/LLM-Blender `llm_blender/pair_ranker/` (`pairrm.py::DebertaV2PairRM`, `collator.py`,
`ranker.py`) and the hub configs of `llm-blender/PairRM` and `llm-blender/PairRM-hf`; measurements:
docs/judges.md, "PairRM". One concern per module, each read top to bottom:

- `inputs.py`  marker tokens, length limits and the token ids of one comparison f(x, a, b) (no torch);
- `model.py`   `DebertaV2PairRM` (the hub's state-dict keys and config fields), its configs and loss, and
               `load_pairrm` (a PairRM-hf dir, the original llm-blender dir, or a hub id);
- `scorer.py`  `PairRM`: many comparisons in few length-sorted forwards, K x K logit matrices, reference
               mode, and their aggregation into scores and SPPO's win matrix;
- `judge.py`   `PairRMJudge` (the `Judge`) and `build_pairrm_judge` (`judge.kind: pairrm`).

Every public name is re-exported here, so `from sparring.workers.judges.pairrm import X` and
`from sparring.workers.judges import pairrm as prm; prm.X` work as they did for the single module.
"""

from __future__ import annotations

from sparring.workers.judges.pairrm.inputs import (
    CAND1_PREFIX,
    CAND2_PREFIX,
    CAND_PREFIX,
    CANDIDATE_MAX_LENGTH,
    CONVERSATION_INSTRUCTION,
    MARKERS,
    MAX_LENGTH,
    SOURCE_MAX_LENGTH,
    SOURCE_PREFIX,
    Limits,
    RankerInput,
    clean_text,
    encode_group,
    format_pair,
    pair_input_ids,
    ranker_input,
)
from sparring.workers.judges.pairrm.judge import PairRMJudge, build_pairrm_judge
from sparring.workers.judges.pairrm.model import (
    PAIRRM_FIELDS,
    PAIRRM_HF_CONFIG,
    DebertaV2PairRM,
    PairRMLoadError,
    is_original_layout,
    load_pairrm,
    original_pairrm_config,
    pairrm_config,
    pairwise_loss,
)
from sparring.workers.judges.pairrm.scorer import (
    DEFAULT_LIMITS,
    PairRM,
    RefMode,
    reference_index,
    scores_from_matrix,
    win_matrix,
)

__all__ = [
    "CAND1_PREFIX",
    "CAND2_PREFIX",
    "CANDIDATE_MAX_LENGTH",
    "CAND_PREFIX",
    "CONVERSATION_INSTRUCTION",
    "DEFAULT_LIMITS",
    "MARKERS",
    "MAX_LENGTH",
    "PAIRRM_FIELDS",
    "PAIRRM_HF_CONFIG",
    "SOURCE_MAX_LENGTH",
    "SOURCE_PREFIX",
    "DebertaV2PairRM",
    "Limits",
    "PairRM",
    "PairRMJudge",
    "PairRMLoadError",
    "RankerInput",
    "RefMode",
    "build_pairrm_judge",
    "clean_text",
    "encode_group",
    "format_pair",
    "is_original_layout",
    "load_pairrm",
    "original_pairrm_config",
    "pair_input_ids",
    "pairrm_config",
    "pairwise_loss",
    "ranker_input",
    "reference_index",
    "scores_from_matrix",
    "win_matrix",
]
