"""Building a C source shipped in the package, once per machine: a shared library or a program.

Theory of operation
-------------------
:func:`shared_library` compiles ``source`` with the system's C compiler (``$CC``, else
``cc``) into ``<cache>/sweeperd/c/<name>-<key>.so`` (:func:`executable`: a program,
``<name>-<key>.bin``, linked with ``libs``), where the key hashes the source, the
compiler's version, the flags and the machine, so an edit or a new compiler builds anew and
nothing stale is ever loaded.  The build writes a temporary file in the same directory and
renames it into place: processes starting together may all build, and each loads a whole
library.  Built once, a library is loaded by every later process without running anything.

A library is code this process will run, so it is only taken from a directory that is ours
and that no one else may write (owner = our uid, no group or other write bit, on every
component from the cache root down: ``$XDG_CACHE_HOME`` or ``~/.cache``, ``sweeperd``,
``c``), and only if it is a whole shared object (a compiler that exits 0 without writing one
leaves nothing behind); otherwise, or without a compiler, it returns ``None`` with the reason
in :data:`last_error`, and callers fall back to their pure code.  A new build removes the
older builds of the same name.  ``$CC`` may carry flags (``CC="gcc -O1"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

last_error = ""

FLAGS = ["-O2", "-shared", "-fPIC", "-std=c11", "-Wall", "-Werror"]
EXE_FLAGS = ["-O2", "-std=c11", "-Wall", "-Werror"]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):  # unset or relative: the XDG spec says ignore it
        base = str(Path.home() / ".cache")
    return Path(base) / "sweeperd" / "c"


ELF_MAGIC = b"\x7fELF"


def _whole(lib: Path) -> bool:
    """Is ``lib`` a shared object and not an empty or cut-short file?"""
    try:
        with open(lib, "rb") as f:
            return f.read(4) == ELF_MAGIC and os.fstat(f.fileno()).st_size > 1024
    except OSError:
        return False


def _private(path: Path) -> str:
    """Why ``path`` (a directory) is not safe to load code from, or ``""``."""
    st = path.stat()
    if st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & 0o022:
        return f"{path} may be written by others (mode {st.st_mode & 0o777:o})"
    return ""


def _compiler_version(cc: list[str]) -> str:
    r = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        why = r.stderr.strip()[:200] or f"exit status {r.returncode}, nothing said"
        raise OSError(f"{shlex.join(cc)} --version failed: {why}")
    return r.stdout.splitlines()[0] if r.stdout else ""


def shared_library(source: Path, name: str) -> Path | None:
    """The shared library built from ``source`` (built now if this machine has none yet),
    or ``None`` with the reason in :data:`last_error`: no compiler, a failed build, or a
    cache directory others may write."""
    flags = [*FLAGS, "-mpopcnt"] if platform.machine() in ("x86_64", "AMD64") else FLAGS
    return _build(source, name, flags, [], ".so")


def executable(source: Path, name: str, libs: tuple[str, ...] = ()) -> Path | None:
    """The program built from ``source`` and linked with ``libs`` (``("-pthread",)``), as
    :func:`shared_library` builds a library: ``None`` with the reason in :data:`last_error`."""
    return _build(source, name, EXE_FLAGS, list(libs), ".bin")


def _build(source: Path, name: str, flags: list[str], libs: list[str], suffix: str
           ) -> Path | None:
    global last_error
    try:
        cc = shlex.split(os.environ.get("CC") or "cc")
        if not cc or shutil.which(cc[0]) is None:
            last_error = f"no C compiler ({os.environ.get('CC') or 'cc'}) on PATH"
            return None
        text = source.read_bytes()
        key = hashlib.sha256(b"\0".join([
            text, _compiler_version(cc).encode(), shlex.join([*cc, *flags, *libs]).encode(),
            platform.machine().encode()])).hexdigest()[:16]
        out_dir = cache_dir()
        for d in (out_dir.parent.parent, out_dir.parent, out_dir):  # each made 0700, whatever
            if not d.exists():  # the umask (mkdir's parents= would make them by the umask)
                d.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(d, 0o700)
        for d in (out_dir, out_dir.parent, out_dir.parent.parent):
            why = _private(d)
            if why:
                last_error = why
                return None
        lib = out_dir / f"{name}-{key}{suffix}"
        if lib.exists() and _whole(lib):
            return lib
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}-", suffix=suffix)
        os.close(fd)
        try:
            r = subprocess.run([*cc, *flags, "-o", tmp, str(source), *libs], capture_output=True,
                               text=True, timeout=300)
            if r.returncode != 0:
                last_error = f"{shlex.join(cc)} failed on {source.name}: {r.stderr.strip()[:500]}"
                return None
            if not _whole(Path(tmp)):
                last_error = f"{shlex.join(cc)} exited 0 but wrote no {suffix} file"
                return None
            os.chmod(tmp, 0o700)
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for old in out_dir.glob(f"{name}-*{suffix}"):  # earlier builds: a mapped one stays mapped
            if old != lib:
                with contextlib.suppress(OSError):
                    old.unlink()
        return lib
    except (OSError, subprocess.SubprocessError) as e:
        last_error = f"{type(e).__name__}: {e}"
        return None
