"""kmemsnoop: who opens and writes cgroup v1 ``memory.kmem.*`` files (opensnoop for kmem files).

On 3.10 the first write to ``memory.kmem.limit_in_bytes`` turns kmem accounting on for that cgroup
(runc writes ``1`` then ``-1``); this shows the writer, its cgroup (container/pod), the target path,
the value written and the result (EBUSY when the cgroup already has tasks). The syscalls come from
tracepoints, so it runs everywhere; where kprobes exist it also hooks the kernel's kmem limit handler,
which confirms what the kernel did with the write and sees writes made by other syscalls (pwrite,
writev, io_uring).
"""
import errno
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import click
from dataclasses import dataclass, field

from ..analyses.folded import annotation, fold
from ..event import JsonEvent
from ..html_report import FlameGraph, IncidentReport, Table
from ..live import LiveRun
from ..kernel.cgroups import cgroup2_path_of_id, container_of, memory_cgroup_of_pid
from ..capture import Attach, Probe, c_text, poll_events
from ..errors import MissingKernelFeature
from ..options import CONTEXT, positive
from ..kernel.symbols import SymbolTable
from ..kernel.tracefs import find_tracefs, tracepoint_exists
from ..kernel import btf, structs
from ..kernel.capabilities import check_kprobes

OPS = {1: "open", 2: "write", 3: "kernel"}
TOOL = "kmemsnoop"
LIMIT_FILE = "memory.kmem.limit_in_bytes"
# The kernel function that handles a write to memory.kmem.limit_in_bytes, by preference, with its
# HOOK_* value in probes/kmemsnoop.h. Only exact names: a clone's arguments may be rearranged.
KERNEL_HOOKS = (("memcg_update_kmem_limit", 1),   # 3.10: (struct cgroup *, u64 bytes)
                ("memcg_update_kmem_max", 2),     # 4.x-5.15: (struct mem_cgroup *, unsigned long pages)
                ("mem_cgroup_write", 3))          # any memory.* file; filtered by its kernfs name
HOOK_NAMES = dict((kind, name) for name, kind in KERNEL_HOOKS)
CGROUP_WRITE_MEMBERS = ("OFF_OF_KN", "OFF_KN_NAME")    # the file mem_cgroup_write writes (kernel.structs)


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

    @property
    def error(self) -> Optional[str]:
        """errno name of a failed call, e.g. EBUSY."""
        return errno.errorcode.get(-self.ret, str(-self.ret)) if self.ret < 0 else None

    def to_json(self) -> Dict[str, Any]:
        out = JsonEvent.to_json(self)
        out["error"] = self.error
        return out



class CgroupCache:
    """The writer's cgroups, looked up once per pid and per id.

    ``memory`` comes from /proc/PID/cgroup while the task lives; ``v2`` is the cgroup2 path of the id
    the BPF program recorded, which survives the writer (runc's writer exits right after writing).
    """

    def __init__(self) -> None:
        self._memory = {}  # type: Dict[int, Optional[str]]
        self._v2 = {}  # type: Dict[int, Optional[str]]

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


def decode(raw: Any, cgroups: CgroupCache) -> KmemFileEvent:
    """The one place a raw kmem_event becomes a KmemFileEvent."""
    path = c_text(bytes(raw.path))
    if raw.op != 3 and not path.startswith("/"):   # a syscall's path; a kernel event's is a kernfs name
        try:
            path = os.path.join(os.readlink("/proc/%d/cwd" % raw.tgid), path)
        except OSError:
            pass
    cgroup = cgroups.memory(raw.tgid)
    cgroup_v2 = cgroups.v2(int(raw.cgroup_id))
    ref = container_of(cgroup or "") or container_of(cgroup_v2 or "")
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
        kernel=kernel)


def matches_cgroup(event: KmemFileEvent, cgroup: Optional[str]) -> bool:
    """--cgroup filter: the writer's memory cgroup or the target file's cgroup starts with CGROUP."""
    if not cgroup:
        return True
    want = "/" + cgroup.strip("/")
    target = os.path.dirname(event.path)
    writers = (event.writer_cgroup or "", event.writer_cgroup_v2 or "")
    return any(w.startswith(want) for w in writers) or ("/" + target.strip("/")).find(want) >= 0


@dataclass
class KernelHook:
    """The kernel's kmem limit handler on this kernel: where to attach and the -D values it needs."""

    function: str
    kind: int
    params: Dict[str, int] = field(default_factory=dict)


def kernel_hook(table: SymbolTable, btf_path: str = btf.VMLINUX) -> Tuple[Optional[KernelHook], str]:
    """(hook, why): the first handler of KERNEL_HOOKS this kernel lets us kprobe, or None and the reason."""
    for function, kind in KERNEL_HOOKS:
        resolution = table.resolve(function)
        if resolution.how != "exact":
            continue
        if kind != 3:
            return KernelHook(function, kind), "kernel hook: kprobe on %s" % function
        offsets = structs.offsets(CGROUP_WRITE_MEMBERS, btf_path)
        if len(offsets) == len(CGROUP_WRITE_MEMBERS):
            return (KernelHook(function, kind, offsets),
                    "kernel hook: kprobe on %s, memory.kmem.* files only (names read with BTF offsets)" % function)
        return None, "no kernel hook: %s needs BTF (kernfs_open_file, kernfs_node) to tell kmem files" % function
    return None, "no kernel hook: none of %s can be probed on this kernel" % ", ".join(n for n, _ in KERNEL_HOOKS)


@dataclass
class Plan:
    """One run: the program, the kernel hook (None: syscalls only) and what was decided why."""

    probe: Probe
    hook: Optional[KernelHook]
    note: str

    def describe(self) -> str:
        """What --ebpf prints."""
        return "// %s\n%s" % (self.note, self.probe.describe())


def plan(pid: Optional[int], mode: str = "auto", table: Optional[SymbolTable] = None) -> Plan:
    """The program for this run. MODE: tracepoint (syscalls only), kprobe (kernel hook required), auto."""
    table = table if table is not None else SymbolTable.from_system()
    params = {"FILTER_TGID": pid} if pid is not None else {}
    flags = [flag for name, flag in (("sys_enter_open", "HAVE_SYS_OPEN"), ("sys_enter_dup2", "HAVE_SYS_DUP2"))
             if tracepoint_exists("syscalls", name)]
    if table.has("bpf_get_current_cgroup_id"):   # the helper's own symbol
        flags.append("HAVE_CGROUP_ID")
    hook, note = None, "tracepoints only (--mode tracepoint)"
    if mode != "tracepoint":
        kprobes = check_kprobes(find_tracefs())
        if kprobes.ok:
            hook, note = kernel_hook(table)
        else:
            note = "no kernel hook: %s" % kprobes.detail
        if mode == "kprobe" and hook is None:
            raise MissingKernelFeature("a kprobe on the kernel's kmem limit handler (%s)" % note,
                                       fallback="--mode tracepoint")
    if hook is not None:
        params["KERNEL_HOOK"] = hook.kind
        params.update(hook.params)
    return Plan(Probe("kmemsnoop", params, flags), hook, note)



def trace(the_plan: Plan, cgroup: Optional[str], duration: Optional[float],
            on_event: Callable[[KmemFileEvent], None], ready: Optional[Callable[[], None]] = None,
            on_lost: Optional[Callable[[int], None]] = None) -> None:
    """Trace until DURATION/Ctrl-C, calling ON_EVENT for each matching event."""
    hook = the_plan.hook
    # the kretprobe first: kprobes sharing an address run newest first, so entry runs before return
    bpf = the_plan.probe.load([Attach(hook.function, "kernel_write_return", ret=True),
                               Attach(hook.function, "kernel_write_entry")] if hook is not None else [])
    sys.stderr.write("bpftools: %s\n" % the_plan.note)
    cgroups = CgroupCache()

    def _on_raw(raw: Any) -> None:
        event = decode(raw, cgroups)
        if matches_cgroup(event, cgroup):
            on_event(event)

    poll_events(bpf, "events", _on_raw, duration=duration, ready=ready, on_lost=on_lost)


def incident_report(header: Dict[str, Any], events: List[Dict[str, Any]], generated: str) -> Any:
    """The HTML/flame-graph report of a kmemsnoop recording: who wrote which kmem file, with what."""
    records = [KmemFileEvent.from_json(e) for e in events]
    enabling = [r for r in records if r.op == "write" and r.ret >= 0
                and os.path.basename(r.path) == "memory.kmem.limit_in_bytes"]
    rows = [[r.ts_ns / 1e9, r.tgid, r.comm, r.op, r.error or r.ret, r.value if r.value is not None else "",
             r.path, r.writer_cgroup or r.writer_cgroup_v2 or ""] for r in records]
    stacks = [([annotation("pid %d %s" % (r.tgid, r.comm)), r.writer_cgroup or r.writer_cgroup_v2 or "?",
                r.op, os.path.dirname(r.path), os.path.basename(r.path),
                annotation("%s -> %s" % (r.value.strip() if r.value else "open", r.error or r.ret))], 1)
              for r in records]
    verdict = {
        "incident": "kmem_io_jitter", "title": "Who turns on kmem accounting",
        "status": "detected" if enabling else "clear",
        "summary": ("%d successful write(s) to memory.kmem.limit_in_bytes by %d process(es)"
                    % (len(enabling), len(set(r.tgid for r in enabling)))) if enabling
        else "no successful write to memory.kmem.limit_in_bytes was seen",
        "evidence": ["pid %d (%s) wrote %r to %s: %s" % (r.tgid, r.comm, r.value, r.path, r.error or "ok")
                     for r in enabling[:20]],
        "remediation": [],
    }
    return IncidentReport(
        title="kmemsnoop: writes to memory.kmem.* files", command=list(header.get("argv", [])),
        generated=generated, kernel_release=str(header.get("kernel_release", "")),
        verdicts=[verdict],
        tables=[Table("Opens and writes of memory.kmem.* files",
                      ["time (s)", "pid", "comm", "op", "result", "value", "path", "writer cgroup"], rows)],
        timeline=[(r.ts_ns, "%s %s %s" % (r.comm, r.op, os.path.basename(r.path)), r.op) for r in records],
        flame_graphs=[FlameGraph("kmem file accesses by writer", fold(stacks), unit="events", name="kmemsnoop")],
        capabilities=header.get("capabilities"), tool_version=str(header.get("version", "")))


HEADER = "%-14s %-7s %-16s %-6s %-8s %-6s %s" % ("TIME(s)", "PID", "COMM", "OP", "RESULT", "VALUE",
                                                "PATH  [WRITER CGROUP]  {KERNEL}")


def line(event: KmemFileEvent) -> str:
    """One kmemsnoop line (plain text, like opensnoop); the kernel handler's view in braces."""
    result = event.error or str(event.ret)
    value = repr(event.value) if event.value is not None else "-"
    where = event.writer_cgroup or (event.writer_cgroup_v2 and "v2:" + event.writer_cgroup_v2) or "?"
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
            console.print(line(KmemFileEvent.from_json(obj)), markup=False, soft_wrap=True, highlight=False)


@click.command(TOOL, epilog="""\b
Examples:
  bpftools kmemsnoop                   # trace until Ctrl-C
  bpftools kmemsnoop -d 30 --json      # 30 s, one JSON object per line
  bpftools kmemsnoop -p 1234           # only process 1234
  bpftools kmemsnoop --cgroup kubepods --record kmem.jsonl
  bpftools kmemsnoop -d 600 --report /tmp/kmem-report   # HTML report + flame graph at the end
  bpftools kmemsnoop --mode tracepoint # syscalls only, no kprobe on the kernel's handler
""", context_settings=CONTEXT)
@click.option("-p", "--pid", type=click.IntRange(1, 2 ** 31 - 1), help="Trace this process (tgid) only.")
@click.option("--cgroup", metavar="PATH", help="Only writers in, or files under, this memory cgroup path.")
@click.option("-d", "--duration", type=float, callback=positive, metavar="SECONDS", help="Stop after SECONDS.")
@click.option("--mode", type=click.Choice(("auto", "kprobe", "tracepoint")), default="auto", show_default=True,
              help="kprobe: also hook the kernel's kmem limit handler (needs kprobes); tracepoint: syscalls only.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.option("--record", metavar="FILE", help="Also write a recording (JSON lines) to FILE.")
@click.option("--report", "report_dir", metavar="DIR", help="At the end, write report.html and flame graphs to DIR.")
@click.option("--ready-file", metavar="FILE", hidden=True, help="Touch FILE once attached (for tests).")
@click.option("--ebpf", is_flag=True, hidden=True, help="Print the BPF program and cflags, then exit.")
def command(pid: Optional[int], cgroup: Optional[str], duration: Optional[float], mode: str, as_json: bool,
            record: Optional[str], report_dir: Optional[str], ready_file: Optional[str], ebpf: bool) -> None:
    """Trace opens and writes of memory.kmem.* files: who turns on kmem accounting, with what value."""
    the_plan = plan(pid, mode)
    if ebpf:
        click.echo(the_plan.describe())
        return
    with LiveRun(TOOL, record, report_dir, incident_report=incident_report) as run:
        if not as_json:
            click.echo(HEADER)

        def on_event(event: KmemFileEvent) -> None:
            run.record(event.to_json())
            click.echo(json.dumps(event.to_json(), sort_keys=True) if as_json else line(event))

        trace(the_plan, cgroup, duration, on_event, ready=run.ready_callback(ready_file), on_lost=run.add_lost)
