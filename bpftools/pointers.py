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
from typing import Any, Dict

KERNEL_HALF = 0xffff800000000000          # x86-64 (and arm64 with 48-bit VA): kernel addresses start here
U64 = 1 << 64
TOKEN_CACHE = 1 << 16                    # tokens and texts kept per run (the same objects and frames recur)
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
        self._tokens = {}  # type: Dict[int, str]
        self._texts = {}  # type: Dict[str, str]

    def token(self, address: int) -> str:
        token = self._tokens.get(address)
        if token is None:
            if len(self._tokens) >= TOKEN_CACHE:
                self._tokens.clear()
            digest = hashlib.blake2b((address % U64).to_bytes(8, "little"), key=self._key, digest_size=6)
            token = self._tokens[address] = "kptr-" + digest.hexdigest()
        return token

    def hide(self, obj: Any) -> Any:
        if self.show:
            return obj
        if isinstance(obj, str):
            return self._hide_text(obj)
        if isinstance(obj, dict):
            return {self.hide(k): self.hide(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.hide(v) for v in obj]
        if is_kernel_pointer(obj):
            return self.token(obj)
        return obj

    def _hide_text(self, text: str) -> str:
        if "0x" not in text and "0X" not in text:
            return text
        hidden = self._texts.get(text)       # stack frames ("dst_alloc+0x60") recur
        if hidden is None:
            if len(self._texts) >= TOKEN_CACHE:
                self._texts.clear()
            hidden = self._texts[text] = _HEX_POINTER.sub(self._token_of, text)
        return hidden

    def _token_of(self, match: Any) -> str:
        return self.token(int(match.group(0), 16))


def pointer_text(value: Any) -> str:
    """A pointer field for a terminal line: hex for an address, the token as it is."""
    return "%#x" % value if isinstance(value, int) and not isinstance(value, bool) else str(value)
