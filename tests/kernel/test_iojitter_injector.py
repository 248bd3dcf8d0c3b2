"""Incident 1's acceptance on real kernels (lab VMs): iojitter explains the stalls the slab injector causes.

``bpftools_slabfail`` is loaded, then ``bpftools iojitter --mode kprobe`` attached. The injector's
failures happen in its kretprobe, after the allocator's ``kmem:kmem_cache_alloc`` tracepoint saw the
real object, so iojitter's slab section does not see them (a genuine failure it does: the tracepoint
reports ptr 0); the cache is named by the mempool the writer waits on (pool->alloc is
mempool_alloc_slab, pool->pool_data the biovec-max kmem_cache). Two fsync writers on ext4 on a
loop device, one at a time (see tests/kernel/injectors.py ``SLABFAIL_WRITER``):

- injected: the writer's biovec-max allocations fail and the pool's reserve is held, so its
  writeback sleeps in mempool_alloc — a 5 s timeout, then a wake-up when the test stops the
  injection 6 s after it saw the writer there;
- not injected: the same writer, the slab serves every bvec.

The recording is kept for the host (tests/fixtures/iojitter/lab-*.jsonl come from these runs).
"""
import os
import sys

import pytest

from bpftools.analyses.stacks import base_name
from bpftools.recording import read_recording
from injectors import Injector, bvec_caller, run_slabfail_writer, tasks_in
from kerneltier import keep_for_host

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import incident1_workloads as wl  # noqa: E402  (tests/)

pytestmark = pytest.mark.kernel
SLOW_NS = 1e9


def _writer(mnt: str, injector: Injector, inject: bool) -> int:
    """One SLABFAIL_WRITER run; returns its pid (= its only thread's tid)."""
    return run_slabfail_writer(os.path.join(mnt, "iojitter-%s" % ("on" if inject else "off")), injector, inject,
                               lambda pid: pid in tasks_in("mempool_alloc"))


def test_iojitter_explains_injected_stalls_and_nothing_without_injection(tmp_path, ext4_mount):
    record = str(tmp_path / "iojitter.jsonl")
    with Injector("bpftools_slabfail") as injector:
        tool = wl.Tool(str(tmp_path), "iojitter", "--mode", "kprobe", "-m", "1000", "-K", "--json", "--record", record,
                       "-d", "600")
        before = injector.counters()
        on = _writer(ext4_mount, injector, inject=True)
        off = _writer(ext4_mount, injector, inject=False)
        injected = injector.counters()["biovec-max"] - before["biovec-max"]
    tool.stop()
    keep_for_host(record, "lab-injector.jsonl")
    assert tool.returncode == 0, tool.err
    (result,) = tool.json_lines()
    assert injected == 3      # reduced mask, full mask, the retry after the timeout (test_injectors)

    slow = [e for e in result["episodes"] if e["duration_ns"] >= SLOW_NS]
    assert slow, result["episodes"]
    explained = [e for e in slow if e["explained"]]
    assert len(explained) / len(slow) >= 0.9
    (episode,) = [e for e in slow if e["tid"] == on]
    assert episode["explained"] is True and episode["mempool_timeouts"] == 1
    assert [(w["in_mempool"], w["timed_out"]) for w in episode["waits"]][:2] == [(True, True), (True, False)]
    assert [w["pool_cache"] for w in episode["waits"]][:2] == ["biovec-max", "biovec-max"]
    frames = [base_name(f) for f in episode["waits"][0]["kstack"]]
    assert frames[frames.index("mempool_alloc") + 1] == bvec_caller(), frames
    assert "ext4_writepages" in frames, frames

    assert [e for e in result["episodes"] if e["tid"] == off and e["explained"]] == []
    rec = read_recording(record)
    assert rec.trailer is not None and rec.trailer["lost_events"] == 0
