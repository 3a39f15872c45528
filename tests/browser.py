"""Headless Chromium over a loopback HTTP server of a report directory, for the tests that
open a report as a user would (Debian's ``chromium``, which .ci/run installs)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .conftest import not_here

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium() -> str:
    """The browser's path; skips (naming the package) where it is not installed."""
    for name in ("chromium", "chromium-browser"):
        if (path := shutil.which(name)) is not None:
            return path
    not_here("chromium is not installed (Debian package 'chromium'), as .ci/run installs it")
    raise AssertionError  # unreachable


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a: Any) -> None:
        pass


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on a loopback port; yields the base URL."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(_Quiet, directory=str(directory)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """Chromium headless with ``args`` (a profile and HOME under ``home``), 120 s at most."""
    return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={home / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(home)})


def dump_dom(directory: Path, page: str, home: Path) -> str:
    """The DOM of ``page`` under ``directory`` after its scripts ran (20 s of virtual time),
    with the tail of the browser's stderr."""
    with serving(directory) as base:
        dom = run(["--virtual-time-budget=20000", "--dump-dom", f"{base}/{page}"], home)
    return dom.stdout + dom.stderr[-2000:]
