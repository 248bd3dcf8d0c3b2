"""bpftools watch on the live kernel (tracepoint mode: this host has no kprobes).

A real write to a cgroup's memory.kmem.limit_in_bytes is seen with its writer's pid, the value and
the path; a SLUB allocation failure report appended to the kernel log (/dev/kmsg, as the kernel writes
it) triggers a bundle whose recording, kernel log excerpt, doctor verdict and report say so; metrics
are served and written as a textfile; SIGUSR1 asks for a bundle, SIGTERM writes the one in flight;
a half-written bundle a killed run left is removed at start.

Needs root and cgroup v1's memory controller.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from bpftools.recording import read_recording
from incident1_workloads import write_kmem_limit

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import benchlib  # noqa: E402  (bench/: a process's BPF program ids from its fdinfo)

pytestmark = pytest.mark.root


class Watch(object):
    """``bpftools watch --json`` in the background, its JSON lines read as they come."""

    def __init__(self, tmp_path, *args):
        self.ready = tmp_path / "ready"
        self.out_path, self.err_path = tmp_path / "out", tmp_path / "err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bpftools.cli", "watch", "--json", "--mode", "tracepoint", "--ready-file",
             str(self.ready), "--metrics-addr", "127.0.0.1:0", "-d", "120"] + list(args),
            stdout=open(str(self.out_path), "w"), stderr=open(str(self.err_path), "w"))
        deadline = time.monotonic() + 90
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("watch did not attach: rc=%s\n%s" % (self.proc.returncode, self.err))
            time.sleep(0.05)

    @property
    def err(self):
        return self.err_path.read_text()

    def objects(self):
        return [json.loads(line) for line in self.out_path.read_text().splitlines() if line.startswith("{")]

    def wait_for(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [o for o in self.objects() if predicate(o)]
            if found:
                return found[0]
            time.sleep(0.1)
        pytest.fail("nothing matched in %d s: %s\n%s" % (timeout, self.objects()[-5:], self.err))

    def metrics(self):
        addr = re.search(r"metrics on http://(\S+)/metrics", self.err).group(1)
        return urllib.request.urlopen("http://%s/metrics" % addr, timeout=10).read().decode()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode


def _kmsg(*lines):
    """Append records to the kernel log, one per write, as printk makes them."""
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        for line in lines:
            os.write(fd, line.encode())
    finally:
        os.close(fd)


def test_a_kmem_write_then_a_slub_failure_make_one_bundle_with_the_evidence(tmp_path, cgroup_dir):
    bundles = tmp_path / "bundles"
    leftover = bundles / ".partial-20260101T000000Z-kmem_io_jitter"
    leftover.mkdir(parents=True)
    (leftover / "recording.jsonl").write_text("{}\n")
    cache = "bpftools-watch-%d" % os.getpid()
    (tmp_path / "textfile").mkdir()
    watch = Watch(tmp_path, "--bundle-dir", str(bundles), "--after", "1", "--textfile", str(tmp_path / "textfile"))
    try:
        assert not leftover.exists()
        assert "removed %s, a bundle a killed run left half-written" % leftover in watch.err
        writer = write_kmem_limit(cgroup_dir)
        path = cgroup_dir + "/memory.kmem.limit_in_bytes"
        seen = watch.wait_for(lambda o: o.get("type") == "kmem_file" and o["tgid"] == writer)
        assert (seen["op"], seen["value"], seen["ret"], seen["path"], seen["comm"]) == ("write", "1", 1, path, "kmemwriter")
        _kmsg("<4>SLUB: Unable to allocate memory on node -1, gfp=0x8c40(GFP_NOFS|__GFP_NOFAIL)\n",
              "<4>  cache: %s, object size: 4096, buffer size: 4096, default order: 3, min order: 0\n" % cache)
        trigger = watch.wait_for(lambda o: o.get("type") == "trigger")
        assert (trigger["incident"], trigger["source"]) == ("kmem_io_jitter", "slub_alloc_failure")
        done = watch.wait_for(lambda o: o.get("type") == "bundle")
        metrics = watch.metrics()
    finally:
        rc = watch.stop()
    assert rc == 0, watch.err
    assert done["incident"] == "kmem_io_jitter" and os.path.dirname(done["path"]) == str(bundles)
    assert sorted(os.listdir(str(bundles))) == [os.path.basename(done["path"])]
    bundle = done["path"]
    files = set(os.listdir(bundle))      # iojitter.* too when the node wrote back slowly meanwhile
    assert files >= {"bundle.json", "doctor.json", "kernel-log.txt", "kmemsnoop.folded", "kmemsnoop.speedscope.json",
                     "kmemsnoop.svg", "recording.jsonl", "report.html"}
    assert not [f for f in files if f.startswith(".")]
    summary = json.load(open(os.path.join(bundle, "bundle.json")))
    assert [t["source"] for t in summary["triggers"]] == ["slub_alloc_failure"]
    excerpt = open(os.path.join(bundle, "kernel-log.txt")).read()
    assert "cache: %s, object size: 4096" % cache in excerpt
    (kmem,) = [v for v in json.load(open(os.path.join(bundle, "doctor.json")))["verdicts"]
               if v["incident"] == "kmem_io_jitter"]
    assert kmem["status"] == "detected" and cache in " ".join(kmem["evidence"])
    rec = read_recording(os.path.join(bundle, "recording.jsonl"))
    assert rec.header["tool"] == "watch" and rec.trailer["interrupted"] is False
    assert [e["detector"] for e in rec.events if e["type"] == "mode"] == ["io", "kmem", "netdev"]
    (write,) = [e for e in rec.events if e.get("type") == "kmem_file" and e["tgid"] == writer]
    assert (write["path"], write["value"], write["detector"]) == (path, "1", "kmem")
    assert [e["what"] for e in rec.events if e["type"] == "trigger"] == [
        "SLUB allocation failure in the kernel log (1 new)"]
    html = open(os.path.join(bundle, "report.html")).read()
    assert cache in html and path in html
    assert "bpftools_bundles_written_total 1" in metrics
    assert "bpftools_bundles_written_total 1" in (tmp_path / "textfile" / "bpftools.prom").read_text()
    report = subprocess.run([sys.executable, "-m", "bpftools.cli", "report", os.path.join(bundle, "recording.jsonl")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert report.returncode == 0, report.stderr
    assert "trigger: [kmem_io_jitter] SLUB allocation failure in the kernel log (1 new)" in report.stdout
    assert "kmemwriter" in report.stdout and path in report.stdout


def test_sigusr1_asks_for_a_bundle_and_sigterm_writes_it_before_exiting(tmp_path):
    bundles = tmp_path / "bundles"
    watch = Watch(tmp_path, "--bundle-dir", str(bundles), "--after", "600")
    try:
        watch.proc.send_signal(signal.SIGUSR1)
        watch.wait_for(lambda o: o.get("type") == "trigger" and o["incident"] == "manual")
        assert os.listdir(str(bundles)) == []          # still collecting: 600 s after the trigger
        started = time.monotonic()
    finally:
        rc = watch.stop()
    assert rc == 0, watch.err
    assert time.monotonic() - started < 30
    (name,) = os.listdir(str(bundles))
    assert re.match(r"^\d{8}T\d{6}\.\d{3}Z-manual$", name)
    summary = json.load(open(str(bundles / name / "bundle.json")))
    assert summary["triggers"][0]["what"] == "SIGUSR1: a bundle was asked for"
    assert [o["path"] for o in watch.objects() if o.get("type") == "bundle"] == [str(bundles / name)]


def test_the_overhead_bench_measures_three_arms_the_bpf_time_and_the_peak_rss():
    """bench/watch_overhead.py, small: its figures come from watch's own programs and process."""
    out = subprocess.run([sys.executable, os.path.join(BENCH, "watch_overhead.py"),
                          "--repeats", "2", "--seconds", "1", "--settle", "0", "--flood", "2", "--mode", "tracepoint",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    overhead = result["overhead"]
    assert len(overhead["control"]["per_round_ratios"]) == len(overhead["with"]["per_round_ratios"]) == 2
    assert overhead["bpf_by_program"]["sched__sched_sw"]["runs_per_s"] > 0       # the mempool section's hook
    assert len(overhead["bpf_cpu_pct_of_one_cpu"]) == 2
    flood = result["flood"]
    assert flood["peak_rss_mib"] >= flood["rss_at_start_mib"] > 0
    assert flood["kmem_writes_per_s"] > 0


def test_after_sigkill_no_program_of_watch_stays_loaded_or_attached(tmp_path):
    """BPF programs and their tracepoint attachments belong to the process's file descriptors: once it is
    killed, every program id it held is gone (an attached program would still be loaded)."""
    watch = Watch(tmp_path, "--bundle-dir", str(tmp_path / "bundles"))
    progs = benchlib.owned_bpf_ids(watch.proc.pid)["prog"]
    assert len(progs) >= 10, progs          # sched_switch, kmem, writeback, syscalls programs
    watch.stop(signal.SIGKILL)

    def gone(prog):
        try:
            benchlib.bpf_prog_name(prog)
        except OSError:
            return True
        return False
    deadline = time.monotonic() + 30
    while not all(gone(p) for p in progs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in progs if not gone(p)] == []
