"""The demo (README, ``scripts/demo``): both incidents reproduced on a real kernel, diagnosed, one report.

1. I/O jitter: the ``bpftools_slabfail`` module fails a writer's biovec-max slab allocations and holds
   the pool's reserve (what a full kmem limit does on RHEL 7), so the writer's fsync sleeps 5 s in
   ``mempool_alloc``; ``bpftools iojitter`` is attached throughout.
2. netdev leak: a pod-like namespace ``demo-pod`` with ``eth0`` (a veth); ``bpftools_devref`` takes a
   reference on it that nobody drops and the namespace is deleted, so the kernel logs
   ``unregister_netdevice: waiting for eth0 to become free``; ``bpftools refleak --netns demo-pod``
   watches from before the hold until the wait is under way.

Then ``bpftools report`` turns both recordings into one report directory (report.html, flame graphs),
kept for the host with the recordings (``lab/run.py --out``). The assertions are the demo's promise:
each tool names the cause it was built to find.
"""
import json
import os
import subprocess
import sys
from typing import Any, Dict, Tuple

import pytest

from bpftools.analyses.stacks import base_name
from injectors import Injector, KernelLog, run_slabfail_writer, tasks_in, wait_until
from kerneltier import keep_for_host, kernel_version, modprobe

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import incident1_workloads as wl  # noqa: E402  (tests/)

pytestmark = pytest.mark.kernel
NETNS, POD_IF, HOST_IF = "demo-pod", "eth0", "veth-demo"


def _quiet(*argv: str) -> None:
    subprocess.call(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def reproduce_io_jitter(tmp: str, mnt: str) -> Tuple[int, Dict[str, Any]]:
    """Incident 1 under iojitter; returns the stalled writer's pid and iojitter's --json result."""
    with Injector("bpftools_slabfail") as injector:
        tool = wl.Tool(tmp, "iojitter", "--mode", "kprobe", "-m", "1000", "-K", "--json", "--record",
                       os.path.join(tmp, "iojitter.jsonl"), "-d", "600")
        try:
            writer = run_slabfail_writer(os.path.join(mnt, "demo-io"), injector, True,
                                         lambda pid: pid in tasks_in("mempool_alloc"))
        finally:
            tool.stop()
    assert tool.returncode == 0, tool.err
    (result,) = tool.json_lines()
    return writer, result


def reproduce_netdev_leak(tmp: str) -> Tuple[int, Dict[str, Any]]:
    """Incident 2 under refleak, stopped while the device waits; returns the device's ifindex and
    refleak's --json result. The reference is dropped at the end."""
    modprobe("veth")
    _quiet("ip", "netns", "del", NETNS)
    _quiet("ip", "link", "del", HOST_IF)
    with Injector("bpftools_devref") as devref, KernelLog() as log:
        subprocess.check_call(["ip", "netns", "add", NETNS])
        subprocess.check_call(["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", POD_IF, "netns", NETNS])
        ifindex = int(subprocess.check_output(["ip", "netns", "exec", NETNS, "cat",
                                               "/sys/class/net/%s/ifindex" % POD_IF]))
        tool = wl.Tool(tmp, "refleak", "--netns", NETNS, "--json", "--record", os.path.join(tmp, "refleak.jsonl"))
        try:
            subprocess.check_call(["ip", "netns", "exec", NETNS, "sh", "-c",
                                   "echo hold %s > %s" % (POD_IF, devref.proc)])
            subprocess.check_call(["ip", "netns", "del", NETNS])
            message = log.wait_for("waiting for %s to become free" % POD_IF, 60)
            assert message is not None, "the kernel never logged the wait"
        finally:
            tool.stop(settle=2)
            if "held " in devref.read():
                devref.command("put")
        assert wait_until(lambda: not tasks_in("netdev_run_todo"), 60)
    _quiet("ip", "link", "del", HOST_IF)
    assert tool.returncode == 0, tool.err
    return ifindex, json.loads(tool.out)


def test_demo_both_incidents_one_report(tmp_path, ext4_mount):
    tmp = str(tmp_path)
    writer, io_result = reproduce_io_jitter(tmp, ext4_mount)
    ifindex, leak_result = reproduce_netdev_leak(tmp)
    records = [os.path.join(tmp, name) for name in ("iojitter.jsonl", "refleak.jsonl")]
    out_dir = os.path.join(tmp, "report")
    made = subprocess.run([sys.executable, "-m", "bpftools.cli", "report"] + records + ["--report", out_dir],
                          cwd=wl.CLI_CWD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert made.returncode == 0, made.stderr
    for path in records:
        keep_for_host(path, "demo-" + os.path.basename(path))
    for name in sorted(os.listdir(out_dir)):
        keep_for_host(os.path.join(out_dir, name), "demo-report/" + name)

    (episode,) = [e for e in io_result["episodes"] if e["tid"] == writer]
    assert episode["explained"] is True and episode["mempool_timeouts"] == 1, episode
    assert episode["waits"][0]["pool_cache"] == "biovec-max"
    frames = [base_name(f) for f in episode["waits"][0]["kstack"]]
    assert frames[frames.index("mempool_alloc") + 1] == (
        "bvec_alloc" if kernel_version() < (5, 12) else "bio_alloc_bioset"), frames

    (device,) = [d for d in leak_result["devices"] if d["name"] == POD_IF]
    assert (device["ifindex"], device["verdict"], device["leaked"]) == (ifindex, "leak", 1), device
    (watch,) = [s for s in device["strategies"] if s["strategy"] == "watch"]
    assert [(base_name(r["stack"][0]), r["count"]) for r in watch["unbalanced"]] == [("bpftools_devref_take", 1)], \
        watch["unbalanced"]

    with open(os.path.join(out_dir, "report.html"), encoding="utf-8") as f:
        page = f.read()
    for fact in ("biovec-max", "bpftools_devref_take", "Device references not dropped",
                 "Slow writebacks stalled in mempool_alloc"):
        assert fact in page, fact
