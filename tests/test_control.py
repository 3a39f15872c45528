"""The control plane's rules (sweeperd/daemon/control.py), its config keys and ``sweeperd
keys``: pure decisions, real certificate files, real Unix sockets.  No daemon is started."""

from __future__ import annotations

import itertools
import os
import socket
import stat
import string
import subprocess
import sys
from pathlib import Path

import pytest
import zmq.auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeperd.daemon import control
from sweeperd.daemon.config import ConfigError, check_server, from_dict, load

# --- read / admin / coalesced ------------------------------------------------------------------


@pytest.mark.parametrize("kind,admin,pending", list(itertools.product(
    sorted(control.READ | control.ADMIN), [True, False],
    [frozenset(), frozenset({"gc"}), frozenset({"scavenge"}), frozenset({"gc", "scavenge"})])))
def test_reads_always_answer_admin_needs_the_key_and_a_pending_one_coalesces(kind, admin,
                                                                             pending):
    d = control.decide(kind, admin, pending)
    if kind in ("status", "ping"):
        assert d == control.Decision("ok", True)
    elif not admin:
        assert d.outcome == "refused" and not d.act and "control.admin" in d.error
    elif kind in pending:
        assert d == control.Decision("coalesced", False)
    else:
        assert d == control.Decision("ok", True)


def test_a_type_that_is_not_a_client_request_is_no_decision():
    with pytest.raises(ValueError, match="'stop'"):
        control.decide("stop", True, frozenset())


# --- where ipc://auto is -----------------------------------------------------------------------


def test_auto_path_is_the_runtime_directory_then_systemds_then_a_dir_per_uid():
    assert control.auto_path("/run/x:/other", 5, "/tmp", True) == "/run/x/control.sock"
    assert control.auto_path("", 5, "/tmp", True) == "/run/sweeperd/control.sock"
    assert control.auto_path("", 5, "/tmp", False) == "/tmp/sweeperd.5/control.sock"
    assert control.resolve("ipc:///a/b") == "ipc:///a/b"
    assert control.resolve("tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"


def test_resolve_follows_runtime_directory_and_ignores_one_that_is_not_a_dir(tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    assert control.resolve("ipc://auto") == f"ipc://{tmp_path}/control.sock"
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "missing"))
    if not os.path.isdir(control.SYSTEMD_RUNTIME):
        assert control.resolve("ipc://auto").endswith(f"/sweeperd.{os.geteuid()}/control.sock")


# --- certificates ------------------------------------------------------------------------------


def test_keys_are_zmq_auth_certificates_with_a_0600_secret_and_are_never_overwritten(tmp_path):
    pub, sec = control.write_pair(str(tmp_path / "k"), "server")
    assert stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pub).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o700
    zpub, zsec = zmq.auth.load_certificate(sec)  # pyzmq reads what we write
    assert zsec is not None
    c = control.read_cert(sec)
    assert (c.public.encode(), c.secret.encode() if c.secret else None) == (zpub, zsec)
    assert control.read_cert(pub) == control.Cert(c.public, None)
    assert zmq.curve_public(zsec) == zpub  # a real pair
    with pytest.raises(FileExistsError):
        control.write_pair(str(tmp_path / "k"), "server")
    assert control.read_cert(sec) == c


def test_the_keys_command_writes_a_pair_refuses_to_overwrite_and_says_how_to_use_it(tmp_path):
    def keys(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sweeperd.cli", "keys", *a],
                              capture_output=True, text=True, timeout=60)

    r = keys("server", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "curve_server_key" in r.stdout and str(tmp_path / "server.key_secret") in r.stdout
    r = keys("client", str(tmp_path), "--name", "alice")
    assert r.returncode == 0 and "curve_allowed_clients" in r.stdout, r.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "alice.key_secret").st_mode) == 0o600
    before = (tmp_path / "server.key_secret").read_text()
    r = keys("server", str(tmp_path))
    assert r.returncode == 2 and "server.key" in r.stderr and "not overwriting" in r.stderr
    assert (tmp_path / "server.key_secret").read_text() == before
    assert keys("client", str(tmp_path), "--name", "../x").returncode == 2
    (tmp_path / "file").write_text("")
    r = keys("client", str(tmp_path / "file"))
    assert r.returncode == 2 and "file" in r.stderr
    assert keys("root", str(tmp_path)).returncode == 2


@pytest.mark.parametrize("text,why", [
    ("", "one public-key"),
    ('public-key = "abc"', "40 Z85 characters, got 3"),
    ('public-key = "' + "a" * 39 + '~"', "is not"),
    ('public-key = "' + "#" * 40 + '"', "overflows"),
    ('public-key = "' + "a" * 40 + '"\npublic-key = "' + "b" * 40 + '"', "found 2"),
])
def test_a_bad_certificate_says_why(text, why):
    with pytest.raises(control.CertError, match=why):
        control.parse_cert(text)


def test_allowed_clients_are_a_file_of_certificates_or_a_directory_of_public_ones(tmp_path):
    a = control.write_pair(str(tmp_path / "d"), "a")
    b = control.write_pair(str(tmp_path / "d"), "b")
    keys = {control.read_cert(a[0]).public, control.read_cert(b[0]).public}
    assert control.read_allowed(str(tmp_path / "d")) == keys  # *.key only: not the secrets
    with pytest.raises(control.CertError, match="holds a secret key"):
        control.read_allowed(a[1])  # a secret file named directly is refused
    both = tmp_path / "both"
    both.write_text(Path(a[0]).read_text() + Path(b[0]).read_text())
    assert control.read_allowed(str(both)) == keys
    (tmp_path / "e").mkdir()
    with pytest.raises(control.CertError, match="no public-key"):
        control.read_allowed(str(tmp_path / "e"))


# --- the config keys, under hypothesis ---------------------------------------------------------

_CONTROL_KEYS = ("control.addr", "control.admin", "control.group", "control.curve_server_key",
                 "control.curve_allowed_clients", "control.curve_client_key")
_NAME = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=40).filter(lambda n: n not in (".", ".."))
_Z85 = st.text(control.Z85, min_size=0, max_size=50)


@st.composite
def _key_file(draw, tmp):
    """A path for a key: a file of some content (good, bad, odd-named), a directory, a
    missing file, a path with a NUL, or "" (unset)."""
    kind = draw(st.sampled_from(["public", "secret", "zkey", "text", "bytes", "dir",
                                 "missing", "nul", "unset", "pair-dir"]))
    if kind == "unset":
        return ""
    if kind == "nul":
        return str(tmp / "a\0b")
    name = draw(_NAME)
    path = tmp / name
    try:
        if kind in ("public", "secret", "pair-dir"):
            d = tmp / f"pair-{draw(st.integers(0, 10**9))}"
            pub, sec = control.write_pair(str(d), "k")
            return str(d) if kind == "pair-dir" else (pub if kind == "public" else sec)
        if kind == "dir":
            path.mkdir(exist_ok=True)
        elif kind == "zkey":
            k = draw(_Z85)
            sk = draw(_Z85)
            path.write_text(f'public-key = "{k}"\n' + (f'secret-key = "{sk}"\n'
                                                        if draw(st.booleans()) else ""))
        elif kind == "text":
            path.write_text(draw(st.text(max_size=200)), errors="surrogatepass")
        elif kind == "bytes":
            path.write_bytes(draw(st.binary(max_size=200)))
    except OSError:  # a name the file system refuses (too long): then it is just missing
        pass
    return str(path)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_control_keys_give_a_working_config_or_an_error_naming_the_key(tmp_path_factory,
                                                                           data):
    tmp = tmp_path_factory.mktemp("keys")
    table: dict[str, object] = {
        "addr": data.draw(st.sampled_from(["tcp://127.0.0.1:0", "tcp://*:9465", "ipc://auto",
                                           "ipc:///tmp/x.sock", "ipc://" + "x" * 120,
                                           "ipc://a\0b", "ipc:///t/\ud800", "tcp://[::1]:1"])),
        "admin": data.draw(st.booleans() | st.integers(0, 1) | st.text(max_size=3)),
        "group": data.draw(st.sampled_from(["", "root", "nogroup", "no-such-group-x", "a\0b"])
                           | st.text(max_size=10)),
    }
    for k in ("curve_server_key", "curve_allowed_clients", "curve_client_key"):
        table[k] = data.draw(_key_file(tmp))
    for k in list(table):
        if data.draw(st.booleans()):
            del table[k]
    try:
        cfg = from_dict({"control": table})
        check_server(cfg)
    except ConfigError as e:
        named = str(e).split(":")[0].split()[-1]
        assert named in _CONTROL_KEYS, str(e)
        return
    cc = cfg.control
    if cc.addr.startswith("tcp://"):  # a working CURVE server: its keys are real
        server = control.read_cert(cc.curve_server_key)
        assert server.secret is not None
        assert control.read_allowed(cc.curve_allowed_clients)
        ctx = zmq.Context()
        try:
            s = ctx.socket(zmq.REP)
            s.curve_secretkey = server.secret.encode()  # zmq takes it
            s.curve_server = True
            s.close(0)
        finally:
            ctx.term()


def test_tcp_without_curve_is_refused_at_config_check_naming_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[control]\naddr = "tcp://127.0.0.1:9465"\n')
    for cmd in (["config", "check", str(cfg)],
                ["run", "--config", str(cfg), "--heap-mib", "16"],
                ["run", "--control", "tcp://127.0.0.1:0", "--heap-mib", "16"]):
        r = subprocess.run([sys.executable, "-m", "sweeperd.cli", *cmd], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2, (cmd, r.stderr)
        assert "control.curve_server_key" in r.stderr and "CURVE" in r.stderr, r.stderr
    pub, sec = control.write_pair(str(tmp_path / "k"), "server")
    cfg.write_text(f'[control]\naddr = "tcp://127.0.0.1:9465"\ncurve_server_key = "{pub}"\n')
    r = subprocess.run([sys.executable, "-m", "sweeperd.cli", "config", "check", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "control.curve_server_key" in r.stderr  # no secret in it
    assert "secret" in r.stderr
    cfg.write_text(f'[control]\naddr = "tcp://127.0.0.1:9465"\ncurve_server_key = "{sec}"\n')
    with pytest.raises(ConfigError, match=r"control\.curve_allowed_clients: required"):
        check_server(load(cfg))
    cli = control.write_pair(str(tmp_path / "k"), "client")[0]
    cfg.write_text(cfg.read_text() + f'curve_allowed_clients = "{cli}"\n')
    check_server(load(cfg))
    assert load(None).control.addr == "ipc://auto" and load(None).control.admin is True


def test_a_client_without_its_key_for_tcp_is_refused_naming_the_key(tmp_path):
    pub = control.write_pair(str(tmp_path), "server")[0]
    for extra, key in (([], "control.curve_server_key"),
                       (["--curve-server-key", pub], "control.curve_client_key"),
                       (["--curve-server-key", pub, "--curve-client-key", pub],
                        "control.curve_client_key")):
        r = subprocess.run([sys.executable, "-m", "sweeperd.cli", "status", "--control",
                            "tcp://127.0.0.1:9", *extra], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and key in r.stderr, (extra, r.stderr)


# --- the ipc socket: bind(2) never replaces a file; only our own socket is removed ------------


def test_a_file_at_the_path_is_refused_and_left_alone(tmp_path):
    p = tmp_path / "c.sock"
    p.write_text("precious")
    with pytest.raises(control.ControlSocketError, match="not a socket; not removing"):
        control.bind_ipc(str(p), None)
    assert p.read_text() == "precious"


def test_a_live_socket_is_refused_a_dead_one_of_ours_is_replaced(tmp_path):
    p = str(tmp_path / "c.sock")
    live = socket.socket(socket.AF_UNIX)
    live.bind(p)
    live.listen()
    try:
        with pytest.raises(control.ControlSocketError, match="in use by another daemon"):
            control.bind_ipc(p, None)
        assert stat.S_ISSOCK(os.lstat(p).st_mode)
    finally:
        live.close()  # the file stays: a dead socket, as after kill -9
    b = control.bind_ipc(p, None)
    try:
        assert stat.S_IMODE(os.lstat(p).st_mode) == 0o600
        assert control.unlink_if_ours(b) and not os.path.lexists(p)
    finally:
        os.close(b.fd)


def test_at_close_a_file_that_replaced_our_socket_is_not_removed(tmp_path):
    p = tmp_path / "c.sock"
    b = control.bind_ipc(str(p), None)
    os.close(b.fd)
    os.unlink(p)
    p.write_text("someone else's")
    assert not control.unlink_if_ours(b)
    assert p.read_text() == "someone else's"


def test_a_socket_path_too_long_for_sun_path_is_refused_by_name(tmp_path):
    with pytest.raises(control.ControlSocketError, match="longer than 107"):
        control.bind_ipc(str(tmp_path / ("x" * 120)), None)
    with pytest.raises(ConfigError, match=r"control\.addr: an ipc path is at most 107"):
        from_dict({"control": {"addr": "ipc://" + "/x" * 60}})


def test_the_auto_directory_must_be_ours_and_closed(tmp_path):
    d = tmp_path / "rt"
    control.prepare_dir(str(d), None, create=True)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o755)  # e.g. RuntimeDirectoryMode= left at systemd's default
    with pytest.raises(control.ControlSocketError, match="0755"):
        control.prepare_dir(str(d), None, create=False)
    control.prepare_dir(str(d), None, create=True)  # ours to fix when we made it
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(control.ControlSocketError, match="not a directory"):
        control.prepare_dir(str(link), None, create=True)


def test_z85_alphabet_is_zmqs():
    assert len(control.Z85) == 85 and set(control.Z85) <= set(string.printable)
    pub, _ = zmq.curve_keypair()
    assert control.check_key(pub.decode()) == zmq.utils.z85.decode(pub)
