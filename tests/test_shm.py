import os

import numpy as np
import pytest

from sweeperd.shm import RegionHandle, SharedRegion


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
