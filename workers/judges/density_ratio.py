"""Density-ratio judges: score(y | x) = log p_strong(y | x) - log p_weak(y | x) over the response tokens.

One computation backs several judges:

- **CDR** (Customizable Density Ratios, arXiv 2411.02481; the CDR repo
  gx-ai-architect/CDR-preference-annotation): strong = a better-aligned LM (DPO / instruct), weak = a
  less-aligned one (SFT / base), optionally customised with a criteria system prompt and good/bad exemplars.
- **SPA / Selfie** (arXiv 2406.04412): the same judge with strong = the *current* policy and weak = the
  *initial* policy (`spa_judge`). Making the strong model's weights follow every weight sync is left
  for later; today the judge scores with the checkpoint it was built from.

Contract:

- **The same context for both models.** The context is rendered once, with the *strong* model's
  tokenizer and chat template (as the CDR repo does), and both models score the same ids. Strong and weak
  must share a vocabulary; the constructor checks it.
- **The exact prompt/response boundary.** Each scored row is `context_ids + response_ids` and only the
  `response_ids` positions count (`scored_tokens` exposes them; `decode(response_ids)` is the response).
  Response ids are either the sampler's own token ids (`response_tokens="ids"`, exact when the judge
  shares the policy's tokenizer, e.g. SPA) or the response text re-tokenised with the judge's tokenizer
  (`"text"`, the default, safe for any pair of judge models).
- **EOS.** A completion that ended on a stop token (`finish_reason == "stop"`; the sampler strips it and
  records it as `Completion.stop_token_id`) gets that token appended and scored when `score_eos` is true,
  as the trainer appends it to train on where to stop. The ratio then also rewards termination. With
  several stop ids (Gemma's `<eos>`/`<end_of_turn>`, Llama-3's `<|eot_id|>`/`<|eom_id|>`/...) the token
  scored is the one sampled: the sampler's id itself with `response_tokens="ids"` (one tokenizer), and with
  `"text"` that id if it is one of the judge's own stop ids (`stop_token_ids`), else the judge's EOS
  (the judge's vocabulary may differ from the policy's); a completion without a recorded stop id gets EOS.
- **Reduction.** `"sum"` is the CDR repo's `log_ratio_reward`; `"mean"` divides by the number of scored tokens
  (Red-Hat-AI-Innovation-Team/reward_hub `drsow.py`, `avg_drsow_reward`). The sum favours short responses when
  the per-token ratio is negative and long ones when it is positive.

Customisation (after the CDR repo's `src/prompts.py`): `criteria` becomes a system turn (or, for chat
templates that drop system turns, as the tiny test template does, a paragraph before the user message);
`exemplars` are rendered as "User: ... Good Assistant: ... Bad Assistant: ..." blocks before the query, and
the query is followed by `exemplar_suffix` ("\\nGood Assistant:"). Everything goes through the chat template
with the generation prompt, so the response tokens sit where the model expects an assistant turn. A
multi-turn group (`GenerationGroup.messages`) is judged in its whole conversation, system turns included
(`render_context`).

Two scoring backends behind one `LogProbScorer` protocol, which must agree (tests check < 1e-3 on the
tiny test models): `TransformersScorer` (one right-padded batch per chunk through
`sparring.workers.logps.sequence_logps`) and `VLLMScorer` (`prompt_logprobs=0` on context+response,
summing the response positions). The judge returns per-response scores and, optionally, the K x K
matrix P[i][j] = sigmoid(scale * (s_i - s_j)).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sparring.shared.models import check_model_path, load_tokenizer, text_token_ids
from sparring.shared.records import Completion, GenerationGroup, Judgement
from sparring.workers.vllm_llm import build_vllm_llm, shutdown_vllm_llm

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Reduction = Literal["sum", "mean"]
ResponseTokens = Literal["text", "ids"]
Backend = Literal["transformers", "vllm"]

FINISH_STOP = "stop"
DEFAULT_EXEMPLAR_SUFFIX = "\nGood Assistant:"


@dataclass(frozen=True)
class Exemplar:
    """One preference exemplar shown to both models before the query (CDR's `fs_domain_icl` blocks)."""

    prompt: str
    good: str
    bad: str
    explanation: str = ""

    def render(self) -> str:
        text = f"User: {self.prompt}\nGood Assistant: {self.good}\nBad Assistant: {self.bad}\n"
        if self.explanation:
            text += f"Bad Assistant Response Explanation: {self.explanation}\n"
        return text


@dataclass(frozen=True)
class ScoredTokens:
    """One row to score: the rendered context and the response ids whose log-probs count."""

    context_ids: list[int]
    response_ids: list[int]


class LogProbScorer(Protocol):
    """Teacher-forced log-probs of response tokens given a context, under one causal LM."""

    model_path: str

    def response_logps(self, rows: Sequence[ScoredTokens]) -> list[float]:
        """Per row, the SUM over `response_ids` of log p(token | context, earlier response tokens)."""
        ...


# --------------------------------------------------------------------------------------------------
# Backends


class TransformersScorer:
    """Scores rows with a transformers causal LM through `sequence_logps` (fp32 sums, as the trainer)."""

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 32,
        model: PreTrainedModel | None = None,
    ) -> None:
        from sparring.shared.models import load_causal_lm

        self.model_path = model_path
        self.batch_size = batch_size
        self.model = model if model is not None else load_causal_lm(model_path, dtype=dtype, device=device)
        self.model.eval()
        pad = getattr(self.model.config, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.model.config, "eos_token_id", 0)
        self.pad_token_id = int(pad[0] if isinstance(pad, list) else pad)

    def response_logps(self, rows: Sequence[ScoredTokens]) -> list[float]:
        import torch

        from sparring.workers.batching import map_by_length
        from sparring.workers.logps import collate_sequences, sequence_logps

        _check_rows(rows)

        def forward(idx: list[int]) -> torch.Tensor:
            batch = collate_sequences(
                [rows[i].context_ids for i in idx], [rows[i].response_ids for i in idx], self.pad_token_id
            )
            return sequence_logps(self.model, batch)[0]  # (b,) float32

        # length-sorted chunks cut padding; results are scattered back to the input order
        lengths = [len(r.context_ids) + len(r.response_ids) for r in rows]
        with torch.inference_mode():
            out = torch.zeros(len(rows), dtype=torch.float32)
            out = map_by_length(lengths, self.batch_size, forward, out)
        return [float(v) for v in out.tolist()]


class VLLMScorer:
    """Scores rows with a `vllm.LLM` via `prompt_logprobs=0` on `context + response` ids.

    vLLM returns, for every prompt position but the first, the log-prob of the actual token there given all
    tokens before it; the response's log-prob is the sum over positions >= len(context). Build it inside a
    function or actor (vLLM's spawn pitfall: vLLM docs, design/multiprocessing.md); `cpu_threads` is the
    engine's thread budget (`sparring.workers.vllm_llm`).
    """

    def __init__(
        self,
        model_path: str,
        *,
        max_model_len: int = 256,
        kv_cache_memory_bytes: int = 64 * 2**20,
        dtype: str = "float32",
        seed: int = 0,
        cpu_threads: int | str | None = None,
        llm: Any | None = None,
    ) -> None:
        self.model_path = check_model_path(model_path)
        self.max_model_len = max_model_len
        if llm is None:
            t0 = time.perf_counter()
            llm = build_vllm_llm(
                self.model_path,
                max_model_len=max_model_len,
                kv_cache_memory_bytes=kv_cache_memory_bytes,
                dtype=dtype,
                seed=seed,
                cpu_threads=cpu_threads,
            )
            log.info("vLLM scorer for %s started in %.1f s", model_path, time.perf_counter() - t0)
        self.llm: Any | None = llm

    def close(self) -> None:
        """Shut the engine's processes down (idempotent); the scorer is unusable afterwards."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        shutdown_vllm_llm(llm, f"vLLM scorer for {self.model_path}")

    def response_logps(self, rows: Sequence[ScoredTokens]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        _check_rows(rows)
        if not rows:
            return []
        if self.llm is None:
            raise RuntimeError(f"vLLM scorer for {self.model_path} is closed")
        for r in rows:
            if len(r.context_ids) + len(r.response_ids) >= self.max_model_len:  # +1 generated token
                raise ValueError(
                    f"row of {len(r.context_ids) + len(r.response_ids)} tokens does not fit "
                    f"max_model_len {self.max_model_len} (one position is kept for the generated token)"
                )
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        inputs = [TokensPrompt(prompt_token_ids=[*r.context_ids, *r.response_ids]) for r in rows]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        result: list[float] = []
        for r, out in zip(rows, outputs, strict=True):
            plps = out.prompt_logprobs
            ids = [*r.context_ids, *r.response_ids]
            if plps is None or len(plps) != len(ids):
                raise RuntimeError(
                    f"vLLM returned {None if plps is None else len(plps)} prompt logprobs "
                    f"for {len(ids)} prompt tokens"
                )
            total = 0.0
            for pos in range(len(r.context_ids), len(ids)):
                total += float(plps[pos][ids[pos]].logprob)
            result.append(total)
        return result


def _check_rows(rows: Sequence[ScoredTokens]) -> None:
    for r in rows:
        if not r.context_ids:
            raise ValueError("a scored row needs a non-empty context (the first token has no log-prob)")


def build_scorer(backend: Backend, model_path: str, **kwargs: Any) -> LogProbScorer:
    """A scorer for `model_path` on `backend`; `kwargs` go to the backend's constructor."""
    if backend == "transformers":
        return TransformersScorer(model_path, **kwargs)
    if backend == "vllm":
        return VLLMScorer(model_path, **kwargs)
    raise ValueError(f"unknown density-ratio backend {backend!r} (expected 'transformers' or 'vllm')")


# --------------------------------------------------------------------------------------------------
# Context rendering


def render_context(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[Mapping[str, str]],
    criteria: str | None = None,
    exemplars: Sequence[Exemplar] = (),
    exemplar_suffix: str = DEFAULT_EXEMPLAR_SUFFIX,
) -> list[int]:
    """Context ids for `prompt` through the chat template, with the generation prompt.

    `prompt` is a user message or a whole conversation ending in a user turn (a multi-turn pool line): the
    conversation is rendered whole, its system and earlier turns included. `criteria` becomes a system turn
    first; when the conversation opens with a system turn of its own, the two are joined into that one turn
    (criteria first), since many chat templates accept a single leading system turn. If the template drops
    system turns (its rendering with one equals its rendering without), every system turn's text is put
    before the first user message instead, so neither the criteria nor a conversation's own system
    instruction is ever silently lost. `exemplars` are prepended to the last user message and
    `exemplar_suffix` appended to it. With no criteria, no exemplars and no system turn, this is exactly
    `sparring.shared.models.prompt_token_ids(tokenizer, prompt)`.
    """
    from sparring.shared.models import prompt_token_ids

    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise ValueError("a conversation to judge needs a user turn")
    if exemplars:
        last = messages[users[-1]]
        last["content"] = "".join(e.render() for e in exemplars) + f"User: {last['content']}{exemplar_suffix}"
    if criteria:
        if messages[0].get("role") == "system":
            messages[0]["content"] = f"{criteria}\n\n{messages[0]['content']}"
        else:
            messages.insert(0, {"role": "system", "content": criteria})
    systems = [m["content"] for m in messages if m.get("role") == "system"]
    if systems and not _template_renders_system(tokenizer):
        messages = [m for m in messages if m.get("role") != "system"]
        first = next(m for m in messages if m.get("role") == "user")
        first["content"] = "\n\n".join([*systems, first["content"]])
    return prompt_token_ids(tokenizer, messages)


def _template_renders_system(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's own chat rendering keeps a system turn (asked, never guessed from an attribute:
    Mistral's tokenizer renders chats without a `chat_template`)."""
    marker = "zq-system-probe-zq"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": marker}, {"role": "user", "content": "hi"}],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:  # no template at all, or one that raises on a system role
        return False
    return marker in str(text)


# --------------------------------------------------------------------------------------------------
# The judge


class DensityRatioJudge:
    """score(y | x) = log p_strong(y | x) - log p_weak(y | x) over response tokens (`sum` or per-token `mean`).

    `strong` and `weak` are `LogProbScorer`s (any backend, possibly different ones); `tokenizer` is the
    strong model's tokenizer, used to render the context and (with `response_tokens="text"`) the response.
    """

    order_sensitive = False

    def __init__(
        self,
        strong: LogProbScorer,
        weak: LogProbScorer,
        tokenizer: PreTrainedTokenizerBase,
        *,
        reduction: Reduction = "sum",
        criteria: str | None = None,
        exemplars: Sequence[Exemplar] = (),
        exemplar_suffix: str = DEFAULT_EXEMPLAR_SUFFIX,
        response_tokens: ResponseTokens = "text",
        score_eos: bool = True,
        win_matrix: bool = True,
        win_matrix_scale: float = 1.0,
        name: str = "density_ratio",
        stop_token_ids: Sequence[int] = (),
    ) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if response_tokens not in ("text", "ids"):
            raise ValueError(f"response_tokens must be 'text' or 'ids', got {response_tokens!r}")
        if not math.isfinite(win_matrix_scale) or win_matrix_scale <= 0:
            raise ValueError(f"win_matrix_scale must be a positive number, got {win_matrix_scale}")
        self.strong = strong
        self.weak = weak
        self.tokenizer = tokenizer
        self.reduction: Reduction = reduction
        self.criteria = criteria
        self.exemplars = tuple(exemplars)
        self.exemplar_suffix = exemplar_suffix
        self.response_tokens: ResponseTokens = response_tokens
        self.score_eos = score_eos
        self.emit_win_matrix = win_matrix
        self.win_matrix_scale = win_matrix_scale
        self.name = name
        eos = tokenizer.eos_token_id
        self.eos_token_id: int | None = None if eos is None else int(eos)
        # the judge model's own stop ids (generation_config's eos list); a recorded stop id in it is scored
        self.stop_token_ids: frozenset[int] = frozenset(int(t) for t in stop_token_ids) | (
            frozenset() if self.eos_token_id is None else frozenset({self.eos_token_id})
        )
        self._contexts: dict[str | tuple[tuple[str, str], ...], list[int]] = {}

    # -- token layout ---------------------------------------------------------------------------------

    def context_ids(self, prompt: str | Sequence[Mapping[str, str]]) -> list[int]:
        """The rendered context both models see for `prompt`, a user message or a whole conversation (cached
        per conversation)."""
        key = prompt if isinstance(prompt, str) else tuple((m["role"], m["content"]) for m in prompt)
        ids = self._contexts.get(key)
        if ids is None:
            ids = render_context(self.tokenizer, prompt, self.criteria, self.exemplars, self.exemplar_suffix)
            if len(self._contexts) < 4096:
                self._contexts[key] = ids
        return list(ids)

    def response_ids(self, completion: Completion) -> list[int]:
        """The ids scored for one completion (response tokens, plus the stop token it ended on if
        `score_eos`: see the module docstring)."""
        if self.response_tokens == "ids":
            ids = [int(t) for t in completion.token_ids]
        else:
            ids = text_token_ids(self.tokenizer, completion.text)
        stop = self.stop_id(completion)
        if self.score_eos and completion.finish_reason == FINISH_STOP and stop is not None and (not ids or ids[-1] != stop):
            ids.append(stop)
        return ids

    def stop_id(self, completion: Completion) -> int | None:
        """The stop token scored after a completion that stopped: the one its sampler drew when this
        judge's vocabulary has it (see the module docstring), else the judge's EOS."""
        sampled = completion.stop_token_id
        if sampled is not None and (self.response_tokens == "ids" or int(sampled) in self.stop_token_ids):
            return int(sampled)
        return self.eos_token_id

    def scored_tokens(self, group: GenerationGroup) -> list[ScoredTokens]:
        """One row per completion of `group`, in order: what both models score."""
        ctx = self.context_ids(group.messages or group.prompt)  # the whole conversation when multi-turn
        return [ScoredTokens(ctx, self.response_ids(c)) for c in group.completions]

    # -- scoring --------------------------------------------------------------------------------------

    def score_rows(self, rows: Sequence[ScoredTokens]) -> list[float]:
        """Reduced log-ratio of each row (0.0 for a row with no response tokens)."""
        live = [i for i, r in enumerate(rows) if r.response_ids]
        strong = self.strong.response_logps([rows[i] for i in live])
        weak = self.weak.response_logps([rows[i] for i in live])
        out = [0.0] * len(rows)
        for i, s, w in zip(live, strong, weak, strict=True):
            ratio = s - w
            out[i] = ratio / len(rows[i].response_ids) if self.reduction == "mean" else ratio
        return out

    def judge(self, groups: Sequence[GenerationGroup]) -> list[Judgement]:
        t0 = time.perf_counter()
        rows: list[ScoredTokens] = []
        spans: list[tuple[int, int]] = []
        for g in groups:
            group_rows = self.scored_tokens(g)
            spans.append((len(rows), len(rows) + len(group_rows)))
            rows.extend(group_rows)
        scores = self.score_rows(rows)  # one batch for every group: both models run once per call
        latency = (time.perf_counter() - t0) / max(1, len(groups))
        out = []
        for a, b in spans:
            s = scores[a:b]
            matrix = win_matrix(s, self.win_matrix_scale) if self.emit_win_matrix else None
            out.append(Judgement(judge=self.name, scores=s, win_matrix=matrix, latency_s=latency))
        return out

    def from_scores(self, scores: Sequence[float]) -> Judgement:
        """Pointwise (base.py): the judgement of responses with these log-ratios (the pool caches scores)."""
        matrix = win_matrix(scores, self.win_matrix_scale) if self.emit_win_matrix else None
        return Judgement(judge=self.name, scores=list(scores), win_matrix=matrix)


def win_matrix(scores: Sequence[float], scale: float = 1.0) -> list[list[float]]:
    """P[i][j] = sigmoid(scale * (s_i - s_j)); P[i][i] = 0.5 (SPPO's Bradley-Terry matrix)."""

    def sigmoid(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))

    return [[sigmoid(scale * (si - sj)) for sj in scores] for si in scores]


# --------------------------------------------------------------------------------------------------
# Factories


def check_same_vocab(
    a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, what: str = "strong/weak"
) -> None:
    """Raise unless two tokenizers map every token to the same id (a density ratio needs that)."""
    if a.get_vocab() != b.get_vocab():
        raise ValueError(f"{what} tokenizers differ; a density ratio needs both models on one vocabulary")


def build_density_ratio_judge(
    strong_model: str,
    weak_model: str,
    *,
    backend: Backend = "transformers",
    reduction: Reduction = "sum",
    criteria: str | None = None,
    exemplars: Sequence[Exemplar] = (),
    response_tokens: ResponseTokens = "text",
    score_eos: bool = True,
    win_matrix_scale: float = 1.0,
    name: str = "density_ratio",
    scorer_kwargs: dict[str, Any] | None = None,
) -> DensityRatioJudge:
    """A CDR judge from two checkpoints (local dirs or hub ids); both load on `backend`."""
    from sparring.workers.checkpoints import eos_token_ids

    tok = load_tokenizer(strong_model)
    check_same_vocab(tok, load_tokenizer(weak_model))
    kw = dict(scorer_kwargs or {})
    stop_ids = eos_token_ids(strong_model) if Path(strong_model).is_dir() else set()
    return DensityRatioJudge(
        build_scorer(backend, strong_model, **kw),
        build_scorer(backend, weak_model, **kw),
        tok,
        reduction=reduction,
        criteria=criteria,
        exemplars=exemplars,
        response_tokens=response_tokens,
        score_eos=score_eos,
        win_matrix_scale=win_matrix_scale,
        name=name,
        stop_token_ids=sorted(stop_ids),
    )


def spa_judge(
    current_policy: str, initial_policy: str, *, backend: Backend = "transformers", **kwargs: Any
) -> DensityRatioJudge:
    """SPA / Selfie self-annotation: log pi_t(y|x) - log pi_0(y|x), summed (kingdy2002/SPA `run_self.py`).

    The policy and its initial checkpoint share the sampler's tokenizer, so the sampler's own token ids
    are scored (`response_tokens="ids"`). The current policy's weights are read once, here; following
    weight syncs is not implemented yet. Other keyword arguments go to `build_density_ratio_judge`;
    raises ValueError if the two checkpoints' tokenizers have different vocabularies.
    """
    kwargs.setdefault("reduction", "sum")
    kwargs.setdefault("response_tokens", "ids")
    kwargs.setdefault("name", "spa")
    return build_density_ratio_judge(current_policy, initial_policy, backend=backend, **kwargs)
