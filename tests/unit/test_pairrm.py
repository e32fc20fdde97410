"""PairRM judge: checkpoint layout compatibility with llm-blender/PairRM-hf, input formatting, K x K
aggregation, batching, the judge protocol, and the config/registry wiring of `judge.kind: pairrm` and
`arena_pairrm`. (Agreement of the built arena PairRM with gold: tests/integration/test_pairrm_arena.py.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from sparring.shared.records import Completion, GenerationGroup
from sparring.tasks.arena import rules as arena
from sparring.workers.judges import pairrm as prm
from sparring.workers.judges import pairrm_train as pt

TEXTS = [
    "Tell me about otters.", "What do you know about foxes?", "glad you asked. otters are fun.",
    "people often talk about foxes. thanks for the question.", "it is a common question.", "well.",
    "happy to help. the the answer depends on many things.", "i see. hello there friend",
] * 5  # fmt: skip

# The state-dict names of a 2-layer PairRM-hf model (judges.md 1.5/1.6: `pretrained_model.*` of
# deberta-v3 with no absolute positions / token types, head at `head_layer.1` and `head_layer.4`).
LAYER_KEYS = [
    "attention.self.query_proj.weight", "attention.self.query_proj.bias",
    "attention.self.key_proj.weight", "attention.self.key_proj.bias",
    "attention.self.value_proj.weight", "attention.self.value_proj.bias",
    "attention.output.dense.weight", "attention.output.dense.bias",
    "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias",
]  # fmt: skip
EXPECTED_KEYS = sorted(
    [
        "pretrained_model.embeddings.word_embeddings.weight",
        "pretrained_model.embeddings.LayerNorm.weight",
        "pretrained_model.embeddings.LayerNorm.bias",
        "pretrained_model.encoder.rel_embeddings.weight",
        "pretrained_model.encoder.LayerNorm.weight",
        "pretrained_model.encoder.LayerNorm.bias",
        "head_layer.1.weight", "head_layer.1.bias", "head_layer.4.weight", "head_layer.4.bias",
    ]
    + [f"pretrained_model.encoder.layer.{i}.{k}" for i in range(2) for k in LAYER_KEYS]
)  # fmt: skip
# Hub config.json of PairRM-hf (judges.md 1.5): field -> value that must be there (the layout flags).
HUB_CONFIG_FIELDS = {
    "model_type": "deberta-v2", "relative_attention": True, "position_buckets": 256,
    "max_relative_positions": -1, "pos_att_type": ["p2c", "c2p"], "position_biased_input": False,
    "share_att_key": True, "norm_rel_ebd": "layer_norm", "type_vocab_size": 0, "layer_norm_eps": 1e-7,
    "pad_token_id": 0, "n_tasks": 1, "drop_out": 0.05,
}  # fmt: skip
PREFIX_FIELDS = ["source_prefix_id", "cand1_prefix_id", "cand2_prefix_id", "cand_prefix_id", "sep_token_id"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairrm")
    tok = pt.train_pairrm_tokenizer(TEXTS, 120, out)
    # initializer_range 0.1 (as the arena build): attention not uniform, so candidates get clearly different prefix states
    model = pt.tiny_pairrm(tok, seed=3, hidden_size=32, intermediate_size=64, num_hidden_layers=2, initializer_range=0.1)
    with torch.no_grad():  # O(1) logits, so the 1e-5 comparisons below are not trivially met
        for layer in (model.head_layer[1], model.head_layer[4]):
            layer.weight.normal_(0.0, 3.0 / layer.weight.shape[1] ** 0.5)
        model.head_layer[4].weight.mul_(10.0)  # random prefix states differ little between candidates
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def scorer(tiny_dir: Path) -> prm.PairRM:
    torch.set_num_threads(1)
    return prm.PairRM.load(tiny_dir, max_batch_size=7)


def test_state_dict_keys_match_pairrm_hf(tiny_dir: Path) -> None:
    model, _ = prm.load_pairrm(tiny_dir)
    assert sorted(model.state_dict().keys()) == EXPECTED_KEYS
    from safetensors import safe_open

    with safe_open(str(tiny_dir / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == EXPECTED_KEYS


def test_config_fields_match_pairrm_hf(tiny_dir: Path) -> None:
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["architectures"] == ["DebertaV2PairRM"]
    assert "auto_map" not in cfg
    for field, value in HUB_CONFIG_FIELDS.items():
        assert cfg[field] == value, field
    for field in PREFIX_FIELDS:
        assert isinstance(cfg[field], int)
    full = prm.original_pairrm_config()
    assert (full.vocab_size, full.hidden_size, full.num_hidden_layers, full.num_attention_heads) == (128005, 1024, 24, 16)
    assert (full.intermediate_size, full.source_prefix_id, full.cand1_prefix_id) == (4096, 128001, 128002)
    assert (full.cand2_prefix_id, full.cand_prefix_id) == (128003, 128004)


def test_round_trip_and_original_layout(tiny_dir: Path, scorer: prm.PairRM, tmp_path: Path) -> None:
    groups = [("Tell me about otters.", ["glad you asked.", "well.", "otters are fun."])]
    before = scorer.rank(groups)[0]
    again = prm.PairRM.load(tiny_dir, max_batch_size=7).rank(groups)[0]
    assert float(before.abs().max()) > 1e-4
    assert torch.equal(before, again)
    # The original llm-blender layout: RankerConfig JSON + model.safetensors, config built in code.
    from safetensors.torch import save_model

    orig = tmp_path / "orig"
    orig.mkdir()
    scorer.tokenizer.save_pretrained(orig)
    save_model(scorer.model, str(orig / "model.safetensors"))
    (orig / "config.json").write_text(json.dumps({"ranker_type": "pairranker", "source_maxlength": 1224}))
    assert prm.is_original_layout(orig)
    model, tok = prm.load_pairrm(orig, original_config=scorer.model.config)
    for k, v in scorer.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # NOTE: scores are not compared here: for this layout the tokenizer is loaded as DebertaV2Tokenizer,
    # which rebuilds our tiny PreTrainedTokenizerFast differently (open issue, see the report).


def test_row_layout_and_truncation(scorer: prm.PairRM) -> None:
    tok = scorer.tokenizer
    ids = prm.format_pair(tok, "Tell me about otters.", "glad you asked.", "well.")
    toks = tok.convert_ids_to_tokens(ids)
    assert toks[:2] == ["[CLS]", prm.SOURCE_PREFIX]
    assert [t for t in toks if t in ("[CLS]", "[SEP]") or t in prm.MARKERS] == [
        "[CLS]", prm.SOURCE_PREFIX, "[SEP]", "[CLS]", prm.CAND1_PREFIX, "[SEP]", "[CLS]", prm.CAND2_PREFIX, "[SEP]",
    ]  # fmt: skip
    # limits: source <= 1224 (right side cut), each candidate <= (2048 - len(source)) // 2
    long_src = " ".join(["otters"] * 3000) + " END"
    long_cand = " ".join(["glad"] * 3000)
    src, (a, b) = prm.encode_group(tok, long_src, [long_cand, "well."])
    assert len(src) == 1224 and src[-1] == tok.sep_token_id
    assert tok.convert_tokens_to_ids("▁END") not in src  # the end of the source is what gets cut
    assert len(a) == (2048 - 1224) // 2 == 412 and a[-1] == tok.sep_token_id
    short_src, (a2, _) = prm.encode_group(tok, "Tell me about otters.", [long_cand, "x"])
    assert len(a2) == (2048 - len(short_src)) // 2
    assert len(prm.format_pair(tok, long_src, long_cand, long_cand)) <= 2048
    # small custom limits behave the same way
    lim = prm.Limits(source=6, candidate=4, total=14)
    s, (c,) = prm.encode_group(tok, long_src, [long_cand], lim)
    assert len(s) == 6 and len(c) == (14 - 6) // 2


def test_marker_stripping(scorer: prm.PairRM) -> None:
    assert prm.clean_text("a [SEP] b") == "a   b"
    assert prm.clean_text("x <|source|>y<|candidate1|><|candidate2|><|candidate|>z") == "x yz"
    assert prm.clean_text("<|sou<|candidate|>rce|>") == ""  # removal that forms a new marker
    tok = scorer.tokenizer
    ids = prm.format_pair(tok, "hi <|candidate1|> [SEP]", "a <|source|>", "b <|candidate2|> <|candidate|>")
    for marker in (prm.SOURCE_PREFIX, prm.CAND1_PREFIX, prm.CAND2_PREFIX):
        assert ids.count(tok.convert_tokens_to_ids(marker)) == 1
    assert ids.count(tok.convert_tokens_to_ids(prm.CAND_PREFIX)) == 0
    assert ids.count(tok.sep_token_id) == 3
    scorer.logits([ids])  # runs (a duplicate marker would raise)
    with pytest.raises(ValueError, match="prefix tokens"):
        scorer.logits([ids + [tok.convert_tokens_to_ids(prm.CAND1_PREFIX)]])


def _cands(k: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [arena.corpus_response("otters", rng) for _ in range(k)]


def test_kxk_properties(scorer: prm.PairRM) -> None:
    cands = _cands(5, 0)
    m = scorer.logit_matrices([("Tell me about otters.", cands)])[0]
    assert torch.all(m.diagonal() == 0)
    s = prm.scores_from_matrix(m)
    assert abs(float(s.sum())) < 1e-9
    p = prm.win_matrix(s)
    assert torch.allclose(p.diagonal(), torch.full((5,), 0.5, dtype=p.dtype))
    assert torch.allclose(p + p.T, torch.ones(5, 5, dtype=p.dtype))
    perm = [3, 0, 4, 1, 2]
    s_perm = scorer.rank([("Tell me about otters.", [cands[i] for i in perm])])[0]
    assert torch.allclose(s_perm, s[perm], atol=1e-5)


def test_batched_equals_per_pair_loop(scorer: prm.PairRM) -> None:
    groups = [("Tell me about otters.", _cands(4, 1)), ("Describe foxes.", _cands(3, 2)), ("Say hi.", ["ok."])]
    mats = scorer.logit_matrices(groups)
    one = prm.PairRM(scorer.model, scorer.tokenizer, max_batch_size=1)
    for (x, cands), m in zip(groups, mats, strict=True):
        for i, a in enumerate(cands):
            for j, b in enumerate(cands):
                if i != j:
                    ref = one.logits([prm.format_pair(scorer.tokenizer, x, a, b)])[0]
                    assert abs(float(m[i, j]) - float(ref)) < 1e-5 * max(1.0, abs(float(ref)))  # fp32 padding noise
    # compare = f(a, b) - f(b, a); rank_with_ref(j) = f(c_j, ref) - f(ref, c_j)
    x, cands = groups[0]
    diff = scorer.compare([x] * 3, cands[1:], [cands[0]] * 3)
    assert torch.allclose(diff, mats[0][1:, 0] - mats[0][0, 1:], atol=1e-5)
    reward = scorer.rank_with_ref([groups[0]], [0])[0]
    assert reward[0] == 0 and torch.allclose(reward[1:], diff, atol=1e-5)
    anchor = scorer.rank_with_ref([(x, cands[1:])], [cands[0]])[0]
    assert torch.allclose(anchor, diff, atol=1e-5)


def _group(prompt: str, texts: list[str], anchor: str | None = None) -> GenerationGroup:
    comps = [Completion(index=i, text=t, token_ids=[1, i], logprobs=None) for i, t in enumerate(texts)]
    return GenerationGroup(
        run_id="r", iteration=0, policy_version=0, prompt_id=prompt, prompt=prompt, prompt_token_ids=[1],
        completions=comps, engine_id="e", seed=0, latency_s=0.0,
        anchor=None if anchor is None else Completion(index=0, text=anchor, token_ids=[1], logprobs=None),
    )  # fmt: skip


def test_judge_protocol(tiny_dir: Path, scorer: prm.PairRM) -> None:
    groups = [_group("Tell me about otters.", _cands(4, 3)), _group("Describe foxes.", _cands(2, 4), anchor="ok.")]
    judge = prm.PairRMJudge(tiny_dir, max_batch_size=5)
    assert judge.name == "pairrm" and judge.order_sensitive is False
    out = judge.judge(groups)
    assert len(out) == 2 and [len(j.scores or []) for j in out] == [4, 2]
    expected = scorer.rank([(g.prompt, [c.text for c in g.completions]) for g in groups])
    for j, s in zip(out, expected, strict=True):
        assert torch.allclose(torch.tensor(j.scores, dtype=torch.float64), s, atol=1e-5)  # fp32, other batches
        assert j.win_matrix is not None and all(abs(j.win_matrix[i][i] - 0.5) < 1e-12 for i in range(len(s)))
    ref = prm.PairRMJudge(tiny_dir, mode="reference", ref_mode="anchor", scorer=scorer).judge(groups)
    assert [len(j.scores or []) for j in ref] == [4, 2]
    assert ref[0].scores is not None and ref[0].scores[0] == 0.0  # no anchor: the first response is the reference
    with pytest.raises(ValueError):
        prm.PairRMJudge(tiny_dir, mode="bubble")  # type: ignore[arg-type]


def test_training_step_learns_a_rule(scorer: prm.PairRM) -> None:
    """A few steps of the pairwise loss push f toward the candidate that says "glad"."""
    tok = scorer.tokenizer
    model = pt.tiny_pairrm(tok, seed=5, hidden_size=32, intermediate_size=64, hidden_dropout_prob=0.0)
    rows = []
    for i in range(8):
        good, bad = f"glad you asked {i}.", f"well {i}."
        rows.append(pt.PairExample(prm.format_pair(tok, "Tell me about otters.", good, bad), 1))
        rows.append(pt.PairExample(prm.format_pair(tok, "Tell me about otters.", bad, good), -1))
    losses = pt.train_pairwise(model, rows, int(tok.pad_token_id), steps=30, batch_size=16, warmup_steps=1,
                                learning_rate=1e-2)
    assert losses[-1] < losses[0] * 0.5
    f = prm.PairRM(model, tok).compare(["Describe foxes."], ["glad you asked."], ["well."])
    assert float(f[0]) > 0



def _run_yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text("policy:\n  path: arena\nprompts:\n  source: arena\n" + text)
    return p


def test_config_pairrm_kinds_validate(tiny_dir: Path, tmp_path: Path) -> None:
    from sparring.shared.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="judge.model: Field required"):
        load_config(_run_yaml(tmp_path, "judge:\n  kind: pairrm\n"))
    with pytest.raises(ConfigError, match="judge.model directory '/nope/pairrm' does not exist"):
        load_config(_run_yaml(tmp_path, "judge:\n  kind: pairrm\n  model: /nope/pairrm\n"))
    with pytest.raises(ConfigError, match=r"judge.model: unknown key \(not a field of a task's judge kind\)"):
        load_config(_run_yaml(tmp_path, f"judge:\n  kind: arena_pairrm\n  model: {tiny_dir}\n"))
    cfg = load_config(_run_yaml(tmp_path, f"judge:\n  kind: pairrm\n  model: {tiny_dir}\n"))
    assert (cfg.judge.kind, cfg.judge.model) == ("pairrm", str(tiny_dir))
    hub = load_config(_run_yaml(tmp_path, "judge:\n  kind: pairrm\n  model: llm-blender/PairRM-hf\n"))
    assert hub.judge.model == "llm-blender/PairRM-hf"  # a hub id is resolved when the judge is built
    assert load_config(_run_yaml(tmp_path, "judge:\n  kind: arena_pairrm\n")).judge.kind == "arena_pairrm"
    example = load_config(Path(__file__).resolve().parents[2] / "examples" / "arena-sppo-pairrm.yaml")
    assert (example.judge.kind, example.preset, example.prompts.source) == ("arena_pairrm", "sppo", "arena")


def test_registry_builds_pairrm_from_a_local_dir(tiny_dir: Path, scorer: prm.PairRM) -> None:
    from sparring.shared.config import judge_config
    from sparring.workers.judges.registry import build_judge

    judge = build_judge(judge_config(kind="pairrm", model=str(tiny_dir)))
    assert isinstance(judge, prm.PairRMJudge) and judge.name == "pairrm"
    cands = ["glad you asked. otters are fun.", "well.", "people often talk about otters.", "i see. i see."]
    (out,) = judge.judge([_group("Tell me about otters.", cands)])
    s = torch.tensor(out.scores, dtype=torch.float64)
    assert torch.allclose(s, scorer.rank([("Tell me about otters.", cands)])[0], atol=1e-5)  # fp32, other batches
    assert float(s.abs().max()) > 1e-3 and abs(float(s.sum())) < 1e-9
    p = torch.tensor(out.win_matrix, dtype=torch.float64)
    assert torch.allclose(p, torch.sigmoid(s[:, None] - s[None, :]), atol=1e-12)


CONVERSATION = [
    {"role": "system", "content": "answer in french"},
    {"role": "user", "content": "Tell me about otters."}, {"role": "assistant", "content": "glad you asked."},
    {"role": "user", "content": "What do you know about foxes?"}, {"role": "assistant", "content": "well."},
    {"role": "user", "content": "Describe foxes."},
]  # fmt: skip


def test_conversation_input_follows_llm_blender() -> None:
    """llm-blender's get_pair_from_conv: its instruction + "USER: ...\\nAssistant: <Response i>" per user turn;
    candidates "<Response i>: ..." over every assistant turn, the judged answer last; system text first."""
    x = prm.ranker_input("Describe foxes.", CONVERSATION)
    assert x.source == (
        "answer in french\n" + prm.CONVERSATION_INSTRUCTION + "USER: Tell me about otters.\nAssistant: <Response 1>\n"
        "USER: What do you know about foxes?\nAssistant: <Response 2>\nUSER: Describe foxes.\nAssistant: <Response 3>"
    )
    assert x.candidate("ok.") == "<Response 1>: glad you asked.\n<Response 2>: well.\n<Response 3>: ok."
    # one user turn keeps the single-turn format; a system turn goes before it
    assert prm.ranker_input("hi", None) == prm.RankerInput("hi")
    one = prm.ranker_input("hi", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert one.source == "be brief\nhi" and one.candidate("ok.") == "ok."


def test_judge_sees_the_conversation_and_its_system_turn(tiny_dir: Path, scorer: prm.PairRM) -> None:
    """Two groups ending in the same user turn with different system instructions get different inputs and
    scores (the old judge ranked both on the last user turn alone)."""
    judge = prm.PairRMJudge(tiny_dir, scorer=scorer)
    base = _group("Describe foxes.", ["glad you asked. otters are fun.", "well.", "i see. hello there friend"])
    french = base.model_copy(update={"messages": CONVERSATION})
    german = base.model_copy(update={"messages": [{"role": "system", "content": "answer in german"}, *CONVERSATION[1:]]})
    seen: list[list[tuple[str, list[str]]]] = []
    rank = scorer.rank

    def spy(groups):  # type: ignore[no-untyped-def]
        seen.append([(x, list(c)) for x, c in groups])
        return rank(groups)

    scorer.rank = spy  # type: ignore[method-assign]
    try:
        s_fr, s_de, s_base = (judge.judge([g])[0].scores for g in (french, german, base))
    finally:
        del scorer.rank
    (fr,), (de,), (plain,) = seen
    assert fr[0] != de[0] and fr[0].startswith("answer in french\n") and plain == ("Describe foxes.", [c.text for c in base.completions])
    assert fr[1][1] == "<Response 1>: glad you asked.\n<Response 2>: well.\n<Response 3>: well."
    assert s_fr != s_de and s_fr != s_base
