"""RunConfig: YAML loading, unknown keys and bad values fail with their dotted path."""

import json
from pathlib import Path

import pytest

from sparring.shared.config import CORE_JUDGE_KINDS, JUDGE_CONFIGS, ConfigError, RunConfig, load_config

DEMO = Path(__file__).resolve().parents[2] / "tasks" / "arena" / "demo.yaml"  # the arena task's `demo` (package data)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# what every config must name: the model, the judge and the prompts
BASE = "policy:\n  path: arena\njudge:\n  kind: arena_oracle\nprompts:\n  source: arena\n"


def write(tmp_path: Path, text: str, base: str = BASE) -> Path:
    """A run.yaml of `base` with `text`'s top-level sections replacing base's."""
    import yaml

    p = tmp_path / "run.yaml"
    if not base:
        p.write_text(text)
        return p
    data = yaml.safe_load(base)
    data.update(yaml.safe_load(text) or {})
    p.write_text(yaml.safe_dump(data))
    return p


def test_demo_config_loads() -> None:
    cfg = load_config(DEMO)
    assert cfg.schedule.iterations == 3
    assert cfg.generation.samples_per_prompt == 4


def test_typo_key_names_its_dotted_path(tmp_path: Path) -> None:
    p = write(tmp_path, "trainer:\n  learning_rat: 0.001\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "trainer.learning_rat" in str(e.value)
    assert "unknown key" in str(e.value)


def test_invalid_value_names_field_and_value(tmp_path: Path) -> None:
    p = write(tmp_path, "generation:\n  samples_per_prompt: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "generation.samples_per_prompt" in str(e.value)
    assert "got 1" in str(e.value)


def test_missing_model_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    p = write(tmp_path, f"policy:\n  path: {missing}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "policy.path" in str(e.value) or "policy" in str(e.value)
    assert str(missing) in str(e.value)


def test_hub_id_is_accepted_without_network() -> None:
    cfg = RunConfig.model_validate(
        {"policy": {"path": "Qwen/Qwen2-0.5B"}, "judge": {"kind": "pairrm", "model": "llm-blender/PairRM-hf"},
         "prompts": {"source": "jsonl", "path": __file__}}  # fmt: skip
    )
    assert cfg.policy.path == "Qwen/Qwen2-0.5B"


def test_model_judge_and_prompts_are_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "", base=""))
    assert all(f"{key}: Field required" in str(e.value) for key in ("policy", "judge", "prompts"))


def test_unknown_task_components_name_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"judge.kind: .*unknown judge kind 'arena_orakel'; known: .*arena_oracle.*pairrm"):
        load_config(write(tmp_path, "judge:\n  kind: arena_orakel\n"))
    with pytest.raises(ConfigError, match=r"prompts.source: .*unknown prompt source 'arenna'; known: arena, arena_dsat, arena_heldout, arena_sft, dsat, hf, jsonl"):
        load_config(write(tmp_path, "prompts:\n  source: arenna\n"))
    with pytest.raises(ConfigError, match=r"eval.evaluators.*unknown evaluator 'gold'; known: arena_gold"):
        load_config(write(tmp_path, "eval:\n  evaluators: [gold]\n"))


def test_eval_judge_defaults_to_an_independent_training_judge(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.eval_judge is not None and cfg.eval_judge.kind == "arena_oracle"
    osp = load_config(write(tmp_path, "preset: osp\njudge:\n  kind: self_preference\n"))
    assert osp.eval_judge is None  # a policy judging itself is no independent measure
    own = load_config(write(tmp_path, "preset: osp\njudge:\n  kind: self_preference\neval:\n  judge: {kind: arena_pairrm}\n"))
    assert own.eval_judge is not None and own.eval_judge.kind == "arena_pairrm"
    with pytest.raises(ConfigError, match="eval.judge.kind=none"):
        load_config(write(tmp_path, "eval:\n  judge: {kind: none}\n"))


def test_overrides_apply_dotted_keys() -> None:
    cfg = load_config(DEMO, {"trainer.epochs": 5, "schedule.iterations": 1})
    assert cfg.trainer.epochs == 5 and cfg.schedule.iterations == 1


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n", base=""))
    with pytest.raises(ConfigError, match="not valid YAML"):
        (tmp_path / "bad.yaml").write_text("trainer: [unclosed\n")
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_preset_typo_is_named_at_preset(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "preset: sppoo\n"))
    assert "  preset: unknown preset 'sppoo'; known presets: dpo, drift, inpo" in str(err.value)
    assert "(top level)" not in str(err.value)


def test_a_missing_policy_directory_names_policy_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"policy: {{path: {tmp_path}/nope}}\n"))
    assert f"  policy.path: model directory '{tmp_path}/nope' does not exist" in str(err.value)
    assert "Value error" not in str(err.value)


def test_a_task_judge_checks_prompts_from_other_sources(tmp_path: Path) -> None:
    from sparring.shared.prompts import PromptPoolError, load_run_prompts, run_prompts
    from sparring.tasks.arena.rules import arena_prompts

    # a JSONL pool judged by an arena judge must hold arena prompts: each other line is named
    pool = tmp_path / "p.jsonl"
    arena = arena_prompts("train")[0]
    pool.write_text(json.dumps({"id": "ok", "prompt": arena.prompt}) + '\n{"id": "x", "prompt": "hi"}\n')
    cfg = load_config(write(tmp_path, f"prompts:\n  source: jsonl\n  path: {pool}\n"))
    with pytest.raises(PromptPoolError, match="id 'x': not an arena prompt.*judge.kind=arena_oracle") as err:
        load_run_prompts(cfg)
    # the training judge and the evaluation judge (here the same task's) check the pool once, not twice
    assert cfg.eval_judge is not None and ": 1 bad prompt(s)" in str(err.value)
    pool.write_text(json.dumps({"id": "ok", "prompt": arena.prompt}) + "\n")
    assert [p.prompt_id for p in load_run_prompts(cfg)] == ["ok"]
    # the arena's own sources need no check; the held-out split of a pool is disjoint from its train part
    split = run_prompts(load_config(write(tmp_path, "eval:\n  num_prompts: 100\n")))
    assert len(split.heldout) == 100 and len(split.train) == 540
    assert not {p.prompt_id for p in split.heldout} & {p.prompt_id for p in split.train}


def test_preset_fills_missing_keys_and_user_keys_win(tmp_path: Path) -> None:
    p = write(tmp_path, "preset: sppo\ntrainer:\n  learning_rate: 0.001\n")
    cfg = load_config(p)
    assert cfg.algorithm.objective == "sppo" and cfg.algorithm.eta == 1000.0
    assert cfg.generation.samples_per_prompt == 5 and cfg.generation.top_p == 0.9
    assert cfg.trainer.optimizer == "rmsprop" and cfg.trainer.learning_rate == 0.001
    # the resolved config round-trips (actors re-parse it) without re-applying anything
    assert RunConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_inpo_preset_uses_fixed_reference(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "preset: inpo\n"))
    assert (cfg.algorithm.objective, cfg.algorithm.reference, cfg.algorithm.beta) == ("inpo", "initial", 0.0075)


def test_unknown_preset_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown preset .spo.; known presets: dpo, drift, inpo, iterative_dpo, iterative_dpo_fixed_ref, online_dpo, osp, spin, sppo"):
        load_config(write(tmp_path, "preset: spo\n"))


@pytest.mark.parametrize("name", ["dpo", "sppo", "inpo", "drift", "osp"])
def test_every_arena_example_validates(name: str) -> None:
    cfg = load_config(EXAMPLES / f"arena-{name}.yaml")
    assert cfg.preset == name and "arena_gold" in cfg.eval.evaluators


def test_drift_needs_a_dsat_source(tmp_path: Path) -> None:
    from sparring.shared.prompts import PromptPoolError, load_run_prompts

    cfg = load_config(write(tmp_path, "algorithm:\n  pairs: drift\n"))
    with pytest.raises(PromptPoolError, match="algorithm.pairs=drift needs a logged response on every prompt"):
        load_run_prompts(cfg)
    with pytest.raises(ConfigError, match="drift needs a dissatisfaction-log prompt source"):
        load_config(write(tmp_path, f"algorithm:\n  pairs: drift\nprompts:\n  source: jsonl\n  path: {__file__}\n"))
    with pytest.raises(ConfigError, match="prompts.path|source=dsat needs a path"):
        load_config(write(tmp_path, "preset: drift\nprompts:\n  source: dsat\n"))


def test_density_ratio_judge_needs_both_models(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="judge.weak_model: Field required"):
        load_config(write(tmp_path, "judge:\n  kind: density_ratio\n  strong_model: a/b\n"))
    with pytest.raises(ConfigError, match="eval.judge.strong_model: Field required"):
        load_config(write(tmp_path, "eval:\n  judge: {kind: density_ratio, weak_model: a/b}\n"))
    cfg = load_config(write(tmp_path, "judge:\n  kind: arena_cdr\n"))
    assert cfg.judge.kind == "arena_cdr"


def test_each_objective_takes_only_its_own_fields(tmp_path: Path) -> None:
    """`algorithm` is flat in YAML but validated per objective: another objective's field is refused with the
    path the user wrote, and the message names the objective whose fields apply."""
    cfg = load_config(write(tmp_path, "algorithm: {objective: cdpo, beta: 0.2, epsilon: 0.05, pairs: all_pairs}\n"))
    assert (cfg.algorithm.objective, cfg.algorithm.beta, cfg.algorithm.epsilon) == ("cdpo", 0.2, 0.05)
    assert cfg.algorithm.hyperparameters() == {"beta": 0.2, "epsilon": 0.05}
    assert load_config(write(tmp_path, "algorithm: {objective: simpo, beta: 2.5, gamma: 1.375}\n")).algorithm.gamma == 1.375
    assert load_config(write(tmp_path, "algorithm: {pairs: all_pairs}\n")).algorithm.objective == "dpo"
    with pytest.raises(ConfigError, match=r"algorithm\.epsilon: unknown key \(not a field of objective dpo\)"):
        load_config(write(tmp_path, "algorithm: {objective: dpo, epsilon: 0.1}\n"))
    with pytest.raises(ConfigError, match=r"algorithm\.beta: unknown key \(not a field of objective sppo\)"):
        load_config(write(tmp_path, "algorithm: {objective: sppo, beta: 0.001}\n"))
    with pytest.raises(ConfigError, match=r"algorithm\.objective: unknown objective 'dpoo'; known: apo_down, apo_zero, bco"):
        load_config(write(tmp_path, "algorithm: {objective: dpoo}\n"))
    with pytest.raises(ConfigError, match=r"algorithm\.alpha: Field required"):  # R-DPO's alpha has no default
        load_config(write(tmp_path, "algorithm: {objective: length_dpo}\n"))
    with pytest.raises(ConfigError, match=r"algorithm: objective=inpo needs reference=initial"):
        load_config(write(tmp_path, "algorithm: {objective: inpo}\n"))
    with pytest.raises(ConfigError, match=r"algorithm\.ratio: Input should be less than 1"):
        load_config(write(tmp_path, "algorithm: {objective: inpo, ratio: 1.0, reference: initial}\n"))


def test_each_judge_kind_takes_only_its_own_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"judge\.strong_model: unknown key \(not a field of judge kind pairrm\)"):
        load_config(write(tmp_path, "judge: {kind: pairrm, model: a/b, strong_model: c/d}\n"))
    with pytest.raises(ConfigError, match=r"judge\.reduction: unknown key \(not a field of a task's judge kind\)"):
        load_config(write(tmp_path, "judge: {kind: arena_oracle, reduction: mean}\n"))
    with pytest.raises(ConfigError, match=r"eval\.judge\.model: unknown key \(not a field of judge kind self_preference\)"):
        load_config(write(tmp_path, "eval:\n  judge: {kind: self_preference, model: a/b}\n"))
    with pytest.raises(ConfigError, match=r"judge\.kind: Field required"):
        load_config(write(tmp_path, "judge: {num_judges: 2}\n"))
    cfg = load_config(write(tmp_path, "judge: {kind: density_ratio, strong_model: a/b, weak_model: c/d, reduction: mean}\n"))
    assert (cfg.judge.strong_model, cfg.judge.reduction, cfg.judge.num_judges) == ("a/b", "mean", 1)
    assert not cfg.judge.follows_policy
    task = load_config(write(tmp_path, "judge: {kind: arena_oracle, num_judges: 2, timeout_s: 5}\n")).judge
    assert (task.kind, task.num_judges, task.timeout_s, task.follows_policy) == ("arena_oracle", 2, 5.0, False)
    assert load_config(write(tmp_path, "preset: osp\njudge: {kind: self_preference}\n")).judge.follows_policy
    assert sorted(JUDGE_CONFIGS) == sorted([*CORE_JUDGE_KINDS, "task"])  # one variant per core kind + tasks'


def test_a_preset_keeps_only_what_the_chosen_objective_reads(tmp_path: Path) -> None:
    """Choosing another objective than the preset's drops the preset's fields the new one does not have."""
    cfg = load_config(write(tmp_path, "preset: sppo\nalgorithm: {objective: dpo}\n"))
    assert (cfg.algorithm.objective, cfg.algorithm.beta) == ("dpo", 0.1)  # sppo's eta is gone
    cfg = load_config(write(tmp_path, "preset: inpo\nalgorithm: {objective: ipo}\n"))
    assert (cfg.algorithm.objective, cfg.algorithm.beta, cfg.algorithm.reference) == ("ipo", 0.0075, "initial")
    with pytest.raises(ConfigError, match=r"algorithm\.eta: unknown key"):  # the user's own keys are checked
        load_config(write(tmp_path, "preset: sppo\nalgorithm: {objective: dpo, eta: 10}\n"))


def test_presets_are_data_files() -> None:
    from importlib import resources

    import yaml

    from sparring.shared.presets import load_preset, preset_names

    assert preset_names() == ["dpo", "drift", "inpo", "iterative_dpo", "iterative_dpo_fixed_ref", "online_dpo", "osp", "spin", "sppo"]
    for name in preset_names():
        text = resources.files("sparring.shared.presets").joinpath(f"{name}.yaml").read_text()
        assert text.startswith("# "), f"{name}: the paper sources come first, as comments"
        assert {k: v for k, v in yaml.safe_load(text).items() if k != "sources"} == load_preset(name)
        assert set(load_preset(name)) <= set(RunConfig.model_fields), name
    assert load_preset("inpo")["algorithm"]["ratio"] == 1.0 / 3.0


def test_sppo_hard_defaults_to_trls_beta() -> None:
    """TRL's sppo_hard uses beta 0.1 (eta 10, targets +-5 nats), not SPPO's eta 1000 (issue 13 item 6)."""
    from sparring.shared.config import algorithm_config

    assert algorithm_config(objective="sppo_hard").eta == 10.0
    assert algorithm_config(objective="sppo").eta == 1000.0


def test_stream_maxlen_smaller_than_an_iteration_is_refused_naming_both_numbers(tmp_path: Path) -> None:
    """Issue 14 item 4: `stream_maxlen: 100` with 512 prompts per iteration used to be accepted (entries trimmed
    before delivery vanished); the error names both numbers and the stream."""
    p = write(tmp_path, "schedule:\n  prompts_per_iteration: 512\nstorage:\n  stream_maxlen: 100\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "storage.stream_maxlen 100" in msg and "prompts_per_iteration 512" in msg and "prompts stream" in msg
    # all_pairs of K=4 samples: up to 6 pairs per group, so 100 prompts need 600 entries on the pairs stream
    p = write(tmp_path, "schedule:\n  prompts_per_iteration: 100\nstorage:\n  stream_maxlen: 500\n"
              "generation:\n  samples_per_prompt: 4\nalgorithm:\n  pairs: all_pairs\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"stream_maxlen 500 .* up to 600 to the pairs stream"):
        load_config(p)
    ok = load_config(write(tmp_path, "schedule:\n  prompts_per_iteration: 100\nstorage:\n  stream_maxlen: 100\n"))
    assert ok.storage.stream_maxlen == 100 and ok.max_pairs_per_group == 1
