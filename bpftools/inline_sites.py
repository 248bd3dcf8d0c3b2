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
Supported: ``DW_OP_reg*``/``regx`` (value in a register), ``DW_OP_breg* N`` (value in memory at
register + N), ``DW_OP_breg* N; DW_OP_deref; DW_OP_stack_value`` (same), ``DW_OP_breg* N;
DW_OP_stack_value`` (value = register + N: ``kind="reg"`` with ``offset=N``), and
``DW_OP_fbreg N`` when the function's frame base is ``DW_OP_call_frame_cfa`` (the CFA rule at the
address comes from .debug_frame: ``rsp + M``, giving ``breg sp M+N``). Everything else
(``DW_OP_entry_value``, constants, pieces, no entry covering the address) gives ``dev=None``,
counted by reason in ``Discovery.no_location``.

Speed: parsing all of vmlinux's DWARF (170 MB of .debug_info on 6.1) with pyelftools takes hours.
A unit can only contain an inlined copy of ``dev_hold`` if it also holds the abstract DIE named
``dev_hold`` (gcc: one per unit that uses it), whose ``DW_AT_name`` is a 4-byte offset into
.debug_str. One regular-expression pass over .debug_info for those offsets finds the candidate
units (about 3% of the bytes); only they are parsed. References between units
(``DW_FORM_ref_addr``: dwz, LTO) are followed by searching for the DIE offsets they would carry.
Results are cached per ELF build id (``cached_sites``).

x86-64 ELF only (vmlinux, or a module: an ``ET_REL`` file whose DWARF is relocated here, each
code section at its own address so that ``.text`` and ``.text.unlikely`` never overlap).
"""
import bisect
import json
import os
import re
import struct
import tempfile
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from dataclasses import asdict, dataclass, field

from .errors import BadInput

# Helper name -> counter delta. 3.10-5.16: dev_hold/dev_put are the counter; 5.17-5.19: the
# tracked variants dev_hold_track/dev_put_track wrap them; 6.0+: dev_hold -> netdev_hold ->
# __dev_hold (put alike). netdev_tracker_alloc/free only touch the ref_tracker, never the count,
# and are not searched; in_dev_hold/in6_dev_hold count other objects.
DEFAULT_HELPERS = {
    "dev_hold": 1, "__dev_hold": 1, "netdev_hold": 1, "dev_hold_track": 1,
    "dev_put": -1, "__dev_put": -1, "netdev_put": -1, "dev_put_track": -1,
}  # type: Dict[str, int]
DEV_PARAM = "dev"

# DWARF x86-64 register numbers (System V psABI, figure 3.36) -> struct pt_regs field names.
DWARF_REGS = ("ax", "dx", "cx", "bx", "si", "di", "bp", "sp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
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
class DevLocation:
    """Where the ``struct net_device *`` is when the site's instruction runs.

    ``reg``: the value is register ``reg`` + ``offset`` (``offset`` is 0 unless DWARF computes it);
    ``breg``: the value is the 8 bytes in memory at register ``reg`` + ``offset``.
    ``reg`` is an x86-64 ``struct pt_regs`` field name (see ``PT_REGS_OFFSETS``)."""
    kind: str
    reg: str
    offset: int = 0


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
    with _Image(elf_path) as image:
        return _Discoverer(image, helpers).run()


def build_id(elf_path: str) -> Optional[str]:
    """The GNU build id (hex) of an ELF file, or None if it has none."""
    try:
        with _Image(elf_path) as image:
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
            with _Image(path) as image:
                if image.has_section(".debug_info") and (running is None or image.build_id() in (None, running)):
                    return path
        except BadInput:
            continue
    return None


# ---- cache -------------------------------------------------------------------------------------

def _load_cache(path: str, bid: str) -> Optional[Discovery]:
    try:
        with open(path) as f:
            doc = json.load(f)
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
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except OSError:
        pass            # an unwritable cache only costs the next run its time


def _running_build_id() -> Optional[str]:
    try:
        with open("/sys/kernel/notes", "rb") as f:
            return _gnu_build_id(f.read())
    except OSError:
        return None


def _gnu_build_id(notes: bytes) -> Optional[str]:
    """The NT_GNU_BUILD_ID descriptor in a blob of ELF notes, as hex."""
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        name_at = pos + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        if ntype == 3 and notes[name_at:name_at + namesz] == b"GNU\0":
            return notes[desc_at:desc_at + descsz].hex()
        pos = desc_at + ((descsz + 3) & ~3)
    return None


# ---- ELF ---------------------------------------------------------------------------------------

def _leb128(data: bytes, pos: int, signed: bool) -> Tuple[int, int]:
    """(value, position after it) of the LEB128 number at POS."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if signed and byte & 0x40:
                result -= 1 << shift
            return result, pos


def _uleb(data: bytes, pos: int) -> Tuple[int, int]:
    return _leb128(data, pos, False)


def _sleb(data: bytes, pos: int) -> Tuple[int, int]:
    return _leb128(data, pos, True)


class _Image(object):
    """One x86-64 ELF file: sections, function symbols, (relocated) DWARF sections."""

    SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4

    def __init__(self, path: str) -> None:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        try:
            self.file = open(path, "rb")
        except OSError as e:
            raise BadInput("cannot open %s: %s" % (path, e.strerror))
        try:
            self.elf = ELFFile(self.file)
        except ELFError as e:
            self.file.close()
            raise BadInput("%s is not an ELF file: %s" % (path, e))
        if self.elf["e_machine"] != "EM_X86_64" or self.elf.elfclass != 64 or not self.elf.little_endian:
            self.file.close()
            raise BadInput("%s: only x86-64 ELF files are supported" % path)
        self.path = path
        self.relocatable = self.elf["e_type"] == "ET_REL"
        self.sections = list(self.elf.iter_sections())
        self.by_name = dict((s.name, i) for i, s in enumerate(self.sections))
        self.base = self._layout()
        self._symbols = None  # type: Optional[List[Tuple[str, int, int, int, int]]]
        self._data = {}  # type: Dict[str, bytes]
        self._code = {}  # type: Dict[int, bytes]

    def __enter__(self) -> "_Image":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def _layout(self) -> Dict[int, int]:
        """Section index -> address of its first byte. ET_REL: each allocated section gets its own
        range above 0x1000 (they all say 0); otherwise sh_addr."""
        base = {}
        if not self.relocatable:
            for i, s in enumerate(self.sections):
                if s["sh_flags"] & self.SHF_ALLOC:
                    base[i] = s["sh_addr"]
            return base
        addr = 0x1000
        for i, s in enumerate(self.sections):
            if s["sh_flags"] & self.SHF_ALLOC and s["sh_type"] != "SHT_NOBITS":
                align = max(16, s["sh_addralign"] or 1)
                addr = (addr + align - 1) // align * align
                base[i] = addr
                addr += max(s["sh_size"], 1)
        return base

    def has_section(self, name: str) -> bool:
        return name in self.by_name

    def build_id(self) -> Optional[str]:
        for s in self.sections:
            if s["sh_type"] == "SHT_NOTE":
                found = _gnu_build_id(s.data())
                if found:
                    return found
        return None

    def module_name(self) -> Optional[str]:
        """None for vmlinux; for a module its .modinfo ``name=``, else the file name."""
        if not self.relocatable:
            return None
        if ".modinfo" in self.by_name:
            for item in self.sections[self.by_name[".modinfo"]].data().split(b"\0"):
                if item.startswith(b"name="):
                    return item[5:].decode("utf-8", "replace")
        return os.path.basename(self.path).split(".")[0].replace("-", "_")

    def symbols(self) -> List[Tuple[str, int, int, int, int]]:
        """(name, value, size, info, shndx) of every .symtab entry, by index."""
        if self._symbols is None:
            self._symbols = []
            if ".symtab" in self.by_name:
                symtab = self.sections[self.by_name[".symtab"]]
                strtab = self.sections[symtab["sh_link"]].data()
                for name_off, info, _other, shndx, value, size in struct.iter_unpack("<IBBHQQ", symtab.data()):
                    end = strtab.find(b"\0", name_off)
                    self._symbols.append((strtab[name_off:end].decode("utf-8", "replace"), value, size, info, shndx))
        return self._symbols

    def code(self, low: int, high: int) -> bytes:
        """The bytes at addresses [LOW, HIGH) of the allocated section holding LOW (b"" if none)."""
        for index, start in self.base.items():
            section = self.sections[index]
            if start <= low < start + section["sh_size"] and section["sh_type"] != "SHT_NOBITS":
                if index not in self._code:
                    self._code[index] = section.data()
                return self._code[index][low - start:high - start]
        return b""

    def data(self, name: str) -> bytes:
        """Contents of section NAME (empty if absent); in ET_REL files with its RELA relocations applied."""
        if name not in self._data:
            if name not in self.by_name:
                self._data[name] = b""
            else:
                raw = self.sections[self.by_name[name]].data()
                self._data[name] = self._relocate(self.by_name[name], raw) if self.relocatable else raw
        return self._data[name]

    def _relocate(self, index: int, raw: bytes) -> bytes:
        relas = [s for s in self.sections if s["sh_type"] == "SHT_RELA" and s["sh_info"] == index]
        if not relas:
            return raw
        out = bytearray(raw)
        symbols = self.symbols()
        for rela in relas:
            for offset, info, addend in struct.iter_unpack("<QQq", rela.data()):
                rtype, sym = info & 0xFFFFFFFF, info >> 32
                _name, value, _size, _info, shndx = symbols[sym]
                value += self.base.get(shndx, 0) + addend
                if rtype == 1:                                        # R_X86_64_64
                    struct.pack_into("<Q", out, offset, value & 0xFFFFFFFFFFFFFFFF)
                elif rtype in (10, 11):                               # R_X86_64_32, _32S
                    struct.pack_into("<I", out, offset, value & 0xFFFFFFFF)
                elif rtype != 0:
                    raise BadInput("%s: relocation type %d in section %s is not supported"
                                   % (self.path, rtype, self.sections[index].name))
        return bytes(out)

    def dwarf(self):
        """pyelftools DWARFInfo over the (relocated) sections."""
        from io import BytesIO
        if not self.elf.has_dwarf_info() or ".debug_info" not in self.by_name:
            raise BadInput("%s has no DWARF debug info (install the -dbg/debuginfo package)" % self.path)
        info = self.elf.get_dwarf_info(relocate_dwarf_sections=False)
        if self.relocatable:
            for attr in ("debug_info_sec", "debug_line_sec", "debug_str_offsets_sec", "debug_addr_sec"):
                desc = getattr(info, attr, None)
                if desc is not None:
                    setattr(info, attr, desc._replace(stream=BytesIO(self.data(desc.name))))
        return info


class _Functions(object):
    """Address -> (function symbol, offset), over the FUNC symbols of the symbol table."""

    def __init__(self, image: _Image) -> None:
        best = {}  # type: Dict[int, Tuple[int, str, int, int]]
        for name, value, size, info, shndx in image.symbols():
            if info & 0xF != 2 or size == 0 or shndx not in image.base:     # STT_FUNC, defined
                continue
            addr = image.base[shndx] + value if image.relocatable else value
            rank = (0 if info >> 4 in (1, 2) else 1, len(name), name)       # global/weak first
            if addr not in best or rank < best[addr][3:]:
                best[addr] = (addr + size, name, shndx) + rank
        self.starts = sorted(best)
        self.entries = [best[a] for a in self.starts]
        self.sections = image.sections

    def lookup(self, addr: int) -> Optional[Tuple[str, int, str]]:
        """(symbol, offset, section name) of the function containing ADDR, or None."""
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0:
            return None
        end, name, shndx = self.entries[i][:3]
        if addr >= end:
            return None
        return name, addr - self.starts[i], self.sections[shndx].name


# ---- DWARF ---------------------------------------------------------------------------------------

_REF_FORMS = ("DW_FORM_ref1", "DW_FORM_ref2", "DW_FORM_ref4", "DW_FORM_ref8", "DW_FORM_ref_udata")
_ADDRX_FORMS = ("DW_FORM_addrx", "DW_FORM_addrx1", "DW_FORM_addrx2", "DW_FORM_addrx3", "DW_FORM_addrx4",
                "DW_FORM_GNU_addr_index")
_CONST_FORMS = ("DW_FORM_data1", "DW_FORM_data2", "DW_FORM_data4", "DW_FORM_data8", "DW_FORM_udata",
                "DW_FORM_sdata", "DW_FORM_implicit_const")
_BLOCK_FORMS = ("DW_FORM_exprloc", "DW_FORM_block", "DW_FORM_block1", "DW_FORM_block2", "DW_FORM_block4")
_INLINED, _SUBPROGRAM, _PARAM = "DW_TAG_inlined_subroutine", "DW_TAG_subprogram", "DW_TAG_formal_parameter"
# (attribute, form) byte pairs in .debug_abbrev that allow references across units: abstract_origin
# or specification with DW_FORM_ref_addr.
_CROSS_UNIT_ABBREVS = (b"\x31\x10", b"\x47\x10")


class _Unit(object):
    """What reading lists and addresses of one unit needs."""
    __slots__ = ("offset", "version", "base", "addr_base", "loclists_base", "rnglists_base")

    def __init__(self, offset: int, version: int) -> None:
        self.offset, self.version = offset, version
        self.base = self.addr_base = self.loclists_base = self.rnglists_base = 0


class _Instance(object):
    """A concrete copy of some function: an inlined_subroutine, or an out-of-line subprogram."""
    __slots__ = ("offset", "unit", "parent", "inlined", "pcs", "params", "frame_base")

    def __init__(self, offset: int, unit: _Unit, parent: Optional[int], inlined: bool, pcs: dict,
                 frame_base: object) -> None:
        self.offset, self.unit, self.parent, self.inlined, self.pcs = offset, unit, parent, inlined, pcs
        self.frame_base = frame_base      # DW_AT_frame_base of the function the code is in
        self.params = []  # type: List[Tuple[int, object]]


def _unit_offsets(info: bytes) -> List[int]:
    """Offsets of the unit headers in .debug_info."""
    offsets, pos = [], 0
    while pos + 4 <= len(info):
        offsets.append(pos)
        length, = struct.unpack_from("<I", info, pos)
        if length == 0xFFFFFFFF:
            length, = struct.unpack_from("<Q", info, pos + 4)
            pos += 12 + length
        else:
            pos += 4 + length
    return offsets


class _FrameTable(object):
    """The canonical frame address (CFA) rule at an address, from .debug_frame: (register, offset).

    Only the CFA column is tracked, which is all ``DW_OP_fbreg`` needs when a function's frame
    base is ``DW_OP_call_frame_cfa`` (gcc on x86-64)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cies = {}  # type: Dict[int, Tuple[int, int, bytes]]
        fdes = []
        pos = 0
        while pos + 4 <= len(data):
            length, = struct.unpack_from("<I", data, pos)
            if length == 0xFFFFFFFF or length == 0:     # 64-bit DWARF is not produced for x86-64 kernels
                break
            end = pos + 4 + length
            cie_id, = struct.unpack_from("<I", data, pos + 4)
            if cie_id != 0xFFFFFFFF:
                start, size = struct.unpack_from("<QQ", data, pos + 8)
                fdes.append((start, start + size, cie_id, pos + 24, end))
            pos = end
        fdes.sort()
        self.starts = [f[0] for f in fdes]
        self.fdes = fdes

    def _cie(self, offset: int) -> Tuple[int, int, bytes]:
        """(code alignment, data alignment, initial instructions) of the CIE at OFFSET."""
        if offset not in self.cies:
            data = self.data
            length, = struct.unpack_from("<I", data, offset)
            version = data[offset + 8]
            pos = data.index(b"\0", offset + 9) + 1          # augmentation string (gcc: empty)
            if version >= 4:
                pos += 2                                      # address size, segment selector size
            code_align, pos = _uleb(data, pos)
            data_align, pos = _sleb(data, pos)
            pos = pos + 1 if version == 1 else _uleb(data, pos)[1]   # return address register
            self.cies[offset] = (code_align, data_align, data[pos:offset + 4 + length])
        return self.cies[offset]

    def cfa(self, pc: int) -> Optional[Tuple[int, int]]:
        """(DWARF register, offset) such that CFA = register + offset when PC runs, or None."""
        i = bisect.bisect_right(self.starts, pc) - 1
        if i < 0 or pc >= self.fdes[i][1]:
            return None
        loc, _end, cie, at, end = self.fdes[i]
        code_align, data_align, initial = self._cie(cie)
        cfa = None  # type: Optional[Tuple[int, int]]
        saved = []  # type: List[Optional[Tuple[int, int]]]
        for data, pos, stop in ((initial, 0, len(initial)), (self.data, at, end)):
            while pos < stop:
                op = data[pos]
                pos += 1
                advance = 0
                if op & 0xC0 == 0x40:                             # advance_loc
                    advance = (op & 0x3F) * code_align
                elif op & 0xC0 == 0x80:                           # offset: register rules are not kept
                    pos = _uleb(data, pos)[1]
                elif op & 0xC0 == 0xC0 or op == 0x00:             # restore, nop
                    pass
                elif op in (0x02, 0x03, 0x04):                    # advance_loc1/2/4
                    size = 1 << (op - 0x02)
                    advance = int.from_bytes(data[pos:pos + size], "little") * code_align
                    pos += size
                elif op == 0x01:                                  # set_loc
                    loc, = struct.unpack_from("<Q", data, pos)
                    pos += 8
                elif op == 0x0A:                                  # remember_state
                    saved.append(cfa)
                elif op == 0x0B:                                  # restore_state
                    cfa = saved.pop() if saved else None
                elif op in (0x0C, 0x12):                          # def_cfa, def_cfa_sf
                    reg, pos = _uleb(data, pos)
                    off, pos = _uleb(data, pos) if op == 0x0C else _sleb(data, pos)
                    cfa = (reg, off if op == 0x0C else off * data_align)
                elif op == 0x0D:                                  # def_cfa_register
                    reg, pos = _uleb(data, pos)
                    cfa = (reg, cfa[1]) if cfa else None
                elif op in (0x0E, 0x13):                          # def_cfa_offset, _sf
                    off, pos = _uleb(data, pos) if op == 0x0E else _sleb(data, pos)
                    cfa = (cfa[0], off if op == 0x0E else off * data_align) if cfa else None
                elif op == 0x0F:                                  # def_cfa_expression: not followed
                    size, pos = _uleb(data, pos)
                    pos += size
                    cfa = None
                elif op in (0x06, 0x07, 0x08, 0x2E):              # one LEB128 operand
                    pos = _uleb(data, pos)[1]
                elif op in (0x05, 0x09, 0x11, 0x14, 0x15, 0x2F):  # two LEB128 operands
                    pos = _uleb(data, _uleb(data, pos)[1])[1]
                elif op in (0x10, 0x16):                          # register, then a block
                    size, pos = _uleb(data, _uleb(data, pos)[1])
                    pos += size
                else:
                    return None
                if advance:
                    if loc + advance > pc:
                        return cfa
                    loc += advance
        return cfa


def _check_version(image: _Image, offset: int) -> None:
    """pyelftools reads DWARF 5 since 0.28 (0.27 misparses the header): say so instead of crashing."""
    import elftools
    info = image.data(".debug_info")
    at = offset + (12 if info[offset:offset + 4] == b"\xff\xff\xff\xff" else 4)
    version, = struct.unpack_from("<H", info, at)
    have = tuple(int(x) for x in re.findall(r"\d+", elftools.__version__)[:2])
    if version >= 5 and have < (0, 28):
        raise BadInput("%s has DWARF %d debug info, which needs pyelftools 0.28 or later (installed: %s)"
                       % (image.path, version, elftools.__version__))


def _units_holding(info: bytes, units: List[int], patterns: Iterable[bytes]) -> Set[int]:
    """Offsets of the units whose bytes contain any of PATTERNS."""
    patterns = sorted(set(patterns))
    if not patterns:
        return set()
    regex = re.compile(b"|".join(re.escape(p) for p in patterns))
    return set(units[bisect.bisect_right(units, m.start()) - 1] for m in regex.finditer(info))


def _evaluate(expr: bytes, frame: Optional[Tuple[int, int]] = None) -> Tuple[Optional[DevLocation], str]:
    """A DWARF location expression of a pointer -> (DevLocation, "") or (None, why not).

    FRAME: the function's frame base at that address as (DWARF register, offset), if known."""
    if not expr:
        return None, "optimized out"
    op = expr[0]
    if 0x50 <= op <= 0x6F or op == 0x90:                     # DW_OP_reg0..31, DW_OP_regx
        reg, pos = (op - 0x50, 1) if op != 0x90 else _uleb(expr, 1)
        if expr[pos:]:
            return None, "pieces" if expr[pos] in (0x93, 0x9D) else "expression"
        return _location("reg", reg, 0)
    if 0x70 <= op <= 0x8F or op in (0x91, 0x92):             # DW_OP_breg0..31, fbreg, bregx
        if op == 0x91:
            if frame is None:
                return None, "frame base"
            (reg, base), pos = frame, 1
        else:
            (reg, pos), base = ((op - 0x70, 1) if op != 0x92 else _uleb(expr, 1)), 0
        offset, pos = _sleb(expr, pos)
        rest = expr[pos:]
        if rest in (b"", b"\x06\x9f"):                      # memory location; deref + stack_value
            return _location("breg", reg, base + offset)
        if rest == b"\x9f":                                  # DW_OP_stack_value: register + offset
            return _location("reg", reg, base + offset)
        return None, "expression"
    if op in (0xA3, 0xF3):
        return None, "entry value"                           # DW_OP_entry_value, GNU_entry_value
    if 0x30 <= op <= 0x4F or 0x08 <= op <= 0x11:
        return None, "constant"                              # DW_OP_lit*, DW_OP_const*
    if op in (0xA0, 0xF2):
        return None, "implicit pointer"
    return None, "expression"


def _location(kind: str, reg: int, offset: int) -> Tuple[Optional[DevLocation], str]:
    if reg >= len(DWARF_REGS):
        return None, "register %d" % reg
    return DevLocation(kind=kind, reg=DWARF_REGS[reg], offset=offset), ""


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

    def __init__(self, image: _Image, helpers: Dict[str, int]) -> None:
        self.image = image
        self.helpers = dict(helpers)
        self.helper_names = dict((name.encode(), name) for name in helpers)
        self.links = {}  # type: Dict[int, int]            # DIE -> its abstract origin / specification
        self.helper_dies = {}  # type: Dict[int, str]      # DIE of a subprogram named after a helper
        self.dev_dies = set()  # type: Set[int]            # the "dev" parameters of those subprograms
        self.instances = []  # type: List[_Instance]
        self.skipped = {}  # type: Dict[str, int]
        self.frames = None  # type: Optional[_FrameTable]
        self.rows = {}  # type: Dict[int, List[Tuple[int, int, int]]]   # unit -> line table rows

    def _count(self, table: Dict[str, int], reason: str) -> None:
        table[reason] = table.get(reason, 0) + 1

    # -- which units to parse

    def run(self) -> Discovery:
        self.dwarf = self.image.dwarf()
        info = self.image.data(".debug_info")
        strings = self.image.data(".debug_str")
        units = _unit_offsets(info)
        if self.image.has_section(".debug_str_offsets"):
            todo = set(units)                # DW_FORM_strx names (clang): no cheap way to narrow
        else:
            patterns = []
            for name in self.helper_names:
                for m in re.finditer(re.escape(name + b"\0"), strings):
                    patterns.append(struct.pack("<I", m.start()))
                patterns.append(name + b"\0")                 # DW_FORM_string
            todo = _units_holding(info, units, patterns)
        done = set()  # type: Set[int]
        cross_unit = any(p in self.image.data(".debug_abbrev") for p in _CROSS_UNIT_ABBREVS)
        while todo:
            for offset in sorted(todo):
                self._walk_unit(offset)
            done |= todo
            todo = set()
            if cross_unit:
                targets = [struct.pack("<I", o) for o in self._referable() if o < 1 << 32]
                todo = _units_holding(info, units, targets) - done
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
        if attr.form in _REF_FORMS:
            return cu.cu_offset + attr.raw_value
        if attr.form == "DW_FORM_ref_addr":
            return attr.raw_value
        return None

    def _walk_unit(self, offset: int) -> None:
        from elftools.dwarf.die import DIE
        _check_version(self.image, offset)
        cu = self.dwarf.get_CU_at(offset)
        top = cu.get_top_DIE()
        unit = _Unit(offset, cu["version"])
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
            if tag in (_INLINED, _SUBPROGRAM, _PARAM):
                origin = attrs.get("DW_AT_abstract_origin") or attrs.get("DW_AT_specification")
                if origin is not None:
                    target = self._ref(cu, origin)
                    if target is None:
                        self._count(self.skipped, "unsupported reference form")
                    else:
                        self.links[pos] = target
                name = attrs.get("DW_AT_name")
                name = name.value if name is not None else None
                if tag == _PARAM:
                    if name == DEV_PARAM.encode() and parent in self.helper_dies:
                        self.dev_dies.add(pos)
                    if parent_instance is not None:
                        self.instances[parent_instance].params.append((pos, attrs.get("DW_AT_location")))
                else:
                    if tag == _SUBPROGRAM and name in self.helper_names and "DW_AT_declaration" not in attrs:
                        self.helper_dies[pos] = self.helper_names[name]
                    has_code = "DW_AT_low_pc" in attrs or "DW_AT_ranges" in attrs
                    if has_code and (tag == _INLINED or origin is not None or name in self.helper_names):
                        pcs = dict((k, attrs[k]) for k in ("DW_AT_entry_pc", "DW_AT_low_pc", "DW_AT_high_pc",
                                                          "DW_AT_ranges") if k in attrs)
                        instance = len(self.instances)
                        self.instances.append(_Instance(pos, unit, enclosing, tag == _INLINED, pcs, frame_base))
            if die.has_children:
                if len(stack) == 1 and tag != _SUBPROGRAM and "DW_AT_sibling" in attrs:
                    pos = self._ref(cu, attrs["DW_AT_sibling"])     # types, variables: no code inside
                    continue
                stack.append((instance if instance is not None else enclosing, instance, frame_base, pos))
            pos += die.size

    # -- addresses, ranges, locations

    def _address(self, unit: _Unit, attr) -> int:
        if attr.form in _ADDRX_FORMS:
            addr, = struct.unpack_from("<Q", self.image.data(".debug_addr"), unit.addr_base + 8 * attr.raw_value)
            return addr
        return attr.raw_value

    def _list_offset(self, unit: _Unit, attr, section: str, base: int) -> int:
        if attr.form in ("DW_FORM_loclistx", "DW_FORM_rnglistx"):
            rel, = struct.unpack_from("<I", self.image.data(section), base + 4 * attr.raw_value)
            return base + rel
        return attr.raw_value

    def _ranges(self, instance: _Instance) -> List[Tuple[int, int]]:
        """Address ranges [low, high) of an instance, in DWARF order."""
        unit, pcs = instance.unit, instance.pcs
        if "DW_AT_low_pc" in pcs:
            low = self._address(unit, pcs["DW_AT_low_pc"])
            high = pcs.get("DW_AT_high_pc")
            if high is None:
                return [(low, low + 1)]
            if high.form in _CONST_FORMS:
                return [(low, low + high.raw_value)]
            return [(low, self._address(unit, high))]
        attr = pcs["DW_AT_ranges"]
        if unit.version < 5:
            return [(lo, hi) for lo, hi, _ in self._list_v4(".debug_ranges", attr.raw_value, unit.base, False)]
        offset = self._list_offset(unit, attr, ".debug_rnglists", unit.rnglists_base)
        return [(lo, hi) for lo, hi, _ in self._list_v5(".debug_rnglists", offset, unit, False)]

    def _entry(self, instance: _Instance, ranges: List[Tuple[int, int]]) -> int:
        attr = instance.pcs.get("DW_AT_entry_pc")
        if attr is None:                        # DWARF: then low_pc; gcc lists the entry range first
            return ranges[0][0]
        if attr.form in _CONST_FORMS:           # DWARF 5: an offset from the instance's base
            return ranges[0][0] + attr.raw_value
        return self._address(instance.unit, attr)

    def _locations(self, unit: _Unit, attr) -> List[Tuple[int, int, bytes]]:
        """A DW_AT_location as [(low, high, expression)]; an expression covers every address."""
        if attr.form in _BLOCK_FORMS:
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

    def _list_v5(self, section: str, pos: int, unit: _Unit, exprs: bool) -> List[Tuple[int, int, bytes]]:
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
                index, pos = _uleb(data, pos)
                base = addrx(index)
                continue
            elif kind == base_a:
                base, = struct.unpack_from("<Q", data, pos)
                pos += 8
                continue
            elif kind in (sx_ex, sx_len, pair):
                first, pos = _uleb(data, pos)
                second, pos = _uleb(data, pos)
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
                length, pos = _uleb(data, pos + 8)
                high = low + length
            elif kind == default:
                low, high = 0, 1 << 64
            elif exprs and kind == 9:                       # DW_LLE_GNU_view_pair: no expression
                pos = _uleb(data, _uleb(data, pos)[1])[1]
                continue
            else:
                raise BadInput("%s: unknown %s entry kind %d" % (self.image.path, section, kind))
            expr = b""
            if exprs:
                size, pos = _uleb(data, pos)
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

    def _helper(self, instance: _Instance) -> Optional[str]:
        return self.helper_dies.get(self._final(self.links.get(instance.offset, instance.offset)))

    def _line_rows(self, unit: _Unit) -> List[Tuple[int, int, int]]:
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

    def _line_at(self, unit: _Unit, addr: int) -> Optional[Tuple[int, int]]:
        rows = self._line_rows(unit)
        i = bisect.bisect_right(rows, (addr, 1 << 62, 0)) - 1
        while i > 0 and rows[i][1] < 0 and rows[i - 1][0] == rows[i][0]:
            i -= 1                                  # a sequence ending where another one starts
        if i < 0 or rows[i][1] < 0:
            return None
        return rows[i][1], rows[i][2]

    def _site_addresses(self, instance: _Instance, delta: int) -> Tuple[List[int], bool]:
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

    def _frame_base(self, instance: _Instance, pc: int) -> Optional[Tuple[int, int]]:
        """The frame base at PC of the function holding INSTANCE, as (DWARF register, offset)."""
        attr = instance.frame_base
        if attr is None or attr.form not in _BLOCK_FORMS or not attr.value:
            return None
        expr = bytes(bytearray(attr.value))
        if expr == b"\x9c":                                   # DW_OP_call_frame_cfa
            if self.frames is None:
                self.frames = _FrameTable(self.image.data(".debug_frame"))
            return self.frames.cfa(pc)
        if 0x50 <= expr[0] <= 0x6F and len(expr) == 1:         # DW_OP_regN: the register's value
            return expr[0] - 0x50, 0
        if 0x70 <= expr[0] <= 0x8F and _sleb(expr, 1)[1] == len(expr):   # DW_OP_bregN offset
            return expr[0] - 0x70, _sleb(expr, 1)[0]
        return None

    def _dev_at(self, chain: List[_Instance], pc: int) -> Tuple[Optional[DevLocation], str]:
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
                        location, reason = _evaluate(covering[0], frame)
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
        functions = _Functions(self.image)
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
