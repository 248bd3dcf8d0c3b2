"""mempoolwait on the live kernel (tracepoint fallback: sched_switch D-state sleeps with stacks).

No mempool ever runs dry on this machine, so the mempool filter is checked by what it leaves out, and
``--all-dstate`` by a sleep we cause and time: a child (``stallwriter``) fsyncs 32 dirty pages to a
loop device whose backing filesystem is frozen, and sleeps in ``blk_mq_get_tag`` (D state, via
``io_schedule``) inside ``ext4_writepages`` until the test thaws it, HOLD seconds after it saw the
sleep in /proc/PID/stack (tests/incident1_workloads.py).
"""
import pytest

import incident1_workloads as wl
from bpftools.kernel.cgroups import memory_cgroup_of_pid
from bpftools.iostall.mempool import dstate_mask

pytestmark = pytest.mark.root
HOLD = 0.3


@pytest.fixture(scope="module")
def disk():
    with wl.StalledDisk() as d:
        yield d


def test_all_dstate_shows_the_writers_sleep_with_duration_frame_and_cgroup(tmp_path, disk):
    tool = wl.Tool(str(tmp_path), "mempoolwait", "--all-dstate", "-m", "100", "--json", "-d", "60")
    run = disk.stalled_fsync(HOLD, before_exit=tool.stop)
    assert tool.returncode == 0, tool.err
    mine = [e for e in tool.json_lines() if e["tgid"] == run["pid"]]
    assert len(mine) >= 1
    sleep = max(mine, key=lambda e: e["duration_ns"])
    assert (sleep["type"], sleep["comm"], sleep["tid"], sleep["source"]) == ("sleep", "stallwriter", run["pid"], "sched_switch")
    assert (sleep["in_mempool"], sleep["timed_out"], sleep["pool"], sleep["caller"]) == (False, None, None, None)
    assert sleep["duration_ns"] >= HOLD * 1e9
    assert sleep["ts_ns"] - sleep["start_ns"] == sleep["duration_ns"]
    assert sleep["blocked_in"] == "blk_mq_get_tag"
    frames = sleep["kstack"]
    assert frames[frames.index("blk_mq_get_tag") - 1] == "io_schedule"
    assert {"ext4_writepages", "ext4_sync_file", "__x64_sys_fsync"} <= set(frames)
    assert sleep["cgroup"] == memory_cgroup_of_pid(wl.os.getpid())
    assert "tracepoint fallback mode" in tool.err and "every D-state sleep" in tool.err


def test_default_view_keeps_only_mempool_sleeps_and_says_what_it_left_out(tmp_path, disk):
    tool = wl.Tool(str(tmp_path), "mempoolwait", "-m", "100", "--json", "-d", "60")
    run = disk.stalled_fsync(HOLD, before_exit=tool.stop)
    assert tool.returncode == 0, tool.err
    assert [e for e in tool.json_lines() if e["tgid"] == run["pid"]] == []
    assert all(e["in_mempool"] for e in tool.json_lines())
    assert "D-state sleeps outside mempool_alloc not shown (--all-dstate shows them)" in tool.err
    assert "whose kernel stack holds mempool_alloc" in tool.err


def test_the_threshold_is_applied_in_the_kernel(tmp_path, disk):
    tool = wl.Tool(str(tmp_path), "mempoolwait", "--all-dstate", "-m", "5000", "--json", "-d", "60")
    run = disk.stalled_fsync(HOLD, before_exit=tool.stop)
    assert [e for e in tool.json_lines() if e["tgid"] == run["pid"]] == []


def test_folded_weights_the_stack_by_time_asleep(tmp_path, disk):
    tool = wl.Tool(str(tmp_path), "mempoolwait", "--all-dstate", "-m", "100", "-f", "-d", "60")
    run = disk.stalled_fsync(HOLD, before_exit=tool.stop)
    assert tool.returncode == 0, tool.err
    mine = [line for line in tool.out.splitlines()
            if line.startswith("stallwriter;") and ";blk_mq_get_tag;io_schedule;" in line]
    assert len(mine) == 1, tool.out
    stack, weight = mine[0].rsplit(" ", 1)
    assert stack.startswith("stallwriter;entry_SYSCALL_64_after_hwframe;do_syscall_64;__x64_sys_fsync;do_fsync;")
    label = stack.rsplit(";", 1)[1]
    assert label.startswith("[D-state 0.") and label.endswith("s]")
    assert int(weight) >= HOLD * 1e9
    assert run["pid"] > 0


def test_the_live_lines_and_the_report_of_the_recording_agree(tmp_path, disk):
    import io
    from rich.console import Console
    from bpftools.recording import read_recording
    from bpftools.tools.mempoolwait import render_recording
    rec = str(tmp_path / "mp.jsonl")
    tool = wl.Tool(str(tmp_path), "mempoolwait", "--all-dstate", "-m", "100", "-d", "60", "--record", rec)
    run = disk.stalled_fsync(HOLD, before_exit=tool.stop)
    live = [line for line in tool.out.splitlines() if " %d " % run["pid"] in line]
    assert live and all("blk_mq_get_tag" in line for line in live)
    buf = io.StringIO()
    render_recording(read_recording(rec), Console(file=buf, width=200))
    assert tool.out.splitlines() == buf.getvalue().splitlines()


@pytest.mark.parametrize("fmt, mask", [
    # 6.18 (this machine): task-state index bits
    ('print fmt: "prev_state=%s", (REC->prev_state & 0xff) ? __print_flags(REC->prev_state & 0xff, "|", '
     '{ 0x00000001, "S" }, { 0x00000002, "D" }, { 0x00000004, "T" }) : "R"', 2),
    # 3.10: raw state values, printed in decimal
    ('print fmt: "prev_state=%s", REC->prev_state & (1024-1) ? __print_flags(REC->prev_state & (1024-1), "|", '
     '{ 1, "S"} , { 2, "D" }, { 4, "T" }, { 8, "t" }, { 16, "Z" }) : "R"', 2),
    ("", 2),
])
def test_the_d_state_bit_comes_from_the_format_file(fmt, mask):
    assert dstate_mask(fmt) == mask
