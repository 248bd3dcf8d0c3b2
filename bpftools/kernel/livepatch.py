"""The live patches this kernel runs, read from the kernel itself.

Three sources, each laid out as the kernel (or the kpatch core module) lays it out:
- livepatch (``CONFIG_LIVEPATCH``, 4.0+; RHEL 7 since 7.2): ``/sys/kernel/livepatch/<patch>/`` with
  ``enabled``, ``transition`` (4.12+) and ``<object>/<function,sympos>/`` directories, one per replaced
  function (``vmlinux`` or a module name as object; Documentation/ABI/testing/sysfs-kernel-livepatch);
- the older kpatch core module: ``/sys/kernel/kpatch/<patch>/`` (kpatch 0.4+ ABI) or
  ``/sys/kernel/kpatch/patches/<patch>/`` (before 0.4), with ``enabled`` and the same
  ``<object>/<function,sympos>/`` directories (kpatch v0.6.3 kmod/patch/kpatch-patch-hook.c);
- modules loaded with the live-patch taint (``K`` in /proc/modules), and the kernel's own taint bit
  15, TAINT_LIVEPATCH (/proc/sys/kernel/tainted).
"""
import os
from typing import Any, Dict, List, Optional

from dataclasses import asdict, dataclass, field

TAINT_LIVEPATCH = 1 << 15
LIVEPATCH_DIR = "sys/kernel/livepatch"
KPATCH_DIRS = ("sys/kernel/kpatch/patches", "sys/kernel/kpatch")   # pre-0.4 ABI, then 0.4+
KPATCH_NOT_PATCHES = frozenset(("patches",))


@dataclass
class PatchedFunction:
    """One function a live patch replaces: its object (``vmlinux`` or a module), name and position."""

    object: str
    name: str
    sympos: int


@dataclass
class LivePatch:
    """One live patch: its name (the module's), where it was read, its state, the functions it replaces."""

    name: str
    source: str                      # "livepatch" | "kpatch"
    enabled: Optional[bool]
    transition: Optional[bool]       # None where the kernel has no transition file (before 4.12, kpatch)
    functions: List[PatchedFunction] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Enabled and not in transition: every task runs the new functions."""
        return bool(self.enabled) and not self.transition

    def replaces(self, function: str) -> bool:
        return any(f.name == function for f in self.functions)

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["active"] = self.active
        return out


@dataclass
class LivePatches:
    """What the node runs: the patches, the modules tainted as live patches, the kernel's taint bit."""

    patches: List[LivePatch] = field(default_factory=list)
    modules: List[str] = field(default_factory=list)
    tainted: Optional[bool] = None   # None when /proc/sys/kernel/tainted cannot be read

    def to_json(self) -> Dict[str, Any]:
        return {"patches": [p.to_json() for p in self.patches], "modules": list(self.modules),
                "tainted": self.tainted}


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _flag(path: str) -> Optional[bool]:
    text = _read(path)
    return None if text is None or not text.lstrip("-").isdigit() else int(text) != 0


def _subdirs(path: str) -> List[str]:
    try:
        return sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n))
                      and not os.path.islink(os.path.join(path, n)))
    except OSError:
        return []


def _functions(patch_dir: str) -> List[PatchedFunction]:
    """The ``<object>/<function,sympos>`` directories under a patch's directory."""
    out = []
    for obj in _subdirs(patch_dir):
        for entry in _subdirs(os.path.join(patch_dir, obj)):
            name, comma, pos = entry.rpartition(",")
            if comma and name and pos.isdigit():
                out.append(PatchedFunction(obj, name, int(pos)))
    return out


def _patches(base: str, source: str, skip: frozenset = frozenset()) -> List[LivePatch]:
    out = []
    for name in _subdirs(base):
        if name in skip:
            continue
        patch_dir = os.path.join(base, name)
        out.append(LivePatch(name, source, _flag(os.path.join(patch_dir, "enabled")),
                             _flag(os.path.join(patch_dir, "transition")), _functions(patch_dir)))
    return out


def livepatch_modules(proc_modules: str) -> List[str]:
    """Modules whose taint flags in /proc/modules text include K (a live patch)."""
    out = []
    for line in proc_modules.splitlines():
        parts = line.split()
        if parts and parts[-1].startswith("(") and parts[-1].endswith(")") and "K" in parts[-1]:
            out.append(parts[0])
    return out


def read_live_patches(root: str = "/") -> LivePatches:
    """The live patches of the running kernel (ROOT: a directory standing in for / in tests)."""
    patches = _patches(os.path.join(root, LIVEPATCH_DIR), "livepatch")
    seen = set(p.name for p in patches)
    for rel in KPATCH_DIRS:
        for patch in _patches(os.path.join(root, rel), "kpatch", KPATCH_NOT_PATCHES):
            if patch.name not in seen:
                seen.add(patch.name)
                patches.append(patch)
    taint = _read(os.path.join(root, "proc/sys/kernel/tainted"))
    return LivePatches(patches, livepatch_modules(_read(os.path.join(root, "proc/modules")) or ""),
                       bool(int(taint) & TAINT_LIVEPATCH) if taint and taint.isdigit() else None)
