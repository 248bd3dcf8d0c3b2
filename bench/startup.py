#!/usr/bin/env python3
"""Start-up: seconds from exec until attached, bpftools' tools side by side with bcc's on this machine.

"Attached" is what each tool itself announces once its probes are in: our ``--ready-file`` (written
right before polling), bcc's first line on stdout (the header they print after attaching; run with
PYTHONUNBUFFERED=1 so a pipe does not hold it back). A bcc tool that exits before that did not attach
here: its time to fail and last stderr line are reported (on 6.18 without kprobes, opensnoop's fentry
load is refused and offcputime needs a kprobe on finish_task_switch). For a like-for-like bcc figure
the bench also times bcc's ``trace`` on the openat tracepoint (opensnoop's job) and ``runqslower``
(raw sched_switch tracepoints, offcputime's hook). Rounds rotate the order of the tools; each row is
the median and the spread (max - min) / median. Needs root.

    sudo .venv/bin/python bench/startup.py [--rounds 3] [--json]
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import benchlib

OURS = [
    ("bpftools kmemsnoop --mode tracepoint", ["kmemsnoop", "--mode", "tracepoint"]),
    ("bpftools mempoolwait --mode tracepoint", ["mempoolwait", "--mode", "tracepoint"]),
    ("bpftools iojitter --mode tracepoint", ["iojitter", "--mode", "tracepoint"]),
]
BCC = [
    ("bcc opensnoop", ["opensnoop-bpfcc"]),
    ("bcc offcputime", ["offcputime-bpfcc"]),
    ("bcc trace 't:syscalls:sys_exit_openat'", ["trace-bpfcc", "t:syscalls:sys_exit_openat \"%d\", args->ret"]),
    ("bcc runqslower", ["runqslower-bpfcc"]),
]


def time_ours(args: List[str], workdir: str) -> Tuple[Optional[float], str]:
    """Seconds until ``bpftools ARGS`` wrote its ready file; (None, why) if it failed."""
    try:
        tool = benchlib.Tool(args + ["-d", "600"], workdir)
    except SystemExit as err:
        return None, str(err).splitlines()[-1]
    code, err = tool.stop()
    if code != 0:
        return None, "exit %d: %s" % (code, (err.strip().splitlines() or [""])[-1])
    return tool.attach_s, ""


def time_bcc(argv: List[str]) -> Tuple[Optional[float], str]:
    """Seconds until a bcc tool printed its first stdout line; (None, its last stderr line) if it exited first."""
    path = shutil.which(argv[0], path="/usr/sbin:/usr/share/bcc/tools:" + os.environ.get("PATH", ""))
    if path is None:
        return None, "%s not installed (apt-get install bpfcc-tools)" % argv[0]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.monotonic()
    proc = subprocess.Popen([path] + argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            universal_newlines=True)
    line = proc.stdout.readline()   # blocks until the header, or EOF when the tool died
    elapsed = time.monotonic() - start
    if line:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return elapsed, ""
    err = proc.communicate(timeout=60)[1].strip().splitlines()
    return None, "failed after %.1f s: %s" % (elapsed, err[-1] if err else "exit %d" % proc.returncode)


def run(rounds: int, workdir: str, only: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """ROUNDS timings of every tool (order rotated each round): median, spread, failures."""
    tools = [(name, "ours", args) for name, args in OURS] + [(name, "bcc", argv) for name, argv in BCC]
    tools = [t for t in tools if not only or any(o in t[0] for o in only)]
    times = dict((name, []) for name, _, _ in tools)  # type: Dict[str, List[float]]
    failures = dict((name, "") for name, _, _ in tools)
    for i in range(rounds):
        shift = i % len(tools)
        for name, kind, args in tools[shift:] + tools[:shift]:
            seconds, why = time_ours(args, workdir) if kind == "ours" else time_bcc(args)
            if seconds is None:
                failures[name] = why
            else:
                times[name].append(seconds)
    rows = []
    for name, kind, _ in tools:
        row = {"tool": name, "kind": kind, "runs": times[name], "failure": failures[name]}   # type: Dict[str, Any]
        if times[name]:
            row["median_s"], row["spread"] = benchlib.median_spread(times[name])
        rows.append(row)
    return rows


def table(rows: List[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """The rows of the README table."""
    out = []
    for r in rows:
        if r["runs"]:
            out.append(("start-up until attached: %s" % r["tool"], "%.2f s" % r["median_s"],
                        "spread %.0f%% over %d runs" % (100 * r["spread"], len(r["runs"]))))
        else:
            out.append(("start-up until attached: %s" % r["tool"], "does not attach here", r["failure"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per tool (3)")
    parser.add_argument("--only", action="append", metavar="TEXT", help="only tools whose name contains TEXT")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (BPF)")
    workdir = tempfile.mkdtemp(prefix="bpftools-bench-")
    try:
        rows = run(max(1, args.rounds), workdir, args.only)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    benchlib.emit({"bench": "startup", "kernel": os.uname().release, "rows": rows, "table": table(rows)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
