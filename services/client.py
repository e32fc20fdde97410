"""`sparring serve` and the commands that talk to a running API: `submit`, `status`, `pause`, `stop`, `resume`, `export`,
`feedback`.

The client commands read the API address from `--api` or SPARRING_API_URL (default http://127.0.0.1:8321)
and the token from `--token` or SPARRING_TOKEN. An API error prints its detail and every listed problem
and exits 2 for a refused request (4xx), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sparring.services.display import eval_columns, win_cell
from sparring.services.launch import init_ray, parse_sets
from sparring.services.progress import print_json

DEFAULT_API = "http://127.0.0.1:8321"
DEFAULT_PORT = 8321


class ApiError(RuntimeError):
    def __init__(self, status: int, detail: str, problems: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.problems = status, detail, problems or []


class ApiClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 60.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def _check(self, response: Any) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text}
            detail = body.get("detail", "")
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            raise ApiError(response.status_code, detail, body.get("problems"))
        return response

    def upload_pool(
        self, path: Path, kind: str = "prompts", name: str | None = None, columns: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A JSONL pool, or a parquet file (`.parquet`) with its optional column mapping (prompt_column, ...)."""
        parquet = path.suffix == ".parquet"
        r = self.http.post(
            "/v1/pools",
            params={"kind": kind, "name": name or path.name, **{k: v for k, v in (columns or {}).items() if v}},
            content=path.read_bytes(),
            headers={"Content-Type": "application/vnd.apache.parquet" if parquet else "application/x-ndjson"},
        )
        return self._check(r).json()

    def post_feedback(self, run_id: str, path: Path) -> dict[str, Any]:
        """A JSONL file of thumbs-up/down items (shared/feedback.py) to `POST /v1/runs/{run_id}/feedback`."""
        r = self.http.post(
            f"/v1/runs/{run_id}/feedback", content=path.read_bytes(), headers={"Content-Type": "application/x-ndjson"}
        )
        return self._check(r).json()

    def create_run(self, config: dict[str, Any], pool_id: str | None = None, key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": key} if key else {}
        return self._check(self.http.post("/v1/runs", json={"config": config, "pool_id": pool_id}, headers=headers)).json()

    def get(self, path: str, **params: Any) -> Any:
        return self._check(self.http.get(path, params={k: v for k, v in params.items() if v is not None})).json()

    def post(self, path: str) -> Any:
        return self._check(self.http.post(path)).json()

    def download(self, path: str, out: Any, **params: Any) -> tuple[int, dict[str, str]]:
        """Stream a GET body into `out`; returns (bytes written, response headers)."""
        written = 0
        with self.http.stream("GET", path, params={k: v for k, v in params.items() if v is not None}) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            for chunk in r.iter_bytes():
                out.write(chunk)
                written += len(chunk)
        return written, dict(r.headers)


# ------------------------------------------------------------------------------------------------ serve


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sparring.services.api import create_app
    from sparring.services.settings import load_settings
    from sparring.shared.redis_server import open_redis

    settings = load_settings(args.config, data_dir=args.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.api_tokens and not settings.readonly_tokens:
        token_file = settings.data_dir / "admin-token"
        if not token_file.is_file():
            token_file.touch(mode=0o600)
            token_file.write_text(secrets.token_urlsafe(32) + "\n")
        settings = settings.model_copy(update={"api_tokens": (token_file.read_text().strip(),)})
        print(f"no API tokens configured (SPARRING_API_TOKENS); using the one in {token_file}", flush=True)
    with open_redis(settings.redis_url, settings.data_dir, outage_s=settings.redis_outage_s) as (client, url):
        init_ray(settings.ray_address)
        app = create_app(settings, client, url)
        print(f"sparring API on http://{args.host}:{args.port}  (dashboard: http://{args.host}:{args.port}/dashboard)", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level)
    return 0


# ------------------------------------------------------------------------------------------------ client commands


def _client(args: argparse.Namespace) -> ApiClient:
    token = args.token or os.environ.get("SPARRING_TOKEN")
    if not token:
        raise ApiError(0, "no token: pass --token or set SPARRING_TOKEN")
    return ApiClient(args.api or os.environ.get("SPARRING_API_URL", DEFAULT_API), token)


def submit(args: argparse.Namespace) -> int:
    from sparring.shared.config import set_dotted

    config = yaml.safe_load(Path(args.config).read_text()) or {}
    if not isinstance(config, dict):
        raise ApiError(0, f"{args.config}: top level must be a mapping")
    for dotted, value in parse_sets(args.set).items():
        set_dotted(config, dotted, value)
    api = _client(args)
    pool_id = None
    if args.pool:
        pool = api.upload_pool(Path(args.pool), args.pool_kind)
        pool_id = pool["pool_id"]
        dup = f", {pool['duplicate_prompts']} repeated prompt(s)" if pool["duplicate_prompts"] else ""
        print(f"pool {pool_id}: {pool['num_items']} {pool['kind']}{dup}", flush=True)
    run = api.create_run(config, pool_id, args.key)
    print(f"run {run['run_id']} {run['state']}", flush=True)
    if args.wait:
        return _follow(api, run["run_id"])
    return 0


def _follow(api: ApiClient, run_id: str, seen: int = 0) -> int:
    while True:
        run = api.get(f"/v1/runs/{run_id}")
        for rec in api.get(f"/v1/runs/{run_id}/iterations")["iterations"][seen:]:
            print(_iteration_line(rec), flush=True)
            seen += 1
        if run["state"] in ("completed", "failed", "stopped", "paused"):
            print(f"run {run_id} {run['state']}{': ' + run['reason'] if run['reason'] else ''}", flush=True)
            return 0 if run["state"] != "failed" else 1
        time.sleep(2)


def _iteration_line(rec: dict[str, Any]) -> str:
    """One iteration: pairs, loss, and every eval win rate against iteration 0 with its 95% interval."""
    ev = rec.get("eval", {})
    wins = "".join(f", {header} {win_cell(ev, key)}" for header, key in eval_columns([rec]))
    kl = f", KL {ev['eval/kl_vs_iter0']:.2f}" if "eval/kl_vs_iter0" in ev else ""
    loss = rec["metrics"].get("loss/mean")
    return f"  iteration {rec['iteration']}: {rec['num_pairs']} pairs, loss {loss if loss is None else round(loss, 4)}{wins}{kl}"


def status(args: argparse.Namespace) -> int:
    if getattr(args, "dead", False) and args.run_id is None:
        raise ApiError(0, "--dead lists one run's dead letters: give its RUN id")
    api = _client(args)
    if getattr(args, "json", False):  # the API's own objects: {runs}, {run, iterations} or {dead_letters}
        if args.run_id is None:
            return print_json(api.get("/v1/runs"))
        if getattr(args, "dead", False):
            return print_json(api.get(f"/v1/runs/{args.run_id}/dead-letters"))
        return print_json({"run": api.get(f"/v1/runs/{args.run_id}"), **api.get(f"/v1/runs/{args.run_id}/iterations")})
    if args.run_id is None:
        runs = api.get("/v1/runs")["runs"]
        print(f"{'run':<48} {'state':<10} {'iters':>7} {'algorithm':<10} {'judge':<14}")
        for r in runs:
            print(f"{r['run_id']:<48} {r['state']:<10} {r['iterations_done']:>3}/{r['iterations_total'] or '-':<3} {r['algorithm'] or '-':<10} {r['judge'] or '-':<14}")
        return 0
    if getattr(args, "dead", False):
        return _print_dead_letters(api.get(f"/v1/runs/{args.run_id}/dead-letters")["dead_letters"])
    run = api.get(f"/v1/runs/{args.run_id}")
    print(f"run {run['run_id']}: {run['state']}{' (' + run['reason'] + ')' if run['reason'] else ''}, "
          f"{run['iterations_done']}/{run['iterations_total']} iterations")  # fmt: skip
    for rec in api.get(f"/v1/runs/{args.run_id}/iterations")["iterations"]:
        print(_iteration_line(rec))
    return 0


def resume(args: argparse.Namespace) -> int:
    """Resume a paused or failed run (`POST /v1/runs/{id}/resume`); a run that cannot resume prints why."""
    api = _client(args)
    run = api.post(f"/v1/runs/{args.run_id}/resume")
    done = f", continues after iteration {run['iterations_done']}" if run["iterations_done"] else ""
    print(f"run {run['run_id']} {run['state']}{done}", flush=True)
    if args.wait:
        return _follow(api, run["run_id"], seen=run["iterations_done"])
    return 0


def control(args: argparse.Namespace) -> int:
    """`sparring pause RUN_ID` / `sparring stop RUN_ID` (`POST /v1/runs/{id}/pause|stop`): a running run pauses
    or stops at its next iteration boundary (`pausing` / `stopping` until then), a queued one at once."""
    run = _client(args).post(f"/v1/runs/{args.run_id}/{args.command}")
    print(f"run {run['run_id']}: {run['state']}{' (' + run['reason'] + ')' if run['reason'] else ''}", flush=True)
    return 0


def _print_dead_letters(letters: list[dict[str, Any]]) -> int:
    """`sparring status RUN --dead`: one line per dead letter (entry id, prompt, stage, attempts, reason)."""
    if not letters:
        print("no dead letters")
        return 0
    print(f"{'entry id':<20} {'prompt':<24} {'iter':>4} {'stage':<12} {'tries':>5}  reason")
    for d in letters:
        print(f"{d['entry_id']:<20} {d['prompt_id'] or '-':<24} {d['iteration'] if d['iteration'] is not None else '-':>4} "
              f"{d['stage']:<12} {d['attempts']:>5}  {d['reason']}")  # fmt: skip
    print(f"{len(letters)} dead letter(s); re-queue with POST /v1/runs/RUN/dead-letters/requeue")
    return 0


def export_kind(output: str, to: str | None) -> str:
    """jsonl, parquet or dataset: `--to`, else parquet for a `.parquet` output, else jsonl."""
    if to is not None:
        return to
    return "parquet" if output.endswith(".parquet") else "jsonl"


def export(args: argparse.Namespace) -> int:
    """Pairs with an answer cut at max_new_tokens are left out unless --include-truncated (TRL would append
    EOS and train them as finished); how many were left out is printed to stderr. `--to parquet` writes one
    parquet file, `--to dataset` a `save_to_disk` directory (`datasets.load_from_disk` opens it)."""
    kind = export_kind(args.output, args.to)
    if kind != "jsonl" and args.output == "-":
        raise ApiError(0, f"--to {kind} writes a file or directory: give -o PATH")
    api = _client(args)
    params = {"iteration": args.iteration, "sample": args.sample, "seed": args.seed, "format": args.format}
    params["include_truncated"] = "true" if args.include_truncated else "false"
    params["file_format"] = "jsonl" if kind == "jsonl" else "parquet"
    path = f"/v1/runs/{args.run_id}/pairs/export"
    if args.output == "-":
        n, headers = api.download(path, sys.stdout.buffer, **params)
    elif kind == "dataset":
        import tempfile

        from sparring.shared.hf_data import save_dataset_dir

        with tempfile.TemporaryDirectory() as tmp:
            parquet = Path(tmp) / "pairs.parquet"
            with parquet.open("wb") as f:
                n, headers = api.download(path, f, **params)
            save_dataset_dir(parquet, Path(args.output))
    else:
        with open(args.output, "wb") as f:
            n, headers = api.download(path, f, **params)
    rows, left_out = headers.get("x-pairs-exported", "?"), headers.get("x-pairs-left-out-truncated", "0")
    where = "stdout" if args.output == "-" else args.output
    print(f"wrote {rows} pairs ({n} bytes) to {where}", file=sys.stderr)
    if left_out != "0":
        print(f"left out {left_out} pairs with an answer cut at max_new_tokens (--include-truncated keeps them)", file=sys.stderr)
    return 0


def feedback(args: argparse.Namespace) -> int:
    """`sparring feedback RUN FILE.jsonl`: post thumbs-up/down labels; a refused file prints every bad line
    (nothing of it is stored) and exits 2."""
    result = _client(args).post_feedback(args.run_id, Path(args.file))
    print(f"run {result['run_id']}: {result['items']} feedback item(s), {result['stored']} stored, "
          f"{result['duplicates']} posted before", flush=True)  # fmt: skip
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the API service (REST, dashboard, metrics)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--data-dir", default=None, help="pools and runs (default SPARRING_DATA_DIR or ./sparring-data)")
    p.add_argument("--config", default=None, help="service settings YAML (tokens, limits, model roots)")
    p.add_argument("--uvicorn-log-level", default="warning")
    p.set_defaults(handler=serve)

    def common(q: Any) -> None:
        q.add_argument("--api", default=None, help=f"API base URL (SPARRING_API_URL, default {DEFAULT_API})")
        q.add_argument("--token", default=None, help="bearer token (SPARRING_TOKEN)")

    p = sub.add_parser("submit", help="create a run on a running API")
    p.add_argument("config")
    p.add_argument("--pool", default=None, help="a JSONL prompt pool to upload and use")
    p.add_argument("--pool-kind", default="prompts", choices=["prompts", "dsat"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--key", default=None, help="Idempotency-Key: resubmitting with it never creates a second run")
    p.add_argument("--wait", action="store_true", help="follow the run until it is at rest")
    common(p)
    p.set_defaults(handler=submit)

    p = sub.add_parser("status", help="list runs, or show one run's iterations (or, with --dead, its dead letters)")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--dead", action="store_true", help="list the run's dead letters: prompt id, stage, attempts, reason")
    p.add_argument("--json", action="store_true", help="the API's JSON: {runs}, {run, iterations} or {dead_letters}")
    common(p)
    p.set_defaults(handler=status)

    p = sub.add_parser("resume", help="resume a paused or failed run from its last recorded iteration")
    p.add_argument("run_id")
    p.add_argument("--wait", action="store_true", help="follow the run until it is at rest")
    common(p)
    p.set_defaults(handler=resume)

    for action, what in (("pause", "pause a run at its next iteration boundary (resume continues it)"),
                         ("stop", "stop a run at its next iteration boundary, for good")):  # fmt: skip
        p = sub.add_parser(action, help=what)
        p.add_argument("run_id")
        common(p)
        p.set_defaults(handler=control)

    p = sub.add_parser("feedback", help="post thumbs-up/down labels on single answers (JSONL) to a run")
    p.add_argument("run_id")
    p.add_argument("file", help='JSONL: {"prompt" or "messages", "answer", "label": true/false or "up"/"down", "weight"?}')
    common(p)
    p.set_defaults(handler=feedback)

    p = sub.add_parser("export", help="download a run's judged pairs in TRL's preference format (JSONL, parquet, datasets dir)")
    p.add_argument("run_id")
    p.add_argument("-o", "--output", default="-")
    p.add_argument("--iteration", type=int, default=None)
    p.add_argument("--sample", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--format",
        default="standard",
        choices=["standard", "conversational"],
        help="conversational carries a multi-turn prompt whole; standard only its last user turn",
    )
    p.add_argument(
        "--include-truncated",
        action="store_true",
        help="keep pairs with an answer cut at max_new_tokens (left out by default: TRL would train them as finished)",
    )
    p.add_argument(
        "--to",
        default=None,
        choices=["jsonl", "parquet", "dataset"],
        help="jsonl; parquet (one file); dataset (a save_to_disk directory for datasets.load_from_disk and TRL). "
        "Default: parquet for -o *.parquet, else jsonl",
    )
    common(p)
    p.set_defaults(handler=export)
