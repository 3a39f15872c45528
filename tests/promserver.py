"""A real Prometheus (Debian's package) for the tests: started on a free port with a given
config, waited on until a PromQL condition holds, always stopped."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .conftest import not_here


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        not_here(f"{name} is not installed (Debian package 'prometheus'): the real-Prometheus "
                 "tests cannot run; `apt-get install prometheus`, as .ci/run does")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 10) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return dict(json.loads(r.read()))


def query(api: str, q: str) -> list[dict[str, Any]]:
    """An instant query's result vector (raises on an error reply)."""
    r = get(f"{api}/query?query=" + urllib.parse.quote(q))
    if r["status"] != "success":
        raise AssertionError(f"{q}: {r}")
    return list(r["data"]["result"])


def ready_endpoint(api: str) -> bool:
    """Prometheus says it is ready (``/-/ready``: an agent has no query API to ask)."""
    with urllib.request.urlopen(api.removesuffix("/api/v1") + "/-/ready", timeout=10) as r:
        return int(r.status) == 200


@contextlib.contextmanager
def prometheus(config: str, tmp: Path, ready: Callable[[str], bool],
               timeout: float = 60, agent: bool = False,
               receiver: bool = False) -> Iterator[tuple[str, int]]:
    """Run Prometheus with ``config`` until ``ready(api)``; yields (api URL, port).
    ``agent``: in agent mode (``--enable-feature=agent``: scrape and remote-write only);
    ``receiver``: accepting remote writes (``--web.enable-remote-write-receiver``)."""
    prom = binary("prometheus")
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "prometheus.yml"
    cfg.write_text(config)
    port = free_port()
    log = tmp / "prometheus.log"
    storage = (["--enable-feature=agent", f"--storage.agent.path={tmp / 'agent'}"] if agent
               else [f"--storage.tsdb.path={tmp / 'data'}"])
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [prom, f"--config.file={cfg}", *storage,
             *(["--web.enable-remote-write-receiver"] if receiver else []),
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=err)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready(api):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("prometheus never got ready: " + log.read_text()[-3000:])
            time.sleep(0.5)
        yield api, port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
