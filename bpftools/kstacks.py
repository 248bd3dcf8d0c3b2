"""Kernel stacks of a loaded BPF program's stack-trace map, symbolised once per stack id."""
from typing import Any, Dict, List, Optional


class KernelStacks(object):
    """``frames(stack_id)``: innermost first; ``symbol(addr)``: kallsyms name (with +offset if OFFSETS)."""

    def __init__(self, bpf: Any, offsets: bool = False, table: str = "stacks") -> None:
        self.bpf = bpf
        self.offsets = offsets
        self.table = table
        self._frames = {}  # type: Dict[int, List[str]]

    def frames(self, stack_id: int) -> Optional[List[str]]:
        """Kernel frames of STACK_ID; None when no stack was taken (negative id) or it was evicted."""
        if stack_id < 0:
            return None
        if stack_id not in self._frames:
            try:
                addrs = list(self.bpf[self.table].walk(stack_id))
            except KeyError:
                return None
            self._frames[stack_id] = [self.symbol(a) for a in addrs]
        return list(self._frames[stack_id])

    def symbol(self, addr: int) -> str:
        """Kernel symbol of ADDR (``[unknown]`` when kallsyms has none)."""
        name = self.bpf.ksym(addr, show_offset=self.offsets)
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
