import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.sys.shm import RegionHandle, SharedRegion


def test_sparse_until_touched_and_backing_is_the_kernels():
    r = SharedRegion.create("t", 64 << 20)
    try:
        assert r.backed_bytes() == 0
        a = np.frombuffer(r.mmap, dtype=np.uint8)
        a[: 8 << 20] = 1
        assert r.backed_bytes() == 8 << 20
        assert os.fstat(r.fd).st_blocks * 512 == 8 << 20
        del a
    finally:
        r.close()


def test_attach_sees_same_memory():
    r = SharedRegion.create("t", 1 << 20)
    try:
        other = SharedRegion.attach(RegionHandle.from_dict(r.handle.to_dict()))
        r.mmap[:4] = b"abcd"
        assert other.mmap[:4] == b"abcd"
        other.close()
    finally:
        r.close()


def test_bad_size_and_bad_handle():
    with pytest.raises(ValueError, match="multiple"):
        SharedRegion.create("t", 1000)
    r = SharedRegion.create("t", 1 << 20)
    try:
        with pytest.raises(ValueError, match="expected"):
            SharedRegion.attach(RegionHandle(r.handle.pid, r.fd, 2 << 20))
    finally:
        r.close()


def test_close_with_live_views_is_loud():
    r = SharedRegion.create("t", 1 << 20)
    a = np.frombuffer(r.mmap, dtype=np.uint8)
    with pytest.raises(RuntimeError, match="views"):
        r.close()
    del a
    r.close()


def test_backed_in_counts_the_kernels_blocks_of_just_those_ranges():
    r = SharedRegion.create("t", 1 << 20)
    try:
        a = np.frombuffer(r.mmap, dtype=np.uint8)
        for page in (0, 1, 2, 10, 200, 255):  # 4 KiB pages
            a[page * 4096] = 1
        assert r.backed_in([0], [1 << 20]) == 6 * 4096 == r.backed_bytes()
        assert r.backed_in([0, 40960], [8192, 4096 * 200]) == 2 * 4096 + 2 * 4096
        assert r.backed_in([12288], [4096 * 7]) == 0  # a hole
        assert r.backed_in([255 * 4096], [4096]) == 4096  # data up to the file's end
        assert r.backed_in([], []) == 0
        del a
    finally:
        r.close()


def _seek_data_count(fd: int, off: int, n: int) -> int:
    """The kernel's allocated bytes of [off, off+n) read another way: SEEK_DATA/SEEK_HOLE."""
    import errno
    import os

    total, pos, end = 0, off, off + n
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        if data >= end:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        total += min(hole, end) - data
        pos = hole
    return total


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_backed_in_agrees_with_seek_data_on_any_ranges(data):
    """mincore (what backed_in reads) against SEEK_DATA/SEEK_HOLE, on random backing and
    random ranges: dense ones (one call over their span) and thin ones far apart (a call
    each)."""
    npages = 1 << 17  # 512 MiB of 4 KiB pages: room for ranges thinner than the slack
    r = SharedRegion.create("t", npages * 4096)
    try:
        a = np.frombuffer(r.mmap, dtype=np.uint8)
        touched = data.draw(st.lists(st.integers(0, npages - 1), max_size=300))
        for p in touched:
            a[p * 4096] = 1
        ranges = data.draw(st.lists(st.tuples(st.integers(0, npages - 1), st.integers(1, 64)),
                                    max_size=20))
        ranges = [(o, min(n, npages - o)) for o, n in ranges]
        offs = [o * 4096 for o, _ in ranges]
        lens = [n * 4096 for _, n in ranges]
        want = sum(_seek_data_count(r.fd, o, n) for o, n in zip(offs, lens, strict=True))
        assert r.backed_in(offs, lens) == want
        assert r.backed_in([0], [npages * 4096]) == r.backed_bytes()
        with pytest.raises(ValueError):
            r.backed_in([100], [4096])  # not page aligned
        del a
    finally:
        r.close()
