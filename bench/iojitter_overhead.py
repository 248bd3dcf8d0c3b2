#!/usr/bin/env python3
"""Writer throughput with and without ``bpftools iojitter`` attached, side by side in one run.

The workload is the incident's: a process writing CHUNK bytes then fsync(), in a loop, to a file on
ext4 on a loop device (image on tmpfs), so every fsync goes through the writeback path iojitter
times. Arms alternate (A B, B A, ...) so drift hits both; each arm's figure is the median of its
repeats, the spread is (max - min) / median. The ratio is B / A (1.0 = no cost). The rounds' paired
ratios give a geometric mean and its 95% bootstrap interval: the 5% target is shown only when the whole
interval stays above 0.95.

    sudo python3 bench/iojitter_overhead.py                    # 5 repeats of 5 s per arm
    sudo python3 bench/iojitter_overhead.py --repeats 9 --seconds 10 --json
    sudo python3 bench/iojitter_overhead.py --tool none        # the control: no probe in the B arm
    python3 lab/run.py bookworm --exec 'python3 bench/iojitter_overhead.py --mode kprobe'   # real kernel

Needs root, mkfs.ext4, losetup and mount. ``--mode`` is iojitter's (auto: kprobes where they exist).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import benchlib

WRITER = r"""
import os, sys, time
path, chunk, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
data = os.urandom(chunk)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
written = fsyncs = 0
start = time.monotonic()
while time.monotonic() - start < seconds:
    if fsyncs % 64 == 0:
        os.lseek(fd, 0, os.SEEK_SET)   # rewrite the same 64 chunks: the disk never fills
    os.write(fd, data)
    os.fsync(fd)
    written += chunk
    fsyncs += 1
elapsed = time.monotonic() - start
os.close(fd)
print(written, fsyncs, elapsed)
"""


class Disk(object):
    """ext4 on a loop device whose image lives on tmpfs; removed on exit."""

    def __init__(self, mib: int = 256) -> None:
        self.mib = mib
        self.base = tempfile.mkdtemp(prefix="bpftools-bench-", dir="/dev/shm")
        self.mnt = os.path.join(self.base, "mnt")
        self.dev: Optional[str] = None

    def __enter__(self) -> "Disk":
        for module in ("loop", "crc32c_generic", "ext4"):   # built in, or modules (the lab's kernels)
            subprocess.call(["modprobe", module], stderr=subprocess.DEVNULL)
        image = os.path.join(self.base, "disk.img")
        with open(image, "wb") as f:
            f.truncate(self.mib << 20)
        subprocess.check_call(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image])
        self.dev = subprocess.check_output(["losetup", "--find", "--show", image], universal_newlines=True).strip()
        os.mkdir(self.mnt)
        subprocess.check_call(["mount", self.dev, self.mnt])
        return self

    def __exit__(self, *exc: Any) -> None:
        subprocess.call(["umount", self.mnt])
        if self.dev:
            subprocess.call(["losetup", "-d", self.dev])
        shutil.rmtree(self.base, ignore_errors=True)


def write_for(path: str, chunk: int, seconds: float) -> float:
    """Run the writer for SECONDS; its throughput in MiB/s of fsynced data."""
    out = subprocess.check_output([sys.executable, "-c", WRITER, path, str(chunk), str(seconds)],
                                  universal_newlines=True)
    written, _, elapsed = out.split()
    return int(written) / float(elapsed) / (1 << 20)


class MeasuredWrites(object):
    """One arm's run of the writer: SETTLE seconds unmeasured, then SECONDS measured (MiB/s); with a tool's
    pid, that tool's BPF run time over the measured seconds is appended to ``bpf_runs``."""

    def __init__(self, target: str, chunk: int, seconds: float, settle: float) -> None:
        self.target, self.chunk, self.seconds, self.settle = target, chunk, seconds, settle
        self.bpf_runs = []  # type: List[Dict[str, Tuple[int, int]]]   # {program: (runs, ns)} per with-run

    def __call__(self, tool_pid: Optional[int] = None) -> float:
        if self.settle > 0:
            write_for(self.target, self.chunk, self.settle)
        before = benchlib.bpf_run_stats(tool_pid) if tool_pid else {}
        mib_s = write_for(self.target, self.chunk, self.seconds)
        if tool_pid:
            self.bpf_runs.append(benchlib.runs_by_program(before, benchlib.bpf_run_stats(tool_pid)))
        return mib_s

    def beside_idle_process(self) -> float:
        """The control: a process started, left idle and stopped around the run, as a tool is."""
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        try:
            return self()
        finally:
            proc.terminate()
            proc.wait()


def events_recorded(record: str) -> int:
    """How many events a recording holds besides its mode record (writebacks over -m, sleeps, failures)."""
    from bpftools.recording import read_recording
    return sum(1 for e in read_recording(record).events if e.get("type") != "mode")


def run(repeats: int, seconds: float, chunk: int, tool_name: str, mode: str, min_ms: float,
        settle: float = 0.0) -> Dict[str, Any]:
    """Alternate the arms REPEATS times; medians, ratio, spreads, per-round ratios and what the tool saw.

    Each measured run is preceded by SETTLE seconds of unmeasured writing, in both arms: attaching
    compiles a BPF program, and what that evicts (page cache; under QEMU's TCG, the translated code)
    must not be charged to the probes."""
    recorded: List[int] = []
    with Disk() as disk, benchlib.BpfStats():
        target = os.path.join(disk.mnt, "data")
        record = os.path.join(disk.base, "iojitter.jsonl")
        args = [tool_name, "--mode", mode, "-d", "3600", "--record", record, "--json"] + (
            ["-m", str(min_ms)] if tool_name != "slabfail" else [])
        write_for(target, chunk, 1.0)   # warm-up: allocate blocks, fill caches
        measured = MeasuredWrites(target, chunk, seconds, settle)

        def without() -> float:
            return measured()

        def with_placebo() -> float:
            try:
                return measured.beside_idle_process()
            finally:
                recorded.append(0)

        def with_tool() -> float:
            if os.path.exists(record):
                os.remove(record)
            # cwd "/": not a source tree whose bpftools/ would shadow the installed package
            tool = benchlib.Tool(args, disk.base, timeout=600, cwd="/")
            try:
                return measured(tool.pid)
            finally:
                code, err = tool.stop(timeout=600)
                if code != 0:
                    raise SystemExit("the tool failed (%d): %s" % (code, err))
                recorded.append(events_recorded(record))

        arms = benchlib.interleaved(repeats, [("without", without),
                                              ("with", with_placebo if tool_name == "none" else with_tool)])
    without_mib, spread_without = benchlib.median_spread(arms["without"])
    with_mib, spread_with = benchlib.median_spread(arms["with"])
    per_round = [w / wo for w, wo in zip(arms["with"], arms["without"])]
    mean, low, high = benchlib.ratio_interval(per_round)
    bpf_runs = measured.bpf_runs
    runs = [sum(n for n, _ in programs.values()) for programs in bpf_runs]
    run_ns = [sum(t for _, t in programs.values()) for programs in bpf_runs]
    by_program = benchlib.programs_total(bpf_runs)   # program name: (runs, ns) over all with-runs
    return {"kernel": os.uname().release, "tool": tool_name, "mode": mode, "min_ms": min_ms, "repeats": repeats,
            "seconds": seconds, "chunk": chunk, "settle": settle,
            "per_round_ratios": [round(r, 3) for r in per_round],
            "median_per_round_ratio": round(statistics.median(per_round), 4),
            "geomean_per_round_ratio": round(mean, 4), "ratio_ci95": [round(low, 4), round(high, 4)],
            "target_shown": low >= 0.95,
            "mib_s_without": round(without_mib, 2), "mib_s_with": round(with_mib, 2),
            "ratio": round(with_mib / without_mib, 4), "slowdown_pct": round((1 - with_mib / without_mib) * 100, 2),
            "spread_without": round(spread_without, 3), "spread_with": round(spread_with, 3),
            "runs_without": [round(v, 2) for v in arms["without"]], "runs_with": [round(v, 2) for v in arms["with"]],
            "events_recorded": recorded,
            # the probes' own CPU time (BPF program run time, not the trap or trampoline around it)
            "bpf_runs_per_s": [round(n / seconds) for n in runs],
            "bpf_cpu_pct": [round(ns / (seconds * 1e9) * 100, 3) for ns in run_ns],
            "bpf_ns_per_run": [round(ns / n) if n else 0 for ns, n in zip(run_ns, runs)],
            # where those runs went: per program, runs per measured second and ns per run (all with-runs)
            "bpf_by_program": dict((name, {"runs_per_s": round(n / (seconds * repeats)),
                                           "ns_per_run": round(t / n) if n else 0})
                                   for name, (n, t) in by_program.items() if n)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per arm (5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per run (5)")
    parser.add_argument("--chunk", type=int, default=1 << 20, help="bytes per write+fsync (1 MiB)")
    parser.add_argument("--tool", choices=("iojitter", "slabfail", "mempoolwait", "writeslow", "none"),
                        default="iojitter", help="the tool attached in the B arm (iojitter; the others are its "
                        "parts; none: an idle process instead, the control that shows what the procedure alone gives)")
    parser.add_argument("--mode", choices=("auto", "kprobe", "tracepoint"), default="auto")
    parser.add_argument("--min-ms", type=float, default=100.0,
                        help="iojitter -m: writebacks this slow are reported (100, its default; 0 = all)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds of unmeasured writing before each measured run, in both arms (3)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (loop device, mount, BPF)")
    if args.repeats < 2 or args.seconds <= 0 or args.chunk <= 0 or args.settle < 0:
        parser.error("--repeats >= 2, --seconds > 0, --chunk > 0 and --settle >= 0")
    result = run(args.repeats, args.seconds, args.chunk, args.tool, args.mode, args.min_ms, args.settle)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print("kernel %s, %s --mode %s -m %g, %d x %.0f s per arm, %d-byte write+fsync"
              % (result["kernel"], args.tool, args.mode, args.min_ms, args.repeats, args.seconds, args.chunk))
        print("%-16s %10s %8s" % ("arm", "MiB/s", "spread"))
        print("%-16s %10.2f %8.3f" % ("without", result["mib_s_without"], result["spread_without"]))
        print("%-16s %10.2f %8.3f" % ("with " + args.tool, result["mib_s_with"], result["spread_with"]))
        print("ratio with/without %.4f (slowdown %.2f%%); per round %s; events recorded per run %s"
              % (result["ratio"], result["slowdown_pct"], result["per_round_ratios"], result["events_recorded"]))
        print("the tool's BPF programs per measured run: %s runs/s, %s%% of one CPU, %s ns per run"
              % (result["bpf_runs_per_s"], result["bpf_cpu_pct"], result["bpf_ns_per_run"]))
        for name, row in sorted(result["bpf_by_program"].items(), key=lambda kv: -kv[1]["runs_per_s"]):
            print("  %-16s %8d runs/s %6d ns per run" % (name, row["runs_per_s"], row["ns_per_run"]))
        print("per-round ratios: geometric mean %.4f, 95%% interval %.4f-%.4f: the 5%% target is %s"
              % (result["geomean_per_round_ratio"], result["ratio_ci95"][0], result["ratio_ci95"][1],
                 "shown (the interval stays above 0.95)" if result["target_shown"] else "not shown"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
