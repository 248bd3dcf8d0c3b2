"""A kprobe and an fentry program on this kernel's mempool_alloc see a known workload exactly.

Workload: ``dd if=/dev/zero of=/dev/loopN bs=4096 count=PAGES`` on a fresh loop device (4 KiB
blocks). dd's writes only dirty the block device's page cache; its close() is the last close of the
device, so ``blkdev_put`` → ``sync_blockdev`` writes the pages back in dd's own context [V 5.10, 6.1,
6.12]. Each dirty page is one buffer head and ``submit_bh`` → ``bio_alloc(GFP_NOIO, 1)`` →
``bio_alloc_bioset(fs_bio_set)`` → ``mempool_alloc(&bs->bio_pool)`` once per bio, with no bvec
allocation for one vector (inline vecs) [V]. No flush is issued (no fsync), and nothing else in
dd's context allocates from a mempool. So dd makes exactly PAGES calls of each.
(Direct I/O would not do: ``__blkdev_direct_IO_simple`` puts bios up to 1 MiB on the stack.)
"""
import subprocess
from collections import Counter
from typing import Dict, Tuple

import pytest

from kerneltier import skip_or_fail

pytestmark = [pytest.mark.kernel, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PAGES = 64

BPF_TEXT = r"""
#include <uapi/linux/ptrace.h>

struct key_t {
    u32 tgid;
    char comm[16];
};
BPF_HASH(kprobe_calls, struct key_t, u64);
BPF_HASH(bioset_calls, struct key_t, u64);
BPF_HASH(fentry_calls, struct key_t, u64);

static __always_inline struct key_t current_key(void)
{
    struct key_t key = {};
    key.tgid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    return key;
}

int on_mempool_alloc(struct pt_regs *ctx)
{
    struct key_t key = current_key();
    kprobe_calls.increment(key);
    return 0;
}

int on_bio_alloc_bioset(struct pt_regs *ctx)
{
    struct key_t key = current_key();
    bioset_calls.increment(key);
    return 0;
}

#ifdef FENTRY_FN
/* One more expansion step so that FENTRY_FN is replaced before KFUNC_PROBE pastes it. */
#define FENTRY_ON(fn) KFUNC_PROBE(fn, void *pool, u32 gfp_mask)
FENTRY_ON(FENTRY_FN)
{
    struct key_t key = current_key();
    fentry_calls.increment(key);
    return 0;
}
#endif
"""

Calls = Dict[Tuple[int, str], int]


def snapshot(table) -> Calls:
    return dict(((k.tgid, k.comm.decode("utf-8", "replace")), v.value) for k, v in table.items())


@pytest.fixture(scope="module")
def probes(symbol_table):
    """One BPF object: kprobes on mempool_alloc and bio_alloc_bioset, fentry on mempool_alloc."""
    from bcc import BPF
    mempool = symbol_table.resolve("mempool_alloc")
    bioset = symbol_table.resolve("bio_alloc_bioset")
    assert mempool.attach is not None and bioset.attach is not None, (mempool.note, bioset.note)
    fentry = bool(getattr(BPF, "support_kfunc", lambda: False)())     # bcc 0.14+; the bcc-floor image has 0.10
    cflags = ["-DFENTRY_FN=%s" % mempool.attach] if fentry else []
    bpf = BPF(text=BPF_TEXT.encode(), cflags=cflags)  # loading auto-attaches the KFUNC_PROBE program
    bpf.attach_kprobe(event=mempool.attach.encode(), fn_name=b"on_mempool_alloc")
    bpf.attach_kprobe(event=bioset.attach.encode(), fn_name=b"on_bio_alloc_bioset")
    yield {"bpf": bpf, "fentry": fentry}
    bpf.cleanup()


@pytest.fixture(scope="module")
def dd_run(probes, loop_device):
    """Run the workload once; returns dd's pid, exit status, stderr and each map's counts."""
    bpf = probes["bpf"]
    for name in ("kprobe_calls", "bioset_calls", "fentry_calls"):
        bpf[name.encode()].clear()
    proc = subprocess.Popen(["dd", "if=/dev/zero", "of=" + loop_device, "bs=4096", "count=%d" % PAGES],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    _, err = proc.communicate(timeout=120)
    result = {"pid": proc.pid, "rc": proc.returncode, "stderr": err}
    for name in ("kprobe_calls", "bioset_calls", "fentry_calls"):
        result[name] = snapshot(bpf[name.encode()])
    return result


def by_comm(calls: Calls, comm: str) -> Counter:
    """Calls per tgid of the processes named COMM."""
    return Counter(dict((tgid, n) for (tgid, c), n in calls.items() if c == comm))


def test_dd_wrote_every_page(dd_run):
    assert dd_run["rc"] == 0, dd_run["stderr"]
    assert "%d+0 records out" % PAGES in dd_run["stderr"]


def test_kprobe_sees_one_mempool_alloc_per_page_in_dd(dd_run):
    assert by_comm(dd_run["kprobe_calls"], "dd") == Counter({dd_run["pid"]: PAGES})


def test_every_mempool_alloc_of_dd_is_a_bio_allocation(dd_run):
    assert by_comm(dd_run["bioset_calls"], "dd") == Counter({dd_run["pid"]: PAGES})


def test_fentry_sees_the_same_calls_as_the_kprobe(probes, dd_run):
    if not probes["fentry"]:
        skip_or_fail("bcc reports no fentry (kfunc) support on this kernel")
    assert by_comm(dd_run["fentry_calls"], "dd") == Counter({dd_run["pid"]: PAGES})
    assert dd_run["fentry_calls"][(dd_run["pid"], "dd")] == dd_run["kprobe_calls"][(dd_run["pid"], "dd")]
