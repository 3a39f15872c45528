"""What an operator deploys: the systemd unit (checked by systemd itself where it is installed)
and the daemon's listening sockets, which must be on loopback unless configured otherwise."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import not_here
from .daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy/systemd/sweeperd.service"


def _unit() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, _, v = line.partition("=")
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def test_unit_is_notify_mixed_kill_and_sandboxed():
    u = _unit()
    assert u["Type"] == ["notify"] and u["NotifyAccess"] == ["main"]
    assert u["KillMode"] == ["mixed"] and u["KillSignal"] == ["SIGTERM"]
    assert re.search(r"sweeperd run --config \S+", u["ExecStart"][0])
    assert "config check" in u["ExecStartPre"][0]
    # a bad config (2) or an unsupported platform (7) is not retried forever
    assert u["RestartPreventExitStatus"] == ["2 7"]
    assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # SIGHUP reloads, never kills
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("PrivateDevices", "yes"), ("CapabilityBoundingSet", "")]:
        assert u.get(key) == [value], key
    assert "AF_UNIX" in u["RestrictAddressFamilies"][0]  # the workers' ipc socket


def _runnable_unit(tmp_path: Path) -> Path:
    """The unit with its install paths pointed at this checkout, so systemd can check it."""
    exe = Path(sys.executable).parent / "sweeperd"
    text = UNIT.read_text().replace("/opt/sweeperd/bin/sweeperd", str(exe)).replace(
        "/etc/sweeperd/sweeperd.toml", str(ROOT / "config/sweeperd.toml"))
    out = tmp_path / "sweeperd.service"
    out.write_text(text)
    return out


def test_systemd_verifies_the_unit_and_rates_its_sandbox(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        not_here("systemd-analyze is not installed (Debian package 'systemd'), as .ci/run "
                 "installs it")
    unit = _runnable_unit(tmp_path)
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "sweeperd.service" not in r.stderr, r.stderr
    r = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for sweeperd.service: ([\d.]+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.0, f"exposure {m.group(1)}: the sandbox was weakened"


def _listening_inodes(family_file: str) -> dict[int, str]:
    """inode -> local address of every LISTEN socket in /proc/net/tcp or tcp6."""
    out = {}
    with open(family_file) as f:
        next(f)
        for line in f:
            parts = line.split()
            local, state, inode = parts[1], parts[3], int(parts[9])
            if state == "0A":  # TCP_LISTEN
                out[inode] = local
    return out


def _decode(local: str) -> str:
    addr, port = local.split(":")
    if len(addr) == 8:
        ip = ".".join(str(b) for b in reversed(bytes.fromhex(addr)))
    else:  # tcp6: four little-endian 32-bit words
        words = [bytes.fromhex(addr[i : i + 8])[::-1].hex() for i in range(0, 32, 8)]
        ip = "[" + "".join(words) + "]"
    return f"{ip}:{int(port, 16)}"


def _listening(pid: int) -> list[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(int(m.group(1)))
    table = {**_listening_inodes("/proc/net/tcp"), **_listening_inodes("/proc/net/tcp6")}
    return sorted(_decode(table[i]) for i in inodes if i in table)


def test_on_its_defaults_the_daemon_listens_on_loopback_only(tmp_path):
    """Metrics on loopback; control on the ipc socket in its runtime directory (here
    ``$RUNTIME_DIRECTORY``, as under systemd): no TCP port for it at all."""
    d = Daemon("--heap-mib", "32", "--sweepers", "1", "--mutators", "1",
               ephemeral_ports=False, env={"RUNTIME_DIRECTORY": str(tmp_path)})
    try:
        assert d.metrics == "http://127.0.0.1:9464/metrics"
        assert d.control == f"ipc://{tmp_path}/control.sock"
        st = d.status()
        addrs = _listening(st["pid"])
        assert sorted(addrs) == ["127.0.0.1:9464"], addrs
        for w in st["workers"]:  # workers talk over the 0700 ipc socket: no TCP at all
            assert _listening(w["pid"]) == [], (w, _listening(w["pid"]))
        assert d.stop() == 0
    finally:
        d.close()


DASK_UNITS = {"sweeperd-dask-scheduler.service": "scheduler",
              "sweeperd-dask-worker.service": "worker"}


def _unit_keys(path: Path) -> dict[str, str]:
    """Each key's value, continuation lines joined."""
    text = path.read_text().replace("\\\n", " ")
    keys: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, _, v = line.partition("=")
            keys[k.strip()] = " ".join(v.split())
    return keys


def test_the_dask_units_run_one_run_per_host_over_tls():
    w = _unit_keys(ROOT / "deploy/dask/sweeperd-dask-worker.service")
    assert "dask worker tls://${SCHEDULER}:8786" in w["ExecStart"]
    assert "--nthreads 1 --resources sweeperd_host=1" in w["ExecStart"]
    s = _unit_keys(ROOT / "deploy/dask/sweeperd-dask-scheduler.service")
    assert "dask scheduler --protocol tls --host ${SCHEDULER_HOST}" in s["ExecStart"]
    for u, role in ((s, "scheduler"), (w, "worker")):
        assert f"--tls-key %d/{role}.key" in u["ExecStart"]
        assert u["LoadCredential"] == f"{role}.key:/etc/sweeperd/dask/{role}.key"
        assert "--tls-ca-file /etc/sweeperd/dask/ca.pem" in u["ExecStart"]
        assert u["DynamicUser"] == "yes" and u["NoNewPrivileges"] == "yes"
    assert w["KillMode"] == "control-group"  # a stop takes the run's daemon too


def test_systemd_verifies_the_dask_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        not_here("systemd-analyze is not installed (Debian package 'systemd'), as .ci/run "
                 "installs it")
    dask = Path(sys.executable).parent / "dask"
    if not dask.exists():
        not_here("dask is not installed: pip install -e '.[test,dask]', as the test command does")
    for name in DASK_UNITS:
        text = (ROOT / "deploy/dask" / name).read_text().replace("/opt/sweeperd/bin/dask",
                                                                  str(dask))
        text = text.replace("EnvironmentFile=/etc/sweeperd/dask.env",
                            "Environment=SCHEDULER=127.0.0.1 SCHEDULER_HOST=127.0.0.1 "
                            "WORKER_HOST=127.0.0.1")
        unit = tmp_path / name
        unit.write_text(text)
        r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and name not in r.stderr, r.stderr
