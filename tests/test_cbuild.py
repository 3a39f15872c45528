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


@pytest.mark.parametrize("which", ["c", "sweeperd", "root"])
def test_a_cache_others_may_write_is_refused(cache, which):
    """Every component from the cache root down: ``$XDG_CACHE_HOME``, ``sweeperd``, ``c``."""
    src = cache / "k.c"
    src.write_text(SRC)
    d = cache / "cache" / "sweeperd" / "c"
    d.mkdir(parents=True)
    {"c": d, "sweeperd": d.parent, "root": d.parent.parent}[which].chmod(0o777)
    assert cbuild.shared_library(src, "k") is None
    assert "may be written by others (mode 777)" in cbuild.last_error


def test_cc_with_flags_builds_and_an_old_build_is_removed(cache, monkeypatch):
    src = cache / "k.c"
    src.write_text(SRC)
    first = cbuild.shared_library(src, "k")
    assert first is not None, cbuild.last_error
    monkeypatch.setenv("CC", f"{os.environ.get('CC') or 'cc'} -O1")  # flags in CC: a new key
    second = cbuild.shared_library(src, "k")
    assert second is not None and second != first, cbuild.last_error
    assert ctypes.CDLL(str(second)).answer() == 42
    assert not first.exists()  # the older build of the same name is gone


def test_no_compiler_and_a_failing_build_say_why(cache, monkeypatch):
    src = cache / "k.c"
    src.write_text("this is not C\n")
    assert cbuild.shared_library(src, "k") is None
    assert "failed on k.c" in cbuild.last_error
    monkeypatch.setenv("CC", "no-such-cc-anywhere")
    assert cbuild.shared_library(src, "k") is None
    assert "no C compiler (no-such-cc-anywhere)" in cbuild.last_error


def test_a_compiler_that_writes_nothing_leaves_nothing(cache, monkeypatch):
    """``CC=true`` exits 0 without a library: refused, and no empty file is kept to be
    loaded (and fail) forever after."""
    src = cache / "k.c"
    src.write_text(SRC)
    monkeypatch.setenv("CC", "true")
    assert cbuild.shared_library(src, "k") is None
    assert "exited 0 but wrote no .so file" in cbuild.last_error
    assert not list((cache / "cache" / "sweeperd" / "c").glob("*.so"))


def test_the_cache_is_made_private_whatever_the_umask(cache):
    """A umask of 0002 (group-writable files) must not make the cache refuse itself."""
    src = cache / "k.c"
    src.write_text(SRC)
    old = os.umask(0o002)
    try:
        lib = cbuild.shared_library(src, "k")
    finally:
        os.umask(old)
    assert lib is not None, cbuild.last_error
    for d in (lib.parent, lib.parent.parent, lib.parent.parent.parent):
        assert d.stat().st_mode & 0o022 == 0, d
