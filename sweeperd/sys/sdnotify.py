"""systemd's notify protocol (``Type=notify``), without libsystemd.

Theory of operation
-------------------
systemd passes a datagram socket in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace); the service sends newline-separated ``KEY=value`` assignments to it: ``READY=1``
once it serves, ``STOPPING=1`` when it begins to drain, ``STATUS=...`` for ``systemctl status``,
and ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC`` microseconds when ``WatchdogSec=`` is set
(only if ``$WATCHDOG_PID`` is unset or names this process).  Outside systemd the variables are
absent and every call does nothing.

:meth:`Notifier.from_env` takes the variables out of the environment, so worker processes
started later do not inherit them and cannot speak for the service.  Time enters only through
the ``now`` arguments.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass


class NotifyError(ValueError):
    pass


@dataclass
class Notifier:
    address: str | bytes | None = None
    watchdog_s: float = 0.0
    last_ping: float = float("-inf")
    errors: int = 0  # sends that failed
    last_error: str = ""

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None,
                 pid: int | None = None) -> Notifier:
        env = os.environ if env is None else env
        path = env.pop("NOTIFY_SOCKET", "") or None
        usec = env.pop("WATCHDOG_USEC", "")
        wpid = env.pop("WATCHDOG_PID", "")
        address: str | bytes | None = path
        if path is not None and path.startswith("@"):
            address = b"\0" + path[1:].encode()
        elif path is not None and not path.startswith("/"):
            raise NotifyError(f"NOTIFY_SOCKET: expected an absolute path or @name, got {path!r}")
        watchdog = 0.0
        if usec:
            if not usec.isdigit() or int(usec) == 0:
                raise NotifyError(f"WATCHDOG_USEC: expected a positive integer, got {usec!r}")
            if not wpid or wpid == str(os.getpid() if pid is None else pid):
                watchdog = int(usec) / 1e6
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send to the service manager; False if it could not be told (the socket gone, full,
        refused: counted in ``errors``, the first said on stderr) — never an exception: a
        daemon does not die because its manager stopped listening."""
        if self.address is None:
            return True
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(assignments).encode(), self.address)
        except OSError as e:
            self.errors += 1
            self.last_error = f"{e.strerror or e}"
            if self.errors == 1:
                with contextlib.suppress(OSError, ValueError):
                    print(f"sweeperd: sd_notify to {self.address!r} failed ({self.last_error});"
                          " going on without telling the service manager", file=sys.stderr,
                          flush=True)
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "draining") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog_due(self, now: float) -> bool:
        """Ping at twice the rate systemd requires, as sd_watchdog_enabled(3) advises."""
        return bool(self.watchdog_s) and now - self.last_ping >= self.watchdog_s / 2

    def ping(self, now: float) -> None:
        if self.watchdog_due(now):
            self.last_ping = now  # (a failed ping is not retried every step)
            self.send("WATCHDOG=1")
