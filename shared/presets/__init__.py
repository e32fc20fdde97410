"""Paper recipes as named config presets (`preset: sppo` in a run config), one YAML file each here.

A preset (`NAME.yaml`) is a partial `RunConfig`: nested mappings of values only, with the paper sources as
comments (the paper and the upstream files each preset names; a value the paper does not
state is left at the `RunConfig` default, and the file says so). The user's own keys are applied on top,
key by key, so `preset: sppo` + `trainer: {learning_rate: 3.0e-4}` keeps every other SPPO value.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from importlib import resources
from typing import Any

import yaml

# (section, its raw merged values) -> the keys the variant those values select can hold; None = any
VariantFields = Callable[[str, dict[str, Any]], Collection[str] | None]


def preset_names() -> list[str]:
    """The presets shipped with the package, sorted."""
    return sorted(f.name.removesuffix(".yaml") for f in resources.files(__name__).iterdir() if f.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The values of preset `name`; a ValueError listing the known presets for any other name."""
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    data = yaml.safe_load(resources.files(__name__).joinpath(f"{name}.yaml").read_text())
    if not isinstance(data, dict):
        raise ValueError(f"preset {name!r}: the file must hold a mapping of config sections")
    return data


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
