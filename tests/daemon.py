"""Start a real ``sweeperd run`` for a test, talk to it, and always tear it down."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import zmq

from sweeperd.wire import protocol


class Daemon:
    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 ephemeral_ports: bool = True,
                 curve: tuple[str, str, str] | None = None) -> None:
        """``ephemeral_ports``: control on an ipc socket in a fresh temp dir of ours, metrics
        on any free port.  ``curve``: (client public, client secret, server public) keys for
        a tcp control address."""
        self._ctl_dir = tempfile.mkdtemp(prefix="sweeperd_t")  # short: a socket path
        self.curve = curve
        ports = ["--control", f"ipc://{self._ctl_dir}/control.sock",
                 "--metrics-addr", "127.0.0.1:0"]
        cmd = [sys.executable, "-m", "sweeperd.cli", "run",
               *(ports if ephemeral_ports else []), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.control = self.metrics = ""
        try:
            self._wait_for_addresses()
        except BaseException:
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
            raise
        self.zctx = zmq.Context()

    def _wait_for_addresses(self) -> None:
        deadline = time.monotonic() + 60
        while not (self.control and self.metrics):
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                raise RuntimeError(f"sweeperd run exited early: {self.proc.stderr.read()}")
            self.lines.append(line)
            if m := re.search(r"metrics on (http://\S+)", line):
                self.metrics = m.group(1)
            if m := re.search(r"control on ((?:tcp|ipc)://\S+)", line):
                self.control = m.group(1)
            if time.monotonic() > deadline:
                raise RuntimeError("sweeperd run did not print its addresses")

    def request(self, frames: list[bytes] | bytes, timeout: float = 10) -> dict[str, Any]:
        s = self.zctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            s.curve_publickey, s.curve_secretkey, s.curve_serverkey = (
                k.encode() for k in self.curve)
        try:
            s.connect(self.control)
            if isinstance(frames, bytes):
                frames = [frames]
            s.send_multipart(frames)
            if not s.poll(int(timeout * 1000)):
                raise TimeoutError(f"no reply from the daemon; it was at:\n{self.where()}")
            return json.loads(s.recv())
        finally:
            s.close()

    def status(self) -> dict[str, Any]:
        return self.request(protocol.encode("status"))

    def wait_for(self, pred, timeout: float = 60, what: str = "condition") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last status {st}")
            time.sleep(0.1)

    def where(self) -> str:
        """The daemon's thread stacks (it dumps them on SIGUSR1), then it is killed."""
        if self.proc.poll() is not None:
            err = self.proc.stderr.read()[-4000:] if self.proc.stderr else ""
            return f"(exited with {self.proc.returncode})\n{err}"
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(1)
        self.proc.kill()
        self.proc.wait()
        return self.proc.stderr.read()[-4000:] if self.proc.stderr else ""

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:  # drain it (so it frees what it made), then insist
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
        self.zctx.term()
        shutil.rmtree(self._ctl_dir, ignore_errors=True)


def ask(ctx: zmq.Context, addr: str, request: str, timeout_s: float = 60) -> dict | None:
    """One control request on a fresh REQ socket, or None when the daemon does not answer
    within ``timeout_s`` (it may be stopped, waiting, or exiting)."""
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(addr)
        s.send(protocol.encode(request))
        return json.loads(s.recv()) if s.poll(int(timeout_s * 1000)) else None
    finally:
        s.close()


def proc_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (gone, or a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # (reaped between the open and the read)
        return True
