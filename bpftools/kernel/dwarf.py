"""The ELF and DWARF decoding under ``bpftools.refleak.inline_sites``: only what finding inlined helpers needs.

x86-64 ELF only: vmlinux, or a module (an ``ET_REL`` file whose DWARF is relocated here, each
code section at its own address so that ``.text`` and ``.text.unlikely`` never overlap).
``Image`` gives sections, function symbols (``Functions``: address -> symbol and offset), the
GNU build id and the (relocated) DWARF sections that pyelftools parses into DIEs; the rest reads
bytes directly: LEB128 numbers, unit headers of .debug_info, attribute form classes, the CFA rule
of .debug_frame (``FrameTable``) and pointer location expressions (``evaluate``). Which DIEs are
helper calls and which addresses become kprobe sites is decided in ``bpftools.refleak.inline_sites``.

Location expressions understood (``evaluate``, giving a ``DevLocation``): ``DW_OP_reg*``/``regx``
(value in a register), ``DW_OP_breg* N`` (value in memory at register + N), ``DW_OP_breg* N;
DW_OP_deref; DW_OP_stack_value`` (same), ``DW_OP_breg* N; DW_OP_stack_value`` (value = register +
N: ``kind="reg"`` with ``offset=N``), and ``DW_OP_fbreg N`` when the function's frame base is
``DW_OP_call_frame_cfa`` (the CFA rule at the address comes from .debug_frame: ``rsp + M``, giving
``breg sp M+N``). Everything else (``DW_OP_entry_value``, constants, pieces) gives ``None`` and
the reason.
"""
import bisect
from io import BytesIO
import os
import re
import struct
from typing import Dict, Iterable, List, Optional, Set, Tuple

from dataclasses import dataclass

from ..errors import BadInput

# DWARF x86-64 register numbers (System V psABI, figure 3.36) -> struct pt_regs field names.
DWARF_REGS = ("ax", "dx", "cx", "bx", "si", "di", "bp", "sp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass
class DevLocation:
    """Where the ``struct net_device *`` is when the site's instruction runs.

    ``reg``: the value is register ``reg`` + ``offset`` (``offset`` is 0 unless DWARF computes it);
    ``breg``: the value is the 8 bytes in memory at register ``reg`` + ``offset``.
    ``reg`` is an x86-64 ``struct pt_regs`` field name (see ``inline_sites.PT_REGS_OFFSETS``)."""
    kind: str
    reg: str
    offset: int = 0


def gnu_build_id(notes: bytes) -> Optional[str]:
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


def uleb(data: bytes, pos: int) -> Tuple[int, int]:
    return _leb128(data, pos, False)


def sleb(data: bytes, pos: int) -> Tuple[int, int]:
    return _leb128(data, pos, True)


class Image(object):
    """One x86-64 ELF file: sections, function symbols, (relocated) DWARF sections."""

    SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4

    def __init__(self, path: str) -> None:
        # lazy: pyelftools is needed only when debug info is read (refleak --debuginfo)
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

    def __enter__(self) -> "Image":
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
                found = gnu_build_id(s.data())
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
        if not self.elf.has_dwarf_info() or ".debug_info" not in self.by_name:
            raise BadInput("%s has no DWARF debug info (install the -dbg/debuginfo package)" % self.path)
        info = self.elf.get_dwarf_info(relocate_dwarf_sections=False)
        if self.relocatable:
            for attr in ("debug_info_sec", "debug_line_sec", "debug_str_offsets_sec", "debug_addr_sec"):
                desc = getattr(info, attr, None)
                if desc is not None:
                    setattr(info, attr, desc._replace(stream=BytesIO(self.data(desc.name))))
        return info


class Functions(object):
    """Address -> (function symbol, offset), over the FUNC symbols of the symbol table."""

    def __init__(self, image: Image) -> None:
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

REF_FORMS = ("DW_FORM_ref1", "DW_FORM_ref2", "DW_FORM_ref4", "DW_FORM_ref8", "DW_FORM_ref_udata")
ADDRX_FORMS = ("DW_FORM_addrx", "DW_FORM_addrx1", "DW_FORM_addrx2", "DW_FORM_addrx3", "DW_FORM_addrx4",
                "DW_FORM_GNU_addr_index")
CONST_FORMS = ("DW_FORM_data1", "DW_FORM_data2", "DW_FORM_data4", "DW_FORM_data8", "DW_FORM_udata",
                "DW_FORM_sdata", "DW_FORM_implicit_const")
BLOCK_FORMS = ("DW_FORM_exprloc", "DW_FORM_block", "DW_FORM_block1", "DW_FORM_block2", "DW_FORM_block4")
INLINED, SUBPROGRAM, PARAM = "DW_TAG_inlined_subroutine", "DW_TAG_subprogram", "DW_TAG_formal_parameter"
# (attribute, form) byte pairs in .debug_abbrev that allow references across units: abstract_origin
# or specification with DW_FORM_ref_addr.
CROSS_UNIT_ABBREVS = (b"\x31\x10", b"\x47\x10")


class Unit(object):
    """What reading lists and addresses of one unit needs."""
    __slots__ = ("offset", "version", "base", "addr_base", "loclists_base", "rnglists_base")

    def __init__(self, offset: int, version: int) -> None:
        self.offset, self.version = offset, version
        self.base = self.addr_base = self.loclists_base = self.rnglists_base = 0


class Instance(object):
    """A concrete copy of some function: an inlined_subroutine, or an out-of-line subprogram."""
    __slots__ = ("offset", "unit", "parent", "inlined", "pcs", "params", "frame_base")

    def __init__(self, offset: int, unit: Unit, parent: Optional[int], inlined: bool, pcs: dict,
                 frame_base: object) -> None:
        self.offset, self.unit, self.parent, self.inlined, self.pcs = offset, unit, parent, inlined, pcs
        self.frame_base = frame_base      # DW_AT_frame_base of the function the code is in
        self.params = []  # type: List[Tuple[int, object]]


def unit_offsets(info: bytes) -> List[int]:
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


class FrameTable(object):
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
            code_align, pos = uleb(data, pos)
            data_align, pos = sleb(data, pos)
            pos = pos + 1 if version == 1 else uleb(data, pos)[1]   # return address register
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
                    pos = uleb(data, pos)[1]
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
                    reg, pos = uleb(data, pos)
                    off, pos = uleb(data, pos) if op == 0x0C else sleb(data, pos)
                    cfa = (reg, off if op == 0x0C else off * data_align)
                elif op == 0x0D:                                  # def_cfa_register
                    reg, pos = uleb(data, pos)
                    cfa = (reg, cfa[1]) if cfa else None
                elif op in (0x0E, 0x13):                          # def_cfa_offset, _sf
                    off, pos = uleb(data, pos) if op == 0x0E else sleb(data, pos)
                    cfa = (cfa[0], off if op == 0x0E else off * data_align) if cfa else None
                elif op == 0x0F:                                  # def_cfa_expression: not followed
                    size, pos = uleb(data, pos)
                    pos += size
                    cfa = None
                elif op in (0x06, 0x07, 0x08, 0x2E):              # one LEB128 operand
                    pos = uleb(data, pos)[1]
                elif op in (0x05, 0x09, 0x11, 0x14, 0x15, 0x2F):  # two LEB128 operands
                    pos = uleb(data, uleb(data, pos)[1])[1]
                elif op in (0x10, 0x16):                          # register, then a block
                    size, pos = uleb(data, uleb(data, pos)[1])
                    pos += size
                else:
                    return None
                if advance:
                    if loc + advance > pc:
                        return cfa
                    loc += advance
        return cfa


def check_version(image: Image, offset: int) -> None:
    """pyelftools reads DWARF 5 since 0.28 (0.27 misparses the header): say so instead of crashing."""
    import elftools   # lazy: pyelftools is needed only when debug info is read (refleak --debuginfo)
    info = image.data(".debug_info")
    at = offset + (12 if info[offset:offset + 4] == b"\xff\xff\xff\xff" else 4)
    version, = struct.unpack_from("<H", info, at)
    have = tuple(int(x) for x in re.findall(r"\d+", elftools.__version__)[:2])
    if version >= 5 and have < (0, 28):
        raise BadInput("%s has DWARF %d debug info, which needs pyelftools 0.28 or later (installed: %s)"
                       % (image.path, version, elftools.__version__))


def units_holding(info: bytes, units: List[int], patterns: Iterable[bytes]) -> Set[int]:
    """Offsets of the units whose bytes contain any of PATTERNS."""
    patterns = sorted(set(patterns))
    if not patterns:
        return set()
    regex = re.compile(b"|".join(re.escape(p) for p in patterns))
    return set(units[bisect.bisect_right(units, m.start()) - 1] for m in regex.finditer(info))


def evaluate(expr: bytes, frame: Optional[Tuple[int, int]] = None) -> Tuple[Optional[DevLocation], str]:
    """A DWARF location expression of a pointer -> (DevLocation, "") or (None, why not).

    FRAME: the function's frame base at that address as (DWARF register, offset), if known."""
    if not expr:
        return None, "optimized out"
    op = expr[0]
    if 0x50 <= op <= 0x6F or op == 0x90:                     # DW_OP_reg0..31, DW_OP_regx
        reg, pos = (op - 0x50, 1) if op != 0x90 else uleb(expr, 1)
        if expr[pos:]:
            return None, "pieces" if expr[pos] in (0x93, 0x9D) else "expression"
        return _location("reg", reg, 0)
    if 0x70 <= op <= 0x8F or op in (0x91, 0x92):             # DW_OP_breg0..31, fbreg, bregx
        if op == 0x91:
            if frame is None:
                return None, "frame base"
            (reg, base), pos = frame, 1
        else:
            (reg, pos), base = ((op - 0x70, 1) if op != 0x92 else uleb(expr, 1)), 0
        offset, pos = sleb(expr, pos)
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
