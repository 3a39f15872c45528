"""sysUnused / sysUsed: the seed's behaviours through a recording kernel, and for real."""

import errno
import mmap
import os

import numpy as np
import pytest

from sweeperd.errors import UnalignedSysUnused
from sweeperd.sys.shm import SharedRegion
from sweeperd.sys.sysmem import MADV, Kernel, SysMem, check_platform

from .conftest import not_here

HP = 2 << 20
K4 = 4096


class Recorder:
    """A kernel that records calls; ``refuse`` lists advice values it fails with EINVAL."""

    def __init__(self, refuse=(), err=errno.EINVAL):
        self.log = []
        self.refuse = set(refuse)
        self.err = err

    def madvise(self, addr, length, advice):
        self.log.append((addr, length, advice))
        if advice in self.refuse:
            raise OSError(self.err, "refused")


def _private(rec, huge=HP, **kw):
    return SysMem(base=16 * HP, size=8 * HP, shared=False, kernel=rec, huge=huge, **kw)


def test_platform_is_supported_here():
    check_platform()


def test_unaligned_is_refused_never_rounded():
    rec = Recorder()
    sm = _private(rec)
    for off, n in ((100, K4), (K4, 100), (K4, 0)):
        with pytest.raises(UnalignedSysUnused, match="unaligned sysUnused"):
            sm.sys_unused(off, n)
    with pytest.raises(UnalignedSysUnused):
        sm.sys_unused_runs(np.array([0, K4 + 8]), np.array([K4, K4]))
    assert rec.log == []


def test_free_falls_back_to_dontneed_for_good():
    rec = Recorder(refuse={MADV["FREE"]})
    sm = _private(rec, huge=0)
    sm.sys_unused(0, 8 * K4)
    sm.sys_unused(16 * K4, K4)
    assert [a for _, _, a in rec.log] == [MADV["FREE"], MADV["DONTNEED"], MADV["DONTNEED"]]
    assert sm.advice_name == "DONTNEED"


def test_free_falls_back_only_on_einval_as_go_does():
    rec = Recorder(refuse={MADV["FREE"]}, err=errno.ENOMEM)  # e.g. a range not mapped
    sm = _private(rec, huge=0)
    with pytest.raises(OSError) as e:
        sm.sys_unused(0, 8 * K4)
    assert e.value.errno == errno.ENOMEM
    assert sm.advice_name == "FREE" and [a for _, _, a in rec.log] == [MADV["FREE"]]


def test_madvdontneed_knob_and_shared_remove():
    rec = Recorder()
    _private(rec, huge=0, madvdontneed=True).sys_unused(0, K4)
    SysMem(base=0, size=HP, shared=True, kernel=rec).sys_unused(0, K4)
    assert [a for _, _, a in rec.log] == [MADV["DONTNEED"], MADV["REMOVE"]]


@pytest.mark.parametrize("off,n,expect", [
    (HP + K4, 2 * HP - 2 * K4, [(HP, 2 * HP)]),           # head and tail adjacent: one call
    (HP + K4, 3 * HP - 2 * K4, [(HP, HP), (3 * HP, HP)]),  # apart: two calls
    (HP, HP + K4, [(2 * HP, HP)]),                          # aligned head: tail only
    (HP + K4, HP - K4, [(HP, HP)]),                         # aligned end: head only
    (HP, 2 * HP, []),                                       # whole huge pages: none
    (HP + K4, K4, [(HP, HP)]),                              # both ends in one huge page
])
def test_nohugepage_only_on_unaligned_head_and_tail(off, n, expect):
    rec = Recorder()
    sm = _private(rec)
    sm.sys_unused(off, n)
    nh = [(a - sm.base, ln) for a, ln, adv in rec.log if adv == MADV["NOHUGEPAGE"]]
    assert nh == expect
    assert rec.log[-1] == (sm.base + off, n, MADV["FREE"])


def test_sys_used_restores_hugepage_on_whole_huge_pages_only():
    rec = Recorder()
    sm = _private(rec)
    sm.sys_used(HP - K4, 2 * HP + 2 * K4)
    assert rec.log == [(sm.base + HP, HP * 2, MADV["HUGEPAGE"])]
    assert sm.used_pages == (2 * HP + 2 * K4) // K4


# --- for real --------------------------------------------------------------------------------


def test_remove_really_frees_shared_pages_and_they_read_zero():
    r = SharedRegion.create("t", 8 << 20)
    try:
        a = np.frombuffer(r.mmap, dtype=np.uint8)
        a[:] = 0x5A
        before = r.backed_bytes()
        sm = SysMem(base=a.ctypes.data, size=a.size, shared=True)
        sm.sys_unused(2 << 20, 3 << 20)
        assert before - r.backed_bytes() == 3 << 20  # exactly, by the kernel's count
        assert not a[2 << 20 : 5 << 20].any() and (a[: 2 << 20] == 0x5A).all()
        assert (a[5 << 20 :] == 0x5A).all()
        del a
    finally:
        r.close()


def test_dontneed_on_shared_frees_nothing():
    """The fact from the brief that makes REMOVE necessary, measured here."""
    r = SharedRegion.create("t", 4 << 20)
    try:
        a = np.frombuffer(r.mmap, dtype=np.uint8)
        a[:] = 7
        sm = SysMem(base=a.ctypes.data, size=a.size, shared=False, huge=0, madvdontneed=True)
        sm.sys_unused(0, 4 << 20)
        assert r.backed_bytes() == 4 << 20 and (a == 7).all()
        del a
    finally:
        r.close()


def test_vectored_release_of_scattered_runs():
    """process_madvise for real (kernel 5.10+; an error fails the test: CI runs a kernel that
    has it, and the daemon relies on it when it measured it faster)."""
    r = SharedRegion.create("t", 8 << 20)
    try:
        a = np.frombuffer(r.mmap, dtype=np.uint8)
        a[:] = 1
        sm = SysMem(base=a.ctypes.data, size=a.size, shared=True, vectored=True)
        offs = np.arange(0, 8 << 20, 2 * 8192)
        sm.sys_unused_runs(offs, np.full(offs.size, 8192))
        assert r.backed_bytes() == 4 << 20
        assert sm.calls == {"REMOVE_vectored": 1}
        del a
    finally:
        r.close()


def test_vectored_release_of_more_runs_than_iov_max_takes_several_calls():
    """2,500 runs: more than the kernel's IOV_MAX (1024) iovecs in one call, so three calls;
    every run is released, and nothing between them."""
    from sweeperd.sys.sysmem import IOV_MAX

    n = 2500
    r = SharedRegion.create("t", n * 2 * K4)
    try:
        a = np.frombuffer(r.mmap, dtype=np.uint8)
        a[:] = 7
        sm = SysMem(base=a.ctypes.data, size=a.size, shared=True, vectored=True)
        offs = np.arange(n, dtype=np.int64) * 2 * K4  # every other 4 KiB page
        sm.sys_unused_runs(offs, np.full(n, K4))
        assert n > 2 * IOV_MAX and sm.calls == {"REMOVE_vectored": 3}
        assert r.backed_bytes() == n * K4  # exactly the runs, by the kernel's count
        pages = a.reshape(n, 2, K4)
        assert not pages[:, 0].any() and (pages[:, 1] == 7).all()
        del a, pages
    finally:
        r.close()


def test_the_real_kernel_refuses_madv_free_on_shared_memory_and_go_s_fallback_runs():
    """MADV_FREE is for private anonymous memory: on a shared memfd mapping the kernel says
    EINVAL, and sysUnused falls back to DONTNEED for good, as Go does — which on a shared
    mapping frees nothing (the brief's measured fact), hence MADV_REMOVE for the heap."""
    r = SharedRegion.create("t", 4 << 20)
    try:
        a = np.frombuffer(r.mmap, dtype=np.uint8)
        a[:] = 3
        sm = SysMem(base=a.ctypes.data, size=a.size, shared=False, huge=0)  # tries FREE
        assert sm.advice_name == "FREE"
        with pytest.raises(OSError) as refused:
            Kernel().madvise(a.ctypes.data, 1 << 20, MADV["FREE"])
        assert refused.value.errno == errno.EINVAL  # the kernel's own answer, first hand
        sm.sys_unused(0, 1 << 20)
        assert sm.advice_name == "DONTNEED" and sm.calls == {"DONTNEED": 1}
        sm.sys_unused(1 << 20, 1 << 20)
        assert sm.calls == {"DONTNEED": 2}  # sticky: FREE is not tried again
        assert r.backed_bytes() == 4 << 20  # and nothing was freed
        del a
    finally:
        r.close()


def _vmas(lo, hi):
    out = []
    with open("/proc/self/smaps") as f:
        cur = None
        for line in f:
            head = line.split()[0]
            if "-" in head and len(line.split()) >= 5 and ":" not in head:
                s, e = (int(x, 16) for x in head.split("-"))
                cur = {"start": s, "end": e, "anon_huge": 0, "flags": ""}
                if s < hi and e > lo:
                    out.append(cur)
            elif cur is not None and line.startswith("AnonHugePages:"):
                cur["anon_huge"] = int(line.split()[1]) * 1024
            elif cur is not None and line.startswith("VmFlags:"):
                cur["flags"] = line.split(":", 1)[1]
    return out


def _thp_mapping(nbytes):
    m = mmap.mmap(-1, nbytes + HP, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    a = np.frombuffer(m, dtype=np.uint8)
    base = -(-a.ctypes.data // HP) * HP
    Kernel().madvise(base, nbytes, MADV["HUGEPAGE"])
    view = a[base - a.ctypes.data : base - a.ctypes.data + nbytes]
    view[:] = 1
    return m, a, view, base


def test_real_thp_head_and_tail_get_nohugepage_and_split():
    m, a, view, base = _thp_mapping(8 * HP)
    try:
        huge = sum(v["anon_huge"] for v in _vmas(base, base + 8 * HP))
        if huge == 0:
            not_here("the kernel granted no transparent huge page to a MADV_HUGEPAGE mapping "
                     "here (THP off in /sys/kernel/mm/transparent_hugepage, or memory too "
                     "fragmented)")
        # DONTNEED so the released pages read back as zero at once (MADV_FREE is lazy: the
        # old bytes stay readable until the kernel needs the memory)
        sm = SysMem(base=base, size=8 * HP, shared=False, huge=HP, madvdontneed=True)
        sm.sys_unused(HP + K4, 8192)  # 8 KiB inside the second huge page
        vmas = _vmas(base, base + 8 * HP)
        nh = [v for v in vmas if " nh" in v["flags"]]
        assert len(nh) == 1 and nh[0]["start"] == base + HP and nh[0]["end"] == base + 2 * HP
        after = sum(v["anon_huge"] for v in vmas)
        assert after == huge - HP  # that huge page was split; the others stay huge
        assert not view[HP + K4 : HP + K4 + 8192].any()  # released pages read as zero
    finally:
        del view, a
        m.close()


def test_vma_count_stays_bounded_under_a_pessimal_free_pattern():
    n = 32 * HP
    m, a, view, base = _thp_mapping(n)
    try:
        sm = SysMem(base=base, size=n, shared=False, huge=HP)
        for off in range(0, n, 16384):  # free every other 8 KiB page, one call each
            sm.sys_unused(off + 8192, 8192)
        vmas = _vmas(base, base + n)
        # NOHUGEPAGE goes on whole huge pages, so the mapping splits at most at huge page
        # boundaries: 32 VMAs here, not the ~2048 a per-page flag would make
        assert len(vmas) <= 2 * (n // HP) + 1
        assert max(int(os.popen("wc -l < /proc/self/maps").read()), 0) < 65530 // 2
    finally:
        del view, a
        m.close()
