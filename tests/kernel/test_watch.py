"""Both incidents on real kernels under ``bpftools watch`` alone: a bundle appears for each.

One watch process (kprobe mode where the kernel has kprobes) runs unattended while the injectors
reproduce the incidents, one after the other: ``bpftools_slabfail`` fails a fsync writer's biovec-max
allocations and holds the bvec pool's reserve (its writeback sleeps 5 s in mempool_alloc), then
``bpftools_devref`` holds a reference on the namespace end of a veth pair whose namespace is deleted
(the cleanup kworker waits in unregister). No tool is started by hand. Each incident's bundle must
appear in the bundle directory, and its report name the cause: biovec-max and mempool_alloc with the
writer's wait, the leaked device with its count.

Runs inside ``python3 lab/run.py SUITE -- tests/kernel/test_watch.py``.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from bpftools.analyses.stacks import MEMPOOL_ALLOC, holds
from bpftools.recording import read_recording
from injectors import Injector, run_slabfail_writer, tasks_in, wait_until
from kerneltier import keep_for_host, kernel_version, modprobe

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import incident1_workloads as wl  # noqa: E402  (tests/)

pytestmark = pytest.mark.kernel
NETNS, HOST_IF, NETNS_IF = "bpftools-watch", "wtchh", "wtchn"
KMEM, NETDEV = "kmem_io_jitter", "netdev_refcount_leak"


class Watch(wl.Tool):
    """``bpftools watch ARGS`` through the CLI (the registry builds watch), stopped like the other tools."""

    def __init__(self, tmp_dir, *args):
        ready = os.path.join(tmp_dir, "ready-watch")
        self.proc = subprocess.Popen([sys.executable, "-m", "bpftools.cli", "watch", "--ready-file", ready]
                                     + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True, cwd=wl.CLI_CWD)
        if not wait_until(lambda: os.path.exists(ready) or self.proc.poll() is not None, 600) \
                or not os.path.exists(ready):
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError("watch did not attach: rc=%s\n%s\n%s" % (self.proc.returncode, out, err))
        self.out = self.err = ""
        self.returncode = None


def _quiet(*argv):
    subprocess.call(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _bundles(top):
    return sorted(n for n in os.listdir(top) if not n.startswith("."))


def _bundle_of(tool, top, incident, timeout):
    """The path of INCIDENT's bundle once it appears; else watch is stopped and its output told."""
    if not wait_until(lambda: any(n.endswith("-" + incident) for n in _bundles(top)), timeout):
        tool.stop(signal.SIGTERM)
        raise AssertionError("no %s bundle in %d s (%s); watch exited %s\nstdout:\n%s\nstderr:\n%s" % (
            incident, timeout, _bundles(top), tool.returncode, tool.out[-3000:], tool.err[-5000:]))
    (name,) = [n for n in _bundles(top) if n.endswith("-" + incident)]
    return os.path.join(top, name)


def _leak_a_device(devref):
    """NETNS_IF in a namespace holding one reference nobody drops, then the namespace deleted."""
    modprobe("veth")
    _quiet("ip", "netns", "del", NETNS)
    _quiet("ip", "link", "del", HOST_IF)
    subprocess.check_call(["ip", "netns", "add", NETNS])
    subprocess.check_call(["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NETNS_IF, "netns", NETNS])
    subprocess.check_call(["ip", "netns", "exec", NETNS, "sh", "-c", "echo hold %s > %s" % (NETNS_IF, devref.proc)])
    subprocess.check_call(["ip", "netns", "del", NETNS])


@pytest.fixture(scope="module")
def watched(tmp_path_factory, ext4_mount):
    """One watch over both incidents; its bundle directory, stderr and the ground truth."""
    tmp = str(tmp_path_factory.mktemp("watch"))
    top = os.path.join(tmp, "bundles")
    tool = Watch(tmp, "--json", "--bundle-dir", top, "--after", "12", "--metrics-addr", "127.0.0.1:0",
                   "-d", "900")
    facts = {}
    try:
        with Injector("bpftools_slabfail") as injector:
            facts["writer"] = run_slabfail_writer(os.path.join(ext4_mount, "watch-io"), injector, True,
                                                  lambda pid: pid in tasks_in("mempool_alloc"))
            # within the bundle's 12 s after the wait: one allocation SLUB reports as failed, from this thread
            injector.command("slub_oom")
            facts["slub_oom_tid"] = threading.get_native_id()
            assert injector.counters()["slub_oom"] == 1
        facts["kmem"] = _bundle_of(tool, top, KMEM, 60)
        with Injector("bpftools_devref") as devref:
            try:
                _leak_a_device(devref)
                facts["netdev"] = _bundle_of(tool, top, NETDEV, 90)
            finally:
                if "held " in devref.read():
                    devref.command("put")
            assert wait_until(lambda: not tasks_in("netdev_run_todo"), 60)
    finally:
        if tool.returncode is None:
            tool.stop(signal.SIGTERM)
        _quiet("ip", "netns", "del", NETNS)
        _quiet("ip", "link", "del", HOST_IF)
    for incident in ("kmem", "netdev"):
        keep_for_host(os.path.join(facts[incident], "recording.jsonl"), "watch-%s.jsonl" % incident)
    facts.update(tool=tool, top=top)
    return facts


def test_watch_ran_unattended_and_left_exactly_the_two_bundles(watched):
    tool = watched["tool"]
    assert tool.returncode == 0, tool.err
    assert _bundles(watched["top"]) == sorted(os.path.basename(watched[k]) for k in ("kmem", "netdev"))
    assert "kprobe" in tool.err.split("watching:")[1].splitlines()[0], tool.err
    bundles = [o for o in tool.json_lines() if o["type"] == "bundle"]
    assert sorted(o["incident"] for o in bundles) == [KMEM, NETDEV]


def test_the_io_bundle_names_biovec_max_and_mempool_alloc_with_the_writers_wait(watched):
    bundle = watched["kmem"]
    summary = json.load(open(os.path.join(bundle, "bundle.json")))
    assert summary["triggers"][0]["source"] == "mempool_wait"
    rec = read_recording(os.path.join(bundle, "recording.jsonl"))
    waits = [e for e in rec.events if e.get("type") == "sleep" and e["tid"] == watched["writer"] and e["in_mempool"]]
    # io_schedule_timeout(5*HZ): the timer may fire up to one jiffy early (10 ms at HZ=100)
    assert waits and waits[0]["timed_out"] is True and waits[0]["duration_ns"] >= 5e9 - 0.02e9
    assert waits[0]["pool_cache"] == "biovec-max" and holds(waits[0]["kstack"], MEMPOOL_ALLOC)   # _noprof: 6.10+
    html = open(os.path.join(bundle, "report.html")).read()
    assert "pool biovec-max; mempool_alloc called from %s" % (
        "bvec_alloc" if kernel_version() < (5, 12) else "bio_alloc_bioset") in html
    assert any(";mempool_alloc" in line for line in open(os.path.join(bundle, "iojitter.folded")))


def test_the_io_bundle_holds_the_slub_report_from_its_kprobe_and_the_kernel_log(watched):
    """watch takes slab failures from slab_out_of_memory (no tracepoint on every allocation): the
    injector's failure, SLUB-reported, with its cache, thread, gfp and caller; the log line too."""
    bundle = watched["kmem"]
    assert "slabfail: the failures SLUB reports (kprobe on slab_out_of_memory" in watched["tool"].err
    rec = read_recording(os.path.join(bundle, "recording.jsonl"))
    reports = [e for e in rec.events if e.get("type") == "slab_failure"]
    assert [(e["kind"], e["source"], e["cache"], e["tid"], e["gfp"], e["node"]) for e in reports] == [
        ("slub_oom", "slab_out_of_memory", "bpftools_slub_oom", watched["slub_oom_tid"], 0xcc0, None)]
    assert holds(reports[0]["kstack"], "slabfail_write"), reports[0]["kstack"]
    sources = [t["source"] for t in json.load(open(os.path.join(bundle, "bundle.json")))["triggers"]]
    assert sources[0] == "mempool_wait" and "slub_alloc_failure" in sources, sources
    log = open(os.path.join(bundle, "kernel-log.txt")).read()
    # 6.12+ names the CPU too: "on CPU 0 (of node 0) on node -1"
    assert re.search(r"SLUB: Unable to allocate memory on (CPU \d+ \(of node \d+\) on )?node -1, "
                     r"gfp=0xcc0\(GFP_KERNEL\)", log), log[-2000:]
    assert "cache: bpftools_slub_oom" in log


def test_the_netdev_bundle_names_the_leaked_device(watched):
    bundle = watched["netdev"]
    rec = read_recording(os.path.join(bundle, "recording.jsonl"))
    updates = [e for e in rec.events if e.get("type") == "netdev_wait" and e.get("name") == NETNS_IF]
    assert updates and updates[0]["update"] == "waiting" and updates[0]["leaked"] == 1
    assert [t["source"] for t in json.load(open(os.path.join(bundle, "bundle.json")))["triggers"]][0] == "netdev_wait"
    html = open(os.path.join(bundle, "report.html")).read()
    assert NETNS_IF in html
    # the kernel's own "waiting for" message (after 10 s) fell in the 12 s after the trigger: doctor says it too
    (leak,) = [v for v in json.load(open(os.path.join(bundle, "doctor.json")))["verdicts"] if v["incident"] == NETDEV]
    assert leak["status"] == "detected" and NETNS_IF in " ".join(leak["evidence"]), leak
