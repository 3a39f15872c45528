"""The scavenger policies by name, and their parameters (the config's ``[scavenger.NAME]``).

The names, the parameter names and their defaults are a contract (config keys, ``--policy``,
the ``policy`` label of the metrics).  Ranges: a decay or delay of 0 would be ``eager`` and a
rate of 0 would be ``none``, which exist as policies of their own, so the parameters start
above 0.
"""

from __future__ import annotations

from typing import Any

from sweeperd.pacing.decay import DecayParams, DecayPolicy
from sweeperd.pacing.hugepage import HugepagePolicy
from sweeperd.pacing.names import POLICIES
from sweeperd.pacing.policy import GO_VERSIONS, EagerPolicy, GoParams, GoPolicy, NonePolicy, Policy
from sweeperd.pacing.purgedelay import DelayParams, DelayPolicy
from sweeperd.pacing.releaserate import RateParams, RatePolicy

PARAMS: dict[str, type] = {"go": GoParams, "jemalloc-decay": DecayParams,
                           "gperftools-rate": RateParams, "mimalloc-delay": DelayParams}
RANGES: dict[str, tuple[float, float]] = {
    "jemalloc-decay.dirty_decay_ms": (1, 3_600_000),
    "gperftools-rate.release_rate": (0.001, 1000),
    "mimalloc-delay.purge_delay_ms": (1, 3_600_000),
}
CHOICES: dict[str, tuple[str, ...]] = {"go.version": GO_VERSIONS}
RELEASES_ON_FREE = frozenset({"eager"})  # every process that frees releases (heap.on_free)


def default_params(name: str) -> Any:
    return PARAMS[name]() if name in PARAMS else None


def make(name: str, params: Any = None) -> Policy:
    """A fresh policy ``name`` with ``params`` (its ``*Params``; None: the defaults)."""
    if name == "go":
        return GoPolicy(params)
    if name == "jemalloc-decay":
        return DecayPolicy(params)
    if name == "gperftools-rate":
        return RatePolicy(params)
    if name == "mimalloc-delay":
        return DelayPolicy(params)
    if name == "eager":
        return EagerPolicy()
    if name == "none":
        return NonePolicy()
    if name == "hugepage-aware":
        return HugepagePolicy()
    raise ValueError(f"unknown scavenger policy {name!r}; one of {', '.join(POLICIES)}")
