"""The daemon's memory figures against the kernel's own, and the scavenger at work in it."""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from sweeperd.daemon.metrics import SAMPLE_S
from sweeperd.runtime import scavenge
from sweeperd.runtime.heap import PAGE_FREE, Heap, HeapHandle
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.sys.procmem import meminfo, process_memory
from sweeperd.sys.sysmem import OS_PAGE, Kernel, SysMem
from sweeperd.wire import protocol

from .daemon import Daemon

libc = ctypes.CDLL(None, use_errno=True)


def _kernel_backed(handle):
    a = handle["arena"]
    return os.stat(f"/proc/{a['pid']}/fd/{a['fd']}").st_blocks * 512


def _bracketed(read_kernel, read_daemon, tol=0.01):
    """The daemon's figure lies within the kernel's readings just before and after (±1%)."""
    for _ in range(20):
        k0 = read_kernel()
        v = read_daemon()
        k1 = read_kernel()
        lo, hi = min(k0, k1), max(k0, k1)
        if lo * (1 - tol) <= v <= hi * (1 + tol):
            return
    raise AssertionError(f"daemon says {v}, kernel says {k0}..{k1}")


def _sampled_each(read_kernel, read_daemon, keys, window_s, tol=0.05):
    """Each key's figure (``read_daemon()`` gives them all at once) was the kernel's
    (``read_kernel(key)``) at some moment of the last ``window_s`` seconds (a sampled figure):
    it lies within the kernel's readings over that window (±5%), in one of five windows.  The
    keys not yet passed are watched together: five processes cost one window, not five."""
    left = list(keys)
    for _ in range(5):
        seen: dict = {k: [] for k in left}
        t0 = time.monotonic()
        while time.monotonic() - t0 < window_s:
            for k in left:
                seen[k].append(read_kernel(k))
            time.sleep(0.02)
        v = read_daemon()
        for k in left:
            seen[k].append(read_kernel(k))
        left = [k for k in left
                if not min(seen[k]) * (1 - tol) <= v[k] <= max(seen[k]) * (1 + tol)]
        if not left:
            return
    raise AssertionError("; ".join(f"{k}: daemon says {v[k]}, kernel said "
                                   f"{min(seen[k])}..{max(seen[k])}" for k in left))


def test_every_byte_figure_matches_the_kernel(daemon):
    st = daemon.wait_for(lambda s: s["cycle"] >= 3, what="3 cycles")
    h = st["heap_handle"]
    _bracketed(lambda: _kernel_backed(h), lambda: daemon.status()["memory"]["heap_backed_bytes"])
    _bracketed(lambda: meminfo("Shmem"), lambda: daemon.status()["memory"]["system_shmem_bytes"])
    window = 2 * SAMPLE_S + 0.5  # PSS is the sampler's (it walks every page table entry)
    for p in st["memory"]["processes"]:
        pid = p["pid"]
        _bracketed(lambda pid=pid: process_memory(pid).rss_bytes,
                   lambda pid=pid: next(q["rss_bytes"] for q in daemon.status()["memory"]
                                        ["processes"] if q["pid"] == pid), tol=0.05)
    _sampled_each(lambda pid: process_memory(pid).pss_bytes,
                  lambda: {q["pid"]: q["pss_bytes"] for q in daemon.status()["memory"]
                           ["processes"]},
                  [p["pid"] for p in st["memory"]["processes"]], window)
    assert 0 <= daemon.status()["memory"]["pss_age_s"] <= window
    roles = {p["role"] for p in st["memory"]["processes"]}
    assert roles == {"coordinator", "sweeper", "mutator", "scavenger"}
    assert daemon.stop() == 0


def _resident(heap, pages):
    """mincore: which of these Go pages of the arena are in memory (page cache)."""
    out = np.zeros(pages.size, dtype=bool)
    vec = (ctypes.c_ubyte * 2)()
    base = heap.arena.ctypes.data
    for i, p in enumerate(pages.tolist()):
        if libc.mincore(ctypes.c_void_p(base + p * PAGE_SIZE), PAGE_SIZE, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        out[i] = bool(vec[0] & 1 or vec[1] & 1)
    return out


def test_free_os_memory_releases_for_real_while_mutators_run(daemon):
    st = daemon.wait_for(lambda s: s["cycle"] >= 3, what="3 cycles")
    before = st["scavenger"]["released_bytes_total"]
    out = subprocess.run([sys.executable, "-m", "sweeperd.cli", "scavenge", "--control",
                          daemon.control], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["ok"] and r["requested"] and r["by"] == "scavenger"
    st = daemon.wait_for(lambda s: s["scavenger"]["released_bytes_total"] > before,
                         what="the scavenger to release")
    heap = Heap.attach(HeapHandle.from_dict(st["heap_handle"]))
    try:
        deadline = time.monotonic() + 120  # (a count of tries would race a loaded machine)
        while time.monotonic() < deadline:  # mutators may reuse every released page first
            with heap.lock:  # a consistent view: nothing allocates or releases meanwhile
                released = np.flatnonzero((heap.page_span == PAGE_FREE) & (heap.scavenged == 1))
                res = _resident(heap, released[:4000])
            assert not res.any(), f"{int(res.sum())} released pages are still in memory"
            if released.size:
                break
            daemon.request(protocol.encode("scavenge"))
            time.sleep(0.05)
        assert released.size > 0, "no released page seen in 120 s"
    finally:
        heap.close()
    st = daemon.status()
    assert st["debug"]["exactly_once_violations"] == 0
    assert st["mutators"]["lost_objects"] == 0 and st["mutators"]["payload_errors"] == 0
    assert daemon.stop() == 0


def test_kill_9_scavenger_is_replaced_and_nothing_is_left_half_released(daemon):
    st = daemon.wait_for(lambda s: s["cycle"] >= 2, what="2 cycles")
    victim = next(w for w in st["workers"] if w["role"] == "scavenger")
    os.kill(victim["pid"], signal.SIGKILL)
    st = daemon.wait_for(lambda s: s["deaths"]["scavenger"] == 1 and any(
        w["role"] == "scavenger" and w["pid"] != victim["pid"] and w["state"] == "alive"
        for w in s["workers"]), what="a new scavenger")
    c = st["cycle"]
    st = daemon.wait_for(lambda s: s["cycle"] >= c + 2, what="2 more cycles")
    assert st["debug"]["exactly_once_violations"] == 0
    assert st["mutators"]["payload_errors"] == 0
    assert daemon.stop() == 0


def _mincore(addr: int, length: int) -> np.ndarray:
    """The kernel's residency of each OS page of [addr, addr + length), in one call."""
    vec = (ctypes.c_ubyte * (length // OS_PAGE))()
    if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return np.frombuffer(vec, dtype=np.uint8) & 1


class CheckingKernel(Kernel):
    """The real kernel; around each release, the kernel's own view of the range (mincore,
    a different interface from the SEEK_DATA count the scavenger reports)."""

    def __init__(self):
        super().__init__()
        self.resident_before = 0
        self.problems: list[str] = []

    def madvise(self, addr, length, advice):
        self.resident_before += int(_mincore(addr, length).sum()) * OS_PAGE
        super().madvise(addr, length, advice)
        if _mincore(addr, length).any():
            self.problems.append(f"{addr:#x}+{length:#x} still resident after release")
        if ctypes.string_at(addr, length).count(0) != length:
            self.problems.append(f"{addr:#x}+{length:#x} does not read back as zero")


def test_released_bytes_are_exactly_the_kernels_under_concurrent_mutators_and_sweepers(
        tmp_path):
    """This test is the scavenger (the daemon's is off); real mutators and sweepers run."""
    cfg = tmp_path / "noscav.toml"
    cfg.write_text("[scavenger]\nenabled = false\n")
    d = Daemon("--config", str(cfg), "--heap-mib", "64", "--sweepers", "2", "--mutators", "2",
               "--debug-checks")
    heap = None
    try:
        st = d.wait_for(lambda s: s["cycle"] >= 2, what="2 cycles")
        assert not any(w["role"] == "scavenger" for w in st["workers"])
        heap = Heap.attach(HeapHandle.from_dict(st["heap_handle"]))
        k = CheckingKernel()
        sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True,
                    kernel=k, vectored=False)
        reported = advised = 0
        c0 = st["cycle"]
        while d.status()["cycle"] < c0 + 4:  # releases race 4 cycles of allocation and sweep
            k.resident_before = 0
            r = scavenge.scavenge(heap, sm, 64)
            assert r.kernel_bytes == k.resident_before, "reported != what the kernel freed"
            reported += r.kernel_bytes
            advised += r.bytes
            time.sleep(0.002)
        print(f"released {reported} (kernel), {advised} advised")
        assert not k.problems, k.problems[:5]
        assert reported > 0 and advised >= reported
        st = d.status()
        assert st["debug"]["exactly_once_violations"] == 0
        assert st["mutators"]["lost_objects"] == 0 and st["mutators"]["payload_errors"] == 0
        assert st["mutators"]["objects_checked"] > 0
    finally:
        if heap is not None:
            heap.close()
        d.close()


def _backing_under(tmp_path, limit_mib):
    """Median and max of the arena's backing (the kernel's count) over 5 s of a daemon with
    a modest allocation rate and GOGC 400 (a goal far above the limit), after 10 cycles."""
    cfg = tmp_path / f"limit{limit_mib}.toml"
    cfg.write_text(f"[heap]\nsize_mib = 128\n[gc]\ngogc = 400\n[mutators]\nalloc_rate = "
                   f"100000\n[scavenger]\ncpu_fraction = 0.05\nmemory_limit_mib = {limit_mib}\n")
    d = Daemon("--config", str(cfg), "--sweepers", "1", "--mutators", "1")
    try:
        st = d.wait_for(lambda s: s["cycle"] >= 10, timeout=120, what="10 cycles")
        seen = []
        for _ in range(10):
            time.sleep(0.5)
            st = d.status()
            seen.append(st["memory"]["heap_backed_bytes"])
        assert d.stop() == 0
    finally:
        d.close()
    return sorted(seen)[len(seen) // 2], max(seen), st


def test_a_memory_limit_holds_the_heaps_backing_at_the_retain_goal(tmp_path):
    """GOMEMLIMIT = 24 MiB: the GC's goal drops to the limit less 3% (at least 1 MiB) and the
    scavenger releases down to 95% of the limit, so the backing stays there; the same run
    without a limit backs the whole 128 MiB arena."""
    from sweeperd.pacing.gcpace import memory_limit_goal

    mib = 1 << 20
    median, top, st = _backing_under(tmp_path, 24)
    assert st["heap"]["goal_bytes"] == memory_limit_goal(24 * mib)
    assert st["scavenger"]["retain_goal_bytes"] == int(24 * mib * 0.95) // 8192 * 8192
    assert median <= 1.1 * 24 * mib and top <= 1.5 * 24 * mib, (median / mib, top / mib)
    free_median, _, free_st = _backing_under(tmp_path, 0)
    assert free_st["heap"]["goal_bytes"] > 4 * 24 * mib
    assert free_median > 3 * 24 * mib, free_median / mib
