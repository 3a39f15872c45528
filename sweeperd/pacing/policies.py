"""The scavenger policies by name, and their parameters (the config's ``[scavenger.NAME]``).

The names, the parameter names and their defaults are a contract (config keys, ``--policy``,
the ``policy`` label of the metrics).  A numeric parameter has a range (:data:`RANGES`) and
may have values outside it that mean something of their own (:data:`SPECIALS`): jemalloc's
``dirty_decay_ms`` and mimalloc's ``purge_delay_ms`` take 0 (purge at once: the freers
release, as ``eager`` does, :func:`releases_on_free`) and -1 (never, as ``none``), jemalloc's
``hpa_dirty_mult`` takes -1 (never); anything else outside the range is refused by name.  A
string parameter has its choices (:data:`CHOICES`).
"""

from __future__ import annotations

from typing import Any

from sweeperd.pacing.activity import ON
from sweeperd.pacing.decay import DecayParams, DecayPolicy
from sweeperd.pacing.hpa import HpaParams, HpaPolicy
from sweeperd.pacing.hugepage import HugepagePolicy
from sweeperd.pacing.names import POLICIES
from sweeperd.pacing.policy import GO_VERSIONS, EagerPolicy, GoParams, GoPolicy, NonePolicy, Policy
from sweeperd.pacing.purgedelay import DelayParams, DelayPolicy
from sweeperd.pacing.releaserate import RateParams, RatePolicy
from sweeperd.pacing.tcbackground import TcBackgroundParams, TcBackgroundPolicy

PARAMS: dict[str, type] = {"go": GoParams, "jemalloc-decay": DecayParams,
                           "gperftools-rate": RateParams, "mimalloc-delay": DelayParams,
                           "jemalloc-hpa": HpaParams, "tcmalloc-background": TcBackgroundParams}
RANGES: dict[str, tuple[float, float]] = {
    "jemalloc-decay.dirty_decay_ms": (1, 3_600_000),
    "gperftools-rate.release_rate": (0.001, 1000),
    "mimalloc-delay.purge_delay_ms": (1, 3_600_000),
    "jemalloc-hpa.dirty_mult": (0, 1000),
    "jemalloc-hpa.min_purge_interval_ms": (0, 3_600_000),
    "tcmalloc-background.release_rate_bytes_s": (0, 1 << 40),
    "tcmalloc-background.skip_subrelease_interval_s": (0, 86_400),
}
AT_ONCE, NEVER = "at once", "never"
SPECIALS: dict[str, dict[float, str]] = {  # values outside the range, and what they mean
    "jemalloc-decay.dirty_decay_ms": {-1: NEVER, 0: AT_ONCE},
    "mimalloc-delay.purge_delay_ms": {-1: NEVER, 0: AT_ONCE},
    "jemalloc-hpa.dirty_mult": {-1: NEVER},
}
CHOICES: dict[str, tuple[str, ...]] = {"go.version": GO_VERSIONS, "jemalloc-decay.on": ON,
                                       "mimalloc-delay.on": ON, "jemalloc-hpa.on": ON}
RELEASES_ON_FREE = frozenset({"eager"})  # at any parameters: every process that frees releases


def allowed(key: str) -> str:
    """The values ``key`` (``policy.param``) takes, in words: "-1 (never), 0 (at once) or
    1..3600000"."""
    lo, hi = RANGES[key]
    span = f"{_num(lo)}..{_num(hi)}"
    specials = [f"{_num(v)} ({what})" for v, what in sorted(SPECIALS.get(key, {}).items())]
    return f"{', '.join(specials)} or {span}" if specials else span


def in_range(key: str, v: float) -> bool:
    lo, hi = RANGES[key]
    return lo <= v <= hi or v in SPECIALS.get(key, {})


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def releases_on_free(name: str, params: Any = None) -> bool:
    """Do the freers release what they free (``heap.on_free``) under policy ``name`` with
    ``params`` (None: its defaults)?  ``eager`` always; ``jemalloc-decay`` and
    ``mimalloc-delay`` when their delay is 0."""
    if name in RELEASES_ON_FREE:
        return True
    p = params if params is not None else default_params(name)
    if name == "jemalloc-decay":
        return bool(p.dirty_decay_ms == 0)
    if name == "mimalloc-delay":
        return bool(p.purge_delay_ms == 0)
    return False


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
    if name == "jemalloc-hpa":
        return HpaPolicy(params)
    if name == "tcmalloc-background":
        return TcBackgroundPolicy(params)
    raise ValueError(f"unknown scavenger policy {name!r}; one of {', '.join(POLICIES)}")
