"""Objective registry: the one place where a config name becomes a loss class.

`OBJECTIVES` maps `algorithm.objective` values to classes. Each objective's hyperparameters are a small
pydantic model in shared (`sparring.shared.config.OBJECTIVE_CONFIGS`; shared cannot import workers), so
`check_objective_configs` verifies, when this module is imported, that both cover the same names and that
each class's constructor parameters are exactly its config's fields; `build_objective` then passes the
config's fields straight to the class. Adding a loss = one module + one line here + its config in shared.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from sparring.shared.config import OBJECTIVE_CONFIGS, AlgorithmConfig
from sparring.workers.objectives.apo import APODownLoss, APOZeroLoss
from sparring.workers.objectives.base import Objective
from sparring.workers.objectives.bco import BCOPairLoss
from sparring.workers.objectives.cdpo import CDPOLoss
from sparring.workers.objectives.dpo import DPOLoss
from sparring.workers.objectives.dpop import DPOPLoss
from sparring.workers.objectives.hinge import HingeLoss
from sparring.workers.objectives.inpo import INPOLoss
from sparring.workers.objectives.ipo import IPOLoss
from sparring.workers.objectives.length_dpo import LengthDPOLoss
from sparring.workers.objectives.nca import NCAPairLoss
from sparring.workers.objectives.npo import NPOLoss
from sparring.workers.objectives.orpo import ORPOLoss
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
        HingeLoss,
        NCAPairLoss,
        APOZeroLoss,
        APODownLoss,
        DPOPLoss,
        LengthDPOLoss,
        ORPOLoss,
    )
}


def objective_names() -> list[str]:
    """Registered objective names, sorted (for help text, config checks and test parametrization)."""
    return sorted(OBJECTIVES)


def objective_parameters(cls: type[Objective]) -> list[str]:
    """The constructor parameter names of an objective class, in order."""
    return list(inspect.signature(cls).parameters)


def check_objective_configs() -> None:
    """Raise TypeError unless `OBJECTIVES` and the config union name the same objectives and every class
    takes exactly its config's hyperparameters (a constructor default, where one exists, equal to the
    config's)."""
    if set(OBJECTIVES) != set(OBJECTIVE_CONFIGS):
        raise TypeError(
            f"objective registry and config union differ: classes without a config "
            f"{sorted(set(OBJECTIVES) - set(OBJECTIVE_CONFIGS))}, configs without a class "
            f"{sorted(set(OBJECTIVE_CONFIGS) - set(OBJECTIVES))}"
        )
    for name, cls in OBJECTIVES.items():
        config = OBJECTIVE_CONFIGS[name]
        params, fields = inspect.signature(cls).parameters, config.hyperparameter_names()
        if sorted(params) != sorted(fields):
            raise TypeError(
                f"objective {name!r}: {cls.__name__} takes {sorted(params)}, {config.__name__} has {sorted(fields)}"
            )
        for pname, param in params.items():
            default = config.model_fields[pname].get_default(call_default_factory=True)
            if param.default is not inspect.Parameter.empty and param.default != default:
                raise TypeError(
                    f"objective {name!r}: {cls.__name__}({pname}={param.default!r}) but {config.__name__}."
                    f"{pname} defaults to {default!r}"
                )


check_objective_configs()


def build_objective(cfg: AlgorithmConfig) -> Objective:
    """Instantiate `cfg.objective` with the hyperparameters of its config (the recipe fields stay out)."""
    try:
        cls = OBJECTIVES[cfg.objective]
    except KeyError:
        raise ValueError(
            f"unknown objective {cfg.objective!r}; registered: {', '.join(objective_names())}"
        ) from None
    factory: Callable[..., Objective] = cls  # a Protocol type has no declared constructor
    return factory(**cfg.hyperparameters())
