import mmap
import os
import time

import numpy as np

from sweeperd.sys.procmem import meminfo, process_memory
from sweeperd.sys.shm import SharedRegion


def test_rss_and_pss_follow_a_shared_region_as_the_kernel_counts_it():
    r = SharedRegion.create("t", 64 << 20)
    try:
        shmem0 = meminfo("Shmem")
        before = process_memory(os.getpid())
        a = np.frombuffer(r.mmap, dtype=np.uint8)
        a[:] = 1
        after = process_memory(os.getpid())
        assert after.rss_bytes - before.rss_bytes >= 60 << 20
        assert after.pss_bytes - before.pss_bytes >= 60 << 20  # mapped by this process alone
        assert meminfo("Shmem") - shmem0 >= 60 << 20
        del a
        # Fresh private anonymous pages, touched, and one more descriptor.  Not a bytearray:
        # glibc may serve it from heap memory an earlier test freed but left resident (its
        # dynamic mmap threshold), and then RssAnon does not move at all.
        private = mmap.mmap(-1, 32 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        np.frombuffer(private, dtype=np.uint8)[:] = 1
        fd = os.open("/dev/null", os.O_RDONLY)
        later = process_memory(os.getpid())
        assert later.anon_bytes - after.anon_bytes >= 30 << 20 and later.fds == after.fds + 1
        os.close(fd)
        private.close()
    finally:
        r.close()


def test_fake_proc_root(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "statm").write_text("100 10 5 1 0 3 0\n")
    (tmp_path / "42" / "smaps_rollup").write_text("Rss: 40 kB\nPss: 24 kB\n")
    (tmp_path / "42" / "status").write_text("Name: x\nRssAnon:\t  12 kB\nRssFile: 3 kB\n")
    (tmp_path / "42" / "fd").mkdir()
    for i in range(3):
        (tmp_path / "42" / "fd" / str(i)).write_text("")
    # a command name with a space and a parenthesis; utime 250, stime 50 ticks
    tail = " ".join(["0"] * 10 + ["250", "50"] + ["0"] * 30)
    (tmp_path / "42" / "stat").write_text(f"42 (a b) c) S {tail}\n")
    (tmp_path / "meminfo").write_text("MemTotal: 100 kB\nShmem: 8 kB\n")
    pm = process_memory(42, root=str(tmp_path))
    assert pm.rss_bytes == 10 * os.sysconf("SC_PAGE_SIZE") and pm.pss_bytes == 24 * 1024
    assert pm.anon_bytes == 12 * 1024 and pm.fds == 3
    assert pm.cpu_seconds == 300 / os.sysconf("SC_CLK_TCK")
    assert meminfo("Shmem", root=str(tmp_path)) == 8 * 1024
    assert process_memory(43, root=str(tmp_path)) is None


def test_cpu_seconds_of_this_process_grow_with_its_work():
    from sweeperd.sys.procmem import cpu_seconds

    before = cpu_seconds(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    assert cpu_seconds(os.getpid()) - before >= 0.2
