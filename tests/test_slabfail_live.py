"""slabfail on the live kernel (tracepoint mode): one real slab allocation failure, seen exactly.

The workload (tests/incident1_workloads.py) makes ``kmem_cache_alloc(filp_cachep)`` return NULL for a
process named ``slabvictim`` in its own cgroup v1 memory cgroup; ``open()`` then fails with ENOMEM.
Needs root and cgroup v1's memory controller (this machine has both).
"""
import errno
import io
import os
import signal

import pytest
from rich.console import Console

import incident1_workloads as wl
from bpftools.recording import read_recording
from bpftools.iostall.slab import parse_memcg_cache
from bpftools.kernel.capabilities import kprobes_available
from bpftools.kernel.tracefs import tracepoint_fields

pytestmark = pytest.mark.root


@pytest.fixture
def memcg():
    why = wl.memcg_available()
    if why:
        pytest.skip(why)
    return "/bpftools-slabfail-%d" % os.getpid()


def _has_tp_name():
    return "name" in (tracepoint_fields("kmem", "kmem_cache_alloc") or ())


def test_the_failed_filp_allocation_with_cache_caller_gfp_stack_and_cgroup(tmp_path, memcg):
    tool = wl.Tool(str(tmp_path), "slabfail", "--json", "-d", "60")
    with wl.SlabFailure() as victim:
        tool.stop()
    assert tool.returncode == 0, tool.err
    assert victim.errno == errno.ENOMEM
    mine = [e for e in tool.json_lines() if e["tgid"] == victim.pid]
    assert len(mine) == 1, mine
    e = mine[0]
    assert (e["type"], e["kind"], e["source"], e["comm"], e["tid"]) == (
        "slab_failure", "alloc", "kmem_cache_alloc", "slabvictim", victim.tid)
    assert e["cache"] == ("filp" if _has_tp_name() else None)
    assert e["call_site"] == "alloc_empty_file"
    assert e["gfp_flags"] == ["GFP_KERNEL"] and e["bytes_req"] > 0
    assert e["accounted"] is True                      # filp is a SLAB_ACCOUNT cache
    assert e["cgroup"] == memcg
    assert e["kstack"][0] == "kmem_cache_alloc_noprof" or e["kstack"][0] == "kmem_cache_alloc"
    assert e["kstack"][1] == "alloc_empty_file"
    assert "do_sys_openat2" in e["kstack"]
    assert "tracepoint mode" in tool.err


def test_pid_filter_leaves_out_the_victim(tmp_path, memcg):
    tool = wl.Tool(str(tmp_path), "slabfail", "--json", "-d", "60", "-p", str(os.getpid()))
    with wl.SlabFailure():
        tool.stop()
    assert tool.returncode == 0, tool.err
    assert tool.json_lines() == []


def test_cgroup_filter_keeps_only_the_victims_cgroup(tmp_path, memcg):
    tool = wl.Tool(str(tmp_path), "slabfail", "--json", "-d", "60", "--cgroup", memcg)
    with wl.SlabFailure() as victim:
        tool.stop()
    events = tool.json_lines()
    assert [(e["tgid"], e["cgroup"]) for e in events] == [(victim.pid, memcg)]


def test_ctrl_c_keeps_the_recording_and_the_report_shows_the_same_line(tmp_path, memcg):
    rec_path = str(tmp_path / "slab.jsonl")
    tool = wl.Tool(str(tmp_path), "slabfail", "--record", rec_path)
    with wl.SlabFailure() as victim:
        tool.stop(signal.SIGINT)
    assert tool.returncode == 130, tool.err
    live = [line for line in tool.out.splitlines() if " %d " % victim.pid in line]
    assert len(live) == 1 and "alloc_empty_file" in live[0] and memcg in live[0]
    rec = read_recording(rec_path)
    assert rec.header["tool"] == "slabfail" and rec.trailer["interrupted"] is True
    assert rec.events[0]["type"] == "mode" and "WANT_SLAB" in rec.events[0]["flags"]
    from bpftools.tools.slabfail import render_recording
    buf = io.StringIO()
    render_recording(rec, Console(file=buf, width=200))
    assert live[0] in buf.getvalue().splitlines()


def test_folded_output_counts_the_failure_under_its_stack(tmp_path, memcg):
    tool = wl.Tool(str(tmp_path), "slabfail", "-f", "-d", "60")
    with wl.SlabFailure():
        tool.stop()
    assert tool.returncode == 0, tool.err
    label = "[slab fail %s]" % ("filp" if _has_tp_name() else "alloc_empty_file")
    mine = [line for line in tool.out.splitlines() if line.startswith("slabvictim;")]
    assert len(mine) == 1
    stack, count = mine[0].rsplit(" ", 1)
    assert count == "1"
    assert stack.endswith(";do_sys_openat2;do_filp_open;path_openat;alloc_empty_file;kmem_cache_alloc_noprof;" + label)


def test_interval_tables_count_the_failure_once(tmp_path, memcg):
    tool = wl.Tool(str(tmp_path), "slabfail", "1", "3")
    with wl.SlabFailure():
        tool.wait()
    assert tool.returncode == 0, tool.err
    tables = [block for block in tool.out.split("\n\n") if block.strip()]
    assert len(tables) == 3
    rows = [line.split() for t in tables for line in t.splitlines()[1:]]
    assert [r for r in rows if r[-1] == memcg] == [["1", "filp" if _has_tp_name() else "?", "alloc_empty_file", memcg]]


def test_kprobe_mode_without_kprobes_is_a_clear_error(tmp_path):
    if kprobes_available():
        pytest.skip("this kernel has kprobes")
    proc = wl.run_cli("slabfail", "--mode", "kprobe", "-d", "1")
    assert proc.returncode == 5
    assert proc.stderr.strip() == ("bpftools: error: missing kernel feature: kprobes (CONFIG_KPROBES) for slabfail; "
                                   "try: --mode tracepoint")


def test_ebpf_prints_the_plan_and_the_flags_this_kernel_needs():
    proc = wl.run_cli("slabfail", "--ebpf")
    assert proc.returncode == 0, proc.stderr
    cflags = [line for line in proc.stdout.splitlines() if line.startswith("// cflags:")][0].split()
    expected = {"-DWANT_SLAB", "-DHAVE_TP_KMALLOC"}
    if _has_tp_name():
        expected.add("-DHAVE_TP_NAME")
    assert expected <= set(cflags)
    assert "TRACEPOINT_PROBE(kmem, kmem_cache_alloc)" in proc.stdout


@pytest.mark.parametrize("name, expected", [
    ("kmalloc-1024(1793:c8ed4b2c05cb)", ("kmalloc-1024", 1793, "c8ed4b2c05cb", None)),
    ("ip6_dst_cache(0:" + "ab" * 32 + ")", ("ip6_dst_cache", 0, "ab" * 32, "ab" * 32)),
    ("biovec-64", None),
    (None, None),
])
def test_rhel7_memcg_cache_names_are_parsed(name, expected):
    got = parse_memcg_cache(name)
    if expected is None:
        assert got is None
    else:
        container = got["container"]["container_id"] if got["container"] else None
        assert (got["base"], got["memcg_id"], got["cgroup"], container) == expected


A01_CACHE = "kmalloc-1024(1793:c8edefa90517e21bc691deef20c17220af0f0ac69962cc51007d372e7dd40256)"   # moby#35545


def test_the_a01_cache_name_fits_the_record_and_names_the_container():
    """The real 3.10.0-957 per-memcg cache name of ../shared/corpus/dmesg/A01 (85 bytes) fits the
    record's name field whole, and gives the memcg id and the container id."""
    from test_probe_constants import H
    assert len(A01_CACHE) < H["NAME_LEN"]
    got = parse_memcg_cache(A01_CACHE)
    assert (got["base"], got["memcg_id"], got["truncated"]) == ("kmalloc-1024", 1793, False)
    assert got["container"]["container_id"] == "c8edefa90517e21bc691deef20c17220af0f0ac69962cc51007d372e7dd40256"


@pytest.mark.parametrize("cut, prefix", [(A01_CACHE[:31], "c8edefa90517e"), (A01_CACHE[:60], A01_CACHE[18:60]),
                                         ("kmalloc-64(12:docker-0123456789abcdef", "0123456789abcdef"),
                                         ("kmalloc-64(12:c8ed", None)])
def test_a_cut_cache_name_still_gives_the_memcg_id_and_the_container_id_prefix(cut, prefix):
    got = parse_memcg_cache(cut)
    assert (got["base"], got["truncated"], got["container"], got["container_id_prefix"]) == (
        cut.split("(")[0], True, None, prefix)
    assert got["memcg_id"] == int(cut.split("(")[1].split(":")[0])
