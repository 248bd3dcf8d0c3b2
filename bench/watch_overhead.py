#!/usr/bin/env python3
"""What leaving ``bpftools watch`` on costs: the fsync writer's throughput without it, with a control
(an idle process) and with watch attached, side by side in one run; the BPF programs' own CPU time;
and watch's peak RSS under an event flood.

The workload is iojitter_overhead's (a process writing 1 MiB then fsync() in a loop on ext4 on a loop
device). Arms alternate in each round (A B C, C B A, ...); each arm's figure is the median of its
repeats; the ratios to the "without" arm of the same round give a geometric mean and its 95%
bootstrap interval. BPF CPU time comes from the kernel's own accounting (sysctl
kernel.bpf_stats_enabled, the run_time_ns of each program watch holds), over the measured seconds.
The flood: watch with ``--slow-ms 0`` (every writeback is an event) while the writer runs and a second
process writes a cgroup's memory.kmem.limit_in_bytes as fast as it can; the peak is VmHWM.
The size cap after 1,000 triggers is a host test (tests/test_watch_bundles.py).

    sudo .venv/bin/python bench/watch_overhead.py                   # 5 rounds of 5 s per arm, 10 s flood
    python3 lab/run.py bookworm --exec 'python3 bench/watch_overhead.py --json'   # a real kernel, kprobes

Needs root, mkfs.ext4, losetup, mount and cgroup v1's memory controller (for the flood's kmem writes).
"""
import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import benchlib
from iojitter_overhead import Disk, MeasuredWrites, write_for

MEMCG = "/sys/fs/cgroup/memory"
KMEM_FLOOD = r"""
import os, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_WRONLY)
writes, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    try:
        os.pwrite(fd, b"-1", 0)
    except OSError:
        pass
    writes += 1
print(writes)
"""


def watch_args(bundle_dir: str, mode: str, slow_ms: float) -> List[str]:
    return ["watch", "--mode", mode, "--bundle-dir", bundle_dir, "--metrics-addr", "127.0.0.1:0",
            "--slow-ms", str(slow_ms), "-d", "3600"]


def overhead(disk: Disk, repeats: int, seconds: float, chunk: int, settle: float, mode: str) -> Dict[str, Any]:
    """Three arms per round: without, the control (an idle process), with watch."""
    target = os.path.join(disk.mnt, "data")
    write_for(target, chunk, 1.0)
    measured = MeasuredWrites(target, chunk, seconds, settle)

    def with_watch() -> float:
        tool = benchlib.Tool(watch_args(os.path.join(disk.base, "bundles"), mode, 100.0), disk.base, cwd="/")
        try:
            return measured(tool.pid)
        finally:
            code, err = tool.stop()
            if code != 0:
                raise SystemExit("watch failed (%d): %s" % (code, err))

    arms = benchlib.interleaved(repeats, [("without", measured), ("control", measured.beside_idle_process),
                                          ("with", with_watch)])
    out = {}  # type: Dict[str, Any]
    for arm in ("control", "with"):
        per_round = [w / wo for w, wo in zip(arms[arm], arms["without"])]
        mean, low, high = benchlib.ratio_interval(per_round)
        out[arm] = {"mib_s": round(benchlib.median_spread(arms[arm])[0], 2),
                    "spread": round(benchlib.median_spread(arms[arm])[1], 3),
                    "per_round_ratios": [round(r, 3) for r in per_round],
                    "geomean_ratio": round(mean, 4), "ratio_ci95": [round(low, 4), round(high, 4)]}
    out["without"] = {"mib_s": round(benchlib.median_spread(arms["without"])[0], 2),
                      "spread": round(benchlib.median_spread(arms["without"])[1], 3)}
    run_ns = [sum(t for _, t in programs.values()) for programs in measured.bpf_runs]
    by_program = benchlib.programs_total(measured.bpf_runs)
    out["bpf_cpu_pct_of_one_cpu"] = [round(ns / (seconds * 1e9) * 100, 4) for ns in run_ns]
    out["bpf_by_program"] = dict((name, {"runs_per_s": round(n / (seconds * repeats)),
                                         "ns_per_run": round(t / n) if n else 0})
                                 for name, (n, t) in sorted(by_program.items()) if n)
    return out


def flood(disk: Disk, seconds: float, chunk: int, mode: str) -> Dict[str, Any]:
    """Peak RSS of watch while every writeback is an event and (with cgroup v1's memory controller) kmem
    limit writes come as fast as a process can make them."""
    cgroup = os.path.join(MEMCG, "bpftools-bench-%d" % os.getpid()) if os.path.isdir(MEMCG) else None
    if cgroup:
        os.mkdir(cgroup)
    tool = benchlib.Tool(watch_args(os.path.join(disk.base, "bundles"), mode, 0.0), disk.base, cwd="/")
    try:
        start_kib = benchlib.proc_status_kib(tool.pid, "VmRSS")
        writer = subprocess.Popen([sys.executable, "-c", KMEM_FLOOD, os.path.join(cgroup, "memory.kmem.limit_in_bytes"),
                                   str(seconds)], stdout=subprocess.PIPE, universal_newlines=True) if cgroup else None
        mib_s = write_for(os.path.join(disk.mnt, "flood"), chunk, seconds)
        kmem_writes = int(writer.communicate()[0]) if writer else None
        peak_kib = benchlib.proc_status_kib(tool.pid, "VmHWM")
    finally:
        code, err = tool.stop()
        if cgroup:
            os.rmdir(cgroup)
    if code != 0:
        raise SystemExit("watch failed (%d): %s" % (code, err))
    return {"seconds": seconds, "kmem_writes_per_s": round(kmem_writes / seconds) if kmem_writes else None,
            "writer_mib_s": round(mib_s, 2), "rss_at_start_mib": round(start_kib / 1024.0, 1),
            "peak_rss_mib": round(peak_kib / 1024.0, 1)}


def clocksource() -> str:
    """The kernel's clocksource: every bpf_ktime_get_ns() reads it (under QEMU's TCG, hpet: a device
    access that costs a probe far more than its own instructions)."""
    with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
        return f.read().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds (5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measured run (5)")
    parser.add_argument("--settle", type=float, default=3.0, help="unmeasured seconds before each run (3)")
    parser.add_argument("--chunk", type=int, default=1 << 20, help="bytes per write+fsync (1 MiB)")
    parser.add_argument("--flood", type=float, default=10.0, help="seconds of event flood (10; 0: none)")
    parser.add_argument("--mode", choices=("auto", "tracepoint"), default="auto", help="watch --mode (auto)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (loop device, mount, BPF)")
    with Disk() as disk, benchlib.BpfStats():
        result = {"kernel": os.uname().release, "clocksource": clocksource(), "mode": args.mode, "repeats": args.repeats,
                  "seconds": args.seconds,
                  "overhead": overhead(disk, args.repeats, args.seconds, args.chunk, args.settle, args.mode)}
        if args.flood > 0:
            result["flood"] = flood(disk, args.flood, args.chunk, args.mode)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    o = result["overhead"]
    print("kernel %s (clocksource %s), watch --mode %s, %d rounds x %.0f s per arm" % (
        result["kernel"], result["clocksource"], args.mode, args.repeats, args.seconds))
    print("%-10s %8s %7s %s" % ("arm", "MiB/s", "spread", "ratio to without: geomean [95% interval]"))
    print("%-10s %8.2f %7.3f" % ("without", o["without"]["mib_s"], o["without"]["spread"]))
    for arm in ("control", "with"):
        print("%-10s %8.2f %7.3f %.4f [%.4f-%.4f]" % (arm, o[arm]["mib_s"], o[arm]["spread"], o[arm]["geomean_ratio"],
                                                     o[arm]["ratio_ci95"][0], o[arm]["ratio_ci95"][1]))
    print("watch's BPF programs: %s %% of one CPU per measured run" % o["bpf_cpu_pct_of_one_cpu"])
    for name, row in sorted(o["bpf_by_program"].items(), key=lambda kv: -kv[1]["runs_per_s"]):
        print("  %-16s %8d runs/s %6d ns per run" % (name, row["runs_per_s"], row["ns_per_run"]))
    if "flood" in result:
        f = result["flood"]
        print("flood %.0f s: every writeback an event, %s kmem writes/s: peak RSS %.1f MiB (%.1f at start)"
              % (f["seconds"], f["kmem_writes_per_s"], f["peak_rss_mib"], f["rss_at_start_mib"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
