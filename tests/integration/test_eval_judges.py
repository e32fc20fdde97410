"""`sparring eval-judges` through the real CLI entry point, on real judges and a few held-out arena pairs."""

from __future__ import annotations

import json

import pytest

from sparring.services import cli
from sparring.services.eval_judges import available_kinds, labelled_task
from sparring.tasks.arena.strong import heldout_pairs

pytestmark = pytest.mark.integration


def test_json_shape_and_oracle_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["eval-judges", "--judges", "arena_oracle", "--pairs", "24", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["task"] == "arena" and out["num_pairs"] == 24 and out["seed"] == 0 and [r["judge"] for r in out["judges"]] == ["arena_oracle"]
    row = out["judges"][0]
    assert set(row) >= {"judge", "name", "pairs", "agreement", "ci95", "order_sensitive", "flip_consistency",
                        "pairs_per_s", "judge_seconds", "build_seconds"}  # fmt: skip
    assert row["agreement"] == 1.0  # the oracle is the gold rule and every pair has distinct gold scores
    assert 0.8 < row["ci95"][0] < 1.0 and row["ci95"][1] == 1.0  # Wilson, n = 24
    assert row["order_sensitive"] is False and row["flip_consistency"] is None and row["pairs_per_s"] > 0
    assert len(heldout_pairs(24)) == 24


def test_table_and_a_judge_that_cannot_be_built(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["eval-judges", "--judges", "arena_oracle,density_ratio", "--pairs", "8"])
    text = capsys.readouterr().out
    assert rc == 1  # density_ratio needs model paths: an error row, the other judge still reported
    lines = text.splitlines()
    assert lines[0] == "8 held-out arena pairs with a known preference"
    assert "agreement [95% CI]" in lines[1] and "flip consistency" in lines[1] and "pairs/s" in lines[1]
    oracle = next(line for line in lines if line.startswith("arena_oracle"))
    assert "1.000 [" in oracle and oracle.split()[4] == "-"  # flip consistency "-" (not order-sensitive)
    assert any(line.startswith("density_ratio") and "error:" in line for line in lines)


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval-judges", "--judges", "no_such_judge", "--pairs", "4"]) == 2
    assert "unknown judge kind" in capsys.readouterr().err
    assert cli.main(["eval-judges", "--pairs", "0"]) == 2
    assert "--pairs must be in [1, 320] for task arena" in capsys.readouterr().err
    assert cli.main(["eval-judges", "--task", "nope", "--pairs", "4"]) == 2
    assert "tasks with labelled pairs: arena" in capsys.readouterr().err
    kinds = available_kinds(labelled_task(None))
    assert "arena_oracle" in kinds and "self_preference" in kinds and "none" not in kinds
