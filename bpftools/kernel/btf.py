"""Struct member offsets of the running kernel from its BTF (/sys/kernel/btf/vmlinux, 5.4+ with BTF).

The kprobe modes read a few kernel struct fields (``kmem_cache.name``, ``mempool_s.wait``,
``inode.i_ino``...). Kernel headers give their offsets only when they are this kernel's own headers,
and since 6.1 ``struct kmem_cache`` is not in the exported headers at all (its inline helpers in
linux/slub_def.h need mm/slab.h; since 6.8 the struct lives in mm/slab.h). BTF describes the running
kernel exactly; the offsets go to the BPF program as ``-D`` integers.

Format: include/uapi/linux/btf.h (header, type section, string section). Only what offsets need is
kept: struct/union members, and the kinds whose records must be skipped.
"""
import functools
import struct
from typing import Dict, List, Optional, Tuple

VMLINUX = "/sys/kernel/btf/vmlinux"
MAGIC = 0xEB9F
STRUCT, UNION = 4, 5
# Bytes after the 12-byte btf_type of each kind: fixed, and per vlen item.
_EXTRA = {1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0), 8: (0, 0), 9: (0, 0),
          10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0), 15: (0, 12), 16: (0, 0), 17: (4, 0),
          18: (0, 0), 19: (0, 12)}
_TYPEDEF_LIKE = (8, 9, 10, 11, 18)   # typedef, volatile, const, restrict, type_tag: follow .type

Member = Tuple[str, int, int]        # name, type id, bit offset


class BtfError(Exception):
    """The data is not BTF this reader understands."""


class Btf(object):
    """The structs and unions of one BTF blob, by type id and by name."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("too short for a BTF header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
        if magic != MAGIC:
            raise BtfError("bad BTF magic %#x (big-endian BTF is not supported)" % magic)
        types = data[hdr_len + type_off:hdr_len + type_off + type_len]
        self._strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        self._kind = [0]                            # type id -> kind (id 0 is void)
        self._ref = [0]                             # type id -> referenced type (typedef-like kinds)
        self._members = {}  # type: Dict[int, List[Member]]
        self._by_name = {}  # type: Dict[str, List[int]]
        pos = 0
        while pos + 12 <= len(types):
            name_off, info, size_or_type = struct.unpack_from("<III", types, pos)
            kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            if kind not in _EXTRA:
                raise BtfError("unknown BTF kind %d" % kind)
            tid = len(self._kind)
            self._kind.append(kind)
            self._ref.append(size_or_type)
            pos += 12
            if kind in (STRUCT, UNION):
                members = []
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", types, pos + 12 * i)
                    members.append((self._string(m_name), m_type, m_off & 0xFFFFFF if kind_flag else m_off))
                self._members[tid] = members
                if name_off:
                    self._by_name.setdefault(self._string(name_off), []).append(tid)
            fixed, per_item = _EXTRA[kind]
            pos += fixed + per_item * vlen

    @classmethod
    def from_file(cls, path: str = VMLINUX) -> "Btf":
        with open(path, "rb") as f:
            return cls(f.read())

    def _string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        return self._strings[offset:end if end >= 0 else len(self._strings)].decode("utf-8", "replace")

    def _resolve(self, tid: int) -> int:
        for _ in range(32):
            if tid >= len(self._kind) or self._kind[tid] not in _TYPEDEF_LIKE:
                return tid
            tid = self._ref[tid]
        return tid

    def member_offset(self, struct_name: str, member: str) -> Optional[int]:
        """Byte offset of MEMBER in ``struct STRUCT_NAME``, looking into anonymous structs and unions."""
        for tid in self._by_name.get(struct_name, ()):
            if self._kind[tid] == STRUCT:
                found = self._find(tid, member, 0, 0)
                if found is not None:
                    return found
        return None

    def _find(self, tid: int, member: str, base_bits: int, depth: int) -> Optional[int]:
        if depth > 8:
            return None
        for name, m_type, bits in self._members.get(tid, ()):
            if name == member:
                return (base_bits + bits) // 8
            if not name:
                inner = self._resolve(m_type)
                if inner < len(self._kind) and self._kind[inner] in (STRUCT, UNION):
                    found = self._find(inner, member, base_bits + bits, depth + 1)
                    if found is not None:
                        return found
        return None


@functools.lru_cache(maxsize=4)
def _parsed(path: str) -> Optional[Btf]:
    """PATH's BTF, parsed once per process (iojitter's sections each ask for offsets), or None."""
    try:
        return Btf.from_file(path)
    except (OSError, BtfError):
        return None


def offsets(wanted: Dict[str, List[Tuple[str, str]]], path: str = VMLINUX) -> Dict[str, int]:
    """``{PARAM: [(struct, member), ...]}`` -> ``{PARAM: offset}`` of the first pair found (struct names
    change: 6.1's ``struct mempool_s`` is ``struct mempool`` on 6.18); {} without readable BTF."""
    btf = _parsed(path)
    if btf is None:
        return {}
    out = {}
    for param, pairs in wanted.items():
        for struct_name, member in pairs:
            off = btf.member_offset(struct_name, member)
            if off is not None:
                out[param] = off
                break
    return out
