import numpy as np
import pytest

from sweeperd.runtime import sizeclasses as sc


def test_table_matches_go():
    assert sc.NUM_CLASSES == 68
    assert sc.CLASS_SIZE[1] == 8 and sc.CLASS_NELEMS[1] == 1024
    assert sc.CLASS_SIZE[6] == 64 and sc.CLASS_NELEMS[6] == 128
    assert sc.CLASS_SIZE[67] == 32768
    assert (sc.CLASS_NELEMS[1:] * sc.CLASS_SIZE[1:] <= sc.CLASS_NPAGES[1:] * sc.PAGE_SIZE).all()
    assert sc.CLASS_NWORDS.max() == sc.MAX_BITMAP_WORDS


@pytest.mark.parametrize("n,cls", [(1, 1), (8, 1), (9, 2), (64, 6), (65, 7), (32768, 67),
                                   (32769, 0)])
def test_size_to_class(n, cls):
    assert sc.size_to_class(n) == cls


def test_size_to_class_is_smallest_fit():
    for n in np.random.default_rng(1).integers(1, 32769, 500):
        c = sc.size_to_class(int(n))
        assert sc.CLASS_SIZE[c] >= n and (c == 1 or sc.CLASS_SIZE[c - 1] < n)


def test_bad_size():
    with pytest.raises(ValueError, match="positive"):
        sc.size_to_class(0)
