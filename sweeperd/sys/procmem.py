"""Memory as the kernel reports it: per process RSS and PSS, and the system's Shmem.

RSS counts every page a process maps, so the shared heap appears once in *each* process's RSS;
summing RSS over processes counts it several times.  PSS (``smaps_rollup``) divides each shared
page among the processes mapping it, so PSS does add up.  The daemon exports both, per process
(labelled by role and id), and never a sum of RSS.  ``root`` is a seam: tests may point it at a
directory shaped like ``/proc``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcMem:
    rss_bytes: int
    pss_bytes: int
    anon_bytes: int  # RssAnon: the process's private memory (what leaks would grow)
    fds: int  # open file descriptors
    cpu_seconds: float  # user + system CPU time since it started


def _kib_field(path: str, name: str) -> int:
    """Bytes of a ``Name:  N kB`` line of a /proc file; 0 if there is none."""
    with open(path) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def process_memory(pid: int, root: str = "/proc", pss: bool = True) -> ProcMem | None:
    """RSS, PSS and private (anonymous) RSS of ``pid`` in bytes, its open descriptors and
    CPU time; None if it is gone.  PSS walks every page-table entry of the process (about
    25 ms for 3.5 GiB of the heap mapped): ``pss=False`` skips it (``pss_bytes`` is then 0)."""
    try:
        with open(f"{root}/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
        pss_b = _kib_field(f"{root}/{pid}/smaps_rollup", "Pss") if pss else 0
        anon = _kib_field(f"{root}/{pid}/status", "RssAnon")
        fds = len(os.listdir(f"{root}/{pid}/fd"))
        return ProcMem(rss, pss_b, anon, fds, cpu_seconds(pid, root))
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int, root: str = "/proc") -> float:
    """User plus system CPU seconds of ``pid`` (``/proc/PID/stat`` fields 14 and 15)."""
    with open(f"{root}/{pid}/stat") as f:
        # the command name (field 2) may hold spaces and parentheses: split after its last ')'
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def meminfo(field: str, root: str = "/proc") -> int:
    """A ``/proc/meminfo`` field in bytes (e.g. ``Shmem``); 0 if absent."""
    return _kib_field(f"{root}/meminfo", field)
