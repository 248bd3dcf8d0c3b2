"""bpftools.refleak.inline_sites on ELF files built here with gcc -O2 -g from tests/fixtures/inline_sites/fake_netdev.c.

The fixture nests hold/put helpers like Linux (dev_hold -> netdev_hold -> __dev_hold) around a
%gs-relative incl/decl like this_cpu_inc/dec, and inlines them into known callers: the device
pointer in rdi, in rsi, in a callee-saved register across a call, in memory behind a pointer, on
the stack as a seventh argument (DW_OP_fbreg + .debug_frame), one call duplicated by -ftracer into
two paths, and an out-of-line copy of dev_put. Every build (DWARF 5 and 4, linked executable,
relocatable object with one section per function like a kernel module) must give the same sites,
at the incl/decl instructions objdump shows. With a plain counter (no %gs) the sites fall back to
where each inlined call is entered.
"""
import json
import os
import re
import shutil
import subprocess
from typing import Dict, List, Tuple

import elftools
import pytest

from bpftools.kernel import dwarf
from bpftools.refleak import inline_sites
from bpftools.errors import BadInput
from bpftools.refleak.inline_sites import (DevLocation, InlineSite, build_id, cached_discovery, cached_sites, discover, discover_all, find_debug_vmlinux)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "inline_sites", "fake_netdev.c")
# Flags that make gcc's code the same on every distribution (no endbr64, no stack protector).
# Like the kernel: .debug_frame rather than .eh_frame.
CFLAGS = ["-O2", "-g", "-ftracer", "-fcf-protection=none", "-fno-stack-protector", "-ffunction-sections",
          "-fno-asynchronous-unwind-tables"]
BUILD_ID = "0123456789abcdef0123456789abcdef01234567"

# caller -> [(helper, delta, device location)], one entry per site
EXPECTED = {
    "dev_put": [("dev_put", -1, DevLocation("reg", "di"))],       # the out-of-line copy
    "drop": [("dev_put", -1, DevLocation("reg", "di"))],
    "drop_either": [("dev_put", -1, DevLocation("reg", "bx"))] * 2,
    "drop_held": [("dev_put", -1, DevLocation("breg", "di", 8))],   # h->dev: memory at rdi + 8
    "take": [("dev_hold", 1, DevLocation("reg", "di"))],
    "take_after_call": [("dev_hold", 1, DevLocation("reg", "bx"))],
    "take_second": [("netdev_hold", 1, DevLocation("reg", "si"))],
    "take_seventh": [("dev_hold", 1, DevLocation("breg", "sp", 8))],  # CFA + 0 = rsp + 8
}

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
PYELFTOOLS = tuple(int(x) for x in re.findall(r"\d+", elftools.__version__)[:2])
DWARF = "-gdwarf-5" if PYELFTOOLS >= (0, 28) else "-gdwarf-4"     # pyelftools reads DWARF 5 since 0.28


# Two more units for the executable, which the unit filter must leave out: one whose inline
# function's name ends in "dev_put" (the linker may store "dev_put" as the tail of that string),
# one whose long names put the helpers' names at .debug_str offsets above 64 KiB, as in a kernel
# (a small offset's 4 bytes also match unrelated small numbers: harmless, but not a filter).
OTHER_UNITS = [
    ("unrelated.c", "".join("int unrelated_%03d_%s(void)\n{\n\treturn %d;\n}\n" % (i, "x" * 250, i)
                            for i in range(300))),
    ("in6.c", "struct in6 { int refcnt; };\n"
              "static inline void in6_dev_put(struct in6 *i)\n{\n\ti->refcnt--;\n}\n"
              "void in6_drop(struct in6 *i)\n{\n\tin6_dev_put(i);\n}\n"),
]


def gcc(out: str, *extra: str) -> str:
    subprocess.check_call(["gcc"] + CFLAGS + list(extra) + ["-o", out, SOURCE])
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> Dict[str, str]:
    d = str(tmp_path_factory.mktemp("inline_sites"))
    others = []
    for name, text in OTHER_UNITS:
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
        others.append(os.path.join(d, name))
    return {
        "main": gcc(os.path.join(d, "fake"), DWARF, "-Wl,--build-id=0x" + BUILD_ID, *others),
        "dwarf4": gcc(os.path.join(d, "fake4"), "-gdwarf-4"),
        "object": gcc(os.path.join(d, "fake.o"), DWARF, "-c"),
        "plain": gcc(os.path.join(d, "plain"), DWARF, "-DPLAIN_COUNTER"),
    }


def by_caller(sites: List[InlineSite]) -> Dict[str, List[Tuple[str, int, object]]]:
    out = {}  # type: Dict[str, List[Tuple[str, int, object]]]
    for s in sites:
        out.setdefault(s.caller, []).append((s.helper, s.delta, s.dev))
    return out


@pytest.fixture(scope="module")
def lto(tmp_path_factory) -> str:
    """A shared object built with -flto: the code's unit refers to the abstract DIEs of another
    unit (DW_FORM_ref_addr)."""
    out = str(tmp_path_factory.mktemp("inline_sites_lto") / "fake.so")
    proc = subprocess.Popen(["gcc"] + CFLAGS + [DWARF, "-flto", "-shared", "-fPIC", "-o", out, SOURCE],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    log = proc.communicate()[0]
    if proc.returncode != 0:
        pytest.skip("gcc -flto does not work here: %s" % log[-300:])
    return out


def test_lto_references_across_units(builds, lto):
    found = discover_all(lto)
    assert (found.units_parsed, found.units_total) == (2, 2)
    assert by_caller(found.sites) == EXPECTED
    assert [(s.caller, s.offset) for s in found.sites] == [(s.caller, s.offset) for s in discover(builds["main"])]


@pytest.mark.parametrize("build", ["main", "dwarf4", "object", "plain"])
def test_sites_of_each_build(builds, build):
    found = discover_all(builds[build])
    assert by_caller(found.sites) == EXPECTED
    assert set(s.module for s in found.sites) == {"fake_netdev" if build == "object" else None}
    assert found.at_entry == (9 if build == "plain" else 0)
    assert found.multi_range == 1 and found.no_location == {} and found.skipped == {}
    assert (found.units_parsed, found.units_total) == ((1, 3) if build == "main" else (1, 1))


def test_builds_agree_on_every_offset(builds):
    def key(sites):
        return [(s.caller, s.offset, s.helper, s.delta, s.dev) for s in sites]
    reference = key(discover(builds["main"]))
    assert key(discover(builds["dwarf4"])) == reference
    assert key(discover(builds["object"])) == reference


def disassembly(path: str) -> Dict[str, List[Tuple[int, str]]]:
    """objdump -d: function -> [(offset in the function, instruction text)]."""
    out = subprocess.check_output(["objdump", "-d", "--no-show-raw-insn", path], universal_newlines=True)
    functions = {}  # type: Dict[str, List[Tuple[int, str]]]
    start, current = 0, None
    for line in out.splitlines():
        head = re.match(r"^([0-9a-f]+) <([^>]+)>:$", line)
        if head:
            start, current = int(head.group(1), 16), head.group(2)
            functions[current] = []
        elif current:
            insn = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
            if insn:
                functions[current].append((int(insn.group(1), 16) - start, insn.group(2).strip()))
    return functions


def att_names(reg: str) -> Tuple[str, ...]:
    """AT&T spellings of a pt_regs register: di -> %rdi, %edi; r8 -> %r8, %r8d."""
    return ("%" + reg, "%" + reg + "d") if reg.startswith("r") else ("%r" + reg, "%e" + reg)


def reaches(insns: List[Tuple[int, str]], start: int, mnemonic: str) -> bool:
    """Whether control flow from offset START reaches MNEMONIC without passing a call or a return."""
    index = dict((off, i) for i, (off, _) in enumerate(insns))
    todo, seen = [index[start]], set()
    while todo:
        i = todo.pop()
        if i in seen or i >= len(insns):
            continue
        seen.add(i)
        op = insns[i][1].split()[0]
        if op == mnemonic:
            return True
        if op in ("call", "ret"):
            continue
        target = re.search(r"<[^>+]+\+0x([0-9a-f]+)>", insns[i][1]) if op.startswith("j") else None
        if target and int(target.group(1), 16) in index:
            todo.append(index[int(target.group(1), 16)])
        if op != "jmp":
            todo.append(i + 1)
    return False


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils")
@pytest.mark.parametrize("build", ["main", "object"])
def test_each_site_is_the_per_cpu_update(builds, build):
    code = disassembly(builds[build])
    for site in discover(builds[build]):
        insns = code[site.caller]
        at = dict(insns)
        update = "incl   %gs:(" if site.delta == 1 else "decl   %gs:("
        assert at.get(site.offset, "").startswith(update), (site, insns)
        if site.dev.kind == "reg":          # the instruction before loads dev->pcpu_refcnt
            previous = [text for off, text in insns if off < site.offset][-1]
            assert "0x8(%s)" % att_names(site.dev.reg)[0] in previous, (site, previous)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils")
def test_without_per_cpu_update_each_site_is_where_the_call_is_entered(builds):
    code = disassembly(builds["plain"])
    for site in discover(builds["plain"]):
        insns = code[site.caller]
        assert site.offset in dict(insns), (site, insns)
        assert reaches(insns, site.offset, "incl" if site.delta == 1 else "decl"), (site, insns)
        assert not reaches(insns, site.offset, "decl" if site.delta == 1 else "incl"), (site, insns)


def test_without_debug_frame_a_stack_slot_is_unknown(tmp_path):
    """gcc's default .eh_frame is not read: the stack argument's location stays unknown."""
    found = discover_all(gcc(str(tmp_path / "eh"), DWARF, "-fasynchronous-unwind-tables"))
    assert [s.dev for s in found.sites if s.caller == "take_seventh"] == [None]
    assert found.no_location == {"frame base": 1}


def test_other_helpers(builds):
    """With only __dev_put searched, the innermost helper is reported under its own name."""
    sites = discover(builds["main"], {"__dev_put": -1})
    assert sorted(s.caller for s in sites) == ["dev_put", "drop", "drop_either", "drop_either", "drop_held"]
    assert set((s.helper, s.delta) for s in sites) == {("__dev_put", -1)}
    same = [(s.caller, s.offset) for s in discover(builds["main"]) if s.delta == -1]
    assert [(s.caller, s.offset) for s in sites] == same


# ---- build ids and the cache


def test_build_id(builds, tmp_path):
    assert build_id(builds["main"]) == BUILD_ID
    none = gcc(str(tmp_path / "noid"), DWARF, "-Wl,--build-id=none")
    assert build_id(none) is None
    assert build_id(SOURCE) is None               # not an ELF file


def test_cache_hit_returns_the_same_sites(builds, tmp_path):
    cache = str(tmp_path / "cache")
    first, cached = cached_sites(builds["main"], cache)
    assert cached is False
    assert first == discover(builds["main"])
    assert os.listdir(cache) == [BUILD_ID + ".json"]
    again, cached = cached_sites(builds["main"], cache)
    assert cached is True and again == first
    found, cached = cached_discovery(builds["main"], cache)
    assert cached is True and found == discover_all(builds["main"])


@pytest.mark.parametrize("plant", ["symlink", "other_owner", "group_writable"])
def test_a_planted_cache_is_not_read(builds, tmp_path, plant):
    """A cache file that is a link, another user's, or writable by others is recomputed, never read
    (under sudo the cache lives in the user's home)."""
    cache = str(tmp_path / "cache")
    good, _ = cached_sites(builds["main"], cache)
    entry = os.path.join(cache, BUILD_ID + ".json")
    with open(entry) as f:
        forged_doc = json.load(f)
    for site in forged_doc["sites"]:
        site["offset"] += 4096                                          # a valid, wrong cache
    planted = str(tmp_path / "planted.json")
    with open(planted, "w") as f:
        json.dump(forged_doc, f)
    os.remove(entry)
    if plant == "symlink":
        os.symlink(planted, entry)
    else:
        os.rename(planted, entry)
        if plant == "other_owner":
            os.chown(entry, 65534, 65534)
        else:
            os.chmod(entry, 0o666)
    sites, cached = cached_sites(builds["main"], cache)
    assert cached is False and sites == good


def test_cache_is_keyed_by_build_id(builds, tmp_path):
    cache = str(tmp_path / "cache")
    other = gcc(str(tmp_path / "other"), DWARF, "-Wl,--build-id=0x" + "ab" * 20)
    assert cached_sites(builds["main"], cache)[1] is False
    sites, cached = cached_sites(other, cache)
    assert cached is False and sites == discover(other)
    assert sorted(os.listdir(cache)) == sorted([BUILD_ID + ".json", "ab" * 20 + ".json"])
    # The same path rebuilt with another id is a miss too.
    gcc(other, DWARF, "-Wl,--build-id=0x" + "cd" * 20)
    assert cached_sites(other, cache)[1] is False
    assert cached_sites(other, cache)[1] is True


def test_a_bad_cache_file_is_recomputed(builds, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / (BUILD_ID + ".json")).write_text("{not json")
    sites, cached = cached_sites(builds["main"], str(cache))
    assert cached is False and sites == discover(builds["main"])
    assert json.loads((cache / (BUILD_ID + ".json")).read_text())["build_id"] == BUILD_ID
    assert cached_sites(builds["main"], str(cache)) == (sites, True)


def test_no_build_id_is_never_cached(tmp_path):
    none = gcc(str(tmp_path / "noid"), DWARF, "-Wl,--build-id=none")
    cache = str(tmp_path / "cache")
    assert cached_sites(none, cache)[1] is False
    assert cached_sites(none, cache)[1] is False
    assert not os.path.exists(cache)


# ---- files that cannot be used


@pytest.mark.skipif(PYELFTOOLS >= (0, 28), reason="pyelftools reads DWARF 5")
def test_dwarf5_with_an_old_pyelftools_is_a_clear_error(tmp_path):
    with pytest.raises(BadInput, match="DWARF 5 debug info, which needs pyelftools 0.28"):
        discover(gcc(str(tmp_path / "fake5"), "-gdwarf-5"))


def test_not_elf_and_no_debug_info(tmp_path):
    with pytest.raises(BadInput, match="not an ELF file"):
        discover(SOURCE)
    subprocess.check_call(["gcc", "-O2", "-o", str(tmp_path / "nodebug"), SOURCE])
    with pytest.raises(BadInput, match="no DWARF"):
        discover(str(tmp_path / "nodebug"))
    with pytest.raises(BadInput, match="cannot open"):
        discover(str(tmp_path / "absent"))


def test_only_x86_64(builds, tmp_path):
    other = tmp_path / "aarch64"
    data = bytearray(open(builds["main"], "rb").read())
    data[18:20] = (183).to_bytes(2, "little")          # e_machine = EM_AARCH64
    other.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="only x86-64"):
        discover(str(other))


def test_find_debug_vmlinux(builds, tmp_path, monkeypatch):
    nodebug = str(tmp_path / "nodebug-rel")
    subprocess.check_call(["gcc", "-O2", "-o", nodebug, SOURCE])
    shutil.copy(builds["main"], str(tmp_path / "debug-rel"))
    monkeypatch.setattr(inline_sites, "DEBUG_VMLINUX_PATHS",
                        (str(tmp_path / "absent-{release}"), str(tmp_path / "nodebug-{release}"),
                         str(tmp_path / "debug-{release}")))
    assert find_debug_vmlinux("rel") == str(tmp_path / "debug-rel")
    assert find_debug_vmlinux("other") is None
    # For the running kernel a file of another build is passed over.
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", "rel", "#1", "x86_64")))
    monkeypatch.setattr(inline_sites, "_running_build_id", lambda: "ff" * 20)
    assert find_debug_vmlinux("rel") is None
    monkeypatch.setattr(inline_sites, "_running_build_id", lambda: BUILD_ID)
    assert find_debug_vmlinux("rel") == str(tmp_path / "debug-rel")


# ---- the two decisions, on their own


@pytest.mark.parametrize("expr, expected", [
    (b"\x55", (DevLocation("reg", "di", 0), "")),                       # DW_OP_reg5
    (b"\x53", (DevLocation("reg", "bx", 0), "")),                       # DW_OP_reg3
    (b"\x5f", (DevLocation("reg", "r15", 0), "")),                      # DW_OP_reg15
    (b"\x90\x08", (DevLocation("reg", "r8", 0), "")),                   # DW_OP_regx 8
    (b"\x75\x08", (DevLocation("breg", "di", 8), "")),                  # DW_OP_breg5 8: in memory
    (b"\x77\x70", (DevLocation("breg", "sp", -16), "")),                # DW_OP_breg7 -16
    (b"\x73\x10\x06\x9f", (DevLocation("breg", "bx", 16), "")),         # breg3 16; deref; stack_value
    (b"\x75\x78\x9f", (DevLocation("reg", "di", -8), "")),              # breg5 -8; stack_value
    (b"", (None, "optimized out")),
    (b"\x91\x68", (None, "frame base")),                                # DW_OP_fbreg -24
    (b"\xa3\x01\x55\x9f", (None, "entry value")),                       # DW_OP_entry_value(reg5)
    (b"\xf3\x01\x55\x9f", (None, "entry value")),                       # DW_OP_GNU_entry_value
    (b"\x30\x9f", (None, "constant")),                                  # DW_OP_lit0; stack_value
    (b"\x55\x93\x08", (None, "pieces")),                                # reg5; piece 8
    (b"\x60", (None, "register 16")),                                   # DW_OP_reg16: return address
    (b"\x75\x00\x23\x08", (None, "expression")),                        # breg5 0; plus_uconst 8
])
def test_location_expressions(expr, expected):
    assert dwarf.evaluate(expr) == expected


LINES = {0x13: (1, 4), 0x25: (1, 4), 0x459: (1, 4030), 0x467: (1, 4035)}


@pytest.mark.parametrize("ranges, entry, expected", [
    ([(0x10, 0x1a)], 0x10, ([0x10], 0)),
    # touching ranges are one stretch (6.1 ethnl_default_dumpit: three pieces of one __dev_put)
    ([(0x58d, 0x591), (0x591, 0x59c), (0x59c, 0x5a7)], 0x58d, ([0x58d], 0)),
    # a copy on another path starts on the entry's line: a second site
    ([(0x13, 0x19), (0x25, 0x2b)], 0x13, ([0x13, 0x25], 0)),
    ([(0x25, 0x2b), (0x13, 0x19)], 0x25, ([0x25, 0x13], 0)),
    # the closing brace's jump after a caller instruction continues the call (6.1 packet_sendmsg)
    ([(0x459, 0x463), (0x467, 0x46c)], 0x459, ([0x459], 1)),
    # entry_pc on an empty range (the NULL path of 6.1 dev_get_by_index): the code's start instead
    ([(0x19, 0x19), (0x4f, 0x59)], 0x19, ([0x4f], 0)),
])
def test_entry_points(ranges, entry, expected):
    assert inline_sites._entry_points(ranges, entry, LINES.get) == expected


@pytest.mark.parametrize("code, expected", [
    (b"\x65\xff\x00", [(0, 1)]),                        # incl %gs:(%rax)
    (b"\x48\x8b\x43\x08\x65\xff\x08", [(4, -1)]),       # mov 0x8(%rbx),%rax; decl %gs:(%rax)
    (b"\x65\x41\xff\x04\x24", [(0, 1)]),                # incl %gs:(%r12)
    (b"\x65\xff\x40\x10", [(0, 1)]),                    # incl %gs:0x10(%rax)
    (b"\xff\x00", []),                                  # incl (%rax): not per-cpu
    (b"\x65\xff\xc0", []),                              # a register operand
    (b"\x65\xff\x10", []),                              # call *%gs:(%rax)
    (b"\x65\xff", []),                                  # cut short
])
def test_percpu_updates(code, expected):
    assert inline_sites._percpu_updates(code) == expected


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils")
def test_frame_table_agrees_with_readelf(builds):
    """Every CFA row readelf interprets from the fixture's .debug_frame (pushes, remember/restore
    state in drop_either) is what FrameTable computes at that address."""
    out = subprocess.check_output(["readelf", "--debug-dump=frames-interp", builds["main"]], universal_newlines=True)
    rows = re.findall(r"^([0-9a-f]{16}) rsp\+(\d+) ", out.split(".debug_frame", 1)[1], re.M)
    with dwarf.Image(builds["main"]) as image:
        table = dwarf.FrameTable(image.data(".debug_frame"))
    assert len(rows) >= 8
    for loc, offset in rows:
        if int(loc, 16):                                # the CIE's own row is at 0
            assert table.cfa(int(loc, 16)) == (7, int(offset)), loc


def test_frame_base_locations():
    """DW_OP_fbreg N with the frame base at (register, offset): memory at register + offset + N."""
    assert dwarf.evaluate(b"\x91\x00", (7, 8)) == (DevLocation("breg", "sp", 8), "")
    assert dwarf.evaluate(b"\x91\x68", (7, 40)) == (DevLocation("breg", "sp", 16), "")
    assert dwarf.evaluate(b"\x91\x68\x9f", (6, 16)) == (DevLocation("reg", "bp", -8), "")
