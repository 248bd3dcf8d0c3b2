"""The C constants Python keeps copies of match their ``#define`` in probes/*.h: a record's type, flag
or source number decoded with a stale copy would be silently wrong."""
import glob
import os
import re

import pytest

from bpftools.iostall import mempool, program, slab, writeback
from bpftools.refleak import plan as refleak_plan
from bpftools.refleak import session, sites
from bpftools.tools import kmemsnoop, netdevwait

PROBES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "probes")
DEFINE = re.compile(r"^\s*#define\s+([A-Z_][A-Z0-9_]*)\s+(0x[0-9a-fA-F]+|\d+)\b", re.M)


def defines(paths):
    """NAME -> integer of every ``#define NAME <integer>`` in PATHS (a name defined twice must agree)."""
    out = {}
    for path in paths:
        with open(path) as f:
            for name, value in DEFINE.findall(f.read()):
                assert out.setdefault(name, int(value, 0)) == int(value, 0), (path, name)
    return out


H = defines(sorted(glob.glob(os.path.join(PROBES, "*.h"))))


def by_prefix(prefix):
    return dict((name, value) for name, value in H.items() if name.startswith(prefix))


# (the Python copy, the C names it copies, in order)
COPIES = [
    ([program.EV_SLAB_FAIL, program.EV_SLUB_OOM, program.EV_SLEEP, program.EV_MEMPOOL_ALLOC, program.EV_WRITEBACK,
      program.EV_DROPPED], ["EV_SLAB_FAIL", "EV_SLUB_OOM", "EV_SLEEP", "EV_MEMPOOL_ALLOC", "EV_WRITEBACK", "EV_DROPPED"]),
    (sorted(slab.SLAB_SRC), ["SLAB_SRC_CACHE", "SLAB_SRC_KMALLOC"]),
    ([slab.SLAB_F_ACCOUNTED, slab.SLAB_F_ACCOUNTED_KNOWN, slab.SLAB_F_NAME_FROM_TP, slab.SLAB_F_NAME_FROM_CACHE,
      slab.SLAB_F_OOM_ARGS], ["SLAB_F_ACCOUNTED", "SLAB_F_ACCOUNTED_KNOWN", "SLAB_F_NAME_FROM_TP",
                              "SLAB_F_NAME_FROM_CACHE", "SLAB_F_OOM_ARGS"]),
    ([mempool.SLEEP_F_MEMPOOL, mempool.SLEEP_F_SCHED, mempool.SLEEP_F_JIFFIES, mempool.MPALLOC_F_NULL],
     ["SLEEP_F_MEMPOOL", "SLEEP_F_SCHED", "SLEEP_F_JIFFIES", "MPALLOC_F_NULL"]),
    (sorted(writeback.WB_SRC), ["WB_SRC_SINGLE_INODE", "WB_SRC_EXT4"]),
    ([writeback.WB_F_INODE, writeback.WB_F_WRITTEN, writeback.WB_F_DEEPER, writeback.WB_F_EXIT_STACK,
      writeback.WB_SLOTS, writeback.WB_ARG_NONE, writeback.WB_ARG_MAPPING, writeback.WB_ARG_PAGE],
     ["WB_F_INODE", "WB_F_WRITTEN", "WB_F_DEEPER", "WB_F_EXIT_STACK", "WB_SLOTS", "WB_ARG_NONE", "WB_ARG_MAPPING",
      "WB_ARG_PAGE"]),
    (sorted(kmemsnoop.OPS), ["KMEM_OP_OPEN", "KMEM_OP_WRITE", "KMEM_OP_KERNEL"]),
    ([kind for _, kind in kmemsnoop.KERNEL_HOOKS], ["HOOK_KMEM_LIMIT", "HOOK_KMEM_MAX", "HOOK_CGROUP_WRITE"]),
    ([netdevwait.NDW_ROUND, netdevwait.NDW_FREED, netdevwait.NDW_LINK, netdevwait.NDW_CALL],
     ["NDW_ROUND", "NDW_FREED", "NDW_LINK", "NDW_CALL"]),
    (sorted(netdevwait.NDW_CHAINS) + [netdevwait.NDW_LINK_TRUNCATED],
     ["NDW_CHAIN_GLOBAL", "NDW_CHAIN_NETNS", "NDW_LINK_TRUNCATED"]),
    (sorted(session.STRATEGY), ["RL_STRAT_WATCH", "RL_STRAT_TRACKER", "RL_STRAT_INLINE"]),
    (sorted(session.HOLDER_KIND), ["RL_HOLDER_DST", "RL_HOLDER_NEIGH", "RL_HOLDER_IN_DEV", "RL_HOLDER_INET6_DEV",
                                   "RL_HOLDER_FIB_NH"]),
    (sorted(session.END_FUNC), ["RL_END_DST_DEV_PUT", "RL_END_DST_DESTROY", "RL_END_NEIGH_DESTROY",
                                "RL_END_IN_DEV_DESTROY", "RL_END_INET6_DEV_DESTROY", "RL_END_FIB_NH_RELEASE"]),
    ([session.SYNC_DONE], ["RL_SYNC_DONE"]),
    ([sites.LOC["reg"], sites.LOC["breg"]], ["RL_LOC_REG", "RL_LOC_BREG"]),
    ([refleak_plan.MAX_CPUS], ["MAX_CPUS"]),
]


@pytest.mark.parametrize("python, names", COPIES, ids=[names[0] for _, names in COPIES])
def test_python_copies_match_the_headers(python, names):
    assert python == [H[n] for n in names]


def test_every_kind_of_record_is_copied():
    """Each record type, strategy, holder kind and end function of the headers has its Python copy."""
    copied = set(n for _, names in COPIES for n in names)
    for prefix in ("EV_", "SLAB_SRC_", "WB_SRC_", "KMEM_OP_", "HOOK_", "RL_STRAT_", "RL_HOLDER_", "RL_END_", "RL_LOC_"):
        assert set(by_prefix(prefix)) <= copied, prefix


def test_the_parser_reads_what_it_checks(tmp_path):
    """Not vacuous: a changed value in a header is seen."""
    header = tmp_path / "x.h"
    header.write_text("#define EV_SLAB_FAIL 7   /* comment */\n#define NAME_LEN 0x20\n#ifdef X\n")
    assert defines([str(header)]) == {"EV_SLAB_FAIL": 7, "NAME_LEN": 32}
    assert [program.EV_SLAB_FAIL] != [defines([str(header)])["EV_SLAB_FAIL"]]
