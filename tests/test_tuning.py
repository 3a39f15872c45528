import platform

import pytest

from sweeperd.sys.tuning import keep_malloc_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_mallopt_thresholds_are_accepted_by_glibc():
    assert keep_malloc_memory() is True
