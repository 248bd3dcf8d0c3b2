"""writeslow on the live kernel (tracepoint mode): stalled writebacks we cause and time, nested calls.

Workload (tests/incident1_workloads.py): 32 dirty pages of a file on ext4 on loop device B, whose
backing file lives on a frozen filesystem, so the writeback sleeps in ``blk_mq_get_tag`` until the test
thaws it HOLD seconds later. ``fsync`` writes back in the child (``ext4_writepages``); ``syncfs`` makes
a flusher kworker do it, inside ``writeback_single_inode`` (so two nested slow calls).
"""
import re

import pytest

import incident1_workloads as wl
from bpftools.kernel.capabilities import kprobes_available

pytestmark = pytest.mark.root
HOLD = 0.3


@pytest.fixture(scope="module")
def disk():
    with wl.StalledDisk() as d:
        yield d


def _dev(run):
    return "%d:%d" % run["dev"]


def test_the_stalled_fsync_is_one_slow_ext4_writepages_with_device_inode_and_pages(tmp_path, disk):
    tool = wl.Tool(str(tmp_path), "writeslow", "-m", "100", "--json", "-d", "60")
    run = disk.stalled_fsync(HOLD, before_exit=tool.stop)
    assert tool.returncode == 0, tool.err
    mine = [e for e in tool.json_lines() if e["tid"] == run["pid"]]
    assert len(mine) == 1, mine
    e = mine[0]
    assert (e["type"], e["comm"], e["tgid"], e["func"], e["depth"]) == (
        "writeback", "stallwriter", run["pid"], "ext4_writepages", 0)
    assert (e["dev"], e["ino"], e["written"], e["ret"], e["nr_to_write"], e["deeper"]) == (
        _dev(run), run["ino"], wl.StalledDisk.PAGES, 0, None, False)    # fsync asks for everything
    assert HOLD * 1e9 <= e["duration_ns"] <= run["elapsed"] * 1e9
    frames = e["kstack"]          # taken at the tracepoint: in ext4_do_writepages since 6.5 or so
    assert frames.index("ext4_writepages") <= 1 and frames[frames.index("ext4_writepages") + 1] == "do_writepages"
    assert "ext4_sync_file" in frames
    assert e["cgroup"] == wl_cgroup()
    assert "tracepoint mode" in tool.err


def wl_cgroup():
    from bpftools.kernel.cgroups import memory_cgroup_of_pid
    return memory_cgroup_of_pid(wl.os.getpid())


def test_the_flusher_shows_both_nested_slow_calls(tmp_path, disk):
    tool = wl.Tool(str(tmp_path), "writeslow", "-m", "100", "--json", "-d", "60")
    run = disk.stalled_fsync(HOLD, how="syncfs", before_exit=tool.stop)
    assert tool.returncode == 0, tool.err
    mine = [e for e in tool.json_lines() if e["tid"] == run["writer"] and e["ino"] == run["ino"]]
    assert [(e["func"], e["depth"]) for e in mine] == [("ext4_writepages", 1), ("writeback_single_inode", 0)]
    inner, outer = mine
    assert outer["start_ns"] <= inner["start_ns"] and inner["ts_ns"] <= outer["ts_ns"]
    assert inner["duration_ns"] >= HOLD * 1e9 and outer["duration_ns"] >= inner["duration_ns"]
    assert (inner["dev"], outer["dev"], outer["bdi"]) == (_dev(run), _dev(run), _dev(run))
    assert inner["written"] == outer["written"] == wl.StalledDisk.PAGES
    assert outer["comm"].startswith("kworker/") and outer["cgroup"] in ("/", None)
    assert outer["kstack"][:2] == ["__writeback_single_inode", "writeback_sb_inodes"]


def test_threshold_and_pid_filter(tmp_path, disk):
    slow = wl.Tool(str(tmp_path), "writeslow", "-m", "5000", "--json", "-d", "60")
    run = disk.stalled_fsync(HOLD, before_exit=slow.stop)
    assert [e for e in slow.json_lines() if e["tid"] == run["pid"]] == []
    other = wl.Tool(str(tmp_path), "writeslow", "-m", "100", "--json", "-d", "60", "-p", str(wl.os.getpid()))
    run = disk.stalled_fsync(HOLD, before_exit=other.stop)
    assert [e for e in other.json_lines() if e["tid"] == run["pid"]] == []


def test_text_lines_indent_the_inner_call_and_the_report_agrees(tmp_path, disk):
    import io
    from rich.console import Console
    from bpftools.recording import read_recording
    from bpftools.tools.writeslow import render_recording
    rec = str(tmp_path / "wb.jsonl")
    tool = wl.Tool(str(tmp_path), "writeslow", "-m", "100", "-d", "60", "--record", rec)
    run = disk.stalled_fsync(HOLD, how="syncfs", before_exit=tool.stop)
    mine = [line for line in tool.out.splitlines() if " %d " % run["writer"] in line and " %d " % run["ino"] in line]
    assert [line.split("  %d  " % wl.StalledDisk.PAGES)[-1] for line in mine] == [
        "  ext4_writepages", "writeback_single_inode"]
    buf = io.StringIO()
    render_recording(read_recording(rec), Console(file=buf, width=200))
    assert tool.out.splitlines() == buf.getvalue().splitlines()


def test_folded_charges_the_outermost_call(tmp_path, disk):
    tool = wl.Tool(str(tmp_path), "writeslow", "-m", "100", "-f", "-d", "60")
    run = disk.stalled_fsync(HOLD, before_exit=tool.stop)
    mine = [line for line in tool.out.splitlines() if line.startswith("stallwriter;")]
    assert len(mine) == 1
    stack, weight = mine[0].rsplit(" ", 1)
    assert re.search(r";ext4_sync_file;file_write_and_wait_range;__filemap_fdatawrite_range;filemap_fdatawrite_wbc;"
                     r"do_writepages;ext4_writepages;(ext4_do_writepages;)?\[writeback ext4_writepages\]$", stack), stack
    assert int(weight) >= HOLD * 1e9 and run["pid"] > 0


def test_kprobe_only_options_fail_clearly_without_kprobes():
    if kprobes_available():
        pytest.skip("this kernel has kprobes")
    for args in (["--mode", "kprobe"], ["-F", "do_writepages"]):
        proc = wl.run_cli("writeslow", "-d", "1", *args)
        assert proc.returncode == 5, proc.stderr
        assert "missing kernel feature: kprobes (CONFIG_KPROBES) for writeslow" in proc.stderr
