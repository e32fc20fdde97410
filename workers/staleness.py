"""Which pairs the trainer trains, by the version rules of both schedule modes (docs/online.md), and the
staleness metrics of an iteration. Pure: no Redis, no torch; `TrainerWorker.train` applies it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sparring.shared.records import PreferencePair

T = TypeVar("T")

# why a pair the trainer read was not trained (metric `pairs/stale_dropped/<reason>`)
DROP_REASONS = ("over_bound", "other_version", "earlier_iteration", "version_violation")


@dataclass
class PairSelection:
    """What the trainer does with the pairs it read for one iteration (`select_pairs`)."""

    train: list[Any] = field(default_factory=list)  # trained now
    later: list[Any] = field(default_factory=list)  # a later iteration's batch: left pending, unacknowledged
    dropped: dict[str, list[Any]] = field(default_factory=dict)  # reason -> acknowledged and dead-lettered
    lags: list[int] = field(default_factory=list)  # version lag of each trained pair, same order as `train`


def select_pairs(
    items: Iterable[T], pair_of: Any, iteration: int, version: int, max_staleness: int, online: bool
) -> PairSelection:
    """Sort what the trainer read for `iteration` (training policy version `version`) by the version rules.

    `pair_of(item)` gives the `PreferencePair` of an item. Sync mode (`online` False): only pairs of `version`
    are trained, any other is dropped (`other_version`). Async mode: pairs of a later iteration are left for
    it; pairs of an earlier one are dropped (`earlier_iteration`: their iteration is recorded, they were
    trained then); a pair of this iteration with lag `version - pair.policy_version` above `max_staleness` is
    dropped (`over_bound`). In both modes a pair whose answers came from other weights than the pair says, or
    from a version newer than the trainer's, is dropped as `version_violation` (must never happen).
    """
    out = PairSelection()
    for item in items:
        pair: PreferencePair = pair_of(item)
        lag = version - pair.policy_version
        if online and pair.iteration > iteration:
            out.later.append(item)
            continue
        if pair.version_violation or lag < 0:
            reason = "version_violation"
        elif not online:
            reason = "" if lag == 0 else "other_version"
        elif pair.iteration < iteration:
            reason = "earlier_iteration"
        else:
            reason = "" if lag <= max_staleness else "over_bound"
        if reason:
            out.dropped.setdefault(reason, []).append(item)
        else:
            out.train.append(item)
            out.lags.append(lag)
    return out


def selection_metrics(sel: PairSelection) -> dict[str, float]:
    """`staleness/mean`, `staleness/max` and `staleness/lag_<k>` (trained pairs by version lag),
    `pairs/stale_dropped/<reason>` for every reason in `DROP_REASONS` and `version/violations_train`."""
    out: dict[str, float] = {
        "staleness/mean": sum(sel.lags) / len(sel.lags) if sel.lags else 0.0,
        "staleness/max": float(max(sel.lags, default=0)),
    }
    out.update({f"staleness/lag_{lag}": float(n) for lag, n in sorted(Counter(sel.lags).items())})
    out.update({f"pairs/stale_dropped/{r}": float(len(sel.dropped.get(r, []))) for r in DROP_REASONS})
    out["version/violations_train"] = float(len(sel.dropped.get("version_violation", [])))
    return out
