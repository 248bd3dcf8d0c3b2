"""The kprobe modes of slabfail, mempoolwait, writeslow and iojitter on real kernels (lab VMs).

Two workloads, each exact:

- ``bpftools_stall``, a test module built here against this kernel's headers, replays the incident's
  sequence on demand: writing ``stall`` to /proc/bpftools_stall runs ``bpftools_stall_do_writepages``
  → ``bpftools_stall_writepages`` → ``bpftools_stall_alloc``, which (like ``bvec_alloc``) first
  allocates from a ``SLAB_ACCOUNT`` cache named ``bpftools_stall`` (512-byte objects, never merged:
  it has a constructor) until that fails, then calls ``mempool_alloc(pool, GFP_NOIO)`` on a one-element pool whose
  ``alloc`` function always fails. The test takes the pool's element first, so the writer sleeps in
  ``io_schedule_timeout(5*HZ)``: the first sleep times out after 5 s, the second is ended early by
  ``give`` (``mempool_free`` → ``wake_up``) 5.5 s after the test saw the writer in ``mempool_alloc``.
  The writer runs in a full memory cgroup (tests/incident1_workloads.py: v1, or v2 on 6.12), so the
  slab allocation really fails (memcg charge) before the mempool.
- The stalled ``fsync`` of tests/incident1_workloads.py (ext4 on a loop device behind a frozen
  filesystem) for ``do_writepages`` > ``ext4_writepages`` nesting with device, inode and pages.

Runs inside ``python3 lab/run.py SUITE``; elsewhere it skips (conftest) unless kprobes exist.
"""
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest

from bpftools.analyses.stacks import base_name
from kerneltier import skip_or_fail

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import incident1_workloads as wl  # noqa: E402  (tests/, shared with the host tier)

pytestmark = pytest.mark.kernel

MODULE = "bpftools_stall"
PROC = "/proc/bpftools_stall"
FIRST_SLEEP_S = 5.0          # io_schedule_timeout(5*HZ)
GIVE_AFTER_S = 5.5
# The tools end by -d, not by a signal: a SIGTERM that lands while a perf-buffer callback runs is
# swallowed by ctypes (see the report on capture.poll_events), and TCG makes callbacks slow.
RUN_S = "40"

MODULE_SOURCE = r"""
// SPDX-License-Identifier: GPL-2.0
/* bpftools_stall: the incident-1 sequence (slab failure, then a mempool sleep) on demand, for tests. */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/mempool.h>
#include <linux/uaccess.h>

static struct kmem_cache *cache;
static mempool_t *pool;
static void *taken;
static bool pool_dry;

static void stall_ctor(void *obj) { }   /* a constructor keeps the cache from being merged */

static void *pool_alloc(gfp_t gfp, void *data)
{
	return READ_ONCE(pool_dry) ? NULL : kmalloc(64, gfp);
}

static void pool_free(void *element, void *data)
{
	kfree(element);
}

static void *objs[4096];

/* What bvec_alloc does: the slab first (charged to the caller's memory cgroup), then the mempool.
 * The slab is asked until it says no: a per-cpu charge stock may satisfy the first requests.
 * noipa: no .isra/.constprop clones, so that the names in stacks and kallsyms are these. */
static noinline __attribute__((noipa)) int bpftools_stall_alloc(void)
{
	int n = 0, i;
	void *element;

	while (n < ARRAY_SIZE(objs) && (objs[n] = kmem_cache_alloc(cache, GFP_KERNEL)))
		n++;
	element = mempool_alloc(pool, GFP_NOIO);
	mempool_free(element, pool);
	for (i = 0; i < n; i++)
		kmem_cache_free(cache, objs[i]);
	return n;
}

/* Stand-ins for the writeback functions around bvec_alloc (writeslow -F probes them). */
static noinline __attribute__((noipa)) int bpftools_stall_writepages(void)
{
	int ret = bpftools_stall_alloc();

	barrier();   /* not a tail call: the caller's frame stays */
	return ret;
}

static noinline __attribute__((noipa)) int bpftools_stall_do_writepages(void)
{
	int ret = bpftools_stall_writepages();

	barrier();
	return ret;
}

static ssize_t stall_write(struct file *file, const char __user *buf, size_t len, loff_t *off)
{
	char cmd[8] = {};

	if (copy_from_user(cmd, buf, min(len, sizeof(cmd) - 1)))
		return -EFAULT;
	if (!strncmp(cmd, "take", 4)) {
		if (!taken)
			taken = mempool_alloc(pool, GFP_KERNEL);   /* the reserved element: the pool is empty now */
	} else if (!strncmp(cmd, "give", 4)) {
		if (taken)
			mempool_free(taken, pool);                  /* wakes a sleeper in mempool_alloc */
		taken = NULL;
	} else if (!strncmp(cmd, "stall", 5)) {
		bpftools_stall_do_writepages();
	} else {
		return -EINVAL;
	}
	return len;
}

static const struct proc_ops stall_ops = {
	.proc_write = stall_write,
};

static int __init stall_init(void)
{
	cache = kmem_cache_create("bpftools_stall", 512, 0, SLAB_ACCOUNT, stall_ctor);
	if (!cache)
		return -ENOMEM;
	pool = mempool_create(1, pool_alloc, pool_free, NULL);
	if (!pool) {
		kmem_cache_destroy(cache);
		return -ENOMEM;
	}
	WRITE_ONCE(pool_dry, true);
	if (!proc_create("bpftools_stall", 0200, NULL, &stall_ops)) {
		mempool_destroy(pool);
		kmem_cache_destroy(cache);
		return -ENOMEM;
	}
	return 0;
}

static void __exit stall_exit(void)
{
	remove_proc_entry("bpftools_stall", NULL);
	if (taken)
		mempool_free(taken, pool);
	mempool_destroy(pool);
	kmem_cache_destroy(cache);
}

module_init(stall_init);
module_exit(stall_exit);
MODULE_LICENSE("GPL");
"""


@pytest.fixture(scope="module")
def stall_module():
    """Build and load bpftools_stall against this kernel's headers; unload it at the end."""
    build = "/lib/modules/%s/build" % os.uname().release
    if not os.path.isdir(build):
        skip_or_fail("no kernel headers at %s to build the test module" % build)
    work = tempfile.mkdtemp(prefix="bpftools-stall-mod-")
    with open(os.path.join(work, MODULE + ".c"), "w") as f:
        f.write(MODULE_SOURCE)
    with open(os.path.join(work, "Makefile"), "w") as f:
        f.write("obj-m := %s.o\n" % MODULE)
    proc = subprocess.run(["make", "-C", build, "M=" + work, "modules"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)
    if proc.returncode != 0:
        skip_or_fail("cannot build the test module:\n%s" % proc.stdout[-3000:])
    subprocess.check_call(["insmod", os.path.join(work, MODULE + ".ko")])
    try:
        yield PROC
    finally:
        subprocess.call(["rmmod", MODULE])
        subprocess.call(["rm", "-rf", work])


@pytest.fixture(scope="module")
def memcg():
    why = wl.memcg_available()
    if why:
        skip_or_fail(why)
    return "/bpftools-slabfail-%d" % os.getpid()


def _command(path, text):
    with open(path, "w") as f:
        f.write(text)


def _stalled_victim(stall_proc):
    """Run the victim with the module's stall; give the element back GIVE_AFTER_S after it sleeps."""
    _command(stall_proc, "take")
    seen = {}

    def during(tid):
        wl.wait_for_frame(tid, "mempool_alloc", timeout=60)
        seen["t"] = time.monotonic()
        time.sleep(GIVE_AFTER_S)
        _command(stall_proc, "give")

    victim = wl.SlabFailure(comm="stallvictim", action=stall_proc, during=during)
    return victim


def _kprobe_plan(tool, *args):
    proc = wl.run_cli(tool, "--ebpf", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_mempoolwait_kprobes_measure_a_timeout_then_an_early_wake_up(tmp_path, stall_module, memcg):
    plan = _kprobe_plan("mempoolwait", "--mode", "kprobe")
    assert "// mode: kprobe" in plan and "-DWANT_SLEEP_KPROBE" in plan
    tool = wl.Tool(str(tmp_path), "mempoolwait", "--mode", "kprobe", "--json", "-d", RUN_S)
    with _stalled_victim(stall_module) as victim:
        tool.wait()
    assert tool.returncode == 0, tool.err
    mine = [e for e in tool.json_lines() if e["tid"] == victim.tid]
    sleeps = [e for e in mine if e["type"] == "sleep"]
    allocs = [e for e in mine if e["type"] == "mempool_alloc"]
    assert [(s["source"], s["in_mempool"], s["timed_out"]) for s in sleeps] == [
        ("kprobe", True, True), ("kprobe", True, False)]
    first, second = sleeps
    # the 5 s timer (one jiffy early at worst), plus the wake-up latency of an emulated CPU
    assert FIRST_SLEEP_S * 1e9 - 0.02e9 <= first["duration_ns"] < FIRST_SLEEP_S * 1e9 + 1e9
    assert 0 < second["duration_ns"] < FIRST_SLEEP_S * 1e9
    assert first["pool"] == second["pool"] and first["pool"] > 0
    hz = first["timeout_jiffies"] / 5                     # io_schedule_timeout(5*HZ)
    assert hz in (100, 250, 300, 1000)
    assert first["caller"] == "bpftools_stall_alloc" and first["comm"] == "stallvictim"
    assert [base_name(f) for f in first["kstack"][1:5]] == [
        "mempool_alloc", "bpftools_stall_alloc", "bpftools_stall_writepages", "bpftools_stall_do_writepages"]
    if "-> mp_alloc_return" in plan:     # kernels whose unwinder sees through kretprobes (5.15+)
        assert [(a["sleeps"], a["failed"], a["pool"]) for a in allocs] == [(2, False, first["pool"])]
        assert allocs[0]["waited_ns"] == first["duration_ns"] + second["duration_ns"]
        assert allocs[0]["duration_ns"] >= allocs[0]["waited_ns"]
    else:
        assert allocs == [] and "no per-call records" in plan
    assert victim.errno == 12


def test_slabfail_kprobe_mode_names_the_cache_it_read_from_the_kernel(tmp_path, stall_module, memcg):
    plan = _kprobe_plan("slabfail", "--mode", "kprobe")
    assert "-DWANT_SLAB_KPROBE" in plan and "slab_alloc_entry" in plan
    if os.path.exists("/sys/kernel/btf/vmlinux"):     # Debian kernels have BTF: the offset comes from it
        assert "-DOFF_CACHE_NAME=" in plan
    names_readable = "-DOFF_CACHE_NAME=" in plan or "-DHAVE_SLUB_DEF" in plan or "-DHAVE_TP_NAME" in plan
    tool = wl.Tool(str(tmp_path), "slabfail", "--mode", "kprobe", "--json", "-d", RUN_S)
    with _stalled_victim(stall_module) as victim:
        tool.wait()
    assert tool.returncode == 0, tool.err
    mine = [e for e in tool.json_lines() if e["tgid"] == victim.pid and e["kind"] == "alloc"]
    assert [e["source"] for e in mine] == ["kmem_cache_alloc", "kmem_cache_alloc"]
    assert mine[0]["call_site"] in ("alloc_empty_file", "__alloc_file")     # 5.10 allocates in __alloc_file
    assert mine[1]["call_site"] == "bpftools_stall_alloc"
    assert [e["cache"] for e in mine] == (["filp", "bpftools_stall"] if names_readable else [None, None])
    assert all(e["cgroup"] == memcg and e["comm"] == "stallvictim" for e in mine)


def test_iojitter_kprobes_give_the_whole_causal_record(tmp_path, stall_module, memcg):
    args = ("--mode", "kprobe", "-m", "1000", "-F", "bpftools_stall_do_writepages",
            "-F", "bpftools_stall_writepages")
    plan = _kprobe_plan("iojitter", *args)
    # failures from the slab tracepoints; no kprobe on the allocators (one per allocation of the node)
    assert "-DWANT_SLAB " in plan and "-> slab_alloc_entry" not in plan and "-DWANT_SLAB_KPROBE" not in plan
    tool = wl.Tool(str(tmp_path), "iojitter", "--json", "-d", RUN_S, *args)
    with _stalled_victim(stall_module) as victim:
        tool.wait()
    assert tool.returncode == 0, tool.err
    (result,) = tool.json_lines()
    (episode,) = [e for e in result["episodes"] if e["tid"] == victim.tid]
    assert [(c["func"], c["depth"]) for c in episode["calls"]] == [
        ("bpftools_stall_do_writepages", 0), ("bpftools_stall_writepages", 1)]
    assert [(w["in_mempool"], w["timed_out"], w["call"]) for w in episode["waits"]] == [
        (True, True, "bpftools_stall_writepages"), (True, False, "bpftools_stall_writepages")]
    assert episode["explained"] is True and episode["mempool_timeouts"] == 1
    cache = episode["waits"][0]["after_slab_failures"]
    assert cache in (["bpftools_stall"], ["bpftools_stall_alloc"])    # the name, or the call site without one
    # e.g. "slab fail bpftools_stall -> mempool wait 5.25s (timed out) -> mempool wait 0.26s (woken) ->
    # bpftools_stall_do_writepages 5.53s > bpftools_stall_writepages 5.53s" (6.12 in TCG)
    assert re.match(r"slab fail %s -> mempool wait 5\.\d\ds \(timed out\) -> mempool wait \d\.\d\ds \(woken\) -> "
                    r"bpftools_stall_do_writepages \d+\.\d\ds > bpftools_stall_writepages \d+\.\d\ds$" % cache[0],
                    episode["chain"]), episode["chain"]
    assert (result["sleeps_from"], result["confidence"]) == ("kprobe", "high")
    assert result["verdict"].startswith("1 of 1 slow writebacks (100%) were stalled in mempool_alloc")


@pytest.fixture(scope="module")
def disk():
    for module in ("loop", "ext4"):
        subprocess.call(["modprobe", module], stderr=subprocess.DEVNULL)
    with wl.StalledDisk() as d:
        yield d


def test_writeslow_kprobes_nest_do_writepages_and_ext4_writepages(tmp_path, disk):
    plan = _kprobe_plan("writeslow", "--mode", "kprobe")
    assert "-DWANT_WB_KPROBE" in plan
    tool = wl.Tool(str(tmp_path), "writeslow", "--mode", "kprobe", "-m", "100", "--json", "-d", RUN_S)
    run = disk.stalled_fsync(0.3, before_exit=tool.wait)
    assert tool.returncode == 0, tool.err
    mine = [e for e in tool.json_lines() if e["tid"] == run["pid"]]
    funcs = [(e["func"], e["depth"]) for e in mine]
    assert ("do_writepages", 0) in funcs and ("ext4_writepages", 1) in funcs, funcs
    outer = [e for e in mine if e["func"] == "do_writepages"][0]
    inner = [e for e in mine if e["func"] == "ext4_writepages"][0]
    assert outer["start_ns"] <= inner["start_ns"] and inner["ts_ns"] <= outer["ts_ns"]
    assert inner["duration_ns"] >= 0.3e9
    if "-DWB_STACK_AT_EXIT" in plan:      # 5.15+: taken in the kretprobe of a slow call, the function put back
        for e in (inner, outer):
            assert "ext4_sync_file" in e["kstack"], e["kstack"]
        assert [base_name(f) for f in inner["kstack"][:2]] == ["ext4_writepages", "do_writepages"], inner["kstack"]
    else:                                  # at entry; an inner call's stack ends at the outer's kretprobe
        assert "ext4_sync_file" in outer["kstack"], outer["kstack"]
    assert base_name(outer["kstack"][0]) == "do_writepages", outer["kstack"]
    if "-DHAVE_MATCHING_HEADERS" in plan:      # the lab installs the kernel's own headers
        dev = "%d:%d" % run["dev"]
        assert [(e["dev"], e["ino"], e["written"]) for e in (outer, inner)] == [
            (dev, run["ino"], wl.StalledDisk.PAGES), (dev, run["ino"], wl.StalledDisk.PAGES)]
