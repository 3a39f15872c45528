"""The memory start check: cgroup and meminfo readers over fake /proc and /sys roots, the pure
rule, ``memory_limit_mib = "cgroup"`` in the config and scenarios, memory deaths in the cycle
machine, and the platform check over fake platform facts."""

from __future__ import annotations

import contextlib
import shutil
import signal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.daemon import config
from sweeperd.daemon import cycle as c
from sweeperd.daemon.coordinator import death_cause, plan_memory
from sweeperd.daemon.cycle import Role, Slot
from sweeperd.sys import cgroup
from sweeperd.sys.sysmem import UnsupportedPlatform, check_platform
from sweeperd.workload import scenario

MIB = 1 << 20
V1_UNLIMITED = "9223372036854771712\n"


def _v1_root(tmp: Path, limits: dict[str, str], oom_kill: int = 0,
             avail_kb: int = 8 << 20) -> Path:
    (tmp / "proc/self").mkdir(parents=True)
    (tmp / "proc/meminfo").write_text(f"MemTotal: 16000000 kB\nMemAvailable: {avail_kb} kB\n")
    (tmp / "proc/self/cgroup").write_text(
        "9:name=systemd:/\n4:memory:/box/inner\n3:cpuset:/\n0::/\n")
    (tmp / "proc/self/mountinfo").write_text(
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    for rel, lim in limits.items():
        d = tmp / "sys/fs/cgroup/memory" / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.limit_in_bytes").write_text(lim)
        (d / "cgroup.procs").write_text("")
        (d / "memory.oom_control").write_text(
            f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kill}\n")
    (tmp / "sys/fs/cgroup/memory").mkdir(parents=True, exist_ok=True)
    (tmp / "sys/fs/cgroup/memory/cgroup.procs").write_text("")  # the mount's files, visible
    return tmp


def _v2_root(tmp: Path, limits: dict[str, str], avail_kb: int = 8 << 20) -> Path:
    (tmp / "proc/self").mkdir(parents=True)
    (tmp / "proc/meminfo").write_text(f"MemAvailable: {avail_kb} kB\n")
    (tmp / "proc/self/cgroup").write_text("0::/system.slice/app.service\n")
    (tmp / "proc/self/mountinfo").write_text(
        "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    for rel, lim in limits.items():
        d = tmp / "sys/fs/cgroup" / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.max").write_text(lim)
        (d / "cgroup.procs").write_text("")
        (d / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    (tmp / "sys/fs/cgroup").mkdir(parents=True, exist_ok=True)
    (tmp / "sys/fs/cgroup/cgroup.procs").write_text("")  # the mount's files, visible
    return tmp


def test_v1_limit_is_the_smallest_of_the_cgroup_and_its_ancestors(tmp_path):
    root = _v1_root(tmp_path, {"": V1_UNLIMITED, "box": str(300 * MIB),
                               "box/inner": str(500 * MIB)}, oom_kill=3)
    cg = cgroup.own_cgroup(root)
    assert cg is not None and cg.version == 1 and cg.path.endswith("memory/box/inner")
    assert cg.limit_bytes == 300 * MIB
    assert cgroup.oom_kills(cg) == 3
    assert cgroup.read_host(root) == cgroup.HostMemory(8 << 30, 300 * MIB)


def test_v1_unlimited_is_no_limit(tmp_path):
    root = _v1_root(tmp_path, {"": V1_UNLIMITED, "box": V1_UNLIMITED,
                               "box/inner": V1_UNLIMITED})
    cg = cgroup.own_cgroup(root)
    assert cg is not None and cg.limit_bytes is None and cgroup.oom_kills(cg) == 0


def test_v2_memory_max_and_events(tmp_path):
    root = _v2_root(tmp_path, {"system.slice": "max\n",
                               "system.slice/app.service": f"{320 * MIB}\n"})
    cg = cgroup.own_cgroup(root)
    assert cg is not None and cg.version == 2 and cg.limit_bytes == 320 * MIB
    assert cgroup.oom_kills(cg) == 2


def test_no_memory_cgroup_is_none(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("1:cpu:/\n")
    (tmp_path / "proc/self/mountinfo").write_text("")
    assert cgroup.own_cgroup(tmp_path) is None and cgroup.oom_kills(None) is None


@settings(max_examples=200, deadline=None)
@given(cg_text=st.text(max_size=200), mi_text=st.text(max_size=300),
       lim=st.one_of(st.text(max_size=30), st.integers(-5, 1 << 64).map(str)))
def test_garbage_in_the_files_gives_a_figure_or_none(tmp_path_factory, cg_text, mi_text, lim):
    """Whatever the kernel files hold, the readers give a limit (an int) or None, no crash."""
    root = _v1_root(tmp_path_factory.mktemp("g"), {"box/inner": lim})
    (root / "proc/self/cgroup").write_text(cg_text + "\n4:memory:/box/inner\n")
    (root / "proc/self/mountinfo").write_text(
        mi_text + "\n35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    (root / "proc/meminfo").write_text(f"MemAvailable: {lim} kB\n")
    cg = cgroup.own_cgroup(root)
    assert cg is None or cg.limit_bytes is None or isinstance(cg.limit_bytes, int)
    cgroup.oom_kills(cg)
    with contextlib.suppress(OSError):  # unreadable: an OSError naming the file, nothing else
        assert cgroup.mem_available(root) >= 0


def _hide(root: Path, mountinfo: str) -> Path:
    """The cgroup files still named by /proc/self/cgroup, but /sys remounted: no cgroup mount
    in mountinfo, /sys/fs/cgroup an empty directory."""
    (root / "proc/self/mountinfo").write_text(mountinfo)
    shutil.rmtree(root / "sys/fs/cgroup", ignore_errors=True)
    (root / "sys/fs/cgroup").mkdir(parents=True)
    return root


SYSFS_ONLY = "22 1 0:21 / /sys rw - sysfs sysfs rw\n"


def test_a_v1_memory_cgroup_named_but_not_mounted_is_said_and_cgroup_refused(tmp_path):
    root = _hide(_v1_root(tmp_path, {"box/inner": str(300 * MIB)}), SYSFS_ONLY)
    host = cgroup.read_host(root)
    assert host.cgroup_limit is None
    assert "v1 memory cgroup '/box/inner'" in host.unseen
    assert "mountinfo has no cgroup mount with the memory option" in host.unseen
    assert str(root / "sys/fs/cgroup") + " holds: empty" in host.unseen
    with pytest.raises(cgroup.NoCgroupLimit, match=r"cannot be read here: .*'/box/inner'"):
        cgroup.derive_limit(host, OVER)


def test_a_v1_mount_listed_but_hidden_under_a_tmpfs_is_unseen(tmp_path):
    """``mount -t tmpfs none /sys/fs/cgroup``: mountinfo still lists the memory mount below
    it, but none of its files can be seen."""
    root = _v1_root(tmp_path, {"": V1_UNLIMITED, "box/inner": str(300 * MIB)})
    info = (root / "proc/self/mountinfo").read_text()
    _hide(root, info + "99 31 0:99 / /sys/fs/cgroup rw - tmpfs none rw\n")
    host = cgroup.read_host(root)
    assert host.cgroup_limit is None and "'/box/inner'" in host.unseen


def test_a_v2_cgroup_named_but_not_mounted_is_said(tmp_path):
    root = _hide(_v2_root(tmp_path, {"system.slice/app.service": f"{320 * MIB}\n"}), "")
    host = cgroup.read_host(root)
    assert host.cgroup_limit is None
    assert "v2 memory cgroup '/system.slice/app.service'" in host.unseen
    assert "no cgroup2 mount" in host.unseen


def test_a_visible_cgroup_or_none_at_all_is_not_unseen(tmp_path_factory):
    v1 = _v1_root(tmp_path_factory.mktemp("v1"), {"box/inner": V1_UNLIMITED})
    v2 = _v2_root(tmp_path_factory.mktemp("v2"), {"system.slice/app.service": "max\n"})
    assert cgroup.unseen_cgroup(v1) == cgroup.unseen_cgroup(v2) == ""
    assert cgroup.read_host(v1).unseen == ""
    root_v2 = _hide(_v2_root(tmp_path_factory.mktemp("r"), {}), "")  # 0::/ : the root, no limit
    (root_v2 / "proc/self/cgroup").write_text("0::/\n")
    assert cgroup.unseen_cgroup(root_v2) == ""
    with pytest.raises(cgroup.NoCgroupLimit, match="has none"):  # as before: no limit at all
        cgroup.derive_limit(cgroup.HostMemory(8 << 30, None), OVER)


def test_a_plan_with_a_fixed_limit_still_runs_where_the_cgroup_is_unseen(tmp_path):
    root = _hide(_v1_root(tmp_path, {"box/inner": str(300 * MIB)}), SYSFS_ONLY)
    host = cgroup.read_host(root)
    cfg = config.from_dict({"scavenger": {"memory_limit_mib": 256}, "heap": {"size_mib": 512}})
    out, commit_limit = plan_memory(cfg, host)
    assert out.scavenger.memory_limit_mib == 256 and commit_limit == 0
    cfg = config.from_dict({"scavenger": {"memory_limit_mib": "cgroup"}})
    with pytest.raises(cgroup.NoCgroupLimit, match="/box/inner"):
        plan_memory(cfg, host)


@settings(max_examples=200, deadline=None)
@given(cg_text=st.text(max_size=200), mi_text=st.text(max_size=300))
def test_unseen_cgroup_of_garbage_is_a_line_or_nothing(tmp_path_factory, cg_text, mi_text):
    root = _v1_root(tmp_path_factory.mktemp("u"), {"box/inner": str(300 * MIB)})
    (root / "proc/self/cgroup").write_text(cg_text)
    (root / "proc/self/mountinfo").write_text(mi_text)
    text = cgroup.unseen_cgroup(root)
    assert isinstance(text, str) and (text == "" or "memory cgroup" in text)


def test_the_machine_s_own_cgroup_reads():
    host = cgroup.read_host()
    assert host.mem_available > 0


# --- the rule --------------------------------------------------------------------------------

HOST = cgroup.HostMemory(mem_available=8 << 30, cgroup_limit=320 * MIB)
OVER = 100 * MIB


def test_no_limit_and_a_heap_larger_than_the_cgroup_is_refused_naming_both():
    with pytest.raises(cgroup.TooLarge) as e:
        cgroup.check_fit(2048 * MIB, 0, HOST, OVER)
    assert "2048 MiB" in str(e.value) and "320 MiB" in str(e.value)
    assert "heap.size_mib" in str(e.value)


def test_a_memory_limit_over_the_cgroup_is_refused_naming_both():
    with pytest.raises(cgroup.TooLarge) as e:
        cgroup.check_fit(2048 * MIB, 300 * MIB, HOST, OVER)
    assert "300 MiB" in str(e.value) and "320 MiB" in str(e.value)
    assert "scavenger.memory_limit_mib" in str(e.value)


def test_a_large_sparse_heap_is_fine_under_a_memory_limit_that_fits():
    cgroup.check_fit(2048 * MIB, 200 * MIB, HOST, OVER)  # address space only


def test_mem_available_bounds_a_host_without_a_cgroup_limit():
    host = cgroup.HostMemory(mem_available=1 << 30, cgroup_limit=None)
    cgroup.check_fit(512 * MIB, 0, host, OVER)
    with pytest.raises(cgroup.TooLarge, match="MemAvailable"):
        cgroup.check_fit(2 << 30, 0, host, OVER)


def test_derived_limit_is_the_cgroup_less_the_daemon():
    assert cgroup.derive_limit(HOST, OVER) == 220 * MIB
    with pytest.raises(cgroup.NoCgroupLimit, match=r"scavenger\.memory_limit_mib"):
        cgroup.derive_limit(cgroup.HostMemory(8 << 30, None), OVER)
    with pytest.raises(cgroup.TooLarge):
        cgroup.derive_limit(cgroup.HostMemory(8 << 30, 110 * MIB), OVER)


def test_derived_limit_is_90_percent_of_a_large_cgroup_as_automemlimit_sets_gomemlimit():
    host = cgroup.HostMemory(64 << 30, 8192 * MIB)
    assert cgroup.derive_limit(host, OVER) == int(8192 * MIB * 0.9)  # 7372.8 MiB < 8092 MiB


@given(cgl=st.integers(0, 1 << 44), over=st.integers(0, 1 << 34))
def test_derived_limit_is_never_over_90_percent_nor_over_the_cgroup_less_the_daemon(cgl, over):
    try:
        lim = cgroup.derive_limit(cgroup.HostMemory(1 << 44, cgl), over)
    except cgroup.TooLarge:
        assert min(int(cgl * 0.9), cgl - over) < cgroup.MIN_DERIVED_LIMIT_MIB * MIB
        return
    assert lim <= 0.9 * cgl and lim <= cgl - over and lim >= cgroup.MIN_DERIVED_LIMIT_MIB * MIB


@settings(max_examples=300, deadline=None)
@given(heap=st.integers(1, 1 << 44), lim=st.integers(0, 1 << 44),
       avail=st.integers(0, 1 << 44), cgl=st.one_of(st.none(), st.integers(0, 1 << 44)),
       over=st.integers(0, 1 << 34))
def test_the_rule_refuses_exactly_what_cannot_be_backed(heap, lim, avail, cgl, over):
    host = cgroup.HostMemory(avail, cgl)
    cap = avail if cgl is None else min(avail, cgl - over)
    asked = lim if lim else heap
    try:
        cgroup.check_fit(heap, lim, host, over)
        assert asked <= cap
    except cgroup.TooLarge:
        assert asked > cap


def test_plan_memory_resolves_cgroup_and_sets_the_commit_limit():
    cfg = config.from_dict({"scavenger": {"memory_limit_mib": "cgroup"},
                            "heap": {"size_mib": 2048}})
    host = cgroup.HostMemory(8 << 30, 1024 * MIB)
    out, commit = plan_memory(cfg, host)
    assert isinstance(out.scavenger.memory_limit_mib, int)
    assert 0 < out.scavenger.memory_limit_mib < 1024
    assert out.scavenger.memory_limit_bytes() <= commit < 1024 * MIB
    with pytest.raises(cgroup.NoCgroupLimit):
        plan_memory(cfg, cgroup.HostMemory(8 << 30, None))


# --- config and scenarios ----------------------------------------------------------------------

@pytest.mark.parametrize("v", ["cgroup", 0, 400])
def test_memory_limit_takes_a_figure_or_cgroup(v):
    assert config.from_dict({"scavenger": {"memory_limit_mib": v}}).scavenger.memory_limit_mib == v


@pytest.mark.parametrize("v", ["Cgroup", "", "max", -1, 1.5, True, [1], {"a": 1}])
def test_memory_limit_refuses_anything_else_naming_the_key(v):
    with pytest.raises(config.ConfigError, match=r"scavenger\.memory_limit_mib"):
        config.from_dict({"scavenger": {"memory_limit_mib": v}})


def test_a_scenario_may_derive_its_limit_from_the_cgroup():
    text = scenario.shipped()["steady"].replace(
        "[scenario]", '[scenario]\nmemory_limit_mib = "cgroup"', 1)
    sc = scenario.parse(text)
    assert sc.scenario.memory_limit_mib == "cgroup"
    assert scenario.parse(sc.to_toml()).scenario.memory_limit_mib == "cgroup"
    assert sc.scaled(0.5).scenario.memory_limit_mib == "cgroup"
    with pytest.raises(scenario.ScenarioError, match="memory_limit_mib"):
        scenario.parse(text.replace('"cgroup"', '"cgroupx"'))


# --- memory deaths in the cycle machine --------------------------------------------------------

def test_repeated_memory_deaths_give_up_with_a_memory_reason():
    m = c.GCCycle(c.Params(max_deaths=100, max_memory_deaths=3), sweepgen=4, now=0.0)
    mu = Slot(Role.MUTATOR, 0)
    m.handle(c.Started(mu, 0.0))
    out = []
    for i in range(4):
        m.handle(c.Tick(float(i)))
        out = m.handle(c.Died(mu, memory=True))
        if i < 3:
            assert not any(isinstance(a, c.GiveUp) for a in out)
            m.handle(c.Tick(float(i) + 0.5))
            m.handle(c.Started(mu, float(i) + 0.5))
    assert [a for a in out if isinstance(a, c.GiveUp)] == [c.GiveUp(Role.MUTATOR, 4, 60.0, True)]


# --- the platform ------------------------------------------------------------------------------

def test_check_platform_names_what_is_missing():
    with pytest.raises(UnsupportedPlatform, match=r"needs Linux.*darwin"):
        check_platform("darwin", True)
    with pytest.raises(UnsupportedPlatform, match="memfd_create"):
        check_platform("linux", False)
    check_platform()  # this machine has both


# --- how a worker died -------------------------------------------------------------------------

def test_death_causes_are_named_and_memory_only_where_the_kernel_says_so():
    assert death_cause(-signal.SIGKILL, 3) == (
        True, "killed by SIGKILL from the OOM killer (memory cgroup oom_kill 3)")
    assert death_cause(-signal.SIGKILL, None) == (False, "killed by SIGKILL")  # ours, or unknown
    memory, why = death_cause(-signal.SIGBUS, None)
    assert memory and why.startswith("killed by SIGBUS")
    assert death_cause(1, None) == (False, "exit 1")
    assert death_cause(None, None) == (False, "exit None")
    assert death_cause(-signal.SIGSEGV, 5) == (False, "killed by SIGSEGV")
    assert death_cause(-200, None) == (False, "killed by signal 200")


def test_a_cgroup_the_processes_alone_fill_says_so_not_lower_the_heap():
    """The newcomer's case: --heap-mib 8 in a 100 MiB cgroup was told to lower the heap."""
    host = cgroup.HostMemory(mem_available=20 << 30, cgroup_limit=100 << 20)
    with pytest.raises(cgroup.TooLarge) as e:
        cgroup.check_fit(8 << 20, 0, host, cgroup.overhead_bytes(7, 2, 8 << 20))
    msg = str(e.value)
    assert "give the cgroup more memory, or run fewer workers" in msg, msg
    assert "lower the heap" not in msg
