"""Objective registry: the one place where a config name becomes a loss class.

`OBJECTIVES` maps `algorithm.objective` values to pair-loss classes, `UNPAIRED_OBJECTIVES` to the losses over
unpaired labelled answers (KTO, BCO: `UnpairedObjective`, `unpaired = True`). Each objective's hyperparameters are a small
pydantic model in shared (`sparring.shared.config.OBJECTIVE_CONFIGS`; shared cannot import workers), so
`check_objective_configs` verifies, when this module is imported, that both cover the same names and that
each class's constructor parameters are exactly its config's fields; `build_objective` then passes the
config's fields straight to the class. Adding a loss = one module + one line here + its config in shared.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from sparring.shared.config import OBJECTIVE_CONFIGS, AlgorithmConfig
from sparring.shared.config import UNPAIRED_OBJECTIVES as UNPAIRED_OBJECTIVE_NAMES
from sparring.workers.objectives.apo import APODownLoss, APOZeroLoss
from sparring.workers.objectives.base import Objective, UnpairedObjective
from sparring.workers.objectives.bco import BCOPairLoss
from sparring.workers.objectives.bco_unpaired import BCOLoss
from sparring.workers.objectives.cdpo import CDPOLoss
from sparring.workers.objectives.dpo import DPOLoss
from sparring.workers.objectives.dpop import DPOPLoss
from sparring.workers.objectives.hinge import HingeLoss
from sparring.workers.objectives.inpo import INPOLoss
from sparring.workers.objectives.ipo import IPOLoss
from sparring.workers.objectives.kto import KTOLoss
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


UNPAIRED_OBJECTIVES: dict[str, type[UnpairedObjective]] = {cls.name: cls for cls in (KTOLoss, BCOLoss)}


def objective_names() -> list[str]:
    """Registered pair-objective names, sorted (config checks and test parametrization over pairs)."""
    return sorted(OBJECTIVES)


def unpaired_objective_names() -> list[str]:
    """Registered unpaired-objective names, sorted."""
    return sorted(UNPAIRED_OBJECTIVES)


def all_objective_names() -> list[str]:
    """Every registered objective, paired and unpaired, sorted (help text, the config union)."""
    return sorted([*OBJECTIVES, *UNPAIRED_OBJECTIVES])


def objective_parameters(cls: type[Objective] | type[UnpairedObjective]) -> list[str]:
    """The constructor parameter names of an objective class, in order."""
    return list(inspect.signature(cls).parameters)


def check_objective_configs() -> None:
    """Raise TypeError unless `OBJECTIVES` and the config union name the same objectives and every class
    takes exactly its config's hyperparameters (a constructor default, where one exists, equal to the
    config's)."""
    classes: dict[str, type[Objective] | type[UnpairedObjective]] = {**OBJECTIVES, **UNPAIRED_OBJECTIVES}
    if set(classes) != set(OBJECTIVE_CONFIGS):
        raise TypeError(
            f"objective registry and config union differ: classes without a config "
            f"{sorted(set(classes) - set(OBJECTIVE_CONFIGS))}, configs without a class "
            f"{sorted(set(OBJECTIVE_CONFIGS) - set(classes))}"
        )
    flagged = sorted(name for name, cls in classes.items() if getattr(cls, "unpaired", False))
    if flagged != sorted(UNPAIRED_OBJECTIVES) or flagged != sorted(UNPAIRED_OBJECTIVE_NAMES):
        raise TypeError(
            f"unpaired objectives differ: classes flagged unpaired {flagged}, registry {sorted(UNPAIRED_OBJECTIVES)}, "
            f"shared.config.UNPAIRED_OBJECTIVES {sorted(UNPAIRED_OBJECTIVE_NAMES)}"
        )
    for name, cls in classes.items():
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


def build_objective(cfg: AlgorithmConfig) -> Objective | UnpairedObjective:
    """Instantiate `cfg.objective` with the hyperparameters of its config (the recipe fields stay out); an
    unpaired objective (`unpaired = True`) takes `UnpairedInputs` instead of pairs."""
    cls = OBJECTIVES.get(cfg.objective) or UNPAIRED_OBJECTIVES.get(cfg.objective)
    if cls is None:
        raise ValueError(f"unknown objective {cfg.objective!r}; registered: {', '.join(all_objective_names())}")
    factory: Callable[..., Objective | UnpairedObjective] = cls  # a Protocol type has no declared constructor
    return factory(**cfg.hyperparameters())
