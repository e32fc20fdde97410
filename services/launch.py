"""What the `sparring` commands share: `--set KEY=VALUE` parsing and joining (or starting) Ray.

Both services/cli.py (`demo`, `run`) and services/client.py (`serve`, `submit`) use these; keeping them here
lets client.py work without importing cli.py, which imports client.py to register its subcommands.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import yaml

from sparring.shared.config import ConfigError


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`["a.b=1", ...]` -> `{"a.b": 1, ...}`, each value read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. trainer.epochs=2)")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def init_ray(address: str | None = None) -> None:
    """Join the Ray cluster at `address` (or RAY_ADDRESS), else start a local one inside this process."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace="sparring", log_to_driver=False, logging_level=logging.WARNING)
    else:
        # Logical CPUs are scheduling tokens; actors keep their own thread budgets (see docs/operations.md).
        ray.init(
            address="local",  # never join whatever cluster this machine ran last: RAY_ADDRESS says which
            num_cpus=max(4, os.cpu_count() or 1),
            include_dashboard=False,
            namespace="sparring",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
