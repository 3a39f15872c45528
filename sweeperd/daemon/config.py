"""Configuration: a TOML file (``config/sweeperd.toml`` documents every key), then flags.

Validation is strict and names what is wrong: an unknown section or key, a value of the wrong
type, or one outside its range gives :class:`ConfigError` with the dotted key and the allowed
range; the CLI turns it into exit status 2.  The result is a frozen, plain dataclass tree.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from sweeperd.daemon import control
from sweeperd.pacing import gcpace
from sweeperd.pacing import policies as pacing_policies
from sweeperd.pacing.decay import DecayParams
from sweeperd.pacing.hpa import HpaParams
from sweeperd.pacing.policies import CHOICES as POLICY_CHOICES
from sweeperd.pacing.policies import PARAMS, POLICIES
from sweeperd.pacing.policies import RANGES as POLICY_RANGES
from sweeperd.pacing.policy import GoParams
from sweeperd.pacing.purgedelay import DelayParams
from sweeperd.pacing.releaserate import RateParams
from sweeperd.pacing.tcbackground import TcBackgroundParams
from sweeperd.runtime.owners import MAX_MUTATORS, MAX_SWEEPERS
from sweeperd.runtime.sizeclasses import NUM_CLASSES
from sweeperd.workload import scenario as scenarios
from sweeperd.workload.mutator import Workload


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class HeapConfig:
    size_mib: int = 256


@dataclass(frozen=True)
class GCConfig:
    gogc: int = 100
    min_goal_mib: int = 4


@dataclass(frozen=True)
class SweepConfig:
    sweepers: int = 2
    chunk_pages: int = 4096


@dataclass(frozen=True)
class MutatorConfig(Workload):
    """``[mutators]``: how many mutator processes, and the workload each runs."""

    count: int = 2
    scenario: str = ""  # a shipped scenario's name or a scenario file: the mutators follow it

    def workload(self) -> Workload:
        """The model each mutator runs (every key of the section but ``count``)."""
        return Workload(**{f.name: getattr(self, f.name) for f in fields(Workload)})


@dataclass(frozen=True)
class ControlConfig:
    addr: str = "ipc://auto"
    admin: bool = True  # gc and scavenge accepted (status and ping always are)
    group: str = ""  # a group whose members may use the ipc socket ("" = only our uid)
    curve_server_key: str = ""  # tcp: the server's certificate (secret, for run)
    curve_allowed_clients: str = ""  # tcp: the allowed client public keys (file or dir)
    curve_client_key: str = ""  # tcp: the client's secret certificate (status, gc, ...)
    heartbeat_ms: int = 200
    dead_after_ms: int = 5000
    start_after_ms: int = 30_000  # silence allowed before a new worker's hello
    restart_backoff_max_ms: int = 5000
    max_deaths: int = 20
    max_memory_deaths: int = 3  # of any role within death_window_s: exit 6
    death_window_s: float = 60.0
    worker_nice: int = 5


@dataclass(frozen=True)
class MetricsConfig:
    addr: str = "127.0.0.1:9464"


@dataclass(frozen=True)
class ScavengerConfig:
    enabled: bool = True
    cpu_fraction: float = 0.01
    memory_limit_mib: int | Literal["cgroup"] = 0  # "cgroup": derived at start (sys/cgroup.py)
    vectored: str = "auto"
    policy: str = "go"
    # each policy's parameters: the table [scavenger.NAME] (attribute: NAME with "_" for "-")
    go: GoParams = field(default_factory=GoParams)
    jemalloc_decay: DecayParams = field(default_factory=DecayParams)
    gperftools_rate: RateParams = field(default_factory=RateParams)
    mimalloc_delay: DelayParams = field(default_factory=DelayParams)
    jemalloc_hpa: HpaParams = field(default_factory=HpaParams)
    tcmalloc_background: TcBackgroundParams = field(default_factory=TcBackgroundParams)

    def memory_limit_bytes(self) -> int:
        """The memory limit in bytes, 0 for none.  ``"cgroup"`` is resolved by the coordinator
        at start (a ValueError before that)."""
        if isinstance(self.memory_limit_mib, str):
            raise ValueError('scavenger.memory_limit_mib = "cgroup" is resolved at start')
        return self.memory_limit_mib << 20

    def policy_params(self, name: str | None = None) -> Any:
        """The parameters of policy ``name`` (default: the chosen one), None if it has none."""
        name = name or self.policy
        return getattr(self, name.replace("-", "_")) if name in PARAMS else None


@dataclass(frozen=True)
class RunConfig:
    duration_s: float = 0
    debug_checks: bool = False
    gctrace: bool = False
    scavtrace: bool = False
    exit_with_parent: bool = False


@dataclass(frozen=True)
class Config:
    heap: HeapConfig = field(default_factory=HeapConfig)
    gc: GCConfig = field(default_factory=GCConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    mutators: MutatorConfig = field(default_factory=MutatorConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    scavenger: ScavengerConfig = field(default_factory=ScavengerConfig)


# (min, max) per numeric key; the type comes from the dataclass field.
RANGES: dict[str, tuple[float, float]] = {
    "heap.size_mib": (1, 16384),
    "gc.gogc": (10, 1000),
    "gc.min_goal_mib": (1, 16384),
    "sweep.sweepers": (1, MAX_SWEEPERS),
    "sweep.chunk_pages": (64, 1 << 20),
    "mutators.count": (0, MAX_MUTATORS),
    "mutators.alloc_rate": (0, 100_000_000),
    "mutators.mean_lifetime_cycles": (0.1, 1000),
    "mutators.finalizer_fraction": (0, 1),
    "mutators.large_fraction": (0, 1),
    "mutators.large_max_kib": (33, 65536),
    "control.heartbeat_ms": (10, 60_000),
    "control.dead_after_ms": (10, 600_000),
    "control.restart_backoff_max_ms": (0, 600_000),
    "control.max_deaths": (1, 1_000_000),
    "control.start_after_ms": (10, 3_600_000),
    "control.max_memory_deaths": (0, 1_000_000),
    "control.death_window_s": (1, 86_400),
    "control.worker_nice": (0, 19),
    "run.duration_s": (0, 31_536_000),
    "scavenger.cpu_fraction": (0.0001, 1),
    "scavenger.memory_limit_mib": (0, 1 << 20),
}
RANGES.update({f"scavenger.{k}": v for k, v in POLICY_RANGES.items()})
CGROUP = "cgroup"
CHOICES: dict[str, set[str]] = {"scavenger.vectored": {"auto", "on", "off"},
                                "scavenger.policy": set(POLICIES)}
CHOICES.update({f"scavenger.{k}": set(v) for k, v in POLICY_CHOICES.items()})


def _check_value(key: str, typ: Any, v: Any) -> Any:
    if key == "gc.gogc" and (v == "off" or (type(v) is int and v == gcpace.GOGC_OFF)):
        return gcpace.GOGC_OFF  # GOGC off: meaningful with a memory limit (_check_gogc_off)
    if key == "gc.gogc" and isinstance(v, str):
        raise ConfigError(f'{key}: expected an integer or "off", got {v!r}')
    if typ == "int | Literal['cgroup']":  # a figure, or derived from the memory cgroup
        if v == CGROUP:
            return v
        if isinstance(v, str):
            raise ConfigError(f'{key}: expected an integer or "cgroup", got {v!r}')
        typ = int
    if typ == "bool" or typ is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{key}: expected true or false, got {v!r}")
        return v
    if typ in ("int", int):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key}: expected an integer, got {v!r}")
    elif typ in ("float", float):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{key}: expected a number, got {v!r}")
        v = float(v)
    elif typ in ("str", str):
        if not isinstance(v, str):
            raise ConfigError(f"{key}: expected a string, got {v!r}")
        if key in CHOICES and v not in CHOICES[key]:
            raise ConfigError(f"{key}: {v!r} is not one of {', '.join(sorted(CHOICES[key]))}")
        return v
    elif typ in ("tuple[int, ...]",):
        if not isinstance(v, list | tuple) or not v or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ConfigError(f"{key}: expected a non-empty list of integers, got {v!r}")
        if any(not 1 <= x < NUM_CLASSES for x in v):
            raise ConfigError(f"{key}: size classes must be within 1..{NUM_CLASSES - 1}, "
                              f"got {list(v)}")
        return tuple(v)
    policy_key = key.removeprefix("scavenger.")
    if policy_key in POLICY_RANGES:  # a policy's parameter: its range and its special values
        if not pacing_policies.in_range(policy_key, v):
            raise ConfigError(f"{key}: {v} is out of range; allowed "
                              f"{pacing_policies.allowed(policy_key)}")
        return v
    lo, hi = RANGES[key]
    if not lo <= v <= hi:
        raise ConfigError(f"{key}: {v} is out of range; allowed {_num(lo)}..{_num(hi)}")
    return v


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def _check_hostport(key: str, text: str, form: str, wildcard: bool = False) -> None:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected {form} with a port 0..65535, got {text!r}")
    if wildcard and host == "*":
        return
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        numeric = host.replace(".", "").isdigit()  # looks like IPv4 but is not one
        if numeric or not _HOSTNAME.fullmatch(host) or len(host) > 253:
            raise ConfigError(f"{key}: {host!r} is not an IP address or a host name "
                              f"(in {text!r})") from None


def _validate_addrs(cfg: Config) -> None:
    _check_hostport("metrics.addr", cfg.metrics.addr, "HOST:PORT")
    a = cfg.control.addr
    if a.startswith("tcp://"):
        _check_hostport("control.addr", a[6:], "tcp://HOST:PORT", wildcard=True)
        _check_curve(cfg.control)
    elif not (a.startswith("ipc://") and len(a) > 6):
        raise ConfigError(f"control.addr: expected tcp://HOST:PORT or ipc://PATH, got {a!r}")
    elif a != control.AUTO and not _ipc_path_ok(a[6:]):
        raise ConfigError(f"control.addr: an ipc path is at most {control.MAX_IPC_PATH} bytes "
                          f"with no NUL, got {a!r}")
    if cfg.control.group:
        try:
            control.group_id(cfg.control.group)
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            raise ConfigError(f"control.group: no group named {cfg.control.group!r}") from None
    if cfg.control.dead_after_ms < 2 * cfg.control.heartbeat_ms:
        raise ConfigError("control.dead_after_ms must be at least twice control.heartbeat_ms")


def _ipc_path_ok(path: str) -> bool:
    try:
        raw = os.fsencode(path)
    except UnicodeError:  # a lone surrogate: no file name
        return False
    return b"\0" not in raw and len(raw) <= control.MAX_IPC_PATH


def _check_curve(cc: ControlConfig) -> None:
    """TCP is open to every host and user that reaches the port: only with CURVE."""
    if not cc.curve_server_key:
        raise ConfigError(f"control.curve_server_key: required with control.addr = "
                          f"{cc.addr!r}: TCP control is only served with CURVE (make keys with "
                          "sweeperd keys, README \"Security\"), or use ipc://auto")
    cert_of("control.curve_server_key", cc.curve_server_key)
    if cc.curve_client_key:
        client_cert(cc)
    if cc.curve_allowed_clients:
        allowed_keys(cc)


def cert_of(key: str, path: str) -> control.Cert:
    """The certificate file a key names; ConfigError naming the key."""
    try:
        return control.read_cert(path)
    except control.CertError as e:
        raise ConfigError(f"{key}: {e}") from None


def client_cert(cc: ControlConfig) -> control.Cert:
    """The client's key pair; ConfigError naming ``control.curve_client_key``."""
    c = cert_of("control.curve_client_key", cc.curve_client_key)
    if c.secret is None:
        raise ConfigError(f"control.curve_client_key: {cc.curve_client_key} holds no "
                          "secret-key (give the NAME.key_secret file)")
    return c


def allowed_keys(cc: ControlConfig) -> frozenset[str]:
    try:
        return control.read_allowed(cc.curve_allowed_clients)
    except control.CertError as e:
        raise ConfigError(f"control.curve_allowed_clients: {e}") from None


def check_server(cfg: Config) -> None:
    """What only the daemon needs (``run`` and ``config check``): with tcp, the server's
    secret key and a non-empty list of allowed clients."""
    cc = cfg.control
    if not cc.addr.startswith("tcp://"):
        return
    if cert_of("control.curve_server_key", cc.curve_server_key).secret is None:
        raise ConfigError(f"control.curve_server_key: {cc.curve_server_key} holds no "
                          "secret-key (the daemon needs NAME.key_secret)")
    if not cc.curve_allowed_clients:
        raise ConfigError("control.curve_allowed_clients: required with a tcp:// "
                          "control.addr (a file or directory of client public keys)")
    allowed_keys(cc)


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Overlay ``data`` ({section: {key: value}}) on ``base`` (defaults), validating all."""
    cfg = base or Config()
    sections = {f.name: f for f in fields(Config)}
    for sec, table in data.items():
        if sec not in sections:
            raise ConfigError(f"unknown section [{sec}]; known: {', '.join(sections)}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{sec}] must be a table")
        current = getattr(cfg, sec)
        keys = {f.name: f for f in fields(current)}
        updates: dict[str, Any] = {}
        for k, v in table.items():
            if sec == "scavenger" and isinstance(v, dict):
                updates[k.replace("-", "_")] = _policy_table(k, v, current)
                continue
            if sec == "scavenger" and k in POLICIES:
                raise ConfigError(f"scavenger.{k} must be a table ([scavenger.{k}])")
            if k not in keys or k in _POLICY_FIELDS:
                raise ConfigError(f"unknown key {sec}.{k}; known in [{sec}]: "
                                  f"{', '.join(k for k in keys if k not in _POLICY_FIELDS)}")
            updates[k] = _check_value(f"{sec}.{k}", keys[k].type, v)
        cfg = replace(cfg, **{sec: replace(current, **updates)})
    if isinstance(data.get("mutators"), dict) and data["mutators"].get("scenario"):
        cfg = _with_scenario(cfg, data)
    _check_gogc_off(cfg)
    _validate_addrs(cfg)
    return cfg


def _check_gogc_off(cfg: Config) -> None:
    """GOGC off collects only near the memory limit (pacing/gcpace.py): without one, never."""
    if cfg.gc.gogc < 0 and cfg.scavenger.memory_limit_mib == 0:
        raise ConfigError(
            'gc.gogc = "off" needs scavenger.memory_limit_mib > 0 (or "cgroup"): with GOGC off '
            "the GC runs only as the heap nears the memory limit, and without one it would "
            "never run; set the limit, or give gc.gogc a percentage (10..1000)")


def _with_scenario(cfg: Config, data: dict[str, Any]) -> Config:
    """A scenario brings its heap size, GOGC and memory limit, except where the same layer
    (file or flags) sets them itself."""
    try:
        sc = scenarios.load(cfg.mutators.scenario)
    except scenarios.ScenarioError as e:
        raise ConfigError(f"mutators.scenario: {e}") from None
    h = sc.scenario
    mine = {(sec, k) for sec, t in data.items() if isinstance(t, dict) for k in t}
    if ("heap", "size_mib") not in mine:
        cfg = replace(cfg, heap=replace(cfg.heap, size_mib=h.heap_mib))
    if ("gc", "gogc") not in mine:
        cfg = replace(cfg, gc=replace(cfg.gc, gogc=gcpace.gogc_percent(h.gogc)))
    if ("scavenger", "memory_limit_mib") not in mine:
        cfg = replace(cfg, scavenger=replace(cfg.scavenger, memory_limit_mib=h.memory_limit_mib))
    return cfg


_POLICY_FIELDS = {n.replace("-", "_") for n in PARAMS}


def _policy_table(name: str, table: dict[str, Any], current: ScavengerConfig) -> Any:
    """``[scavenger.NAME]``: the parameters of policy NAME, each checked like any key."""
    if name not in POLICIES:
        raise ConfigError(f"unknown table [scavenger.{name}]; policies: {', '.join(POLICIES)}")
    if name not in PARAMS:
        raise ConfigError(f"[scavenger.{name}]: the {name} policy has no parameters")
    params = current.policy_params(name)
    known = {f.name: f for f in fields(params)}
    updates = {}
    for k, v in table.items():
        if k not in known:
            raise ConfigError(f"unknown key scavenger.{name}.{k}; known in "
                              f"[scavenger.{name}]: {', '.join(known)}")
        updates[k] = _check_value(f"scavenger.{name}.{k}", known[k].type, v)
    return replace(params, **updates)


def default_text() -> str:
    return resources.files("sweeperd.daemon").joinpath("data/sweeperd.toml").read_text()


def load(path: str | Path | None) -> Config:
    """The defaults file overlaid with ``path`` (or just the defaults)."""
    cfg = from_dict(tomllib.loads(default_text()))
    if path is None:
        return cfg
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 ({e.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_dict(data, cfg)
