"""Kernel pointers in recordings and reports: hidden behind a per-run token, as the kernel's ``%p`` does.

Recordings and reports are files other users may read (written under /tmp, attached to a ticket); a
kernel heap or text address in them defeats KASLR. Every value in the kernel half of the address
space (as an integer, signed or not, or as a ``0xffff...`` string, also inside text such as argv) is
replaced by ``kptr-`` and 12 hex digits of a keyed hash: the same pointer gives the same token within
a run, so analyses still tell objects apart, and no token can be turned back into an address.
``bpftools --show-kernel-pointers`` keeps them as they are.

Example::

    >>> hider = PointerHider()
    >>> hider.hide({"dev": "0xffff8a77c19fc800", "ts_ns": 5})["dev"].startswith("kptr-")
    True
"""
import hashlib
import re
import secrets
from typing import Any

KERNEL_HALF = 0xffff800000000000          # x86-64 (and arm64 with 48-bit VA): kernel addresses start here
U64 = 1 << 64
SIGNED_FLOOR = 1 << 30                   # -0x40000000 is 0xffffffffc0000000, where modules start
_HEX_POINTER = re.compile(r"0x(?:ffff[89a-f][0-9a-f]{11})\b", re.IGNORECASE)


class Settings(object):
    """What the ``bpftools`` group's ``--show-kernel-pointers`` asked for (one per process)."""

    show = False


def is_kernel_pointer(value: Any) -> bool:
    """True for an integer in the kernel half of the address space, as u64 or as its signed s64 (then
    at most -2**30: kernel text and modules are there, error codes and counts are not)."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(1 << 63) <= value < U64:
        return False
    return value >= KERNEL_HALF or value <= -SIGNED_FLOOR


class PointerHider(object):
    """One run's tokens: ``hide(obj)`` is OBJ with every kernel pointer replaced (nothing when shown)."""

    def __init__(self, show: bool = False) -> None:
        self.show = show
        self._key = secrets.token_bytes(16)

    def token(self, address: int) -> str:
        digest = hashlib.blake2b((address % U64).to_bytes(8, "little"), key=self._key, digest_size=6)
        return "kptr-" + digest.hexdigest()

    def hide(self, obj: Any) -> Any:
        if self.show:
            return obj
        if isinstance(obj, dict):
            return dict((self.hide(k), self.hide(v)) for k, v in obj.items())
        if isinstance(obj, list):
            return [self.hide(v) for v in obj]
        if isinstance(obj, str):
            return _HEX_POINTER.sub(lambda m: self.token(int(m.group(0), 16)), obj)
        if is_kernel_pointer(obj):
            return self.token(obj)
        return obj


def pointer_text(value: Any) -> str:
    """A pointer field for a terminal line: hex for an address, the token as it is."""
    return "%#x" % value if isinstance(value, int) and not isinstance(value, bool) else str(value)
