"""The control plane's rules: who may ask what, where the socket is, and the CURVE keys.

Theory of operation
-------------------
A client request is of one of two kinds: **read** (``status``, ``ping``), always answered, or
**admin** (``gc``, ``scavenge``), which ``control.admin = false`` refuses with a reply naming
that key.  An admin request already pending is **coalesced**: at most one ``gc`` (a forced
cycle asked for and not yet begun) and one ``scavenge`` (a ``release_all`` sent to the
scavenger and not yet acknowledged) are kept, and a second one is answered ok with
``coalesced: true`` and starts nothing.  :func:`decide` is that rule as a table, pure.

Who may connect at all is the socket's business:

* ``ipc://`` (the default, ``ipc://auto``): a Unix socket of mode 0600 (0660 with
  ``control.group``) in a directory of ours of mode 0700 (0770): another uid's ``connect`` is
  refused by the kernel (EACCES).  ``ipc://auto`` is, deterministically from the environment
  alone, ``$RUNTIME_DIRECTORY/control.sock`` (systemd's ``RuntimeDirectory=``), else
  ``/run/sweeperd/control.sock`` when that directory exists (the unit's, seen from a shell),
  else ``$TMPDIR/sweeperd.<uid>/control.sock``: the daemon and ``sweeperd status`` compute the
  same path (:func:`auto_path`).  The daemon binds the path itself (:func:`bind_ipc`: bind(2)
  never replaces a file), removes only a dead socket of its own uid found there, refuses a live
  one ("in use by another daemon") or any other file, and at close unlinks the path only if it
  is still the very socket it bound (a socket of the same device, inode and ctime).
* ``tcp://``: only with ZeroMQ CURVE (the server's secret certificate
  ``control.curve_server_key``, the allowed client public keys ``control.curve_allowed_clients``)
  and pyzmq's ZAP authenticator; a client whose key is not allowed never completes the
  handshake, so nothing it sends is ever queued or read.

Certificates are zmq.auth's files (``NAME.key``: public, ``NAME.key_secret``: both keys, mode
0600), written by ``sweeperd keys``; :func:`parse_cert` reads them strictly.

Invariants: an admin request is carried out only when ``admin`` is on and none of its kind is
pending; a file this module did not bind is never unlinked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

READ = frozenset({"status", "ping"})
ADMIN = frozenset({"gc", "scavenge"})
AUTO = "ipc://auto"
SOCKET_NAME = "control.sock"
SYSTEMD_RUNTIME = "/run/sweeperd"  # RuntimeDirectory=sweeperd in deploy/systemd
MAX_IPC_PATH = 107  # sun_path holds 108 bytes with the NUL
KEY_CHARS = 40  # a Curve25519 key in Z85
Z85 = ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
       ".-:+=^!/*?&<>()[]{}@%$#")

Outcome = Literal["ok", "coalesced", "refused", "busy", "error"]  # busy: the heap lock is held


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    act: bool  # carry the request out now
    error: str = ""  # for a refusal: the reply's error, naming the key


def decide(kind: str, admin: bool, pending: frozenset[str]) -> Decision:
    """What to do with a decoded request of type ``kind`` (one of READ | ADMIN), given
    ``control.admin`` and the admin requests now pending."""
    if kind in READ:
        return Decision("ok", True)
    if kind not in ADMIN:
        raise ValueError(f"not a client request type: {kind!r}")
    if not admin:
        return Decision("refused", False, f"{kind} refused: admin requests are disabled "
                                          "(control.admin = false)")
    if kind in pending:
        return Decision("coalesced", False)
    return Decision("ok", True)


# --- where the socket is -----------------------------------------------------------------------


def auto_path(runtime_directory: str, uid: int, tmp: str, systemd_dir_exists: bool) -> str:
    """The path ``ipc://auto`` stands for (see the module's docstring); pure."""
    rt = runtime_directory.split(":")[0]
    if rt:
        return os.path.join(rt, SOCKET_NAME)
    if systemd_dir_exists:
        return os.path.join(SYSTEMD_RUNTIME, SOCKET_NAME)
    return os.path.join(tmp, f"sweeperd.{uid}", SOCKET_NAME)


def resolve(addr: str) -> str:
    """``addr`` with ``ipc://auto`` resolved from this process's environment."""
    if addr != AUTO:
        return addr
    rt = os.environ.get("RUNTIME_DIRECTORY", "")
    if rt and not os.path.isdir(rt.split(":")[0]):
        rt = ""
    return "ipc://" + auto_path(rt, os.geteuid(), tempfile.gettempdir(),
                                os.path.isdir(SYSTEMD_RUNTIME))


# --- certificates --------------------------------------------------------------------------------


class CertError(ValueError):
    """A certificate file that cannot be used; the text says why (the caller names the key)."""


@dataclass(frozen=True)
class Cert:
    public: str  # Z85, 40 characters
    secret: str | None


_LINE = re.compile(r'\s*(public-key|secret-key)\s*=\s*"([^"]*)"\s*')


def check_key(text: str) -> bytes:
    """The 32 bytes of a Z85 Curve25519 key; CertError if it is not one."""
    if len(text) != KEY_CHARS:
        raise CertError(f"a key is {KEY_CHARS} Z85 characters, got {len(text)}")
    if bad := sorted(set(text) - set(Z85)):
        raise CertError(f"a key is Z85; {''.join(bad)!r} is not")
    value = 0
    out = bytearray()
    for i, ch in enumerate(text):
        value = value * 85 + Z85.index(ch)
        if i % 5 == 4:
            if value >= 1 << 32:
                raise CertError("not a Z85 key (a group overflows 32 bits)")
            out += value.to_bytes(4, "big")
            value = 0
    return bytes(out)


def parse_keys(text: str) -> list[tuple[str, str]]:
    """Every ``public-key``/``secret-key`` line of a zmq.auth certificate text, checked."""
    out = []
    for line in text.splitlines():
        if m := _LINE.fullmatch(line):
            check_key(m.group(2))
            out.append((m.group(1), m.group(2)))
    return out


def parse_cert(text: str) -> Cert:
    """One certificate: exactly one public key, at most one secret key."""
    keys = parse_keys(text)
    pub = [v for k, v in keys if k == "public-key"]
    sec = [v for k, v in keys if k == "secret-key"]
    if len(pub) != 1 or len(sec) > 1:
        raise CertError(f"expected one public-key line (and at most one secret-key), found "
                        f"{len(pub)} and {len(sec)}")
    return Cert(pub[0], sec[0] if sec else None)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except UnicodeDecodeError:
        raise CertError(f"{path}: not a certificate (not UTF-8)") from None
    except OSError as e:
        raise CertError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # a NUL in the path
        raise CertError(f"cannot read {path!r}: {e}") from None


def read_cert(path: str) -> Cert:
    text = _read(path)
    try:
        return parse_cert(text)
    except CertError as e:
        raise CertError(f"{path}: {e}") from None


def read_allowed(path: str) -> frozenset[str]:
    """The allowed client public keys: a file of one or more public-key lines (certificates
    concatenated), or a directory of ``*.key`` files (zmq.auth's layout).  A secret key is
    refused (the file was meant for this host only).  CertError if none is found."""
    if os.path.isdir(path):
        try:
            files = sorted(str(p) for p in Path(path).glob("*.key"))
        except OSError as e:
            raise CertError(f"cannot list {path}: {e.strerror or e}") from None
    else:
        files = [path]
    keys: set[str] = set()
    for f in files:
        text = _read(f)
        try:
            found = parse_keys(text)
        except CertError as e:
            raise CertError(f"{f}: {e}") from None
        if any(k == "secret-key" for k, _ in found):
            raise CertError(f"{f} holds a secret key: list only public keys (NAME.key)")
        keys.update(v for k, v in found if k == "public-key")
    if not keys:
        raise CertError(f"{path}: no public-key found")
    return frozenset(keys)


_CERT = """#   ****  Generated by sweeperd keys  ****
#   ZeroMQ CURVE {kind} Certificate
#   {warning}

metadata
curve
    public-key = "{public}"
{secret}"""


def write_pair(directory: str, name: str) -> tuple[str, str]:
    """A new CURVE key pair as zmq.auth's ``NAME.key`` (0644) and ``NAME.key_secret`` (0600,
    created so; never readable by others even for an instant).  FileExistsError if either
    exists: keys are never overwritten.  Returns the two paths."""
    import zmq

    public, secret = (k.decode() for k in zmq.curve_keypair())
    os.makedirs(directory, mode=0o700, exist_ok=True)
    pub_path = os.path.join(directory, f"{name}.key")
    sec_path = pub_path + "_secret"
    for p in (pub_path, sec_path):
        if os.path.lexists(p):
            raise FileExistsError(errno.EEXIST, "exists; not overwriting", p)
    texts = [(pub_path, 0o644, _CERT.format(kind="Public", warning="Give this file to the "
                                            "other side.", public=public, secret="")),
             (sec_path, 0o600, _CERT.format(kind="**Secret**", warning="DO NOT PROVIDE THIS "
                                            "FILE TO OTHER USERS nor change its permissions.",
                                            public=public,
                                            secret=f'    secret-key = "{secret}"\n'))]
    for p, mode, text in texts:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, mode)  # whatever the umask
            f.write(text)
    return pub_path, sec_path


# --- the ipc socket (shell) ------------------------------------------------------------------


class ControlSocketError(RuntimeError):
    """The control socket's path cannot be used; the text names it and why."""


def group_id(name: str) -> int:
    """The gid of group ``name``; KeyError if there is none."""
    return grp.getgrnam(name).gr_gid


def prepare_dir(path: str, gid: int | None, create: bool) -> None:
    """Make (``create``) or check the directory the auto socket lives in: ours, not a symlink,
    mode 0700 (0770 and group ``gid``)."""
    mode = 0o770 if gid is not None else 0o700
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, mode)
    try:
        st = os.lstat(path)
    except OSError as e:
        raise ControlSocketError(f"{path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ControlSocketError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise ControlSocketError(f"{path} belongs to uid {st.st_uid}, not to us")
    if create:
        if gid is not None and st.st_gid != gid:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
    elif stat.S_IMODE(st.st_mode) & ~mode & 0o077:
        raise ControlSocketError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; the "
                                 f"control socket's directory must allow at most {mode:04o}")


@contextlib.contextmanager
def _dir_lock(directory: str) -> Iterator[None]:
    """flock on the directory, so two daemons starting at once do not both take a stale
    socket for theirs (each would unlink the other's)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield  # not readable: bind(2) alone still never replaces a file
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Bound:
    """A Unix socket we bound: its listening fd and the file's identity."""

    fd: int
    path: str
    dev: int
    ino: int
    ctime_ns: int  # with dev and ino: an inode number freed and reused is not taken for ours


def bind_ipc(path: str, gid: int | None) -> Bound:
    """Bind and listen on a Unix socket at ``path`` of mode 0600 (0660, group ``gid``).
    A dead socket of our uid there is removed first; anything else is refused
    (ControlSocketError naming it)."""
    if len(os.fsencode(path)) > MAX_IPC_PATH:
        raise ControlSocketError(f"{path}: longer than {MAX_IPC_PATH} bytes (a Unix socket's "
                                 "limit)")
    directory = os.path.dirname(path) or "."
    mode = 0o660 if gid is not None else 0o600
    with _dir_lock(directory):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for attempt in (0, 1):
                old = os.umask(0o177)  # the file is born 0600: no window for others
                try:
                    s.bind(path)
                    break
                except OSError as e:
                    if e.errno != errno.EADDRINUSE or attempt:
                        raise ControlSocketError(f"{path}: {e.strerror}") from None
                finally:
                    os.umask(old)
                _remove_stale(path)
            if gid is not None:
                os.chown(path, -1, gid)
            os.chmod(path, mode)
            s.listen(64)
            st = os.lstat(path)
            return Bound(s.detach(), path, st.st_dev, st.st_ino, st.st_ctime_ns)
        finally:
            s.close()


def _remove_stale(path: str) -> None:
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; not removing it")
    if st.st_uid != os.geteuid():
        raise ControlSocketError(f"{path} is another user's socket (uid {st.st_uid}); not "
                                 "removing it")
    if _live(path):
        raise ControlSocketError(f"{path} is in use by another daemon (a process is "
                                 "listening there); set control.addr to another path")
    os.unlink(path)  # a dead socket of ours: a daemon killed before it could remove it


def unlink_if_ours(b: Bound) -> bool:
    """Remove the socket file if it is still the one we bound.  Returns whether it did."""
    try:
        st = os.lstat(b.path)
    except OSError:
        return False
    if (not stat.S_ISSOCK(st.st_mode)
            or (st.st_dev, st.st_ino, st.st_ctime_ns) != (b.dev, b.ino, b.ctime_ns)):
        return False
    with contextlib.suppress(OSError):
        os.unlink(b.path)
        return True
    return False


# --- the client's side of the ipc socket (shell) ---------------------------------------------


class Unreachable(ControlSocketError):
    """The client will not, or cannot, reach the daemon at an ipc path; the text says why."""


def _owner(st: os.stat_result) -> str:
    def name(f: Callable[[int], Any], i: int) -> str:
        try:
            return f"{f(i)[0]} ({i})"
        except (KeyError, OverflowError):
            return str(i)
    return (f"owned by uid {name(pwd.getpwuid, st.st_uid)}, group {name(grp.getgrgid, st.st_gid)}"
            f", mode {stat.S_IMODE(st.st_mode):04o}")


def distrust(st: os.stat_result, euid: int, gid: int | None, owner: int | None = None) -> str:
    """Why a client of uid ``euid`` (``control.group`` ``gid``) must not trust the daemon's
    socket directory or socket with this lstat, or "" if it may: it must belong to ``euid`` or
    root, or to group ``gid``; a directory must be writable by no one else — group-writable
    only for ``gid``, world-writable only if sticky (/tmp: nobody else can remove or rename
    what is in it).  A socket's own write bit is the right to connect, not to replace it (that
    is the directory's), so it is not held against it.  ``owner``: one more uid to trust, the
    daemon's, when only root could have made its directory (:func:`placed_by_root`); pure."""
    ours = gid is not None and st.st_gid == gid
    if st.st_uid not in (euid, 0, owner) and not ours:
        return (f"it belongs neither to us (uid {euid}) nor root"
                + (f" nor control.group (gid {gid})" if gid is not None else "")
                + ": another user could be posing as the daemon")
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return ""
    if mode & 0o002 and not mode & stat.S_ISVTX:
        return "anyone may write to it: anyone could put their own socket there"
    if mode & 0o020 and not ours:
        return ("its group may write to it and is not control.group: a member could put "
                "their own socket there")
    return ""


def placed_by_root(parent: os.stat_result) -> bool:
    """Whether only root could have made an entry in a directory with this lstat: root's, and
    writable by no one else (``/run``, where systemd makes a ``User=`` service's
    ``RuntimeDirectory`` and hands it to that user; not ``/tmp``); pure."""
    return (stat.S_ISDIR(parent.st_mode) and parent.st_uid == 0
            and not stat.S_IMODE(parent.st_mode) & 0o022)


def check_reachable(path: str, gid: int | None) -> None:
    """Before a client connects to the ipc socket at ``path``: raise :class:`Unreachable` when
    its directory or the socket is not to be trusted (:func:`distrust`, by lstat: no symlink is
    followed), when there is nothing there (ENOENT), when we may not connect (EACCES), or when
    no process listens (ECONNREFUSED: a stale socket).  A plain AF_UNIX connect, closed at
    once, tells the last three apart: nothing is sent."""
    euid = os.geteuid()
    directory = os.path.dirname(path) or "."
    nothing = f"no daemon: nothing at {path} (is it running? its config's control.addr?)"

    try:
        dst = os.lstat(directory)
    except FileNotFoundError:
        raise Unreachable(nothing) from None
    except OSError as e:  # EACCES: a directory above it we may not search
        raise Unreachable(f"cannot reach {path}: {directory}: {e.strerror or e}") from None
    if not stat.S_ISDIR(dst.st_mode):
        raise Unreachable(f"refusing {path}: its directory {directory} is not a directory "
                          f"(a symlink?; {_owner(dst)})")
    try:  # a daemon of another user in a directory only root could make: systemd's
        owner = dst.st_uid if placed_by_root(os.lstat(os.path.dirname(
            os.path.abspath(directory)))) else None
    except OSError:
        owner = None
    if why := distrust(dst, euid, gid, owner):
        raise Unreachable(f"refusing {path}: its directory {directory} is {_owner(dst)}: {why}")
    try:
        st = os.lstat(path)
    except PermissionError:
        raise Unreachable(f"permission denied on {path} (its directory {directory} is "
                          f"{_owner(dst)})") from None
    except FileNotFoundError:
        raise Unreachable(nothing) from None
    except OSError as e:
        raise Unreachable(f"cannot reach {path}: {e.strerror or e}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise Unreachable(f"refusing {path}: not a socket ({_owner(st)})")
    if why := distrust(st, euid, gid, owner):
        raise Unreachable(f"refusing {path}: the socket is {_owner(st)}: {why}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise Unreachable(nothing) from None
        except PermissionError:
            raise Unreachable(f"permission denied on {path} ({_owner(st)})") from None
        except ConnectionRefusedError:
            raise Unreachable(f"a socket is at {path} but no daemon listens (a stale socket: "
                              "the daemon died without removing it)") from None
        except OSError as e:
            raise Unreachable(f"cannot reach {path}: {e.strerror or e}") from None


# --- CURVE (shell) -------------------------------------------------------------------------------


class AllowedKeys:
    """pyzmq's ZAP credentials provider: a fixed set of client public keys.  Called in the
    authenticator's thread; ``refused`` only grows (the main loop reads it)."""

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = keys
        self.refused = 0
        self.last_refused_at = 0.0

    def callback(self, domain: str, key: bytes | str) -> bool:
        k = key.decode() if isinstance(key, bytes) else key
        if k in self.keys:
            return True
        self.refused += 1
        self.last_refused_at = time.monotonic()
        return False
