"""kmemsnoop on the live kernel (tracepoints): a child writes 1 then -1 to a real cgroup's kmem limit.

Needs root and cgroup v1's memory controller (present on this machine's kernel).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bpftools.recording import read_recording

pytestmark = pytest.mark.root
MEMCG = "/sys/fs/cgroup/memory"
WRITER = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, b"kmemwriter", 0, 0, 0)   # PR_SET_NAME
cg = sys.argv[1]
os.mkdir(cg)
print(os.getpid(), flush=True)
for value in (b"1", b"-1"):
    fd = os.open(cg + "/memory.kmem.limit_in_bytes", os.O_WRONLY)
    os.write(fd, value)
    os.close(fd)
"""


def _start(tmp_path, *args):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "bpftools.cli", "kmemsnoop", "--ready-file", str(ready)]
                            + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail("kmemsnoop did not attach: rc=%s\n%s\n%s" % (proc.returncode, out, err))
        time.sleep(0.05)
    return proc


def _write_kmem(cgroup_dir):
    child = subprocess.run([sys.executable, "-c", WRITER, cgroup_dir], stdout=subprocess.PIPE,
                           universal_newlines=True, check=True)
    return int(child.stdout.strip())


@pytest.fixture
def cgroup_dir():
    if not os.path.isdir(MEMCG):
        pytest.skip("no cgroup v1 memory controller at %s" % MEMCG)
    path = os.path.join(MEMCG, "bpftools-kmemsnoop-%d" % os.getpid())
    yield path
    if os.path.isdir(path):
        os.rmdir(path)


def test_sees_both_writes_with_exact_pid_comm_path_value(tmp_path, cgroup_dir):
    proc = _start(tmp_path, "--json", "-d", "60")
    child_pid = _write_kmem(cgroup_dir)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    mine = [e for e in events if e["tgid"] == child_pid]
    path = cgroup_dir + "/memory.kmem.limit_in_bytes"
    assert [(e["op"], e["value"], e["ret"]) for e in mine] == [
        ("open", None, mine[0]["ret"]), ("write", "1", 1), ("open", None, mine[2]["ret"]), ("write", "-1", 2)]
    assert mine[0]["ret"] >= 0 and mine[2]["ret"] >= 0            # fds
    assert all(e["comm"] == "kmemwriter" and e["path"] == path and e["tid"] == child_pid for e in mine)
    assert all(e["writer_cgroup"] is not None for e in mine)
    assert mine[0]["ts_ns"] < mine[1]["ts_ns"] < mine[2]["ts_ns"] < mine[3]["ts_ns"]


def test_pid_filter_excludes_other_writers(tmp_path, cgroup_dir):
    proc = _start(tmp_path, "--json", "-d", "60", "-p", str(os.getpid()))
    _write_kmem(cgroup_dir)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == ""


def test_ctrl_c_exits_130_and_keeps_the_recording(tmp_path, cgroup_dir):
    rec = str(tmp_path / "kmem.jsonl")
    report_dir = tmp_path / "live-report"
    proc = _start(tmp_path, "--record", rec, "--report", str(report_dir))
    child_pid = _write_kmem(cgroup_dir)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    recording = read_recording(rec)
    writes = [(e["value"], e["ret"]) for e in recording.events if e["tgid"] == child_pid and e["op"] == "write"]
    assert writes == [("1", 1), ("-1", 2)]
    assert recording.trailer["interrupted"] is True
    assert recording.header["tool"] == "kmemsnoop"
    assert "checks" in recording.header["capabilities"]
    folded = (report_dir / "kmemsnoop.folded").read_text()   # the live report was written on Ctrl-C too
    assert "[pid %d kmemwriter];" % child_pid in folded and (report_dir / "report.html").exists()
    # the live table and the report of the recording show the same lines
    report = subprocess.run([sys.executable, "-m", "bpftools.cli", "report", rec], stdout=subprocess.PIPE,
                            universal_newlines=True)
    live_lines = [l for l in out.splitlines() if " %d " % child_pid in l]
    assert len(live_lines) == 4
    for line in live_lines:
        assert line in report.stdout


def test_shell_redirect_through_dup2_is_seen(tmp_path, cgroup_dir):
    """`echo 1 > memory.kmem.limit_in_bytes`: the shell opens the file, dup2()s it to fd 1 and writes there."""
    os.mkdir(cgroup_dir)
    proc = _start(tmp_path, "--json", "-d", "60")
    path = cgroup_dir + "/memory.kmem.limit_in_bytes"
    shell = subprocess.Popen(["sh", "-c", 'read x; echo 1 > "$0"', path], stdin=subprocess.PIPE)
    shell.communicate(b"go\n", timeout=30)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    events = [json.loads(line) for line in out.splitlines()]
    writes = [e for e in events if e["tgid"] == shell.pid and e["op"] == "write"]
    assert [(w["comm"], w["path"], w["value"], w["ret"]) for w in writes] == [("sh", path, "1\n", 2)], (
        "events of pid %d: %s\nstderr: %s" % (shell.pid, [e for e in events if e["tgid"] == shell.pid], err))


def test_writer_that_exits_at_once_keeps_its_cgroup2_path(tmp_path, cgroup_dir):
    """Like runc's writer: join a cgroup, write, exit. Its cgroup comes from the id BPF recorded."""
    unified = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else None
    if unified is None or not os.path.exists(unified + "/cgroup.procs"):
        pytest.skip("no cgroup2 mount at /sys/fs/cgroup/unified")
    v2 = os.path.join(unified, "bpftools-writer-%d" % os.getpid())
    os.mkdir(v2)
    os.mkdir(cgroup_dir)
    try:
        proc = _start(tmp_path, "--json", "-d", "60")
        path = cgroup_dir + "/memory.kmem.limit_in_bytes"
        script = 'echo $$ > "$1/cgroup.procs"; read x; echo 1 > "$0"'
        shell = subprocess.Popen(["sh", "-c", script, path, v2], stdin=subprocess.PIPE)
        shell.communicate(b"go\n", timeout=30)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        os.rmdir(v2)
    writes = [json.loads(l) for l in out.splitlines()]
    writes = [e for e in writes if e["tgid"] == shell.pid and e["op"] == "write"]
    assert [(w["value"], w["writer_cgroup_v2"]) for w in writes] == [("1\n", "/" + os.path.basename(v2))]


def test_recording_exports_html_svg_folded(tmp_path, cgroup_dir):
    rec = str(tmp_path / "kmem.jsonl")
    proc = _start(tmp_path, "--record", rec, "-d", "60")
    child_pid = _write_kmem(cgroup_dir)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    out_dir = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "bpftools.cli", "report", rec, "--report", str(out_dir)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(str(out_dir))) == ["kmemsnoop.folded", "kmemsnoop.speedscope.json",
                                                "kmemsnoop.svg", "report.html"]
    folded = (out_dir / "kmemsnoop.folded").read_text().splitlines()
    mine = [l for l in folded if l.startswith("[pid %d kmemwriter];" % child_pid)]
    path_dir, base = cgroup_dir, "memory.kmem.limit_in_bytes"
    writes = sorted(l for l in mine if ";write;" in l)
    assert [l.split(";", 2)[2] for l in writes] == [
        "write;%s;%s;[-1 -> 2] 1" % (path_dir, base), "write;%s;%s;[1 -> 1] 1" % (path_dir, base)]
    html = (out_dir / "report.html").read_text()
    assert "kmemwriter" in html and "Who turns on kmem accounting" in html
    import xml.etree.ElementTree as ET
    ET.parse(str(out_dir / "kmemsnoop.svg"))
    folded_stdout = subprocess.run([sys.executable, "-m", "bpftools.cli", "report", rec, "--folded", "-"],
                                   stdout=subprocess.PIPE, universal_newlines=True).stdout.splitlines()
    assert folded_stdout == folded


OPENER = r"""
import os, sys
os.chdir(sys.argv[1])
print(os.getpid(), flush=True)
for name in sys.argv[2:]:
    try:
        os.close(os.open(name, os.O_RDONLY))
    except OSError:
        pass
print("done", flush=True)
sys.stdin.read()     # alive until told: the tool reads a relative name's directory from /proc/PID/cwd
"""
KMEM_NAMES = ["memory.kmem.failcnt", "memory.kmem.slabinfo", "memory.kmem.tcp.failcnt",
              "memory.kmem.limit_in_bytes", "memory.kmem.usage_in_bytes", "memory.kmem.max_usage_in_bytes",
              "memory.kmem.tcp.limit_in_bytes", "memory.kmem.tcp.usage_in_bytes",
              "memory.kmem.tcp.max_usage_in_bytes"]


def test_the_path_matcher_sees_every_kmem_file_name_and_nothing_else(tmp_path):
    """The in-kernel matcher checks the path's end at the kmem file names' lengths: each of the nine
    cgroup v1 kmem files is seen, by absolute and by relative path; other names are not."""
    work = tmp_path / "dir" / "memory.kmem.notafile.d"
    work.mkdir(parents=True)
    others = ["memory.limit_in_bytes", "memory.kmem.limit_in_bytez/x", "xmemory.kmem.failcnt", "kmem.failcnt"]
    for name in KMEM_NAMES + others[:1] + others[2:]:
        (work / name).write_text("0\n")
    (work / "memory.kmem.limit_in_bytez").mkdir()
    (work / "memory.kmem.limit_in_bytez" / "x").write_text("0\n")
    tool = _start(tmp_path, "--json", "-d", "30")
    names = KMEM_NAMES + [str(work / n) for n in KMEM_NAMES] + others + [str(work / n) for n in others]
    child = subprocess.Popen([sys.executable, "-c", OPENER, str(work)] + names, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, universal_newlines=True)
    try:
        pid = int(child.stdout.readline())
        assert child.stdout.readline() == "done\n"
        time.sleep(1)
        tool.send_signal(signal.SIGINT)
        out, err = tool.communicate(timeout=60)
    finally:
        child.communicate(timeout=60)
    seen = [json.loads(line)["path"] for line in out.splitlines() if line.startswith("{")
            and json.loads(line).get("tgid") == pid]
    # relative names are reported resolved against the opener's working directory (while it runs)
    assert sorted(seen) == sorted([str(work / n) for n in KMEM_NAMES] * 2), err
