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
    sparring_eval{run,metric}                    every `eval/*` metric of the last iteration (metric = its name
                                                 without `eval/`: win_rate_vs_iter0, kl_vs_iter0, response_length_mean,
                                                 <evaluator>/win_rate_vs_iter0, ...)
    sparring_heldout{run,metric}                 every `heldout/*` diagnostic of the last iteration (metric = its name
                                                 without `heldout/`: ranking_accuracy, idealized_ranking_accuracy,
                                                 logps/chosen_delta, ...; workers/diagnostics.py)
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
                for name, value in records[-1].eval.items():
                    evals.add_metric([run_id, name.removeprefix("eval/")], value)
                for name, value in m.items():
                    if name.startswith("heldout/"):
                        heldout.add_metric([run_id, name.removeprefix("heldout/")], value)
            if run["state"] in ACTIVE_STATES:
                for stream, n in self.service.queue_depths(run_id).items():
                    depth.add_metric([run_id, stream], n)
        yield iterations
        yield pairs
        yield from gauges.values()
        yield evals
        yield heldout
        yield depth


def build_registry(service: RunService) -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    registry.register(RunCollector(service))
    requests = Counter(
        "sparring_http_requests", "API requests served", ["method", "route", "status"], registry=registry
    )
    return registry, requests
