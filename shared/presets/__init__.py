"""Paper recipes as named config presets (`preset: sppo` in a run config), one YAML file each here.

A preset (`NAME.yaml`) is a partial `RunConfig` (nested mappings of values) plus `sources`: for every value it
sets, the upstream file and setting or paper section it comes from (a value the paper does not state is left
at the `RunConfig` default, or its source says "not published"). `sparring presets show NAME` prints both. The user's own keys are applied on top,
key by key, so `preset: sppo` + `trainer: {learning_rate: 3.0e-4}` keeps every other SPPO value.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from importlib import resources
from typing import Any

import yaml

SOURCES = "sources"  # a preset file's {dotted key: source} mapping; never part of the config

# (section, its raw merged values) -> the keys the variant those values select can hold; None = any
VariantFields = Callable[[str, dict[str, Any]], Collection[str] | None]


def preset_names() -> list[str]:
    """The presets shipped with the package, sorted."""
    return sorted(f.name.removesuffix(".yaml") for f in resources.files(__name__).iterdir() if f.name.endswith(".yaml"))


def _read_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    data = yaml.safe_load(resources.files(__name__).joinpath(f"{name}.yaml").read_text())
    if not isinstance(data, dict) or not isinstance(data.get(SOURCES, {}), dict):
        raise ValueError(f"preset {name!r}: the file must hold a mapping of config sections (and `{SOURCES}`)")
    return data


def load_preset(name: str) -> dict[str, Any]:
    """The values of preset `name` (config sections, without its `sources`); a ValueError listing the known
    presets for any other name."""
    data = _read_preset(name)
    data.pop(SOURCES, None)
    return data


def preset_summary(name: str) -> str:
    """The first sentence of the preset file's header comment (what it is and where it comes from): its
    leading `#` lines joined, up to the first ". " (a period ending a word), or the whole comment."""
    _read_preset(name)
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text()
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line[1:].strip())
    joined = " ".join(part for part in header if part)
    head, dot, _ = joined.partition(". ")
    return head + dot.strip() if dot else joined


def preset_sources(name: str) -> dict[str, str]:
    """{dotted key: where its value comes from (upstream file and setting, paper section, or "not published")}."""
    return {str(k): str(v) for k, v in (_read_preset(name).get(SOURCES) or {}).items()}


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> {dotted key: leaf value} (`{"trainer": {"epochs": 1}}` -> `{"trainer.epochs": 1}`)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` applied on `base`, recursing into dicts; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_preset(data: dict[str, Any], variant_fields: VariantFields | None = None) -> dict[str, Any]:
    """Config data with its `preset` (if any) filled in underneath the user's own values.

    `variant_fields` names the keys a section's variant can hold (the objective's fields under `algorithm`,
    the judge kind's under `judge`): a key the preset sets that the user's choice of variant does not have
    is dropped, so `preset: drift` + `algorithm: {objective: dpo}` trains DPO with the preset's `beta` and
    without RPO's `alpha`. The user's own keys are never dropped (validation refuses unknown ones).
    """
    name = data.get("preset")
    if name is None:
        return data
    preset = load_preset(name)
    merged = deep_merge(preset, data)
    for section, values in preset.items():
        chosen = merged[section]
        if variant_fields is None or not isinstance(values, dict) or not isinstance(chosen, dict):
            continue
        allowed = variant_fields(section, chosen)
        own = data.get(section) or {}
        for key in values:
            if allowed is not None and key not in allowed and key not in own:
                del chosen[key]
    return merged
