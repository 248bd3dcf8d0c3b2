"""kmemsnoop: who opens and writes cgroup v1 ``memory.kmem.*`` files (opensnoop for kmem files).

On 3.10 the first write to ``memory.kmem.limit_in_bytes`` turns kmem accounting on for that cgroup
(runc writes ``1`` then ``-1``); this shows the writer, its cgroup (container/pod), the target path,
the value written and the result (EBUSY when the cgroup already has tasks). The syscalls come from
their tracepoints where BPF can attach to them (4.14+), so it runs without kprobes there; before (RHEL 7's
3.10) from kprobes on the syscall functions. Where kprobes exist it also hooks the kernel's kmem limit
handler, which confirms what the kernel did with the write and sees writes made by other syscalls (pwrite,
writev, io_uring). Without bpf_get_current_cgroup_id (4.18) the program reads the writer's memory cgroup
from its css_set.
"""
import errno
import json
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import click
from dataclasses import dataclass, field

from ..analyses.folded import add_samples, annotation, finished
from ..event import JsonEvent
from ..html_report import MAX_TABLE_ROWS, Activity, FlameGraph, IncidentReport, Table
from ..live import LiveRun
from ..kernel.cgroups import (cgroup2_mount, cgroup2_path_of_id, cgroup_dir_under, kernfs_id_is,
                              memory_cgroup_mount, memory_cgroup_of_pid, named)
from ..capture import Attach, Outline, Probe, c_text, poll_events
from ..errors import MissingKernelFeature
from ..options import CONTEXT, PATH, POSITIVE
from ..render import one_line
from ..kernel.capabilities import Check
from ..kernel.hostroot import host_path
from ..kernel.pods import container_named
from ..kernel.symbols import SymbolTable
from ..kernel.target import SYSCALL_BPF_SYMBOLS, Running, Target

OPS = {1: "open", 2: "write", 3: "kernel"}
TOOL = "kmemsnoop"
LIMIT_FILE = "memory.kmem.limit_in_bytes"
MAX_EVIDENCE = 20            # enabling writes quoted in the report's verdict (all are counted)
# The kernel function that handles a write to memory.kmem.limit_in_bytes, by preference, with its
# HOOK_* value in probes/kmemsnoop.h. Only exact names: a clone's arguments may be rearranged.
KERNEL_HOOKS = (("memcg_update_kmem_limit", 1),   # 3.10: (struct cgroup *, u64 bytes)
                ("memcg_update_kmem_max", 2),     # 4.x-5.15: (struct mem_cgroup *, unsigned long pages)
                ("mem_cgroup_write", 3))          # any memory.* file; filtered by its kernfs name
HOOK_NAMES = dict((kind, name) for name, kind in KERNEL_HOOKS)
CGROUP_WRITE_MEMBERS = ("OFF_OF_KN", "OFF_KN_NAME")    # the file mem_cgroup_write writes (kernel.structs)
# The syscalls kmemsnoop follows: (name, the BPF function its kprobe runs, whether its result is needed,
# whether every kernel has it: arm64 has no open nor dup2).
SYSCALLS = (("openat", "syscall_openat_entry", True, True),
            ("open", "syscall_open_entry", True, False),
            ("write", "syscall_write_entry", True, True),
            ("close", "syscall_close_entry", False, True),
            ("dup2", "syscall_dup_entry", False, False),
            ("dup3", "syscall_dup_entry", False, True))
# The syscall tracepoints not every architecture has, with the flag that compiles their programs.
OPTIONAL_TRACEPOINTS = (("sys_enter_open", "HAVE_SYS_OPEN"), ("sys_enter_dup2", "HAVE_SYS_DUP2"))
# The kernel's names of its syscall functions by calling convention, with the flag for it (prefixes as
# bcc's get_syscall_prefix knows them, x86-64): since fa697140f9a2 (4.17) __x64_sys_NAME(const struct
# pt_regs *) with the arguments in the user registers it points to; before, sys_NAME with the arguments
# its own, also named SyS_NAME from 3.10 to 4.16 (the same function, with long arguments).
SYSCALL_PREFIXES = ((("__x64_sys_",), "SYSCALL_WRAPPER"), (("sys_", "SyS_"), None))
# kretprobe instances on the syscall functions: each task inside write(2) or open(2) holds one until it
# returns, however long it blocks (the kernel's default: a few per CPU). Kernels before 4.12 take no
# maxactive: returns they miss are counted as lost (kprobe_profile).
SYSCALL_MAXACTIVE = 256


@dataclass
class KmemFileEvent(JsonEvent):
    """One open or write of a memory.kmem.* file, as seen at syscall exit."""

    TYPE = "kmem_file"

    ts_ns: int
    tgid: int
    tid: int
    comm: str
    op: str                  # "open" | "write"
    path: str
    value: Optional[str]     # what was written (writes only)
    ret: int                 # fd / bytes written, or -errno
    writer_cgroup: Optional[str]      # v1 memory cgroup (from /proc while the writer lives)
    writer_cgroup_v2: Optional[str]   # cgroup2 path of the writer's cgroup id (survives the writer)
    container: Optional[Dict[str, Any]]
    kernel: Optional[Dict[str, Any]] = None   # the kernel handler's view: function, ret, limit_bytes
    writer_memcg: Optional[str] = None        # memory cgroup read from the writer's css_set (survives it)

    @property
    def cgroup(self) -> Optional[str]:
        """The writer's cgroup as best known: /proc's, its css_set's, else its cgroup2 path."""
        return self.writer_cgroup or self.writer_memcg or self.writer_cgroup_v2

    @property
    def error(self) -> Optional[str]:
        """errno name of a failed call, e.g. EBUSY."""
        return errno.errorcode.get(-self.ret, str(-self.ret)) if self.ret < 0 else None

    def to_json(self) -> Dict[str, Any]:
        out = JsonEvent.to_json(self)
        out["error"] = self.error
        return out



class CgroupCache:
    """The writer's cgroups, looked up once per pid, per id and per name.

    ``memory`` comes from /proc/PID/cgroup while the task lives; ``v2`` is the cgroup2 path of the id
    the BPF program recorded, which survives the writer (runc's writer exits right after writing);
    ``css`` the path of the memory cgroup the program read from the writer's css_set (where it did).
    """

    def __init__(self) -> None:
        self._memory = {}  # type: Dict[int, Optional[str]]
        self._v2 = {}  # type: Dict[int, Optional[str]]
        self._css = {}  # type: Dict[Tuple[int, str], Optional[str]]

    def memory(self, pid: int) -> Optional[str]:
        if self._memory.get(pid) is None:
            self._memory[pid] = memory_cgroup_of_pid(pid)
        return self._memory[pid]

    def v2(self, cgroup_id: int) -> Optional[str]:
        if not cgroup_id:
            return None
        if self._v2.get(cgroup_id) is None:
            self._v2[cgroup_id] = cgroup2_path_of_id(cgroup_id)
        return self._v2[cgroup_id]

    def css(self, memcg_id: int, name: str) -> Optional[str]:
        """The memory cgroup by its kernfs id (3.15+) or its directory name (3.10: the name itself
        when no directory has it), under the memory controller's mount (v1, else cgroup2)."""
        if not memcg_id and name in ("", "/"):     # nothing read, or 3.10's root cgroup (named "/")
            return name or None
        key = (memcg_id, name)
        if self._css.get(key) is None:
            mount = memory_cgroup_mount() or cgroup2_mount()
            found = cgroup_dir_under(mount, kernfs_id_is(memcg_id) if memcg_id else named(name)) if mount else None
            self._css[key] = found or (name or None)
        return self._css[key]


def decode(raw: Any, cgroups: CgroupCache) -> KmemFileEvent:
    """The one place a raw kmem_event becomes a KmemFileEvent."""
    path = c_text(bytes(raw.path))
    if raw.op != 3 and not path.startswith("/"):   # a syscall's path; a kernel event's is a kernfs name
        try:
            path = os.path.join(os.readlink(host_path("/proc/%d/cwd" % raw.tgid)), path)
        except OSError:
            pass
    cgroup = cgroups.memory(raw.tgid)
    cgroup_v2 = cgroups.v2(int(raw.cgroup_id))
    memcg = cgroups.css(int(raw.memcg_id), c_text(bytes(raw.memcg_name)))
    ref = container_named(cgroup) or container_named(memcg) or container_named(cgroup_v2)
    op = OPS.get(raw.op, str(raw.op))
    kernel = None
    if raw.kernel_hook:
        kind = int(raw.kernel_hook)
        arg = int(raw.kernel_arg)
        limit = {1: arg, 2: arg * os.sysconf("SC_PAGE_SIZE")}.get(kind)
        kernel = {"function": HOOK_NAMES.get(kind, str(kind)), "ret": int(raw.kernel_ret), "limit_bytes": limit}
        if op == "kernel" and not path:
            path = LIMIT_FILE
    value = c_text(bytes(raw.value)) if op == "write" or (op == "kernel" and raw.value[0]) else None
    return KmemFileEvent(
        ts_ns=int(raw.ts_ns), tgid=int(raw.tgid), tid=int(raw.tid),
        comm=c_text(bytes(raw.comm)), op=op, path=path, value=value, ret=int(raw.ret),
        writer_cgroup=cgroup, writer_cgroup_v2=cgroup_v2, container=ref.to_json() if ref else None,
        kernel=kernel, writer_memcg=memcg)


def matches_cgroup(event: KmemFileEvent, cgroup: Optional[str]) -> bool:
    """--cgroup filter: the writer's memory cgroup or the target file's cgroup starts with CGROUP."""
    if not cgroup:
        return True
    want = "/" + cgroup.strip("/")
    target = os.path.dirname(event.path)
    writers = (event.writer_cgroup or "", event.writer_memcg or "", event.writer_cgroup_v2 or "")
    return any(w.startswith(want) for w in writers) or ("/" + target.strip("/")).find(want) >= 0


@dataclass
class KernelHook:
    """The kernel's kmem limit handler on this kernel: where to attach and the -D values it needs."""

    function: str
    kind: int
    params: Dict[str, int] = field(default_factory=dict)


def kernel_hook(target: Target) -> Tuple[Optional[KernelHook], str]:
    """(hook, why): the first handler of KERNEL_HOOKS TARGET lets us kprobe, or None and the reason."""
    table = target.symbols()
    for function, kind in KERNEL_HOOKS:
        resolution = table.resolve(function)
        if resolution.how != "exact":
            continue
        if kind != 3:
            return KernelHook(function, kind), "kernel hook: kprobe on %s" % function
        offsets = target.offsets(CGROUP_WRITE_MEMBERS)
        if len(offsets) == len(CGROUP_WRITE_MEMBERS):
            return (KernelHook(function, kind, offsets),
                    "kernel hook: kprobe on %s, memory.kmem.* files only (names read with BTF offsets)" % function)
        return None, "no kernel hook: %s needs BTF (kernfs_open_file, kernfs_node) to tell kmem files" % function
    return None, "no kernel hook: none of %s can be probed on this kernel" % ", ".join(n for n, _ in KERNEL_HOOKS)


@dataclass
class SyscallSource:
    """Where the syscall events come from: the syscalls:* tracepoints, or kprobes on the syscall functions."""

    mode: str                 # "tracepoint" | "kprobe-syscalls"
    flags: List[str]
    attaches: List[Attach]
    note: str


def syscall_functions(table: SymbolTable) -> Tuple[Dict[str, str], Optional[str]]:
    """({syscall: kernel function}, its ABI flag) for the first calling convention of SYSCALL_PREFIXES
    whose functions TABLE lets us kprobe for every syscall SYSCALLS needs."""
    missing = []  # type: List[str]
    for prefixes, flag in SYSCALL_PREFIXES:
        found = {}  # type: Dict[str, str]
        for name, _, _, _ in SYSCALLS:
            function = next((p + name for p in prefixes if table.resolve(p + name).how == "exact"), None)
            if function is not None:
                found[name] = function
        lacking = [name for name, _, _, needed in SYSCALLS if needed and name not in found]
        if not lacking:
            return found, flag
        if found:
            missing.append("%s*: no %s" % ("*/".join(prefixes), ", ".join(lacking)))
    raise MissingKernelFeature("kprobes on the syscall functions: none can be probed as %s (%s)"
                               % (" or ".join("*/".join(p) + "*" for p, _ in SYSCALL_PREFIXES),
                                  "; ".join(missing) or "none found"))


def syscall_kprobes(table: SymbolTable, why: str) -> SyscallSource:
    """Kprobes (and, where the result is needed, kretprobes) on TABLE's syscall functions."""
    functions, abi = syscall_functions(table)
    attaches = []  # type: List[Attach]
    for name, fn_name, returns, _ in SYSCALLS:
        if name not in functions:
            continue
        if returns:   # the kretprobe first: see trace()
            attaches.append(Attach(functions[name], "syscall_return", ret=True))
        attaches.append(Attach(functions[name], fn_name))
    flags = ["SYSCALL_KPROBES"] + ([abi] if abi else [])
    return SyscallSource("kprobe-syscalls", flags, attaches,
                         "syscalls: kprobes on %s (%s)" % (", ".join(functions.values()), why))


def syscall_tracepoints(target: Target, why: str) -> SyscallSource:
    """The syscalls:* tracepoints, with the flags of those not every architecture has."""
    flags = [flag for name, flag in OPTIONAL_TRACEPOINTS if target.tracepoint_exists("syscalls", name)]
    return SyscallSource("tracepoint", flags, [], "syscalls: syscalls:* tracepoints" + why)


def syscall_source(target: Target, mode: str, kprobes: Check) -> SyscallSource:
    """The syscall events for MODE: tracepoints where BPF can attach to them (4.14+), else kprobes;
    --mode tracepoint takes them whatever kallsyms says (the sign can be inlined away)."""
    tracepoints = target.syscall_tracepoints()
    if mode == "kprobe-syscalls" or (mode != "tracepoint" and not tracepoints):
        why = ("--mode kprobe-syscalls" if mode == "kprobe-syscalls"
               else "no %s in kallsyms: BPF on syscalls:* tracepoints needs 4.14+" % " nor ".join(SYSCALL_BPF_SYMBOLS))
        if not kprobes.ok:
            raise MissingKernelFeature("kprobes on the syscall functions (%s): %s" % (why, kprobes.detail),
                                       min_kernel="4.14" if mode != "kprobe-syscalls" else None)
        return syscall_kprobes(target.symbols(), why)
    return syscall_tracepoints(target, "" if tracepoints else (
        " (--mode tracepoint; BPF on them needs 4.14+: no %s in kallsyms, unless inlined)"
        % " nor ".join(SYSCALL_BPF_SYMBOLS)))


def hook_for(target: Target, mode: str, kprobes: Check) -> Tuple[Optional[KernelHook], str]:
    """(hook, why) for MODE: none with --mode tracepoint, required with --mode kprobe."""
    if mode == "tracepoint":
        return None, "no kernel hook (--mode tracepoint)"
    hook, note = kernel_hook(target) if kprobes.ok else (None, "no kernel hook: %s" % kprobes.detail)
    if mode == "kprobe" and hook is None:
        raise MissingKernelFeature("a kprobe on the kernel's kmem limit handler (%s)" % note,
                                   fallback="--mode tracepoint")
    return hook, note


def writer_cgroup(target: Target, from_css: bool) -> Tuple[List[str], str]:
    """(flags, why): how the program records the writer's cgroup. The cgroup2 id where the kernel has
    bpf_get_current_cgroup_id (4.18+); else (or FROM_CSS, a test switch) its memory cgroup read from its
    css_set, which needs this kernel's own headers; else none: /proc tells it while the writer lives."""
    table = target.symbols()
    helper = table.has("bpf_get_current_cgroup_id")    # the helpers' own symbols
    flags = ["HAVE_CGROUP_ID"] if helper else []
    if helper and not from_css:
        return flags, "writer's cgroup: bpf_get_current_cgroup_id (its cgroup2 id)"
    missing = ("no bpf_get_current_task" if not table.has("bpf_get_current_task")
               else "this kernel's own headers are not installed" if not target.headers_match() else None)
    if missing is None:
        return flags + ["MEMCG_FROM_CSS"], "writer's memory cgroup: read from its css_set (this kernel's headers)"
    if from_css:
        raise MissingKernelFeature("the writer's memory cgroup from its css_set (%s)" % missing)
    return flags, ("writer's memory cgroup: from /proc while the writer lives (no bpf_get_current_cgroup_id, "
                   "and its css_set cannot be read: %s)" % missing)


@dataclass
class Plan:
    """One run: the program, what it attaches (kprobes; tracepoints attach themselves), the kernel hook
    (None: syscalls only) and what was decided why."""

    probe: Probe
    syscalls: SyscallSource
    hook: Optional[KernelHook]
    notes: List[str]

    @property
    def note(self) -> str:
        return "; ".join(self.notes)

    @property
    def attaches(self) -> List[Attach]:
        """The syscall kprobes, then the hook's (its kretprobe first: see trace())."""
        hook = self.hook
        return self.syscalls.attaches + ([Attach(hook.function, "kernel_write_return", ret=True),
                                          Attach(hook.function, "kernel_write_entry")] if hook else [])

    def outline(self) -> Outline:
        attaches = [a.describe() for a in self.attaches]
        if self.syscalls.mode == "tracepoint":
            attaches.insert(0, "tracepoints syscalls:sys_{enter,exit}_{openat,write}, sys_enter_{close,dup3}")
        return Outline(self.syscalls.mode + (" + kernel hook" if self.hook else ""), attaches, list(self.notes))

    def describe(self) -> str:
        """What --ebpf prints."""
        return "// %s\n%s" % (self.note, self.probe.describe())


def plan(pid: Optional[int], mode: str = "auto", target: Optional[Target] = None, memcg_from_css: bool = False) -> Plan:
    """The program for this run on TARGET (default: this node). MODE: auto, tracepoint (syscall
    tracepoints, no kernel hook), kprobe (kernel hook required), kprobe-syscalls (syscall kprobes).
    MEMCG_FROM_CSS reads the writer's memory cgroup from its css_set even where the cgroup id helper exists."""
    target = target if target is not None else Running()
    kprobes = target.kprobes()
    syscalls = syscall_source(target, mode, kprobes)
    hook, hook_note = hook_for(target, mode, kprobes)
    cgroup_flags, cgroup_note = writer_cgroup(target, memcg_from_css)
    params = {"FILTER_TGID": pid} if pid is not None else {}
    if hook is not None:
        params["KERNEL_HOOK"] = hook.kind
        params.update(hook.params)
    probe = Probe("kmemsnoop", params, syscalls.flags + cgroup_flags)
    return Plan(probe, syscalls, hook, [syscalls.note, hook_note, cgroup_note])


def trace(the_plan: Plan, cgroup: Optional[str], duration: Optional[float],
            on_event: Callable[[KmemFileEvent], None], ready: Optional[Callable[[], None]] = None,
            on_lost: Optional[Callable[[int], None]] = None) -> None:
    """Trace until DURATION/Ctrl-C, calling ON_EVENT for each matching event."""
    # kretprobes before their kprobes: kprobes sharing an address run newest first, so entry runs before return
    bpf = the_plan.probe.load(the_plan.attaches, maxactive=SYSCALL_MAXACTIVE if the_plan.syscalls.attaches else 0)
    sys.stderr.write("bpftools: %s\n" % the_plan.note)
    cgroups = CgroupCache()

    def _on_raw(raw: Any) -> None:
        event = decode(raw, cgroups)
        if matches_cgroup(event, cgroup):
            on_event(event)

    poll_events(bpf, "events", _on_raw, duration=duration, ready=ready, on_lost=on_lost)


def incident_report(header: Dict[str, Any], events: Iterable[Dict[str, Any]], generated: str) -> Any:
    """The HTML/flame-graph report of a kmemsnoop recording (EVENTS read once, in bounded memory): who
    wrote which kmem file, with what. The table and the timeline's markers keep the first MAX_TABLE_ROWS
    events; every event is counted in the activity timeline, the flame graph and the verdict."""
    rows = []  # type: List[List[Any]]
    timeline = []  # type: List[Tuple[int, str, str]]
    folded = {}  # type: Dict[str, int]
    activity = Activity()
    enabling = []  # type: List[KmemFileEvent]      # the first MAX_EVIDENCE successful limit writes
    writers = set()  # type: Set[int]                # the tgids of all of them
    enabled = seen = 0
    for e in events:
        r = KmemFileEvent.from_json(e)
        seen += 1
        if r.op == "write" and r.ret >= 0 and os.path.basename(r.path) == LIMIT_FILE:
            enabled += 1
            writers.add(r.tgid)
            if len(enabling) < MAX_EVIDENCE:
                enabling.append(r)
        if len(rows) < MAX_TABLE_ROWS:
            rows.append([r.ts_ns / 1e9, r.tgid, r.comm, r.op, r.error or r.ret, r.value if r.value is not None else "",
                         r.path, r.cgroup or ""])
            timeline.append((r.ts_ns, "%s %s %s" % (r.comm, r.op, os.path.basename(r.path)), r.op))
        activity.add(r.ts_ns, r.op)
        add_samples(folded, [([annotation("pid %d %s" % (r.tgid, r.comm)), r.cgroup or "?",
                               r.op, os.path.dirname(r.path), os.path.basename(r.path),
                               annotation("%s -> %s" % (r.value.strip() if r.value else "open", r.error or r.ret))], 1)])
    verdict = {
        "incident": "kmem_io_jitter", "title": "Who turns on kmem accounting",
        "status": "detected" if enabled else "clear",
        "summary": ("%d successful write(s) to memory.kmem.limit_in_bytes by %d process(es)"
                    % (enabled, len(writers))) if enabled
        else "no successful write to memory.kmem.limit_in_bytes was seen",
        "evidence": ["pid %d (%s) wrote %r to %s: %s" % (r.tgid, r.comm, r.value, r.path, r.error or "ok")
                     for r in enabling],
        "remediation": [],
    }
    left_out = seen - len(rows)
    return IncidentReport(
        title="kmemsnoop: writes to memory.kmem.* files", command=list(header.get("argv", [])),
        generated=generated, kernel_release=str(header.get("kernel_release", "")),
        verdicts=[verdict],
        tables=[Table("Opens and writes of memory.kmem.* files",
                      ["time (s)", "pid", "comm", "op", "result", "value", "path", "writer cgroup"], rows,
                      note="the first %d of %d events: %d left out (counted in the verdict, the activity timeline "
                           "and the flame graph)" % (len(rows), seen, left_out) if left_out else "")],
        timeline=timeline, activity=activity,
        flame_graphs=[FlameGraph("kmem file accesses by writer", finished(folded), unit="events",
                                 name="kmemsnoop")],
        capabilities=header.get("capabilities"), tool_version=str(header.get("version", "")))


HEADER = "%-14s %-7s %-16s %-6s %-8s %-6s %s" % ("TIME(s)", "PID", "COMM", "OP", "RESULT", "VALUE",
                                                "PATH  [WRITER CGROUP]  {KERNEL}")


def line(event: KmemFileEvent) -> str:
    """One kmemsnoop line (plain text, like opensnoop); the kernel handler's view in braces."""
    result = event.error or str(event.ret)
    value = repr(event.value) if event.value is not None else "-"
    where = (event.writer_cgroup or event.writer_memcg or (event.writer_cgroup_v2 and "v2:" + event.writer_cgroup_v2)
             or "?")
    if event.container:
        where = "%s pod=%s" % ((event.container.get("container_id") or "")[:12], event.container.get("pod_uid") or "-")
    out = "%-14.6f %-7d %-16s %-6s %-8s %-6s %s  [%s]" % (
        event.ts_ns / 1e9, event.tgid, event.comm, event.op, result, value, event.path, where)
    if event.kernel:
        limit = event.kernel.get("limit_bytes")
        out += "  {%s -> %s%s}" % (event.kernel.get("function"), event.kernel.get("ret"),
                                    "" if limit is None else ", limit %d bytes" % limit)
    return out


def render_recording(rec: Any, console: Any) -> None:
    """``bpftools report`` of a kmemsnoop recording: the lines the live run printed."""
    console.print(HEADER, markup=False, soft_wrap=True, highlight=False)
    for obj in rec.events:
        if obj.get("type", "kmem_file") == "kmem_file":
            console.print(one_line(line(KmemFileEvent.from_json(obj))), markup=False, soft_wrap=True, highlight=False)



def outline(target: Target) -> Outline:
    """The plan of ``bpftools kmemsnoop`` on TARGET, in words."""
    return plan(None, "auto", target).outline()


@click.command(TOOL, epilog="""\b
Examples:
  bpftools kmemsnoop                   # trace until Ctrl-C
  bpftools kmemsnoop -d 30 --json      # 30 s, one JSON object per line
  bpftools kmemsnoop -p 1234           # only process 1234
  bpftools kmemsnoop --cgroup kubepods --record kmem.jsonl
  bpftools kmemsnoop -d 600 --report /tmp/kmem-report   # HTML report + flame graph at the end
  bpftools kmemsnoop --mode tracepoint # syscall tracepoints only, no kprobe on the kernel's handler
  bpftools kmemsnoop --mode kprobe-syscalls   # kprobes on sys_openat, sys_write... (RHEL 7's default)
""", context_settings=CONTEXT)
@click.option("-p", "--pid", type=click.IntRange(1, 2 ** 31 - 1), help="Trace this process (tgid) only.")
@click.option("--cgroup", metavar="PATH", help="Only writers in, or files under, this memory cgroup path.")
@click.option("-d", "--duration", type=POSITIVE, metavar="SECONDS", help="Stop after SECONDS.")
@click.option("--mode", type=click.Choice(("auto", "kprobe", "tracepoint", "kprobe-syscalls")), default="auto",
              show_default=True,
              help="kprobe: also hook the kernel's kmem limit handler (needs kprobes); tracepoint: syscall "
                   "tracepoints only (4.14+); kprobe-syscalls: kprobes on the syscall functions instead of "
                   "their tracepoints (auto's choice before 4.14, e.g. RHEL 7).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.option("--record", type=PATH, metavar="FILE", help="Also write a recording (JSON lines) to FILE.")
@click.option("--report", "report_dir", type=PATH, metavar="DIR",
              help="At the end, write report.html and flame graphs to DIR.")
@click.option("--ready-file", type=PATH, metavar="FILE", hidden=True, help="Touch FILE once attached (for tests).")
@click.option("--ebpf", is_flag=True, hidden=True, help="Print the BPF program and cflags, then exit.")
@click.option("--memcg-from-css", is_flag=True, hidden=True,
              help="Read the writer's memory cgroup from its css_set even where the cgroup id helper exists (tests).")
def command(pid: Optional[int], cgroup: Optional[str], duration: Optional[float], mode: str, as_json: bool,
            record: Optional[str], report_dir: Optional[str], ready_file: Optional[str], ebpf: bool,
            memcg_from_css: bool) -> None:
    """Trace opens and writes of memory.kmem.* files: who turns on kmem accounting, with what value."""
    the_plan = plan(pid, mode, memcg_from_css=memcg_from_css)
    if ebpf:
        click.echo(the_plan.describe())
        return
    with LiveRun(TOOL, record, report_dir, incident_report=incident_report) as run:
        if not as_json:
            click.echo(HEADER)

        def on_event(event: KmemFileEvent) -> None:
            run.record(event.to_json())
            click.echo(json.dumps(event.to_json(), sort_keys=True) if as_json else one_line(line(event)))

        trace(the_plan, cgroup, duration, on_event, ready=run.ready_callback(ready_file), on_lost=run.add_lost)
