"""Prometheus metrics (`GET /metrics`), computed from Redis at scrape time so an API restart loses nothing.

Metric names (all gauges unless noted; `run` label = run id):

    sparring_runs{state}                         runs in each state
    sparring_iterations_total{run}               iterations recorded (counter)
    sparring_pairs_total{run}                    training pairs over all recorded iterations (counter)
    sparring_generation_tokens_per_second{run}   sampler throughput in the last iteration
    sparring_pairs_per_second{run}               pairs per second of generate+judge in the last iteration
    sparring_queue_depth{run,stream}             entries not yet consumed, per stream (prompts, generations,
                                                 pairs) and dead letters (stream=dead), now
    sparring_stale_pairs_dropped{run}            pairs from another policy version dropped by the trainer, last iteration
    sparring_weight_sync_seconds{run}            slowest engine's weight load, last iteration
    sparring_judge_latency_seconds{run}          judge seconds per group, last iteration
    sparring_eval{run,metric}                    every `eval/*` metric of the last evaluated iteration (metric = its
                                                 name without `eval/`: win_rate_vs_iter0, kl_vs_iter0,
                                                 response_length_mean, <evaluator>/win_rate_vs_iter0, ...;
                                                 `eval.every` > 1 evaluates every k-th iteration only)
    sparring_heldout{run,metric}                 every `heldout/*` diagnostic of the last iteration (metric = its name
                                                 without `heldout/`: ranking_accuracy, idealized_ranking_accuracy,
                                                 logps/chosen_delta, ...; workers/diagnostics.py)
    sparring_stage_seconds{run,stage}            busy seconds of each stage in the last iteration (generate_judge,
                                                 train, sync, eval; async runs add overlap = train || generate)
    sparring_iteration_seconds{run}              wall seconds of the last iteration
    sparring_staleness_max{run}                  largest version lag of a pair trained in the last iteration
    sparring_staleness_pairs_total{run,lag}      trained pairs by version lag over recorded iterations (counter;
                                                 the staleness histogram, docs/online.md)
    sparring_http_requests_total{method,route,status}  API requests served by this process (counter)

Queue depths are read for executing runs only (a finished run's streams are idle by definition).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sparring.shared.store import ACTIVE_STATES, RUN_STATES

if TYPE_CHECKING:
    from sparring.services.runs import RunService
    from sparring.shared.records import IterationRecord


class RunCollector(Collector):
    def __init__(self, service: RunService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        runs = self.service.store.list_runs()
        by_state = GaugeMetricFamily("sparring_runs", "Runs in each state", labels=["state"])
        for state in RUN_STATES:
            by_state.add_metric([state], sum(1 for r in runs if r["state"] == state))
        yield by_state
        iterations = CounterMetricFamily("sparring_iterations", "Iterations recorded", labels=["run"])
        pairs = CounterMetricFamily("sparring_pairs", "Training pairs over recorded iterations", labels=["run"])
        gauges = {
            "tokens": GaugeMetricFamily("sparring_generation_tokens_per_second", "Sampler tokens/s, last iteration", labels=["run"]),
            "pairs_s": GaugeMetricFamily("sparring_pairs_per_second", "Pairs/s of generate+judge, last iteration", labels=["run"]),
            "stale": GaugeMetricFamily("sparring_stale_pairs_dropped", "Pairs of another policy version dropped, last iteration", labels=["run"]),
            "sync": GaugeMetricFamily("sparring_weight_sync_seconds", "Slowest engine weight load, last iteration", labels=["run"]),
            "judge": GaugeMetricFamily("sparring_judge_latency_seconds", "Judge seconds per group, last iteration", labels=["run"]),
        }
        stages = GaugeMetricFamily("sparring_stage_seconds", "Busy seconds per stage, last iteration", labels=["run", "stage"])
        wall = GaugeMetricFamily("sparring_iteration_seconds", "Wall seconds of the last iteration", labels=["run"])
        stale_max = GaugeMetricFamily("sparring_staleness_max", "Largest lag of a trained pair, last iteration", labels=["run"])
        lags = CounterMetricFamily("sparring_staleness_pairs", "Trained pairs by version lag", labels=["run", "lag"])
        evals = GaugeMetricFamily("sparring_eval", "Evaluation metrics of the last iteration (eval/*)", labels=["run", "metric"])
        heldout = GaugeMetricFamily("sparring_heldout", "Held-out pair diagnostics of the last iteration (heldout/*)", labels=["run", "metric"])
        depth = GaugeMetricFamily("sparring_queue_depth", "Unconsumed entries per stream", labels=["run", "stream"])
        for run in runs:
            run_id = run["run_id"]
            records = self.service.store.iterations(run_id)
            iterations.add_metric([run_id], len(records))
            pairs.add_metric([run_id], sum(r.num_pairs for r in records))
            if records:
                m = records[-1].metrics
                for key, metric in (
                    ("gen/tokens_per_s", "tokens"),
                    ("pairs/per_s", "pairs_s"),
                    ("pairs/stale_dropped", "stale"),
                    ("sync/max_engine_s", "sync"),
                    ("judge/latency_s", "judge"),
                ):
                    if key in m:
                        gauges[metric].add_metric([run_id], m[key])
                last_eval = next((r.eval for r in reversed(records) if r.eval), {})
                for name, value in last_eval.items():
                    evals.add_metric([run_id, name.removeprefix("eval/")], value)
                for name, value in m.items():
                    if name.startswith("heldout/"):
                        heldout.add_metric([run_id, name.removeprefix("heldout/")], value)
                for stage, seconds in records[-1].stage_seconds.items():
                    stages.add_metric([run_id, stage], seconds)
                wall.add_metric([run_id], records[-1].finished_at - records[-1].started_at)
                if "staleness/max" in m:
                    stale_max.add_metric([run_id], m["staleness/max"])
                for lag, n in sorted(staleness_histogram(records).items()):
                    lags.add_metric([run_id, str(lag)], n)
            if run["state"] in ACTIVE_STATES:
                for stream, n in self.service.queue_depths(run_id).items():
                    depth.add_metric([run_id, stream], n)
        yield iterations
        yield pairs
        yield from gauges.values()
        yield evals
        yield heldout
        yield from (stages, wall, stale_max, lags)
        yield depth


def staleness_histogram(records: list[IterationRecord]) -> dict[int, float]:
    """Trained pairs by version lag (the records' `staleness/lag_<k>` metrics summed over iterations)."""
    out: dict[int, float] = {}
    for r in records:
        for key, n in r.metrics.items():
            if key.startswith("staleness/lag_"):
                lag = int(key.removeprefix("staleness/lag_"))
                out[lag] = out.get(lag, 0.0) + n
    return out


def build_registry(service: RunService) -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    registry.register(RunCollector(service))
    requests = Counter(
        "sparring_http_requests", "API requests served", ["method", "route", "status"], registry=registry
    )
    return registry, requests
