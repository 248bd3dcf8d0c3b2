"""Where the kernel inlined its device reference helpers (``dev_hold``/``dev_put`` and friends), from DWARF.

``dev_hold``/``dev_put`` are inline in every kernel version, so no kprobe can name them. With the
kernel's debug info (Debian's ``linux-image-VER-amd64-dbg``, RHEL's ``kernel-debuginfo``) or a
module built with ``-g``, every inlined copy is a ``DW_TAG_inlined_subroutine`` whose code
addresses and whose ``dev`` argument location DWARF records. This module turns them into kprobe
sites: ``caller+offset`` (a function symbol of the ELF symbol table, as kallsyms names it) and the
register or memory slot that holds the ``struct net_device *`` when the site's instruction runs::

    >>> sites, cached = cached_sites(find_debug_vmlinux(os.uname().release))
    >>> [s for s in sites if s.caller == "dev_get_by_name"]       # 6.1.0-56-amd64
    [InlineSite(helper='dev_hold', delta=1, caller='dev_get_by_name', offset=124, module=None,
                dev=DevLocation(kind='reg', reg='bx', offset=0))]

Which addresses are sites (decided here; ``bpftools refleak`` attaches one kprobe per site so
that each reference taken or dropped fires exactly once):

- Nested helpers are one call. On 6.x ``dev_hold`` -> ``netdev_hold`` -> ``__dev_hold`` are
  three nested inlined instances; only the innermost one (the one with no helper inside) is
  probed, under the outermost one's name (what the source calls).
- The site is the counter update itself: the ``incl``/``decl %gs:(...)`` that ``this_cpu_inc`` /
  ``this_cpu_dec`` compile to (3.10 to 6.x with ``CONFIG_PCPU_DEV_REFCNT``), found in the bytes of
  the innermost instance's address ranges. DWARF alone cannot place a kprobe that fires once per
  reference: gcc sets ``DW_AT_entry_pc`` on whichever path comes first, often the NULL path
  where nothing is held (6.1 ``dev_get_by_index`` inlined in ``bpf_xdp_link_attach``); it copies
  ``mov; incl`` into several paths (6.1 ``xfrm_input``: three copies of one ``dev_put``), and it
  schedules one instruction of a call apart from the rest (5.10 ``xfrm_input``, a
  ``mov 0x28(%rsp),%r11`` of ``dev_hold`` five instructions ahead), so range starts fire twice.
  Every copy of the update is a site (``Discovery.multi_range`` counts calls with several). The
  byte match is not decoded from an instruction boundary; the kernel refuses a kprobe that is not
  on one (x86 ``can_probe``, -EILSEQ), and on the 5.10, 6.1 and 6.12 lab kernels objdump shows an
  ``incl``/``decl %gs:`` instruction at every site found.
- Without a recognisable update (``CONFIG_PCPU_DEV_REFCNT=n`` uses ``refcount_t``), a call's sites
  are where it is entered: its entry pc, and every other stretch of its code that starts on the
  entry's source line (a copy for another path); a stretch starting on another line continues
  the call and is dropped (``Discovery.at_entry``, ``skipped["continuation range"]``). Such
  sites may fire with ``dev == 0`` on the NULL path.
- An out-of-line copy of a helper (a static copy gcc did not inline) holds its own update, so
  calls to it are counted there; the ``.part.N`` tail of a partly inlined helper is left out (its
  inlined head is the site). Code freed after boot or module load (init text) is left out.

The ``dev`` location is that of the helper's ``dev`` parameter at the site address (an
expression, or the location-list entry covering the address), taken from the innermost instance
or, when DWARF gives none there, from an enclosing helper instance valid at the same address.
``bpftools.kernel.dwarf`` lists the location expressions understood; any other, or no entry covering
the address, gives ``dev=None``, counted by reason in ``Discovery.no_location``.

Speed: parsing all of vmlinux's DWARF (170 MB of .debug_info on 6.1) with pyelftools takes hours.
A unit can only contain an inlined copy of ``dev_hold`` if it also holds the abstract DIE named
``dev_hold`` (gcc: one per unit that uses it), whose ``DW_AT_name`` is a 4-byte offset into
.debug_str. One regular-expression pass over .debug_info for those offsets finds the candidate
units (about 3% of the bytes); only they are parsed. References between units
(``DW_FORM_ref_addr``: dwz, LTO) are followed by searching for the DIE offsets they would carry.
Results are cached per ELF build id (``cached_sites``).

x86-64 ELF only (vmlinux, or a module); the ELF and DWARF decoding is in ``bpftools.kernel.dwarf``.
"""
import bisect
import errno
import json
import os
import re
import stat
import struct
from typing import Callable, Dict, List, Optional, Set, Tuple

from dataclasses import asdict, dataclass, field

from ..kernel.dwarf import (ADDRX_FORMS, BLOCK_FORMS, CONST_FORMS, CROSS_UNIT_ABBREVS, INLINED, PARAM, REF_FORMS,
                            SUBPROGRAM, DevLocation, FrameTable, Functions, Image, Instance, Unit, check_version,
                            evaluate, gnu_build_id, sleb, uleb, unit_offsets, units_holding)
from ..errors import BadInput
from ..outfiles import write_text

# Helper name -> counter delta. 3.10-5.16: dev_hold/dev_put are the counter; 5.17-5.19: the
# tracked variants dev_hold_track/dev_put_track wrap them; 6.0+: dev_hold -> netdev_hold ->
# __dev_hold (put alike). netdev_tracker_alloc/free only touch the ref_tracker, never the count,
# and are not searched; in_dev_hold/in6_dev_hold count other objects.
DEFAULT_HELPERS = {
    "dev_hold": 1, "__dev_hold": 1, "netdev_hold": 1, "dev_hold_track": 1,
    "dev_put": -1, "__dev_put": -1, "netdev_put": -1, "dev_put_track": -1,
}  # type: Dict[str, int]
DEV_PARAM = "dev"

# Byte offset of each field in x86-64 struct pt_regs (arch/x86/include/asm/ptrace.h, stable ABI).
PT_REGS_OFFSETS = dict((name, 8 * i) for i, name in enumerate(
    ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di",
     "orig_ax", "ip", "cs", "flags", "sp", "ss")))  # type: Dict[str, int]

DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                             "bpftools", "inline_sites")
CACHE_FORMAT = 2
# Where distributions put a vmlinux with DWARF: Debian/Ubuntu -dbg packages, RHEL/Fedora debuginfo,
# then self-built kernels.
DEBUG_VMLINUX_PATHS = ("/usr/lib/debug/boot/vmlinux-{release}", "/usr/lib/debug/lib/modules/{release}/vmlinux",
                       "/boot/vmlinux-{release}", "/lib/modules/{release}/build/vmlinux")

# Code the kernel frees after boot (vmlinux: init and exit text) or after loading a module (init).
_FREED_VMLINUX = re.compile(r"^\.(init|exit)\.")
_FREED_MODULE = re.compile(r"^\.init\.")


@dataclass
class InlineSite:
    """One kprobe site: ``attach_kprobe(event=caller, event_off=offset)`` (module symbols too)."""
    helper: str                      # outermost helper of the call, e.g. "dev_hold"
    delta: int                       # +1 hold, -1 put
    caller: str                      # function symbol containing the site
    offset: int                      # byte offset of the site in ``caller``: an instruction start
    module: Optional[str]            # None for vmlinux, else the module name
    dev: Optional[DevLocation]       # None when DWARF gives no usable location there


@dataclass
class Discovery:
    """The sites of one ELF file and what discovery could not use (counts by reason)."""
    sites: List[InlineSite]
    no_location: Dict[str, int] = field(default_factory=dict)   # reason -> sites with dev None
    skipped: Dict[str, int] = field(default_factory=dict)       # reason -> instances not reported
    multi_range: int = 0             # calls with more than one site (duplicated code paths)
    at_entry: int = 0                # sites at a call's entry: no per-cpu inc/dec found in its code
    units_parsed: int = 0
    units_total: int = 0


def discover(elf_path: str, helpers: Dict[str, int] = DEFAULT_HELPERS) -> List[InlineSite]:
    """Every inlined (and out-of-line) copy of HELPERS in ELF_PATH as kprobe sites (no cache)."""
    return discover_all(elf_path, helpers).sites


def discover_all(elf_path: str, helpers: Dict[str, int] = DEFAULT_HELPERS) -> Discovery:
    """Like ``discover``, with the counts of what could not be used."""
    with Image(elf_path) as image:
        return _Discoverer(image, helpers).run()


def build_id(elf_path: str) -> Optional[str]:
    """The GNU build id (hex) of an ELF file, or None if it has none."""
    try:
        with Image(elf_path) as image:
            return image.build_id()
    except BadInput:
        return None


def cached_sites(elf_path: str, cache_dir: str = DEFAULT_CACHE) -> Tuple[List[InlineSite], bool]:
    """``(sites, was_cached)`` for ELF_PATH with the default helpers, cached as JSON per build id."""
    found, was_cached = cached_discovery(elf_path, cache_dir)
    return found.sites, was_cached


def cached_discovery(elf_path: str, cache_dir: str = DEFAULT_CACHE) -> Tuple[Discovery, bool]:
    """``cached_sites`` with the whole ``Discovery``. Files without a build id are never cached."""
    bid = build_id(elf_path)
    path = os.path.join(cache_dir, "%s.json" % bid) if bid else None
    if path and os.path.exists(path):
        loaded = _load_cache(path, bid)
        if loaded is not None:
            return loaded, True
    found = discover_all(elf_path)
    if path:
        _store_cache(path, bid, found)
    return found, False


def find_debug_vmlinux(release: str) -> Optional[str]:
    """The vmlinux with DWARF for kernel RELEASE (Debian -dbg, RHEL debuginfo, self-built), or None.

    For the running kernel a file whose build id differs from the kernel's own
    (/sys/kernel/notes) is passed over: its offsets would be those of another build."""
    running = _running_build_id() if release == os.uname().release else None
    for pattern in DEBUG_VMLINUX_PATHS:
        path = pattern.format(release=release)
        if not os.path.isfile(path):
            continue
        try:
            with Image(path) as image:
                if image.has_section(".debug_info") and (running is None or image.build_id() in (None, running)):
                    return path
        except BadInput:
            continue
    return None


# ---- cache -------------------------------------------------------------------------------------

def _own_file_text(path: str) -> str:
    """PATH's text if it is a regular file of ours that nobody else can write, never through a link
    (a cache planted under a sudo user's home must not feed kprobe sites to root); OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise OSError(errno.EPERM, "not our own file")
        return f.read()


def _load_cache(path: str, bid: str) -> Optional[Discovery]:
    try:
        doc = json.loads(_own_file_text(path))
        if doc.get("format") != CACHE_FORMAT or doc.get("build_id") != bid or \
                doc.get("helpers") != sorted([k, v] for k, v in DEFAULT_HELPERS.items()):
            return None
        sites = [InlineSite(helper=s["helper"], delta=s["delta"], caller=s["caller"], offset=s["offset"],
                            module=s["module"], dev=DevLocation(**s["dev"]) if s["dev"] else None)
                 for s in doc["sites"]]
        info = doc["discovery"]
        return Discovery(sites=sites, no_location=info["no_location"], skipped=info["skipped"],
                         multi_range=info["multi_range"], at_entry=info["at_entry"],
                         units_parsed=info["units_parsed"],
                         units_total=info["units_total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store_cache(path: str, bid: str, found: Discovery) -> None:
    info = asdict(found)
    sites = info.pop("sites")
    doc = {"format": CACHE_FORMAT, "build_id": bid,
           "helpers": sorted([k, v] for k, v in DEFAULT_HELPERS.items()),
           "discovery": info, "sites": sites}
    try:
        write_text(path, json.dumps(doc), create_dirs=True)
    except BadInput:
        pass            # an unwritable (or planted) cache only costs the next run its time


def _running_build_id() -> Optional[str]:
    try:
        with open("/sys/kernel/notes", "rb") as f:
            return gnu_build_id(f.read())
    except OSError:
        return None


# incl/decl %gs:(...) (this_cpu_inc/dec of the per-cpu counter, every version since 3.10 unless
# CONFIG_PCPU_DEV_REFCNT=n): GS prefix, optional REX, opcode 0xff, ModRM with reg 0 (inc) or 1 (dec)
# and a memory operand.
_PERCPU_INC_DEC = re.compile(b"\x65[\x40-\x4f]?\xff", re.DOTALL)


def _percpu_updates(code: bytes) -> List[Tuple[int, int]]:
    """(offset in CODE, +1 or -1) of each ``inc``/``dec`` of a %gs-relative memory operand."""
    found = []
    for m in _PERCPU_INC_DEC.finditer(code):
        if m.end() >= len(code):
            continue
        modrm = code[m.end()]
        reg, mod = (modrm >> 3) & 7, modrm >> 6
        if reg in (0, 1) and mod != 3:
            found.append((m.start(), 1 if reg == 0 else -1))
    return found


def _entry_points(ranges: List[Tuple[int, int]], entry: int,
                  line_at: Callable[[int], Optional[Tuple[int, int]]]) -> Tuple[List[int], int]:
    """Where execution enters one inlined call whose code is RANGES: ``(addresses, dropped)``.

    ENTRY (DW_AT_entry_pc) is one. Ranges that touch are one stretch of code. Every other stretch
    that starts on the same source line as ENTRY (LINE_AT: address -> (file, line) of the line
    table) is a copy of the call on another path (gcc's tail duplication) and another entry; a
    stretch starting on another line continues the call after an interleaved caller instruction
    (6.1's packet_sendmsg: ``mov; decl`` at line 4030, then the closing brace's ``jmp`` at 4035)
    and is dropped, so that one call is counted once."""
    stretches = []  # type: List[List[int]]
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if stretches and lo <= stretches[-1][1]:
            stretches[-1][1] = max(stretches[-1][1], hi)
        else:
            stretches.append([lo, hi])
    if not any(lo <= entry < hi for lo, hi in stretches):
        entry = stretches[0][0]
    addresses, dropped = [entry], 0
    line = line_at(entry) if len(stretches) > 1 else None
    for lo, hi in stretches:
        if lo <= entry < hi:
            continue
        if line is not None and line_at(lo) == line:
            addresses.append(lo)
        else:
            dropped += 1
    return addresses, dropped


class _Discoverer(object):
    """One discovery run over one ELF file."""

    def __init__(self, image: Image, helpers: Dict[str, int]) -> None:
        self.image = image
        self.helpers = dict(helpers)
        self.helper_names = dict((name.encode(), name) for name in helpers)
        self.links = {}  # type: Dict[int, int]            # DIE -> its abstract origin / specification
        self.helper_dies = {}  # type: Dict[int, str]      # DIE of a subprogram named after a helper
        self.dev_dies = set()  # type: Set[int]            # the "dev" parameters of those subprograms
        self.instances = []  # type: List[Instance]
        self.skipped = {}  # type: Dict[str, int]
        self.frames = None  # type: Optional[FrameTable]
        self.rows = {}  # type: Dict[int, List[Tuple[int, int, int]]]   # unit -> line table rows

    def _count(self, table: Dict[str, int], reason: str) -> None:
        table[reason] = table.get(reason, 0) + 1

    # -- which units to parse

    def run(self) -> Discovery:
        self.dwarf = self.image.dwarf()
        info = self.image.data(".debug_info")
        strings = self.image.data(".debug_str")
        units = unit_offsets(info)
        if self.image.has_section(".debug_str_offsets"):
            todo = set(units)                # DW_FORM_strx names (clang): no cheap way to narrow
        else:
            patterns = []
            for name in self.helper_names:
                for m in re.finditer(re.escape(name + b"\0"), strings):
                    patterns.append(struct.pack("<I", m.start()))
                patterns.append(name + b"\0")                 # DW_FORM_string
            todo = units_holding(info, units, patterns)
        done = set()  # type: Set[int]
        cross_unit = any(p in self.image.data(".debug_abbrev") for p in CROSS_UNIT_ABBREVS)
        while todo:
            for offset in sorted(todo):
                self._walk_unit(offset)
            done |= todo
            todo = set()
            if cross_unit:
                targets = [struct.pack("<I", o) for o in self._referable() if o < 1 << 32]
                todo = units_holding(info, units, targets) - done
        return self._sites(len(done), len(units))

    def _referable(self) -> Set[int]:
        """DIEs another unit could refer to for a helper or its dev parameter."""
        found = set(self.helper_dies) | self.dev_dies
        for die in self.links:
            if self._final(die) in found:
                found.add(die)
        return found

    # -- reading one unit

    def _ref(self, cu, attr) -> Optional[int]:
        if attr.form in REF_FORMS:
            return cu.cu_offset + attr.raw_value
        if attr.form == "DW_FORM_ref_addr":
            return attr.raw_value
        return None

    def _walk_unit(self, offset: int) -> None:
        from elftools.dwarf.die import DIE   # lazy: pyelftools, only when debug info is read
        check_version(self.image, offset)
        cu = self.dwarf.get_CU_at(offset)
        top = cu.get_top_DIE()
        unit = Unit(offset, cu["version"])
        attrs = top.attributes
        for name, slot in (("DW_AT_addr_base", "addr_base"), ("DW_AT_GNU_addr_base", "addr_base"),
                           ("DW_AT_loclists_base", "loclists_base"), ("DW_AT_rnglists_base", "rnglists_base")):
            if name in attrs:
                setattr(unit, slot, attrs[name].raw_value)
        if "DW_AT_low_pc" in attrs:
            unit.base = self._address(unit, attrs["DW_AT_low_pc"])
        stream = self.dwarf.debug_info_sec.stream
        end = cu.cu_offset + cu.size
        pos = top.offset + top.size
        # One entry per open level: (innermost enclosing instance, instance that is the parent,
        # DW_AT_frame_base of the enclosing function, parent DIE).
        stack = [(None, None, None, top.offset)] if top.has_children else []  # type: List[Tuple[Optional[int], Optional[int], object, int]]
        while pos < end and stack:
            die = DIE(cu, stream, pos)
            if die.is_null():
                stack.pop()
                pos += die.size
                continue
            tag, attrs = die.tag, die.attributes
            enclosing, parent_instance, frame_base, parent = stack[-1]
            frame_base = attrs.get("DW_AT_frame_base", frame_base)
            instance = None
            if tag in (INLINED, SUBPROGRAM, PARAM):
                origin = attrs.get("DW_AT_abstract_origin") or attrs.get("DW_AT_specification")
                if origin is not None:
                    target = self._ref(cu, origin)
                    if target is None:
                        self._count(self.skipped, "unsupported reference form")
                    else:
                        self.links[pos] = target
                name = attrs.get("DW_AT_name")
                name = name.value if name is not None else None
                if tag == PARAM:
                    if name == DEV_PARAM.encode() and parent in self.helper_dies:
                        self.dev_dies.add(pos)
                    if parent_instance is not None:
                        self.instances[parent_instance].params.append((pos, attrs.get("DW_AT_location")))
                else:
                    if tag == SUBPROGRAM and name in self.helper_names and "DW_AT_declaration" not in attrs:
                        self.helper_dies[pos] = self.helper_names[name]
                    has_code = "DW_AT_low_pc" in attrs or "DW_AT_ranges" in attrs
                    if has_code and (tag == INLINED or origin is not None or name in self.helper_names):
                        pcs = dict((k, attrs[k]) for k in ("DW_AT_entry_pc", "DW_AT_low_pc", "DW_AT_high_pc",
                                                          "DW_AT_ranges") if k in attrs)
                        instance = len(self.instances)
                        self.instances.append(Instance(pos, unit, enclosing, tag == INLINED, pcs, frame_base))
            if die.has_children:
                if len(stack) == 1 and tag != SUBPROGRAM and "DW_AT_sibling" in attrs:
                    pos = self._ref(cu, attrs["DW_AT_sibling"])     # types, variables: no code inside
                    continue
                stack.append((instance if instance is not None else enclosing, instance, frame_base, pos))
            pos += die.size

    # -- addresses, ranges, locations

    def _address(self, unit: Unit, attr) -> int:
        if attr.form in ADDRX_FORMS:
            addr, = struct.unpack_from("<Q", self.image.data(".debug_addr"), unit.addr_base + 8 * attr.raw_value)
            return addr
        return attr.raw_value

    def _list_offset(self, unit: Unit, attr, section: str, base: int) -> int:
        if attr.form in ("DW_FORM_loclistx", "DW_FORM_rnglistx"):
            rel, = struct.unpack_from("<I", self.image.data(section), base + 4 * attr.raw_value)
            return base + rel
        return attr.raw_value

    def _ranges(self, instance: Instance) -> List[Tuple[int, int]]:
        """Address ranges [low, high) of an instance, in DWARF order."""
        unit, pcs = instance.unit, instance.pcs
        if "DW_AT_low_pc" in pcs:
            low = self._address(unit, pcs["DW_AT_low_pc"])
            high = pcs.get("DW_AT_high_pc")
            if high is None:
                return [(low, low + 1)]
            if high.form in CONST_FORMS:
                return [(low, low + high.raw_value)]
            return [(low, self._address(unit, high))]
        attr = pcs["DW_AT_ranges"]
        if unit.version < 5:
            return [(lo, hi) for lo, hi, _ in self._list_v4(".debug_ranges", attr.raw_value, unit.base, False)]
        offset = self._list_offset(unit, attr, ".debug_rnglists", unit.rnglists_base)
        return [(lo, hi) for lo, hi, _ in self._list_v5(".debug_rnglists", offset, unit, False)]

    def _entry(self, instance: Instance, ranges: List[Tuple[int, int]]) -> int:
        attr = instance.pcs.get("DW_AT_entry_pc")
        if attr is None:                        # DWARF: then low_pc; gcc lists the entry range first
            return ranges[0][0]
        if attr.form in CONST_FORMS:           # DWARF 5: an offset from the instance's base
            return ranges[0][0] + attr.raw_value
        return self._address(instance.unit, attr)

    def _locations(self, unit: Unit, attr) -> List[Tuple[int, int, bytes]]:
        """A DW_AT_location as [(low, high, expression)]; an expression covers every address."""
        if attr.form in BLOCK_FORMS:
            return [(0, 1 << 64, bytes(bytearray(attr.value)))]
        if unit.version < 5:
            return self._list_v4(".debug_loc", attr.raw_value, unit.base, True)
        offset = self._list_offset(unit, attr, ".debug_loclists", unit.loclists_base)
        return self._list_v5(".debug_loclists", offset, unit, True)

    def _list_v4(self, section: str, pos: int, base: int, exprs: bool) -> List[Tuple[int, int, bytes]]:
        """.debug_loc / .debug_ranges (DWARF 2-4) list at POS."""
        data, out = self.image.data(section), []
        while pos + 16 <= len(data):
            low, high = struct.unpack_from("<QQ", data, pos)
            pos += 16
            if low == 0 and high == 0:
                break
            if low == 0xFFFFFFFFFFFFFFFF:
                base = high
                continue
            expr = b""
            if exprs:
                size, = struct.unpack_from("<H", data, pos)
                expr = data[pos + 2:pos + 2 + size]
                pos += 2 + size
            out.append((base + low, base + high, expr))
        return out

    def _list_v5(self, section: str, pos: int, unit: Unit, exprs: bool) -> List[Tuple[int, int, bytes]]:
        """.debug_loclists / .debug_rnglists (DWARF 5) list at POS."""
        data, out, base = self.image.data(section), [], unit.base
        # Entry kinds; the loclists and rnglists numberings differ after offset_pair (4).
        if exprs:
            base_x, sx_ex, sx_len, pair, default, base_a, s_e, s_len = 1, 2, 3, 4, 5, 6, 7, 8
        else:
            base_x, sx_ex, sx_len, pair, default, base_a, s_e, s_len = 1, 2, 3, 4, -1, 5, 6, 7

        def addrx(index: int) -> int:
            addr, = struct.unpack_from("<Q", self.image.data(".debug_addr"), unit.addr_base + 8 * index)
            return addr

        while pos < len(data):
            kind = data[pos]
            pos += 1
            if kind == 0:
                break
            low = high = None
            if kind == base_x:
                index, pos = uleb(data, pos)
                base = addrx(index)
                continue
            elif kind == base_a:
                base, = struct.unpack_from("<Q", data, pos)
                pos += 8
                continue
            elif kind in (sx_ex, sx_len, pair):
                first, pos = uleb(data, pos)
                second, pos = uleb(data, pos)
                if kind == sx_ex:
                    low, high = addrx(first), addrx(second)
                elif kind == sx_len:
                    low = addrx(first)
                    high = low + second
                else:
                    low, high = base + first, base + second
            elif kind == s_e:
                low, high = struct.unpack_from("<QQ", data, pos)
                pos += 16
            elif kind == s_len:
                low, = struct.unpack_from("<Q", data, pos)
                length, pos = uleb(data, pos + 8)
                high = low + length
            elif kind == default:
                low, high = 0, 1 << 64
            elif exprs and kind == 9:                       # DW_LLE_GNU_view_pair: no expression
                pos = uleb(data, uleb(data, pos)[1])[1]
                continue
            else:
                raise BadInput("%s: unknown %s entry kind %d" % (self.image.path, section, kind))
            expr = b""
            if exprs:
                size, pos = uleb(data, pos)
                expr = data[pos:pos + size]
                pos += size
            out.append((low, high, expr))
        return out

    def _final(self, die: int) -> int:
        """Follow abstract_origin/specification links to the end of the chain."""
        for _ in range(16):
            if die not in self.links:
                break
            die = self.links[die]
        return die

    def _helper(self, instance: Instance) -> Optional[str]:
        return self.helper_dies.get(self._final(self.links.get(instance.offset, instance.offset)))

    def _line_rows(self, unit: Unit) -> List[Tuple[int, int, int]]:
        """Sorted (address, file, line) rows of a unit's line table; end of sequence has file -1."""
        if unit.offset not in self.rows:
            rows = []
            program = self.dwarf.line_program_for_CU(self.dwarf.get_CU_at(unit.offset))
            for entry in program.get_entries() if program is not None else ():
                state = entry.state
                if state is not None:
                    rows.append((state.address, -1 if state.end_sequence else state.file, state.line))
            rows.sort(key=lambda row: row[0])       # stable: the last row at an address wins below
            self.rows[unit.offset] = rows
        return self.rows[unit.offset]

    def _line_at(self, unit: Unit, addr: int) -> Optional[Tuple[int, int]]:
        rows = self._line_rows(unit)
        i = bisect.bisect_right(rows, (addr, 1 << 62, 0)) - 1
        while i > 0 and rows[i][1] < 0 and rows[i - 1][0] == rows[i][0]:
            i -= 1                                  # a sequence ending where another one starts
        if i < 0 or rows[i][1] < 0:
            return None
        return rows[i][1], rows[i][2]

    def _site_addresses(self, instance: Instance, delta: int) -> Tuple[List[int], bool]:
        """The counter updates of one innermost instance, or its entry points (then True)."""
        ranges = self._ranges(instance)
        if not any(hi > lo for lo, hi in ranges):
            return [], False
        updates = []
        for lo, hi in ranges:
            updates += [lo + at for at, sign in _percpu_updates(self.image.code(lo, hi)) if sign == delta]
        if updates:
            return sorted(set(updates)), False
        sites, dropped = _entry_points(ranges, self._entry(instance, ranges),
                                       lambda addr: self._line_at(instance.unit, addr))
        for _ in range(dropped):
            self._count(self.skipped, "continuation range")
        return sites, True

    def _frame_base(self, instance: Instance, pc: int) -> Optional[Tuple[int, int]]:
        """The frame base at PC of the function holding INSTANCE, as (DWARF register, offset)."""
        attr = instance.frame_base
        if attr is None or attr.form not in BLOCK_FORMS or not attr.value:
            return None
        expr = bytes(bytearray(attr.value))
        if expr == b"\x9c":                                   # DW_OP_call_frame_cfa
            if self.frames is None:
                self.frames = FrameTable(self.image.data(".debug_frame"))
            return self.frames.cfa(pc)
        if 0x50 <= expr[0] <= 0x6F and len(expr) == 1:         # DW_OP_regN: the register's value
            return expr[0] - 0x50, 0
        if 0x70 <= expr[0] <= 0x8F and sleb(expr, 1)[1] == len(expr):   # DW_OP_bregN offset
            return expr[0] - 0x70, sleb(expr, 1)[0]
        return None

    def _dev_at(self, chain: List[Instance], pc: int) -> Tuple[Optional[DevLocation], str]:
        """The dev parameter's location at PC, from the innermost instance of CHAIN that has one."""
        why = ""
        for instance in chain:
            for param, attr in instance.params:
                if self._final(param) not in self.dev_dies:
                    continue
                if attr is None:
                    reason = "optimized out"
                else:
                    covering = [expr for lo, hi, expr in self._locations(instance.unit, attr) if lo <= pc < hi]
                    if covering:
                        frame = self._frame_base(instance, pc) if covering[0][:1] == b"\x91" else None
                        location, reason = evaluate(covering[0], frame)
                    else:
                        location, reason = None, "no location at the site"
                    if location is not None:
                        return location, ""
                why = why or reason
        return None, why or "no dev parameter"

    def _sites(self, parsed: int, total: int) -> Discovery:
        helper_of = {}  # type: Dict[int, str]
        for i, instance in enumerate(self.instances):
            name = self._helper(instance)
            if name is not None:
                helper_of[i] = name

        def helper_parent(i: int) -> Optional[int]:
            parent = self.instances[i].parent
            while parent is not None and parent not in helper_of:
                parent = self.instances[parent].parent
            return parent

        parents = dict((i, helper_parent(i)) for i in helper_of)
        outer = set(p for p in parents.values() if p is not None)
        functions = Functions(self.image)
        module = self.image.module_name()
        found = Discovery(sites=[], units_parsed=parsed, units_total=total, skipped=self.skipped)
        seen = set()  # type: Set[Tuple[str, int]]
        for i in sorted(i for i in helper_of if i not in outer):
            chain = [i]
            while parents[chain[-1]] is not None:
                chain.append(parents[chain[-1]])
            instances = [self.instances[j] for j in chain]
            outermost = instances[-1]
            if not outermost.inlined:
                symbol = functions.lookup(self._ranges(outermost)[0][0])
                if symbol is not None and ".part." in symbol[0]:
                    self._count(self.skipped, "partial-inlining tail")   # its inlined head is a site
                    continue
            addresses, at_entry = self._site_addresses(instances[0], self.helpers[helper_of[i]])
            if len(addresses) > 1:
                found.multi_range += 1
            if at_entry:
                found.at_entry += len(addresses)
            for pc in addresses:
                symbol = functions.lookup(pc)
                if symbol is None:
                    self._count(self.skipped, "outside any function symbol")
                    continue
                caller, offset, section = symbol
                if (_FREED_MODULE if module else _FREED_VMLINUX).match(section):
                    self._count(self.skipped, "init code")
                    continue
                if (caller, offset) in seen:
                    continue
                seen.add((caller, offset))
                dev, why = self._dev_at(instances, pc)
                if dev is None:
                    self._count(found.no_location, why)
                found.sites.append(InlineSite(helper=helper_of[chain[-1]], delta=self.helpers[helper_of[i]],
                                              caller=caller, offset=offset, module=module, dev=dev))
        found.sites.sort(key=lambda s: (s.caller, s.offset, s.helper))
        return found
