"""A real Dask cluster on loopback for a test: ``dask scheduler`` and ``dask worker`` processes
(each in its own process group, so a test can kill one whole), torn down on every path."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # (distributed's own dependency)

READY_S = 120.0  # a loaded 2-core host starts a Python process in seconds


def make_certs(d: Path, ip: str) -> dict[str, Path]:
    """A CA and a certificate + key signed by it for each of scheduler, worker and client
    (openssl; EC keys, valid for ``ip`` and loopback); name -> path, and ``ca``."""
    d.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl("req", "-x509", *key, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
        "-days", "2", "-subj", "/CN=sweeperd-test-ca")
    (d / "san.ext").write_text(f"subjectAltName=IP:{ip},IP:127.0.0.1\n")
    out = {"ca": d / "ca.pem"}
    for n in ("scheduler", "worker", "client"):
        ssl("req", *key, "-keyout", str(d / f"{n}.key"), "-out", str(d / f"{n}.csr"),
            "-subj", f"/CN={n}")
        ssl("x509", "-req", "-in", str(d / f"{n}.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
            str(d / "ca.key"), "-CAcreateserial", "-out", str(d / f"{n}.pem"), "-days", "2",
            "-extfile", str(d / "san.ext"))
        out[n], out[f"{n}.key"] = d / f"{n}.pem", d / f"{n}.key"
    return out


def tls_args(certs: dict[str, Path], role: str) -> list[str]:
    return ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs[role]),
            "--tls-key", str(certs[f"{role}.key"])]


def client_tls_env(certs: dict[str, Path]) -> dict[str, str]:
    """Dask's client TLS settings as its environment variables."""
    return {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(certs["ca"]),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(certs["client"]),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(certs["client.key"])}


@dataclass
class Cluster:
    dir: Path
    scheduler: subprocess.Popen[bytes]
    address: str = ""
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    certs: dict[str, Path] | None = None

    @property
    def url(self) -> str:
        scheme, _, where = self.address.partition("://")
        assert scheme in ("tcp", "tls"), self.address
        return "dask://" + where

    def add_worker(self, name: str, resources: str = "sweeperd_host=1") -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 (kept open by the child)
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "dask", "worker", "--scheduler-file",
             str(self.dir / "scheduler.json"), "--name", name, "--nthreads", "1",
             "--resources", resources, "--host", self.host, "--no-dashboard",
             "--local-directory", str(self.dir / name),
             *(tls_args(self.certs, "worker") if self.certs else [])],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    @property
    def host(self) -> str:
        return self.address.partition("://")[2].rsplit(":", 1)[0].strip("[]")

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client
        from distributed.security import Security

        c = self.certs
        sec = (Security(tls_ca_file=str(c["ca"]), tls_client_cert=str(c["client"]),
                        tls_client_key=str(c["client.key"]), require_encryption=True)
               if c else None)
        with Client(self.address, timeout="60s", set_as_default=False,
                    security=sec) as client:
            end = time.monotonic() + READY_S
            while len(client.scheduler_info()["workers"]) < n:
                assert time.monotonic() < end, f"{n} workers not up in {READY_S:g} s: " + \
                    self.logs()
                time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.dir.glob("*.log")))

    def descendants(self, name: str) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(self.workers[name].pid).children(recursive=True)
        return []

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group: the nanny and the worker process (a
        daemon it started lives in a session of its own)."""
        p = self.workers[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()

    def stop(self) -> None:
        for p in [*self.workers.values(), self.scheduler]:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in [*self.workers.values(), self.scheduler]:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@contextlib.contextmanager
def cluster(tmp: Path, workers: int = 2, host: str = "127.0.0.1",
            certs: dict[str, Path] | None = None) -> Iterator[Cluster]:
    """A scheduler on ``host`` (TLS with ``certs``: :func:`make_certs`) and ``workers``
    workers named w1, w2, ... offering sweeperd_host=1."""
    tmp.mkdir(parents=True, exist_ok=True)
    sched_file = tmp / "scheduler.json"
    log = open(tmp / "scheduler.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", host, "--port", "0",
         "--no-dashboard", "--scheduler-file", str(sched_file),
         *(["--protocol", "tls", *tls_args(certs, "scheduler")] if certs else [])],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # (its scratch space in the test's directory, not /tmp/dask-scratch-space: a scheduler
        # SIGKILLed by a test leaves it behind)
        env={**os.environ, "DASK_TEMPORARY_DIRECTORY": str(tmp)})
    log.close()
    c = Cluster(tmp, proc, certs=certs)
    try:
        end = time.monotonic() + READY_S
        while not c.address:
            assert proc.poll() is None, "the scheduler exited: " + c.logs()
            assert time.monotonic() < end, "the scheduler did not start: " + c.logs()
            with contextlib.suppress(OSError, ValueError):
                c.address = json.loads(sched_file.read_text())["address"]
            time.sleep(0.1)
        for i in range(workers):
            c.add_worker(f"w{i + 1}")
        c.wait_for_workers(workers)
        yield c
    finally:
        c.stop()
