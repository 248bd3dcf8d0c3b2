"""Kprobes at the inlined dev_hold/dev_put sites found in DWARF fire once per reference, and read the
device where DWARF says it is (``bpftools.refleak.inline_sites``, strategy 4 of ``bpftools refleak``).

The lab's ``bpftools_devref`` injector is built here against the running kernel; Debian's kernels
have ``CONFIG_DEBUG_INFO=y``, which gives external modules ``-g`` too, so the .ko carries DWARF.
Its ``bpftools_devref_take`` inlines ``dev_hold`` and ``bpftools_devref_drop`` inlines ``dev_put``
(5.10: the counter update itself; 6.1/6.12: ``dev_hold`` → ``netdev_hold`` → ``__dev_hold``).
Discovery on that .ko must give exactly those two sites, each at the ``incl``/``decl %gs:`` of
the per-cpu counter (objdump); one BPF object puts a kprobe at each ``caller+offset``, reads the
``struct net_device *`` from the register or memory slot the site names, and counts (site, ``dev->ifindex``) with the ifindex offset from the kernel's BTF. ``hold
DEV`` on a dummy device must then count one hit at the hold site with that device's ifindex, and
``put`` one at the put site.
"""
import re
import subprocess
from typing import Dict, Iterator, Tuple

import pytest

from bpftools.refleak.inline_sites import PT_REGS_OFFSETS, build_id, discover
from bpftools.kernel.btf import offsets as btf_offsets
from injectors import Injector
from kerneltier import modprobe, skip_or_fail

pytestmark = [pytest.mark.kernel, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

DEVICE = "bpfinl0"
MODULE = "bpftools_devref"
EXPECTED = [("bpftools_devref_drop", -1, "dev_put"), ("bpftools_devref_take", 1, "dev_hold")]

# One kprobe program per site. SITEn_REG is the pt_regs slot (byte offset / 8) of the register DWARF
# names, SITEn_MEM 1 when the pointer is in memory at register + SITEn_OFF, 0 when it is register
# + SITEn_OFF. All integers, given as -D flags.
BPF_TEXT = r"""
#include <uapi/linux/ptrace.h>

struct key_t {
    u32 site;
    u32 ifindex;
};
BPF_HASH(hits, struct key_t, u64);

#define REG(c, n) ((n) == 0 ? (c)->r15 : (n) == 1 ? (c)->r14 : (n) == 2 ? (c)->r13 : (n) == 3 ? (c)->r12 : \
    (n) == 4 ? (c)->bp : (n) == 5 ? (c)->bx : (n) == 6 ? (c)->r11 : (n) == 7 ? (c)->r10 : \
    (n) == 8 ? (c)->r9 : (n) == 9 ? (c)->r8 : (n) == 10 ? (c)->ax : (n) == 11 ? (c)->cx : \
    (n) == 12 ? (c)->dx : (n) == 13 ? (c)->si : (n) == 14 ? (c)->di : (n) == 19 ? (c)->sp : 0)

static __always_inline int count(u32 site, u64 dev)
{
    struct key_t key = {};
    key.site = site;
    if (dev)
        bpf_probe_read_kernel(&key.ifindex, sizeof(key.ifindex), (void *)(dev + IFINDEX_OFF));
    hits.increment(key);
    return 0;
}

int site_0(struct pt_regs *ctx)
{
    u64 dev = REG(ctx, SITE0_REG) + SITE0_OFF;
    if (SITE0_MEM)
        bpf_probe_read_kernel(&dev, sizeof(dev), (void *)dev);
    return count(0, dev);
}

int site_1(struct pt_regs *ctx)
{
    u64 dev = REG(ctx, SITE1_REG) + SITE1_OFF;
    if (SITE1_MEM)
        bpf_probe_read_kernel(&dev, sizeof(dev), (void *)dev);
    return count(1, dev);
}
"""


@pytest.fixture(scope="module")
def ifindex() -> Iterator[int]:
    """A dummy device of our own; its ifindex. Removed after the injector has dropped its references."""
    modprobe("dummy")
    subprocess.call(["ip", "link", "del", DEVICE], stderr=subprocess.DEVNULL)
    subprocess.check_call(["ip", "link", "add", DEVICE, "type", "dummy"])
    try:
        with open("/sys/class/net/%s/ifindex" % DEVICE) as f:
            yield int(f.read())
    finally:
        subprocess.call(["ip", "link", "del", DEVICE])


@pytest.fixture(scope="module")
def devref(ifindex) -> Iterator[Injector]:
    with Injector(MODULE) as injector:
        yield injector


@pytest.fixture(scope="module")
def sites(devref):
    return discover(devref.ko)


def disassembly(ko: str) -> Dict[str, Dict[int, str]]:
    """objdump -d of the module: function -> {offset in the function: instruction text}."""
    out = subprocess.check_output(["objdump", "-d", "--no-show-raw-insn", ko], universal_newlines=True)
    found = {}  # type: Dict[str, Dict[int, str]]
    start, current = 0, None
    for line in out.splitlines():
        head = re.match(r"^([0-9a-f]+) <([^>]+)>:$", line)
        if head:
            start, current = int(head.group(1), 16), head.group(2)
            found[current] = {}
            continue
        insn = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
        if insn and current:
            found[current][int(insn.group(1), 16) - start] = insn.group(2).strip()
    return found


def test_the_module_is_built_with_debug_info(devref):
    out = subprocess.check_output(["objdump", "-h", devref.ko], universal_newlines=True)
    assert " .debug_info " in out
    assert re.fullmatch(r"[0-9a-f]{40}", build_id(devref.ko) or ""), "no GNU build id in %s" % devref.ko


def test_one_hold_and_one_put_site_with_a_device_location(sites):
    print("sites:", sites)
    assert sorted((s.caller, s.delta, s.helper) for s in sites) == EXPECTED
    assert all(s.module == MODULE for s in sites)
    assert all(s.dev is not None and s.dev.reg in PT_REGS_OFFSETS for s in sites), sites


def test_each_site_is_the_per_cpu_counter_update(sites, devref):
    code = disassembly(devref.ko)
    for site in sites:
        update = "incl   %gs:(" if site.delta == 1 else "decl   %gs:("
        assert code[site.caller].get(site.offset, "").startswith(update), (site, code[site.caller])


@pytest.fixture(scope="module")
def probes(sites, devref):
    from bcc import BPF
    wanted = {"IFINDEX_OFF": [("net_device", "ifindex")]}
    ifindex_off = btf_offsets(wanted).get("IFINDEX_OFF")
    if ifindex_off is None:
        skip_or_fail("no BTF offset for net_device.ifindex in /sys/kernel/btf/vmlinux")
    cflags = ["-DIFINDEX_OFF=%d" % ifindex_off]
    if len(sites) != 2 or any(s.dev is None for s in sites):
        pytest.fail("not the two sites with locations this test expects: %s" % sites)
    for n, site in enumerate(sites):
        cflags += ["-DSITE%d_REG=%d" % (n, PT_REGS_OFFSETS[site.dev.reg] // 8),
                   "-DSITE%d_MEM=%d" % (n, 1 if site.dev.kind == "breg" else 0),
                   "-DSITE%d_OFF=%d" % (n, site.dev.offset)]
    bpf = BPF(text=BPF_TEXT.encode(), cflags=cflags)
    for n, site in enumerate(sites):
        bpf.attach_kprobe(event=site.caller.encode(), event_off=site.offset, fn_name=("site_%d" % n).encode())
    yield bpf
    bpf.cleanup()


def hits(bpf, sites) -> Dict[Tuple[str, int], int]:
    """(caller, ifindex) -> count, then clears the map."""
    table = bpf[b"hits"]
    out = dict(((sites[k.site].caller, k.ifindex), v.value) for k, v in table.items())
    table.clear()
    return out


def test_kprobes_count_one_hold_then_one_put_of_the_device(sites, probes, devref, ifindex):
    hits(probes, sites)
    devref.command("hold %s" % DEVICE)
    after_hold = hits(probes, sites)
    devref.command("put")
    after_put = hits(probes, sites)
    assert devref.counters() == {"holds": 1, "puts": 1}
    assert after_hold == {("bpftools_devref_take", ifindex): 1}
    assert after_put == {("bpftools_devref_drop", ifindex): 1}
