"""``memory_limit_mib = "cgroup"`` on a real v1 memory cgroup (issue 18): the daemon derives 90%
of the cgroup's limit, seen through GOGC off, whose heap goal is that limit's goal alone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sweeperd.pacing import gcpace

from .daemon import ask
from .test_memory_pressure import _addresses, _conf, _finish, _run_in, memcg  # noqa: F401

MIB = 1 << 20


@pytest.mark.parametrize("where", ["config", "scenario"])
def test_gogc_off_under_the_limit_derived_from_a_4_gib_cgroup_paces_to_90_percent_of_it(
        memcg: Path, tmp_path: Path, where: str) -> None:  # noqa: F811
    """A 4096 MiB cgroup, a 256 MiB heap: the daemon's own (7 processes, 2 mutators, the
    metadata: ~324 MiB) leaves 3772 MiB, so 90% (3686 MiB) is the limit; the goal is it less
    3%."""
    import zmq

    (memcg / "memory.limit_in_bytes").write_text(str(4096 * MIB))
    if where == "config":
        conf = _conf(tmp_path, '[heap]\nsize_mib = 256\n[gc]\ngogc = "off"\n'
                     '[scavenger]\nmemory_limit_mib = "cgroup"\n')
    else:
        sc = tmp_path / "off.toml"
        sc.write_text('[scenario]\nname = "off"\nheap_mib = 256\ngogc = "off"\n'
                      'memory_limit_mib = "cgroup"\n\n[[phase]]\nseconds = 600\nlive_mib = 32\n'
                      "garbage_mib_s = 8\n")
        conf = _conf(tmp_path, f'[mutators]\nscenario = "{sc}"\n')
    p = _run_in(memcg, conf, "--duration", "600")
    ctx = zmq.Context()
    try:
        _, control = _addresses(p, 120)
        st = None
        deadline = time.monotonic() + 120
        while st is None:
            st = ask(ctx, control, "status", 30)
            assert st is not None or time.monotonic() < deadline, "no status in 120 s"
        assert st["heap"]["goal_bytes"] == gcpace.memory_limit_goal(3686 * MIB), st["heap"]
    finally:
        ctx.term()
        p.terminate()
        code, _, err = _finish(p, 120)
    assert code == 0, err[-4000:]
