"""iojitter on the live kernel (tracepoint mode): a flusher's writeback stalled behind a full device queue.

The stall has no mempool in it (no mempool runs dry here), so the expected answer is "0 of 1 slow
writebacks were stalled in mempool_alloc; other blocking: blk_mq_get_tag" with the nested calls of
the flusher (``writeback_single_inode`` > ``ext4_writepages``). See tests/incident1_workloads.py.
"""
import io
import signal

import pytest
from rich.console import Console

import incident1_workloads as wl
from bpftools.kernel.target import Running
from bpftools.recording import read_recording
from bpftools.tools.iojitter import render_recording

pytestmark = pytest.mark.root
HOLD = 0.3


@pytest.fixture(scope="module")
def disk():
    with wl.StalledDisk() as d:
        yield d


def test_json_result_names_the_stall_its_nesting_and_what_blocked_it(tmp_path, disk):
    tool = wl.Tool(str(tmp_path), "iojitter", "-m", "100", "--json", "-d", "60")
    run = disk.stalled_fsync(HOLD, how="syncfs", before_exit=tool.stop)
    assert tool.returncode == 0, tool.err
    (result,) = tool.json_lines()
    mine = [e for e in result["episodes"] if e["tid"] == run["writer"] and e["ino"] == run["ino"]]
    assert len(mine) == 1, result["episodes"]
    e = mine[0]
    assert (e["func"], e["dev"], e["explained"], e["mempool_ns"], e["incomplete"]) == (
        "writeback_single_inode", "%d:%d" % run["dev"], False, 0, False)
    assert [(c["func"], c["depth"]) for c in e["calls"]] == [("writeback_single_inode", 0), ("ext4_writepages", 1)]
    tag_waits = [w for w in e["waits"] if w["blocked_in"] == "blk_mq_get_tag"]
    assert tag_waits and max(w["duration_ns"] for w in tag_waits) >= HOLD * 1e9
    assert all(w["call"] == "ext4_writepages" and not w["in_mempool"] for w in tag_waits)
    assert "kstack" not in e and all("kstack" not in w for w in e["waits"])     # only with -K
    assert result["sleeps_from"] == "sched_switch" and result["confidence"] == "medium"
    assert result["verdict"].startswith("0 of %d slow writebacks (0%%) were stalled in mempool_alloc; other blocking: "
                                        % result["slow_writebacks"])
    assert "blk_mq_get_tag" in result["verdict"]


def test_ctrl_c_prints_the_report_and_the_recording_renders_the_same(tmp_path, disk):
    rec = str(tmp_path / "io.jsonl")
    tool = wl.Tool(str(tmp_path), "iojitter", "-m", "100", "--record", rec)
    run = disk.stalled_fsync(HOLD, how="syncfs", before_exit=lambda: tool.stop(signal.SIGINT))
    assert tool.returncode == 130, tool.err
    assert tool.out.startswith("Verdict: 0 of ")
    assert "blk_mq_get_tag" in tool.out and "writeback_single_inode" in tool.out
    recording = read_recording(rec)
    assert recording.header["tool"] == "iojitter" and recording.trailer["interrupted"] is True
    kinds = [e["type"] for e in recording.events]
    assert kinds[0] == "mode" and "writeback" in kinds and "sleep" in kinds
    assert any(e["type"] == "writeback" and e["tid"] == run["writer"] for e in recording.events)
    buf = io.StringIO()
    render_recording(recording, Console(file=buf, width=80, highlight=False))
    assert buf.getvalue() == tool.out


def test_folded_output_weights_stacks_by_time_blocked(tmp_path, disk):
    tool = wl.Tool(str(tmp_path), "iojitter", "-m", "100", "-f", "-d", "60")
    run = disk.stalled_fsync(HOLD, how="syncfs", before_exit=tool.stop)
    assert tool.returncode == 0, tool.err
    lines = [line.rsplit(" ", 1) for line in tool.out.splitlines()]
    tag = [(stack, int(w)) for stack, w in lines if ";blk_mq_get_tag;io_schedule;" in stack
           and ";__writeback_single_inode;" in stack]
    assert tag, tool.out
    stack, weight = max(tag, key=lambda sw: sw[1])
    assert stack.startswith("kworker/") and stack.split(";")[-1].startswith("[blocked 0.")
    assert weight >= HOLD * 1e9 and run["writer"] > 0


def test_interval_reports_are_cumulative(tmp_path, disk):
    tool = wl.Tool(str(tmp_path), "iojitter", "-m", "100", "--json", "3", "2")
    run = disk.stalled_fsync(HOLD, how="syncfs", before_exit=tool.wait)   # the stall is in the first 3 s
    assert tool.returncode == 0, tool.err
    reports = tool.json_lines()
    assert len(reports) == 2
    for report in reports:
        assert [(e["func"], e["explained"]) for e in report["episodes"]
                if e["tid"] == run["writer"] and e["ino"] == run["ino"]] == [("writeback_single_inode", False)]


# (no mp_alloc_return: ONLY_IN_WB plans never attach it, and it is not compiled with that flag)
KPROBE_FUNCTIONS = (["mp_alloc_entry", "mp_sleep_entry", "mp_finish_wait_entry", "slab_alloc_entry", "slub_oom_entry"]
                    + ["wb_entry_%d" % i for i in range(8)] + ["wb_return_%d" % i for i in range(8)])


@pytest.mark.parametrize("stack_flag", [None, "WB_STACK_AT_EXIT", "WB_NO_STACK"])
def test_the_kprobe_programs_pass_this_kernels_verifier(stack_flag):
    """This machine cannot attach kprobes, but it loads kprobe programs: every kprobe function of the
    program, with iojitter's kprobe-mode flags and struct offsets from this kernel's BTF, is accepted by
    the verifier (the lab attaches them)."""
    from bcc import BPF
    from bpftools.iostall import program as iocommon
    from bpftools.iostall.writeback import STRUCT_READS
    flags = ["WANT_SLAB", "WANT_SLAB_KPROBE", "WANT_SLUB_OOM", "SLUB_OOM_ARGS", "WANT_SLEEP_KPROBE", "ONLY_IN_WB",
             "WANT_WB_KPROBE", "HAVE_JIFFIES64"] + ([stack_flag] if stack_flag else [])
    plan = iocommon.Plan(mode="kprobe", flags=flags, params=dict(("WB_ARG%d" % i, i % 3) for i in range(8)))
    assert plan.read_structs(Running(), STRUCT_READS + ["OFF_MEMPOOL_WAIT", "OFF_MEMPOOL_POOL_DATA", "OFF_MEMPOOL_ALLOC",
                                             "OFF_CACHE_NAME"]) == "btf"
    bpf = plan.probe().load()
    try:
        fds = dict((name, bpf.load_func(name.encode(), BPF.KPROBE).fd) for name in KPROBE_FUNCTIONS)
    finally:
        bpf.cleanup()
    assert sorted(fds) == sorted(KPROBE_FUNCTIONS) and all(fd >= 0 for fd in fds.values())
