#!/usr/bin/env python3
"""Overhead of incident 2's live tools on network namespace churn, with vs without each one attached.

The workload is ``bpftools repro netns-churn --count N``: per round three namespaces, two veth pairs
(four devices named ``bpft-*``), a PMTU route exception, teardown. Its figure is the churn's own time
for the N rounds (from its JSON summary: start-up excluded). The B arms, each a fresh attach per run:

- ``refleak --dev 'bpft-*'``: every reference taken and dropped on the churn's devices (watchpoints,
  holder kprobes); it is stopped once it has seen the run's devices freed (untimed);
- ``netdevwait --mode kprobe --dev 'bpft-*'``: its kprobes on raw_notifier_call_chain and free_netdev;
  no device waits, so no notifier subscriber is probed;
- ``netdevwait-subscribers``: the same, with one device (``bpft-stuck``) left waiting in unregister by
  the bpftools_devref injector before the churn, so every callback of its notifier chain is kprobed
  (entry and return) while the churn runs: the cost of the subscriber probes on every notifier call;
- ``netdevwait --mode log --dev 'bpft-*'``: follows /dev/kmsg only (no BPF).

All arms alternate in one interleaved run (A B C D, D C B A, ...) against one shared baseline; the
ratio is median(with) / median(without) (1.00 = no cost), the range that of the per-round ratios, the
spread (max - min) / median of each arm. What each tool saw is reported with it (devices, freed,
balanced, watched, leaking; the BPF programs it held; netdevwait's waits), so a reader can tell it
was working during the arm. Needs root, kprobes, veth and iproute2: on a machine without kprobes
it exits 5 with one line; run it in the lab::

    python3 lab/run.py bookworm --exec 'python3 bench/netns_overhead.py'
    sudo .venv/bin/python bench/netns_overhead.py [--rounds 3] [--count 4] [--only refleak] [--json]

In the bookworm VM (TCG, 2 CPUs) a churn round takes about 3-4 s, refleak attaches in about 100 s and
netdevwait in about 40 s: the default run takes about 12 minutes plus the boot.
"""
import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import benchlib

PATTERN = "bpft-*"          # bpftools.repro.netns_churn names every device bpft-<pid>-<round><role>
DEVICES_PER_ROUND = 4
# (key, bpftools arguments, needs kprobes)
ARMS = [
    ("refleak", ["refleak", "--dev", PATTERN], True),
    ("netdevwait", ["netdevwait", "--mode", "kprobe", "--dev", PATTERN], True),
    ("netdevwait-log", ["netdevwait", "--mode", "log", "--dev", PATTERN], False),
    ("netdevwait-subscribers", ["netdevwait", "--mode", "kprobe", "--dev", PATTERN], True),
]
STUCK, STUCK_PEER = "bpft-stuck", "bpft-stuckp"
SUBSCRIBERS_TIMEOUT = 300.0  # the stuck device's chain walked and its callbacks probed (TCG: slow)
ATTACH_TIMEOUT = 900.0      # refleak compiles and attaches for minutes under the lab's TCG
FREE_TIMEOUT = 120.0        # refleak: wait this long for the run's devices to be freed (untimed)
LAB_HINT = "run it in the lab: python3 lab/run.py bookworm --exec 'python3 bench/netns_overhead.py'"


def churn(count: int) -> Dict[str, Any]:
    """One ``repro netns-churn`` of COUNT rounds; its JSON summary (SystemExit if it failed)."""
    proc = subprocess.Popen(benchlib.bpftools("repro", "netns-churn", "--count", str(count), "--duration", "3600",
                                              "--json"),
                            cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    out, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise SystemExit("bpftools repro netns-churn exited %d: %s" % (proc.returncode, err.strip()[-2000:]))
    summary = json.loads(out)
    if summary["stopped_by"] != "count":
        raise SystemExit("netns-churn stopped by %s after %d rounds" % (summary["stopped_by"],
                                                                         summary["rounds_completed"]))
    return summary


def frees_recorded(record: str) -> int:
    """How many ``free`` records refleak's recording holds so far."""
    try:
        with open(record) as f:
            return f.read().count('"type": "free"')
    except OSError:
        return 0


def refleak_saw(out_path: str, devices_created: int) -> Dict[str, Any]:
    """What refleak's --json result says about the run's devices."""
    with open(out_path) as f:
        result = json.loads(f.read())
    devices = [d for d in result["devices"] if d["name"].startswith(PATTERN[:-1])]
    watch = [s for d in devices for s in d["strategies"] if s["strategy"] == "watch"]
    return {"devices_created": devices_created, "devices": len(devices),
            "freed": sum(1 for d in devices if d["state"] == "freed"),
            "balanced": sum(1 for d in devices if d["verdict"] == "balanced"),
            "watched": sum(1 for d in devices if (d["watch"] or {}).get("armed")),
            "watch_holds": sum(s["holds"] for s in watch), "watch_puts": sum(s["puts"] for s in watch),
            "leaking": result["leaking"], "lost": result["lost"], "strategies": result["strategies"]}


def netdevwait_saw(out_path: str, devices_created: int) -> Dict[str, Any]:
    """What netdevwait's --json lines say: its mode, the updates and the waits of its summary, and (kprobe
    mode) the subscribers of the chains it timed (their callbacks probed) with their calls."""
    with open(out_path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    summary = [x for x in lines if x.get("type") == "netdev_wait_summary"][-1]
    saw = {"devices_created": devices_created, "mode": summary["mode"],
           "updates": sum(1 for x in lines if x.get("type") == "netdev_wait"), "waits": len(summary["episodes"])}
    if summary["mode"] == "kprobe":
        timed = [s for c in summary.get("chains", []) for s in c["subscribers"] if s["calls"]]
        saw.update(subscribers_timed=len(timed), subscriber_calls=sum(s["calls"] for s in timed))
    return saw


def calls_recorded(record: str) -> int:
    """How many subscriber calls netdevwait's recording holds so far."""
    try:
        with open(record) as f:
            return f.read().count('"type": "notifier_call"')
    except OSError:
        return 0


class StuckDevice(object):
    """STUCK waiting in unregister, on demand: bpftools_devref (built and loaded once) holds it and
    ``ip link del`` waits in netdev_run_todo, in its own process, so namespace cleanup and the churn go
    on; ``release()`` puts the reference and the deletion ends; ``close()`` unloads the module."""

    def __init__(self) -> None:
        sys.path.insert(0, os.path.join(benchlib.ROOT, "tests", "kernel"))
        from injectors import Injector      # lazy: the lab's module builder, for this arm only
        self.devref = Injector("bpftools_devref").load()
        self.deleter = None  # type: Optional[subprocess.Popen]

    def start(self) -> None:
        subprocess.call(["ip", "link", "del", STUCK], stderr=subprocess.DEVNULL)
        subprocess.check_call(["ip", "link", "add", STUCK, "type", "veth", "peer", "name", STUCK_PEER])
        self.devref.command("hold " + STUCK)
        self.deleter = subprocess.Popen(["ip", "link", "del", STUCK])

    def release(self) -> None:
        if self.deleter is not None:
            self.devref.command("put")
            self.deleter.wait(timeout=120)
            self.deleter = None

    def close(self) -> None:
        self.release()
        self.devref.close()


class WithTool(object):
    """One B arm: attach ``bpftools ARGS``, churn, stop; keeps the attach times and what the tool saw."""

    def __init__(self, key: str, args: List[str], count: int, workdir: str) -> None:
        self.key, self.args, self.count, self.workdir = key, args, count, workdir
        self.attach = []  # type: List[float]
        self.saw = []  # type: List[Dict[str, Any]]
        self.exceptions = []  # type: List[int]
        self.stuck = StuckDevice() if key == "netdevwait-subscribers" else None

    def close(self) -> None:
        if self.stuck is not None:
            self.stuck.close()

    def __call__(self) -> float:
        n = len(self.saw)
        out_path = os.path.join(self.workdir, "%s-%d.out" % (self.key, n))
        record = os.path.join(self.workdir, "%s-%d.jsonl" % (self.key, n))
        with open(out_path, "w") as out:
            tool = benchlib.Tool(self.args + ["--json", "--record", record], self.workdir,
                                 timeout=ATTACH_TIMEOUT, stdout=out, cwd="/")
        self.attach.append(tool.attach_s)
        try:
            if self.stuck is not None:
                self.stuck.start()
                benchlib.wait_for(tool.proc, lambda: calls_recorded(record) > 0, SUBSCRIBERS_TIMEOUT,
                                  "netdevwait timing the subscribers of %s" % STUCK)
            programs = len(benchlib.owned_bpf_ids(tool.pid)["prog"])
            summary = churn(self.count)
            if self.key == "refleak":
                deadline = time.monotonic() + FREE_TIMEOUT
                while frees_recorded(record) < summary["devices_created"] and time.monotonic() < deadline:
                    time.sleep(0.5)
        finally:
            code, err = tool.stop()
            if self.stuck is not None:
                self.stuck.release()
        if code != 0:
            raise SystemExit("bpftools %s exited %d: %s" % (" ".join(self.args), code, err.strip()[-2000:]))
        saw = (refleak_saw if self.key == "refleak" else netdevwait_saw)(out_path, summary["devices_created"])
        saw["bpf_programs"] = programs
        self.saw.append(saw)
        self.exceptions.append(summary["exceptions_seen"])
        log("%s: %.2f s for %d rounds (attach %.1f s); saw %s" % (self.key, summary["seconds"], self.count,
                                                                  tool.attach_s, json.dumps(saw, sort_keys=True)))
        return summary["seconds"]


def log(line: str) -> None:
    """Progress on stderr (a default run takes minutes)."""
    sys.stderr.write("netns_overhead: %s\n" % line)
    sys.stderr.flush()


def run(keys: List[str], rounds: int, count: int, workdir: str) -> Dict[str, Any]:
    """ROUNDS interleaved runs of the baseline and of each chosen tool; the figures."""
    subprocess.call(["modprobe", "veth"], stderr=subprocess.DEVNULL)
    churn(2)    # warm-up: modules, caches, the package's imports
    exceptions = []  # type: List[int]

    def without() -> float:
        summary = churn(count)
        exceptions.append(summary["exceptions_seen"])
        log("without: %.2f s for %d rounds" % (summary["seconds"], count))
        return summary["seconds"]

    arms = [(key, WithTool(key, args, count, workdir)) for key, args, _ in ARMS if key in keys]
    try:
        runs = benchlib.interleaved(rounds, [("without", without)] + [(key, arm) for key, arm in arms])
    finally:
        for _, arm in arms:
            arm.close()
    base, base_spread = benchlib.median_spread(runs["without"])
    rows = []
    for key, arm in arms:
        traced, traced_spread = benchlib.median_spread(runs[key])
        paired = [w / b for b, w in zip(runs["without"], runs[key])]
        rows.append({
            "tool": key, "argv": arm.args, "count": count, "rounds": rounds,
            "median_s_without": base, "median_s_with": traced, "ratio": traced / base,
            "ratio_min": min(paired), "ratio_max": max(paired),
            "spread_without": base_spread, "spread_with": traced_spread,
            "s_per_round_without": base / count, "s_per_round_with": traced / count,
            "runs_without": runs["without"], "runs_with": runs[key],
            "exceptions_without": exceptions, "exceptions_with": arm.exceptions,
            "median_attach_s": statistics.median(arm.attach), "attach_s": arm.attach, "saw": arm.saw})
    return {"bench": "netns_overhead", "kernel": os.uname().release, "count": count, "rounds": rounds,
            "rows": rows, "table": table(rows)}


def saw_text(row: Dict[str, Any]) -> str:
    """What the tool saw over its runs, in a few words."""
    saw = row["saw"]

    def total(field: str) -> int:
        return sum(s[field] for s in saw)

    if row["tool"] == "refleak":
        return ("saw %d/%d devices, %d freed, %d balanced, %d watched (%d holds, %d puts), %d leaking, %d lost"
                % (total("devices"), total("devices_created"), total("freed"), total("balanced"), total("watched"),
                   total("watch_holds"), total("watch_puts"), sum(len(s["leaking"]) for s in saw), total("lost")))
    text = ("%s mode, %d BPF programs, %d waits over %d devices churned"
            % (saw[0]["mode"], saw[0]["bpf_programs"], total("waits"), total("devices_created")))
    if "subscribers_timed" in saw[0]:
        text += "; %d subscribers timed, %d calls" % (max(s["subscribers_timed"] for s in saw),
                                                      total("subscriber_calls"))
    return text


def table(rows: List[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """The rows of the README table."""
    return [("overhead: %s%s on `repro netns-churn` (time with/without)" % (
                " ".join(shlex.quote(a) for a in r["argv"]),
                ", one device waiting (its notifier subscribers probed)" if r["tool"] == "netdevwait-subscribers" else ""),
             "%.2fx" % r["ratio"],
             "per-round %.2f-%.2f; spread without %.0f%%, with %.0f%%; %d rounds x %d netns rounds "
             "(%.2f s each without); attach %.0f s; %s"
             % (r["ratio_min"], r["ratio_max"], 100 * r["spread_without"], 100 * r["spread_with"], r["rounds"],
                r["count"], r["s_per_round_without"], r["median_attach_s"], saw_text(r)))
            for r in rows]


def missing_kprobes() -> Optional[str]:
    """Why this machine cannot run the kprobe arms, or None."""
    from bpftools.kernel.capabilities import check_kprobes
    from bpftools.kernel.tracefs import find_tracefs, tracing_ready
    tracing_ready()
    check = check_kprobes(find_tracefs())
    return None if check.ok else check.detail


def main() -> int:
    from bpftools.errors import EXIT_MISSING_FEATURE
    keys = [key for key, _, _ in ARMS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per arm (3)")
    parser.add_argument("--count", type=int, default=4,
                        help="netns-churn rounds per run (4: about 15 s in the lab VM)")
    parser.add_argument("--only", action="append", choices=keys, metavar="TOOL",
                        help="only this B arm (repeatable): %s" % ", ".join(keys))
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (BPF, network namespaces)")
    if args.rounds < 1 or args.count < 1:
        parser.error("--rounds and --count must be >= 1")
    chosen = args.only or keys
    if any(needs for key, _, needs in ARMS if key in chosen):
        why = missing_kprobes()
        if why:
            sys.stderr.write("netns_overhead: no kprobes here (%s); %s\n" % (why, LAB_HINT))
            return EXIT_MISSING_FEATURE
    workdir = tempfile.mkdtemp(prefix="bpftools-bench-")
    try:
        result = run(chosen, args.rounds, args.count, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    benchlib.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
