"""Runs of pages, against a plain Python reference on random masks."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sweeperd.runtime.runs import first_run, run_pages, runs


def _ref_runs(mask):
    out, i = [], 0
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            out.append((i, j - i))
            i = j
        else:
            i += 1
    return out


@given(st.lists(st.booleans(), max_size=200), st.integers(1, 20))
def test_runs_first_run_and_pages_match_the_reference(bits, n):
    mask = np.array(bits, dtype=bool)
    s, ln = runs(mask)
    ref = _ref_runs(bits)
    assert list(zip(s.tolist(), ln.tolist(), strict=True)) == ref
    fit = [a for a, b in ref if b >= n]
    assert first_run(mask, n) == (fit[0] if fit else -1)
    assert run_pages(s, ln).tolist() == [i for i, b in enumerate(bits) if b]


@given(st.lists(st.integers(0, 300), unique=True, max_size=80))
def test_consecutive_runs_cover_the_pages_and_are_maximal(pages):
    from sweeperd.runtime.runs import consecutive

    pages = sorted(pages)
    starts, lengths = consecutive(np.array(pages, dtype=np.int64))
    assert [p for s, n in zip(starts, lengths, strict=True) for p in range(s, s + n)] == pages
    assert all(starts[i] + lengths[i] < starts[i + 1] for i in range(len(starts) - 1))
