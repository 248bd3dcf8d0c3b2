#!/usr/bin/env python3
"""How long finding the inlined dev_hold/dev_put sites takes on one ELF file: cold, then cached.

Cold is ``discover_all`` (pyelftools over the candidate units) run in a fresh process, so nothing
is warm but the page cache; cached is ``cached_discovery`` answered from the JSON file written by
a first call, also in fresh processes. Wall and CPU seconds are both shown: on a shared machine
the CPU time is the steadier. Prints seconds, the ratio and what was found
(sites per helper, sites without a usable device location, by reason). The cache goes to a
temporary directory, never the user's.

    .venv/bin/python bench/inline_sites_discovery.py /usr/lib/debug/boot/vmlinux-$(uname -r) [--rounds 3]
    .venv/bin/python bench/inline_sites_discovery.py /var/cache/bpftools-lab/dbg/.../vmlinux-6.1.0-56-amd64
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a child process: one measurement, printed as JSON.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from bpftools import inline_sites
mode, elf, cache = sys.argv[2], sys.argv[3], sys.argv[4]
start, cpu = time.perf_counter(), time.process_time()
if mode == "cold":
    found = inline_sites.discover_all(elf)
    cached = False
else:
    found, cached = inline_sites.cached_discovery(elf, cache)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
helpers = {}
for site in found.sites:
    helpers[site.helper] = helpers.get(site.helper, 0) + 1
print(json.dumps({"seconds": seconds, "cpu": cpu, "cached": cached, "sites": len(found.sites), "helpers": helpers,
                  "no_location": found.no_location, "skipped": found.skipped,
                  "multi_range": found.multi_range, "at_entry": found.at_entry,
                  "units": [found.units_parsed, found.units_total]}))
"""


def measure(mode: str, elf: str, cache: str) -> dict:
    out = subprocess.check_output([sys.executable, "-c", CHILD, ROOT, mode, elf, cache], universal_newlines=True)
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("elf", help="vmlinux with DWARF, or a module .ko built with -g")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="bpftools-inline-bench-")
    try:
        cold = [measure("cold", args.elf, cache) for _ in range(args.rounds)]
        first = measure("cached", args.elf, cache)          # fills the cache (a cold run plus the write)
        if first["cached"]:
            raise SystemExit("the temporary cache already had an entry")
        warm = [measure("cached", args.elf, cache) for _ in range(args.rounds)]
        if not all(r["cached"] for r in warm):
            raise SystemExit("no cache hit: does %s have a build id?" % args.elf)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cold_s = statistics.median(r["seconds"] for r in cold)
    warm_s = statistics.median(r["seconds"] for r in warm)
    cold_cpu = statistics.median(r["cpu"] for r in cold)
    warm_cpu = statistics.median(r["cpu"] for r in warm)
    result = cold[0]
    print("file:          %s (%.0f MiB)" % (args.elf, os.path.getsize(args.elf) / 2 ** 20))
    print("units parsed:  %d of %d" % tuple(result["units"]))
    print("cold:          %.2f s wall, %.2f s CPU (median of %d: %s)"
          % (cold_s, cold_cpu, len(cold), ", ".join("%.2f" % r["seconds"] for r in cold)))
    print("cache fill:    %.2f s" % first["seconds"])
    print("cached:        %.3f s wall, %.3f s CPU (median of %d)" % (warm_s, warm_cpu, len(warm)))
    print("load average:  %.1f (%d CPUs)" % (os.getloadavg()[0], os.cpu_count() or 0))
    print("cold / cached: %.0fx" % (cold_s / warm_s if warm_s else float("inf")))
    print("sites:         %d  %s" % (result["sites"], json.dumps(result["helpers"], sort_keys=True)))
    no_location = result["no_location"]
    print("no location:   %d  %s" % (sum(no_location.values()), json.dumps(no_location, sort_keys=True)))
    print("not reported:  %s" % json.dumps(result["skipped"], sort_keys=True))
    print("calls with several sites (duplicated code): %d" % result["multi_range"])
    print("sites at a call's entry (no per-cpu inc/dec): %d" % result["at_entry"])


if __name__ == "__main__":
    main()
