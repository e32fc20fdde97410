"""Settings of the API service: tokens, limits, where runs and pools live, which model paths a config may name.

Read from an optional YAML file (`sparring serve --config service.yaml`, same keys as `ServiceSettings`)
and then the environment, which wins:

    SPARRING_API_TOKENS        comma-separated bearer tokens with full access
    SPARRING_READONLY_TOKENS   comma-separated bearer tokens that may only read (the dashboard's kind)
    SPARRING_DATA_DIR          where pools and run directories are kept (default ./sparring-data)
    SPARRING_MODEL_ROOTS       os.pathsep-separated directories a run config's model paths may point into
    SPARRING_MAX_UPLOAD_BYTES  prompt-pool upload cap (default 64 MiB)
    SPARRING_MAX_BODY_BYTES    cap on any other request body (default 1 MiB)
    SPARRING_MAX_ACTIVE_RUNS   runs executing at once; later ones wait in state `created` (default 1)
    SPARRING_REDIS_OUTAGE_S    how long the API's Redis client reconnects through an outage (default 120)
    REDIS_URL, RAY_ADDRESS     the Redis and Ray cluster to use (unset: embedded local ones)

Tokens are secrets: they are never logged, and `ServiceSettings.__repr__` hides them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sparring.shared.config import ConfigError, format_validation_error

ENV = {
    "api_tokens": "SPARRING_API_TOKENS",
    "readonly_tokens": "SPARRING_READONLY_TOKENS",
    "data_dir": "SPARRING_DATA_DIR",
    "model_roots": "SPARRING_MODEL_ROOTS",
    "max_upload_bytes": "SPARRING_MAX_UPLOAD_BYTES",
    "max_body_bytes": "SPARRING_MAX_BODY_BYTES",
    "max_active_runs": "SPARRING_MAX_ACTIVE_RUNS",
    "redis_outage_s": "SPARRING_REDIS_OUTAGE_S",
    "redis_url": "REDIS_URL",
    "ray_address": "RAY_ADDRESS",
}
LIST_FIELDS = {"api_tokens": ",", "readonly_tokens": ",", "model_roots": os.pathsep}


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_tokens: tuple[str, ...] = Field((), description="bearer tokens with read and write access")
    readonly_tokens: tuple[str, ...] = Field((), description="bearer tokens that may only read")
    data_dir: Path = Field(Path("sparring-data"), description="pools/ and runs/ live here")
    model_roots: tuple[Path, ...] = Field((), description="local model directories a config may name must be under one")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_active_runs: int = Field(1, ge=0, description="runs executing at once (0: accept runs, start none)")
    redis_url: str | None = None
    ray_address: str | None = None
    scheduler_interval_s: float = Field(2.0, gt=0.0, description="how often queued and orphaned runs are looked at")
    redis_outage_s: float = Field(
        120.0, gt=0.0, description="how long the API's Redis client (requests, scheduler) reconnects through an outage"
    )

    def __repr__(self) -> str:  # never print tokens
        shown = self.model_dump(exclude={"api_tokens", "readonly_tokens"})
        return f"ServiceSettings({shown}, api_tokens=<{len(self.api_tokens)}>, readonly_tokens=<{len(self.readonly_tokens)}>)"

    __str__ = __repr__

    @property
    def pools_dir(self) -> Path:
        return self.data_dir / "pools"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> ServiceSettings:
    """File, then environment, then explicit `overrides` (e.g. from command-line flags)."""
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"service config {str(p)!r} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data.update(loaded)
    for field, var in ENV.items():
        value = env.get(var)
        if value is None or value == "":
            continue
        if field in LIST_FIELDS:
            data[field] = [v.strip() for v in value.split(LIST_FIELDS[field]) if v.strip()]
        else:
            data[field] = value
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServiceSettings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path or "service settings"))) from None
