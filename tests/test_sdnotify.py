"""systemd's notify protocol: unit tests over a real datagram socket, and a real daemon."""

import os
import socket
import time

import pytest

from sweeperd.sys.sdnotify import Notifier, NotifyError

from .daemon import Daemon


@pytest.fixture
def listener(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    s.bind(path)
    s.settimeout(0.05)
    try:
        yield s, path
    finally:
        s.close()


def _drain(s, until=None, timeout=30.0):
    """Messages received, as lists of assignments, until ``until`` is among them."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(s.recv(4096).decode().split("\n"))
        except TimeoutError:
            if until is None:
                return got
            continue
        if until is not None and until in got[-1]:
            return got
    raise AssertionError(f"no {until} within {timeout}s; got {got}")


def test_messages_reach_the_socket_and_the_variables_are_taken(listener):
    s, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "OTHER": "x"}
    n = Notifier.from_env(env, pid=123)
    assert env == {"OTHER": "x"}  # children started later cannot inherit them
    n.ready("serving")
    n.ping(10.0)
    n.ping(10.2)  # too soon: half the interval is 0.5 s
    n.ping(10.6)
    n.stopping()
    assert _drain(s) == [["READY=1", "STATUS=serving"], ["WATCHDOG=1"], ["WATCHDOG=1"],
                         ["STOPPING=1", "STATUS=draining"]]


def test_abstract_socket(tmp_path):
    name = f"sweeperd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(5)
        Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        assert s.recv(100) == b"READY=1"


def test_outside_systemd_nothing_is_sent_and_no_watchdog():
    n = Notifier.from_env({})
    assert not n.enabled and not n.watchdog_due(1e9)
    n.ready()
    n.stopping()  # no socket: no error


def test_a_manager_that_stopped_listening_is_counted_and_said_once(tmp_path, capsys):
    import socket

    gone = tmp_path / "notify"  # nobody bound, then a socket bound and closed (refused)
    n = Notifier.from_env({"NOTIFY_SOCKET": str(gone), "WATCHDOG_USEC": "1000"})
    n.ready("up")
    n.stopping()
    assert n.errors == 2
    for t in range(5):
        n.ping(float(t))  # each due ping fails, and is not retried before the next is due
    assert n.errors == 7 and "No such file" in n.last_error
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(gone))
    assert n.send("WATCHDOG=1") is False and n.errors == 8  # refused
    err = capsys.readouterr().err
    assert err.count("sd_notify to") == 1 and "going on" in err


def test_watchdog_for_another_pid_is_not_ours(listener):
    _, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "5000",
                           "WATCHDOG_PID": "1"}, pid=42)
    assert n.watchdog_s == 0 and not n.watchdog_due(100.0)


@pytest.mark.parametrize("env,needle", [
    ({"NOTIFY_SOCKET": "relative/path"}, "NOTIFY_SOCKET"),
    ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"}, "WATCHDOG_USEC"),
    ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "0"}, "WATCHDOG_USEC"),
])
def test_bad_environment_is_named(env, needle):
    with pytest.raises(NotifyError, match=needle):
        Notifier.from_env(env)


def test_daemon_says_ready_then_pings_then_stopping(listener):
    s, path = listener
    d = Daemon("--heap-mib", "32", "--sweepers", "1", "--mutators", "1",
               env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        first = _drain(s, until="READY=1")
        assert all("STOPPING=1" not in m for m in first)
        st = d.status()  # READY=1 came once it serves
        assert st["ok"] and st["workers"]
        pings: list[list[str]] = []  # every ~0.2 s: wait for 3, not for a second
        deadline = time.monotonic() + 60
        while sum(m == ["WATCHDOG=1"] for m in pings) < 3:
            assert time.monotonic() < deadline, f"fewer than 3 pings in 60 s: {pings}"
            pings += _drain(s)
        assert d.stop() == 0
        last = _drain(s, until="STOPPING=1")
        assert any("STOPPING=1" in m for m in last)
        assert all("READY=1" not in m for m in pings + last)
    finally:
        d.close()
