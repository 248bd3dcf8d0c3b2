"""netdevwait on real kernels: a leaked reference on the namespace end of a veth pair, then the namespace
deleted, is seen at the kernel's rebroadcasts with the exact device, count and rounds, and its end.

The bpftools_devref injector holds one reference on NETNS_IF (as a buggy protocol would); ``ip netns
del`` makes the cleanup kworker wait for it in netdev_run_todo. Two netdevwait runs watch: kprobe mode
(raw_notifier_call_chain rebroadcasts, free_netdev) and kernel log mode (/dev/kmsg). Expected: usage
count 1 on 5.10, 2 on 6.x (base reference since v5.13) -- the same as the kernel's own
netdev_refcnt_read() (the injector prints it) --, one leaked reference either way, at least two
rebroadcast rounds, and in kprobe mode the end of the wait after ``put``. A namespace deleted without a
leak first must not show up.

Runs inside ``python3 lab/run.py SUITE -- tests/kernel/test_netdevwait.py``.
"""
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List

import pytest

from injectors import Injector, unregister_warnings_every_second, wait_until
from kerneltier import modprobe

pytestmark = pytest.mark.kernel

NETNS, HOST_IF, NETNS_IF = "bpftools-ndw", "ndwh", "ndwn"
CLEAN_NETNS, CLEAN_HOST_IF, CLEAN_NETNS_IF = "bpftools-ndwc", "ndwch", "ndwcn"


def kernel_version() -> tuple:
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())


def base_references() -> int:
    """The device's own reference while it waits: since v5.13 (919067cc845f and its refcount fix)."""
    return 1 if kernel_version() >= (5, 13) else 0


def _quiet(*argv: str) -> None:
    subprocess.call(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Run(object):
    """``bpftools netdevwait ARGS --json`` in the background; its JSON lines arrive in a queue."""

    def __init__(self, workdir: str, name: str, *args: str) -> None:
        self.ready = os.path.join(workdir, "ready-" + name)
        self.proc = subprocess.Popen([sys.executable, "-m", "bpftools.cli", "netdevwait", "--json",
                                      "--ready-file", self.ready] + list(args), cwd="/",
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self.lines = queue.Queue()  # type: queue.Queue
        self.objects = []  # type: List[Dict[str, Any]]
        self.err = ""
        self._errors = []  # type: List[str]
        self._pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True),
                       threading.Thread(target=self._pump, args=(self.proc.stderr, self._errors.append),
                                        daemon=True)]
        for pump in self._pumps:
            pump.start()

    @staticmethod
    def _pump(stream: Any, put: Callable[[str], None]) -> None:
        for line in stream:
            put(line)

    def wait_ready(self, timeout: float = 300) -> None:
        if not wait_until(lambda: os.path.exists(self.ready) or self.proc.poll() is not None, timeout) \
                or not os.path.exists(self.ready):
            self.stop()
            raise AssertionError("netdevwait did not start: rc=%s\n%s" % (self.proc.returncode, self.err))

    def wait_for(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float) -> Dict[str, Any]:
        """The first JSON object (already seen or coming within TIMEOUT s) that PREDICATE accepts."""
        deadline = time.monotonic() + timeout
        for obj in self.objects:
            if predicate(obj):
                return obj
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("nothing matched within %d s; seen: %s" % (timeout, self.objects[-5:]))
            if line.startswith("{"):
                self.objects.append(json.loads(line))
                if predicate(self.objects[-1]):
                    return self.objects[-1]

    def stop(self) -> "Run":
        """SIGTERM: the tool prints its summary and exits 0; then every line it wrote is read."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pump in self._pumps:
            pump.join(timeout=10)
        self.err = "".join(self._errors)
        while not self.lines.empty():
            line = self.lines.get()
            if line.startswith("{"):
                self.objects.append(json.loads(line))
        return self

    def updates(self, device: str) -> List[Dict[str, Any]]:
        return [o for o in self.objects if o["type"] == "netdev_wait" and o["name"] == device]

    def summary(self) -> Dict[str, Any]:
        (summary,) = [o for o in self.objects if o["type"] == "netdev_wait_summary"]
        return summary


def veth_into_netns(netns: str, host_if: str, netns_if: str) -> Dict[str, int]:
    """HOST_IF here, its peer NETNS_IF in a new namespace NETNS with a process in it (a pod's); returns
    the namespace inode, both ifindexes and that process's pid."""
    _quiet("ip", "netns", "del", netns)
    _quiet("ip", "link", "del", host_if)
    subprocess.check_call(["ip", "netns", "add", netns])
    subprocess.check_call(["ip", "link", "add", host_if, "type", "veth", "peer", "name", netns_if, "netns", netns])
    pod = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "600"])
    with open("/sys/class/net/%s/ifindex" % host_if) as f:
        host_ifindex = int(f.read())
    return {"netns": os.stat("/var/run/netns/%s" % netns).st_ino, "host_ifindex": host_ifindex, "pod": pod.pid,
            "ifindex": int(subprocess.check_output(["ip", "netns", "exec", netns, "cat",
                                                    "/sys/class/net/%s/ifindex" % netns_if]))}


def delete_netns(netns: str, facts: Dict[str, int]) -> None:
    """The pod's process ends, then the namespace is deleted (what the CNI plugin does)."""
    os.kill(facts["pod"], signal.SIGKILL)
    subprocess.call(["ip", "netns", "del", netns])


@pytest.fixture(scope="module")
def leak() -> Iterator[Dict[str, Any]]:
    """Both runs over one clean namespace deletion and one leaked one; their objects and the ground truth."""
    modprobe("veth")
    workdir = tempfile.mkdtemp(prefix="bpftools-ndw-")
    runs = []  # type: List[Run]
    try:
        with unregister_warnings_every_second(), Injector("bpftools_devref") as devref:
            clean = veth_into_netns(CLEAN_NETNS, CLEAN_HOST_IF, CLEAN_NETNS_IF)
            facts = veth_into_netns(NETNS, HOST_IF, NETNS_IF)
            subprocess.check_call(["ip", "netns", "exec", NETNS, "sh", "-c",
                                   "echo hold %s > %s" % (NETNS_IF, devref.proc)])
            record = os.path.join(workdir, "kprobe.jsonl")
            kprobe = Run(workdir, "kprobe", "--mode", "kprobe", "--record", record, "-d", "300")
            log = Run(workdir, "log", "--mode", "log", "-d", "300")
            runs = [kprobe, log]
            kprobe.wait_ready()
            log.wait_ready()
            time.sleep(2.5)                          # one namespace snapshot after the pod processes started
            delete_netns(CLEAN_NETNS, clean)
            assert wait_until(lambda: not os.path.exists("/sys/class/net/" + CLEAN_HOST_IF), 15)
            time.sleep(2)                            # a wait would have had a rebroadcast round by now
            delete_netns(NETNS, facts)
            kprobe.wait_for(lambda o: o.get("name") == NETNS_IF and (o.get("rounds") or 0) >= 2, 60)
            log.wait_for(lambda o: o.get("name") == NETNS_IF, 40)
            facts["kernel_count"] = int(re.search(r"^held %s (\d+)$" % NETNS_IF, devref.read(), re.M).group(1))
            devref.command("put")
            kprobe.wait_for(lambda o: o.get("name") == NETNS_IF and o.get("update") == "end", 30)
            for run in runs:
                run.stop()
            report = subprocess.run([sys.executable, "-m", "bpftools.cli", "report", record], cwd="/",
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            yield {"kprobe": kprobe, "log": log, "facts": facts, "clean": clean, "report": report}
    finally:
        for run in runs:
            run.stop()
        for netns, host_if in ((NETNS, HOST_IF), (CLEAN_NETNS, CLEAN_HOST_IF)):
            _quiet("ip", "netns", "del", netns)
            _quiet("ip", "link", "del", host_if)
        shutil.rmtree(workdir, ignore_errors=True)


def test_kprobe_mode_shows_the_device_waiting_with_the_leak_then_the_end(leak):
    run, facts = leak["kprobe"], leak["facts"]
    assert run.proc.returncode == 0, run.err
    assert "kprobe mode: rounds from raw_notifier_call_chain(netdev_chain, NETDEV_UNREGISTER)" in run.err
    assert facts["kernel_count"] == 1 + base_references()
    updates = run.updates(NETNS_IF)
    assert [u["update"] for u in updates][0] == "waiting" and updates[-1]["update"] == "end", updates
    waiting = [u for u in updates if u["update"] != "end"]
    for u in waiting:
        assert (u["dev"], u["ifindex"], u["netns"], u["count"], u["base"], u["leaked"], u["ended"]) == (
            updates[0]["dev"], facts["ifindex"], facts["netns"], 1 + base_references(), base_references(), 1,
            False), u
        assert u["waiter_comm"].startswith("kworker"), u
    assert max(u["rounds"] for u in waiting) >= 2
    # "waiting" comes with the first round, or with a read 1 s in if that came first; then one line per round
    assert [u["rounds"] for u in updates if u["update"] == "round"] == list(
        range(updates[0]["rounds"] + 1, updates[-1]["rounds"] + 1))
    end = updates[-1]
    assert (end["count"], end["leaked"], end["ended"]) == (base_references(), 0, True)
    assert end["waited"] >= end["rounds"] - 1                  # rebroadcasts are more than 1 s apart
    ctx = updates[0]["context"]
    assert ctx["netns_names"] == [NETNS] and ctx["host_netns"] is False
    assert ctx["veth_peers"] == [{"name": HOST_IF, "ifindex": facts["host_ifindex"]}]
    assert [(p["pid"], p["comm"]) for p in ctx["processes"]] == [(facts["pod"], "sleep")]
    summary = run.summary()
    (episode,) = [e for e in summary["episodes"] if e["name"] == NETNS_IF]
    assert (episode["ifindex"], episode["max_count"], episode["ended"], episode["rounds"]) == (
        facts["ifindex"], 1 + base_references(), True, end["rounds"])
    assert summary["meaning"]["base_references"] == base_references()


def test_a_namespace_deleted_without_a_leak_does_not_show_up(leak):
    ours = (NETNS_IF, HOST_IF, CLEAN_NETNS_IF, CLEAN_HOST_IF)   # earlier tests' devices may be in the log
    for run in (leak["kprobe"], leak["log"]):
        assert run.updates(CLEAN_NETNS_IF) == [] and run.updates(CLEAN_HOST_IF) == []
        assert [e["name"] for e in run.summary()["episodes"] if e["name"] in ours] == [NETNS_IF]


def test_kernel_log_mode_reads_the_same_count_by_name(leak):
    run = leak["log"]
    assert run.proc.returncode == 0, run.err
    updates = run.updates(NETNS_IF)
    assert updates[0]["update"] == "waiting"
    for u in updates:
        assert (u["count"], u["base"], u["leaked"], u["ended"], u["rounds"], u["ifindex"], u["netns"]) == (
            1 + base_references(), base_references(), 1, None, None, None, None), u
    assert [u["messages"] for u in updates] == list(range(1, len(updates) + 1))


def test_report_replays_the_recording(leak):
    from bpftools.tools.netdevwait import HEADER, summary_lines, update_line
    report, run = leak["report"], leak["kprobe"]
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    start = lines.index(HEADER) + 1
    shown = lines[start:]
    updates = [o for o in run.objects if o["type"] == "netdev_wait"]
    assert shown[:len(updates)] == [update_line(u) for u in updates]
    summary = summary_lines(run.summary())
    assert summary[0] == "netdevwait summary (kprobe mode): 1 device wait(s) in unregister"
    assert shown[len(updates):len(updates) + len(summary)] == summary
