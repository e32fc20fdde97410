"""The dashboard in headless Chromium (Debian `chromium`, driven by playwright; no browser is downloaded).

- the shell: served without a token, same-origin CSP, the two assets with their content types, no other
  file reachable, nothing of it in the OpenAPI schema;
- a wrong token lands on the login box with the API's reason;
- the page of a REAL arena run (read-only token, passed once in the URL fragment): every chart holds exactly
  the iterations the API reports, with the API's values: the training metrics and the evaluation mapping
  (one win-rate series per `*win_rate_vs_*` key, the evaluation judge's labelled "judge" and the arena's
  gold evaluator's labelled `arena_gold`, each with its 95% interval; KL; response length; truncation; the
  evaluator's other metrics on a chart of its own), and the iteration table shows each record's eval win
  rates and KL. The run is paused after its first iteration while the page opens (the stream tells the page it
  is at rest); once it is resumed, a NEW iteration appears without a page reload (the page reconnects and
  the iteration is pushed over the event stream); every request stays on the API's origin, carries the token in the
  Authorization header only, and never in a URL. A full-page screenshot is saved under the test's tmp_path.

- the pipeline charts of an async run whose records are written straight to Redis (no run executes): the stage
  timeline draws each record's `stage_spans` (the next batch's generation beside training), the staleness
  histogram the records' summed `staleness/lag_<k>`.

Needs `make browser` (apt `chromium`); it does not skip when chromium is missing, it fails and says so.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RUN_ITERATIONS = 5  # it is paused after its first iteration (honoured at the next boundary): room to resume
ITERATION_TIMEOUT_S = 600.0  # startup (Ray, two vLLM-CPU engines) plus one arena iteration on a small CPU box


def _metric(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda rec: rec.get("metrics", {}).get(key)


def _eval(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda rec: rec.get("eval", {}).get(key)


Series = dict[str, Callable[[dict[str, Any]], float | None]]

# chart name -> {series key -> value of an IterationRecord (API JSON) or None}: the test's own reading of the
# API contract, checked against what the page draws (data-chart / data-series / data-iteration / data-value).
FIXED_SERIES: dict[str, Series] = {
    "kl": {"eval/kl_vs_iter0": _eval("eval/kl_vs_iter0")},
    "response_length": {"eval/response_length_mean": _eval("eval/response_length_mean")},
    "truncated": {"eval/truncated_fraction": _eval("eval/truncated_fraction")},
    "loss": {"loss/mean": _metric("loss/mean")},
    "margin": {"rewards/margins": _metric("rewards/margins")},
    "accuracy": {"rewards/accuracies": _metric("rewards/accuracies")},
    "heldout_ranking": {k: _metric(k) for k in ("heldout/ranking_accuracy", "heldout/idealized_ranking_accuracy")},
    "heldout_logps": {k: _metric(k) for k in ("heldout/logps/chosen_delta", "heldout/logps/rejected_delta")},
    "pairs_per_s": {"pairs/per_s": _metric("pairs/per_s")},
    "tokens_per_s": {"gen/tokens_per_s": _metric("gen/tokens_per_s")},
    "queues": {f"queue/peak/{q}": _metric(f"queue/peak/{q}") for q in ("prompts", "generations", "pairs")},
    "stale_dropped": {"pairs/stale_dropped": _metric("pairs/stale_dropped")},
    "staleness": {"staleness/max": _metric("staleness/max"), "staleness/mean": _metric("staleness/mean")},
    "sync": {"sync/max_engine_s": _metric("sync/max_engine_s"),
             "stage/sync": lambda r: r.get("stage_seconds", {}).get("sync")},
    "judge_latency": {"judge/latency_s": _metric("judge/latency_s")},
}  # fmt: skip
WIN_RATE_KEY = re.compile(r"^eval/(?:(.+)/)?win_rate_vs_([^/]+)$")
CI = re.compile(r"_ci_(low|high)$")
# eval keys of the core with a chart of their own, or shown in the table only
EVAL_CHARTED = {"eval/kl_vs_iter0", "eval/response_length_mean", "eval/truncated_fraction"}
EVAL_TABLE_ONLY = {"eval/num_prompts", "eval/response_length_delta"}
# The evaluation of this run: the oracle (training judge = evaluation judge) and the arena's gold evaluator.
RUN_EVAL = {"num_prompts": 24, "prompts": {"source": "arena_heldout"}, "evaluators": ["arena_gold"]}
# Charts every arena iteration must fill (the rest depend on the judge, queue sampling, etc.).
ALWAYS_FILLED = (
    "loss", "margin", "accuracy", "tokens_per_s", "sync", "stale_dropped", "winrate", "kl", "response_length", "truncated",
    "evaluator/arena_gold",
)  # fmt: skip
# Win-rate series this run must have: the evaluation judge's and the gold evaluator's, with their labels.
WIN_RATE_LABELS = {
    "eval/win_rate_vs_iter0": "judge",
    "eval/arena_gold/win_rate_vs_iter0": "arena_gold",
    "eval/win_rate_vs_prev": "judge vs previous",
}


def expected_series(records: list[dict[str, Any]]) -> dict[str, Series]:
    """Every chart the page must draw for these records, generically from their eval keys: each
    `...win_rate_vs_<other>` key on the win-rate chart, each evaluator's other keys on `evaluator/<name>`."""
    keys = sorted({k for r in records for k, v in r.get("eval", {}).items() if v is not None and not CI.search(k)})
    charts: dict[str, Series] = {"winrate": {k: _eval(k) for k in keys if WIN_RATE_KEY.match(k)}, **FIXED_SERIES}
    for key in keys:
        if WIN_RATE_KEY.match(key) or key in EVAL_CHARTED or key in EVAL_TABLE_ONLY:
            continue
        group, _, _ = key.removeprefix("eval/").rpartition("/")
        charts.setdefault(f"evaluator/{group}" if group else "eval_other", {})[key] = _eval(key)
    return charts


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium chromium-driver)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        yield b
        b.close()


class PageLog:
    """Every request the page made and every error it reported."""

    def __init__(self, page: Any) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (resource type, url, headers)
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append((r.resource_type, r.url, r.headers)))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)


def wait_for(what: str, predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


class Drawn:
    """One snapshot of the page's charts: chart -> series -> {iteration: value}, and each chart's data-points."""

    def __init__(self, page: Any) -> None:
        snap = page.evaluate(
            """() => ({
                points: [...document.querySelectorAll('svg[data-chart] circle[data-iteration]')].map((c) => [
                    c.closest('svg').dataset.chart, c.dataset.series, Number(c.dataset.iteration),
                    Number(c.dataset.value), c.dataset.low === undefined ? null : Number(c.dataset.low),
                    c.dataset.high === undefined ? null : Number(c.dataset.high)]),
                counts: Object.fromEntries([...document.querySelectorAll('svg[data-chart]')].map(
                    (s) => [s.dataset.chart, Number(s.dataset.points)])),
                legends: Object.fromEntries([...document.querySelectorAll('svg[data-chart]')].map(
                    (s) => [s.dataset.chart, Object.fromEntries([...s.querySelectorAll('.legend text[data-series]')].map(
                        (t) => [t.dataset.series, t.textContent]))])),
                table: [...document.querySelectorAll('#iterations tbody tr[data-iteration]')].map((tr) => [
                    Number(tr.dataset.iteration),
                    Object.fromEntries([...tr.querySelectorAll('[data-key][data-value]')].map(
                        (c) => [c.dataset.key, Number(c.dataset.value)]))]),
            })"""
        )
        self.counts: dict[str, int] = snap["counts"]
        self.legends: dict[str, dict[str, str]] = snap["legends"]
        self.series: dict[str, dict[str, dict[int, float]]] = {}
        self.bands: dict[str, dict[str, dict[int, tuple[float, float] | None]]] = {}
        for chart, series, iteration, value, low, high in snap["points"]:
            self.series.setdefault(chart, {}).setdefault(series, {})[iteration] = value
            band = None if low is None or high is None else (low, high)
            self.bands.setdefault(chart, {}).setdefault(series, {})[iteration] = band
        self.table: dict[int, dict[str, float]] = {i: cells for i, cells in snap["table"]}

    def iterations(self, chart: str, series: str) -> set[int]:
        return set(self.series.get(chart, {}).get(series, {}))


def chart_points(page: Any, chart: str) -> int:
    return int(page.get_attribute(f'svg[data-chart="{chart}"]', "data-points") or 0)


def api_iterations(api: Any, run_id: str) -> list[dict[str, Any]]:
    with api.client(api.read_token) as c:
        resp = c.get(f"/v1/runs/{run_id}/iterations")
        resp.raise_for_status()
        return resp.json()["iterations"]


def api_run(api: Any, run_id: str) -> dict[str, Any]:
    with api.client(api.read_token) as c:
        resp = c.get(f"/v1/runs/{run_id}")
        resp.raise_for_status()
        return resp.json()


def check_charts_match(pics: Drawn, records: list[dict[str, Any]]) -> None:
    """Each chart's points are exactly the API records' values, iteration by iteration.

    `records` is fetched after the snapshot, so it may hold iterations the page has not drawn yet: only
    those up to the last one on the loss chart are compared.
    """
    last = max(pics.iterations("loss", "loss/mean"), default=0)
    assert last > 0, "the loss chart is empty"
    by_iter = {r["iteration"]: r for r in records if r["iteration"] <= last}
    assert set(by_iter) == set(range(1, last + 1)), f"API iterations {sorted(by_iter)}, page up to {last}"
    expected = expected_series(list(by_iter.values()))
    for chart, series in expected.items():
        chart_iters: set[int] = set()
        drawn = set(pics.series.get(chart, {}))
        assert drawn <= set(series), f"chart {chart!r} draws series {sorted(drawn - set(series))} the records lack"
        for key, get in series.items():
            want = {i: float(v) for i, r in by_iter.items() if (v := get(r)) is not None}
            got = pics.series.get(chart, {}).get(key, {})
            assert set(got) == set(want), f"chart {chart!r} series {key!r}: page has {sorted(got)}, API {sorted(want)}"
            for i, v in want.items():
                assert got[i] == pytest.approx(v, rel=1e-9, abs=1e-12), f"{chart}/{key} iteration {i}"
                ev = by_iter[i].get("eval", {})
                if key.startswith("eval/") and f"{key}_ci_low" in ev:  # the 95% interval travels with the point
                    band = pics.bands[chart][key][i]
                    assert band == pytest.approx((ev[f"{key}_ci_low"], ev[f"{key}_ci_high"]), rel=1e-9, abs=1e-12), (
                        f"{chart}/{key} iteration {i}: interval {band}"
                    )
            chart_iters |= set(want)
        assert pics.counts[chart] == len(chart_iters), chart
    pipeline = {"timeline", "staleness_hist"}  # drawn from stage_spans / staleness/lag_<k>: check_pipeline_charts
    assert not set(pics.counts) - set(expected) - {"stages"} - pipeline, f"unexpected charts {set(pics.counts) - set(expected)}"
    for chart in ALWAYS_FILLED:
        assert pics.counts.get(chart) == last, f"chart {chart!r} has {pics.counts.get(chart)} iterations, loss has {last}"
    for key, label in WIN_RATE_LABELS.items():
        assert pics.legends["winrate"].get(key) == label, pics.legends["winrate"]
    # the iteration table: one row per drawn iteration, with each record's eval win rates and KL
    assert set(pics.table) >= set(by_iter), f"table rows {sorted(pics.table)}, API {sorted(by_iter)}"
    for i, rec in by_iter.items():
        ev, cells = rec["eval"], pics.table[i]
        for key in [k for k in ev if WIN_RATE_KEY.match(k) and not CI.search(k)] + ["eval/kl_vs_iter0"]:
            assert cells.get(key) == pytest.approx(ev[key], rel=1e-9, abs=1e-12), (i, key, cells)
        assert cells.get("loss/mean") == pytest.approx(rec["metrics"]["loss/mean"], rel=1e-9, abs=1e-12)


def check_pipeline_charts(page: Any, records: list[dict[str, Any]], sync: bool = True) -> None:
    """The stage timeline: one bar per stage span of each drawn iteration at (start, end) - started_at (in a
    `sync` run, one stage after another); the staleness histogram: one bar per lag with the records' summed
    `staleness/lag_<k>` (in a sync run every pair is at lag 0)."""
    snap = page.evaluate(
        """() => ({
            bars: [...document.querySelectorAll('svg[data-chart="timeline"] rect[data-stage]')].map((r) => [
                Number(r.dataset.iteration), r.dataset.stage, Number(r.dataset.start), Number(r.dataset.end)]),
            hist: [...document.querySelectorAll('svg[data-chart="staleness_hist"] rect[data-lag]')].map((r) => [
                Number(r.dataset.lag), Number(r.dataset.value)]),
        })"""
    )
    drawn = {i for i, *_ in snap["bars"]}
    by_iter = {r["iteration"]: r for r in records if r["iteration"] in drawn}
    assert drawn and set(by_iter) == drawn and chart_points(page, "timeline") == len(drawn)
    want = sorted((i, st, a - r["started_at"], b - r["started_at"]) for i, r in by_iter.items() for st, (a, b) in r["stage_spans"].items())
    got = sorted(snap["bars"])
    assert [(i, st) for i, st, *_ in got] == [(i, st) for i, st, *_ in want]
    assert all(g[2:] == pytest.approx(w[2:], abs=1e-6) for g, w in zip(got, want, strict=True))
    for i in drawn if sync else ():
        edges = [x for st in ("generate_judge", "train", "sync", "eval") for x in by_iter[i]["stage_spans"].get(st, [])]
        assert edges == sorted(edges), (i, by_iter[i]["stage_spans"])
    hist: dict[int, float] = {}
    for r in records:
        for k, v in r["metrics"].items():
            if k.startswith("staleness/lag_"):
                hist[int(k.removeprefix("staleness/lag_"))] = hist.get(int(k.removeprefix("staleness/lag_")), 0.0) + v
    assert dict(snap["hist"]) == hist and sum(hist.values()) == sum(r["num_pairs"] for r in records) > 0
    assert chart_points(page, "staleness_hist") == len(hist) and (not sync or set(hist) == {0})


def test_shell_is_static_and_outside_the_schema(api_server: Any) -> None:
    import httpx

    with httpx.Client(base_url=api_server.url, timeout=30) as c:  # no token at all
        index = c.get("/dashboard")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        csp = index.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert '<script src="/dashboard/static/app.js"' in index.text
        assert "http://" not in index.text and "https://" not in index.text  # nothing from elsewhere
        js = c.get("/dashboard/static/app.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "https://" not in js.text and "http://" not in js.text.replace("http://www.w3.org/2000/svg", "")
        css = c.get("/dashboard/static/app.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert "@import" not in css.text and "url(" not in css.text
        for bad in ("/dashboard/static/__init__.py", "/dashboard/static/index.html", "/dashboard/static/%2e%2e%2fapi.py"):
            assert c.get(bad).status_code == 404, bad
        schema = c.get("/openapi.json")
        if schema.status_code == 200:
            assert not [p for p in schema.json()["paths"] if p.startswith("/dashboard")]
        assert c.get("/v1/runs").status_code == 401  # the shell is open; the data is not


def test_wrong_token_shows_the_login_box(api_server: Any, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{api_server.url}/dashboard#token=not-a-real-token")
        page.wait_for_selector("#login-error:not(:empty)", timeout=20_000)
        assert page.is_visible("#login-form")
        assert "Token rejected" in page.text_content("#login-error")
        assert "token=" not in page.url  # the token left the address bar at once
        assert page.evaluate("sessionStorage.length") == 0  # a rejected token is not kept
    finally:
        context.close()


def test_live_run_page(api_server: Any, browser: Any, tmp_path: Path) -> None:
    run_id = api_server.start_arena_run(
        iterations=RUN_ITERATIONS,
        policy={"path": "arena"},
        judge={"kind": "arena_oracle"},
        prompts={"source": "arena"},
        eval=RUN_EVAL,
    )

    # 1. the run has at least one iteration before the page opens, so the charts start non-empty; it is
    # paused there (an arena iteration can take about a second, less than opening the page), and resumed
    # once the page is open, so the page is certain to see a new iteration arrive
    def first_iteration() -> bool:
        run = api_run(api_server, run_id)
        assert run["state"] != "failed", f"run failed: {run.get('reason')}"
        return bool(api_iterations(api_server, run_id))

    wait_for("the run's first iteration", first_iteration, ITERATION_TIMEOUT_S, 2.0)
    with api_server.admin as c:
        assert c.post(f"/v1/runs/{run_id}/pause").status_code == 202
    paused = api_server.wait_for(run_id, lambda run: run["state"] == "paused", ITERATION_TIMEOUT_S, "paused")
    assert paused["iterations_done"] < RUN_ITERATIONS, paused

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    log = PageLog(page)
    shot = tmp_path / "dashboard-run.png"
    try:
        before = api_iterations(api_server, run_id)
        page.goto(f"{api_server.url}/dashboard#/runs/{run_id}&token={api_server.read_token}")
        page.wait_for_selector('svg[data-chart="loss"]:not([data-points="0"])', timeout=30_000)
        page.wait_for_selector("#live[data-live='resting']", timeout=30_000)  # the stream said: paused
        assert page.evaluate("location.hash") == f"#/runs/{run_id}"  # token gone from the URL
        assert page.get_attribute("#run-page", "data-run-id") == run_id
        page.evaluate("window.__noReload = true")

        # 2. the charts hold the run's iterations, with the API's values
        pics = Drawn(page)
        n0 = pics.counts["loss"]
        check_charts_match(pics, api_iterations(api_server, run_id))
        assert n0 == len(before) == paused["iterations_done"]

        # 3. resumed, the run's next iteration appears without a reload (the page reconnects to the stream)
        with api_server.admin as c:
            assert c.post(f"/v1/runs/{run_id}/resume").status_code == 202
        def grew() -> bool:
            run = api_run(api_server, run_id)
            assert run["state"] != "failed", f"run failed: {run.get('reason')}"
            return chart_points(page, "loss") > n0

        wait_for(f"iteration {n0 + 1} on the page", grew, ITERATION_TIMEOUT_S, 1.0)
        assert page.evaluate("window.__noReload") is True, "the page was reloaded"
        pics = Drawn(page)
        assert pics.counts["loss"] > n0
        check_charts_match(pics, api_iterations(api_server, run_id))
        assert page.text_content("#progress") != "waiting for events…"
        wait_for("the pipeline charts", lambda: chart_points(page, "timeline") == pics.counts["loss"], 10, 0.2)
        records = api_iterations(api_server, run_id)
        check_pipeline_charts(page, [r for r in records if r["iteration"] <= pics.counts["loss"]])

        # 4. recent pairs and live queue depths are on the page
        wait_for("the pairs table", lambda: page.locator("#pairs tbody tr").count() > 0, 30)
        assert page.locator("#pairs tbody tr").count() <= 20
        depths = {q: page.text_content(f'#queues dd[data-queue="{q}"]') for q in ("prompts", "generations", "pairs", "dead")}
        assert all(v and v != "–" for v in depths.values()), depths
        state = page.get_attribute("#run-page", "data-state")
        assert state in {"created", "running", "pausing", "paused", "stopping", "stopped", "completed"}, state
    finally:
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}")  # noqa: T201 - the path is the point of the print
        context.close()

    # 5. same origin only, token only in the Authorization header
    origin = urlsplit(api_server.url)
    assert log.requests
    for kind, url, headers in log.requests:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc), f"request off the API origin: {url}"
        assert api_server.read_token not in parts._replace(fragment="").geturl(), f"token in a URL: {kind} {url}"
        if parts.path.startswith("/v1/"):
            assert headers.get("authorization") == f"Bearer {api_server.read_token}", url
    assert not [e for e in log.errors if "Content Security Policy" in e or "pageerror" in e], log.errors
    assert shot.stat().st_size > 10_000


def test_pipeline_charts_of_an_async_run(api_server: Any, browser: Any, redis_client: Any, tmp_path: Path) -> None:
    from sparring.shared.config import parse_config
    from sparring.shared.records import IterationRecord
    from sparring.shared.store import RunStore
    from tests.integration.conftest import SMALL_ARENA_RUN

    cfg = parse_config({**SMALL_ARENA_RUN, "policy": {"path": "arena"}, "judge": {"kind": "arena_oracle"}, "prompts": {"source": "arena"},
                        "schedule": {"iterations": 3, "prompts_per_iteration": 32, "mode": "async",
                                                        "max_staleness": 1, "prompt_schedule": "disjoint"}})  # fmt: skip
    store = RunStore(redis_client)
    run_id = f"pipeline-charts-{time.time_ns()}"
    store.create_run(run_id, cfg.model_dump(mode="json"), str(tmp_path))
    t0, lags = 1_700_000_000.0, {1: {0: 30.0}, 2: {1: 28.0}, 3: {1: 31.0}}
    for i in (1, 2, 3):
        s0 = t0 + 10 * i
        spans = {"train": [s0 + 0.1, s0 + 1.5], "sync": [s0 + 2.0, s0 + 2.2], "eval": [s0 + 2.2, s0 + 3.0]}
        if i < 3:  # the next batch, generated while this one trains
            spans["generate_judge"] = [s0 + 0.1, s0 + 1.9]
        store.put_iteration(IterationRecord(
            run_id=run_id, iteration=i, policy_version_in=i - 1, policy_version_out=i, num_prompts=32, num_groups=32,
            num_pairs=int(sum(lags[i].values())), num_dead=0, started_at=s0, finished_at=s0 + 3.1,
            metrics={"loss/mean": 0.69, **{f"staleness/lag_{k}": n for k, n in lags[i].items()},
                     "staleness/max": float(max(lags[i])), "staleness/mean": float(max(lags[i]))},
            stage_seconds={k: b - a for k, (a, b) in spans.items()}, stage_spans=spans,
        ))  # fmt: skip
    store.set_state(run_id, "completed")

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    log = PageLog(page)
    try:
        page.goto(f"{api_server.url}/dashboard#/runs/{run_id}&token={api_server.read_token}")
        page.wait_for_selector('svg[data-chart="timeline"][data-points="3"]', timeout=30_000)
        check_pipeline_charts(page, api_iterations(api_server, run_id), sync=False)
        bars = page.evaluate(
            """() => [...document.querySelectorAll('svg[data-chart="timeline"] rect[data-stage]')].map((r) => [
                Number(r.dataset.iteration), r.dataset.stage, Number(r.getAttribute('x')), Number(r.getAttribute('width'))])"""
        )
        x = {(i, st): (a, a + w) for i, st, a, w in bars}
        for i in (1, 2):  # drawn side by side: the bars overlap in x, in lanes of their own
            assert x[(i, "generate_judge")][0] < x[(i, "train")][1] and x[(i, "train")][0] < x[(i, "generate_judge")][1]
            assert x[(i, "sync")][0] >= x[(i, "generate_judge")][1]
        assert Drawn(page).series["staleness"]["staleness/max"] == {1: 0.0, 2: 1.0, 3: 1.0}
    finally:
        page.screenshot(path=str(tmp_path / "pipeline-charts.png"), full_page=True)
        context.close()
    assert not [e for e in log.errors if "pageerror" in e], log.errors
