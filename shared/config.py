"""The one typed configuration tree of a run (`RunConfig`), loadable from YAML.

Every section forbids unknown keys, so a typo fails at startup with its dotted path
(`trainer.learning_rat: extra inputs are not permitted`). `judge` and `algorithm` are tagged unions: one
small model per judge kind (`JUDGE_CONFIGS`, by `kind`) and per objective (`OBJECTIVE_CONFIGS`, by
`objective`), each with only its own fields, so another kind's or objective's field is an unknown key too.
Cross-field rules live here as validators and raise; they never warn and continue. Environment variables for infrastructure (REDIS_URL, RAY_ADDRESS)
are read by `Settings`, not here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

# Judge kinds and prompt sources the core provides; tasks register more (`shared/tasks.py`).
CORE_JUDGE_KINDS = ("density_ratio", "none", "pairrm", "self_preference")
CORE_PROMPT_SOURCES = ("dsat", "hf", "jsonl")


class ConfigError(ValueError):
    """A configuration problem, with every offending dotted path in the message."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    path: str = Field(
        description="Hugging Face model id, local checkpoint directory, or the name of a model a task registers "
        "(`sparring tasks` lists them; built once and cached)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = float32 on CPU, bfloat16 on GPU"
    )

    @field_validator("path")
    @classmethod
    def _local_dir_exists(cls, path: str) -> str:
        if looks_local(path) and not Path(path).expanduser().is_dir():
            raise ValueError(f"model directory {path!r} does not exist")
        return path


def _registered(kind: str, name: str, core: tuple[str, ...], field: str) -> str:
    """`name` if the core or an installed task provides it; a ValueError naming the alternatives otherwise."""
    from sparring.shared import tasks

    if name in core or tasks.lookup(kind, name) is not None:
        return name
    known = sorted(set(core) | set(tasks.names(kind)))
    raise ValueError(f"unknown {field} {name!r}; known: {', '.join(known)}")


def looks_local(path: str) -> bool:
    """A path that can only mean a local directory (never a Hugging Face id)."""
    return path.startswith(("/", "./", "../", "~")) or os.sep + os.sep in path


# fields that moved: (section, old key) -> where they live now; a config that still uses one gets this message
MOVED_FIELDS = {
    ("generation", "cpus_per_generator"): "resources.generators.num_cpus",
    ("trainer", "cpus"): "resources.trainer.num_cpus",
}


def _refuse_moved(section: str, data: Any) -> Any:
    if isinstance(data, dict):
        moved = [f"{section}.{k} moved to {MOVED_FIELDS[section, k]}" for k in data if (section, k) in MOVED_FIELDS]
        if moved:
            raise ValueError("; ".join(moved))
    return data


class GenerationConfig(Section):
    backend: Literal["vllm", "transformers"] = Field("vllm", description="sampling engine")
    num_generators: int = Field(1, ge=1, description="generator actors (one engine each)")
    samples_per_prompt: int = Field(
        4, ge=1, description="K: responses sampled per prompt, all from one version (>= 2 unless DRIFT)"
    )
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(48, ge=1)
    prompts_per_request: int = Field(64, ge=1, description="prompts a generator takes from the stream at once")
    kv_cache_memory_mb: int = Field(128, ge=16, description="vLLM KV cache size (CPU backend)")
    engine_threads: int | None = Field(
        1, ge=1, description="compute threads per engine on CPU (None = the backend's own binding)"
    )
    max_model_len: int = Field(256, ge=16)
    engine_in_process: bool | None = Field(
        None,
        description="vLLM: run the engine core and its worker in the generator's own process (one process per "
        "engine: no spawned EngineCore/Worker, no busy-polling between them, weight updates handed over by "
        "reference) instead of vLLM's two processes; None = in-process on CPU with tensor_parallel_size 1, "
        "vLLM's processes on GPU (where they overlap scheduling with the GPU's work). workers/vllm_llm.py",
    )
    # vLLM engine options for GPUs (`vllm.LLM` keyword arguments of the same names; workers/vllm_llm.py)
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="vLLM: fraction of the GPU's memory the engine may use (weights + KV cache); None = the KV "
        "cache is kv_cache_memory_mb exactly. Set it on GPUs; with it kv_cache_memory_mb is not passed",
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="vLLM: GPUs one engine shards its model over (resources.generators.num_gpus must equal it)"
    )
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM: sequences one engine step batches; None = vLLM's")
    enable_prefix_caching: bool | None = Field(
        None, description="vLLM: reuse the KV cache of shared prompt prefixes (the K samples of a prompt); None = vLLM's"
    )
    enforce_eager: bool = Field(
        True,
        description="vLLM: no CUDA graphs / torch.compile warm-up (tiny and CPU models do not repay it); set false "
        "on GPUs for throughput",
    )

    @model_validator(mode="after")
    def _in_process_fits(self) -> GenerationConfig:
        if self.engine_in_process and self.tensor_parallel_size > 1:
            raise ValueError(
                f"generation.engine_in_process: true runs one worker; tensor_parallel_size {self.tensor_parallel_size} "
                "needs vLLM's own processes (engine_in_process: false or null)"
            )
        return self

    @model_validator(mode="after")
    def _budget_fits(self) -> GenerationConfig:
        # A prompt needs at least one token of its own: with max_new_tokens >= max_model_len no prompt fits,
        # every one would be dead-lettered at generation and the run would train on nothing.
        if self.max_new_tokens >= self.max_model_len:
            raise ValueError(
                f"generation.max_new_tokens ({self.max_new_tokens}) must be smaller than generation.max_model_len "
                f"({self.max_model_len}): the context must hold the prompt and the answer"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _refuse_moved("generation", data)


class UncertaintyConfig(Section):
    """MC-dropout uncertainty over the primary judge (UPO; `workers/judges/uncertainty.py`)."""

    mode: Literal["filter", "easy", "hard", "weight"] = Field(
        "filter",
        description="filter: drop pairs the estimator's majority vote disagrees with (or below min_prob / above "
        "max_bald); easy/hard: filter, then sample sample_rate of the kept pairs by 1 - BALD / BALD (UPO's "
        "sampler); weight: keep every pair with loss weight 1 - BALD/ln 2",
    )
    estimator: str = Field(
        description="pairwise ranker with dropout: a PairRM checkpoint (dir or hub id), or the name of a PairRM "
        "model a task registers",
    )
    passes: int = Field(10, ge=1, description="T stochastic passes per pair (UPO main.py: 10)")
    head_only: bool = Field(False, description="dropout only in the head: the encoder runs once (cheap, weaker)")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="override every dropout rate during the passes; None = the model's own"
    )
    min_prob: float = Field(0.5, ge=0.0, le=1.0, description="filter: drop pairs whose mean P(primary's order) is lower")
    max_bald: float | None = Field(None, ge=0.0, description="filter: drop pairs whose BALD (nats) is higher")
    sample_rate: float = Field(0.5, gt=0.0, le=1.0, description="easy/hard: fraction of kept pairs drawn (UPO 0.5)")
    batch_size: int = Field(32, ge=1, description="estimator rows per forward")
    seed: int = Field(0, description="seed of the dropout masks and the sampler (mixed with the batch's group ids)")


class JudgeCommon(Section):
    """The fields every judge kind shares; `JudgeConfig` is the union of the kinds below, by `kind`."""

    kind: str = Field(
        description="judge family, which selects the fields beside it: `density_ratio` between two models you "
        "name; `pairrm`, a PairRM checkpoint you name (`model`); `self_preference`, the policy judging its own "
        "samples through the A/B judge prompt (OSP; its weights follow every sync); `none` for recipes that "
        "need no judge; or a judge a task registers (`sparring tasks` lists them)",
    )
    num_judges: int = Field(1, ge=1)
    timeout_s: float = Field(
        60.0, gt=0.0, description="a judge call running longer fails its batch (retried, then dead-lettered)"
    )
    uncertainty: UncertaintyConfig | None = Field(
        None, description="compose: primary judge -> MC-dropout uncertainty filter/sampler/weights (UPO)"
    )
    cache_size: int = Field(
        100_000, ge=0, description="judge pool: cached scores by (prompt, response) hash (0 = no cache)"
    )
    # The judge judges with the run's policy (its weights follow every sync); a capability, not a name check.
    follows_policy: ClassVar[bool] = False


class PairRMJudgeConfig(JudgeCommon):
    kind: Literal["pairrm"] = Field("pairrm", description="a PairRM checkpoint you name (`model`)")
    model: str = Field(
        description="a PairRM checkpoint, a local directory (llm-blender/PairRM-hf layout or the original "
        "llm-blender layout) or a Hugging Face id such as llm-blender/PairRM-hf",
    )

    @model_validator(mode="after")
    def _local_dir_exists(self) -> PairRMJudgeConfig:
        if looks_local(self.model) and not Path(self.model).expanduser().is_dir():
            raise ValueError(f"judge.model directory {self.model!r} does not exist")
        return self


class DensityRatioJudgeConfig(JudgeCommon):
    kind: Literal["density_ratio"] = Field(
        "density_ratio", description="log p_A(y|x) - log p_B(y|x) between two models you name"
    )
    strong_model: str = Field(description="model A of log p_A(y|x) - log p_B(y|x)")
    weak_model: str = Field(description="model B")
    reduction: Literal["sum", "mean"] = Field("sum", description="density ratio over response tokens: sum or per-token mean")
    criteria: str | None = Field(None, description="optional criteria system prompt shared by both models")


class SelfPreferenceJudgeConfig(JudgeCommon):
    kind: Literal["self_preference"] = Field(
        "self_preference",
        description="the policy judging its own samples through the A/B judge prompt (OSP; its weights follow "
        "every sync)",
    )
    follows_policy: ClassVar[bool] = True


class NoJudgeConfig(JudgeCommon):
    kind: Literal["none"] = Field("none", description="no judge, for recipes that pair without judging (DRIFT)")

    @model_validator(mode="after")
    def _uncertainty_needs_a_primary(self) -> NoJudgeConfig:
        if self.uncertainty is not None:
            raise ValueError("judge.uncertainty wraps a primary judge; judge.kind=none has none")
        return self


class TaskJudgeConfig(JudgeCommon):
    kind: str = Field(description="a judge a task registers (`sparring tasks` lists them); it has no own fields")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind in CORE_JUDGE_KINDS:
            raise ValueError(f"judge kind {kind!r} is a core kind with its own config, not a task's")
        return _registered("judges", kind, CORE_JUDGE_KINDS, "judge kind")


# discriminator tag -> variant: each core kind (CORE_JUDGE_KINDS), and `task` for every kind a task registers
JUDGE_CONFIGS: dict[str, type[JudgeCommon]] = {
    "density_ratio": DensityRatioJudgeConfig,
    "none": NoJudgeConfig,
    "pairrm": PairRMJudgeConfig,
    "self_preference": SelfPreferenceJudgeConfig,
    "task": TaskJudgeConfig,
}


def _judge_tag(value: Any) -> str:
    """The `JUDGE_CONFIGS` tag of raw judge data or a judge config: the core kind, else `task` (which names
    an unknown or missing kind in its own error)."""
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in CORE_JUDGE_KINDS else "task"


JudgeConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(tag)] for tag, cls in JUDGE_CONFIGS.items())],  # noqa: UP007
    Discriminator(_judge_tag),
]
"""A judge: `{kind: pairrm, model: ...}`, `{kind: density_ratio, strong_model: ..., weak_model: ...}`,
`{kind: self_preference}`, `{kind: none}`, or `{kind: <a task's judge>}`; each with the common fields."""


# recipes that pair each fresh sample with a fixed answer of the prompt, so they need no judge: DRIFT's logged
# dissatisfying response (rejected), SPIN's reference answer (chosen)
ANCHORED_PAIRS = ("drift", "spin")
# objectives over unpaired labelled answers (`LabelledAnswer`: thumbs up/down on one answer), not pairs; the
# objective registry checks this list against the loss classes' `unpaired` flag
UNPAIRED_OBJECTIVES = ("bco", "kto")
# the recipes an unpaired objective takes labels from: each answer labelled once (workers/recipes/labels.py)
UNPAIRED_RECIPES = ("pointwise", "best_vs_worst", "ranked")


class AlgorithmCommon(Section):
    """What every objective's config shares: the objective's name and the recipe (pairing, DRIFT sampling,
    reference schedule). `AlgorithmConfig` is the union of the objective configs below, by `objective`.

    Each objective config holds exactly the hyperparameters its loss class takes (`workers/objectives/`;
    the objective registry checks that names and constructor parameters match), under one meaning per
    name (docs/algorithms.md, "Recipes"): `beta` is the DPO family's inverse KL strength wherever it is
    read; SPPO's step size is `eta` (= 1/beta of uclaml/SPPO and TRL sppo_hard); SimPO's `beta` is its own
    reward scale. Another objective's field is an unknown key.
    """

    objective: str = Field(
        description="loss over per-sequence log-probs (a name of the objective registry; it selects the fields "
        "beside it); default dpo"
    )
    pairs: Literal["best_vs_worst", "all_pairs", "ranked", "baseline", "drift", "spin", "pointwise"] = Field(
        "best_vs_worst",
        description="how a judged group of K becomes training pairs: best vs worst (SPPO, INPO, iterative DPO), "
        "every strictly preferred pair, OSP's ranked pairing (1st vs K-th, 2nd vs K-1-th, ...), OSP's "
        "baseline-anchored ranked pairing (`baseline`: every sample judged against sample 0 only, O(K) "
        "comparisons, ranked by P(y_i beats y_0), strengths composed through it), DRIFT's "
        "fresh sample (chosen) vs the logged dissatisfying response (rejected), or SPIN's reference answer "
        "(chosen) vs each fresh sample (rejected); the last two need no judge. `pointwise` builds no pairs: "
        "each sample is labelled up/down by the judge's score against `label_threshold` (unpaired objectives)",
    )
    label_threshold: float | None = Field(
        None,
        description="pairs=pointwise only (and required there): a sample whose judge score is >= this is "
        "desirable (thumbs up), below it undesirable; the judge's scalar score, or its win-matrix row mean",
    )
    drift_guided: bool = Field(
        True,
        description="drift: sample the positive from DRIFT's guided transcript (logged answer + user feedback + "
        "improvement instruction); False = from the original prompt (the paper's 'unguided' ablation)",
    )
    drift_warm_start_epochs: int = Field(
        0,
        ge=0,
        description="drift: before iteration 1, train this many epochs on the seed pairs (every DSAT log with a "
        "`satisfied` answer: it chosen, the logged response rejected; arXiv 2510.02341's warm start, 3 epochs in "
        "cacayaya/DRIFT config-seed.yaml); 0 = no warm start",
    )
    reference: Literal["iteration_start", "initial"] = Field(
        "iteration_start", description="reference policy: pi_t (iterative DPO/SPPO) or the fixed initial policy"
    )

    @model_validator(mode="after")
    def _pointwise_labels(self) -> AlgorithmCommon:
        pointwise = self.pairs == "pointwise"
        if pointwise != (self.label_threshold is not None):
            raise ValueError(
                "algorithm.label_threshold goes with pairs=pointwise, and pairs=pointwise needs it "
                f"(pairs={self.pairs}, label_threshold={self.label_threshold})"
            )
        if pointwise and self.objective not in UNPAIRED_OBJECTIVES:
            raise ValueError(
                f"pairs=pointwise labels single samples, which only unpaired objectives train on "
                f"({', '.join(UNPAIRED_OBJECTIVES)}), not objective={self.objective}"
            )
        if self.objective in UNPAIRED_OBJECTIVES and self.pairs not in UNPAIRED_RECIPES:
            raise ValueError(
                f"objective={self.objective} trains on labelled answers: pairs must be one of "
                f"{', '.join(UNPAIRED_RECIPES)} (pointwise labels, or a judged pair's chosen = desirable and "
                f"rejected = undesirable), not {self.pairs}, whose answers appear in several pairs"
            )
        if self.drift_warm_start_epochs and self.pairs != "drift":
            raise ValueError(
                f"algorithm.drift_warm_start_epochs={self.drift_warm_start_epochs} goes with pairs=drift (its seed "
                f"pairs come from DSAT logs), not pairs={self.pairs}"
            )
        if self.label_threshold is not None and not math.isfinite(self.label_threshold):
            raise ValueError(f"algorithm.label_threshold must be finite, got {self.label_threshold}")
        return self

    @classmethod
    def hyperparameter_names(cls) -> list[str]:
        """The objective's own fields: its loss class's constructor parameters, in declaration order."""
        return [name for name in cls.model_fields if name not in AlgorithmCommon.model_fields]

    def hyperparameters(self) -> dict[str, Any]:
        """The loss class's keyword arguments."""
        return {name: getattr(self, name) for name in self.hyperparameter_names()}


def _beta(note: str = "") -> Any:
    """The DPO family's `beta`, one meaning wherever it is read."""
    return Field(0.1, gt=0.0, description="inverse KL strength beta of the DPO family" + (f"; {note}" if note else ""))


def _eta(default: float = 1000.0, source: str = "uclaml/SPPO's scripts: beta 0.001 = eta 1000") -> Any:
    """The SPPO family's step size eta = 1/beta, one meaning wherever it is read; `source` names the default's."""
    return Field(default, gt=0.0, description=f"multiplicative-weights step size eta = 1/beta ({source})")


class DPOConfig(AlgorithmCommon):
    objective: Literal["dpo"] = "dpo"
    beta: float = _beta()


class CDPOConfig(AlgorithmCommon):
    objective: Literal["cdpo"] = "cdpo"
    beta: float = _beta()
    epsilon: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="label smoothing eps, the probability the label is wrong (TRL <= 0.28 label_smoothing); "
        "0.1 because 0 is plain DPO",
    )


class RDPOConfig(AlgorithmCommon):
    objective: Literal["rdpo"] = "rdpo"
    beta: float = _beta()
    flip_rate: float = Field(
        0.1, ge=0.0, lt=0.5, description="assumed probability eps that a label is flipped; 0.1 because 0 is plain DPO"
    )


class IPOConfig(AlgorithmCommon):
    objective: Literal["ipo"] = "ipo"
    beta: float = _beta("IPO's tau (regression target 1/(2 beta))")
    length_normalize: bool = Field(
        False,
        description="divide each log-prob by its completion length first (TRL's ipo); False = the paper's "
        "summed form, as SPPO's fork and INPO",
    )


class BCOPairConfig(AlgorithmCommon):
    objective: Literal["bco_pair"] = "bco_pair"
    beta: float = _beta()
    running_mean: bool = Field(
        True, description="shift rewards by the running mean delta (TRL <= 0.28); False = delta 0 (TRL >= 0.29)"
    )


class RPOConfig(AlgorithmCommon):
    objective: Literal["rpo"] = "rpo"
    beta: float = _beta()
    alpha: float = Field(
        1.0,
        ge=0.0,
        description="weight of the token-mean NLL on chosen completions (TRL rpo_alpha; paper 1.0; DRIFT uses "
        "0.001)",
    )


class SimPOConfig(AlgorithmCommon):
    objective: Literal["simpo"] = "simpo"
    beta: float = Field(
        2.0,
        gt=0.0,
        description="SimPO's own reward scale on the length-averaged log-prob (paper 2.0-10), not the DPO "
        "family's beta (no reference)",
    )
    gamma: float = Field(
        1.0,
        ge=0.0,
        description="target reward margin gamma, absolute (paper Llama-3-8B-Base: beta 2.0, gamma/beta 0.5)",
    )


class NPOConfig(AlgorithmCommon):
    objective: Literal["npo"] = "npo"
    beta: float = _beta()


class SPCEConfig(AlgorithmCommon):
    objective: Literal["spce"] = "spce"
    beta: float = _beta()


class SPPOConfig(AlgorithmCommon):
    objective: Literal["sppo"] = "sppo"
    eta: float = _eta()


class SPPOHardConfig(AlgorithmCommon):
    objective: Literal["sppo_hard"] = "sppo_hard"
    eta: float = _eta(
        10.0,
        "TRL's sppo_hard, trl/trainer/dpo_trainer.py loss_type='sppo_hard': its default beta 0.1 = eta 10, targets "
        "+-eta/2 = +-5 nats; SPPO's own eta 1000 would mean +-500",
    )


class SPPOSingleConfig(AlgorithmCommon):
    objective: Literal["sppo_single"] = "sppo_single"
    eta: float = _eta()


class INPOConfig(AlgorithmCommon):
    objective: Literal["inpo"] = "inpo"
    beta: float = _beta("INPO's code parameter, paper eta = 1/beta (paper default 0.0075)")
    ratio: float = Field(
        1.0 / 3.0,
        gt=0.0,
        lt=1.0,
        description="weight eta*tau of the fixed reference vs 1 - ratio of pi_t (paper default 1/3)",
    )

    @model_validator(mode="after")
    def _needs_fixed_reference(self) -> INPOConfig:
        # INPO mixes a FIXED pi_ref with pi_t (the iteration start); with reference=iteration_start both are
        # pi_t and `ratio` silently does nothing (h = D_theta - D_t; `workers/objectives/inpo.py`).
        if self.reference != "initial":
            raise ValueError("objective=inpo needs reference=initial (pi_ref is the fixed initial policy)")
        return self


class HingeConfig(AlgorithmCommon):
    objective: Literal["hinge"] = "hinge"
    beta: float = _beta("the inverse margin: pairs with beta * h > 1 give no gradient (TRL hinge)")


class NCAPairConfig(AlgorithmCommon):
    objective: Literal["nca_pair"] = "nca_pair"
    beta: float = _beta()


class APOZeroConfig(AlgorithmCommon):
    objective: Literal["apo_zero"] = "apo_zero"
    beta: float = _beta()


class APODownConfig(AlgorithmCommon):
    objective: Literal["apo_down"] = "apo_down"
    beta: float = _beta()


class DPOPConfig(AlgorithmCommon):
    objective: Literal["dpop"] = "dpop"
    beta: float = _beta()
    dpop_lambda: float = Field(
        50.0,
        ge=0.0,
        description="nats of margin charged per nat the chosen answer falls below the reference (Smaug, arXiv "
        "2402.13228; 50 as reimplementations default)",
    )


class LengthDPOConfig(AlgorithmCommon):
    objective: Literal["length_dpo"] = "length_dpo"
    beta: float = _beta()
    alpha: float = Field(
        ge=0.0,
        description="R-DPO's length coefficient, nats per token of (|y_w| - |y_l|) added to the scaled margin "
        "(arXiv 2403.19159 sweeps it; no default)",
    )


class ORPOConfig(AlgorithmCommon):
    objective: Literal["orpo"] = "orpo"
    beta: float = Field(
        0.1, gt=0.0, description="weight of the odds-ratio term against the NLL (the paper's lambda; TRL ORPOConfig beta 0.1)"
    )


class KTOConfig(AlgorithmCommon):
    objective: Literal["kto"] = "kto"
    beta: float = _beta("TRL KTOConfig beta 0.1")
    desirable_weight: float = Field(
        1.0, gt=0.0, description="weight of desirable (thumbs-up) examples' losses (TRL KTOConfig desirable_weight 1.0)"
    )
    undesirable_weight: float = Field(
        1.0, gt=0.0, description="weight of undesirable examples' losses (TRL KTOConfig undesirable_weight 1.0)"
    )


class BCOConfig(AlgorithmCommon):
    objective: Literal["bco"] = "bco"
    beta: float = _beta("TRL BCOConfig beta 0.1")


# objective name -> its config; `workers/objectives/registry.py` checks it against the loss classes
OBJECTIVE_CONFIGS: dict[str, type[AlgorithmCommon]] = {
    cls.model_fields["objective"].default: cls
    for cls in (
        DPOConfig,
        CDPOConfig,
        RDPOConfig,
        IPOConfig,
        BCOPairConfig,
        RPOConfig,
        SimPOConfig,
        NPOConfig,
        SPCEConfig,
        SPPOConfig,
        SPPOHardConfig,
        SPPOSingleConfig,
        INPOConfig,
        HingeConfig,
        NCAPairConfig,
        APOZeroConfig,
        APODownConfig,
        DPOPConfig,
        LengthDPOConfig,
        ORPOConfig,
        KTOConfig,
        BCOConfig,
    )
}


def _default_objective(value: Any) -> Any:
    return {"objective": "dpo", **value} if isinstance(value, dict) and "objective" not in value else value


AlgorithmConfig = Annotated[
    # sorted, as error messages list them; Union[] because `|` cannot spread a tuple
    Union[tuple(OBJECTIVE_CONFIGS[name] for name in sorted(OBJECTIVE_CONFIGS))],  # noqa: UP007
    Field(discriminator="objective"),
    BeforeValidator(_default_objective),
]
"""The objective and its hyperparameters beside the recipe fields, flat: `{objective: cdpo, beta: 0.1,
epsilon: 0.1, pairs: best_vs_worst}`; `objective` defaults to dpo."""

_ALGORITHM: TypeAdapter[Any] = TypeAdapter(AlgorithmConfig)
_JUDGE: TypeAdapter[Any] = TypeAdapter(JudgeConfig)


def algorithm_config(**fields: Any) -> AlgorithmConfig:
    """The objective config of `fields` (`objective` defaults to dpo); a ValidationError names bad fields."""
    return _ALGORITHM.validate_python(fields)


def judge_config(**fields: Any) -> JudgeConfig:
    """The judge config of `fields`, by `kind`; a ValidationError names bad fields."""
    return _JUDGE.validate_python(fields)


class LoraConfig(Section):
    """LoRA adapters trained with `peft` (`trainer.lora`); the base weights stay frozen. The reference of
    `algorithm.reference: initial` is the base model with the adapter disabled (no second model in memory).
    Every checkpoint `vN/` holds both exports: the merged model (an ordinary HF dir, what engines and
    recovery load) and the adapter alone in `vN/adapter/` (peft `save_pretrained`; what a resume loads)."""

    rank: int = Field(8, ge=1, description="adapter rank r (A: [r, in], B: [out, r])")
    alpha: float = Field(16.0, gt=0.0, description="scaling numerator: the update is (alpha / rank) * B @ A")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="module name suffixes that get adapters (peft `target_modules`), e.g. q_proj, v_proj, up_proj",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input (peft `lora_dropout`)")
    sync: Literal["auto", "adapter", "merged"] = Field(
        "auto",
        description="what a weight sync sends: adapter = the adapter tensors only (memory transport; vLLM engines "
        "serve them as versioned LoRA requests, other targets merge them onto the base weights); merged = the "
        "merged weights like a full-parameter run (where `storage.sync_delta` applies; an adapter sync is never a "
        "delta); auto = adapter with the memory transport, else merged (and merged, logged, where vLLM has no LoRA "
        "for the model's architecture: decided at run start, `workers.actors.resolve_lora_sync`)",
    )


class TrainerConfig(Section):
    learning_rate: float = Field(5e-7, gt=0.0)
    epochs: int = Field(1, ge=1, description="passes over an iteration's pairs (training stops after them)")
    schedule_epochs: float | None = Field(
        None,
        gt=0.0,
        description="epochs the learning-rate schedule spans (warmup and decay are laid over this many epochs' "
        "steps); None = `epochs`. SPPO's released checkpoints were scheduled for 18 and stopped after 1",
    )
    batch_size: int = Field(
        8, ge=1, description="the global batch: pairs per optimizer step, over every trainer rank and micro-batch"
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="pairs per forward/backward on one rank; batch_size must be a multiple of it (gradient "
        "accumulation = batch_size / micro_batch_size); None = batch_size (no accumulation)",
    )
    optimizer: Literal["adamw", "rmsprop", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    torch_threads: int = Field(1, ge=1, description="intra-op threads of the trainer process")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass (less memory, ~30% more compute)"
    )
    mixed_precision: Literal["auto", "off", "bf16"] = Field(
        "auto",
        description="bf16 autocast for forwards; auto = bf16 on CUDA, off on CPU. Log-softmax and loss "
        "arithmetic stay fp32 either way",
    )
    lora: LoraConfig | None = Field(
        None, description="train LoRA adapters (peft) instead of every parameter; None = full-parameter training"
    )
    logps_chunk_tokens: int | None = Field(
        256,
        description="completion positions per LM-head chunk in the log-prob pass: each chunk's [chunk, vocab] "
        "fp32 logits are recomputed in the backward, so peak memory grows with the chunk, not the batch "
        "(~2 MB per position at a 131k vocabulary); null = all positions at once (workers/logps.py)",
    )

    @field_validator("logps_chunk_tokens")
    @classmethod
    def _chunk(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"trainer.logps_chunk_tokens must be >= 1 or null (unchunked), got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "grad_accumulation" in data:
            raise ValueError(
                "trainer.grad_accumulation was replaced: batch_size is now the global batch (pairs per optimizer "
                "step) and micro_batch_size the pairs per forward; e.g. batch_size 8 + grad_accumulation 2 is "
                "batch_size 16 + micro_batch_size 8"
            )
        return _refuse_moved("trainer", data)

    @model_validator(mode="after")
    def _batches(self) -> TrainerConfig:
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ValueError(
                f"schedule_epochs ({self.schedule_epochs}) must be >= epochs ({self.epochs}): the schedule spans "
                "at least the epochs trained"
            )
        return self

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step on one rank (batch_size / micro_batch_size)."""
        return self.batch_size // (self.micro_batch_size or self.batch_size)


class ScheduleConfig(Section):
    iterations: int = Field(3, ge=1)
    prompts_per_iteration: int = Field(512, ge=1)
    prompt_schedule: Literal["random", "disjoint", "full"] = Field(
        "random",
        description="which training prompts an iteration dispatches: random = a fresh random draw of "
        "prompts_per_iteration each iteration (draws overlap); disjoint = the pool shuffled once and cut into "
        "consecutive chunks, one per iteration (SPPO, INPO, RLHFlow; needs iterations x prompts_per_iteration "
        "prompts); full = the whole pool every iteration (DRIFT)",
    )
    mode: Literal["sync", "async"] = Field(
        "sync",
        description="sync: iteration t generates, judges and trains on version t-1, one stage after another; "
        "async: the generators sample the next max_staleness batches while the trainer trains "
        "(workers/pipeline.py, docs/online.md)",
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="async mode, in policy versions (>= 1): how many batches the generators run ahead of the "
        "trainer, and the most versions a pair's answers may lag the trainer's weights when it is trained; an older "
        "pair is dropped and counted (pairs/stale_dropped/over_bound). Must be 0 in sync mode",
    )

    @model_validator(mode="after")
    def _staleness(self) -> ScheduleConfig:
        if self.mode == "sync" and self.max_staleness != 0:
            raise ValueError("max_staleness must be 0 in sync mode")
        if self.mode == "async" and self.max_staleness < 1:
            raise ValueError("schedule.mode async needs max_staleness >= 1 (policy versions the generators may run ahead)")
        if self.mode == "async" and self.prompt_schedule == "full":
            # the max_staleness + 1 batches before the first sync share version 0: a prompt is sampled once per
            # version, so every batch after the first would be empty
            raise ValueError("schedule.mode async cannot use prompt_schedule full (batches sampled by one version "
                             "would repeat every prompt); use disjoint or random")
        return self


class PromptsConfig(Section):
    source: str = Field(
        description="`jsonl`: a JSONL prompt file; `dsat`: a JSONL dissatisfaction log (DRIFT; schema in "
        "shared/dsat.py); `hf`: a Hugging Face dataset (a `save_to_disk` directory, parquet / arrow / jsonl files "
        "or a glob of them, or a hub id; needs `pip install 'sparring[datasets]'`); or a prompt source a task "
        "registers (`sparring tasks` lists them)",
    )
    path: str | None = Field(None, description="the JSONL file (jsonl, dsat), or the dataset (hf)")
    count: int = Field(512, ge=1, description="task sources that generate their prompts: how many")
    split: str = Field("train", min_length=1, description="hf: the split of a dataset directory or hub id")
    prompt_column: str | None = Field(
        None,
        description="hf: the column holding the prompt, a string or a conversation (a list of {role, content}); "
        "default `prompt` when the dataset has one",
    )
    messages_column: str | None = Field(
        None,
        description="hf: the column holding a conversation; trailing assistant turns are dropped, so a preference "
        "dataset's `chosen` (UltraFeedback) or `messages` works; default when there is no `prompt` column: "
        "`messages`, else `chosen`",
    )
    id_column: str | None = Field(
        None, description="hf: the column of prompt ids (strings or integers); default `id`, else `prompt_id`, else row-<n>"
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        return _registered("prompt_sources", source, CORE_PROMPT_SOURCES, "prompt source")

    @model_validator(mode="after")
    def _path(self) -> PromptsConfig:
        if self.source in ("jsonl", "dsat"):
            if not self.path:
                raise ValueError(f"source={self.source} needs a path")
            if not Path(self.path).expanduser().is_file():
                raise ValueError(f"prompt file {self.path!r} does not exist")
        hf_fields = [f for f in ("prompt_column", "messages_column", "id_column") if getattr(self, f) is not None]
        if self.source != "hf":
            if hf_fields or self.split != "train":
                raise ValueError(f"prompts.{(hf_fields or ['split'])[0]} applies to source=hf only")
            return self
        if not self.path:
            raise ValueError("source=hf needs a path: a dataset directory, data files, or a hub id")
        if self.prompt_column is not None and self.messages_column is not None:
            raise ValueError("source=hf takes prompt_column or messages_column, not both")
        from sparring.shared.hf_data import hf_dataset_is_local, hf_local_files

        if hf_dataset_is_local(self.path) and not hf_local_files(self.path):
            raise ValueError(f"dataset {self.path!r} does not exist (no such directory or file)")
        return self


class EvalConfig(Section):
    """Evaluation of every iteration's policy on held-out prompts (`workers/evaluation.py`)."""

    enabled: bool = Field(True, description="evaluate the policy after every iteration (and version 0 at start)")
    every: int = Field(
        1,
        ge=1,
        description="evaluate after every k-th iteration (iterations k, 2k, ...) and always after the last one; the "
        "others record no `eval/*` metrics. >1 saves time with many small versions (the online_dpo preset)",
    )
    num_prompts: int = Field(
        64,
        ge=1,
        description="held-out prompts, one temperature-1 sample each per policy version. Without `prompts`, this "
        "many prompts of the run's own pool are held out (never trained on), at most half of the pool",
    )
    prompts: PromptsConfig | None = Field(None, description="a separate held-out prompt pool; None = a split of the run's pool")
    judge: JudgeConfig | None = Field(
        None,
        description="the evaluation judge of the win rates (any judge kind, independent of training); None = the "
        "training judge's kind, unless that is `none` or judges with the policy (then no win rates)",
    )
    evaluators: list[str] = Field(
        default_factory=list, description="task evaluators run on the same samples (`sparring tasks` lists them)"
    )
    kl: bool = Field(
        True,
        description="estimate KL(policy || initial policy) on the held-out samples: mean over samples of the summed "
        "log-ratio, policy log-probs from the sampler, initial-policy log-probs from the trainer",
    )

    heldout_pairs: int = Field(
        64,
        ge=0,
        description="judged pairs held out of training for the per-iteration diagnostics (ranking accuracy, "
        "idealized ranking accuracy, chosen/rejected log-prob drift; workers/diagnostics.py); 0 = off",
    )

    @field_validator("evaluators")
    @classmethod
    def _known_evaluators(cls, evaluators: list[str]) -> list[str]:
        return [_registered("evaluators", name, (), "evaluator") for name in evaluators]

    @model_validator(mode="after")
    def _judge_has_a_kind(self) -> EvalConfig:
        if self.judge is not None and self.judge.kind == "none":
            raise ValueError("eval.judge.kind=none: leave eval.judge unset to use the training judge")
        return self


class StorageConfig(Section):
    run_dir: str = Field("runs", description="directory holding one sub-directory per run")
    redis_url: str | None = Field(None, description="overrides REDIS_URL; unset = private redis-server")
    stream_maxlen: int = Field(
        100_000,
        ge=100,
        description="approximate cap on each stream's length; at least one iteration's entries on any stream "
        "(validated): producers wait for room below it (backpressure) instead of overfilling a stream",
    )
    pairs_retention_iterations: int | None = Field(
        2,
        ge=1,
        description="keep the judged pairs of the newest N recorded iterations in Redis (pairs stream and its "
        "seen-set); older pairs move to the run directory's archived_pairs.jsonl, which exports and the API read with "
        "the stream (they see the whole run either way). None keeps every pair in Redis (Redis then grows by "
        "one iteration's pairs per iteration). Prompts and generations are pruned once a newer iteration is "
        "recorded",
    )
    history_window_iterations: int = Field(
        20,
        ge=1,
        description="iteration records and events of the newest N recorded iterations stay in Redis; the run's "
        "whole history is in its run directory (iterations.jsonl, events.jsonl), where every reader (API, CLI, "
        "dashboard, summary.json, resume, /metrics) finds the older ones",
    )
    weight_transport: Literal["memory", "object_store", "safetensors_dir"] = Field(
        "memory",
        description="how new weights reach generators: memory = checksummed buckets in the Ray object store "
        "loaded in place (no disk); object_store = the whole state staged as a safetensors dir by each engine; "
        "safetensors_dir = engines reload the trainer's checkpoint dir",
    )
    sync_bucket_mb: int = Field(
        512, ge=1, description="memory transport: bucket size in MiB (whole transformer blocks per bucket); an "
        "engine's extra memory during a sync is about one bucket",
    )  # fmt: skip
    sync_delta: bool = Field(
        False, description="memory transport: send only the transformer blocks whose checksum changed since "
        "the engines' version (frozen layers, partial training)",
    )  # fmt: skip
    sync_full_every: int = Field(
        8, ge=1, description="memory transport with sync_delta: a full sync every this many versions"
    )
    claim_idle_ms: int = Field(30_000, ge=100, description="pending entries idle this long are re-claimed")


STAGES = ("generate", "train", "sync", "eval")


class StageTimeouts(Section):
    """Deadlines of the controller's blocking stage calls, in seconds (docs/reliability.md, hangs). Past one, the
    stuck workers' Python stacks go to the run's log and events; a stuck trainer is restarted (it counts against
    `trainer_restarts`), a stuck engine is replaced during sync or evaluation (`worker_respawns_per_iteration`),
    and an iteration whose generation and judging overrun pauses the run with the reason. Defaults are generous:
    a hang is caught without cutting slow hardware short."""

    generate: float = Field(7200.0, gt=0.0, description="stages 2-3 of one iteration: every prompt generated and judged")
    train: float = Field(7200.0, gt=0.0, description="one trainer call (an iteration's training and checkpoint)")
    sync: float = Field(900.0, gt=0.0, description="one engine's load of the new weights")
    eval: float = Field(3600.0, gt=0.0, description="one evaluation call (sampling, judging, KL reference)")


class ResilienceConfig(Section):
    """What a run survives and for how long before it pauses or fails (docs/reliability.md)."""

    trainer_restarts: int = Field(
        3,
        ge=0,
        description="times a dead trainer is restarted from the last recorded checkpoint, per controller (a resumed "
        "run starts with the whole budget again); past it the run fails, resumable from that checkpoint",
    )
    restart_backoff_s: float = Field(
        2.0, ge=0.0, description="wait before the first trainer restart; doubles with each further restart"
    )
    worker_respawns_per_iteration: int = Field(
        8, ge=0, description="generator/judge respawns allowed per iteration; past it the run pauses with the reason"
    )
    max_deliveries: int = Field(
        3, ge=1, description="deliveries of one stream entry before it is dead-lettered alone (poison entries)"
    )
    redis_outage_s: float = Field(
        120.0, gt=0.0, description="how long every Redis client reconnects with back-off before giving up"
    )
    backpressure_timeout_s: float = Field(
        600.0,
        gt=0.0,
        description="how long a producer (dispatch, a generator, a judge) waits for room in a full stream before "
        "the run fails naming the stream and its consumer group",
    )
    stage_timeout_s: StageTimeouts = Field(
        default_factory=StageTimeouts,
        description="deadline of each blocking stage call, by stage (generate, train, sync, eval); one number sets "
        "every stage, a mapping with `default` sets the stages it does not name",
    )
    capacity_wait_s: float = Field(
        600.0,
        gt=0.0,
        description="how long a trainer restart waits for a live node with the trainer's resources (its node was "
        "lost and none like it is left); past it the run pauses with the reason (waiting for capacity)",
    )
    heartbeat_timeout_s: float = Field(
        600.0,
        gt=0.0,
        description="a generator or judge whose drain shows no progress (no heartbeat: one at every read of its "
        "input and after every batch) for this long is stuck: its stacks are logged, it is killed and replaced",
    )
    memory_growth_mb: float = Field(
        64.0, gt=0.0, description="RSS growth of one worker over `memory_growth_iterations` that warns (memory_growth)"
    )
    memory_growth_iterations: int = Field(
        3, ge=2, description="iterations in a row a worker's RSS must grow (by memory_growth_mb in all) to warn"
    )

    @field_validator("stage_timeout_s", mode="before")
    @classmethod
    def _one_or_per_stage(cls, value: Any) -> Any:
        """A number: every stage's deadline; a mapping: per-stage values, `default` filling the others."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dict.fromkeys(STAGES, value)
        if isinstance(value, dict) and "default" in value:
            rest = {k: v for k, v in value.items() if k != "default"}
            return {**dict.fromkeys(STAGES, value["default"]), **rest}
        return value


class CheckpointsConfig(Section):
    """Which recorded checkpoints stay on disk (the newest is always kept, with its optimizer state)."""

    keep_last: int = Field(2, ge=1, description="the newest N recorded checkpoints are kept whole")
    keep_every: int = Field(
        0,
        ge=0,
        description="also keep every M-th iteration's weights, without the trainer state (0: none); every other "
        "checkpoint older than the newest keep_last is deleted once an iteration is recorded",
    )


class WandbOptions(Section):
    """Weights & Biases (`report_to: [wandb]`); the API key comes from WANDB_API_KEY or `wandb login`."""

    project: str = Field("sparring", min_length=1, description="W&B project")
    entity: str | None = Field(None, description="W&B entity (team or user); None = the key's default entity")
    group: str | None = Field(None, description="W&B run group")
    tags: list[str] = Field(default_factory=list, description="W&B run tags")
    mode: Literal["online", "offline"] | None = Field(
        None,
        description="offline writes the run under <run dir>/wandb only (no network; `wandb sync` uploads it later); "
        "None = WANDB_MODE, else online",
    )
    init_timeout_s: float = Field(60.0, gt=0.0, description="give up starting W&B after this long (the run goes on)")


class MLflowOptions(Section):
    """MLflow (`report_to: [mlflow]`)."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking server or store URI; None = MLFLOW_TRACKING_URI, else a local SQLite store "
        "sqlite:///<storage.run_dir>/mlflow.db (artifacts beside it in mlartifacts/) shared by every run there",
    )
    experiment: str = Field("sparring", min_length=1, description="MLflow experiment (created if missing)")


class TrackersConfig(Section):
    """Options of the experiment trackers `report_to` names (workers/trackers.py). TensorBoard needs none: it
    writes event files to <run dir>/tensorboard."""

    run_name: str | None = Field(None, description="the run's name in every tracker; None = the run id")
    wandb: WandbOptions = Field(default_factory=WandbOptions)
    mlflow: MLflowOptions = Field(default_factory=MLflowOptions)


TrackerName = Literal["tensorboard", "wandb", "mlflow"]


class RoleResources(Section):
    """What one worker of a role asks Ray for (actor options `num_cpus`, `num_gpus`, `memory`, `resources`)."""

    num_cpus: float | None = Field(
        None,
        gt=0.0,
        description="Ray logical CPUs per worker; None = the role's default (generators 0.5, judges 0.25, "
        "trainer 1 per rank)",
    )
    num_gpus: float = Field(
        0.0,
        ge=0.0,
        description="GPUs per worker (per rank for the trainer); a fraction shares one GPU (two generators at 0.5); "
        "above 1 it must be whole. Ray sets the worker's CUDA_VISIBLE_DEVICES to what it assigned",
    )
    memory_gb: float | None = Field(
        None, gt=0.0, description="Ray memory reservation per worker in GiB (scheduling only, not a limit); None = none"
    )
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per worker, e.g. {trainer_node: 1} to land on nodes started with "
        "`ray start --resources '{\"trainer_node\": 1}'` (node labels for placement)",
    )
    cpu_cores: list[int] | None = Field(
        None,
        description="CPU core ids (of the worker's node) every worker of the role runs on, its child processes "
        "(a vLLM engine's) included: `os.sched_setaffinity` when it starts; None = any core. Ray schedules "
        "logical CPUs and pins nothing: on a small node where overlapped stages share the cores (async mode), "
        "give the engine and the trainer disjoint cores, e.g. generators [0] and trainer [1]",
    )

    @model_validator(mode="after")
    def _whole_gpus(self) -> RoleResources:
        if self.num_gpus > 1 and not float(self.num_gpus).is_integer():
            raise ValueError(f"num_gpus {self.num_gpus}: above 1 a worker takes whole GPUs (Ray's rule)")
        if self.cpu_cores is not None and (not self.cpu_cores or min(self.cpu_cores) < 0 or len(set(self.cpu_cores)) < len(self.cpu_cores)):
            raise ValueError(f"cpu_cores {self.cpu_cores}: a non-empty list of distinct core ids >= 0 (or null: any core)")
        bad = {k: v for k, v in self.custom.items() if v <= 0 or k in ("CPU", "GPU", "memory")}
        if bad:
            raise ValueError(f"custom resources {bad}: amounts must be > 0 and CPU/GPU/memory have their own fields")
        return self

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory_gb is None else int(self.memory_gb * 2**30)


class TrainerResources(RoleResources):
    num_ranks: int = Field(
        1,
        ge=1,
        description="trainer ranks: one Ray actor per device, FSDP2 over torch.distributed (gloo on CPU, nccl on "
        "CUDA), trainer.batch_size split over them; 1 = the plain single-process trainer",
    )

    @model_validator(mode="after")
    def _one_device_per_rank(self) -> TrainerResources:
        if self.cpu_cores is not None and self.num_ranks > 1:
            raise ValueError(f"cpu_cores {self.cpu_cores} with num_ranks {self.num_ranks}: cores pin a one-rank trainer only")
        if self.num_gpus > 1:
            raise ValueError(
                f"num_gpus {self.num_gpus}: a trainer rank uses one device; for more GPUs raise num_ranks"
            )
        return self


class ResourcesConfig(Section):
    """Per-role resources and placement (docs/architecture.md, "Resources and placement").

    `separate`: the trainer and the engines hold their own GPUs. `colocated`: they share GPUs: each trainer
    rank's GPU also holds num_generators / num_ranks engines (one placement-group bundle per rank), and the
    engines sleep (vLLM sleep mode) while the trainer trains; `RunConfig` checks that the shares fit one GPU.
    """

    placement: Literal["separate", "colocated"] = Field(
        "separate",
        description="separate: trainer and engines on different GPUs; colocated: each trainer rank shares its GPU "
        "with num_generators / num_ranks engines, which sleep (vLLM sleep mode) while the trainer trains",
    )
    engine_strategy: Literal["SPREAD", "PACK"] = Field(
        "SPREAD",
        description="Ray placement-group strategy of the generators' bundles: SPREAD over nodes (fault isolation) "
        "or PACK onto as few nodes as possible. The trainer's ranks are always PACKed",
    )
    generators: RoleResources = Field(default_factory=RoleResources)
    judges: RoleResources = Field(default_factory=RoleResources)
    trainer: TrainerResources = Field(default_factory=TrainerResources)

    @model_validator(mode="after")
    def _colocated_shares_gpus(self) -> ResourcesConfig:
        if self.placement == "colocated" and not (self.generators.num_gpus and self.trainer.num_gpus):
            raise ValueError(
                "placement colocated shares GPUs between the engines and the trainer: give both "
                f"generators.num_gpus (now {self.generators.num_gpus}) and trainer.num_gpus "
                f"(now {self.trainer.num_gpus}) a share, e.g. 0.5 each"
            )
        return self


class RunConfig(Section):
    """A complete, validated description of one run."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="run name (used in the run id)")
    preset: str | None = Field(
        None,
        description="paper recipe whose values fill every key this config leaves out (shared/presets/NAME.yaml)",
    )
    seed: int = 0
    policy: ModelConfig
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig = Field(description="who ranks a group's samples: `{kind: ...}` and that kind's fields")
    algorithm: AlgorithmConfig = Field(
        default_factory=DPOConfig,
        description="the objective (`objective` and its own hyperparameters) and the recipe (pairs, reference)",
    )
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    prompts: PromptsConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    checkpoints: CheckpointsConfig = Field(default_factory=CheckpointsConfig)
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="CPUs, GPUs, memory and placement of each role's workers"
    )
    report_to: list[TrackerName] = Field(
        default_factory=list,
        description="experiment trackers that get every iteration record (iteration = step) and the resolved config "
        "once: any of tensorboard, wandb, mlflow (`pip install 'sparring[trackers]'`); one that cannot start is "
        "reported with the fix and left out, never failing the run",
    )
    trackers: TrackersConfig = Field(default_factory=TrackersConfig, description="options of the `report_to` trackers")

    @field_validator("report_to")
    @classmethod
    def _each_tracker_once(cls, names: list[str]) -> list[str]:
        return list(dict.fromkeys(names))

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        from sparring.shared.presets import apply_preset, preset_names

        if not isinstance(data, dict):
            return data
        if data.get("preset") is not None and data["preset"] not in preset_names():
            return data  # `_known_preset` refuses it at `preset` (not at the top level, as a failed merge would)
        return apply_preset(data, _variant_fields)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str | None) -> str | None:
        from sparring.shared.presets import load_preset

        if name is not None:
            load_preset(name)  # a ValueError listing the known presets for any other name
        return name

    @property
    def lora_sync(self) -> Literal["adapter", "merged"] | None:
        """What a weight sync of this run sends with `trainer.lora`: `adapter` (the adapter tensors only) or
        `merged` (merged weights); None without LoRA. `auto` = adapter with the memory transport."""
        lora = self.trainer.lora
        if lora is None:
            return None
        if lora.sync == "auto":
            return "adapter" if self.storage.weight_transport == "memory" else "merged"
        return lora.sync

    @model_validator(mode="after")
    def _cross_field(self) -> RunConfig:
        drift = self.algorithm.pairs == "drift"
        anchored = self.algorithm.pairs in ANCHORED_PAIRS  # paired against a fixed answer, no judge needed
        if drift and self.prompts.source in ("jsonl", "hf"):
            raise ValueError("algorithm.pairs=drift needs a dissatisfaction-log prompt source (dsat or a task's), not jsonl")
        if self.prompts.source == "dsat" and not drift:
            raise ValueError("prompts.source=dsat holds dissatisfaction logs: they go with algorithm.pairs=drift")
        if self.algorithm.objective in UNPAIRED_OBJECTIVES and (
            self.resources.trainer.num_ranks > 1 or self.schedule.mode != "sync"
        ):
            raise ValueError(
                f"objective={self.algorithm.objective} (unpaired labels) trains on one trainer rank in sync mode: "
                f"resources.trainer.num_ranks {self.resources.trainer.num_ranks}, schedule.mode {self.schedule.mode} "
                "(sharded and async unpaired training are not built)"
            )
        if self.trainer.lora is not None and (
            self.resources.trainer.num_ranks > 1 or self.algorithm.objective in UNPAIRED_OBJECTIVES
        ):
            raise ValueError(
                f"trainer.lora trains on one trainer rank with a paired objective: resources.trainer.num_ranks "
                f"{self.resources.trainer.num_ranks}, algorithm.objective {self.algorithm.objective} (LoRA with FSDP2 "
                "and with unpaired objectives is not built)"
            )
        if self.trainer.lora is not None and self.trainer.lora.sync == "adapter":
            if self.storage.weight_transport != "memory":
                raise ValueError(
                    f"trainer.lora.sync=adapter ships the adapter in the memory transport's checksummed buckets: "
                    f"storage.weight_transport must be memory, got {self.storage.weight_transport} (or set "
                    "trainer.lora.sync=merged)"
                )
            if self.generation.backend == "vllm" and self.trainer.lora.rank > 512:
                raise ValueError(
                    f"trainer.lora.sync=adapter: vLLM serves LoRA ranks up to 512, trainer.lora.rank is "
                    f"{self.trainer.lora.rank} (or set trainer.lora.sync=merged)"
                )
        if self.judge.kind == "none" and not anchored:
            raise ValueError(
                "judge.kind=none only fits algorithm.pairs=drift or spin (other recipes rank with a judge)"
            )
        if not anchored and self.generation.samples_per_prompt < 2:
            raise ValueError(
                f"generation.samples_per_prompt must be >= 2 to build pairs, got {self.generation.samples_per_prompt}"
                " (only DRIFT and SPIN, which pair samples with a fixed answer, sample one)"
            )
        if self.resources.placement == "colocated":
            self._check_colocated()
        tp, engine_gpus = self.generation.tensor_parallel_size, self.resources.generators.num_gpus
        if tp > 1 and engine_gpus != tp:
            raise ValueError(
                f"generation.tensor_parallel_size {tp} shards each engine over {tp} GPUs: "
                f"resources.generators.num_gpus must be {tp}, got {engine_gpus}"
            )
        prompts, per_group = self.schedule.prompts_per_iteration, self.max_pairs_per_group
        if self.schedule.mode == "async":  # the batches in flight ahead of the trainer wait in the streams too
            prompts *= self.schedule.max_staleness + 1
        if self.storage.stream_maxlen < prompts * per_group:
            stream = "prompts stream" if per_group == 1 else (
                f"pairs stream (algorithm.pairs={self.algorithm.pairs}: up to {per_group} pairs from each of "
                f"{prompts} groups of generation.samples_per_prompt {self.generation.samples_per_prompt})"
            )  # fmt: skip
            raise ValueError(
                f"storage.stream_maxlen {self.storage.stream_maxlen} is smaller than one iteration's entries: "
                + ("" if self.schedule.mode == "sync" else
                   f"in async mode max_staleness + 1 = {self.schedule.max_staleness + 1} batches are in flight, so ")
                + f"schedule.prompts_per_iteration {prompts} writes up to {prompts * per_group} to the {stream}; "
                "an iteration's producers would wait for room its consumers only make after it (raise "
                f"stream_maxlen to at least {prompts * per_group} or lower prompts_per_iteration)"
            )
        return self

    def _check_colocated(self) -> None:
        """`resources.placement: colocated`: sync mode on vLLM engines, and one GPU bundle per trainer rank that
        holds the rank's share plus its engines' shares (workers/controller.py `place_workers`)."""
        r, g = self.resources, self.generation
        if self.schedule.mode != "sync":
            raise ValueError(
                f"resources.placement colocated needs schedule.mode sync, got {self.schedule.mode}: the engines "
                "sleep while the trainer trains, and async mode generates while it trains"
            )
        if g.backend != "vllm":
            raise ValueError(
                f"resources.placement colocated needs generation.backend vllm (its sleep mode frees the engines' "
                f"GPU memory while the trainer trains), got {g.backend}"
            )
        ranks = r.trainer.num_ranks
        if g.num_generators % ranks:
            raise ValueError(
                f"resources.placement colocated puts num_generators / num_ranks engines on each trainer rank's GPU: "
                f"generation.num_generators {g.num_generators} is not a multiple of resources.trainer.num_ranks {ranks}"
            )
        per_gpu = g.num_generators // ranks
        share = r.trainer.num_gpus + per_gpu * r.generators.num_gpus
        if share > 1 + 1e-9:
            raise ValueError(
                f"resources.placement colocated: one GPU would hold trainer.num_gpus {r.trainer.num_gpus:g} + "
                f"{per_gpu} engine(s) x generators.num_gpus {r.generators.num_gpus:g} = {share:g} GPUs (at most 1); "
                "lower the shares or the engines per rank (generation.num_generators / resources.trainer.num_ranks)"
            )

    @property
    def max_pairs_per_group(self) -> int:
        """The most training pairs the recipe builds from one group (workers/recipes/pairs.py); pointwise: its
        K labelled samples (workers/recipes/labels.py)."""
        k = self.generation.samples_per_prompt
        modes = {"best_vs_worst": 1, "ranked": k // 2, "baseline": k // 2, "all_pairs": k * (k - 1) // 2, "drift": k, "spin": k, "pointwise": k}
        return modes[
            self.algorithm.pairs
        ]

    @property
    def eval_judge(self) -> JudgeConfig | None:
        """The judge of the evaluation win rates: `eval.judge`, else the training judge unless it is `none` or
        judges with the policy (a policy judging itself is no independent measure)."""
        if self.eval.judge is not None:
            return self.eval.judge
        if self.judge.kind == "none" or self.judge.follows_policy:
            return None
        return self.judge.model_copy(update={"uncertainty": None})


def _variant_fields(section: str, values: dict[str, Any]) -> Collection[str] | None:
    """The keys of the variant that the top-level `section`'s raw `values` select (algorithm: by objective,
    judge: by kind); None for a section that is no union or a name no variant has (validation names it)."""
    if section == "algorithm":
        cls = OBJECTIVE_CONFIGS.get(_default_objective(values)["objective"])
    elif section == "judge":
        cls = JUDGE_CONFIGS[_judge_tag(values)]
    else:
        return None
    return None if cls is None else cls.model_fields


# Fields holding a tagged union: in an error's location pydantic puts the variant's tag after the field name.
_UNIONS: dict[str, tuple[str, Collection[str]]] = {
    "algorithm": ("objective", OBJECTIVE_CONFIGS),
    "judge": ("judge kind", JUDGE_CONFIGS),
}


def _user_location(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """An error location as the user writes it (without the union tags) and the section the last tag names."""
    parts: list[str] = []
    section = "this section"
    for p in loc:
        what, tags = _UNIONS.get(parts[-1], ("", ())) if parts else ("", ())
        if isinstance(p, str) and p in tags:
            section = "a task's judge kind" if p == "task" else f"{what} {p}"
            continue
        parts.append(str(p))
    return ".".join(parts) or "(top level)", section


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    lines = [f"{source}: {err.error_count()} problem(s)"]
    for e in err.errors():
        loc, section = _user_location(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")  # a validator's own message needs no pydantic prefix
        if e["type"] == "extra_forbidden":
            msg = f"unknown key (not a field of {section})"
        elif e["type"] == "union_tag_invalid":  # a discriminator value no variant has (`algorithm.objective`)
            ctx = e.get("ctx", {})
            field = str(ctx.get("discriminator", "")).strip("'")
            known = str(ctx.get("expected_tags", "")).replace("'", "")
            loc, msg = f"{loc}.{field}", f"unknown {field} {ctx.get('tag')!r}; known: {known}"
        value = e.get("input")
        shown = "" if isinstance(value, dict) or e["type"] == "missing" else f" (got {value!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config; `overrides` are dotted keys (`trainer.epochs: 2`) applied on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return parse_config(data, str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    node[leaf] = value
