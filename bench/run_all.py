#!/usr/bin/env python3
"""Run every benchmark once and print one markdown table (the README's "Performance" table).

Each bench runs in its own process with ``--json``; its ``table`` rows are printed on stderr as soon as
it finishes (a bench that fails becomes a row saying so), and the whole table on stdout at the end. The
machine's load average before and after is printed with the table: on a shared machine it says how
much to trust the ratios (each of which comes from one interleaved run). Needs root.

    sudo .venv/bin/python bench/run_all.py            # the README's figures (about 15-25 min on 2 cores)
    sudo .venv/bin/python bench/run_all.py --quick    # small sizes, a few minutes
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import benchlib

HERE = os.path.dirname(os.path.abspath(__file__))
# (script, full arguments, --quick arguments)
BENCHES = [
    ("tool_overhead.py", [], ["--rounds", "2", "--calls", "10000"]),
    ("startup.py", [], ["--rounds", "1"]),
    ("analysis_throughput.py", ["--events", "100000", "--events", "300000", "--events", "1000000",
                                "--budget", "300"], ["--events", "50000", "--budget", "120"]),
    ("flamegraph_scale.py", [], ["--stacks", "10000"]),
    ("memory_flood.py", [], ["--seconds", "3"]),
]
# Another engineer's bench of the fsync-on-ext4 workload (writeback tracepoints), when present.
FSYNC_BENCH = "iojitter_overhead.py"
FSYNC_TOOLS = ("writeslow", "iojitter")


def run_bench(script: str, args: Sequence[str]) -> Dict[str, Any]:
    """One bench's JSON result."""
    out = subprocess.check_output([sys.executable, os.path.join(HERE, script)] + list(args) + ["--json"],
                                  cwd=benchlib.ROOT, universal_newlines=True)
    return json.loads(out.strip().splitlines()[-1])


def fsync_rows(quick: bool) -> List[Tuple[str, str, str]]:
    """Rows of iojitter_overhead.py (throughput ratio, turned into a time ratio like tool_overhead's)."""
    rows = []
    for tool in FSYNC_TOOLS:
        args = ["--tool", tool, "--mode", "tracepoint"] + (["--repeats", "2", "--seconds", "2"] if quick else [])
        r = run_bench(FSYNC_BENCH, args)
        rows.append(("overhead: %s --mode tracepoint on 1 MiB write+fsync to ext4 (time with/without)" % tool,
                     "%.2fx" % (1.0 / r["ratio"]),
                     "spread without %.0f%%, with %.0f%%; %d repeats x %g s (bench/%s)"
                     % (100 * r["spread_without"], 100 * r["spread_with"], r["repeats"], r["seconds"], FSYNC_BENCH)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a quick look, not the README's figures")
    parser.add_argument("--skip", action="append", default=[], metavar="SCRIPT", help="leave out a bench")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (BPF)")
    load_before = os.getloadavg()
    start = time.monotonic()
    rows = []  # type: List[Tuple[str, str, str]]
    steps: List[Tuple[str, Callable[[], List[Tuple[str, str, str]]]]] = []
    for script, full, quick in BENCHES:
        steps.append((script, lambda s=script, a=(quick if args.quick else full): [
            tuple(r) for r in run_bench(s, a)["table"]]))
        if script == "tool_overhead.py" and os.path.exists(os.path.join(HERE, FSYNC_BENCH)):
            steps.append((FSYNC_BENCH, lambda: fsync_rows(args.quick)))
    for script, step in steps:
        if script in args.skip:
            continue
        try:
            got = step()
        except subprocess.CalledProcessError as err:
            got = [("%s" % script, "failed", "exit %d" % err.returncode)]
        rows += got
        sys.stderr.write(benchlib.markdown_table(("figure", "value", "noise / detail"), got) + "\n")
    load_after = os.getloadavg()
    print("kernel %s, %d CPUs, load average %.1f before / %.1f after, %.0f s"
          % (os.uname().release, os.cpu_count() or 0, load_before[0], load_after[0], time.monotonic() - start))
    print()
    print(benchlib.markdown_table(("figure", "value", "noise / detail"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
