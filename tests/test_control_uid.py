"""Another uid cannot drive the daemon: a client run as ``nobody`` (setpriv) against a daemon
on its defaults cannot send ``gc``, ``scavenge`` or ``status`` — the kernel refuses its
connect to the 0600 ipc socket (EACCES) — and over tcp a CURVE key not in the allowed file
never completes the handshake.  With ``control.group`` its members can."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeperd.daemon.control import read_cert, write_pair

from .conftest import not_here
from .daemon import Daemon
from .test_control_daemon import CURVE_PROBE

NOBODY = 65534
SMALL = ("--heap-mib", "32", "--sweepers", "1", "--mutators", "1",
         "--metrics-addr", "127.0.0.1:0")
CONNECT = ("import socket, sys\n"
           "s = socket.socket(socket.AF_UNIX)\n"
           "try:\n    s.connect(sys.argv[1])\n"
           "except OSError as e:\n    print('refused', e.errno); sys.exit(3)\n"
           "print('connected')\n")


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", *cmd], capture_output=True, text=True,
                          timeout=120, cwd="/", env={"PATH": os.environ.get("PATH", ""),
                                                     "HOME": "/", "LANG": "C.UTF-8"})


@pytest.fixture(scope="module", autouse=True)
def _nobody_can_run_the_cli() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        not_here("running a client as another uid needs root and setpriv")
    r = _as_nobody(sys.executable, "-c", "import sweeperd.cli")
    if r.returncode != 0:
        not_here(f"nobody cannot read the venv ({sys.executable}): {r.stderr[-300:]}")


@pytest.fixture
def rundir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="sweeperd_uid")  # short, 0700: a socket path
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _cli_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return _as_nobody(sys.executable, "-m", "sweeperd.cli", *args)


def test_nobody_cannot_connect_to_the_default_ipc_socket(rundir):
    d = Daemon(*SMALL, ephemeral_ports=False, env={"RUNTIME_DIRECTORY": rundir})
    try:
        path = d.control[len("ipc://"):]
        assert path == f"{rundir}/control.sock"  # control.addr = ipc://auto, the default
        r = _as_nobody(sys.executable, "-c", CONNECT, path)
        assert r.returncode == 3 and "refused 13" in r.stdout, (r.stdout, r.stderr)  # EACCES
        for request in ("gc", "scavenge", "status"):
            r = _cli_as_nobody(request, "--control", d.control, "--timeout", "60")
            assert r.returncode == 1 and f"permission denied on {path}" in r.stderr, (
                request, r.stderr)  # said at once, naming the path, before any zmq request
        os.chmod(rundir, 0o755)  # even with the directory open, the socket itself is 0600
        r = _as_nobody(sys.executable, "-c", CONNECT, path)
        assert r.returncode == 3 and "refused 13" in r.stdout, (r.stdout, r.stderr)
        r = _cli_as_nobody("gc", "--control", d.control, "--timeout", "60")
        assert r.returncode == 1 and f"permission denied on {path} (owned by uid root (0)" \
            in r.stderr and "mode 0600" in r.stderr, r.stderr
        st = d.status()
        assert set(st["control_requests"]) <= {"status"}, st["control_requests"]  # ours only
        assert d.stop() == 0
    finally:
        d.close()


def test_a_configured_group_may_use_the_socket(rundir):
    os.chmod(rundir, 0o755)
    cfg = Path(rundir) / "c.toml"
    cfg.write_text('[control]\ngroup = "nogroup"\n')
    d = Daemon(*SMALL, "--config", str(cfg), "--control", f"ipc://{rundir}/c.sock",
               ephemeral_ports=False)
    try:
        st = os.stat(f"{rundir}/c.sock")
        assert oct(st.st_mode & 0o777) == "0o660" and st.st_gid == NOBODY
        r = _cli_as_nobody("gc", "--control", d.control, "--timeout", "30")
        assert r.returncode == 0 and '"ok": true' in r.stdout, r.stderr
        assert d.status()["control_requests"]["gc"] == {"ok": 1}
        assert d.stop() == 0
    finally:
        d.close()


def test_nobody_with_a_curve_key_not_allowed_gets_no_reply_over_tcp(rundir):
    keys = Path(rundir) / "keys"
    server_pub, server_sec = write_pair(str(keys), "server")
    alice_pub, alice_sec = write_pair(str(keys), "alice")
    mine = Path(rundir) / "nobody"
    _, nobody_sec = write_pair(str(mine), "nobody")
    for p in (Path(rundir), keys):
        os.chmod(p, 0o755)
    os.chmod(server_pub, 0o644)
    for p in (mine, Path(nobody_sec)):
        os.chown(p, NOBODY, NOBODY)
    cfg = Path(rundir) / "c.toml"
    cfg.write_text(f'[control]\ncurve_server_key = "{server_sec}"\n'
                   f'curve_allowed_clients = "{alice_pub}"\n')
    a, s = read_cert(alice_sec), read_cert(server_pub)
    assert a.secret is not None
    d = Daemon(*SMALL, "--config", str(cfg), "--control", "tcp://127.0.0.1:0",
               ephemeral_ports=False, curve=(a.public, a.secret, s.public))
    try:
        for request in ("gc", "scavenge", "status"):
            r = _cli_as_nobody(request, "--control", d.control, "--curve-server-key",
                               server_pub, "--curve-client-key", nobody_sec, "--timeout", "2")
            assert r.returncode == 1 and "no answer" in r.stderr, (request, r.stderr)
        me = read_cert(nobody_sec)
        r = _as_nobody(sys.executable, "-c", CURVE_PROBE, d.control, me.public,
                       me.secret or "", s.public)
        assert r.stdout.strip() == "refused", (r.stdout, r.stderr)  # ZAP said no
        st = d.wait_for(lambda st: st["control_requests"].get("handshake", {})
                        .get("refused", 0) >= 1, what="nobody's key counted as refused")
        assert "gc" not in st["control_requests"] and "scavenge" not in st["control_requests"]
        # and nobody cannot serve tcp without CURVE either: refused at config
        r = _cli_as_nobody("run", "--control", "tcp://127.0.0.1:0", "--heap-mib", "16")
        assert r.returncode == 2 and "control.curve_server_key" in r.stderr, r.stderr
        assert d.stop() == 0
    finally:
        d.close()


def test_a_key_file_the_user_cannot_read_is_a_config_error_naming_the_key(rundir):
    _, server_sec = write_pair(rundir, "server")  # 0600, root's
    allowed = write_pair(rundir, "client")[0]
    os.chmod(rundir, 0o755)
    cfg = Path(rundir) / "c.toml"
    cfg.write_text(f'[control]\naddr = "tcp://127.0.0.1:0"\ncurve_server_key = "{server_sec}"\n'
                   f'curve_allowed_clients = "{allowed}"\n')
    os.chmod(cfg, 0o644)
    r = _cli_as_nobody("config", "check", str(cfg))
    assert r.returncode == 2, r.stderr
    assert "control.curve_server_key: cannot read" in r.stderr and "Permission denied" in r.stderr
    assert _cli("config", "check", str(cfg)).returncode == 0  # its owner can


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sweeperd.cli", *args], capture_output=True,
                          text=True, timeout=120)
