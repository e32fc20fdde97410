"""deploy/grafana/sparring.json queries only metrics and labels that `GET /metrics` exposes (the collector of
services/metrics.py, fed a run with a recorded iteration), and shows every metric family it exposes, so the
dashboard and the metrics cannot drift apart. tests/integration/test_ecosystem_api.py checks the same names
against a live server's /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sparring.services.metrics import build_registry
from sparring.shared.records import IterationRecord

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "sparring.json"
METRIC = re.compile(r"\b(sparring_[a-z_]+)\s*(\{[^}]*\})?")
LABEL = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")
BY = re.compile(r"\bby\s*\(([^)]*)\)")


def dashboard_queries(dashboard: dict[str, Any] | None = None) -> list[str]:
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def used_names(exprs: list[str]) -> dict[str, set[str]]:
    """metric name -> label names its selectors and `by (...)` clauses use."""
    used: dict[str, set[str]] = {}
    for expr in exprs:
        by = {label.strip() for clause in BY.findall(expr) for label in clause.split(",") if label.strip()}
        for name, selector in METRIC.findall(expr):
            used.setdefault(name, set()).update(LABEL.findall(selector or ""), by)
        for name in re.findall(r"label_values\((sparring_[a-z_]+),\s*([a-z_]+)\)", expr):
            used.setdefault(name[0], set()).add(name[1])
    return used


def exposed(text: str) -> tuple[dict[str, set[str]], set[str]]:
    """(sample name -> label names, metric family names) of a Prometheus exposition."""
    samples: dict[str, set[str]] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        # a family with no sample now (queue depths while no run executes) is still exposed, labels unknown
        samples.setdefault(family.name + ("_total" if family.type == "counter" else ""), set())
        for s in family.samples:
            samples.setdefault(s.name, set()).update(s.labels)
    return samples, families


class FakeStore:
    def list_runs(self) -> list[dict[str, Any]]:
        return [{"run_id": "r1", "state": "running"}]

    def iterations(self, run_id: str) -> list[IterationRecord]:
        return [
            IterationRecord(
                run_id=run_id, iteration=1, policy_version_in=0, policy_version_out=1, num_prompts=4, num_groups=4,
                num_pairs=3, num_dead=0, started_at=0.0, finished_at=1.0,
                metrics={"gen/tokens_per_s": 10.0, "pairs/per_s": 1.0, "pairs/stale_dropped": 0.0,
                         "sync/max_engine_s": 0.1, "judge/latency_s": 0.01, "staleness/max": 1.0,
                         "staleness/lag_0": 1.0, "staleness/lag_1": 2.0},
                stage_seconds={"generate_judge": 0.5, "train": 0.4, "overlap": 0.5, "sync": 0.1, "eval": 0.3},
                eval={"eval/win_rate_vs_iter0": 0.6, "eval/win_rate_vs_prev": 0.55, "eval/kl_vs_iter0": 0.2,
                      "eval/response_length_mean": 12.0},
            )
        ]  # fmt: skip


class FakeService:
    store = FakeStore()

    def queue_depths(self, run_id: str) -> dict[str, int]:
        return {"prompts": 0, "generations": 1, "pairs": 2, "dead": 0}


def metrics_text() -> str:
    registry, requests = build_registry(FakeService())  # type: ignore[arg-type]
    requests.labels("GET", "/v1/runs", "200").inc()
    return generate_latest(registry).decode()


def check(text: str, exprs: list[str]) -> list[str]:
    samples, families = exposed(text)
    problems = []
    used = used_names(exprs)
    for name, labels in sorted(used.items()):
        if name not in samples:
            problems.append(f"{name}: not exposed by /metrics (exposed: {', '.join(sorted(samples))})")
        elif samples[name] and (missing := labels - samples[name]):
            problems.append(f"{name}: no label(s) {', '.join(sorted(missing))} (has {', '.join(sorted(samples[name]))})")
    shown = {n.removesuffix("_total") for n in used}
    problems += [
        f"{family}: exposed but on no panel"
        for family in sorted(families)
        if family not in shown and not family.endswith("_created")  # a counter's creation time
    ]
    return problems


def test_dashboard_queries_only_exposed_metrics_and_shows_them_all() -> None:
    exprs = dashboard_queries()
    assert len(exprs) >= 10
    assert check(metrics_text(), exprs) == []


def test_the_check_catches_a_renamed_metric_or_label() -> None:
    text = metrics_text()
    assert check(text, ['sparring_judge_latency_s{run=~"$run"}'])[0].startswith("sparring_judge_latency_s: not exposed")
    assert check(text, ["sum by (queue) (sparring_queue_depth)"])[0] == "sparring_queue_depth: no label(s) queue (has run, stream)"


def test_dashboard_is_importable_grafana_json() -> None:
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] == "sparring" and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in d["panels"])
