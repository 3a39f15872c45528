"""How much memory this host, and this process's memory cgroup, can back: readers and the rule.

Theory of operation
-------------------
The heap is a sparse memfd: its size is address space, and its backing grows with use.  A
container's memory cgroup does not refuse a page it cannot back with an error — measured on
Linux 6.18 (cgroup v1, a shared memfd mapping): a plain write, ``MADV_POPULATE_WRITE`` and
``fallocate`` on the memfd all end in the cgroup's OOM killer (SIGKILL), never ENOMEM/ENOSPC.
So the daemon must say no itself, before the kernel kills: at start (this module's rule), and
on every commit of unbacked pages (``runtime/mheap.py``, against the heap's commit limit).

Readers (every path under ``root``, "/" in production: the seam for tests):

* :func:`mem_available` — ``MemAvailable`` of ``/proc/meminfo``;
* :func:`own_cgroup` — the process's memory cgroup, found from ``/proc/self/cgroup`` and
  ``/proc/self/mountinfo``: v1 (a ``cgroup`` mount with the ``memory`` option; limit
  ``memory.limit_in_bytes``, OOM kills in ``memory.oom_control``) or v2 (the ``cgroup2`` mount;
  ``memory.max``, ``memory.events``).  Its limit is the smallest over its ancestors up to the
  mount's root (both versions charge every ancestor); a v1 limit of 2^62 or more, or v2's
  ``max``, is no limit.

The rule (:func:`check_fit`, pure, over :class:`HostMemory`): what can back the heap is
``capacity = min(MemAvailable, cgroup limit - the daemon's own processes)`` (the private
memory of the coordinator and each worker, measured: :data:`PROCESS_PRIVATE_MIB` each, more
for a mutator's workload bookkeeping).  Then

1. with a memory limit (``scavenger.memory_limit_mib``, Go's GOMEMLIMIT): it must not exceed
   the capacity — the GC and the scavenger keep the backing under it, so the heap itself may be
   larger than the host (address space);
2. without one: the heap must not exceed the capacity, since nothing but the heap's size
   bounds its backing;
3. ``memory_limit_mib = "cgroup"``: the limit is :data:`CGROUP_LIMIT_FRACTION` (90%) of the
   cgroup's, and at most the cgroup's less the daemon's processes (:func:`derive_limit`); no
   cgroup limit is a configuration error naming the key.  90% is what Go services are given
   in practice: KimMachineGun/automemlimit (``memlimit/memlimit.go``,
   ``defaultAUTOMEMLIMIT = 0.9``; GitLab Runner sets GOMEMLIMIT with it, "90% of the cgroup
   memory limit"), leaving the rest for what the soft limit does not see (Go's non-heap
   memory, page cache charged to the cgroup).  Go itself derives none (golang/go#75164 proposes
   it).

Too large is :class:`TooLarge`, naming both figures (``sweeperd run`` exits 2).

**A cgroup named but not visible** (:func:`unseen_cgroup`): ``/proc/self/cgroup`` names a
memory cgroup (v1 ``N:memory:/x``; or, with no v1 memory line, v2 ``0::/x`` below the root)
but ``/proc/self/mountinfo`` shows no mount of that hierarchy whose files are visible
(``ip netns exec`` remounts ``/sys``; a tmpfs mounted over ``/sys/fs/cgroup`` hides it).  The
kernel still enforces its limit, and we cannot read it: ``sweeperd run`` says so at start, and
``memory_limit_mib = "cgroup"`` is refused naming the cgroup, rather than taken for a host
without a limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNLIMITED_V1 = 1 << 62  # v1 writes PAGE_COUNTER_MAX * PAGE_SIZE (~2^63) for "no limit"
PROCESS_PRIVATE_MIB = 32  # measured: a worker or the coordinator, Pss less Pss_Shmem: 28-32 MiB
# measured (peak RssAnon sampled every 50 ms over steady's 2 GiB run): a mutator peaks ~47 MiB
# above another worker: ~32 MiB of live-set records and ~15 MiB of one mark batch's temporaries
# (runtime/mark.MARK_BATCH; at 2^21 objects a batch, the peak was ~170 MiB more, and the OOM
# killer found it in a cgroup sized by this estimate)
MUTATOR_EXTRA_MIB = 48
MIN_DERIVED_LIMIT_MIB = 16
CGROUP_LIMIT_FRACTION = 0.9  # of the cgroup's limit (module header, rule 3)


class TooLarge(ValueError):
    """The heap or its memory limit asks for more than this host/cgroup can back."""


class NoCgroupLimit(ValueError):
    """``memory_limit_mib = "cgroup"`` but the process's memory cgroup has no limit."""


@dataclass(frozen=True)
class Cgroup:
    """This process's memory cgroup: where it is and what it allows."""

    version: int  # 1 or 2
    path: str  # its directory in the cgroup file system
    limit_bytes: int | None  # the smallest limit of it and its ancestors; None: no limit


@dataclass(frozen=True)
class HostMemory:
    """The figures the start check decides on (plain data; the readers fill it in)."""

    mem_available: int  # bytes
    cgroup_limit: int | None  # bytes, None: no limit (or no memory cgroup)
    unseen: str = ""  # a memory cgroup named but not mounted here (unseen_cgroup), else ""


def _int(text: str) -> int | None:
    """A non-negative decimal integer, or None (``str.isdigit`` alone admits '¹')."""
    t = text.strip()
    return int(t) if t.isascii() and t.isdigit() else None


def _read(p: Path) -> str | None:
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _under(root: str | Path, path: str) -> Path:
    return Path(root) / path.lstrip("/")


def mem_available(root: str | Path = "/") -> int:
    """``MemAvailable`` in bytes (``MemFree`` on kernels without it); OSError if unreadable."""
    text = _read(_under(root, "/proc/meminfo"))
    if text is None:
        raise OSError(f"cannot read {_under(root, '/proc/meminfo')}")
    fields = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        parts = v.split()
        if parts and (n := _int(parts[0])) is not None:
            fields[k.strip()] = n * 1024
    for k in ("MemAvailable", "MemFree"):
        if k in fields:
            return fields[k]
    raise OSError(f"{_under(root, '/proc/meminfo')}: no MemAvailable")


def _mounts(root: str | Path) -> list[tuple[str, str, str, str]]:
    """(mount root, mount point, fs type, super options) of each line of mountinfo."""
    out = []
    for line in (_read(_under(root, "/proc/self/mountinfo")) or "").splitlines():
        left, sep, right = line.partition(" - ")
        a, b = left.split(), right.split()
        if not sep or len(a) < 5 or len(b) < 3:
            continue
        out.append((a[3], a[4], b[0], b[2]))
    return out


def _limit_at(version: int, d: Path) -> int | None:
    name = "memory.limit_in_bytes" if version == 1 else "memory.max"
    text = _read(d / name)
    if text is None:
        return None
    v = _int(text)
    if v is None:
        return None  # "max", or garbage: no limit we can honour
    return None if version == 1 and v >= UNLIMITED_V1 else v


def _listed(root: str | Path) -> tuple[str | None, str | None]:
    """The memory cgroup paths ``/proc/self/cgroup`` names: (v1 memory line's, v2 ``0::``)."""
    v1 = v2 = None
    for line in (_read(_under(root, "/proc/self/cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    return v1, v2


def own_cgroup(root: str | Path = "/") -> Cgroup | None:
    """This process's memory cgroup, or None when it has none we can read."""
    v1, v2 = _listed(root)
    for version, cpath in ((1, v1), (2, v2)):
        if cpath is None:
            continue
        for mroot, mpoint, fstype, opts in _mounts(root):
            if version == 1 and not (fstype == "cgroup" and "memory" in opts.split(",")):
                continue
            if version == 2 and fstype != "cgroup2":
                continue
            rel = cpath[len(mroot):] if cpath.startswith(mroot) else cpath
            top = _under(root, mpoint)
            d = top / rel.strip("/") if rel.strip("/") else top
            if not d.is_dir():
                d = top
            if version == 2 and _read(d / "memory.max") is None and d != top:
                continue  # the memory controller is not enabled here (v1 has it)
            limits = []
            cur = d
            while True:
                lim = _limit_at(version, cur)
                if lim is not None:
                    limits.append(lim)
                if cur == top or top not in cur.parents:
                    break
                cur = cur.parent
            return Cgroup(version, str(d), min(limits) if limits else None)
    return None


def unseen_cgroup(root: str | Path = "/") -> str:
    """Why this process's memory cgroup cannot be read, when ``/proc/self/cgroup`` names one
    (v1 ``N:memory:/x``; without a v1 memory line, v2 ``0::/x`` with x not the root, which may
    have the memory controller) that no mount in ``/proc/self/mountinfo`` shows: one line
    naming the cgroup's path and where we looked.  "" when there is none, or it is visible."""
    v1, v2 = _listed(root)
    def visible(fstype: str, memory: bool) -> bool:  # a mount of it whose files we see
        return any(t == fstype and (not memory or "memory" in o.split(","))
                   and (_under(root, point) / "cgroup.procs").is_file()
                   for _, point, t, o in _mounts(root))

    if v1 is not None:
        if visible("cgroup", True):
            return ""
        version, cpath, kind = 1, v1, "cgroup mount with the memory option"
    elif v2 is not None and v2.strip("/"):
        if visible("cgroup2", False):
            return ""
        version, cpath, kind = 2, v2, "cgroup2 mount"
    else:
        return ""
    where = _under(root, "/sys/fs/cgroup")
    seen = "absent" if not where.is_dir() else "; ".join(
        sorted(p.name for p in where.iterdir())[:8]) or "empty"
    return (f"{_under(root, '/proc/self/cgroup')} names the v{version} memory cgroup {cpath!r}, "
            f"but {_under(root, '/proc/self/mountinfo')} has no {kind} whose files are "
            f"visible (is /sys remounted, as by ip netns exec, or the mount hidden?); "
            f"{where} holds: {seen}; its limit, which the kernel enforces, "
            "cannot be read")


def oom_kills(cg: Cgroup | None) -> int | None:
    """The cgroup's ``oom_kill`` count (v2 ``memory.events``, v1 ``memory.oom_control``);
    None where the kernel does not say."""
    if cg is None:
        return None
    name = "memory.oom_control" if cg.version == 1 else "memory.events"
    for line in (_read(Path(cg.path) / name) or "").splitlines():
        k, _, v = line.partition(" ")
        if k == "oom_kill" and (n := _int(v)) is not None:
            return n
    return None


def read_host(root: str | Path = "/") -> HostMemory:
    cg = own_cgroup(root)
    return HostMemory(mem_available(root), None if cg is None else cg.limit_bytes,
                      unseen_cgroup(root) if cg is None or cg.limit_bytes is None else "")


def overhead_bytes(processes: int, mutators: int, heap_bytes: int = 0) -> int:
    """The daemon's own memory besides the arena, measured: ``processes`` (coordinator and
    workers, with the resource tracker) at :data:`PROCESS_PRIVATE_MIB` each, each mutator's
    workload, and the heap's metadata region (bitmaps, span table: 1/64 of the heap, above
    the 0.77% a heap full of 64-byte objects was measured to back)."""
    return ((processes * PROCESS_PRIVATE_MIB + mutators * MUTATOR_EXTRA_MIB) << 20) \
        + heap_bytes // 64


def derive_limit(host: HostMemory, overhead: int) -> int:
    """``memory_limit_mib = "cgroup"``: :data:`CGROUP_LIMIT_FRACTION` of the cgroup's limit, at
    most that limit less the daemon's own processes (``overhead``), in bytes.  Raises
    :class:`NoCgroupLimit` (no limit) or :class:`TooLarge` (less than 16 MiB is left)."""
    if host.cgroup_limit is None and host.unseen:
        raise NoCgroupLimit(
            'scavenger.memory_limit_mib: "cgroup" asks for the memory cgroup\'s limit, and it '
            f"cannot be read here: {host.unseen}")
    if host.cgroup_limit is None:
        raise NoCgroupLimit(
            'scavenger.memory_limit_mib: "cgroup" asks for the memory cgroup\'s limit, and '
            "this process's memory cgroup has none (v2 memory.max, v1 memory.limit_in_bytes)")
    lim = min(int(host.cgroup_limit * CGROUP_LIMIT_FRACTION), host.cgroup_limit - overhead)
    if lim < MIN_DERIVED_LIMIT_MIB << 20:
        raise TooLarge(
            f"the memory cgroup's limit of {_mib(host.cgroup_limit)} leaves "
            f"{_mib(max(lim, 0))} for the heap after the daemon's own processes "
            f"({_mib(overhead)}); at least {MIN_DERIVED_LIMIT_MIB} MiB is needed")
    return lim


def check_fit(heap_bytes: int, memory_limit: int, host: HostMemory, overhead: int) -> None:
    """The start check (module header's rule 1 and 2).  ``memory_limit`` 0: none.  Raises
    :class:`TooLarge` naming the asked figure and what can back it."""
    cg = None if host.cgroup_limit is None else host.cgroup_limit - overhead
    capacity = host.mem_available if cg is None else min(host.mem_available, cg)
    where = ("MemAvailable" if cg is None or host.mem_available <= cg else
             f"the memory cgroup's limit of {_mib(host.cgroup_limit or 0)} less "
             f"{_mib(overhead)} for the daemon's own processes")
    if memory_limit > 0:
        if memory_limit > capacity:
            raise TooLarge(
                f"scavenger.memory_limit_mib ({_mib(memory_limit)}) is more than this host can "
                f"back: {_mib(max(capacity, 0))} ({where}); lower it, or set it to \"cgroup\"")
        return
    if cg is not None and cg < MIN_DERIVED_LIMIT_MIB << 20 and heap_bytes > capacity:
        raise TooLarge(  # no heap fits: the processes alone fill the cgroup
            f"a heap of {_mib(heap_bytes)} (heap.size_mib) cannot run in the memory cgroup's "
            f"limit of {_mib(host.cgroup_limit or 0)}: the daemon's own processes need "
            f"{_mib(overhead)}, and at least {MIN_DERIVED_LIMIT_MIB} MiB more of heap; give "
            "the cgroup more memory, or run fewer workers (sweep.sweepers, mutators.count)")
    if heap_bytes > capacity:
        raise TooLarge(
            f"a heap of {_mib(heap_bytes)} (heap.size_mib) with no memory limit is more than "
            f"this host can back: {_mib(max(capacity, 0))} ({where}); lower the heap, or set "
            f"scavenger.memory_limit_mib (\"cgroup\" derives it from the cgroup)")


def _mib(b: int) -> str:
    return f"{b / (1 << 20):.0f} MiB"

