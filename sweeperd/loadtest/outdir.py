"""The load test's output directory, made safely, and files written into it atomically.

Theory of operation
-------------------
``--out`` names a directory that must be new or empty, and that nobody else can have prepared:
a directory that already holds files (an earlier report, someone's home), a symbolic link at
the path (``--out /tmp/x`` pointing at ``~/.ssh``), or an empty directory owned by another user
(who could then swap files under the report) is refused, naming the path (:class:`OutDirError`,
exit 2).  The directory is made with ``mkdir(path, 0700)`` — which never follows a symlink in
the last component: it fails with ``EEXIST`` instead — and then opened with ``O_DIRECTORY |
O_NOFOLLOW``; ``fstat`` of that descriptor must be the same inode as ``lstat`` of the path, a
directory of ours, mode 0700.  From then on :meth:`OutDir.verify` checks, before each use, that
the path still names that same inode (a directory renamed away and replaced by a symlink
meanwhile is refused, not followed).

Every file is written by :func:`atomic_write`: a temporary file created exclusively
(``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600) relative to the directory's descriptor, written,
``fsync``-ed, renamed over the name, and the directory ``fsync``-ed; so a reader sees the old
file or the whole new one, never a torn one.  Any ``OSError`` (``ENOSPC`` on a full disk,
``EDQUOT``, ``EIO``) removes the temporary file and is raised as :class:`CannotWrite`, whose
text names the file and the cause ("cannot write DIR/summary.json: No space left on device").

Invariants: nothing is ever written through a symlink; no temporary file is left behind on any
path; a name is either absent, its previous content, or its complete new content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class OutDirError(ValueError):
    """``--out`` cannot be used (exit 2); the text names the path and why."""


class CannotWrite(OSError):
    """A report file could not be written; ``str()`` names the file and the OS's reason."""

    def __init__(self, path: Path, err: OSError) -> None:
        super().__init__(err.errno, err.strerror)
        self.path = path
        self.reason = err.strerror or str(err)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"


class OutDir:
    """A directory this process made (or found empty and its own), held open by descriptor."""

    def __init__(self, path: Path, fd: int, dev: int, ino: int) -> None:
        self.path, self.fd, self.dev, self.ino = path, fd, dev, ino

    @classmethod
    def create(cls, path: Path) -> OutDir:
        """Make ``path`` (mode 0700; missing parents too), or take it if it is an empty
        directory of ours; :class:`OutDirError` naming it otherwise."""
        if path.parent != path:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutDirError(f"--out {path}: cannot make its parent: {e.strerror}") from None
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # checked below: a symlink, a file, a full or foreign directory are refused
        except OSError as e:
            raise OutDirError(f"--out {path}: cannot make it: {e.strerror}") from None
        try:
            st = os.lstat(path)
        except OSError as e:
            raise OutDirError(f"--out {path}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise OutDirError(f"--out {path}: is a symbolic link; give a new directory")
        if not stat.S_ISDIR(st.st_mode):
            raise OutDirError(f"--out {path}: exists and is not a directory")
        try:
            fd = os.open(path, _NOFOLLOW_DIR)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OutDirError(f"--out {path}: is a symbolic link; give a new directory"
                                  ) from None
            raise OutDirError(f"--out {path}: cannot open it: {e.strerror}") from None
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                raise OutDirError(f"--out {path}: changed while being opened")
            if fst.st_uid != os.geteuid():
                raise OutDirError(f"--out {path}: owned by uid {fst.st_uid}, not by this user "
                                  f"(uid {os.geteuid()}); give a new directory")
            if os.listdir(fd):
                raise OutDirError(f"--out {path}: not empty; give a new or empty directory")
            os.fchmod(fd, 0o700)
        except OutDirError:
            os.close(fd)
            raise
        except OSError as e:
            os.close(fd)
            raise OutDirError(f"--out {path}: {e.strerror}") from None
        return cls(path, fd, fst.st_dev, fst.st_ino)

    def verify(self) -> None:
        """The path still names this directory (not a symlink or another inode put there
        since); :class:`CannotWrite` otherwise."""
        try:
            st = os.lstat(self.path)
        except OSError as e:
            raise CannotWrite(self.path, e) from None
        if stat.S_ISLNK(st.st_mode) or (st.st_dev, st.st_ino) != (self.dev, self.ino):
            raise CannotWrite(self.path, OSError(errno.ESTALE,
                                                 "replaced since it was made (not followed)"))

    def subdir(self, *names: str) -> Path:
        """Make ``names`` (each one component) under this directory, mode 0700, no symlink
        followed; returns its path."""
        self.verify()
        fd = os.dup(self.fd)
        try:
            for n in names:
                if not n or "/" in n or n in (".", ".."):
                    raise ValueError(f"not one path component: {n!r}")
                with contextlib.suppress(FileExistsError):
                    os.mkdir(n, 0o700, dir_fd=fd)
                try:
                    nfd = os.open(n, _NOFOLLOW_DIR, dir_fd=fd)
                except OSError as e:
                    raise CannotWrite(self.path.joinpath(*names), e) from None
                os.close(fd)
                fd = nfd
        finally:
            os.close(fd)
        return self.path.joinpath(*names)

    def write(self, name: str, data: bytes | str) -> Path:
        """Write ``name`` (a file directly in this directory) atomically; its path."""
        self.verify()
        return atomic_write(self.path / name, data, dir_fd=self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def atomic_write(path: Path, data: bytes | str, dir_fd: int | None = None) -> Path:
    """Write ``path`` atomically (temp file in the same directory, fsync, rename, fsync of the
    directory), never through a symlink; ``dir_fd``: the directory, already open.
    :class:`CannotWrite` naming ``path`` on any OSError (no temp file is left)."""
    raw = data.encode() if isinstance(data, str) else data
    own = dir_fd is None
    tmp = f".{path.name}.{os.getpid()}.tmp"
    created = False
    try:
        if dir_fd is None:
            dir_fd = os.open(path.parent, _NOFOLLOW_DIR)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
            created = True
            try:
                view = memoryview(raw)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            created = False
            os.fsync(dir_fd)
        finally:
            if created:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
            if own:
                os.close(dir_fd)
    except OSError as e:
        if isinstance(e, CannotWrite):
            raise
        raise CannotWrite(path, e) from None
    return path
