"""Every BPF program bpftools loads, as this kernel plans it, fits the pre-5.2 verifier's limits with a
25% margin: at most 3,072 instructions (of 4,096) and 3/4 of 131,072 processed instructions. CentOS 7's
3.10 runs that older verifier; the lab kernels measure what it would face. No bounded loops either
(5.3+): no compiled program jumps backwards."""
import json
import os

import pytest

from bpftools.iostall import mempool, sections, slab, writeback
from bpftools.refleak.plan import STRATEGIES
from bpftools.kernel.target import Running
from bpftools.refleak.plan import target_plan as refleak_plan
from bpftools.tools import kmemsnoop, netdevwait
from kerneltier import keep_for_host
from verifier import MAX_INSNS_PRE_5_2, MAX_PROCESSED_PRE_5_2, measure

pytestmark = pytest.mark.kernel
MARGIN = 0.75


def plans():
    """(label, Probe) of every program variant this kernel's plans produce."""
    node = Running()
    out = [
        ("iojitter kprobe", sections.plan(node, "kprobe", None, 100000000, 1000000).probe()),
        ("iojitter tracepoint", sections.plan(node, "tracepoint", None, 100000000, 1000000).probe()),
        ("watch io (always on)", sections.plan(node, "kprobe", None, 100000000, 1000000, always_on=True).probe()),
        ("slabfail kprobe", slab.plan(node, "kprobe", None).probe()),
        ("mempoolwait kprobe", mempool.plan(node, "kprobe", None, 1000000).probe()),
        ("mempoolwait all-dstate", mempool.plan(node, "tracepoint", None, 1000000, all_dstate=True).probe()),
        ("writeslow kprobe", writeback.plan(node, "kprobe", None, 10000000).probe()),
        ("kmemsnoop", kmemsnoop.plan(None, "auto", node).probe),        # 6.12 without cgroup v1: no kernel hook
        ("kmemsnoop kprobe-syscalls css_set", kmemsnoop.plan(None, "kprobe-syscalls", node, memcg_from_css=True).probe),
        ("netdevwait kprobe", netdevwait.target_plan("kprobe", node).probe()),
        ("refleak all strategies", refleak_plan(node, STRATEGIES, True).probe()),
    ]
    return out


def test_every_program_fits_the_pre_5_2_verifier_with_a_quarter_to_spare(tmp_path):
    rows = []
    for label, probe in plans():
        bpf = probe.load()
        try:
            for row in measure(bpf, probe.source()):
                rows.append(dict(row, plan=label))
        finally:
            bpf.cleanup()
    path = tmp_path / "verifier-budget.json"
    path.write_text(json.dumps({"kernel": os.uname().release, "programs": rows}, indent=1, sort_keys=True))
    keep_for_host(str(path), "verifier-budget.json")
    assert len(rows) >= 60, rows                          # every plan's functions were measured
    refused = ["%s %s: %s" % (r["plan"], r["function"], r["error"]) for r in rows if not r["ok"]]
    assert refused == []
    assert all(r["processed"] is not None for r in rows)
    over = ["%s %s: %d insns, %d processed" % (r["plan"], r["function"], r["insns"], r["processed"]) for r in rows
            if r["insns"] > MARGIN * MAX_INSNS_PRE_5_2 or r["processed"] > MARGIN * MAX_PROCESSED_PRE_5_2]
    assert over == []
    loops = ["%s %s: %d back-edges" % (r["plan"], r["function"], r["back_edges"]) for r in rows if r["back_edges"]]
    assert loops == []
