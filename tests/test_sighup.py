"""SIGHUP with a real daemon: what can change while running is reloaded from the config file
it was started with (GOGC, the trace flags, the scavenger's budget and policy parameters); what
cannot is named and kept; a bad file is logged and the running config kept.  Never a death."""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request

from hypothesis import given
from hypothesis import strategies as st

from sweeperd.daemon.coordinator import RELOADABLE, _changed_keys, _reloadable

from .daemon import Daemon

BASE = ("[control]\nheartbeat_ms = 100\n"
        "[scavenger]\ncpu_fraction = 0.01\n")


class Lines:
    """Every line of a stream, read by a thread; ``wait`` for one matching a pattern."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line)

    def wait(self, pattern: str, after: int = 0, timeout_s: float = 60) -> str:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for line in self.lines[after:]:
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines[-40:])}")


def _cpu_target(d: Daemon) -> float:
    with urllib.request.urlopen(d.metrics, timeout=30) as r:
        text = r.read().decode()
    return float(re.search(r"^sweeperd_scavenge_cpu_fraction_target (\S+)$", text, re.M)[1])


def _scavenger_pid(d: Daemon) -> int:
    st = d.wait_for(lambda s: any(w["role"] == "scavenger" and w["state"] == "alive"
                                  for w in s["workers"]), what="the scavenger up")
    return next(w["pid"] for w in st["workers"] if w["role"] == "scavenger")


def test_sighup_reloads_what_it_can_names_the_rest_and_survives_a_bad_file(tmp_path):
    cfg = tmp_path / "sweeperd.toml"
    cfg.write_text(BASE)
    d = Daemon("--config", str(cfg), "--heap-mib", "32", "--sweepers", "1", "--mutators", "1")
    out, err = Lines(d.proc.stdout), Lines(d.proc.stderr)
    try:
        scav = _scavenger_pid(d)
        assert _cpu_target(d) == 0.01
        # 1. reloadable keys (and one that is not; a flag's key, --heap-mib, stays the flag's)
        cfg.write_text(BASE.replace("0.01", "0.02")
                       + "[gc]\ngogc = 200\n[run]\ngctrace = true\n[sweep]\nchunk_pages = 2048\n")
        n = len(out.lines)
        d.proc.send_signal(signal.SIGHUP)
        line = out.wait(r"SIGHUP: reloaded", n)
        assert "gc.gogc" in line and "run.gctrace" in line and "scavenger.cpu_fraction" in line
        assert "not reloaded (a restart applies them): sweep.chunk_pages" in line
        assert "sweep.chunk_pages" not in line.split(";")[0]
        d.request(b'{"v": 1, "type": "gc"}')  # the trace flag is on now: a gc line comes
        err.wait(r"^gc \d+ @")
        d.wait_for(lambda s: any(w["role"] == "scavenger" and w["state"] == "alive"
                                 and w["pid"] != scav for w in s["workers"]),
                   what="the scavenger restarted with its new budget")
        assert _cpu_target(d) == 0.02
        # 2. a bad file: logged, the running config kept
        for bad in ("[gc]\ngogc = 5\n", "this is not TOML [", "[nosuch]\nx = 1\n"):
            cfg.write_text(bad)
            n = len(out.lines)
            d.proc.send_signal(signal.SIGHUP)
            line = out.wait(r"SIGHUP: config not reloaded, keeping the running one", n)
            assert _cpu_target(d) == 0.02
        # 3. the file gone
        cfg.unlink()
        n = len(out.lines)
        d.proc.send_signal(signal.SIGHUP)
        out.wait(r"SIGHUP: config not reloaded", n)
        for _ in range(5):  # a burst of them changes nothing either
            d.proc.send_signal(signal.SIGHUP)
        st = d.status()
        assert st["workers_alive"] >= 2
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(60) == 0
    finally:
        d.close()


# --- the diff a reload is decided on (pure) ---------------------------------------------------

_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                  st.text(max_size=5))
_tree = st.recursive(st.dictionaries(st.text("abc.", min_size=1, max_size=3), _leaf,
                                     max_size=4),
                     lambda t: st.dictionaries(st.text("abc", min_size=1, max_size=3), t,
                                               max_size=4), max_leaves=20)


@given(_tree)
def test_a_config_unchanged_has_no_changed_key(tree):
    assert _changed_keys(tree, tree) == []


@given(_tree, st.data())
def test_one_leaf_changed_is_the_one_key_named(tree, data):
    import copy

    leaves = list(_walk(tree))
    if not leaves:
        return
    path, keys = data.draw(st.sampled_from(leaves))  # (a key may hold a ".": keys are real)
    new = copy.deepcopy(tree)
    node = new
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = ["changed"]  # a value no leaf strategy makes
    assert path in _changed_keys(tree, new)
    assert all(k == path for k in _changed_keys(tree, new))


def _walk(d, prefix="", keys=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.", (*keys, k))
        else:
            yield f"{prefix}{k}", [*keys, k]


def test_only_the_documented_keys_reload():
    assert _reloadable("gc.gogc") and _reloadable("scavenger.jemalloc_decay.dirty_decay_ms")
    for key in ("heap.size_mib", "gc", "gc.gogcx", "scavenger.policy", "control.addr",
                "scavenger.jemalloc_decayx.a", "run.duration_s", "mutators.scenario", ""):
        assert not _reloadable(key), key
    assert all(r.startswith(("gc.", "run.", "scavenger.")) for r in RELOADABLE)
