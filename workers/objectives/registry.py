"""Objective registry: the one place where a config name becomes a loss class.

`OBJECTIVES` maps `AlgorithmConfig.objective` values to classes; `build_objective` constructs one from the
config by passing the constructor parameters the class declares (read from its signature) from the
config fields of the same name. Adding a loss = one module + one line here; nothing branches on names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from sparring.shared.config import AlgorithmConfig
from sparring.workers.objectives.base import Objective
from sparring.workers.objectives.bco import BCOPairLoss
from sparring.workers.objectives.cdpo import CDPOLoss
from sparring.workers.objectives.dpo import DPOLoss
from sparring.workers.objectives.inpo import INPOLoss
from sparring.workers.objectives.ipo import IPOLoss
from sparring.workers.objectives.npo import NPOLoss
from sparring.workers.objectives.rdpo import RDPOLoss
from sparring.workers.objectives.rpo import RPOLoss
from sparring.workers.objectives.simpo import SimPOLoss
from sparring.workers.objectives.spce import SPCELoss
from sparring.workers.objectives.sppo import SPPOHardLoss, SPPOLoss, SPPOSingleLoss

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (
        DPOLoss,
        CDPOLoss,
        RDPOLoss,
        IPOLoss,
        BCOPairLoss,
        RPOLoss,
        SimPOLoss,
        NPOLoss,
        SPPOHardLoss,
        SPPOLoss,
        SPPOSingleLoss,
        INPOLoss,
        SPCELoss,
    )
}


def objective_names() -> list[str]:
    """Registered objective names, sorted (for help text, config checks and test parametrization)."""
    return sorted(OBJECTIVES)


def objective_parameters(cls: type[Objective]) -> list[str]:
    """The constructor parameter names of an objective class (= the `AlgorithmConfig` fields it reads)."""
    return list(inspect.signature(cls).parameters)


def build_objective(cfg: AlgorithmConfig) -> Objective:
    """Instantiate `cfg.objective`, taking each constructor argument from the `cfg` field of that name.

    A loss hyperparameter that some objective reads, that the chosen one does not, and whose value is not
    its default is an error: `beta: 0.001` with `objective: sppo` (which reads `eta`) fails instead of
    being silently ignored. "Not the default" rather than "set explicitly" because the resolved config is
    dumped and re-parsed (CLI -> actors), which marks every field as set. Fields no objective reads
    (`pairs`, `reference`) are exempt.
    """
    try:
        cls = OBJECTIVES[cfg.objective]
    except KeyError:
        raise ValueError(
            f"unknown objective {cfg.objective!r}; registered: {', '.join(objective_names())}"
        ) from None
    reads = set(objective_parameters(cls))
    loss_fields = {p for other in OBJECTIVES.values() for p in objective_parameters(other)}
    fields = type(cfg).model_fields
    unread = sorted(
        name
        for name in (loss_fields & set(fields)) - reads
        if getattr(cfg, name) != fields[name].get_default(call_default_factory=True)
    )
    if unread:
        raise ValueError(
            f"objective {cfg.objective!r} does not read algorithm.{', algorithm.'.join(unread)}; "
            f"it takes {', '.join(sorted(reads)) or 'no parameters'}"
        )
    kwargs: dict[str, Any] = {}
    for pname, param in inspect.signature(cls).parameters.items():
        if pname in type(cfg).model_fields:
            kwargs[pname] = getattr(cfg, pname)
        elif param.default is inspect.Parameter.empty:
            raise ValueError(
                f"objective {cfg.objective!r} needs algorithm.{pname}, which AlgorithmConfig does not have"
            )
    factory: Callable[..., Objective] = cls  # a Protocol type has no declared constructor
    return factory(**kwargs)
