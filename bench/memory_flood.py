#!/usr/bin/env python3
"""Memory under an event flood: the tool's peak RSS, its kernel maps' bounds, and every loss counted.

``bpftools kmemsnoop --mode tracepoint -p FLOOD --record FILE`` watches one flood process that
(1) holds HOLD open fds of a file named ``memory.kmem.failcnt`` (each open is an event and an entry in
the ``kmem_fds`` map, whose bound is 4096), then (2) opens and closes it as fast as it can for SECONDS:
far more events than the Python consumer can take, so the perf buffer overflows. Reported: the RSS
when attached, the peak RSS sampled during the flood, VmHWM of the whole run (bcc's in-process
compile included), every map the process holds with its bound and locked memory, the entries
``kmem_fds`` holds while the fds are open (never past max_entries), and the events recorded, lost (the
trailer) and lost (the line on stderr). Needs root.

    sudo .venv/bin/python bench/memory_flood.py [--seconds 10] [--hold 6000] [--json]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

import benchlib

FLOOD = r"""
import os, resource, sys, time
path, hold, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (hold + 64, hold + 64))
sys.stdin.readline()
fds = [os.open(path, os.O_RDONLY) for _ in range(hold)]
print("held", flush=True)
sys.stdin.readline()
for fd in fds:
    os.close(fd)
opens = hold
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(200):
        os.close(os.open(path, os.O_RDONLY))
    opens += 200
print(opens, flush=True)
"""
LOST_LINE = re.compile(r"bpftools: (\d+) events lost")


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def run(seconds: float, hold: int, workdir: str) -> Dict[str, Any]:
    """One flood against one kmemsnoop; the figures of the module doc."""
    target = os.path.join(workdir, "memory.kmem.failcnt")
    open(target, "w").close()
    record = os.path.join(workdir, "flood.jsonl")
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, target, str(hold), str(seconds)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, universal_newlines=True)
    try:
        tool = benchlib.Tool(["kmemsnoop", "--mode", "tracepoint", "-p", str(flood.pid), "--record", record,
                              "-d", "3600"], workdir)
        rss_attached = benchlib.proc_status_kib(tool.pid, "VmRSS")
        ids = benchlib.owned_bpf_ids(tool.pid)
        maps = [m for m in benchlib.bpftool_json("map", "show") if m["id"] in ids["map"]]
        flood.stdin.write("go\n")
        flood.stdin.flush()
        assert flood.stdout.readline().strip() == "held"
        kmem_fds = [m for m in maps if m.get("name") == "kmem_fds"]
        held_entries = benchlib.map_entries(kmem_fds[0]["id"]) if kmem_fds else None
        flood.stdin.write("go\n")
        flood.stdin.flush()
        start = time.monotonic()
        peak = rss_attached
        while flood.poll() is None:
            peak = max(peak, benchlib.proc_status_kib(tool.pid, "VmRSS"))
            time.sleep(0.1)
        flood_s = time.monotonic() - start
        opens = int(flood.stdout.read().split()[-1])
        seen, still = -1, 0
        while still < 5:   # the consumer drains what the buffer holds: wait until the recording stops growing
            now = _lines(record)
            still = still + 1 if now == seen else 0
            seen = now
            peak = max(peak, benchlib.proc_status_kib(tool.pid, "VmRSS"))
            time.sleep(0.2)
        hwm = benchlib.proc_status_kib(tool.pid, "VmHWM")
        code, err = tool.stop()
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    if code != 0:
        raise SystemExit("kmemsnoop exited %d: %s" % (code, err))
    with open(record) as f:
        trailer = json.loads(f.read().splitlines()[-1])
    shown = LOST_LINE.search(err)
    return {
        "seconds": seconds, "flood_s": flood_s, "hold": hold, "opens": opens,
        "events_recorded": trailer["events"], "lost_trailer": trailer["lost_events"],
        "lost_stderr": int(shown.group(1)) if shown else None,
        # Opens past kmem_fds' bound are recorded AND counted lost (their fd is not followed): expected twice.
        "map_full": max(0, hold - kmem_fds[0]["max_entries"]) if kmem_fds else 0,
        "unaccounted": (opens + (max(0, hold - kmem_fds[0]["max_entries"]) if kmem_fds else 0)
                        - trailer["events"] - trailer["lost_events"]),
        "events_per_s_recorded": trailer["events"] / flood_s,
        "rss_attached_mib": rss_attached / 1024.0, "rss_peak_flood_mib": peak / 1024.0, "vmhwm_mib": hwm / 1024.0,
        "maps": [{"name": m.get("name"), "type": m.get("type"), "max_entries": m.get("max_entries"),
                  "bytes_memlock": m.get("bytes_memlock")} for m in maps],
        "maps_memlock_mib": sum(int(m.get("bytes_memlock") or 0) for m in maps) / 2.0 ** 20,
        "kmem_fds_max_entries": kmem_fds[0]["max_entries"] if kmem_fds else None,
        "kmem_fds_entries_while_held": held_entries,
    }


def table(r: Dict[str, Any]) -> List[Tuple[str, str, str]]:
    """The rows of the README table."""
    return [
        ("memory: kmemsnoop peak RSS during a %.0f s event flood" % r["seconds"], "%.0f MiB" % r["rss_peak_flood_mib"],
         "%.0f MiB when attached; VmHWM of the whole run %.0f MiB" % (r["rss_attached_mib"], r["vmhwm_mib"])),
        ("memory: kernel maps (all preallocated, bounded)", "%.1f MiB locked" % r["maps_memlock_mib"],
         "; ".join("%s %s" % (m["name"], m["max_entries"]) for m in r["maps"])),
        ("memory: kmem_fds entries with %d fds open" % r["hold"], "%s" % r["kmem_fds_entries_while_held"],
         "max_entries %s; the %d opens past it counted lost (their fd is not followed)"
         % (r["kmem_fds_max_entries"], r["map_full"])),
        ("loss under the flood: recorded / lost (trailer) / lost (stderr)",
         "{:,} / {:,} / {}".format(r["events_recorded"], r["lost_trailer"],
                                   "-" if r["lost_stderr"] is None else "{:,}".format(r["lost_stderr"])),
         "{:,} events generated, {:,} neither recorded nor counted; {:,.0f} events/s recorded".format(
             r["opens"], r["unaccounted"], r["events_per_s_recorded"])),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="flood duration (10)")
    parser.add_argument("--hold", type=int, default=6000, help="fds held open first (6000; kmem_fds holds 4096)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (BPF)")
    if args.seconds <= 0 or args.hold < 0:
        parser.error("--seconds > 0 and --hold >= 0")
    workdir = tempfile.mkdtemp(prefix="bpftools-bench-")
    try:
        result = run(args.seconds, args.hold, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    benchlib.emit({"bench": "memory_flood", "result": result, "table": table(result)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
