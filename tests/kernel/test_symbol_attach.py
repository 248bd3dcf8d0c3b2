"""bpftools.kernel.symbols resolves the functions the tools probe to real, kprobe-able symbols of this kernel."""
import platform

import pytest

from bpftools.kernel.tracefs import kretprobe_maxactive
from kerneltier import kernel_config, kprobes_listed, skip_or_fail

pytestmark = [pytest.mark.kernel, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

WANTED = ("mempool_alloc", "kmem_cache_alloc", "bvec_alloc", "netdev_wait_allrefs")

# What the resolver must answer on the lab's kernels, (attach, how, fallback), checked against each
# VM's /proc/kallsyms: since 6.10 the allocators are *_noprof functions; netdev_wait_allrefs (5.10)
# and netdev_wait_allrefs_any (6.x) are static and inlined into netdev_run_todo in all three builds.
_INLINED_WAIT = (None, "inlined", "netdev_run_todo")
EXPECTED = {
    "5.10": {"mempool_alloc": ("mempool_alloc", "exact", None),
             "kmem_cache_alloc": ("kmem_cache_alloc", "exact", None),
             "bvec_alloc": ("bvec_alloc", "exact", None),
             "netdev_wait_allrefs": _INLINED_WAIT},
    "6.1": {"mempool_alloc": ("mempool_alloc", "exact", None),
            "kmem_cache_alloc": ("kmem_cache_alloc", "exact", None),
            "bvec_alloc": ("bvec_alloc", "exact", None),
            "netdev_wait_allrefs": _INLINED_WAIT},
    "6.12": {"mempool_alloc": ("mempool_alloc_noprof", "noprof", None),
             "kmem_cache_alloc": ("kmem_cache_alloc_noprof", "noprof", None),
             "bvec_alloc": ("bvec_alloc", "exact", None),
             "netdev_wait_allrefs": _INLINED_WAIT},
}


def series() -> str:
    """"6.1" for "6.1.0-56-amd64"."""
    return ".".join(platform.release().split(".")[:2])


@pytest.fixture(scope="module")
def bpf():
    """One tiny kprobe program, attached to each resolved symbol in turn."""
    from bcc import BPF
    b = BPF(text=b"int hit(struct pt_regs *ctx) { return 0; }")
    yield b
    b.cleanup()


def kprobe_offset() -> int:
    """Where a kprobe on a function lands: after the 4-byte endbr64 when the kernel has IBT
    (CONFIG_X86_KERNEL_IBT, since v5.18; Debian turns it on in 6.12, not in 6.1), else at +0."""
    return 4 if kernel_config().get("CONFIG_X86_KERNEL_IBT") == "y" else 0


@pytest.mark.parametrize("wanted", WANTED)
def test_resolution_is_a_kallsyms_symbol_that_takes_a_kprobe(wanted, symbol_table, kallsyms_text, bpf):
    res = symbol_table.resolve(wanted)
    target = res.attach or res.fallback
    assert target is not None, res.note
    assert target in kallsyms_text
    probe = "%s+0x%x" % (target, kprobe_offset())
    before = kprobes_listed().count(probe)  # other tests' tools may hold kprobes there too
    bpf.attach_kprobe(event=target.encode(), fn_name=b"hit")
    try:
        assert kprobes_listed().count(probe) == before + 1
    finally:
        bpf.detach_kprobe(event=target.encode())
    assert kprobes_listed().count(probe) == before


@pytest.mark.parametrize("wanted", WANTED)
def test_resolution_matches_what_this_kernel_has(wanted, symbol_table):
    expected = EXPECTED.get(series())
    if expected is None:
        skip_or_fail("no expectations recorded for Linux %s" % series())
    res = symbol_table.resolve(wanted)
    assert (res.attach, res.how, res.fallback) == expected[wanted]


def test_kretprobes_take_maxactive_on_the_lab_kernels():
    """tracefs' README documents r[maxactive] from 4.12: every lab kernel (5.10+) has it, so refleak's
    kretprobes get maxactive there and writeslow keeps its kprobes in auto mode."""
    assert kretprobe_maxactive()
