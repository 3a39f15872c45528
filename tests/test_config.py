import subprocess
import sys
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.daemon import config
from sweeperd.daemon.config import Config, ConfigError, from_dict, load


def test_shipped_file_documents_every_key_with_its_default():
    data = tomllib.loads(config.default_text())
    assert from_dict(data) == Config()
    def keys(prefix: str, table: dict) -> set[str]:  # dotted keys, into sub-tables
        out = set()
        for k, v in table.items():
            out |= keys(f"{prefix}{k}.", v) if isinstance(v, dict) else {prefix + k}
        return out

    def as_dict(obj: object) -> dict:
        return {k.replace("_", "-") if hasattr(v, "__dataclass_fields__") else k:
                as_dict(v) if hasattr(v, "__dataclass_fields__") else v
                for k, v in obj.__dict__.items()}

    assert keys("", data) == keys("", as_dict(Config()))
    with open("config/sweeperd.toml") as f:  # the repo's config/ is the same file
        assert f.read() == config.default_text()


@pytest.mark.parametrize("data,needle", [
    ({"heap": {"size": 1}}, "unknown key heap.size"),
    ({"heapp": {}}, "unknown section [heapp]"),
    ({"heap": {"size_mib": "big"}}, "heap.size_mib: expected an integer"),
    ({"heap": {"size_mib": -5}}, "heap.size_mib: -5 is out of range; allowed 1..16384"),
    ({"heap": {"size_mib": 1 << 20}}, "heap.size_mib"),
    ({"sweep": {"sweepers": 0}}, "sweep.sweepers"),
    ({"run": {"debug_checks": 1}}, "run.debug_checks: expected true or false"),
    ({"metrics": {"addr": "nowhere"}}, "metrics.addr"),
    ({"metrics": {"addr": "127.0.0.1:99999"}}, "metrics.addr: expected HOST:PORT"),
    ({"metrics": {"addr": "bad host:80"}}, "metrics.addr: 'bad host' is not an IP address"),
    ({"metrics": {"addr": "-x-:80"}}, "metrics.addr"),
    ({"control": {"addr": "tcp://300.1.1.1.1:5"}}, "control.addr"),
    ({"control": {"addr": "udp://x"}}, "control.addr"),
    ({"mutators": {"size_classes": [6, 99]}}, "mutators.size_classes"),
    ({"mutators": {"finalizer_fraction": 2}}, "mutators.finalizer_fraction"),
    ({"control": {"heartbeat_ms": 1000, "dead_after_ms": 1500}}, "control.dead_after_ms"),
    ({"scavenger": {"policy": "tcmalloc"}},
     "scavenger.policy: 'tcmalloc' is not one of eager, go, gperftools-rate, hugepage-aware, "
     "jemalloc-decay, jemalloc-hpa, mimalloc-delay, none, tcmalloc-background"),
    ({"scavenger": {"jemalloc-decay": {"dirty_decay_ms": -5}}},
     "scavenger.jemalloc-decay.dirty_decay_ms: -5 is out of range; allowed -1 (never), "
     "0 (at once) or 1..3600000"),
    ({"scavenger": {"jemalloc-decay": {"dirty_decay_ms": -2}}},
     "scavenger.jemalloc-decay.dirty_decay_ms: -2 is out of range"),
    ({"scavenger": {"mimalloc-delay": {"purge_delay_ms": -3}}},
     "scavenger.mimalloc-delay.purge_delay_ms: -3 is out of range; allowed -1 (never), "
     "0 (at once) or 1..3600000"),
    ({"scavenger": {"jemalloc-decay": {"on": "idle"}}},
     "scavenger.jemalloc-decay.on: 'idle' is not one of activity, timer"),
    ({"scavenger": {"mimalloc-delay": {"on": 1}}},
     "scavenger.mimalloc-delay.on: expected a string"),
    ({"scavenger": {"jemalloc-hpa": {"dirty_mult": -0.5}}},
     "scavenger.jemalloc-hpa.dirty_mult: -0.5 is out of range; allowed -1 (never) or 0..1000"),
    ({"scavenger": {"jemalloc-hpa": {"min_purge_interval_ms": -1}}},
     "scavenger.jemalloc-hpa.min_purge_interval_ms: -1 is out of range; allowed 0..3600000"),
    ({"scavenger": {"jemalloc-hpa": {"on": "never"}}},
     "scavenger.jemalloc-hpa.on: 'never' is not one of activity, timer"),
    ({"scavenger": {"jemalloc-hpa": {"dirty_ratio": 1}}},
     "unknown key scavenger.jemalloc-hpa.dirty_ratio; known in [scavenger.jemalloc-hpa]: "
     "dirty_mult, min_purge_interval_ms, on"),
    ({"scavenger": {"tcmalloc-background": {"release_rate_bytes_s": -1}}},
     "scavenger.tcmalloc-background.release_rate_bytes_s: -1 is out of range; allowed "
     "0..1099511627776"),
    ({"scavenger": {"tcmalloc-background": {"release_rate_bytes_s": 1.5}}},
     "scavenger.tcmalloc-background.release_rate_bytes_s: expected an integer"),
    ({"scavenger": {"tcmalloc-background": {"on": "timer"}}},
     "unknown key scavenger.tcmalloc-background.on; known in [scavenger.tcmalloc-background]: "
     "release_rate_bytes_s, skip_subrelease_interval_s"),
    ({"scavenger": {"gperftools-rate": {"release_rate": "fast"}}},
     "scavenger.gperftools-rate.release_rate: expected a number"),
    ({"scavenger": {"mimalloc-delay": {"purge_delay": 5}}},
     "unknown key scavenger.mimalloc-delay.purge_delay; known in [scavenger.mimalloc-delay]: "
     "purge_delay_ms"),
    ({"scavenger": {"mimalloc-delay": 5}}, "scavenger.mimalloc-delay must be a table"),
    ({"scavenger": {"none": {"x": 1}}}, "[scavenger.none]: the none policy has no parameters"),
    ({"scavenger": {"go": {"x": 1}}}, "unknown key scavenger.go.x; known in [scavenger.go]: "
     "version"),
    ({"scavenger": {"go": {"version": "1.20"}}}, "scavenger.go.version: '1.20' is not one of "
     "1.19, 1.21"),
    ({"scavenger": {"tcmalloc": {}}}, "unknown table [scavenger.tcmalloc]"),
    ({"scavenger": {"jemalloc_decay": {}}}, "unknown table [scavenger.jemalloc_decay]"),
])
def test_invalid_values_name_the_key(data, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert needle in str(e.value)


@pytest.mark.parametrize("policy,key,value", [
    ("jemalloc-decay", "dirty_decay_ms", 0), ("jemalloc-decay", "dirty_decay_ms", -1),
    ("mimalloc-delay", "purge_delay_ms", 0), ("mimalloc-delay", "purge_delay_ms", -1),
    ("jemalloc-hpa", "dirty_mult", -1), ("jemalloc-hpa", "dirty_mult", 0),
    ("jemalloc-decay", "on", "activity"), ("mimalloc-delay", "on", "activity"),
    ("jemalloc-hpa", "on", "activity"), ("tcmalloc-background", "release_rate_bytes_s", 0)])
def test_what_the_allocators_accept_is_accepted(policy, key, value):
    cfg = from_dict({"scavenger": {"policy": policy, policy: {key: value}}})
    assert getattr(cfg.scavenger.policy_params(), key) == value


def test_flags_override_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[heap]\nsize_mib = 32\n[sweep]\nsweepers = 3\n")
    cfg = load(p)
    assert cfg.heap.size_mib == 32 and cfg.sweep.sweepers == 3 and cfg.gc.gogc == 100
    from sweeperd.cli import _load_config, build_parser

    args = build_parser().parse_args(["run", "--config", str(p), "--sweepers", "1"])
    cfg = _load_config(args)
    assert cfg.sweep.sweepers == 1 and cfg.heap.size_mib == 32


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sweeperd.cli", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("text,needle", [
    ("[heap]\nsize_mib = 0\n", "heap.size_mib"),
    ("[gc]\ngogcc = 5\n", "gc.gogcc"),
    ("[metrics]\naddr = 5\n", "metrics.addr: expected a string"),
    ("not toml [", "not valid TOML"),
])
def test_run_and_config_check_exit_2(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    for args in (["config", "check", str(p)], ["run", "--config", str(p)]):
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr


@pytest.mark.parametrize("flags,needle", [
    (["--heap-mib", "-1"], "heap.size_mib"),
    (["--heap-mib", "99999999"], "heap.size_mib"),
    (["--sweepers", "100"], "sweep.sweepers"),
    (["--metrics-addr", "localhost"], "metrics.addr"),
    (["--control", "tcp://nope"], "control.addr"),
    (["--control", "tcp://local host:9465"], "control.addr"),
    (["--metrics-addr", "127.0.0.1:port"], "metrics.addr"),
    (["--duration", "-3"], "run.duration_s"),
])
def test_bad_flags_exit_2(flags, needle):
    r = _cli("run", *flags)
    assert r.returncode == 2 and needle in r.stderr


@pytest.mark.parametrize("addr", ["127.0.0.1:0", "localhost:9464", "[::1]:9464",
                                  "metrics.example.internal:80", "0.0.0.0:9464"])
def test_good_addresses_pass(addr):
    assert from_dict({"metrics": {"addr": addr}}).metrics.addr == addr


def test_config_check_accepts_the_shipped_file():
    r = _cli("config", "check", "config/sweeperd.toml")
    assert r.returncode == 0 and "ok" in r.stdout
    assert _cli("config", "check", "/nonexistent.toml").returncode == 2


# --- hostile configs: whatever a file holds, the answer is a Config or a ConfigError ------

def _known_keys() -> dict[str, list[str]]:
    from dataclasses import fields

    out = {f.name: [g.name for g in fields(getattr(Config(), f.name))]
           for f in fields(Config)}
    out["scavenger"] += ["jemalloc-decay", "gperftools-rate", "mimalloc-delay", "go", "eager"]
    return out


_KEYS = _known_keys()
_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
            | st.sampled_from(["go", "jemalloc-decay", "none", "on", "auto", "tcp://*:0",
                               "127.0.0.1:0", "ipc:///tmp/x"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                       max_leaves=20)


@st.composite
def _hostile_config(draw):
    data = {}
    for sec in draw(st.lists(st.sampled_from([*_KEYS, "x", ""]), max_size=4, unique=True)):
        keys = [*_KEYS.get(sec, []), "dirty_decay_ms", "release_rate", "purge_delay_ms", "?"]
        table = {}
        for k in draw(st.lists(st.sampled_from(keys), max_size=5, unique=True)):
            table[k] = draw(_VALUES | st.dictionaries(st.sampled_from(keys), _VALUES,
                                                      max_size=3))
        data[sec] = draw(st.just(table) | _VALUES)
    return data


@settings(max_examples=400, deadline=None)
@given(_hostile_config())
def test_any_config_data_gives_a_config_or_a_config_error(data):
    try:
        cfg = from_dict(data)
    except ConfigError as e:
        assert str(e)  # names what is wrong
        return
    assert isinstance(cfg, Config)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400) | st.just("a = " + "[" * 5000) | st.just("x = " + "9" * 5000))
def test_any_toml_text_gives_a_config_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load(path)
    except ConfigError as e:
        assert str(e)


def test_a_scenario_brings_its_heap_gogc_and_limit_unless_the_same_layer_sets_them(tmp_path):
    cfg = from_dict({"mutators": {"scenario": "memory-limit-squeeze"}})
    assert cfg.mutators.scenario == "memory-limit-squeeze"
    assert cfg.heap.size_mib == 2048 and cfg.scavenger.memory_limit_mib == 400
    mine = from_dict({"mutators": {"scenario": "steady"}, "heap": {"size_mib": 4096},
                      "gc": {"gogc": 50}})
    assert mine.heap.size_mib == 4096 and mine.gc.gogc == 50
    with pytest.raises(ConfigError, match=r"mutators\.scenario: no scenario 'nope'"):
        from_dict({"mutators": {"scenario": "nope"}})
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nname = "b"\n[[phase]]\nseconds = -1\nlive_mib = 1\n')
    with pytest.raises(ConfigError, match=r"mutators\.scenario: .*\$\.phase\[0\]\.seconds"):
        from_dict({"mutators": {"scenario": str(bad)}})


def test_start_after_and_max_memory_deaths_are_keys_with_ranges():
    cfg = from_dict({"control": {"start_after_ms": 90_000, "max_memory_deaths": 0}})
    assert cfg.control.start_after_ms == 90_000 and cfg.control.max_memory_deaths == 0
    for bad, needle in (({"start_after_ms": 5}, "control.start_after_ms"),
                        ({"max_memory_deaths": -1}, "control.max_memory_deaths"),
                        ({"start_after_ms": "soon"}, "control.start_after_ms")):
        with pytest.raises(ConfigError, match=needle):
            from_dict({"control": bad})
