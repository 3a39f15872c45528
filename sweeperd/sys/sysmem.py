"""Returning memory to the OS: Go's sysUnused / sysUsed, on Linux, behind one small interface.

Theory of operation
-------------------
:class:`Kernel` is the seam: ``madvise(addr, length, advice)`` and ``process_madvise(runs,
advice)`` as the real system calls (ctypes, errno raised as OSError).  Tests substitute a
recording or failing kernel; the real one is tested for real.

:class:`SysMem` implements the seed's semantics for one mapping:

* an unaligned range (address or length not a multiple of the OS page) is refused with
  :class:`~sweeperd.errors.UnalignedSysUnused`, never rounded — madvise would round to the
  covering pages and release too much;
* on a **shared** mapping (the daemon's heap) the advice is ``MADV_REMOVE``: ``MADV_DONTNEED``
  frees nothing there (each process's RSS drops, the shmem pages stay) and ``MADV_FREE`` is
  refused;
* on a **private** anonymous mapping the advice is ``MADV_FREE`` unless the ``madvdontneed``
  knob is set; if the kernel refuses ``MADV_FREE`` with EINVAL the backend switches to
  ``MADV_DONTNEED`` for good (sticky), as Go does for kernels before 4.5;
* transparent huge pages (private mappings, when THP is on): before releasing, the huge pages
  holding the *unaligned* head and tail of the range get ``MADV_NOHUGEPAGE`` — one call when
  they are adjacent — so khugepaged cannot re-inflate a lone 4 KiB page into 2 MiB, while the
  mapping splits into at most a few VMAs per huge page (``vm.max_map_count`` is 65530).
  ``sys_used`` gives whole huge pages inside a reused range ``MADV_HUGEPAGE`` back;
* many runs can go in one ``process_madvise`` call (Linux 6.13+ on the calling process); the
  backend uses it only where it measured faster (:func:`measure_vectored`).

Other operating systems: :func:`check_platform` raises naming what is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import time
from dataclasses import dataclass, field

import numpy as np

from sweeperd.errors import UnalignedSysUnused
from sweeperd.sys.support import UnsupportedPlatform as UnsupportedPlatform
from sweeperd.sys.support import check_platform as check_platform

OS_PAGE = mmap.PAGESIZE
MADV = {name: getattr(mmap, f"MADV_{name}") for name in
        ("DONTNEED", "FREE", "REMOVE", "HUGEPAGE", "NOHUGEPAGE")}
ADVICE_NAME = {v: k for k, v in MADV.items()}
SYS_process_madvise = 440
SYS_pidfd_open = 434
IOV_MAX = 1024


def huge_page_size() -> int:
    """The PMD huge page size if transparent huge pages are not off, else 0."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return 0
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except OSError:
        return 0


class Kernel:
    """The real system calls."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.libc.syscall.restype = ctypes.c_long
        self._pidfd = -1

    def madvise(self, addr: int, length: int, advice: int) -> None:
        if self.libc.madvise(addr, length, advice) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"madvise({ADVICE_NAME.get(advice, advice)}): {os.strerror(e)}")

    def process_madvise(self, addrs: np.ndarray, lengths: np.ndarray, advice: int) -> None:
        """All runs in calls of up to IOV_MAX iovecs each."""
        if self._pidfd < 0:
            fd = self.libc.syscall(SYS_pidfd_open, os.getpid(), 0)
            if fd < 0:
                e = ctypes.get_errno()
                raise OSError(e, f"pidfd_open: {os.strerror(e)}")
            self._pidfd = int(fd)
        iov = np.empty((addrs.size, 2), dtype=np.uint64)
        iov[:, 0], iov[:, 1] = addrs, lengths
        for i in range(0, addrs.size, IOV_MAX):
            part = np.ascontiguousarray(iov[i : i + IOV_MAX])
            want = int(part[:, 1].sum())
            got = self.libc.syscall(SYS_process_madvise, self._pidfd,
                                    ctypes.c_void_p(part.ctypes.data), part.shape[0], advice, 0)
            if got != want:
                e = ctypes.get_errno()
                raise OSError(e, f"process_madvise: {os.strerror(e) if got < 0 else 'short'}")


@dataclass
class SysMem:
    """sysUnused / sysUsed for one mapping starting at ``base`` (an address)."""

    base: int
    size: int
    shared: bool
    madvdontneed: bool = False
    kernel: Kernel = field(default_factory=Kernel)
    huge: int = -1  # huge page size; -1: ask the system
    vectored: bool = False  # use process_madvise for many runs
    calls: dict[str, int] = field(default_factory=dict)
    used_pages: int = 0

    def __post_init__(self) -> None:
        if self.huge < 0:
            self.huge = 0 if self.shared else huge_page_size()
        if self.shared:
            self.advice = MADV["REMOVE"]
        else:
            self.advice = MADV["DONTNEED"] if self.madvdontneed else MADV["FREE"]

    @property
    def advice_name(self) -> str:
        return ADVICE_NAME[self.advice]

    def _madvise(self, addr: int, length: int, advice: int) -> None:
        self.kernel.madvise(addr, length, advice)
        name = ADVICE_NAME[advice]
        self.calls[name] = self.calls.get(name, 0) + 1

    def _check(self, offset: int, length: int) -> None:
        if offset % OS_PAGE or length % OS_PAGE or length <= 0:
            raise UnalignedSysUnused(f"offset {offset:#x} length {length:#x} (OS page "
                                     f"{OS_PAGE})")
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"range {offset:#x}+{length:#x} is outside the mapping")

    def _nohugepage_ends(self, v: int, n: int) -> None:
        hp = self.huge
        head = (v // hp) * hp if v % hp else 0
        tail = ((v + n - 1) // hp) * hp if (v + n) % hp else 0
        if head and tail and head + hp == tail:
            self._madvise(head, 2 * hp, MADV["NOHUGEPAGE"])  # adjacent: one call
            return
        if head:
            self._madvise(head, hp, MADV["NOHUGEPAGE"])
        if tail and tail != head:
            self._madvise(tail, hp, MADV["NOHUGEPAGE"])

    def sys_unused(self, offset: int, length: int) -> None:
        """Release ``[offset, offset+length)`` of the mapping (Go's sysUnused)."""
        self._check(offset, length)
        v = self.base + offset
        if self.huge and not self.shared:
            self._nohugepage_ends(v, length)
        self._release(v, length)

    def _release(self, v: int, n: int) -> None:
        try:
            self._madvise(v, n, self.advice)
        except OSError as e:
            # Go falls back only when the kernel does not know the advice (EINVAL, before
            # 4.5); any other failure (ENOMEM for an unmapped range, EAGAIN, ...) is raised
            if self.advice != MADV["FREE"] or e.errno != errno.EINVAL:
                raise
            self.advice = MADV["DONTNEED"]  # sticky: this kernel has no MADV_FREE
            self._madvise(v, n, self.advice)

    def sys_unused_runs(self, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Release many runs: one call each, or vectored calls where that measured faster."""
        offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        if ((offsets % OS_PAGE) | (lengths % OS_PAGE)).any() or (lengths <= 0).any():
            i = int(np.argmax((offsets % OS_PAGE) | (lengths % OS_PAGE) | (lengths <= 0)))
            raise UnalignedSysUnused(f"run {i}: offset {offsets[i]:#x} length {lengths[i]:#x}")
        if self.vectored and self.shared and offsets.size > 1:
            self.kernel.process_madvise(offsets + self.base, lengths, self.advice)
            name = f"{self.advice_name}_vectored"
            self.calls[name] = self.calls.get(name, 0) + -(-offsets.size // IOV_MAX)
            return
        for o, n in zip(offsets.tolist(), lengths.tolist(), strict=True):
            self.sys_unused(o, n)

    def sys_used(self, offset: int, length: int) -> None:
        """Pages come back into use (Go's sysUsed): count them; on a private THP mapping give
        whole huge pages inside the range MADV_HUGEPAGE back.  Shared memory needs nothing:
        a removed page faults back in as a zero page."""
        self._check(offset, length)
        self.used_pages += length // OS_PAGE
        if self.huge and not self.shared:
            hp = self.huge
            v = self.base + offset
            beg = -(-v // hp) * hp
            end = ((v + length) // hp) * hp
            if beg < end:
                self._madvise(beg, end - beg, MADV["HUGEPAGE"])


def measure_vectored(sm: SysMem, offsets: np.ndarray, lengths: np.ndarray,
                     touch: object) -> dict[str, float]:
    """Time one call per run against process_madvise over the same scattered runs (each
    re-touched by ``touch()`` first); returns both rates in runs/s."""
    out = {}
    for vectored in (False, True):
        touch()  # type: ignore[operator]
        sm.vectored = vectored
        t = time.perf_counter()
        sm.sys_unused_runs(offsets, lengths)
        out["vectored" if vectored else "per_run"] = offsets.size / (time.perf_counter() - t)
    return out


def calibrate_vectored(runs: int = 512) -> dict[str, float]:
    """Measure, on a scratch shared region, one MADV_REMOVE call per scattered 8 KiB run
    against process_madvise over the same runs; ``{"per_run": runs/s, "vectored": runs/s}``
    (vectored 0.0 where the kernel refuses it)."""
    from sweeperd.sys.shm import SharedRegion

    region = SharedRegion.create("sweeperd-calibrate", runs * 2 * 8192)
    try:
        assert region.mmap is not None
        views = [np.frombuffer(region.mmap, dtype=np.uint8)]
        sm = SysMem(base=views[0].ctypes.data, size=region.size, shared=True)
        offs = np.arange(runs, dtype=np.int64) * 2 * 8192
        lens = np.full(runs, 8192, dtype=np.int64)

        def touch() -> None:
            views[0][:] = 1

        try:
            out = measure_vectored(sm, offs, lens, touch)
        except OSError:  # no process_madvise here: time the per-run path alone
            touch()
            sm.vectored = False
            t = time.perf_counter()
            sm.sys_unused_runs(offs, lens)
            out = {"per_run": runs / (time.perf_counter() - t), "vectored": 0.0}
        views.clear()  # no view may outlive the mapping
        return out
    finally:
        region.close()
