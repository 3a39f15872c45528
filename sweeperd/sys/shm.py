"""Shared memory regions backed by memfds.

Theory of operation
-------------------
A region is a memfd (an anonymous tmpfs file) of a fixed size, mapped ``MAP_SHARED``.  The
file is sparse: ``ftruncate`` reserves address space only, and a page of the file gets real
memory (counted in the system's ``Shmem``) the first time anyone writes it.  That is how a
16 GiB heap fits on a 24 GiB machine: only what is touched is backed.

Another process maps the same memory by opening ``/proc/<owner pid>/fd/<fd>`` (a
:class:`RegionHandle` is the plain, JSON-able description of where to find it).  A memfd has no
name in ``/dev/shm``: when the last descriptor and mapping go away the kernel frees it, so a
crashed daemon can never leak a segment.

The true backing of a region — what the kernel has really allocated for it — is the file's
``st_blocks * 512``.  Per-process RSS is *not* that figure: it counts pages a process has
touched, and drops under ``MADV_DONTNEED`` even though the shared pages stay allocated.

Invariants: a region's size is a multiple of 4 KiB and fixed for its life; only the creator
closes the memfd's last reference on purpose (attached processes just unmap).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

OS_PAGE = mmap.PAGESIZE
SPAN_SLACK_PAGES = 1 << 16  # one mincore over up to 256 MiB beyond 4x the ranges' pages
_libc = ctypes.CDLL(None, use_errno=True)
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
_populate_ok = True  # until the kernel says EINVAL (before 5.14)


@dataclass(frozen=True)
class RegionHandle:
    """Where another process finds a region: plain data, safe to send as JSON."""

    pid: int
    fd: int
    size: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> RegionHandle:
        return cls(pid=int(d["pid"]), fd=int(d["fd"]), size=int(d["size"]))


class SharedRegion:
    """One memfd mapped shared into this process."""

    def __init__(self, fd: int, size: int, owner: bool, handle: RegionHandle) -> None:
        self.fd = fd
        self.size = size
        self.owner = owner
        self.handle = handle
        self.mmap: mmap.mmap | None = mmap.mmap(
            fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        probe = ctypes.c_char.from_buffer(self.mmap)  # (an export of the buffer while alive)
        self.addr = ctypes.addressof(probe)
        del probe

    @classmethod
    def create(cls, name: str, size: int) -> SharedRegion:
        if size <= 0 or size % OS_PAGE:
            raise ValueError(f"region size must be a positive multiple of {OS_PAGE}, got {size}")
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            return cls(fd, size, True, RegionHandle(os.getpid(), fd, size))
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, handle: RegionHandle) -> SharedRegion:
        if handle.pid == os.getpid():
            fd = os.dup(handle.fd)
        else:
            fd = os.open(f"/proc/{handle.pid}/fd/{handle.fd}", os.O_RDWR | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if st.st_size != handle.size:
                raise ValueError(
                    f"region at pid {handle.pid} fd {handle.fd} has size {st.st_size}, "
                    f"expected {handle.size}: not the region this handle describes"
                )
            return cls(fd, handle.size, False, handle)
        except BaseException:
            os.close(fd)
            raise

    def map_in(self, offset: int, length: int) -> None:
        """Map ``[offset, offset + length)`` of this already-backed region into this process's
        page tables now (``MADV_POPULATE_WRITE``), before a write of all of it: a page another
        process backed or last wrote is otherwise a page fault each (measured here: 1.55 us a
        page faulted, 0.33 us populated, 0.08 us when already mapped).  Best effort: on a
        kernel without it, or any refusal, the write faults the pages in as before."""
        if not _populate_ok or length <= 0:
            return
        assert self.addr is not None and offset >= 0 and offset + length <= self.size
        _libc.madvise(ctypes.c_void_p(self.addr + offset), ctypes.c_size_t(length),
                      MADV_POPULATE_WRITE)

    def commit(self, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Back these byte ranges now, one call per range, so the kernel allocates at the
        commit rather than at the first write: ``MADV_POPULATE_WRITE`` (Linux 5.14+; it also
        maps the pages into this process, so the writer's first touches do not fault — 1.5-2x
        faster to commit-then-write 512 MiB than to fault it in by writing, measured), else
        ``fallocate`` on the memfd (whose pages ``mincore`` does not see until written).
        Raises OSError as the kernel refuses outside a memory cgroup (ENOMEM/ENOSPC/EFAULT);
        inside one, on Linux 6.18, a charge over the limit goes to the cgroup's OOM killer
        instead (measured for both calls and for a plain write), which is why the heap's
        commit limit is checked first (``runtime/mheap.py``)."""
        global _populate_ok
        for o, n in zip(offsets.tolist(), lengths.tolist(), strict=True):
            if _populate_ok:
                if _libc.madvise(ctypes.c_void_p(self.addr + o), ctypes.c_size_t(n),
                                 MADV_POPULATE_WRITE) == 0:
                    continue
                e = ctypes.get_errno()
                if e != errno.EINVAL:
                    raise OSError(e, f"MADV_POPULATE_WRITE of {n} bytes at {o}: "
                                     f"{os.strerror(e)}")
                _populate_ok = False  # a kernel before 5.14: fallocate from now on
            if _libc.fallocate(self.fd, 0, ctypes.c_long(o), ctypes.c_long(n)) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"fallocate of {n} bytes at {o}: {os.strerror(e)}")

    def backed_bytes(self) -> int:
        """Bytes the kernel has really allocated to this region (tmpfs blocks)."""
        return os.fstat(self.fd).st_blocks * 512

    def backed_in(self, offsets: Iterable[int], lengths: Iterable[int]) -> int:
        """Bytes of these ranges (OS-page aligned) the kernel holds: what releasing them will
        really give back.

        One ``mincore`` over the pages the ranges span (their page-cache residency: for a
        memfd, the pages ``st_blocks`` counts, less any swapped out), or one per range when
        they are scattered thinly over a much larger span.  ``SEEK_DATA``/``SEEK_HOLE``, used
        before, walk the same page cache ~17x slower (1.5 ms for 160 MiB, against 0.09 ms):
        12% of a paced release's CPU went to them."""
        offs = np.asarray(list(offsets) if not isinstance(offsets, np.ndarray) else offsets,
                          dtype=np.int64)
        lens = np.asarray(list(lengths) if not isinstance(lengths, np.ndarray) else lengths,
                          dtype=np.int64)
        if offs.shape != lens.shape:
            raise ValueError("backed_in: as many lengths as offsets")
        keep = lens > 0
        offs, lens = offs[keep], lens[keep]
        if offs.size == 0:
            return 0
        if ((offs | lens) % OS_PAGE).any() or offs.min() < 0 or (offs + lens).max() > self.size:
            raise ValueError("backed_in: ranges must be OS-page aligned and inside the region")
        lo, hi = int(offs.min()) // OS_PAGE, int((offs + lens).max()) // OS_PAGE
        pages = int(lens.sum()) // OS_PAGE
        if hi - lo <= 4 * pages + SPAN_SLACK_PAGES:
            res = np.concatenate(([0], np.cumsum(self._resident(lo, hi - lo), dtype=np.int64)))
            starts = offs // OS_PAGE - lo
            return int((res[starts + lens // OS_PAGE] - res[starts]).sum()) * OS_PAGE
        return sum(int(self._resident(int(o) // OS_PAGE, int(n) // OS_PAGE).sum())
                   for o, n in zip(offs.tolist(), lens.tolist(), strict=True)) * OS_PAGE

    def _resident(self, first: int, count: int) -> np.ndarray:
        """mincore of ``count`` OS pages from page ``first``: 1 where resident."""
        vec = np.empty(count, dtype=np.uint8)
        if _libc.mincore(ctypes.c_void_p(self.addr + first * OS_PAGE),
                         ctypes.c_size_t(count * OS_PAGE),
                         vec.ctypes.data_as(ctypes.c_void_p)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mincore: {os.strerror(e)}")
        return vec & 1

    def close(self) -> None:
        """Unmap and close.  Views into the mapping must be dropped first."""
        if self.mmap is not None:
            try:
                self.mmap.close()
            except BufferError as e:
                raise RuntimeError(
                    "SharedRegion.close: numpy views into the mapping are still alive"
                ) from e
            self.mmap = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LockTimeout(TimeoutError):
    """The lock was not taken within the time asked for."""


class FlockLock:
    """A cross-process lock that a killed holder cannot leave held.

    ``flock`` on the region's own descriptor: every process that maps the region opened its own
    file description (``/proc/PID/fd``), so the kernel arbitrates between them and drops the
    lock when a holder dies — ``kill -9`` mid-critical-section releases it.  Reentrant within
    a process (a depth count), as the heap's callers nest it.  About a microsecond a round trip.

    A stopped holder (SIGSTOP, a debugger, a frozen cgroup) is not dead: the kernel keeps its
    lock.  So the holder writes its pid into ``holder`` (a shared word) once it has the lock
    and clears it before letting go, and a process that must not wait blindly — the
    coordinator, which answers ``status`` and kills silent workers — sets :attr:`waiter`: it
    then takes the lock with ``LOCK_NB`` tries, calling ``waiter(holder pid, wait began)``
    between them (the pid may be stale for an instant: a dead holder's, until the next one
    writes its own).
    Without a waiter the wait is the kernel's (no poll latency): a worker's wait ends when the
    coordinator kills a stopped holder.
    """

    def __init__(self, fd: int, holder: np.ndarray | None = None) -> None:
        self.fd = fd
        self.depth = 0
        self.holder = holder  # one int64 word in shared memory: the holder's pid, 0 if none
        self.waiter: Callable[[int, float], None] | None = None

    def __enter__(self) -> FlockLock:
        if self.depth == 0:
            self.acquire()
        self.depth += 1
        return self

    def acquire(self, timeout_s: float | None = None) -> bool:
        """Take the lock (not reentrant: ``with`` is).  ``timeout_s``: give up after that many
        seconds and return False (None: wait as long as it takes).  A :attr:`waiter` is called
        between tries with the holder's pid (0: unknown) and the monotonic time this wait began,
        and may raise to abandon the wait."""
        if self.waiter is None and timeout_s is None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        else:
            began = time.monotonic()
            end = None if timeout_s is None else began + timeout_s
            pause = 50e-6
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                if end is not None and time.monotonic() >= end:
                    return False
                if self.waiter is not None:
                    self.waiter(self.holder_pid(), began)
                time.sleep(pause)
                pause = min(2 * pause, 2e-3)
        if self.holder is not None:
            self.holder[0] = os.getpid()
        return True

    @contextlib.contextmanager
    def within(self, timeout_s: float) -> Iterator[FlockLock]:
        """``with lock.within(0.5):`` — held as ``with lock:`` is, or :class:`LockTimeout`
        (naming the holder's pid) when not taken in ``timeout_s`` seconds."""
        if self.depth == 0 and not self.acquire(timeout_s):
            raise LockTimeout(f"the heap lock is held by pid {self.holder_pid() or '?'}; "
                              f"not taken within {timeout_s:g}s")
        self.depth += 1
        try:
            yield self
        finally:
            self.__exit__()

    def holder_pid(self) -> int:
        """The pid the last holder recorded (0: none, or no holder word)."""
        return 0 if self.holder is None else int(self.holder[0])

    @property
    def held(self) -> bool:
        """Does this process hold the lock now?"""
        return self.depth > 0

    def release(self) -> None:
        """Let go of a lock :meth:`acquire` took."""
        if self.holder is not None:
            self.holder[0] = 0
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.release()
