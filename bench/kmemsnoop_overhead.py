#!/usr/bin/env python3
"""Overhead of `bpftools kmemsnoop` on a syscall-heavy loop, measured side by side in one run.

The workload opens, writes and closes a file in a loop (every call passes kmemsnoop's openat/write/close
tracepoints, none is a kmem file). Runs alternate without and with the tool attached (A B A B ...), so
machine noise hits both; the result is the ratio of the medians. Needs root.

    sudo .venv/bin/python bench/kmemsnoop_overhead.py [--rounds 5] [--calls 20000]
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOAD = r"""
import os, sys, time
path, calls = sys.argv[1], int(sys.argv[2])
start = time.perf_counter()
for _ in range(calls):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x")
    os.close(fd)
print(time.perf_counter() - start)
"""


def run_workload(path: str, calls: int) -> float:
    out = subprocess.check_output([sys.executable, "-c", WORKLOAD, path, str(calls)], universal_newlines=True)
    return float(out)


def start_tool(ready: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "bpftools.cli", "kmemsnoop", "--ready-file", ready],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not os.path.exists(ready):
        if proc.poll() is not None:
            raise SystemExit("kmemsnoop failed: %s" % proc.stderr.read().decode())
        time.sleep(0.05)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bpftools-bench-")
    path = os.path.join(tmp, "target")
    base, traced = [], []
    for i in range(args.rounds):
        base.append(run_workload(path, args.calls))
        ready = os.path.join(tmp, "ready-%d" % i)
        tool = start_tool(ready)
        try:
            traced.append(run_workload(path, args.calls))
        finally:
            tool.send_signal(signal.SIGTERM)
            tool.wait(30)
    os.unlink(path)
    result = {
        "calls_per_run": args.calls, "rounds": args.rounds,
        "median_s_without": statistics.median(base), "median_s_with": statistics.median(traced),
        "ratio_with_over_without": statistics.median(traced) / statistics.median(base),
        "runs_without": base, "runs_with": traced,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
