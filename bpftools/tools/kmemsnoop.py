"""kmemsnoop: who opens and writes cgroup v1 ``memory.kmem.*`` files (opensnoop for kmem files).

On 3.10 the first write to ``memory.kmem.limit_in_bytes`` turns kmem accounting on for that cgroup
(runc writes ``1`` then ``-1``); this shows the writer, its cgroup (container/pod), the target path,
the value written and the result (EBUSY when the cgroup already has tasks).
"""
import errno
import os
from typing import Any, Callable, Dict, List, Optional

from dataclasses import asdict, dataclass

from ..cgroups import cgroup2_path_of_id, container_of, memory_cgroup_of_pid
from ..capture import Probe, poll_events
from ..symbols import SymbolTable
from ..tracefs import tracepoint_exists

OPS = {1: "open", 2: "write"}
TOOL = "kmemsnoop"


@dataclass
class KmemFileEvent:
    """One open or write of a memory.kmem.* file, as seen at syscall exit."""

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

    @property
    def error(self) -> Optional[str]:
        """errno name of a failed call, e.g. EBUSY."""
        return errno.errorcode.get(-self.ret, str(-self.ret)) if self.ret < 0 else None

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["type"] = "kmem_file"
        out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> "KmemFileEvent":
        return cls(**dict((k, obj.get(k)) for k in cls.__dataclass_fields__))  # type: ignore


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


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
    path = _text(bytes(raw.path))
    if not path.startswith("/"):
        try:
            path = os.path.join(os.readlink("/proc/%d/cwd" % raw.tgid), path)
        except OSError:
            pass
    cgroup = cgroups.memory(raw.tgid)
    cgroup_v2 = cgroups.v2(int(raw.cgroup_id))
    ref = container_of(cgroup or "") or container_of(cgroup_v2 or "")
    op = OPS.get(raw.op, str(raw.op))
    return KmemFileEvent(
        ts_ns=int(raw.ts_ns), tgid=int(raw.tgid), tid=int(raw.tid),
        comm=_text(bytes(raw.comm)), op=op, path=path,
        value=_text(bytes(raw.value)) if op == "write" else None, ret=int(raw.ret),
        writer_cgroup=cgroup, writer_cgroup_v2=cgroup_v2, container=ref.to_json() if ref else None)


def matches_cgroup(event: KmemFileEvent, cgroup: Optional[str]) -> bool:
    """--cgroup filter: the writer's memory cgroup or the target file's cgroup starts with CGROUP."""
    if not cgroup:
        return True
    want = "/" + cgroup.strip("/")
    target = os.path.dirname(event.path)
    writers = (event.writer_cgroup or "", event.writer_cgroup_v2 or "")
    return any(w.startswith(want) for w in writers) or ("/" + target.strip("/")).find(want) >= 0


def probe(pid: Optional[int]) -> Probe:
    """The BPF program with this run's parameters."""
    params = {"FILTER_TGID": pid} if pid is not None else {}
    flags = [flag for name, flag in (("sys_enter_open", "HAVE_SYS_OPEN"), ("sys_enter_dup2", "HAVE_SYS_DUP2"))
             if tracepoint_exists("syscalls", name)]
    if SymbolTable.from_system().has("bpf_get_current_cgroup_id"):   # the helper's own symbol
        flags.append("HAVE_CGROUP_ID")
    return Probe("kmemsnoop", params, flags)


def capture(pid: Optional[int], cgroup: Optional[str], duration: Optional[float],
            on_event: Callable[[KmemFileEvent], None], ready: Optional[Callable[[], None]] = None,
            on_lost: Optional[Callable[[int], None]] = None) -> None:
    """Trace until DURATION/Ctrl-C, calling ON_EVENT for each matching event."""
    bpf = probe(pid).load()
    cgroups = CgroupCache()

    def _on_raw(raw: Any) -> None:
        event = decode(raw, cgroups)
        if matches_cgroup(event, cgroup):
            on_event(event)

    poll_events(bpf, "events", _on_raw, duration=duration, ready=ready, on_lost=on_lost)


def incident_report(header: Dict[str, Any], events: List[Dict[str, Any]], generated: str) -> Any:
    """The HTML/flame-graph report of a kmemsnoop recording: who wrote which kmem file, with what."""
    from ..analyses.folded import annotation, fold
    from ..html_report import FlameGraph, IncidentReport, Table
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
