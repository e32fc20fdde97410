// sparring dashboard: run list and per-run live view, drawn from the /v1 API with no library.
//
// Routes (URL fragment): "#/" run list, "#/runs/<run_id>" one run. A token may arrive once as
// "#token=..." (or "...&token=..." after a route); it is moved to sessionStorage and removed from the URL.
// The token is only ever sent in the Authorization header of same-origin /v1 calls; the live event
// stream is read with fetch() + a ReadableStream reader (EventSource cannot send headers).
//
// Test hooks: every chart is <svg data-chart="NAME" data-points="N" data-series="KEY KEY ..."> (N =
// iterations with a point), each point a <circle data-iteration="I" data-series="KEY" data-value="V">, with
// data-low / data-high when the point has a 95% interval; the iteration table is described above
// iterationRow; the run view root has data-run-id, and data-iterations (iterations known to the page).
// The pipeline charts: <svg data-chart="timeline" data-points="N"> (N = iterations drawn, the last
// TIMELINE_ITERATIONS with stage spans), each busy interval a <rect data-iteration="I" data-stage="S"
// data-start="A" data-end="B"> (seconds from the iteration's start); <svg data-chart="staleness_hist"
// data-points="N"> (N = lags), each bar a <rect data-lag="K" data-value="PAIRS"> (trained pairs at version lag
// K, summed over the records' staleness/lag_K).
"use strict";

(() => {
  const TOKEN_KEY = "sparring.dashboard.token";
  const RUNS_REFRESH_MS = 3000;
  const QUEUES_REFRESH_MS = 2000;
  const RUN_REFRESH_MS = 10000;
  const PAIRS_LIMIT = 20;
  const TIMELINE_ITERATIONS = 12;
  const TIMELINE_STAGES = ["generate_judge", "train", "sync", "eval"]; // IterationRecord.stage_spans keys
  const ACTIVE_STATES = new Set(["created", "running", "pausing", "stopping"]);
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ------------------------------------------------------------------------------------ charts spec
  // Each chart: series read from an IterationRecord; a missing key is no point (never an error). A chart's
  // series are fixed (`series`) or found in the records (`seriesOf(recs)`); `group` is the section it is in.
  const metric = (key) => (rec) => num(rec.metrics && rec.metrics[key]);
  const evalValue = (key) => (rec) => num(rec.eval && rec.eval[key]);
  const evalBand = (key) => (rec) => [evalValue(`${key}_ci_low`)(rec), evalValue(`${key}_ci_high`)(rec)];

  // The evaluation mapping (IterationRecord.eval) is read generically, whatever judge and task evaluators a
  // run has: "eval/<metric>" comes from the evaluation itself (the evaluation judge's win rates, KL, lengths),
  // "eval/<evaluator>/<metric>" from a task evaluator; "<key>_ci_low" / "<key>_ci_high" are the 95% interval
  // of "<key>". Every "...win_rate_vs_<other>" key is a series of the win-rate chart; the core's KL, length
  // and truncation keys have their own charts; every other key is a series of its evaluator's chart (or of
  // the "other" chart for a core key this page does not know).
  const EVAL_PREFIX = "eval/";
  const CI_SUFFIX = /_ci_(low|high)$/;
  const WIN_RATE_KEY = /^eval\/(?:(.+)\/)?win_rate_vs_([^/]+)$/;
  const EVAL_OWN_CHART = new Set(["eval/kl_vs_iter0", "eval/response_length_mean", "eval/truncated_fraction"]);
  const EVAL_TABLE_ONLY = new Set(["eval/num_prompts", "eval/response_length_delta"]);

  // Every eval key with a value in some record (interval bounds excluded), sorted.
  function evalKeys(recs) {
    const keys = new Set();
    for (const r of recs) {
      for (const [k, v] of Object.entries(r.eval || {})) {
        if (k.startsWith(EVAL_PREFIX) && !CI_SUFFIX.test(k) && num(v) !== null) keys.add(k);
      }
    }
    return [...keys].sort();
  }

  // A win-rate key's parts: who judged (the evaluation judge, or an evaluator) and against which policy.
  function winRateKey(key) {
    const m = WIN_RATE_KEY.exec(key);
    if (!m) return null;
    const source = m[1] || "judge";
    const other = m[2];
    const versus = other === "iter0" ? "" : other === "prev" ? " vs previous" : ` vs ${other}`;
    return { key, source, other, label: source + versus, order: [other === "iter0" ? 0 : 1, m[1] ? 1 : 0, source, other] };
  }

  function compareOrder(a, b) {
    for (let i = 0; i < a.order.length; i++) {
      if (a.order[i] < b.order[i]) return -1;
      if (a.order[i] > b.order[i]) return 1;
    }
    return 0;
  }

  function winRateSeries(recs) {
    return evalKeys(recs).map(winRateKey).filter((w) => w !== null).sort(compareOrder)
      .map((w) => ({ key: w.key, label: w.label, get: evalValue(w.key), band: evalBand(w.key) }));
  }

  // The eval keys no fixed chart shows, by group: evaluator name, or "" for a core key.
  function otherEvalKeys(recs) {
    const groups = new Map();
    for (const key of evalKeys(recs)) {
      if (WIN_RATE_KEY.test(key) || EVAL_OWN_CHART.has(key) || EVAL_TABLE_ONLY.has(key)) continue;
      const rest = key.slice(EVAL_PREFIX.length);
      const slash = rest.lastIndexOf("/");
      const group = slash < 0 ? "" : rest.slice(0, slash);
      if (!groups.has(group)) groups.set(group, []);
      groups.get(group).push({ key, label: slash < 0 ? rest : rest.slice(slash + 1) });
    }
    return groups;
  }

  // One chart per evaluator (and one for unknown core keys) holding the keys no fixed chart shows.
  function evalGroupCharts(recs) {
    return [...otherEvalKeys(recs)].map(([group, keys]) => ({
      name: group ? `evaluator/${group}` : "eval_other",
      title: group ? `Evaluator ${group}` : "Other evaluation metrics",
      group: "eval",
      legend: true, // the series names are the evaluator's metric names
      seriesOf: () => keys.map((k) => ({ key: k.key, label: k.label, get: evalValue(k.key), band: evalBand(k.key) })),
    }));
  }

  const CHARTS = [
    { name: "winrate", group: "eval", range: [0, 1], ref: 0.5,
      title: "Win rate vs iteration 0 (95% interval), and vs the previous iteration",
      seriesOf: winRateSeries },
    { name: "kl", group: "eval", title: "KL(policy ‖ iteration 0), nats per response", ref: 0,
      series: [{ key: "eval/kl_vs_iter0", label: "KL", get: evalValue("eval/kl_vs_iter0") }] },
    { name: "response_length", group: "eval", title: "Response length (mean tokens)",
      series: [{ key: "eval/response_length_mean", label: "length", get: evalValue("eval/response_length_mean") }] },
    { name: "truncated", group: "eval", title: "Truncated responses (fraction at max_new_tokens)", range: [0, 1],
      series: [{ key: "eval/truncated_fraction", label: "truncated", get: evalValue("eval/truncated_fraction") }] },
    { name: "loss", group: "train", title: "Loss (mean over pairs)",
      series: [{ key: "loss/mean", label: "loss", get: metric("loss/mean") }] },
    { name: "margin", group: "train", title: "Reward margin (chosen − rejected)",
      series: [{ key: "rewards/margins", label: "margin", get: metric("rewards/margins") }] },
    { name: "accuracy", group: "train", title: "Reward accuracy", range: [0, 1],
      series: [{ key: "rewards/accuracies", label: "accuracy", get: metric("rewards/accuracies") }] },
    { name: "heldout_ranking", group: "train", range: [0, 1],
      title: "Held-out ranking accuracy: policy vs the ideal DPO policy (Chen et al. 2024)",
      series: [
        { key: "heldout/ranking_accuracy", label: "policy", get: metric("heldout/ranking_accuracy") },
        { key: "heldout/idealized_ranking_accuracy", label: "idealized", get: metric("heldout/idealized_ranking_accuracy") },
      ] },
    { name: "heldout_logps", group: "train", ref: 0,
      title: "Held-out log-prob change per iteration (nats; both below 0 = likelihood displacement)",
      series: [
        { key: "heldout/logps/chosen_delta", label: "chosen", get: metric("heldout/logps/chosen_delta") },
        { key: "heldout/logps/rejected_delta", label: "rejected", get: metric("heldout/logps/rejected_delta") },
      ] },
    { name: "pairs_per_s", group: "train", title: "Pairs / s",
      series: [{ key: "pairs/per_s", label: "pairs/s", get: metric("pairs/per_s") }] },
    { name: "tokens_per_s", group: "train", title: "Generated tokens / s",
      series: [{ key: "gen/tokens_per_s", label: "tokens/s", get: metric("gen/tokens_per_s") }] },
    { name: "queues", group: "train", title: "Queue depth (peak per iteration)",
      series: [
        { key: "queue/peak/prompts", label: "prompts", get: metric("queue/peak/prompts") },
        { key: "queue/peak/generations", label: "generations", get: metric("queue/peak/generations") },
        { key: "queue/peak/pairs", label: "pairs", get: metric("queue/peak/pairs") },
      ] },
    { name: "staleness", group: "pipeline", title: "Staleness of trained pairs (version lag)", ref: 0,
      series: [
        { key: "staleness/max", label: "max", get: metric("staleness/max") },
        { key: "staleness/mean", label: "mean", get: metric("staleness/mean") },
      ] },
    { name: "stale_dropped", group: "train", title: "Stale pairs dropped (from another policy version)",
      series: [{ key: "pairs/stale_dropped", label: "dropped", get: metric("pairs/stale_dropped") }] },
    { name: "sync", group: "train", title: "Weight sync (s)",
      series: [
        { key: "sync/max_engine_s", label: "slowest engine", get: metric("sync/max_engine_s") },
        { key: "stage/sync", label: "sync stage", get: (r) => num(r.stage_seconds && r.stage_seconds.sync) },
      ] },
    { name: "judge_latency", group: "train", title: "Judge latency (s)",
      series: [{ key: "judge/latency_s", label: "latency", get: metric("judge/latency_s") }] },
    { name: "stages", group: "train", title: "Stage time (s)",
      series: ["generate_judge", "train", "sync", "eval"].map((s) => ({
        key: `stage/${s}`, label: s, get: (r) => num(r.stage_seconds && r.stage_seconds[s]) })) },
  ];
  const SERIES_COLOURS = 8; // .s0 ... .s7 in app.css

  // ------------------------------------------------------------------------------------ small helpers
  function num(v) {
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  }

  function fmt(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
    if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
    if (a >= 1) return v.toFixed(2);
    if (a === 0) return "0";
    return v.toPrecision(2);
  }

  function fmtTime(unixSeconds) {
    if (!num(unixSeconds)) return "–";
    return new Date(unixSeconds * 1000).toLocaleString();
  }

  // el("tr", {class: "x", dataset: {a: "1"}}, child, "text", ...): text children are always text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "dataset") Object.entries(v).forEach(([dk, dv]) => { node.dataset[dk] = String(dv); });
      else if (k === "on") Object.entries(v).forEach(([ev, fn]) => node.addEventListener(ev, fn));
      else node.setAttribute(k, v === true ? "" : String(v));
    }
  }

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------------------------ token and API
  class AuthError extends Error {}

  function takeTokenFromUrl() {
    const hash = location.hash || "";
    const m = hash.match(/(^#|[?&])token=([^&]*)/);
    if (!m) return;
    let token = "";
    try { token = decodeURIComponent(m[2]); } catch (_) { token = m[2]; }
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    // Drop the token from the address bar and history; keep the route part.
    let rest = hash.replace(/(^#|[?&])token=[^&]*/, "$1").replace(/[?&]$/, "").replace(/^#&/, "#");
    if (rest === "#" || rest === "") rest = "#/";
    history.replaceState(null, "", location.pathname + location.search + rest);
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  async function api(path, opts = {}) {
    const tok = token();
    if (!tok) throw new AuthError("no token");
    const resp = await fetch(path, {
      headers: { Authorization: `Bearer ${tok}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      signal: opts.signal,
    });
    if (resp.status === 401) throw new AuthError(await detail(resp));
    if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status} ${await detail(resp)}`);
    return resp.json();
  }

  async function detail(resp) {
    try {
      const body = await resp.json();
      return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    } catch (_) {
      return resp.statusText;
    }
  }

  function showLogin(message) {
    stopPage();
    $("app").replaceChildren();
    $("login").hidden = false;
    $("signout").hidden = true;
    $("login-error").textContent = message || "";
    $("login-token").focus();
  }

  function onError(err) {
    if (err instanceof AuthError) {
      if (token()) sessionStorage.removeItem(TOKEN_KEY);
      showLogin(err.message === "no token" ? "" : `Token rejected: ${err.message}`);
      return true;
    }
    if (err && err.name === "AbortError") return true;
    return false;
  }

  // ------------------------------------------------------------------------------------ page lifecycle
  // Everything a page starts (timers, the event stream) is registered here and stopped on navigation.
  let page = { timers: [], aborts: [], stopped: false };

  function stopPage() {
    page.stopped = true;
    page.timers.forEach((t) => clearInterval(t));
    page.aborts.forEach((a) => a.abort());
    page = { timers: [], aborts: [], stopped: false };
    setLive("off");
  }

  function every(ms, fn) {
    page.timers.push(setInterval(fn, ms));
  }

  function route() {
    takeTokenFromUrl();
    stopPage();
    if (!token()) { showLogin(""); return; }
    $("login").hidden = true;
    $("signout").hidden = false;
    const m = (location.hash || "").match(/^#\/runs\/([^/?&]+)/);
    if (m) runPage(decodeURIComponent(m[1]));
    else runsPage();
  }

  function setLive(stateName, text) {
    const node = $("live");
    node.dataset.live = stateName;
    node.textContent = text || { off: "", connecting: "connecting…", live: "live", retrying: "reconnecting…" }[stateName] || "";
  }

  // ------------------------------------------------------------------------------------ run list
  function runsPage() {
    const table = el("table", { class: "runs", id: "runs" },
      el("thead", {}, el("tr", {}, ["Run", "State", "Iterations", "Algorithm", "Judge", "Pool", "Updated"].map((h) => el("th", {}, h)))),
      el("tbody", {}));
    const status = el("p", { class: "muted", id: "runs-status" }, "loading…");
    $("app").replaceChildren(el("section", { class: "page", id: "runs-page" }, el("h1", {}, "Runs"), status, table));
    const ctl = new AbortController();
    page.aborts.push(ctl);

    const load = async () => {
      try {
        const { runs } = await api("/v1/runs", { signal: ctl.signal });
        runs.sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
        table.tBodies[0].replaceChildren(...runs.map(runRow));
        status.textContent = runs.length ? `${runs.length} run(s) · refreshed ${new Date().toLocaleTimeString()}` : "No runs yet.";
      } catch (err) {
        if (!onError(err)) status.textContent = `Could not load runs: ${err.message}`;
      }
    };
    load();
    every(RUNS_REFRESH_MS, load);
  }

  function runRow(run) {
    const href = `#/runs/${encodeURIComponent(run.run_id)}`;
    return el("tr", { dataset: { runId: run.run_id, state: run.state } },
      el("td", {}, el("a", { href }, run.name || run.run_id), el("div", { class: "muted small" }, run.run_id)),
      el("td", {}, stateBadge(run.state), run.reason ? el("div", { class: "muted small" }, run.reason) : null),
      el("td", {}, `${run.iterations_done ?? 0} / ${run.iterations_total ?? "?"}`),
      el("td", {}, run.algorithm || "–"),
      el("td", {}, run.judge || "–"),
      el("td", {}, run.pool_id || "–"),
      el("td", {}, fmtTime(run.updated_at)));
  }

  function stateBadge(s) {
    return el("span", { class: `badge state-${s}`, dataset: { state: s } }, s || "unknown");
  }

  // ------------------------------------------------------------------------------------ one run
  function runPage(runId) {
    const base = `/v1/runs/${encodeURIComponent(runId)}`;
    const iterations = new Map(); // iteration number -> IterationRecord
    const ctl = new AbortController();
    page.aborts.push(ctl);
    const myPage = page;
    let run = null;

    const head = el("div", { class: "run-head" });
    const progress = el("p", { class: "progress", id: "progress" }, "waiting for events…");
    const note = el("p", { class: "error", id: "run-error", role: "alert" });
    const queues = el("dl", { class: "queues", id: "queues" });
    const chartGroups = { eval: el("div", { class: "charts", id: "eval-charts" }), train: el("div", { class: "charts", id: "train-charts" }),
      pipeline: el("div", { class: "charts", id: "pipeline-charts" }) };
    const chartNodes = new Map();
    const chartNode = (spec) => { // created on first use: evaluator charts appear with their first values
      let node = chartNodes.get(spec.name);
      if (!node) {
        node = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": spec.title,
          "data-chart": spec.name, "data-points": "0" });
        chartNodes.set(spec.name, node);
        chartGroups[spec.group].append(el("figure", { class: "chart-box" }, el("figcaption", {}, spec.title), node));
      }
      return node;
    };
    CHARTS.forEach(chartNode);
    const timeline = chartNode({ name: "timeline", group: "pipeline",
      title: `Stage timeline: busy intervals of the last ${TIMELINE_ITERATIONS} iterations (s from the iteration's start)` });
    const stalenessHist = chartNode({ name: "staleness_hist", group: "pipeline",
      title: "Staleness histogram: trained pairs by version lag, all iterations" });
    const evalNote = el("p", { class: "muted", id: "eval-note" });
    const iterBody = el("tbody", {});
    const iterTable = el("table", { class: "iterations", id: "iterations" },
      el("thead", {}, el("tr", {}, ITERATION_COLUMNS.map((c) => el("th", { title: c.tip || null }, c.title)))),
      iterBody);
    const pairsBody = el("tbody", {});
    const pairs = el("table", { class: "pairs", id: "pairs" },
      el("thead", {}, el("tr", {}, ["Iter", "Prompt", "Chosen", "Rejected", "Scores", "P(chosen wins)", "Judge"].map((h) => el("th", {}, h)))),
      pairsBody);
    const deadBody = el("tbody", {});
    const deadNote = el("p", { class: "muted", id: "dead-note" }, "none");
    const dead = el("table", { class: "pairs", id: "dead-letters", hidden: true },
      el("thead", {}, el("tr", {}, ["Prompt", "Iter", "Stage", "Attempts", "Reason"].map((h) => el("th", {}, h)))),
      deadBody);
    const root = el("section", { class: "page", id: "run-page", dataset: { runId, iterations: 0 } },
      el("p", {}, el("a", { href: "#/" }, "← all runs")),
      head, progress, note,
      el("h2", {}, "Queues (live)"), queues,
      el("h2", {}, "Dead letters"), deadNote, dead,
      el("h2", {}, "Evaluation (held-out prompts)"), evalNote, chartGroups.eval,
      el("h2", {}, "Training, by iteration"), chartGroups.train,
      el("h2", {}, "Pipeline: stage timeline and staleness"), chartGroups.pipeline,
      el("h2", {}, "Iterations"), iterTable,
      el("h2", {}, `Recent pairs (latest ${PAIRS_LIMIT})`), pairs);
    $("app").replaceChildren(root);

    const fail = (what) => (err) => {
      if (!onError(err)) note.textContent = `Could not load ${what}: ${err.message}`;
    };

    function drawHead() {
      if (!run) return;
      const done = run.iterations_done ?? iterations.size;
      head.replaceChildren(
        el("h1", {}, run.name || run.run_id, " ", stateBadge(run.state)),
        el("p", { class: "muted" }, `${run.run_id} · ${run.algorithm || "?"} · judge ${run.judge || "?"}`
          + (run.pool_id ? ` · pool ${run.pool_id}` : "") + ` · created ${fmtTime(run.created_at)}`),
        el("p", { id: "run-iterations" }, `Iterations ${done} / ${run.iterations_total ?? "?"}`,
          el("progress", { max: run.iterations_total || 1, value: Math.min(done, run.iterations_total || done) })),
        el("p", { class: "reason", id: "run-reason" }, run.reason || ""));
      root.dataset.state = run.state;
    }

    function drawCharts() {
      const recs = [...iterations.values()].sort((a, b) => a.iteration - b.iteration);
      for (const spec of [...CHARTS, ...evalGroupCharts(recs)]) drawChart(chartNode(spec), spec, recs);
      drawTimeline(timeline, recs);
      drawStalenessHistogram(stalenessHist, recs);
      iterBody.replaceChildren(...recs.slice().reverse().map(iterationRow));
      const last = recs.length ? recs[recs.length - 1] : null;
      const n = last ? evalValue("eval/num_prompts")(last) : null;
      evalNote.textContent = !last ? "" : n !== null
        ? `${fmt(n)} held-out prompts, one sample per policy version; series and charts follow the run's evaluation keys.`
        : "This run's records carry no evaluation.";
      root.dataset.iterations = String(recs.length);
    }

    function addIterations(list) {
      let changed = false;
      for (const rec of list || []) {
        if (!rec || !Number.isInteger(rec.iteration)) continue;
        iterations.set(rec.iteration, rec);
        changed = true;
      }
      if (changed) drawCharts();
      if (run && iterations.size > (run.iterations_done || 0)) { run.iterations_done = iterations.size; drawHead(); }
    }

    const loadRun = () => api(base, { signal: ctl.signal }).then((r) => { run = r; note.textContent = ""; drawHead(); });
    const loadIterations = () => api(`${base}/iterations`, { signal: ctl.signal }).then((b) => addIterations(b.iterations));
    const loadPairs = () => api(`${base}/pairs?limit=${PAIRS_LIMIT}`, { signal: ctl.signal })
      .then((b) => pairsBody.replaceChildren(...(b.pairs || []).map(pairRow)));
    // Dead letters (entries a stage gave up on): reloaded whenever the dead queue's length changes.
    let deadCount = null;
    const loadDead = () => api(`${base}/dead-letters`, { signal: ctl.signal }).then((b) => {
      const list = b.dead_letters || [];
      deadBody.replaceChildren(...list.map(deadRow));
      dead.hidden = list.length === 0;
      deadNote.textContent = list.length ? `${list.length} entr${list.length === 1 ? "y" : "ies"} given up on; `
        + "POST …/dead-letters/requeue runs their prompts again in the next iteration." : "none";
    });
    const loadQueues = () => api(`${base}/queues`, { signal: ctl.signal }).then((b) => {
      const q = b.queues || {};
      drawQueues(queues, q);
      if (q.dead !== deadCount) { deadCount = q.dead; loadDead().catch(fail("dead letters")); }
    });

    Promise.all([loadRun(), loadIterations()]).then(() => {
      if (myPage.stopped) return;
      drawCharts();
      loadPairs().catch(fail("pairs"));
      loadQueues().catch(fail("queues"));
      streamEvents(base, ctl.signal, myPage, {
        onOpen: () => loadIterations().catch(fail("iterations")), // catch what finished before the stream opened
        onEvent: handleEvent,
      });
    }).catch((err) => {
      if (!onError(err)) progress.textContent = `Could not load run ${runId}: ${err.message}`;
    });
    every(QUEUES_REFRESH_MS, () => { if (run && ACTIVE_STATES.has(run.state)) loadQueues().catch(fail("queues")); });
    every(RUN_REFRESH_MS, () => { loadRun().catch(fail("run")); });

    function handleEvent(kind, data) {
      data = data || {};
      switch (kind) {
        case "iteration_done": {
          const rec = data.record;
          addIterations([rec]);
          const loss = rec && rec.metrics ? num(rec.metrics["loss/mean"]) : null;
          progress.textContent = `Iteration ${data.iteration} done: ${rec ? rec.num_pairs : "?"} pairs, loss ${fmt(loss)}`;
          loadPairs().catch(fail("pairs"));
          break;
        }
        case "iteration_started":
          progress.textContent = `Iteration ${data.iteration} started (policy version ${data.policy_version ?? "?"})`;
          break;
        case "progress": {
          const it = data.iteration !== undefined ? `Iteration ${data.iteration} · ` : "";
          const count = data.total ? ` ${data.done ?? 0}/${data.total}` : "";
          progress.textContent = `${it}${data.stage || "progress"}${count}${data.message ? ": " + data.message : ""}`;
          break;
        }
        case "state":
          if (run) { run.state = data.state || run.state; run.reason = data.reason ?? run.reason; drawHead(); }
          progress.textContent = `State: ${data.state}${data.reason ? " (" + data.reason + ")" : ""}`;
          break;
        case "worker_died":
          progress.textContent = `Worker ${data.consumer} died and was replaced (iteration ${data.iteration})`;
          break;
        case "completed":
          if (run) { run.state = "completed"; drawHead(); }
          progress.textContent = "Run completed";
          loadRun().catch(fail("run"));
          break;
        case "failed":
          if (run) { run.state = "failed"; run.reason = data.reason || run.reason; drawHead(); }
          progress.textContent = `Run failed: ${data.reason || "?"}`;
          break;
        case "end": // the server closed the stream: the run is at rest (paused or finished)
          if (run && data.state && data.state !== "deleted") { run.state = data.state; drawHead(); }
          loadRun().catch(fail("run"));
          loadQueues().catch(fail("queues"));
          return; // keep the last progress line
        default:
          break; // unknown kinds are ignored: newer servers may send more
      }
      progress.dataset.kind = kind;
    }
  }

  function drawQueues(node, q) {
    node.replaceChildren(...["prompts", "generations", "pairs", "dead"].flatMap((k) => [
      el("dt", {}, k), el("dd", { dataset: { queue: k } }, fmt(num(q[k]))),
    ]));
  }

  function deadRow(d) {
    return el("tr", { dataset: { entryId: d.entry_id ?? "" } },
      el("td", {}, d.prompt_id || "–"),
      el("td", {}, d.iteration ?? "–"),
      el("td", {}, d.stage || "–"),
      el("td", { class: "num" }, d.attempts ?? "–"),
      el("td", { class: "text", title: d.reason ?? "" }, clip(d.reason, 240)));
  }

  function clip(text, n) {
    const s = text === null || text === undefined ? "" : String(text);
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  function pairRow(p) {
    const cell = (t) => el("td", { class: "text", title: t ?? "" }, clip(t, 240));
    return el("tr", { dataset: { recordId: p.record_id ?? "" } },
      el("td", {}, p.iteration ?? "–"),
      cell(p.prompt), cell(p.chosen), cell(p.rejected),
      el("td", { class: "num" }, `${fmt(num(p.chosen_score))} / ${fmt(num(p.rejected_score))}`),
      el("td", { class: "num" }, fmt(num(p.win_prob))),
      el("td", {}, p.judge || "–"));
  }

  // ------------------------------------------------------------------------------------ iteration table
  // One row per iteration, newest first. Test hooks: tr[data-iteration]; a value cell is td[data-key] with
  // data-value (absent when the record has no value); a win-rate cell holds one span[data-key][data-value]
  // per win-rate key of the record.
  const numCell = (key, get, digits) => (rec) => {
    const v = get(rec);
    return el("td", { class: "num", dataset: v === null ? { key } : { key, value: v } },
      v === null ? "–" : digits === undefined ? fmt(v) : v.toFixed(digits));
  };

  const winRateCell = (wanted, labelOf) => (rec) => {
    const keys = Object.keys(rec.eval || {}).filter((k) => !CI_SUFFIX.test(k) && num(rec.eval[k]) !== null)
      .map(winRateKey).filter((w) => w !== null && wanted(w)).sort(compareOrder);
    if (!keys.length) return el("td", { class: "num" }, "–");
    return el("td", { class: "num" }, keys.map((w, i) => {
      const v = num(rec.eval[w.key]);
      const [lo, hi] = evalBand(w.key)(rec);
      const ci = lo !== null && hi !== null ? ` [${lo.toFixed(2)}, ${hi.toFixed(2)}]` : "";
      return el("span", { class: "wr", dataset: { key: w.key, value: v }, title: w.key },
        i ? el("br", {}) : null, `${labelOf(w)} ${v.toFixed(3)}${ci}`);
    }));
  };

  const ITERATION_COLUMNS = [
    { title: "Iter", cell: (r) => el("td", {}, r.iteration) },
    { title: "Pairs", cell: numCell("num_pairs", (r) => num(r.num_pairs)) },
    { title: "Loss", cell: numCell("loss/mean", metric("loss/mean")) },
    { title: "Accuracy", tip: "rewards/accuracies", cell: numCell("rewards/accuracies", metric("rewards/accuracies"), 3) },
    { title: "Win rate vs iter 0", tip: "eval …win_rate_vs_iter0 [95% interval], per judge / evaluator",
      cell: winRateCell((w) => w.other === "iter0", (w) => w.label) },
    { title: "Win rate vs previous", tip: "eval …win_rate_vs_prev [95% interval], per judge / evaluator",
      cell: winRateCell((w) => w.other !== "iter0", (w) => (w.other === "prev" ? w.source : w.label)) },
    { title: "KL vs iter 0", tip: "eval/kl_vs_iter0 (nats per response)", cell: numCell("eval/kl_vs_iter0", evalValue("eval/kl_vs_iter0"), 3) },
    { title: "Length", tip: "eval/response_length_mean (tokens)",
      cell: numCell("eval/response_length_mean", evalValue("eval/response_length_mean"), 1) },
    { title: "Truncated", tip: "eval/truncated_fraction",
      cell: numCell("eval/truncated_fraction", evalValue("eval/truncated_fraction"), 3) },
    { title: "Stale dropped", tip: "pairs/stale_dropped", cell: numCell("pairs/stale_dropped", metric("pairs/stale_dropped")) },
    { title: "Time (s)", cell: numCell("seconds", (r) => (num(r.finished_at) !== null && num(r.started_at) !== null
      ? r.finished_at - r.started_at : null), 1) },
  ];

  function iterationRow(rec) {
    return el("tr", { dataset: { iteration: rec.iteration } }, ITERATION_COLUMNS.map((c) => c.cell(rec)));
  }

  // ------------------------------------------------------------------------------------ event stream
  // Server-sent events over fetch(): resumes with ?after=<last id> on reconnect, with a growing pause.
  // The server closes the stream with an "end" event when the run is at rest: a finished run is not
  // watched any more; a paused one is looked at again every PAUSED_RETRY_MS (a resume restarts events).
  const TERMINAL_STATES = new Set(["stopped", "completed", "failed", "deleted"]);
  const PAUSED_RETRY_MS = 5000;

  async function streamEvents(base, signal, myPage, handlers) {
    let lastId = null;
    let backoff = 1000;
    while (!signal.aborted && !myPage.stopped) {
      let endState = null;
      setLive("connecting");
      try {
        const url = `${base}/events` + (lastId ? `?after=${encodeURIComponent(lastId)}` : "");
        const resp = await fetch(url, {
          headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" },
          cache: "no-store", credentials: "omit", signal,
        });
        if (resp.status === 401) throw new AuthError(await detail(resp));
        if (!resp.ok || !resp.body) throw new Error(`events: HTTP ${resp.status}`);
        setLive("live");
        backoff = 1000;
        handlers.onOpen();
        await readEvents(resp.body, (ev) => {
          if (ev.id) lastId = ev.id;
          let data = null;
          try { data = ev.data ? JSON.parse(ev.data) : null; } catch (_) { return; }
          if (ev.event === "end") endState = (data && data.state) || "deleted";
          handlers.onEvent(ev.event || "message", data);
        });
      } catch (err) {
        if (onError(err)) return;
      }
      if (signal.aborted || myPage.stopped) return;
      if (endState && TERMINAL_STATES.has(endState)) { setLive("off", `run ${endState}`); return; }
      let pause = backoff;
      if (endState) { setLive("resting", `run ${endState}`); pause = PAUSED_RETRY_MS; }
      else { setLive("retrying"); backoff = Math.min(backoff * 2, 15000); }
      await new Promise((r) => setTimeout(r, pause));
    }
  }

  // Parse a text/event-stream body (WHATWG HTML "server-sent events" format); calls onEvent({id, event, data}).
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let ev = { id: "", event: "", data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const sep = buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1;
        if (buf[nl] === "\r" && nl + 1 === buf.length) break; // a CR at the end may be half of CRLF
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + sep);
        if (line === "") {
          if (ev.data.length || ev.event) onEvent({ id: ev.id, event: ev.event, data: ev.data.join("\n") });
          ev = { id: "", event: "", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // heartbeat comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") ev.data.push(val);
        else if (field === "event") ev.event = val;
        else if (field === "id") ev.id = val;
      }
    }
  }

  // ------------------------------------------------------------------------------------ SVG line chart
  const W = 360, H = 210, M = { top: 26, right: 12, bottom: 26, left: 46 };

  function drawChart(node, spec, recs) {
    const series = (spec.seriesOf ? spec.seriesOf(recs) : spec.series).map((s, i) => ({
      ...s, index: i,
      pts: recs.map((r) => ({ x: r.iteration, y: s.get(r), band: s.band ? interval(s.band(r)) : null }))
        .filter((p) => p.y !== null),
    }));
    const withData = new Set(series.flatMap((s) => s.pts.map((p) => p.x)));
    node.dataset.points = String(withData.size);
    node.dataset.series = series.map((s) => s.key).join(" ");
    node.replaceChildren();
    if (!withData.size) {
      node.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
        recs.length ? "not in this run's records" : "no data yet"));
      return;
    }
    // the legend (several series, or one with an interval) wraps onto as many rows as it needs
    const legendItems = [];
    if (spec.legend || series.length > 1 || series.some((s) => s.pts.some((p) => p.band))) {
      let lx = M.left, row = 0;
      for (const s of series) {
        const text = s.label + (s.pts.length ? "" : " (none)");
        const width = 22 + 6.5 * text.length;
        if (lx > M.left && lx + width > W - M.right) { lx = M.left; row += 1; }
        legendItems.push({ s, text, x: lx, y: 8 + 14 * row });
        lx += width;
      }
    }
    const top = M.top + (legendItems.length ? legendItems[legendItems.length - 1].y - 8 : 0);
    // x: iteration numbers; y: values, interval bounds and the fixed range if any
    const xs = [...withData];
    let x0 = Math.min(...xs), x1 = Math.max(...xs);
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    const ys = series.flatMap((s) => s.pts.flatMap((p) => [p.y, ...(p.band || [])]));
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (spec.range) { y0 = Math.min(y0, spec.range[0]); y1 = Math.max(y1, spec.range[1]); }
    const nonNegative = y0 >= 0;
    if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    else if (!spec.range) { const pad = (y1 - y0) * 0.08; y0 -= pad; y1 += pad; }
    if (nonNegative && y0 < 0) y0 = 0; // counts, rates and times never go below zero
    const px = (x) => M.left + ((x - x0) / (x1 - x0)) * (W - M.left - M.right);
    const py = (y) => H - M.bottom - ((y - y0) / (y1 - y0)) * (H - top - M.bottom);

    const grid = svg("g", { class: "grid" });
    const yTicks = ticks(y0, y1, 4);
    const yStep = yTicks.length > 1 ? yTicks[1] - yTicks[0] : Math.abs(y1 - y0);
    for (const t of yTicks) {
      grid.append(svg("line", { x1: M.left, x2: W - M.right, y1: py(t), y2: py(t) }),
        svg("text", { x: M.left - 5, y: py(t) + 3, "text-anchor": "end" }, fmtTick(t, yStep)));
    }
    for (const t of ticks(x0, x1, 6).filter((t) => Number.isInteger(t))) {
      grid.append(svg("text", { x: px(t), y: H - M.bottom + 14, "text-anchor": "middle" }, String(t)));
    }
    grid.append(svg("text", { x: W - M.right, y: H - 2, "text-anchor": "end", class: "axis-label" }, "iteration"));
    node.append(grid);
    if (spec.ref !== undefined && spec.ref >= y0 && spec.ref <= y1) {
      node.append(svg("line", { class: "ref", x1: M.left, x2: W - M.right, y1: py(spec.ref), y2: py(spec.ref) }));
    }

    const legend = svg("g", { class: "legend" });
    for (const { s, text, x, y } of legendItems) {
      legend.append(svg("rect", { class: `swatch s${s.index % SERIES_COLOURS}`, x, y, width: 10, height: 10 }),
        svg("text", { x: x + 13, y: y + 9, "data-series": s.key }, text));
    }
    for (const s of series) {
      const g = svg("g", { class: `series s${s.index % SERIES_COLOURS}`, "data-series": s.key, "data-points": s.pts.length });
      for (const p of s.pts) {
        if (p.band) {
          const x = px(p.x);
          g.append(svg("path", { class: "band",
            d: `M${x - 3},${py(p.band[0])}H${x + 3}M${x},${py(p.band[0])}V${py(p.band[1])}M${x - 3},${py(p.band[1])}H${x + 3}` }));
        }
      }
      if (s.pts.length > 1) {
        g.append(svg("path", { class: "line", d: s.pts.map((p, i) => `${i ? "L" : "M"}${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join("") }));
      }
      for (const p of s.pts) {
        const tip = `${s.label}, iteration ${p.x}: ${fmt(p.y)}` + (p.band ? ` [${fmt(p.band[0])}, ${fmt(p.band[1])}]` : "");
        g.append(svg("circle", { class: "point", cx: px(p.x).toFixed(1), cy: py(p.y).toFixed(1), r: 3,
          "data-iteration": p.x, "data-series": s.key, "data-value": p.y,
          "data-low": p.band ? p.band[0] : null, "data-high": p.band ? p.band[1] : null }, svg("title", {}, tip)));
      }
      node.append(g);
    }
    node.append(legend);
  }

  // One row per iteration (the last TIMELINE_ITERATIONS with stage_spans), one bar per stage's busy interval,
  // x in seconds from the iteration's start. Async runs show generate_judge (the next batch) beside train.
  function drawTimeline(node, recs) {
    const rows = recs.filter((r) => r.stage_spans && Object.keys(r.stage_spans).length).slice(-TIMELINE_ITERATIONS);
    node.dataset.points = String(rows.length);
    node.replaceChildren();
    if (!rows.length) {
      node.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
        recs.length ? "no stage spans in this run's records" : "no data yet"));
      return;
    }
    const bars = rows.flatMap((r) => TIMELINE_STAGES.filter((st) => Array.isArray(r.stage_spans[st])).map((st) => ({
      it: r.iteration, stage: st, a: Math.max(0, r.stage_spans[st][0] - r.started_at), b: Math.max(0, r.stage_spans[st][1] - r.started_at),
    })));
    const x1 = Math.max(1e-3, ...rows.map((r) => r.finished_at - r.started_at), ...bars.map((b) => b.b));
    const top = M.top + 4, rowH = (H - top - M.bottom) / rows.length;
    const px = (x) => M.left + (x / x1) * (W - M.left - M.right);
    const grid = svg("g", { class: "grid" });
    const xTicks = ticks(0, x1, 5);
    for (const t of xTicks) {
      grid.append(svg("line", { x1: px(t), x2: px(t), y1: top, y2: H - M.bottom }),
        svg("text", { x: px(t), y: H - M.bottom + 14, "text-anchor": "middle" }, fmtTick(t, xTicks[1] - xTicks[0])));
    }
    rows.forEach((r, i) => grid.append(svg("text", { x: M.left - 5, y: top + (i + 0.5) * rowH + 3, "text-anchor": "end" }, String(r.iteration))));
    grid.append(svg("text", { x: W - M.right, y: H - 2, "text-anchor": "end", class: "axis-label" }, "seconds"));
    node.append(grid);
    const lane = rowH / TIMELINE_STAGES.length;
    for (const b of bars) {
      const i = rows.findIndex((r) => r.iteration === b.it), k = TIMELINE_STAGES.indexOf(b.stage);
      node.append(svg("rect", { class: `s${k}`, x: px(b.a).toFixed(1), y: (top + i * rowH + k * lane).toFixed(1),
        width: Math.max(1, px(b.b) - px(b.a)).toFixed(1), height: Math.max(1, lane - 1).toFixed(1),
        "data-iteration": b.it, "data-stage": b.stage, "data-start": b.a, "data-end": b.b },
        svg("title", {}, `iteration ${b.it}, ${b.stage}: ${fmt(b.a)}-${fmt(b.b)} s (${fmt(b.b - b.a)} s)`)));
    }
    const legend = svg("g", { class: "legend" });
    let lx = M.left;
    TIMELINE_STAGES.forEach((st, k) => {
      legend.append(svg("rect", { class: `swatch s${k}`, x: lx, y: 8, width: 10, height: 10 }),
        svg("text", { x: lx + 13, y: 17, "data-series": st }, st));
      lx += 22 + 6.5 * st.length;
    });
    node.append(legend);
  }

  // Bars: trained pairs per version lag (the records' staleness/lag_<k>, summed).
  function drawStalenessHistogram(node, recs) {
    const counts = new Map();
    for (const r of recs) {
      for (const [k, v] of Object.entries(r.metrics || {})) {
        const m = /^staleness\/lag_(\d+)$/.exec(k);
        if (m && num(v) !== null) counts.set(Number(m[1]), (counts.get(Number(m[1])) || 0) + v);
      }
    }
    const lags = [...counts.keys()].sort((a, b) => a - b);
    node.dataset.points = String(lags.length);
    node.replaceChildren();
    if (!lags.length) {
      node.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
        recs.length ? "not in this run's records" : "no data yet"));
      return;
    }
    const y1 = Math.max(...counts.values()), top = M.top;
    const py = (y) => H - M.bottom - (y / y1) * (H - top - M.bottom);
    const slot = (W - M.left - M.right) / lags.length;
    const grid = svg("g", { class: "grid" });
    const yTicks = ticks(0, y1, 4);
    for (const t of yTicks) {
      grid.append(svg("line", { x1: M.left, x2: W - M.right, y1: py(t), y2: py(t) }),
        svg("text", { x: M.left - 5, y: py(t) + 3, "text-anchor": "end" }, fmtTick(t, yTicks.length > 1 ? yTicks[1] - yTicks[0] : t)));
    }
    lags.forEach((lag, i) => grid.append(svg("text", { x: M.left + (i + 0.5) * slot, y: H - M.bottom + 14, "text-anchor": "middle" }, String(lag))));
    grid.append(svg("text", { x: W - M.right, y: H - 2, "text-anchor": "end", class: "axis-label" }, "version lag"));
    node.append(grid);
    lags.forEach((lag, i) => {
      const n = counts.get(lag);
      node.append(svg("rect", { class: "s0", x: (M.left + i * slot + slot * 0.2).toFixed(1), y: py(n).toFixed(1),
        width: (slot * 0.6).toFixed(1), height: Math.max(1, py(0) - py(n)).toFixed(1), "data-lag": lag, "data-value": n },
        svg("title", {}, `lag ${lag}: ${fmt(n)} pairs`)));
    });
  }

  // [low, high] when both bounds are numbers, else null (no interval is drawn).
  function interval(band) {
    return Array.isArray(band) && num(band[0]) !== null && num(band[1]) !== null ? [band[0], band[1]] : null;
  }

  // A tick label with just enough decimals to tell neighbouring ticks `step` apart.
  function fmtTick(t, step) {
    if (Math.abs(t) >= 1e4 || !(step > 0)) return fmt(t);
    const decimals = Math.max(0, Math.min(8, -Math.floor(Math.log10(step) + 1e-9)));
    return t.toFixed(decimals);
  }

  // About n round tick values covering [a, b].
  function ticks(a, b, n) {
    const span = b - a;
    if (!(span > 0)) return [a];
    const raw = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let t = Math.ceil(a / step) * step; t <= b + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
    return out;
  }

  // ------------------------------------------------------------------------------------ boot
  function boot() {
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("login-token").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("login-token").value = "";
      route();
    });
    $("signout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("");
    });
    window.addEventListener("hashchange", route);
    route();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
