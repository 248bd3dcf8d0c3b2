"""The kernel a plan is made for: this node, or a kernel described by files (``bpftools plan``).

Every tool decides what to attach from the questions of :class:`Target`: which symbols, which
tracepoints and their fields, BTF offsets, kretprobe maxactive, the perf_event program's ``ctx->addr``,
the possible CPUs. :class:`Running` asks this node (root); :class:`Described` answers from a kernel
description: a directory that ``bpftools plan --save-kernel DIR`` writes on a node (``kallsyms`` with the
lines the planners read, ``config``, ``facts.json``), or just a kallsyms file, a release and a config
(then what those cannot show is decided by the release number, and the plan says so).

Example::

    >>> target = Described("3.10.0-957.el7.x86_64", kallsyms_lines)
    >>> target.kretprobe_maxactive()
    False
"""
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from . import structs
from .capabilities import Check, check_kprobes, perf_event_addr
from .cpus import possible_slots
from .headers import headers_match_running_kernel, slub_def_usable
from .kconfig import kernel_config, parse_config
from .symbols import SymbolTable, kallsyms_entries, read_kallsyms
from .tracefs import find_tracefs, format_fields, kretprobe_maxactive, tracepoint_format, tracing_ready
from ..errors import BadInput

FACTS = "facts.json"
KALLSYMS = "kallsyms"
CONFIG = "config"
# Where BPF programs may attach to syscalls:* tracepoints (Linux 4.14, commit cf5f5cea270655dd; before,
# the tracepoints exist but a BPF program cannot be attached to them): its function perf_call_bpf_enter
# (kernel/trace/trace_syscalls.c; static, so gcc may inline or clone it: Debian's 5.10 has
# perf_call_bpf_enter.isra.0, 6.1 none, 6.12 the plain name), or bpf_get_current_cgroup_id (4.18),
# which only kernels past 4.14 have.
SYSCALL_BPF_SYMBOLS = ("perf_call_bpf_enter", "bpf_get_current_cgroup_id")
# Data symbols plans read from kallsyms (netdevwait: netdev_chain; refleak: __per_cpu_offset).
DATA_SYMBOLS = ("netdev_chain", "__per_cpu_offset")
# Release-number facts, used only for a kernel described without facts.json (each plan says so).
BY_RELEASE = {
    "kretprobe_maxactive": ((4, 12), "kretprobe maxactive (4.12, 696ced4fb1d7)"),
    "perf_event_addr": ((4, 17), "ctx->addr of perf_event programs (about 4.17)"),
}


def release_tuple(release: str) -> Tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise BadInput("kernel release %r: expected a number like 3.10.0-957.el7.x86_64" % release)
    return int(m.group(1)), int(m.group(2))


class AskedSymbols(object):
    """A SymbolTable that remembers the names asked of it and the names it answered with."""

    def __init__(self, table: SymbolTable, asked: Set[str]) -> None:
        self._table = table
        self._asked = asked

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def has(self, name: str) -> bool:
        self._asked.add(name)
        return self._table.has(name)

    def resolve(self, wanted: str) -> Any:
        found = self._table.resolve(wanted)
        self._asked.update(n for n in (wanted, found.attach, found.fallback) if n)
        return found

    def resolve_all(self, wanted: Iterable[str]) -> List[Any]:
        return [self.resolve(w) for w in wanted]


class Target(object):
    """The questions a plan asks of a kernel; subclasses answer them. ``asked_*`` collect the
    tracepoints and symbol names asked (what ``--save-kernel`` keeps)."""

    release = ""
    live = False

    def __init__(self) -> None:
        self.asked_tracepoints = set()  # type: Set[str]
        self.asked_symbols = set(DATA_SYMBOLS)  # type: Set[str]
        self.assumptions = []  # type: List[str]

    def _assume(self, note: str) -> None:
        if note not in self.assumptions:
            self.assumptions.append(note)

    def prepare(self) -> None:
        """Make the kernel readable (the running one: root, tracefs mounted)."""

    def kprobes(self) -> Check:
        raise NotImplementedError

    def kallsyms(self) -> List[str]:
        raise NotImplementedError

    def symbols(self) -> Any:
        """The kernel's SymbolTable (answers are remembered in ``asked_symbols``)."""
        raise NotImplementedError

    def config(self) -> Optional[Dict[str, str]]:
        raise NotImplementedError

    def _format(self, group: str, name: str) -> Optional[str]:
        raise NotImplementedError

    def tracepoint_format(self, group: str, name: str) -> Optional[str]:
        """The tracepoint's format text, None when the kernel has no such tracepoint."""
        self.asked_tracepoints.add("%s:%s" % (group, name))
        return self._format(group, name)

    def tracepoint_fields(self, group: str, name: str) -> Optional[Set[str]]:
        return format_fields(self.tracepoint_format(group, name))

    def tracepoint_exists(self, group: str, name: str) -> bool:
        return self.tracepoint_format(group, name) is not None

    def syscall_tracepoints(self) -> bool:
        """True when BPF programs can attach to syscalls:* tracepoints (4.14+)."""
        return any(self.symbols().resolve(name).attach for name in SYSCALL_BPF_SYMBOLS)

    def offsets(self, names: Iterable[str]) -> Dict[str, int]:
        raise NotImplementedError

    def headers_match(self) -> bool:
        raise NotImplementedError

    def slub_def_usable(self) -> bool:
        raise NotImplementedError

    def kretprobe_maxactive(self) -> bool:
        raise NotImplementedError

    def perf_event_addr(self) -> bool:
        raise NotImplementedError

    def possible_slots(self) -> int:
        raise NotImplementedError


class Running(Target):
    """This node, read as root (kallsyms once per run)."""

    live = True

    def __init__(self) -> None:
        Target.__init__(self)
        self.release = os.uname().release
        self._kallsyms = None  # type: Optional[List[str]]
        self._table = None  # type: Optional[SymbolTable]

    def prepare(self) -> None:
        tracing_ready()

    def kprobes(self) -> Check:
        return check_kprobes(find_tracefs())

    def kallsyms(self) -> List[str]:
        if self._kallsyms is None:
            self._kallsyms = read_kallsyms()
        return self._kallsyms

    def symbols(self) -> Any:
        if self._table is None:
            self._table = AskedSymbols(SymbolTable.from_system(kallsyms=self.kallsyms()), self.asked_symbols)
        return self._table

    def config(self) -> Optional[Dict[str, str]]:
        return kernel_config(self.release)

    def _format(self, group: str, name: str) -> Optional[str]:
        return tracepoint_format(group, name)

    def offsets(self, names: Iterable[str]) -> Dict[str, int]:
        return structs.offsets(names)

    def headers_match(self) -> bool:
        return headers_match_running_kernel()

    def slub_def_usable(self) -> bool:
        return slub_def_usable()

    def kretprobe_maxactive(self) -> bool:
        return kretprobe_maxactive()

    def perf_event_addr(self) -> bool:
        return perf_event_addr()

    def possible_slots(self) -> int:
        return possible_slots()


class Described(Target):
    """A kernel known from files: kallsyms lines, a config, and facts (see the module docstring)."""

    def __init__(self, release: str, kallsyms: List[str], config: Optional[Dict[str, str]] = None,
                 facts: Optional[Dict[str, Any]] = None) -> None:
        Target.__init__(self)
        release_tuple(release)
        self.release = release
        self._kallsyms = kallsyms
        self._config = config
        self._facts = facts
        self._table = AskedSymbols(SymbolTable.from_kallsyms(kallsyms), self.asked_symbols)
        self._text = set(name for _, _, name, _ in kallsyms_entries(kallsyms))

    @classmethod
    def from_dir(cls, path: str) -> "Described":
        """A description written by ``bpftools plan --save-kernel`` (or by hand: see tests/fixtures/kernels)."""
        facts = _read_json(os.path.join(path, FACTS))
        kallsyms = _read_lines(os.path.join(path, KALLSYMS))
        config_path = os.path.join(path, CONFIG)
        config = parse_config(read_text(config_path)) if os.path.exists(config_path) else None
        if not isinstance(facts, dict) or not isinstance(facts.get("release"), str):
            raise BadInput("%s: no \"release\" in it" % os.path.join(path, FACTS))
        return cls(facts["release"], kallsyms, config, facts)

    def _fact(self, name: str) -> Any:
        return None if self._facts is None else self._facts.get(name)

    def _by_release(self, name: str) -> bool:
        since, what = BY_RELEASE[name]
        ok = release_tuple(self.release) >= since
        self._assume("%s: %s by the release number" % (what, "assumed" if ok else "assumed absent"))
        return ok

    def kprobes(self) -> Check:
        fact = self._fact("kprobes")
        if isinstance(fact, dict):
            return Check("kprobes", fact.get("ok"), str(fact.get("detail", "")))
        value = (self._config or {}).get("CONFIG_KPROBES")
        if value is None:
            return Check("kprobes", True, "assumed (no config given)")
        return Check("kprobes", value == "y", "CONFIG_KPROBES=%s" % value)

    def kallsyms(self) -> List[str]:
        return self._kallsyms

    def symbols(self) -> Any:
        return self._table

    def config(self) -> Optional[Dict[str, str]]:
        return self._config

    def _format(self, group: str, name: str) -> Optional[str]:
        formats = self._fact("tracepoints")
        key = "%s:%s" % (group, name)
        if isinstance(formats, dict):
            if key not in formats:
                raise BadInput("the kernel description has no word on tracepoint %s (not saved)" % key)
            return formats[key]
        # kallsyms only: a tracepoint's __tracepoint_NAME data symbol shows it exists; its fields
        # are unknown, so the plan takes the format every kernel since 3.10 has.
        if "__tracepoint_" + name not in self._text:
            return None
        self._assume("tracepoint formats unknown (no facts.json): only fields every kernel has are assumed")
        return ""

    def offsets(self, names: Iterable[str]) -> Dict[str, int]:
        found = self._fact("offsets")
        if isinstance(found, dict):
            return dict((n, int(found[n])) for n in names if n in found)
        return {}

    def headers_match(self) -> bool:
        fact = self._fact("headers_match")
        if fact is None:
            self._assume("this kernel's own headers assumed installed (bcc needs them)")
            return True
        return bool(fact)

    def slub_def_usable(self) -> bool:
        fact = self._fact("slub_def_usable")
        if fact is None:      # struct slab in the header since 5.17 (d122019bf061)
            return release_tuple(self.release) < (5, 17)
        return bool(fact)

    def kretprobe_maxactive(self) -> bool:
        fact = self._fact("kretprobe_maxactive")
        return self._by_release("kretprobe_maxactive") if fact is None else bool(fact)

    def perf_event_addr(self) -> bool:
        fact = self._fact("perf_event_addr")
        return self._by_release("perf_event_addr") if fact is None else bool(fact)

    def possible_slots(self) -> int:
        fact = self._fact("possible_slots")
        if isinstance(fact, int):
            return fact
        self._assume("possible CPUs unknown (no facts.json): one assumed")
        return 1


def describe(target: Target) -> Tuple[List[str], Dict[str, Any]]:
    """(kallsyms lines, facts) of TARGET as ``--save-kernel`` writes them, once plans were made on it:
    the kallsyms lines whose name contains a name the plans asked for, and every answer they got."""
    wanted = sorted(target.asked_symbols | set("__tracepoint_" + tp.split(":", 1)[1]
                                               for tp in target.asked_tracepoints))
    lines = [line for line in target.kallsyms() if _keep_line(line, wanted)]
    facts = {
        "release": target.release,
        "kprobes": target.kprobes().to_json(),
        "kretprobe_maxactive": target.kretprobe_maxactive(),
        "perf_event_addr": target.perf_event_addr(),
        "possible_slots": target.possible_slots(),
        "headers_match": target.headers_match(),
        "slub_def_usable": target.slub_def_usable(),
        "offsets": target.offsets(structs.MEMBERS),
        "tracepoints": dict((tp, target.tracepoint_format(*tp.split(":", 1)))
                            for tp in sorted(target.asked_tracepoints)),
    }
    return lines, facts


def _keep_line(line: str, wanted: List[str]) -> bool:
    parts = line.split()
    if len(parts) < 3:
        return False
    return any(w in parts[2] for w in wanted)


def read_text(path: str) -> str:
    """The text of a file the user named; BadInput (one line) when it cannot be read as text."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as err:
        raise BadInput("cannot read %s: %s" % (path, err.strerror))
    except UnicodeDecodeError:
        raise BadInput("%s is not text" % path)


def _read_lines(path: str) -> List[str]:
    return read_text(path).splitlines()


def _read_json(path: str) -> Any:
    try:
        return json.loads(read_text(path))
    except ValueError as err:
        raise BadInput("%s: not JSON (%s)" % (path, err))
