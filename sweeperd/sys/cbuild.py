"""Building a C source shipped in the package into a shared library, once per machine.

Theory of operation
-------------------
:func:`shared_library` compiles ``source`` with the system's C compiler (``$CC``, else
``cc``) into ``<cache>/sweeperd/c/<name>-<key>.so``, where the key hashes the source, the
compiler's version, the flags and the machine, so an edit or a new compiler builds anew and
nothing stale is ever loaded.  The build writes a temporary file in the same directory and
renames it into place: processes starting together may all build, and each loads a whole
library.  Built once, a library is loaded by every later process without running anything.

A library is code this process will run, so it is only taken from a directory that is ours
and that no one else may write (owner = our uid, no group or other write bit, on every
component from the cache root down); otherwise, or without a compiler, it returns ``None``
with the reason in :data:`last_error`, and callers fall back to their pure code.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

last_error = ""

FLAGS = ["-O2", "-shared", "-fPIC", "-std=c11", "-Wall", "-Werror"]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sweeperd" / "c"


def _private(path: Path) -> str:
    """Why ``path`` (a directory) is not safe to load code from, or ``""``."""
    st = path.stat()
    if st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & 0o022:
        return f"{path} may be written by others (mode {st.st_mode & 0o777:o})"
    return ""


def _compiler_version(cc: str) -> str:
    r = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise OSError(f"{cc} --version failed: {r.stderr.strip()[:200]}")
    return r.stdout.splitlines()[0] if r.stdout else ""


def shared_library(source: Path, name: str) -> Path | None:
    """The shared library built from ``source`` (built now if this machine has none yet),
    or ``None`` with the reason in :data:`last_error`: no compiler, a failed build, or a
    cache directory others may write."""
    global last_error
    try:
        cc = os.environ.get("CC") or "cc"
        if shutil.which(cc) is None:
            last_error = f"no C compiler ({cc}) on PATH"
            return None
        flags = [*FLAGS, "-mpopcnt"] if platform.machine() in ("x86_64", "AMD64") else FLAGS
        text = source.read_bytes()
        key = hashlib.sha256(b"\0".join([
            text, _compiler_version(cc).encode(), " ".join(flags).encode(),
            platform.machine().encode()])).hexdigest()[:16]
        out_dir = cache_dir()
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (out_dir, out_dir.parent):
            why = _private(d)
            if why:
                last_error = why
                return None
        lib = out_dir / f"{name}-{key}.so"
        if lib.exists():
            return lib
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}-", suffix=".so")
        os.close(fd)
        try:
            r = subprocess.run([cc, *flags, "-o", tmp, str(source)], capture_output=True,
                               text=True, timeout=300)
            if r.returncode != 0:
                last_error = f"{cc} failed on {source.name}: {r.stderr.strip()[:500]}"
                return None
            os.chmod(tmp, 0o700)
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return lib
    except (OSError, subprocess.SubprocessError) as e:
        last_error = f"{type(e).__name__}: {e}"
        return None
