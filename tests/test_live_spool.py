"""A live run with --report and no --record: its events go to a compressed spool (a private temp file whose
name is removed at once), and the report is built at the end by reading that file back, so memory does not
grow with the events and nothing is left behind."""
import io
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import pytest
from rich.console import Console

from bpftools import live
from bpftools.recording import Recording, read_recording
from bpftools.registry import TOOLS, build_report
from bpftools.tools import kmemsnoop

MEMCG = "/sys/fs/cgroup/memory"
WRITES = 150
WRITER = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, b"kmemwriter", 0, 0, 0)   # PR_SET_NAME
cg, writes = sys.argv[1], int(sys.argv[2])
os.mkdir(cg)
for i in range(writes):
    fd = os.open(cg + "/memory.kmem.limit_in_bytes", os.O_WRONLY)
    os.write(fd, b"1" if i % 2 == 0 else b"-1")
    os.close(fd)
print(os.getpid(), flush=True)
"""


def _kmem_event(i):
    return {"type": "kmem_file", "ts_ns": 10 ** 9 + i, "tgid": 4000 + i % 5, "tid": 4000 + i % 5, "comm": "w%d" % (i % 5),
            "op": "write", "path": "/sys/fs/cgroup/memory/pod%d/memory.kmem.limit_in_bytes" % (i % 3),
            "value": "1", "ret": 1, "writer_cgroup": "/pod%d" % (i % 3), "writer_cgroup_v2": None,
            "container": None, "error": None}


def _spooled(pid):
    """The descriptors of process PID open on a spool, as /proc shows them."""
    fd_dir = "/proc/%d/fd" % pid
    links = []
    for fd in os.listdir(fd_dir):
        try:
            links.append(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            pass
    return [l for l in links if "bpftools-spool-" in l]


def test_events_go_to_a_spool_not_to_memory_and_all_reach_the_report(tmp_path, monkeypatch):
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spool_dir))
    seen = []

    def report(header, events, generated):
        seen.append(iter(events) is events)           # a stream read once, not a list
        return kmemsnoop.incident_report(header, events, generated)

    out = tmp_path / "out"
    with live.LiveRun("kmemsnoop", None, str(out), argv=["bpftools", "kmemsnoop", "--report", str(out)],
                      incident_report=report) as run:
        assert os.listdir(str(spool_dir)) == []                    # open (written, read back), its name gone
        assert [l.endswith(" (deleted)") for l in _spooled(os.getpid())] == [True, True]
        for i in range(1000):
            run.record(_kmem_event(i))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(1000, 21000):
                run.record(_kmem_event(i))
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert grown < 64 * 1024, "%d bytes kept for 20,000 events" % grown     # a list of them: megabytes
    assert seen == [True]
    folded = (out / "kmemsnoop.folded").read_text().splitlines()
    counts = {}
    for line in folded:
        stack, count = line.rsplit(" ", 1)
        counts[stack.split(";", 1)[0]] = counts.get(stack.split(";", 1)[0], 0) + int(count)
    assert counts == {"[pid %d w%d]" % (4000 + k, k): 21000 // 5 for k in range(5)}
    assert os.listdir(str(spool_dir)) == [] and _spooled(os.getpid()) == []


def test_ctrl_c_reports_from_the_spool(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with live.LiveRun("kmemsnoop", None, str(out), argv=["bpftools", "kmemsnoop"],
                          incident_report=kmemsnoop.incident_report) as run:
            for i in range(10):
                run.record(_kmem_event(i))
            raise KeyboardInterrupt
    assert sorted(os.listdir(str(tmp_path))) == ["out"]
    folded = (out / "kmemsnoop.folded").read_text().splitlines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in folded) == 10


def test_with_record_the_report_reads_the_recording(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "none"))      # no spool: not even a temp dir
    rec, out = str(tmp_path / "kmem.jsonl.gz"), tmp_path / "out"
    with live.LiveRun("kmemsnoop", rec, str(out), argv=["bpftools", "kmemsnoop"],
                      incident_report=kmemsnoop.incident_report) as run:
        for i in range(7):
            run.record(_kmem_event(i))
    folded = (out / "kmemsnoop.folded").read_text().splitlines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in folded) == 7
    assert sorted(os.listdir(str(tmp_path))) == ["kmem.jsonl.gz", "out"]


@pytest.mark.root
def test_live_tracepoint_run_reports_every_event_and_leaves_no_spool(tmp_path):
    if not os.path.isdir(MEMCG):
        pytest.skip("no cgroup v1 memory controller at %s" % MEMCG)
    spool_dir, ready, out = tmp_path / "tmp", tmp_path / "ready", tmp_path / "out"
    spool_dir.mkdir()
    cgroup = os.path.join(MEMCG, "bpftools-spool-%d" % os.getpid())
    proc = subprocess.Popen([sys.executable, "-m", "bpftools.cli", "kmemsnoop", "--mode", "tracepoint",
                             "--report", str(out), "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            env=dict(os.environ, TMPDIR=str(spool_dir)))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "kmemsnoop did not attach"
            time.sleep(0.05)
        child = subprocess.run([sys.executable, "-c", WRITER, cgroup, str(WRITES)], stdout=subprocess.PIPE,
                               universal_newlines=True, check=True)
        child_pid = int(child.stdout.strip())
        time.sleep(0.5)
        assert os.listdir(str(spool_dir)) == []
        assert [l.endswith(" (deleted)") for l in _spooled(proc.pid)] == [True, True]   # written, read back
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if os.path.isdir(cgroup):
            os.rmdir(cgroup)
    assert proc.returncode == 130, stderr
    assert len([l for l in stdout.splitlines() if " %d " % child_pid in l]) == 2 * WRITES
    mine = {}
    for line in (out / "kmemsnoop.folded").read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        if frames[0] == "[pid %d kmemwriter]" % child_pid:
            mine[(frames[2], frames[5])] = int(count)
    assert mine == {("open", "[open -> 3]"): WRITES, ("write", "[1 -> 1]"): WRITES // 2,
                    ("write", "[-1 -> 2]"): WRITES // 2}
    assert os.listdir(str(spool_dir)) == []


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
WATCH_EVENTS = [{"type": "trigger", "ts_ns": 5, "incident": "kmem_io_jitter", "source": "kernel log", "what": "hung task"},
                {"type": "doctor_verdicts", "verdicts": [{"incident": "kmem_io_jitter", "status": "detected",
                                                          "summary": "hung tasks in writeback"}]}]


def _facts(report):
    return (report.verdicts, [(t.title, t.rows) for t in report.tables], [f.folded for f in report.flame_graphs])


SOURCES = {"iojitter": "iojitter/lab-6.1-injector.jsonl", "refleak": "refleak/6.1.0-56-amd64/refleak-leak-new.jsonl",
           "kmemsnoop": "kmemsnoop", "netdevwait": "reports/netdevwait-kprobe.jsonl", "watch": "watch",
           "watch bundle": "reports/watch.jsonl", "slabfail": "iojitter/synthetic-rhel7-incident.jsonl",
           "mempoolwait": "iojitter/synthetic-rhel7-incident.jsonl", "writeslow": "iojitter/synthetic-rhel7-incident.jsonl"}


def _rendered(header, events, trailer):
    buf = io.StringIO()
    TOOLS[header["tool"]].render_recording(Recording(header, events, trailer, 0), Console(file=buf, width=200))
    return buf.getvalue()


def test_every_tool_is_checked_here():
    assert set(TOOLS) <= set(name.split()[0] for name in SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_tool_reports_and_renders_from_a_stream_what_it_does_from_a_list(name):
    """What a live run's report is handed (the spool read back) and what `bpftools report` hands it."""
    source, trailer = SOURCES[name], None
    tool = name.split()[0]
    if source == "kmemsnoop":
        header, events = {"tool": "kmemsnoop", "argv": []}, [_kmem_event(i) for i in range(40)]
    elif source == "watch":
        header, events = {"tool": "watch", "argv": []}, WATCH_EVENTS
    else:
        rec = read_recording(os.path.join(FIXTURES, source))
        header, events, trailer = dict(rec.header, tool=tool), rec.events, rec.trailer
    text = _rendered(header, events, trailer)
    assert text == _rendered(header, iter(events), trailer) and text.count("\n") > 1
    if TOOLS[tool].incident_report is None:
        return
    from_list = _facts(build_report(header, events, "2026-12-07T00:00:00Z"))
    assert from_list == _facts(build_report(header, iter(events), "2026-12-07T00:00:00Z"))
    assert any(rows for _, rows in from_list[1])       # not an empty report
