"""The lab's fault injectors (lab/injectors) produce their incidents with known ground truth.

- ``bpftools_devref``: one leaked reference on the netns side of a veth pair keeps the netns
  cleanup kworker in ``netdev_run_todo`` printing ``unregister_netdevice: waiting for DEV to become
  free. Usage count = N`` (N = 2 from v5.13, which keeps a base reference; 1 before) until the test
  drops the reference; ``clean`` (hold and drop at once) lets the device go silently.
- ``bpftools_slabfail``: failing an fsync writer's biovec-max allocations, with the bvec mempool's
  reserve held by the module, makes the writer sleep in mempool_alloc's io_schedule_timeout(5*HZ)
  (one timeout, then a wake-up when the module stops and gives the reserve back); the module counts
  every failure it injected; without injection the writer never sleeps there.

Runs inside ``python3 lab/run.py SUITE``; elsewhere it skips (conftest) unless kprobes exist.
"""
import ctypes as ct
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator, List

import pytest

from bpftools.analyses.kernel_log import find_incidents
from bpftools.analyses.stacks import base_name
from injectors import (Injector, KernelLog, bvec_caller, run_slabfail_writer, tasks_in,
                       unregister_warnings_every_second, wait_until)
from kerneltier import kernel_version, modprobe

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: incident1_workloads

pytestmark = pytest.mark.kernel

NETNS = "bpftools-devref"
HOST_IF, NETNS_IF = "bpfdrhost", "bpfdrns"
WAITING = "unregister_netdevice: waiting for %s to become free" % NETNS_IF


def expected_usage_count(leaked: int) -> int:
    """What the kernel prints for LEAKED references: since v5.13 the device keeps a base reference."""
    return leaked + (1 if kernel_version() >= (5, 13) else 0)


@pytest.fixture(scope="module")
def devref() -> Iterator[Injector]:
    modprobe("veth")
    with Injector("bpftools_devref") as injector:
        yield injector


@pytest.fixture(scope="module")
def warn_every() -> Iterator[int]:
    """Seconds between the kernel's "waiting for" messages: 1 where the sysctl exists (v5.12+),
    else the fixed 10."""
    with unregister_warnings_every_second() as every:
        yield every


def _quiet(*argv: str) -> None:
    subprocess.call(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def veth_into_netns() -> Iterator[None]:
    """HOST_IF in this netns, its peer NETNS_IF in a new netns NETNS (both down)."""
    _quiet("ip", "netns", "del", NETNS)
    _quiet("ip", "link", "del", HOST_IF)
    subprocess.check_call(["ip", "netns", "add", NETNS])
    try:
        subprocess.check_call(["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NETNS_IF,
                               "netns", NETNS])
        yield
    finally:
        _quiet("ip", "netns", "del", NETNS)
        _quiet("ip", "link", "del", HOST_IF)


def in_netns(injector: Injector, command: str) -> None:
    """Write COMMAND to the module from inside NETNS (names are looked up in the writer's netns)."""
    subprocess.check_call(["ip", "netns", "exec", NETNS, "sh", "-c",
                           "echo %s > %s" % (command, injector.proc)])


def waiting_messages(records: List[str]) -> List[str]:
    return [r for r in records if WAITING in r]


def host_if_gone() -> bool:
    return not os.path.exists("/sys/class/net/%s" % HOST_IF)


def test_devref_leak_keeps_the_netns_cleanup_waiting_until_put(devref, warn_every):
    before = devref.counters()
    with veth_into_netns(), KernelLog() as log:
        try:
            in_netns(devref, "hold " + NETNS_IF)
            assert devref.counters()["holds"] == before["holds"] + 1
            subprocess.check_call(["ip", "netns", "del", NETNS])
            record = log.wait_for(WAITING, timeout=warn_every + 20)
            assert record is not None, "no 'waiting for %s' message: %r" % (NETNS_IF, log.records[-5:])
            count = int(re.search(r"Usage count = (\d+)", record).group(1))
            assert count == expected_usage_count(1)
            assert "held %s %d" % (NETNS_IF, count) in devref.read().splitlines()
            assert wait_until(host_if_gone, 10)                 # the peer went in the same batch
            waiters = tasks_in("netdev_run_todo")
            assert len(waiters) == 1 and list(waiters.values())[0].startswith("kworker"), waiters

            findings = [f for f in find_incidents(log.records, kernel_release=os.uname().release)
                        if f.kind == "netdev_unregister_wait"]
            assert len(findings) == 1
            (device,) = findings[0].facts["devices"]
            assert (device["name"], device["last_usage_count"], device["leaked_references"]) == (
                NETNS_IF, expected_usage_count(1), 1)
            assert findings[0].count == len(waiting_messages(log.records))
        finally:
            devref.command("put")
        assert devref.counters()["puts"] == before["puts"] + 1
        assert wait_until(lambda: not tasks_in("netdev_run_todo"), 15), tasks_in("netdev_run_todo")
        log.poll()
        time.sleep(warn_every + 1.5)
        assert waiting_messages(log.poll()) == []
    assert "held " not in devref.read()


def test_devref_clean_lets_the_device_go_at_once(devref, warn_every):
    before = devref.counters()
    with veth_into_netns(), KernelLog() as log:
        in_netns(devref, "clean " + NETNS_IF)
        assert devref.counters() == {"holds": before["holds"] + 1, "puts": before["puts"] + 1}
        subprocess.check_call(["ip", "netns", "del", NETNS])
        assert wait_until(host_if_gone, 15)
        assert wait_until(lambda: not tasks_in("netdev_run_todo"), 5), tasks_in("netdev_run_todo")
        time.sleep(warn_every + 1.5)
        log.poll()
        assert waiting_messages(log.records) == []
    assert "held " not in devref.read()


def test_devref_commands_report_errors(devref):
    with pytest.raises(OSError) as info:
        devref.command("hold no-such-dev")
    assert info.value.errno == 19             # ENODEV
    with pytest.raises(OSError) as info:
        devref.command("put")
    assert info.value.errno == 2              # ENOENT: nothing held
    with pytest.raises(OSError) as info:
        devref.command("frobnicate lo")
    assert info.value.errno == 22             # EINVAL
    devref.command("hold lo")
    assert "held lo " in devref.read()
    devref.command("put lo")
    assert "held " not in devref.read()


# ---------------------------------------------------------------------------------------------
# bpftools_slabfail: biovec slab failures send an ext4 writer into the mempool's 5-second sleeps
# ---------------------------------------------------------------------------------------------
#
# Workload: a child dirties 1 MiB of one file on a loop-mounted ext4 (the loop device's backing
# file on tmpfs) and fsyncs it. ext4 writeback
# asks for BIO_MAX_VECS-vector bios (io_submit_init_bio), which bio_alloc_bioset → bvec_alloc
# takes straight from fs_bio_set's bvec mempool; its pool->alloc (mempool_alloc_slab →
# kmem_cache_alloc on the biovec-max slab) is what the module fails for the writer. With
# ``drain=1`` the module holds the pool's 2 reserved elements from ``enable=1`` on, so the
# writer's first bvec allocation fails twice (the reduced and then the full gfp mask) and sleeps
# in io_schedule_timeout(5*HZ); that sleep times out (nothing gives an element back), the retry
# fails a third time and sleeps again, until the test writes ``enable=0`` SLABFAIL_HOLD_S after it saw the
# writer in mempool_alloc: the module stops failing and gives the elements back (mempool_free →
# wake_up), which ends the second sleep early. (Without draining, the reserve runs out only with
# three bios in flight at once: a 4 MiB contiguous fsync made 2 bios on 6.1, bio_add_page merging
# physically contiguous pages, so that path was not made deterministic.) Without injection the
# slab serves every bvec and the writer never sleeps in mempool_alloc. A BPF observer times the
# writer's io_schedule_timeout sleeps (entry to the following finish_wait) and keeps their kernel
# stacks; the mempool ones are those with mempool_alloc in the stack.

LONG_SLEEP_NS = 4.5e9


OBSERVER = r"""
#include <uapi/linux/ptrace.h>

struct sleep_t {
    u64 start_ns;
    u64 duration_ns;
    u32 tid;
    int stackid;
};
BPF_ARRAY(target, u32, 1);
BPF_HASH(sleeping, u32, struct sleep_t);
BPF_HASH(sleeps, u64, struct sleep_t);
BPF_STACK_TRACE(stacks, 1024);

int on_sleep_entry(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    int zero = 0;
    u32 *tgid = target.lookup(&zero);
    if (!tgid || *tgid != (u32)(id >> 32))
        return 0;
    struct sleep_t s = {};
    s.start_ns = bpf_ktime_get_ns();
    s.tid = id;
    s.stackid = stacks.get_stackid(ctx, 0);
    u32 tid = id;
    sleeping.update(&tid, &s);
    return 0;
}

int on_finish_wait(struct pt_regs *ctx)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct sleep_t *s = sleeping.lookup(&tid);
    if (!s)
        return 0;
    struct sleep_t done = *s;
    done.duration_ns = bpf_ktime_get_ns() - s->start_ns;
    u64 key = done.start_ns;
    sleeps.update(&key, &done);
    sleeping.delete(&tid);
    return 0;
}
"""


@pytest.fixture(scope="module")
def observer():
    """A sleep of the target tgid runs from io_schedule_timeout entry (kernel stack taken there) to
    the next finish_wait entry (mempool_alloc calls it right after the sleep). Kprobes only, and
    which sleeps are mempool_alloc's is read from the stack: on 5.10 a kretprobe on either function
    cuts that stack at kretprobe_trampoline (measured), as its unwinder cannot pass it."""
    from bcc import BPF
    bpf = BPF(text=OBSERVER.encode())
    bpf.attach_kprobe(event=b"io_schedule_timeout", fn_name=b"on_sleep_entry")
    bpf.attach_kprobe(event=b"finish_wait", fn_name=b"on_finish_wait")
    try:
        yield bpf
    finally:
        bpf.cleanup()


def _frames(bpf, stackid: int) -> List[str]:
    if stackid < 0:
        return []
    return [base_name(bpf.ksym(addr).decode("utf-8", "replace")) for addr in bpf[b"stacks"].walk(stackid)]


def observed_sleeps(bpf, tid: int) -> List[dict]:
    """TID's finished io_schedule_timeout sleeps inside mempool_alloc, in start order, with their
    kernel stacks (base names)."""
    out = []
    for _, s in sorted(bpf[b"sleeps"].items(), key=lambda kv: kv[0].value):
        frames = _frames(bpf, s.stackid)
        if s.tid == tid and "mempool_alloc" in frames:
            out.append({"duration_ns": s.duration_ns, "stack": frames})
    return out


def sleeping_in_mempool(bpf, tid: int) -> bool:
    """True while TID sleeps in io_schedule_timeout called from mempool_alloc."""
    return any(s.tid == tid and "mempool_alloc" in _frames(bpf, s.stackid)
               for _, s in bpf[b"sleeping"].items())


@pytest.fixture(scope="module")
def slabfail():
    with Injector("bpftools_slabfail") as injector:
        yield injector


def write_and_fsync(mnt: str, injector: Injector, bpf, inject: bool) -> dict:
    """One writer run (see the section comment); returns its pid, its observed mempool sleeps and
    the module's counters before and after."""
    bpf[b"sleeps"].clear()
    before = injector.counters()

    def observe(pid: int) -> None:
        bpf[b"target"][ct.c_int(0)] = ct.c_uint32(pid)

    def all_sleeps() -> str:
        return "\nall sleeps: %s" % [(s.tid, s.duration_ns, _frames(bpf, s.stackid))
                                      for _, s in list(bpf[b"sleeps"].items()) + list(bpf[b"sleeping"].items())]
    pid = run_slabfail_writer(os.path.join(mnt, "slabfail-%d" % os.getpid()), injector, inject,
                              lambda tid: sleeping_in_mempool(bpf, tid), on_dirty=observe, why=all_sleeps)
    return {"pid": pid, "sleeps": observed_sleeps(bpf, pid), "before": before, "after": injector.counters()}


def test_slabfail_learns_the_biovec_allocations(slabfail):
    counts = slabfail.counters()
    assert counts == {"biovec-16": 0, "biovec-64": 0, "biovec-128": 0, "biovec-max": 0, "active": 0,
                      "hoarded": 0, "slub_oom": 0}
    sites = dict(line.split()[1:3] for line in slabfail.read().splitlines() if line.startswith("site "))
    assert sorted(sites) == ["biovec-128", "biovec-16", "biovec-64", "biovec-max"]
    assert all(sites[name].startswith("bvec_alloc") for name in ("biovec-16", "biovec-64", "biovec-128")), sites
    assert sites["biovec-max"].startswith(("mempool_alloc", "mempool_alloc_slab")), sites


def test_slabfail_window_ends_the_injection(slabfail):
    try:
        slabfail.set_param("window_ms", 200)
        slabfail.set_param("enable", 1)
        assert slabfail.counters()["active"] == 1
        assert wait_until(lambda: slabfail.counters()["active"] == 0, 5)
    finally:
        slabfail.set_param("enable", 0)
        slabfail.set_param("window_ms", 0)


def test_slabfail_biovec_failures_make_the_writer_sleep_in_mempool_alloc(slabfail, observer, ext4_mount):
    run = write_and_fsync(ext4_mount, slabfail, observer, inject=True)
    injected = dict((k, run["after"][k] - run["before"][k]) for k in run["after"] if k.startswith("biovec-"))
    # reduced mask, full mask, sleep (times out), retry, sleep (woken by enable=0), then the slab works
    assert injected == {"biovec-16": 0, "biovec-64": 0, "biovec-128": 0, "biovec-max": 3}
    assert run["after"]["hoarded"] == 0
    durations = [s["duration_ns"] for s in run["sleeps"]]
    assert len(durations) == 2, durations
    assert LONG_SLEEP_NS <= durations[0] < 5.5e9, durations           # io_schedule_timeout(5*HZ)
    assert durations[1] < LONG_SLEEP_NS, durations
    # frame 0 is the probed io_schedule_timeout itself (bcc may name that address
    # __sched_text_start: it is the first function of .sched.text)
    frames = [base_name(f) for f in run["sleeps"][0]["stack"]]
    assert frames[1:3] == ["mempool_alloc", bvec_caller()], frames
    assert "ext4_writepages" in frames, frames


def test_slabfail_off_the_writer_never_sleeps_in_mempool_alloc(slabfail, observer, ext4_mount):
    run = write_and_fsync(ext4_mount, slabfail, observer, inject=False)
    assert run["after"] == run["before"]
    assert run["sleeps"] == []
