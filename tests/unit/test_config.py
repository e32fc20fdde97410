"""RunConfig: YAML loading, unknown keys and bad values fail with their dotted path."""

import json
from pathlib import Path

import pytest

from sparring.shared.config import ConfigError, RunConfig, load_config

DEMO = Path(__file__).resolve().parents[2] / "examples" / "arena-demo.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
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
    cfg = RunConfig.model_validate({"policy": {"path": "Qwen/Qwen2-0.5B"}})
    assert cfg.policy.path == "Qwen/Qwen2-0.5B"


def test_overrides_apply_dotted_keys() -> None:
    cfg = load_config(DEMO, {"trainer.epochs": 5, "schedule.iterations": 1})
    assert cfg.trainer.epochs == 5 and cfg.schedule.iterations == 1


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "trainer: [unclosed\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_cross_field_oracle_needs_arena_prompts(tmp_path: Path) -> None:
    from sparring.shared.arena import arena_prompts
    from sparring.shared.prompts import PromptPoolError, load_run_prompts

    logs = tmp_path / "logs.jsonl"
    logs.write_text("{}\n")
    with pytest.raises(ConfigError, match="arena_oracle scores arena prompts"):
        load_config(write(tmp_path, f"algorithm:\n  pairs: drift\nprompts:\n  source: dsat\n  path: {logs}\n"))
    # a JSONL pool judged by an arena judge must hold arena prompts: each other line is named
    pool = tmp_path / "p.jsonl"
    arena = arena_prompts("train")[0]
    pool.write_text(json.dumps({"id": "ok", "prompt": arena.prompt}) + '\n{"id": "x", "prompt": "hi"}\n')
    cfg = load_config(write(tmp_path, f"prompts:\n  source: jsonl\n  path: {pool}\n"))
    assert cfg.is_arena
    with pytest.raises(PromptPoolError, match="id 'x': not an arena prompt"):
        load_run_prompts(cfg)
    pool.write_text(json.dumps({"id": "ok", "prompt": arena.prompt}) + "\n")
    assert [p.prompt_id for p in load_run_prompts(cfg)] == ["ok"]


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
    with pytest.raises(ConfigError, match="unknown preset .spo.; known presets: dpo, drift, inpo, osp, sppo"):
        load_config(write(tmp_path, "preset: spo\n"))


@pytest.mark.parametrize("name", ["dpo", "sppo", "inpo", "drift", "osp"])
def test_every_arena_example_validates(name: str) -> None:
    cfg = load_config(DEMO.parent / f"arena-{name}.yaml")
    assert cfg.preset == name and cfg.is_arena


def test_drift_needs_a_dsat_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="drift and a dissatisfaction-log prompt source"):
        load_config(write(tmp_path, "algorithm:\n  pairs: drift\n"))
    with pytest.raises(ConfigError, match="prompts.path|source=dsat needs a path"):
        load_config(write(tmp_path, "preset: drift\n"))


def test_density_ratio_judge_needs_both_models(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs judge.strong_model and judge.weak_model"):
        load_config(write(tmp_path, "judge:\n  kind: density_ratio\n  strong_model: a/b\n"))
    cfg = load_config(write(tmp_path, "judge:\n  kind: arena_cdr\n"))
    assert cfg.judge.kind == "arena_cdr"
