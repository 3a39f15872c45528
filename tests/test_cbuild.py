"""Building the compiled kernels: once per machine, from a cache only this user may write,
nothing stale, and a clear reason when it cannot (real cc)."""

from __future__ import annotations

import ctypes
import os
import shutil

import pytest

from sweeperd.sys import cbuild

from .conftest import not_here

SRC = "int answer(void) { return 42; }\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    if shutil.which(os.environ.get("CC") or "cc") is None:
        not_here("no C compiler")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_a_source_builds_once_and_loads(cache):
    src = cache / "k.c"
    src.write_text(SRC)
    lib = cbuild.shared_library(src, "k")
    assert lib is not None, cbuild.last_error
    assert ctypes.CDLL(str(lib)).answer() == 42
    mtime = lib.stat().st_mtime_ns
    assert cbuild.shared_library(src, "k") == lib and lib.stat().st_mtime_ns == mtime
    src.write_text(SRC.replace("42", "43"))  # an edit: a new library, never the stale one
    lib2 = cbuild.shared_library(src, "k")
    assert lib2 is not None and lib2 != lib and ctypes.CDLL(str(lib2)).answer() == 43
    assert not [p for p in lib.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_cache_others_may_write_is_refused(cache):
    src = cache / "k.c"
    src.write_text(SRC)
    d = cache / "cache" / "sweeperd" / "c"
    d.mkdir(parents=True)
    d.chmod(0o777)
    assert cbuild.shared_library(src, "k") is None
    assert "may be written by others" in cbuild.last_error


def test_no_compiler_and_a_failing_build_say_why(cache, monkeypatch):
    src = cache / "k.c"
    src.write_text("this is not C\n")
    assert cbuild.shared_library(src, "k") is None
    assert "failed on k.c" in cbuild.last_error
    monkeypatch.setenv("CC", "no-such-cc-anywhere")
    assert cbuild.shared_library(src, "k") is None
    assert "no C compiler (no-such-cc-anywhere)" in cbuild.last_error
