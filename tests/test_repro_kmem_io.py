"""`bpftools repro kmem-io`: the helpers on exact values anywhere; the real workload as root on this
machine's cgroup v1 memory controller (cgroup, kmem writes, writers, loop-mounted ext4, cleanup on
exit, SIGINT/SIGTERM and after a SIGKILLed run)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bpftools.errors import EXIT_BAD_INPUT, EXIT_MISSING_FEATURE, EXIT_NOT_ROOT, BadInput
from bpftools.repro import latency_stats, owned_by_dead_run, parse_size
from bpftools.repro import kmem_io
from bpftools.repro.kmem_io import KmemIoConfig, kmem_effect, validate, writer_budget

# Runs the real CLI with the repro group registered (whether or not bpftools.cli already has it).
RUN = ("import sys\nfrom bpftools.cli import cli, main\nfrom bpftools.repro.cli import repro\n"
       "'repro' in cli.commands or cli.add_command(repro)\nsys.exit(main(sys.argv[1:]))\n")
M = 1 << 20
LLONG_MAX = 9223372036854775807
PAGE_COUNTER_MAX = 9223372036854771712


def repro(*args, **kw):
    return subprocess.run([sys.executable, "-c", RUN, "repro", "kmem-io"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=kw.pop("timeout", 120), **kw)


def start(*args):
    return subprocess.Popen([sys.executable, "-c", RUN, "repro", "kmem-io"] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)


def wait_ready(path, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no ready file"
        time.sleep(0.02)
    with open(path) as f:
        return json.load(f)


def in_main(monkeypatch, capsys, args, euid=None):
    """Run the CLI in this process; (exit code, stderr lines)."""
    from bpftools.cli import cli, main
    from bpftools.repro.cli import repro as group
    if "repro" not in cli.commands:
        cli.add_command(group)
    if euid is not None:
        monkeypatch.setattr(os, "geteuid", lambda: euid)
    code = main(["repro", "kmem-io"] + args)
    return code, capsys.readouterr().err.strip().splitlines()


# --------------------------------------------------------------------------------------------
# Anywhere: exact values of the helpers
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("256M", 256 * M), ("1M", M), ("4k", 4096), ("4K", 4096),
                                         ("1G", 1 << 30), ("1048576", 1048576), ("1MiB", M), ("2MB", 2 * M)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["1.5M", "abc", "-1", "", "1X", "M"])
def test_parse_size_rejects(text):
    with pytest.raises(BadInput):
        parse_size(text)


def test_latency_stats_exact():
    assert latency_stats([3.0, 1.0, 2.0]) == {"count": 3, "min": 1.0, "median": 2.0, "p99": 3.0, "max": 3.0}
    assert latency_stats([4.0, 1.0, 2.0, 3.0])["median"] == 2.5
    assert latency_stats([float(v) for v in range(1, 201)])["p99"] == 198.0  # nearest rank: ceil(1.98e2)
    assert latency_stats([]) == {"count": 0, "min": None, "median": None, "p99": None, "max": None}


def test_kmem_effect_on_3_10_applies():
    writes = [{"value": "1", "result": "ok", "error": None, "read_back": 4096},
              {"value": "-1", "result": "ok", "error": None, "read_back": LLONG_MAX}]
    effect, text = kmem_effect(writes, {"readable": True, "error": None, "lines": 3}, True, True)
    assert effect == "applied"
    assert "1 read back as 4096" in text and "read back %d" % LLONG_MAX in text


def test_kmem_effect_on_6_x_is_ignored():
    writes = [{"value": v, "result": "ok", "error": None, "read_back": PAGE_COUNTER_MAX} for v in ("1", "-1")]
    effect, text = kmem_effect(writes, {"readable": True, "error": None, "lines": 0}, True, True)
    assert effect == "ignored"
    assert "read back unchanged (%d)" % PAGE_COUNTER_MAX in text and text.endswith("reads empty")


def test_kmem_effect_ebusy_absent_and_skipped():
    writes = [{"value": "1", "result": "EBUSY", "error": "Device or resource busy", "read_back": LLONG_MAX}]
    effect, text = kmem_effect(writes, {"readable": False, "error": "EIO", "lines": None}, True, True)
    assert effect == "rejected"
    assert text.startswith("writing 1 to memory.kmem.limit_in_bytes failed with EBUSY (Device or resource busy)")
    assert kmem_effect([], {"readable": None, "error": None, "lines": None}, False, True)[0] == "absent"
    effect, text = kmem_effect([], {"readable": False, "error": "EIO", "lines": None}, True, False)
    assert effect == "skipped" and text.endswith("slabinfo fails with EIO: kmem accounting is off for this cgroup")
    effect, text = kmem_effect([], {"readable": True, "error": None, "lines": 0}, True, False)
    assert text.endswith("slabinfo reads empty: no per-cgroup kmem switch on this kernel")


def test_writer_budget_is_whole_chunks():
    assert writer_budget(192 * M, 2, M) == 96 * M
    assert writer_budget(10 * M + 5, 3, M) == 3 * M
    with pytest.raises(BadInput, match="not enough space for 4 writers of 1M chunks: 3M usable"):
        writer_budget(3 * M, 4, M)


@pytest.mark.parametrize("changes, message", [
    ({"writers": 0}, "--writers must be 1..64, not 0"),
    ({"chunk": 1024}, "--chunk must be 4K..64M, not 1K"),
    ({"size": 16 * M}, "--size must be 32M..1T, not 16M"),
    ({"memory_limit": 8 * M}, "--memory-limit must be at least 16M, not 8M"),
    ({"memory_limit": 16 * M, "writers": 8}, "--memory-limit 16M is below 4 x --chunk x --writers (32M)"),
    ({"duration": 0}, "--duration must be > 0"),
    ({"iterations": 0}, "--iterations must be >= 1"),
    ({"slow_ms": -1}, "--slow-ms must be > 0"),
    ({"directory": "/nonexistent/dir"}, "--dir /nonexistent/dir: not a directory"),
    ({"size": 32 * M, "writers": 64, "chunk": 1 * M, "memory_limit": 512 * M},
     "not enough space for 64 writers of 1M chunks: 24M usable"),
])
def test_validate_rejects(changes, message):
    cfg = KmemIoConfig(**changes)
    with pytest.raises(BadInput) as err:
        validate(cfg)
    assert str(err.value).startswith(message)


def test_owned_by_dead_run():
    me = os.getpid()
    assert owned_by_dead_run(me) is False
    assert owned_by_dead_run(os.getppid()) is False
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert owned_by_dead_run(child.pid) is True  # reaped: the pid is free (reuse this fast is unlikely)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while open("/proc/%d/stat" % zombie.pid).read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert owned_by_dead_run(zombie.pid) is True  # exited, not yet reaped: dead all the same
    zombie.wait()


def test_not_root_is_a_privilege_error(monkeypatch, capsys):
    code, err = in_main(monkeypatch, capsys, ["--iterations", "1"], euid=1000)
    assert code == EXIT_NOT_ROOT
    assert err == ["bpftools: error: bpftools repro kmem-io needs root (it creates cgroups, mounts, loop "
                   "devices or network namespaces); run it with sudo"]


def test_bad_size_is_bad_input(monkeypatch, capsys):
    code, err = in_main(monkeypatch, capsys, ["--chunk", "1.5M"])
    assert code == EXIT_BAD_INPUT
    assert err == ["bpftools: error: not a size: '1.5M' (use e.g. 4k, 1M, 256M, 1G or a number of bytes)"]


def test_no_v1_memory_controller_is_a_missing_feature(monkeypatch, capsys):
    monkeypatch.setattr(kmem_io, "memory_cgroup_mount", lambda root="/": None)
    code, err = in_main(monkeypatch, capsys, ["--iterations", "1"], euid=0)
    assert code == EXIT_MISSING_FEATURE
    assert len(err) == 1 and err[0].startswith(
        "bpftools: error: missing kernel feature: cgroup v1 memory controller")


def test_help_has_examples():
    r = subprocess.run([sys.executable, "-c", RUN, "repro", "kmem-io", "--help"], stdout=subprocess.PIPE,
                       universal_newlines=True)
    assert r.returncode == 0
    assert "Examples:" in r.stdout and "bpftools repro kmem-io --writers 8" in r.stdout
    assert "--ready-file" not in r.stdout


# --------------------------------------------------------------------------------------------
# Root: the real workload
# --------------------------------------------------------------------------------------------

def _memory_mount():
    from bpftools.kernel.cgroups import memory_cgroup_mount
    mount = memory_cgroup_mount()
    if mount is None:
        pytest.skip("no cgroup v1 memory controller")
    return mount


def _kernel_answers_to_runc_writes(mount):
    """What this kernel does with 1 then -1 in a fresh, empty memory cgroup: [(result, read back)]."""
    from bpftools.kernel.cgroups import memory_cgroup_of_pid
    parent = os.path.join(mount, (memory_cgroup_of_pid(os.getpid()) or "/").lstrip("/"))
    scratch = os.path.join(parent, "bpftools-test-kmem-%d" % os.getpid())
    os.mkdir(scratch)
    answers = []
    try:
        for value in ("1", "-1"):
            path = os.path.join(scratch, "memory.kmem.limit_in_bytes")
            try:
                with open(path, "w") as f:
                    f.write(value)
                result = "ok"
            except OSError as err:
                result = {16: "EBUSY"}.get(err.errno, str(err.errno))
            with open(path) as f:
                answers.append((result, int(f.read())))
    finally:
        os.rmdir(scratch)
    return answers


def _mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _loops_of(image):
    out = subprocess.run(["losetup", "-j", image], stdout=subprocess.PIPE, universal_newlines=True).stdout
    return [line.split(":")[0] for line in out.splitlines() if line.strip()]


def _gone(ready):
    """Assert nothing of a run is left: cgroup, mount, loop device, image and its directory."""
    assert not os.path.exists(ready["cgroup"])
    assert not _mounted(ready["target_dir"])
    assert _loops_of(ready["image"]) == []
    assert not os.path.exists(os.path.dirname(ready["image"]))
    for pid in ready["pids"]:
        assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z"


@pytest.mark.root
def test_run_exact_facts(tmp_path):
    mount = _memory_mount()
    expected_writes = _kernel_answers_to_runc_writes(mount)
    ready_path = str(tmp_path / "ready.json")
    proc = start("--writers", "2", "--chunk", "256K", "--iterations", "8", "--memory-limit", "64M",
                 "--size", "64M", "--start-delay", "1.5", "--json", "--ready-file", ready_path)
    ready = wait_ready(ready_path, proc)
    # While it runs: the cgroup with our limit and exactly the writers, the loop device and the mount.
    with open(os.path.join(ready["cgroup"], "cgroup.procs")) as f:
        procs_while_running = sorted(int(p) for p in f.read().split())
    with open(os.path.join(ready["cgroup"], "memory.limit_in_bytes")) as f:
        limit_while_running = int(f.read())
    loops_while_running = _loops_of(ready["image"])
    mounted_while_running = _mounted(ready["target_dir"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    s = json.loads(out)

    assert procs_while_running == sorted(ready["pids"])
    assert limit_while_running == 64 * M
    assert loops_while_running == [ready["device"]]
    assert mounted_while_running is True
    assert re.match(r"^bpftools-repro-%d-\w+$" % s["owner_pid"], os.path.basename(os.path.dirname(ready["image"])))

    assert s["cgroup"]["path"] == ready["cgroup"]
    assert os.path.basename(ready["cgroup"]) == "bpftools-repro-%d" % s["owner_pid"]
    assert s["cgroup"]["memory_limit_requested"] == 64 * M
    assert s["cgroup"]["memory_limit_read_back"] == 64 * M
    assert s["cgroup"]["pids_in_cgroup"] == sorted(ready["pids"])
    assert [(w["value"], w["result"], w["read_back"]) for w in s["kmem"]["writes"]] == [
        ("1",) + expected_writes[0], ("-1",) + expected_writes[1]]
    unchanged = expected_writes[0][1] >= (1 << 63) - (1 << 16)
    assert s["kmem"]["effect"] == ("ignored" if unchanged else "applied")

    fs = s["filesystem"]
    assert (fs["kind"], fs["fstype"], fs["size"]) == ("loop-ext4", "ext4", 64 * M)
    assert (fs["device"], fs["image"], fs["mount"]) == (ready["device"], ready["image"], ready["target_dir"])
    assert [w["pid"] for w in s["writers"]] == ready["pids"]
    for w in s["writers"]:
        assert (w["iterations"], w["bytes"], w["stopped_by"], w["exit"], w["error"]) == (
            8, 8 * 256 * 1024, "iterations", "ok", None)
        f = w["fsync_ms"]
        assert f["count"] == 8 and 0 < f["min"] <= f["median"] <= f["p99"] <= f["max"]
        assert w["file"] == os.path.join(ready["target_dir"], "bpftools-repro-%d-w%d" % (s["owner_pid"], w["index"]))
    assert (s["iterations"], s["bytes"]) == (16, 16 * 256 * 1024)
    assert s["fsync_ms"]["count"] == 16
    assert s["slow_fsyncs"] == sum(w["slow_fsyncs"] for w in s["writers"])
    assert s["cleanup"]["errors"] == []
    assert sorted(s["cleanup"]["removed"]) == sorted([
        "unmounted %s" % ready["target_dir"],
        "detached %s (backing %s)" % (ready["device"], ready["image"]),
        "removed %s" % os.path.dirname(ready["image"]),
        "removed cgroup %s" % ready["cgroup"]])
    _gone(ready)


@pytest.mark.root
def test_dir_mode_removes_its_files(tmp_path):
    _memory_mount()
    r = repro("--dir", str(tmp_path), "--writers", "3", "--chunk", "64K", "--iterations", "4", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["filesystem"]["kind"] == "dir" and s["filesystem"]["target_dir"] == str(tmp_path)
    assert [(w["iterations"], w["bytes"]) for w in s["writers"]] == [(4, 4 * 65536)] * 3
    assert s["cleanup"] == {"errors": [], "removed": [
        "removed %s" % os.path.join(str(tmp_path), "bpftools-repro-%d-w%d" % (s["owner_pid"], i)) for i in (1, 2, 3)
    ] + ["removed cgroup %s" % s["cgroup"]["path"]]}
    assert os.listdir(str(tmp_path)) == []
    assert not os.path.exists(s["cgroup"]["path"])


@pytest.mark.root
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_cleans_up(tmp_path, signum, code):
    _memory_mount()
    ready_path = str(tmp_path / "ready.json")
    proc = start("--duration", "30", "--chunk", "256K", "--ready-file", ready_path)
    ready = wait_ready(ready_path, proc)
    time.sleep(0.5)
    assert os.path.isdir(ready["cgroup"]) and _mounted(ready["target_dir"])
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(r"^bpftools: error: repro kmem-io interrupted by %s after \d+\.\d s; writers stopped, "
                    r"cleaned up \(4 items removed\)$" % signal.Signals(signum).name, lines[0]), lines[0]
    _gone(ready)


@pytest.mark.root
def test_next_run_removes_leftovers_of_a_killed_run(tmp_path):
    _memory_mount()
    ready_path = str(tmp_path / "ready.json")
    proc = start("--duration", "30", "--chunk", "256K", "--ready-file", ready_path)
    ready = wait_ready(ready_path, proc)
    proc.kill()
    proc.communicate(timeout=30)
    time.sleep(0.3)
    assert os.path.isdir(ready["cgroup"]) and _mounted(ready["target_dir"])  # SIGKILL: no cleanup
    assert _loops_of(ready["image"]) == [ready["device"]]
    r = repro("--iterations", "1", "--json", "--size", "32M", "--memory-limit", "32M")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["leftovers_removed"] == {"errors": [], "removed": [
        "unmounted %s" % ready["target_dir"],
        "detached %s (backing %s)" % (ready["device"], ready["image"]),
        "removed %s" % os.path.dirname(ready["image"]),
        "removed cgroup %s" % ready["cgroup"]]}
    _gone(ready)


@pytest.mark.root
def test_not_root_subprocess(tmp_path):
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) missing")
    r = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", RUN,
                        "repro", "kmem-io"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, cwd="/")
    assert r.returncode == EXIT_NOT_ROOT
    assert r.stderr.strip().startswith("bpftools: error: bpftools repro kmem-io needs root")
