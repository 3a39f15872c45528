"""The client trusts only the daemon's own socket, and says why it cannot reach one.

Real attempts: another uid (nobody) makes the temp-dir fallback's directory and binds a fake
zmq REP there, as a newcomer did on a shared host, and ``sweeperd status`` as root must refuse
it with nothing sent (the fake counts every connection and message); the same fake server in a
directory of ours is answered, so the fake is able to catch a client.  Then the three ways of
not reaching a daemon — nothing there, a socket we may not open, a stale socket left by a
process killed -9 — each named at once.  ``distrust`` (pure) over arbitrary lstat results."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.daemon.control import distrust

from .conftest import not_here

NOBODY = 65534
DEADLINE = 120

# A fake daemon: imports zmq, then (argv[2] "nobody*") becomes uid/gid 65534, makes the
# directory argv[1] (mode 0777 for "nobody": as the attacker did; 0770 for "nobody770") and
# binds a REP at DIR/control.sock; counts connections (the socket monitor) and messages,
# answering each like the daemon would; prints "ready", then at SIGTERM "accepted N received M".
FAKE = r"""
import os, signal, sys, zmq
from zmq.utils.monitor import recv_monitor_message
d, who = sys.argv[1], sys.argv[2]
if who.startswith("nobody"):
    os.setresgid(65534, 65534, 65534); os.setgroups([]) if os.getuid() == 0 else None
    os.setresuid(65534, 65534, 65534)
    if who != "nobody-run":  # (nobody-run: the directory exists, made by root, as systemd does)
        os.umask(0); os.mkdir(d, 0o777 if who == "nobody" else 0o770)
ctx = zmq.Context()
s = ctx.socket(zmq.REP)
mon = s.get_monitor_socket(zmq.EVENT_ACCEPTED)
s.bind("ipc://" + d + "/control.sock")
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print("ready", flush=True)
accepted = received = 0
poller = zmq.Poller(); poller.register(s, zmq.POLLIN); poller.register(mon, zmq.POLLIN)
while not stop:
    for sock, _ in poller.poll(100):
        if sock is mon:
            recv_monitor_message(mon); accepted += 1
        else:
            s.recv(); received += 1
            s.send(b'{"ok": true, "fake": true}')
print(f"accepted {accepted} received {received}", flush=True)
s.close(0); mon.close(0); ctx.term()
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    """A temp dir of mode 1777, as /tmp is: the TMPDIR of the fallback."""
    d = Path(tempfile.mkdtemp(prefix="swd_shared"))
    os.chmod(d, 0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _fake(directory: Path, who: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", FAKE, str(directory), who],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()  # blocks until bound (or the fake died: "")
    if line.strip() != "ready":
        p.kill()
        _, err = p.communicate(timeout=DEADLINE)
        pytest.fail(f"the fake server did not start: {err[-500:]}")
    return p


def _counts(p: subprocess.Popen[str]) -> tuple[int, int]:
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=DEADLINE)
    words = out.split()
    assert words[:1] == ["accepted"], (out, err)
    return int(words[1]), int(words[3])


def _cli(*args: str, env: dict[str, str] | None = None,
         as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": "/", "LANG": "C.UTF-8"}
    pre = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] \
        if as_nobody else []
    return subprocess.run([*pre, sys.executable, "-m", "sweeperd.cli", *args],
                          capture_output=True, text=True, timeout=DEADLINE, cwd="/",
                          env={**base, **(env or {})})


def _need_root() -> None:
    if os.geteuid() != 0:
        not_here("a fake server as another uid needs root")
    if os.path.isdir("/run/sweeperd"):
        not_here("/run/sweeperd exists: ipc://auto would not fall back to $TMPDIR")


def test_root_refuses_a_fake_daemon_of_another_uid_on_the_temp_dir_fallback(shared):
    _need_root()
    fake = _fake(shared / "sweeperd.0", "nobody")
    try:
        for request in ("status", "gc", "scavenge", "soak"):
            extra = ("--duration", "1") if request == "soak" else ()
            r = _cli(request, "--timeout", "30", *extra, env={"TMPDIR": str(shared)})
            assert r.returncode == 1, (request, r.returncode, r.stdout, r.stderr)
            assert '"fake"' not in r.stdout
            why = r.stderr
            assert f"refusing {shared}/sweeperd.0/control.sock" in why, why
            assert "uid nobody (65534)" in why and "mode 0777" in why, why
            assert "another user could be posing as the daemon" in why, why
    finally:
        accepted, received = _counts(fake)
    assert (accepted, received) == (0, 0)  # not a connection, not a byte


def test_the_same_fake_in_a_directory_of_ours_is_answered(shared):
    """The control for the test above: the fake catches a client that does connect."""
    _need_root()
    mine = shared / "sweeperd.0"
    mine.mkdir(mode=0o700)
    fake = _fake(mine, "root")
    try:
        r = _cli("status", "--timeout", "60", env={"TMPDIR": str(shared)})
        assert r.returncode == 0 and '"fake": true' in r.stdout, r.stderr
    finally:
        accepted, received = _counts(fake)
    assert received == 1 and accepted >= 2  # our probe's connect and zmq's


def test_another_uid_s_socket_is_trusted_only_through_the_configured_control_group(shared,
                                                                                 tmp_path):
    """A daemon run as another user (nobody, group nogroup, directory 0770): a root client
    trusts it only when its config names that group as control.group."""
    _need_root()
    d = shared / "sweeperd.0"
    fake = _fake(d, "nobody770")
    try:
        r = _cli("status", "--timeout", "30", env={"TMPDIR": str(shared)})
        assert r.returncode == 1 and "another user could be posing" in r.stderr, r.stderr
        cfg = tmp_path / "c.toml"
        cfg.write_text('[control]\ngroup = "root"\n')  # a group, but not the socket's
        r = _cli("status", "--timeout", "30", "--config", str(cfg), env={"TMPDIR": str(shared)})
        assert r.returncode == 1 and "nor control.group (gid 0)" in r.stderr, r.stderr
        cfg.write_text('[control]\ngroup = "nogroup"\n')
        r = _cli("status", "--timeout", "60", "--config", str(cfg), env={"TMPDIR": str(shared)})
        assert r.returncode == 0 and '"fake": true' in r.stdout, r.stderr
    finally:
        _, received = _counts(fake)
    assert received == 1  # only the last, trusted, request


def test_another_uid_s_daemon_in_a_directory_only_root_could_make_is_trusted():
    """systemd's RuntimeDirectory for a ``User=`` service: /run (root's, 0755) holds
    sweeperd/, made by root and handed to the service's user (mode 0700): nobody else could
    have put it there, so a root client trusts that user's socket in it without
    control.group; the same directory under a 1777 parent (as /tmp) is refused."""
    _need_root()
    run = Path(tempfile.mkdtemp(prefix="swd_run"))  # (searchable by nobody, unlike tmp_path)
    os.chmod(run, 0o755)
    d = run / "sweeperd"
    d.mkdir(mode=0o700)
    os.chown(d, NOBODY, NOBODY)
    fake = _fake(d, "nobody-run")
    try:
        r = _cli("status", "--timeout", "60", "--control", f"ipc://{d}/control.sock")
        assert r.returncode == 0 and '"fake": true' in r.stdout, r.stderr
        os.chmod(run, 0o1777)  # now anyone could have made sweeperd/ there
        r = _cli("status", "--timeout", "30", "--control", f"ipc://{d}/control.sock")
        assert r.returncode == 1 and "another user could be posing" in r.stderr, r.stderr
    finally:
        _, received = _counts(fake)
        shutil.rmtree(run, ignore_errors=True)
    assert received == 1  # only the trusted request


def test_a_socket_in_a_world_writable_directory_of_ours_is_refused(shared):
    _need_root()
    d = shared / "sweeperd.0"
    d.mkdir()
    os.chmod(d, 0o777)  # ours, but anyone could replace the socket
    fake = _fake(d, "root")
    try:
        r = _cli("status", "--timeout", "30", env={"TMPDIR": str(shared)})
        assert r.returncode == 1 and "anyone may write to it" in r.stderr, r.stderr
        assert "mode 0777" in r.stderr
    finally:
        assert _counts(fake) == (0, 0)


def test_a_symlinked_directory_is_refused(shared, tmp_path):
    _need_root()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (shared / "sweeperd.0").symlink_to(real)
    fake = _fake(real, "root")
    try:
        r = _cli("status", "--timeout", "30", env={"TMPDIR": str(shared)})
        assert r.returncode == 1 and "is not a directory (a symlink?" in r.stderr, r.stderr
    finally:
        assert _counts(fake) == (0, 0)


# --- the three ways of not reaching a daemon --------------------------------------------------


def test_nothing_at_the_path_says_no_daemon(tmp_path):
    path = tmp_path / "control.sock"
    r = _cli("status", "--control", f"ipc://{path}", "--timeout", "60")
    assert r.returncode == 1
    assert f"no daemon: nothing at {path} (is it running? its config's control.addr?)" \
        in r.stderr, r.stderr
    r = _cli("status", "--control", f"ipc://{tmp_path}/no/such/dir/c.sock", "--timeout", "60")
    assert r.returncode == 1 and "no daemon: nothing at" in r.stderr, r.stderr


def test_a_stale_socket_of_a_process_killed_9_says_so(tmp_path):
    path = tmp_path / "control.sock"
    listener = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time\n"
         "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)\n"
         "print('ready', flush=True); time.sleep(3600)\n", str(path)],
        stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    listener.kill()  # SIGKILL: the file stays behind
    listener.wait(timeout=DEADLINE)
    listener.stdout.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    r = _cli("status", "--control", f"ipc://{path}", "--timeout", "60")
    assert r.returncode == 1
    assert (f"a socket is at {path} but no daemon listens (a stale socket: the daemon died "
            "without removing it)") in r.stderr, r.stderr


def test_a_socket_we_may_not_open_says_permission_denied(tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        not_here("a client as another uid needs root and setpriv")
    d = Path(tempfile.mkdtemp(prefix="swd_perm"))
    try:
        os.chmod(d, 0o755)
        fake = _fake(d, "root")  # root's socket, mode 0755 less zmq's: we make it 0600
        try:
            os.chmod(d / "control.sock", 0o600)
            r = _cli("status", "--control", f"ipc://{d}/control.sock", "--timeout", "60",
                     as_nobody=True)
            if "No module named" in r.stderr:
                not_here(f"nobody cannot read the venv ({sys.executable})")
            assert r.returncode == 1
            assert f"permission denied on {d}/control.sock (owned by uid root (0)" in r.stderr
            assert "mode 0600" in r.stderr, r.stderr
            os.chmod(d, 0o700)  # and where it cannot even see the socket: its directory named
            r = _cli("status", "--control", f"ipc://{d}/control.sock", "--timeout", "60",
                     as_nobody=True)
            assert r.returncode == 1
            assert f"permission denied on {d}/control.sock (its directory {d} is owned by " \
                   "uid root (0)" in r.stderr and "mode 0700" in r.stderr, r.stderr
        finally:
            assert _counts(fake) == (0, 0)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- the rule, pure ----------------------------------------------------------------------------


def _st(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, gid, 0, 0, 0, 0))


@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from([stat.S_IFDIR, stat.S_IFSOCK]), perm=st.integers(0, 0o7777),
       uid=st.sampled_from([0, 1000, NOBODY, 2**32 - 2]),
       gid=st.sampled_from([0, 1000, NOBODY]), euid=st.sampled_from([0, 1000]),
       group=st.sampled_from([None, 1000, NOBODY]))
def test_trusted_means_ours_root_s_or_the_group_s_in_a_directory_no_one_else_may_write(
        kind, perm, uid, gid, euid, group):
    why = distrust(_st(kind | perm, uid, gid), euid, group)
    ours = group is not None and gid == group
    owner_ok = uid in (euid, 0) or ours
    is_dir = kind == stat.S_IFDIR  # a socket's write bit lets one connect, not replace it
    others_write = is_dir and perm & 0o002 and not perm & stat.S_ISVTX
    group_write = is_dir and perm & 0o020 and not ours
    assert (why == "") == (owner_ok and not others_write and not group_write), why
    if why:
        assert why.startswith(("it belongs neither", "anyone may write", "its group may"))
