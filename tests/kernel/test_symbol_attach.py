"""bpftools.symbols resolves the functions the tools probe to real, kprobe-able symbols of this kernel."""
import platform

import pytest

from kerneltier import kprobes_listed

pytestmark = [pytest.mark.kernel, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

WANTED = ("mempool_alloc", "kmem_cache_alloc", "bvec_alloc", "netdev_wait_allrefs")

# What the resolver must answer on the lab's kernels: (attach, how, fallback), seen in each VM's
# /proc/kallsyms. Kernels not listed get the generic checks only.
EXPECTED = {}


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


@pytest.mark.parametrize("wanted", WANTED)
def test_resolution_is_a_kallsyms_symbol_that_takes_a_kprobe(wanted, symbol_table, kallsyms_text, bpf):
    res = symbol_table.resolve(wanted)
    print("RESOLVED %s %s %r" % (series(), wanted, (res.attach, res.how, res.fallback)))
    target = res.attach or res.fallback
    assert target is not None, res.note
    assert target in kallsyms_text
    bpf.attach_kprobe(event=target.encode(), fn_name=b"hit")
    try:
        listed = [line.split()[2] for line in kprobes_listed() if len(line.split()) >= 3]
        assert target + "+0x0" in listed
    finally:
        bpf.detach_kprobe(event=target.encode())
    listed = [line.split()[2] for line in kprobes_listed() if len(line.split()) >= 3]
    assert target + "+0x0" not in listed


@pytest.mark.parametrize("wanted", WANTED)
def test_resolution_matches_what_this_kernel_has(wanted, symbol_table):
    expected = EXPECTED.get(series())
    if expected is None:
        pytest.skip("no expectations recorded for Linux %s" % series())
    res = symbol_table.resolve(wanted)
    assert (res.attach, res.how, res.fallback) == expected[wanted]
