#!/usr/bin/env python3
"""`bpftools doctor --log` on big kernel logs: wall time and peak memory for 256 MiB, 512 MiB and 1 GiB.

Each log is generated into a temporary file: noise (the lines of a busy node's dmesg: audit, TCP,
systemd, device and cgroup messages with monotonic stamps) and, as its LAST line, a real
``unregister_netdevice: waiting for eth0 to become free. Usage count = 1``. Each size runs
``bpftools doctor --log FILE --json`` as a subprocess; figures: wall time, MiB/s, the child's peak
RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``: one child per process, so each size runs in a fresh
process) and whether the last line's finding was reported. Acceptance: peak RSS <= 200 MiB at
every size, the finding reported, and time about linear in size (the MiB/s stay level).

    .venv/bin/python bench/doctor_biglog.py [--mib 256 --mib 512 --mib 1024] [--json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import benchlib

LAST_LINE = "unregister_netdevice: waiting for eth0 to become free. Usage count = 1"
NOISE = (
    "audit: type=1400 audit(1700000000.123:%d): apparmor=\"DENIED\" operation=\"open\" profile=\"cri-containerd\"",
    "TCP: request_sock_TCP: Possible SYN flooding on port %d. Sending cookies.",
    "systemd[1]: Started cri-containerd-%064d.scope - libcontainer container.",
    "IPv6: ADDRCONF(NETDEV_CHANGE): veth%08x: link becomes ready",
    "cni0: port %d(vethabc) entered forwarding state",
    "EXT4-fs (sda1): mounted filesystem with ordered data mode. Quota mode: none. (%d)",
    "memory: usage 1048576kB, limit 1048576kB, failcnt %d",
)
LIMIT_MIB = 200


def write_log(path: str, size: int) -> int:
    """A log of about SIZE bytes at PATH whose last line is the wait message; its size in bytes."""
    block = []
    for i in range(4096):
        block.append("[%6d.%06d] %s\n" % (i // 10, i * 37 % 1000000, NOISE[i % len(NOISE)] % i))
    chunk = "".join(block).encode("ascii")
    with open(path, "wb") as f:
        for _ in range(max(1, -(-size // len(chunk)))):
            f.write(chunk)
        f.write(("[99999.000000] %s\n" % LAST_LINE).encode("ascii"))
        return f.tell()


def run_one(path: str) -> Dict[str, Any]:
    """Run doctor on PATH in a fresh process that reports its only child's peak RSS."""
    code = ("import json, resource, subprocess, sys, time; t = time.monotonic(); "
            "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE); "
            "print(json.dumps({'seconds': time.monotonic() - t, 'code': p.returncode, 'out': p.stdout.decode(), "
            "'err': p.stderr.decode(), 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    proc = subprocess.run([sys.executable, "-c", code] + benchlib.bpftools("doctor", "--log", path, "--json"),
                          stdout=subprocess.PIPE, check=True, cwd=benchlib.ROOT)
    return json.loads(proc.stdout.decode())


def last_line_found(out: str) -> bool:
    """True when doctor's JSON reports eth0's wait with usage count 1."""
    try:
        report = json.loads(out)
    except ValueError:
        return False
    waits = [f for f in report.get("findings", []) if f.get("kind") == "netdev_unregister_wait"]
    return any(d.get("name") == "eth0" and d.get("last_usage_count") == 1 for f in waits for d in f["devices"])


def run(sizes_mib: List[int], directory: Optional[str] = None) -> List[Dict[str, Any]]:
    """Generate, analyse and delete one log per size."""
    out = []
    for mib in sizes_mib:
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            path = os.path.join(tmp, "kern.log")
            size = write_log(path, mib * 2 ** 20)
            r = run_one(path)
        out.append({"mib": size / 2.0 ** 20, "seconds": r["seconds"], "mib_per_s": size / 2.0 ** 20 / r["seconds"],
                    "peak_rss_mib": r["maxrss_kib"] / 1024.0, "exit_code": r["code"],
                    "found_last_line": last_line_found(r["out"]), "stderr": r["err"].strip()})
    return out


def table(results: List[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """The rows of the README table."""
    return [("doctor --log: %.0f MiB kernel log, last line a netdev wait" % r["mib"], "%.1f s" % r["seconds"],
             "%.1f MiB/s; peak RSS %.0f MiB (limit %d); last-line finding %s; exit %d" % (
                 r["mib_per_s"], r["peak_rss_mib"], LIMIT_MIB, "reported" if r["found_last_line"] else "MISSING",
                 r["exit_code"])) for r in results]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, action="append", help="log sizes in MiB (256, 512, 1024)")
    parser.add_argument("--dir", help="where to write the logs (default: the temp directory)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    sizes = args.mib or [256, 512, 1024]
    if min(sizes) < 1:
        parser.error("--mib >= 1")
    results = run(sizes, args.dir)
    benchlib.emit({"bench": "doctor_biglog", "result": results, "table": table(results)}, args.json)
    ok = all(r["found_last_line"] and r["peak_rss_mib"] <= LIMIT_MIB for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
