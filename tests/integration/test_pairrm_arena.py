"""The arena's tiny PairRM (`judge.kind: arena_pairrm`) agrees with the gold rule on held-out pairs.

Builds the default arena PairRM once (cached in the default cache directory, like the arena policy; a few
minutes on a 2-core CPU the first time) and scores the 320 held-out pairs with distinct gold scores that
every arena judge is measured on (`arena_strong.heldout_pairs`, `gold_agreement`: one pair per held-out
prompt, Wilson 95% interval).
"""

from __future__ import annotations

import json

import pytest
import torch

from sparring.shared.config import judge_config
from sparring.tasks.arena.ranker import arena_pairrm_dir, build_arena_pairrm
from sparring.tasks.arena.strong import gold_agreement, heldout_pairs
from sparring.workers.judges import pairrm as prm
from sparring.workers.judges.registry import build_judge

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_arena_pairrm_agrees_with_gold() -> None:
    path = build_arena_pairrm(0, progress=print)
    assert path == arena_pairrm_dir(0)
    meta = json.loads((path / "pairrm_build.json").read_text())
    assert meta["seed"] == 0 and meta["settings"]["label_noise"] > 0  # trained on noisy labels
    torch.set_num_threads(1)
    judge = build_judge(judge_config(kind="arena_pairrm"))
    assert isinstance(judge, prm.PairRMJudge) and judge.name == "arena_pairrm"
    pairs = heldout_pairs(320)
    result = gold_agreement(judge, pairs)
    assert result.num_pairs == 320
    assert result.agreement >= 0.80, result
    # the same pairs through the two-order `compare` (llm-blender's default): the same ordering as K=2 `rank`
    diff = judge.scorer.compare([p.prompt for p, _, _ in pairs[:40]], [a for _, a, _ in pairs[:40]],
                                [b for _, _, b in pairs[:40]])
    scores = judge.scorer.rank([(p.prompt, [a, b]) for p, a, b in pairs[:40]])
    assert torch.allclose(diff, torch.stack([s[0] - s[1] for s in scores]), atol=1e-6)
