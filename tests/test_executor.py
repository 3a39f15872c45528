"""The executor seam: ``--executor``'s text, the plain data a run crosses it as, and what a
result from another host may write."""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeperd.loadtest import executor as ex
from sweeperd.loadtest.main import Options, UsageError, plan
from sweeperd.loadtest.outdir import OutDir
from sweeperd.loadtest.runner import RunResult


def _task(**kw) -> ex.Task:
    base = dict(index=3, run_id="s.go.r0", scenario_toml="[scenario]\nname = \"s\"\n"
                "[[phase]]\nseconds = 1\nlive_mib = 1\n", policy="go",
                settings={"gogc": 100, "memory_limit_mib": 0}, given=[], forced=[(1.5, "gc")],
                sample_s=0.25, version=ex.sweeperd_version())
    base.update(kw)
    return ex.Task(**base)


@pytest.mark.parametrize("text,want", [
    ("local", ("local", "", 0)),
    ("dask://127.0.0.1:8786", ("dask", "127.0.0.1", 8786)),
    ("dask://localhost:1", ("dask", "localhost", 1)),
    ("dask://[::1]:8786", ("dask", "::1", 8786)),
    ("  dask://sched.example:65535 ", ("dask", "sched.example", 65535)),
])
def test_the_executor_text_names_local_or_a_scheduler(text, want):
    assert ex.parse_executor(text) == want


@pytest.mark.parametrize("text,says", [
    ("dask://127.0.0.1", "dask://HOST:PORT"),
    ("dask://127.0.0.1:0", "port 0"),
    ("dask://127.0.0.1:70000", "port 70000"),
    ("tcp://127.0.0.1:8786", "dask://HOST:PORT"),
    ("dask://a b:1", "dask://HOST:PORT"),
    ("dask://h:1/path", "dask://HOST:PORT"),
    ("dask://[:]:1", "not an IPv6 address"),
    ("dask://[1.2.3.4]:1", "not an IPv6 address"),
    ("dask://-x:1", "not a host name"),
    ("dask://..:1", "not a host name"),
    ("dask://user@h:1", "dask://HOST:PORT"),
    ("", "local"),
    ("Local", "local"),
])
def test_a_bad_executor_is_refused_by_name(text, says):
    with pytest.raises(ex.ExecutorError, match="--executor") as e:
        ex.parse_executor(text)
    assert says in str(e.value)


@given(st.text(max_size=300))
def test_any_executor_text_parses_or_is_refused_by_name(text):
    try:
        kind, host, port = ex.parse_executor(text)
    except ex.ExecutorError as e:
        assert str(e).startswith("--executor")
        return
    assert (kind, host, port) == ("local", "", 0) or (kind == "dask" and 1 <= port <= 65535)


def test_a_bad_executor_exits_before_anything_runs(tmp_path):
    with pytest.raises(UsageError, match="--executor"):
        plan(Options(scenarios=["steady"], policies="none", executor="dask://x",
                     out=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_loopback_is_told_from_other_addresses():
    assert ex.is_loopback("127.0.0.1") and ex.is_loopback("localhost")
    assert ex.is_loopback("::1")
    assert not ex.is_loopback("10.1.2.3") and not ex.is_loopback("8.8.8.8")
    assert not ex.is_loopback("no-such-host.invalid")


def test_a_scheduler_off_loopback_needs_dask_tls(tmp_path):
    pytest.importorskip("distributed")
    import dask.config

    from sweeperd.loadtest import dask_executor

    with dask.config.set({"distributed.comm.tls.ca-file": None,
                          "distributed.comm.tls.client.cert": None}):
        with pytest.raises(ex.ExecutorError, match="TLS") as e:
            dask_executor._address("10.1.2.3", 8786)
        assert "distributed.comm.tls.ca-file" in str(e.value)
        assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in str(e.value)
        assert dask_executor._address("127.0.0.1", 8786) == ("tcp://127.0.0.1:8786", False)
    ca, cert = tmp_path / "ca.pem", tmp_path / "c.pem"
    with dask.config.set({"distributed.comm.tls.ca-file": str(ca),
                          "distributed.comm.tls.client.cert": str(cert)}):
        with pytest.raises(ex.ExecutorError, match=r"ca-file = .*ca\.pem: not a file"):
            dask_executor._address("10.1.2.3", 8786)  # named, but no such file
        ca.write_text("x")
        cert.write_text("x")
        assert dask_executor._address("10.1.2.3", 8786) == ("tls://10.1.2.3:8786", True)
        assert dask_executor._address("fd00::1", 1)[0] == "tls://[fd00::1]:1"
    with pytest.raises(ex.ExecutorError, match=r"'nosuchhost\.invalid' does not resolve"):
        dask_executor._address("nosuchhost.invalid", 8786)


def test_nothing_listening_is_said_at_once(tmp_path):
    pytest.importorskip("distributed")
    import socket

    from sweeperd.loadtest import dask_executor

    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(ex.ExecutorError, match=r"no Dask scheduler answers at 127\.0\.0\.1"):
            dask_executor.DaskExecutor("127.0.0.1", port)


def test_a_done_round_trips_as_plain_data_floats_exact():
    res = RunResult("s", "go", ok=True, rows=[{"t": 0.1, "x": math.nan, "y": math.inf,
                                               "z": 1e-300}], gctrace=["gc 1 @0.1s"])
    d = ex.Done(3, "s.go.r0", res, {"gogc": 100}, "h", "w1", ex.now_iso(), ex.now_iso(),
                ex.machine(), attempts=2, files={"daemon.log": b"\x00\xff"})
    back = ex.decode_done(ex.encode(d), _task())
    assert back.result.rows[0]["z"] == 1e-300 and math.isnan(back.result.rows[0]["x"])
    assert back.result.rows[0]["y"] == math.inf and back.files == {"daemon.log": b"\x00\xff"}
    assert back.attempts == 2 and back.worker == "w1"
    t = _task()
    assert ex.decode_task(ex.encode(t)) == t


def test_a_result_for_another_run_or_malformed_is_refused():
    res = RunResult("s", "go", ok=True)
    other = ex.Done(3, "other.r0", res, {}, "h", "w", "", "", {})
    with pytest.raises(ValueError, match=r"names run 'other\.r0'"):
        ex.decode_done(ex.encode(other), _task())
    with pytest.raises(ValueError, match="malformed"):
        ex.decode_done(b"\x93\x01", _task())
    with pytest.raises(ValueError, match="malformed"):
        ex.decode_done(msgspec.msgpack.encode({"index": 3, "run_id": "s.go.r0",
                                               "evil": 1}), _task())


@given(st.binary(max_size=2000))
def test_any_bytes_as_a_result_decode_or_are_refused(raw):
    try:
        d = ex.decode_done(raw, _task())
    except ValueError:
        return
    assert d.run_id == "s.go.r0"


def test_another_version_of_sweeperd_refuses_the_task(tmp_path):
    d = ex.execute(_task(version="0.0.0-other"), tmp_path / "r")
    assert not d.result.ok and "install the same version" in d.result.error
    assert d.run_id == "s.go.r0" and d.index == 3


def test_a_remote_runs_files_are_written_under_safe_names_only(tmp_path):
    out = OutDir.create(tmp_path / "out")
    try:
        ex.write_files(out, "s.go.r0", {"daemon.log": b"log", "../escape": b"x",
                                        ".hidden": b"x", "a/b": b"x", "": b"x",
                                        "config.toml": b"c"})
    finally:
        out.close()
    got = sorted(p.name for p in (tmp_path / "out" / "runs" / "s.go.r0").iterdir())
    assert got == ["config.toml", "daemon.log"]
    assert not (tmp_path / "escape").exists()


def test_a_run_directorys_files_are_collected_without_following_links(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "daemon.log").write_bytes(b"a" * 10 + b"END")
    (d / "secret").write_text("s")
    os.symlink(tmp_path / "secret-elsewhere", d / "link.log")
    (tmp_path / "secret-elsewhere").write_text("not yours")
    (d / "sub").mkdir()
    files = ex.collect_files(d)
    assert set(files) == {"daemon.log", "secret"} and files["daemon.log"].endswith(b"END")


def test_a_large_file_comes_back_as_its_tail_saying_so(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "MAX_FILE_BYTES", 100)
    d = tmp_path / "run"
    d.mkdir()
    (d / "daemon.log").write_bytes(b"x" * 993 + b"the end")
    got = ex.collect_files(d)["daemon.log"]
    assert got.startswith(b"[sweeperd: the first 900 bytes") and got.endswith(b"the end")


def test_a_remote_runs_config_points_at_its_scenario_here(tmp_path):
    from sweeperd.loadtest.runner import config_text
    from sweeperd.workload.scenario import parse

    sc = parse('[scenario]\nname = "s"\n[[phase]]\nseconds = 1\nlive_mib = 1\n')
    remote = "/var/lib/w/dask-scratch-space/worker-1/sweeperd_ltrun\"x/s.go.r0/scenario.toml"
    cfg = config_text(Path(remote), "go", sc).encode()
    out = OutDir.create(tmp_path / "out")
    try:
        ex.write_files(out, "s.go.r0", {"config.toml": cfg, "scenario.toml": b"x"})
    finally:
        out.close()
    got = tomllib.loads((tmp_path / "out/runs/s.go.r0/config.toml").read_text())
    assert got["mutators"]["scenario"] == str(tmp_path / "out/runs/s.go.r0/scenario.toml")
    assert got["scavenger"]["policy"] == "go"
    assert ex.repointed(b"\xff\xfe", tmp_path) == b"\xff\xfe"  # not a config: as it came
    assert ex.repointed(b"[mutators]\nscenario = 3\n", tmp_path) == b"[mutators]\nscenario = 3\n"


def test_an_ipv6_scheduler_keeps_its_brackets():
    assert ex.host_port("::1", 8786) == "[::1]:8786"
    assert ex.host_port("h", 1) == "h:1"
