#!/usr/bin/env python3
"""Overhead of each live tool (tracepoint mode) on a syscall-heavy workload, with vs without it attached.

Workloads (each call passes the tracepoints the tool attaches to; none is an event the tool reports,
so the figure is the in-kernel cost of the probes plus an idle consumer):

- ``syscalls``: open(O_CREAT), write 1 byte, close, in a loop: ``syscalls:sys_*_openat/write/close``
  (kmemsnoop) and, through the ``struct file`` each open allocates, ``kmem:kmem_cache_alloc`` (slabfail).
- ``switches``: two processes ping-pong a byte through two pipes: two ``sched:sched_switch`` per
  round trip (mempoolwait's tracepoint mode).

iojitter attaches all of these and runs on both. Rounds alternate the arms (A B, B A, ...); the ratio
is median(with) / median(without) of the time per loop (1.00 = no cost), the range is that of the
per-round ratios, the spread (max - min) / median of each arm. Needs root.

    sudo .venv/bin/python bench/tool_overhead.py [--rounds 5] [--calls 50000] [--only kmemsnoop] [--json]

The fsync-on-ext4 workload of writeslow/iojitter (writeback tracepoints) is bench/iojitter_overhead.py.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Tuple

import benchlib

SYSCALLS = r"""
import os, sys, time
path, calls = sys.argv[1], int(sys.argv[2])
start = time.perf_counter()
for _ in range(calls):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x")
    os.close(fd)
print(time.perf_counter() - start)
"""

SWITCHES = r"""
import os, sys, time
calls = int(sys.argv[2])
a_r, a_w = os.pipe()
b_r, b_w = os.pipe()
pid = os.fork()
if pid == 0:
    for _ in range(calls):
        os.read(a_r, 1)
        os.write(b_w, b"y")
    os._exit(0)
start = time.perf_counter()
for _ in range(calls):
    os.write(a_w, b"x")
    os.read(b_r, 1)
elapsed = time.perf_counter() - start
os.waitpid(pid, 0)
print(elapsed)
"""

WORKLOADS = {"syscalls": SYSCALLS, "switches": SWITCHES}
# (tool, its arguments, workload): every live tool in the mode this kernel runs it in.
ROWS = [
    ("kmemsnoop", ["--mode", "tracepoint"], "syscalls"),
    ("slabfail", ["--mode", "tracepoint"], "syscalls"),
    ("mempoolwait", ["--mode", "tracepoint"], "switches"),
    ("iojitter", ["--mode", "tracepoint"], "syscalls"),
    ("iojitter", ["--mode", "tracepoint"], "switches"),
]


def run_workload(name: str, path: str, calls: int) -> float:
    """Seconds the workload took for CALLS iterations (measured inside it, start-up excluded)."""
    out = subprocess.check_output([sys.executable, "-c", WORKLOADS[name], path, str(calls)],
                                  universal_newlines=True)
    return float(out)


def measure(tool: str, args: List[str], workload: str, rounds: int, calls: int, workdir: str) -> Dict[str, Any]:
    """One row: ROUNDS interleaved runs without and with ``bpftools TOOL ARGS`` attached."""
    path = os.path.join(workdir, "target")
    run_workload(workload, path, max(1, calls // 10))   # warm-up (page cache, dentries)
    attach = []  # type: List[float]

    def without() -> float:
        return run_workload(workload, path, calls)

    def with_tool() -> float:
        running = benchlib.Tool([tool] + args + ["-d", "3600"], workdir)
        attach.append(running.attach_s)
        try:
            return run_workload(workload, path, calls)
        finally:
            code, err = running.stop()
            if code != 0:
                raise SystemExit("bpftools %s exited %d: %s" % (tool, code, err.strip()))

    arms = benchlib.interleaved(rounds, [("without", without), ("with", with_tool)])
    base, base_spread = benchlib.median_spread(arms["without"])
    traced, traced_spread = benchlib.median_spread(arms["with"])
    paired = [w / b for b, w in zip(arms["without"], arms["with"])]
    return {
        "tool": tool, "args": args, "workload": workload, "calls": calls, "rounds": rounds,
        "median_s_without": base, "median_s_with": traced, "ratio": traced / base,
        "ratio_min": min(paired), "ratio_max": max(paired),
        "spread_without": base_spread, "spread_with": traced_spread,
        "calls_per_s_without": calls / base, "calls_per_s_with": calls / traced,
        "runs_without": arms["without"], "runs_with": arms["with"],
        "median_attach_s": statistics.median(attach),
    }


def table(rows: List[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """The rows of the README table."""
    return [("overhead: %s %s on `%s` loop (time with/without)" % (r["tool"], " ".join(r["args"]), r["workload"]),
             "%.2fx" % r["ratio"],
             "per-round %.2f-%.2f; spread without %.0f%%, with %.0f%%; %d rounds x %d loops"
             % (r["ratio_min"], r["ratio_max"], 100 * r["spread_without"], 100 * r["spread_with"], r["rounds"],
                r["calls"]))
            for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs per arm (5)")
    parser.add_argument("--calls", type=int, default=50000, help="loop iterations per run (50000)")
    parser.add_argument("--only", action="append", metavar="TOOL", help="only this tool (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (BPF)")
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be >= 1")
    workdir = tempfile.mkdtemp(prefix="bpftools-bench-")
    try:
        rows = [measure(tool, tool_args, workload, args.rounds, args.calls, workdir)
                for tool, tool_args, workload in ROWS if not args.only or tool in args.only]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    benchlib.emit({"bench": "tool_overhead", "kernel": os.uname().release, "rows": rows, "table": table(rows)},
                  args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
