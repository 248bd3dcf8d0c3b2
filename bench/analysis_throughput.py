#!/usr/bin/env python3
"""Analysis throughput: events per second through iojitter's correlation (and refleak's reference
attribution) on recordings of 1 million events.

The recording is synthetic and deterministic (a seed): THREADS writer threads, each a run of slow
writebacks (an outer ``do_writepages`` with ``ext4_writepages`` nested in it) containing slab failures,
a mempool sleep (every third one timed out at 5 s) and a ``blk_mq_get_tag`` sleep, with sleeps and slab
failures outside writebacks between them, and a perf-buffer loss marker now and then. Each record is made
by the class ``bpftools iojitter --record`` writes it from (``WritebackCall``, ``Sleep``, ``SlabFailure``:
every field, as a tracepoint-mode capture on a cgroup v1 node gives them: the writer's cgroup and container
on each record, kernel stacks on writebacks, sleeps and slab failures). Figures, each events/s:

- ``read``: the recording read as a stream (``bpftools.recording.stream_recording``: JSON lines parsed),
  with the cyclic garbage collector paused as ``bpftools report`` pauses it (and for ``correlate``),
- ``correlate``: ``bpftools.analyses.iojitter.correlate`` on that stream; the rate of the analysis
  alone is the events over (that time - the read's). The read and the read + correlate run REPEATS
  times in turn and the least time of each counts (as ``timeit`` does: the run the rest of a noisy
  machine disturbed least); the alone rate of each pair is reported too, as the spread,
- ``correlate_own``: the correlation's own time in the stream: the recording read OWN_CHUNK events at a time,
  only the correlation of each chunk (and its result) timed, least of REPEATS. What the alone rate counts
  beyond it is the reading slowed down while the correlation runs between its lines (sharing the CPU's
  caches, presumably: nothing here measures them),
- ``report``: ``bpftools report FILE`` end to end in a fresh process (read, correlate, render), with
  that process's peak RSS; once with orjson (where installed) and once with it hidden (the json module),
- the size of the recording, plain and gzip-compressed (written by ``bpftools.recording.Recorder``,
  each line flushed, on the first 100,000 events).

A step that runs past ``--budget`` seconds is stopped and reported as not finished (with the budget as a
lower bound); the report step is then skipped (it runs the same analysis).

The same three figures for ``bpftools.analyses.refbalance.analyze`` when that module exists: a synthetic
refleak recording of DEVICES watched devices, each a stream of holds (``dst_alloc`` from ``connect``) and
puts (``dst_destroy`` from RCU), one hold in 1000 never put.

    .venv/bin/python bench/analysis_throughput.py [--events 1000000] [--threads 64] [--devices 200]
         [--repeats 3] [--no-orjson-up-to N] [--json]
"""
import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, Dict, List, Optional, Tuple

import benchlib

MS = 1000 * 1000
SLEEP_STACK = ["__schedule", "schedule", "io_schedule_timeout", "mempool_alloc_noprof", "bio_alloc_bioset",
               "ext4_bio_write_folio", "mpage_submit_folio", "ext4_do_writepages", "ext4_writepages",
               "do_writepages"]
TAG_STACK = ["__schedule", "schedule", "io_schedule", "blk_mq_get_tag", "__blk_mq_alloc_requests",
             "blk_mq_submit_bio", "submit_bio_noacct", "ext4_io_submit", "ext4_writepages", "do_writepages"]
ENTRY_STACK = ["do_writepages", "filemap_fdatawrite_wbc", "__filemap_fdatawrite_range", "file_write_and_wait_range",
               "ext4_sync_file", "__x64_sys_fsync", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]
SLAB_STACK = ["kmem_cache_alloc_noprof", "mempool_alloc_slab", "mempool_alloc_noprof", "bvec_alloc", "bio_alloc_bioset",
              "ext4_bio_write_folio", "mpage_submit_folio", "ext4_do_writepages", "ext4_writepages"] + ENTRY_STACK
GFP = 0x2c00                # GFP_NOIO | __GFP_NOWARN in the 6.x layout (bpftools.analyses.gfp)
CONTAINER = {"container_id": "c8edefa90517e21bc691deef20c17220af0f0ac69962cc51007d372e7dd40256",
             "pod_uid": "0b5c4d1e-6d3f-4a47-9f0e-3c1a2b4d5e6f", "runtime": "containerd"}


class _Writer(object):
    """Writes events as ``bpftools.recording.Recorder`` writes them (its shared values; not each line
    flushed) and counts them."""

    def __init__(self, f: IO[str]) -> None:
        from bpftools.recording import SharedValues
        self.f = f
        self.shared = SharedValues()
        self.events = 0

    def write(self, obj: Dict[str, Any]) -> None:
        self.f.write(json.dumps(self.shared.encode(obj), sort_keys=True, ensure_ascii=False) + "\n")
        self.events += 1


CGROUP = "/kubepods/burstable/pod%s/%s" % (CONTAINER["pod_uid"], CONTAINER["container_id"])


def sleep_event(tid: int, start: int, end: int, in_mempool: bool, blocked_in: str, kstack: List[str],
                caller: Optional[str] = None) -> Dict[str, Any]:
    """A D-state sleep as a tracepoint-mode capture records it."""
    from bpftools.iostall.mempool import Sleep
    return Sleep(ts_ns=end, start_ns=start, duration_ns=end - start, tgid=tid, tid=tid, comm="writer-%d" % tid,
                 source="sched_switch", in_mempool=in_mempool,
                 timed_out=(end - start >= 5000 * MS) if in_mempool else None, pool=None, timeout_jiffies=None,
                 caller=caller, blocked_in=blocked_in, kstack=kstack, cgroup=CGROUP, container=CONTAINER).to_json()


def _episode(out: _Writer, rnd: random.Random, tid: int, now: int, n: int) -> int:
    """One slow writeback of thread TID starting at NOW, and what blocked it; returns its end."""
    from bpftools.iostall.slab import SlabFailure
    from bpftools.iostall.writeback import WritebackCall
    comm = "writer-%d" % tid
    start = now
    t = start + rnd.randint(1, 50) * 1000
    for _ in range(rnd.randint(1, 3)):
        out.write(SlabFailure(ts_ns=t, tgid=tid, tid=tid, comm=comm, kind="alloc", source="kmem_cache_alloc",
                              cache="biovec-64", call_site="bvec_alloc+0x9a", gfp=GFP,
                              gfp_flags=["GFP_NOIO", "__GFP_NOWARN"], bytes_req=1024, node=None, accounted=False,
                              memcg_cache=None, kstack=SLAB_STACK, cgroup=CGROUP, container=CONTAINER).to_json())
        t += rnd.randint(1, 20) * 1000
    wait = 5000 * MS if n % 3 == 0 else rnd.randint(5, 900) * MS
    out.write(sleep_event(tid, t, t + wait, True, "mempool_alloc_noprof", SLEEP_STACK, "bio_alloc_bioset"))
    t += wait + rnd.randint(1, 100) * 1000
    tag = rnd.randint(1, 40) * MS
    out.write(sleep_event(tid, t, t + tag, False, "blk_mq_get_tag", TAG_STACK))
    t += tag + rnd.randint(1, 100) * 1000
    inner_start = start + 500
    for func, depth, begin in (("ext4_writepages", 1, inner_start), ("do_writepages", 0, start)):
        end = t if depth == 1 else t + 2000
        out.write(WritebackCall(
            ts_ns=end, start_ns=begin, duration_ns=end - begin, tgid=tid, tid=tid, comm=comm, func=func, depth=depth,
            dev="8:16", ino=4000 + n, bdi="8:16", nr_to_write=None, written=512, ret=None, deeper=False,
            wb_cgroup_ino=None, wb_cgroup=None, wb_container=None,
            kstack=ENTRY_STACK if depth == 0 else ["ext4_writepages"] + ENTRY_STACK,
            cgroup=CGROUP, container=CONTAINER).to_json())
    return t + 2000


def write_recording(path: str, events: int, threads: int, seed: int = 1) -> Tuple[int, int]:
    """A synthetic iojitter recording of at least EVENTS events; returns how many it holds and how many
    slow writebacks (episodes) it describes."""
    from bpftools.recording import make_header
    rnd = random.Random(seed)
    clocks = [10 ** 9 * (i + 1) for i in range(threads)]
    with open(path, "w", encoding="utf-8") as f:
        out = _Writer(f)
        f.write(json.dumps(make_header("iojitter", ["bpftools", "iojitter", "--record", path]), sort_keys=True) + "\n")
        out.write({"type": "mode", "mode": "tracepoint", "flags": ["WANT_SLEEP_SCHED", "WANT_WB_TP", "WANT_SLAB"],
                   "params": {}, "kprobes": [], "notes": [], "slots": {}})
        n = 0
        while out.events < events:
            tid = 1000 + n % threads
            i = n % threads
            clocks[i] = _episode(out, rnd, tid, clocks[i], n)
            if n % 5 == 0:   # activity outside any slow writeback
                ts = clocks[i] + 1000
                out.write(sleep_event(tid, ts, ts + 2 * MS, n % 10 == 0, "folio_wait_bit", TAG_STACK))
                clocks[i] = ts + 3 * MS
            if n % 1000 == 999:
                out.write({"type": "lost", "count": 7, "source": "perf_buffer", "ts_ns": clocks[i]})
            n += 1
        f.write(json.dumps({"trailer": True, "lost_events": 7 * (n // 1000), "interrupted": False,
                            "events": out.events}) + "\n")
    return out.events, n


HOLD_STACK = ["dst_init+0x40", "dst_alloc+0x60", "rt_dst_alloc+0x20", "ip_route_output_key_hash_rcu+0x400",
              "ip_route_output_flow+0x20", "tcp_v4_connect+0x150", "__sys_connect+0xa0", "do_syscall_64+0x5b"]
PUT_STACK = ["dst_destroy+0x30", "dst_destroy_rcu+0x10", "rcu_do_batch+0x1a0", "rcu_core+0x100",
             "handle_softirqs+0xd4", "run_ksoftirqd+0x30"]


def write_refleak_recording(path: str, events: int, devices: int) -> Tuple[int, int]:
    """A synthetic refleak recording of at least EVENTS events; returns how many it holds and how many
    holds were never put (one in 1000)."""
    from bpftools.recording import make_header
    with open(path, "w", encoding="utf-8") as f:
        out = _Writer(f)
        f.write(json.dumps(make_header("refleak", ["bpftools", "refleak", "--record", path]), sort_keys=True) + "\n")
        out.write({"type": "plan", "strategies": ["watch"]})
        devs = ["0x%x" % (0xffff888000000000 + d * 0x1000) for d in range(devices)]
        counters = ["0x%x" % (0xffffc90000000000 + d * 8) for d in range(devices)]     # the watched refcount
        for d, dev in enumerate(devs):
            out.write({"type": "device", "dev": dev, "name": "veth%d" % d, "ifindex": 10 + d, "ts_ns": 1 + d,
                       "tgid": 1, "tid": 1, "cpu": 0, "comm": "systemd", "netns": 4026531840 + d,
                       "how": "existing", "pcpu": True, "counter": counters[d], "level": 1, "base_refs": 1})
            out.write({"type": "watch", "dev": dev, "ts_ns": 1 + d, "armed": True, "cpus": [0, 1]})
            out.write({"type": "sync", "dev": dev, "ts_ns": 1 + d, "level": 1})
        n = leaked = 0
        ts = 10 ** 9
        held = [1] * devices        # each device's count, as the watched counter reads it
        while out.events < events:    # "ref" records with the fields bpftools.refleak.session gives (watch)
            d = n % devices
            dev, addr = devs[d], counters[d]
            ts += 1000
            held[d] += 1
            out.write({"type": "ref", "dev": dev, "ts_ns": ts, "delta": 1, "strategy": "watch", "stack": HOLD_STACK,
                       "comm": "curl", "tgid": 4000 + n % 50, "tid": 4000 + n % 50, "cpu": n % 2, "cgroup": CGROUP,
                       "addr": addr, "value": held[d], "gap": False})
            if n % 1000 == 999:
                leaked += 1
            else:
                ts += 1000
                held[d] -= 1
                out.write({"type": "ref", "dev": dev, "ts_ns": ts, "delta": -1, "strategy": "watch",
                           "stack": PUT_STACK, "comm": "ksoftirqd/0", "tgid": 15, "tid": 15, "cpu": 0, "cgroup": "/",
                           "addr": addr, "value": held[d], "gap": False})
            n += 1
        f.write(json.dumps({"trailer": True, "lost_events": 0, "interrupted": False, "events": out.events}) + "\n")
    return out.events, leaked


class OverBudget(Exception):
    """A step ran past the time budget."""


def _timed(fn: Any, budget: float = 0) -> Tuple[Any, float]:
    """FN's value and seconds; (None, budget) when it ran past BUDGET seconds (0: no budget)."""
    def _stop(signum: int, frame: Any) -> None:
        raise OverBudget()
    old = signal.signal(signal.SIGALRM, _stop)
    if budget:
        signal.setitimer(signal.ITIMER_REAL, budget)
    start = time.perf_counter()
    try:
        value = fn()
    except OverBudget:
        return None, float(budget)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return value, time.perf_counter() - start


# ``bpftools report`` in a fresh process that writes its own peak RSS (VmHWM, KiB) to the file descriptor
# given first at exit. Not the parent's getrusage: a child made by fork or vfork, then exec, takes the
# parent's high-water mark as its own (the kernel folds the old address space's into it at exec), and this
# bench's process is as large as the reports it measures. "no-orjson" second: with orjson hidden.
REPORT = "\n".join((
    "import atexit, os, runpy, sys",
    "fd = int(sys.argv.pop(1))",
    "def peak():",
    "    with open('/proc/self/status') as f:",
    "        os.write(fd, [line.split()[1] for line in f if line.startswith('VmHWM:')][0].encode())",
    "atexit.register(peak)",
    "if sys.argv.pop(1) == 'no-orjson':",
    "    sys.modules['orjson'] = None",
    "sys.argv[0] = 'bpftools'",
    "runpy.run_module('bpftools.cli', run_name='__main__')"))


CPU_S = {}  # type: Dict[str, float]     # CPU seconds (user + system) of the last report process, per path


def report_process(path: str, budget: float, orjson: bool = True) -> Tuple[Optional[float], Optional[float]]:
    """``bpftools report PATH`` in a fresh process: seconds and peak RSS (MiB, its own: REPORT); (None, None)
    when a previous step ran over the budget (BUDGET < 0), (BUDGET, None) when this one does. Not ORJSON:
    with orjson hidden (the json module parses). Its CPU seconds go to CPU_S[PATH]."""
    if budget < 0:
        return None, None
    start = time.perf_counter()
    peak_r, peak_w = os.pipe()
    argv = [sys.executable, "-c", REPORT, str(peak_w), "orjson" if orjson else "no-orjson", "report", path]
    try:
        proc = subprocess.Popen(argv, cwd=benchlib.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                pass_fds=(peak_w,))
    finally:
        os.close(peak_w)
    with os.fdopen(peak_r, "rb") as peak:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if budget and time.perf_counter() - start > budget:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.stderr.close()
                return float(budget), None
            time.sleep(0.1)
        peak_kib = peak.read()
    proc.returncode = status
    report_s = time.perf_counter() - start
    CPU_S[path] = usage.ru_utime + usage.ru_stime
    err = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    if status != 0 or not peak_kib:
        raise SystemExit("bpftools report failed (wait status %d): %s" % (status, err or "no peak RSS written"))
    return report_s, int(peak_kib) / 1024.0


def _rate(events: int, seconds: Optional[float], finished: bool) -> Optional[float]:
    return events / seconds if seconds and finished else None


def _count(path: str) -> int:
    from bpftools.recording import collector_paused, stream_recording
    with collector_paused(), stream_recording(path) as stream:
        return sum(1 for _ in stream.events)


def _analysed(analysis: Any, path: str) -> Any:
    from bpftools.recording import collector_paused, stream_recording
    with collector_paused(), stream_recording(path) as stream:
        return analysis(stream.events)


def disk_sizes(path: str, sample: int = 100000) -> Tuple[float, float]:
    """Bytes per event of the recording at PATH, and of its first SAMPLE events as ``Recorder`` writes them
    gzip-compressed (each line flushed)."""
    from bpftools.recording import Recorder, stream_recording
    gz = path + ".sample.gz"
    with stream_recording(path) as stream:
        out = Recorder(gz, stream.header)
        for i, event in zip(range(sample), stream.events):
            out.write(event)
        out.close({"lost_events": 0})
    per_event = os.path.getsize(path) / float(_count(path))
    gz_per_event = os.path.getsize(gz) / float(out.events)
    os.remove(gz)
    return per_event, gz_per_event


OWN_CHUNK = 64       # events read between two timed steps of the correlation (correlate_own)


def _own_seconds(path: str) -> float:
    """Seconds inside iojitter's correlation while PATH streams through it, OWN_CHUNK events at a time (the
    reading between the chunks not counted)."""
    from bpftools.analyses.iojitter import Correlator
    from bpftools.recording import collector_paused, stream_recording
    correlator, own = Correlator(), 0.0
    with collector_paused(), stream_recording(path) as stream:
        while True:
            chunk = list(itertools.islice(stream.events, OWN_CHUNK))
            if not chunk:
                break
            start = time.perf_counter()
            correlator.feed_all(chunk)
            own += time.perf_counter() - start
        start = time.perf_counter()
        correlator.result()
        return own + time.perf_counter() - start


def _analysis_rate(events: int, both_s: float, read_s: float, finished: bool) -> Optional[float]:
    """Events/s of the analysis alone: the streamed analysis's time minus the read's."""
    return events / (both_s - read_s) if finished and both_s > read_s else None


def _read_and_analysed(analysis: Any, path: str, events: int, budget: float,
                       repeats: int) -> Tuple[Any, float, float, List[float]]:
    """Read PATH (EVENTS), then read it through ANALYSIS, REPEATS times in turn: the analysis's value, the
    least read and read + analysis seconds (the runs least disturbed by the rest of a noisy machine), and
    the analysis-alone rate of each pair, for the spread. Stops after a run past BUDGET (value None)."""
    reads, boths, pairs = [], [], []
    result = None
    for _ in range(repeats):
        _, read_s = _timed(lambda: _count(path))
        result, both_s = _timed(lambda: _analysed(analysis, path), budget)
        reads.append(read_s)
        boths.append(both_s)
        if result is None:
            break
        pairs.append(_analysis_rate(events, both_s, read_s, True) or 0.0)
    return result, min(reads), min(boths), pairs


def run(events: int, threads: int, workdir: str, budget: float = 0, no_orjson: bool = True,
        repeats: int = 3) -> Dict[str, Any]:
    """Write the iojitter recording, then time reading, correlating and ``bpftools report`` on it."""
    from bpftools.analyses.iojitter import correlate
    path = os.path.join(workdir, "iojitter-%d.jsonl" % events)
    written, episodes = write_recording(path, events, threads)
    result, read_s, corr_s, pairs = _read_and_analysed(correlate, path, written, budget, repeats)
    own_s = min(_own_seconds(path) for _ in range(repeats)) if result is not None else None
    report_s, report_rss = report_process(path, -1 if result is None else budget)
    report_cpu = CPU_S.get(path)
    json_s, json_rss = report_process(path, -1 if result is None or not no_orjson else budget, orjson=False)
    size_mib = os.path.getsize(path) / 2.0 ** 20
    per_event, gz_per_event = disk_sizes(path)
    os.remove(path)
    return {
        "events": written, "threads": threads, "file_mib": size_mib, "budget_s": budget,
        "bytes_per_event": per_event, "gz_bytes_per_event": gz_per_event,
        "correlate_finished": result is not None,
        "episodes_written": episodes, "episodes": result.slow_writebacks if result else None,
        "explained": result.explained if result else None,
        "read_s": read_s, "correlate_s": corr_s, "report_s": report_s, "report_json_s": json_s,
        "read_events_per_s": written / read_s, "correlate_events_per_s": _rate(written, corr_s, result is not None),
        "correlate_alone_events_per_s": _analysis_rate(written, corr_s, read_s, result is not None),
        "correlate_alone_each_events_per_s": pairs, "repeats": repeats,
        "correlate_own_s": own_s, "correlate_own_events_per_s": _rate(written, own_s, own_s is not None),
        "report_events_per_s": _rate(written, report_s, report_rss is not None), "report_peak_rss_mib": report_rss,
        "report_json_peak_rss_mib": json_rss, "report_cpu_s": report_cpu, "load_average": os.getloadavg()[0],
    }


def run_refleak(events: int, devices: int, workdir: str, budget: float = 0,
                repeats: int = 3) -> Optional[Dict[str, Any]]:
    """The same for refleak's attribution; None when analyses/refbalance.py is not there."""
    try:
        from bpftools.analyses.refbalance import analyze
    except ImportError:
        return None
    path = os.path.join(workdir, "refleak-%d.jsonl" % events)
    written, leaked = write_refleak_recording(path, events, devices)
    result, read_s, analyze_s, pairs = _read_and_analysed(analyze, path, written, budget, repeats)
    unbalanced = (sum(row.count for d in result.devices for s in d.strategies for row in s.unbalanced)
                  if result is not None else None)
    report_s, report_rss = report_process(path, -1 if result is None else budget)
    os.remove(path)
    report_cpu = CPU_S.get(path)
    return {
        "events": written, "devices": devices, "leaked_written": leaked, "unbalanced": unbalanced,
        "budget_s": budget, "analyze_finished": result is not None,
        "read_s": read_s, "analyze_s": analyze_s, "report_s": report_s,
        "read_events_per_s": written / read_s, "analyze_events_per_s": _rate(written, analyze_s, result is not None),
        "analyze_alone_events_per_s": _analysis_rate(written, analyze_s, read_s, result is not None),
        "analyze_alone_each_events_per_s": pairs, "repeats": repeats,
        "report_events_per_s": _rate(written, report_s, report_rss is not None), "report_peak_rss_mib": report_rss,
        "report_cpu_s": report_cpu,
    }


def _speed(rate: Optional[float], seconds: Optional[float], budget: float) -> str:
    if rate is not None:
        return "{:,.0f} events/s".format(rate)
    return "not finished in %.0f s" % budget if seconds is not None else "skipped"


def _spread(rates: List[float]) -> str:
    """" (each run: 183k-205k events/s)" when there were several runs."""
    if len(rates) < 2:
        return ""
    return " (each run: {:,.0f}-{:,.0f} events/s)".format(min(rates), max(rates))


def table(r: Dict[str, Any], ref: Optional[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """The rows of the README table for one size."""
    n = "{:,}".format(r["events"])
    rows = [
        ("analysis: read a recording of %s events (streamed)" % n, _speed(r["read_events_per_s"], r["read_s"], 0),
         "%.1f s; %.0f MiB (%.0f bytes/event; gzip %.0f bytes/event), %d writer threads, %s slow writebacks" % (
             r["read_s"], r["file_mib"], r["bytes_per_event"], r["gz_bytes_per_event"], r["threads"],
             "{:,}".format(r["episodes_written"]))),
        ("analysis: iojitter read + correlate (streamed), %s events" % n,
         _speed(r["correlate_events_per_s"], r["correlate_s"], r["budget_s"]),
         "%.1f s; %s of %s explained; correlate alone %s%s; its own time in the stream %s" % (
             r["correlate_s"], "{:,}".format(r["explained"]), "{:,}".format(r["episodes"]),
             _speed(r["correlate_alone_events_per_s"], r["correlate_s"], 0), _spread(r["correlate_alone_each_events_per_s"]),
             _speed(r["correlate_own_events_per_s"], r["correlate_own_s"], 0))
         if r["correlate_finished"] else "so below %.0f events/s" % (r["events"] / r["budget_s"])),
        ("analysis: `bpftools report` end to end, %s events" % n, _speed(r["report_events_per_s"], r["report_s"], r["budget_s"]),
         "%.1f s (CPU %.1f s; load average %.1f), peak RSS %.0f MiB%s" % (
             r["report_s"], r["report_cpu_s"], r["load_average"], r["report_peak_rss_mib"],
             "; without orjson %.1f s, %.0f MiB" % (r["report_json_s"], r["report_json_peak_rss_mib"])
             if r.get("report_json_peak_rss_mib") else "")
         if r["report_peak_rss_mib"] else "-"),
    ]
    if ref is not None:
        rows += [
            ("analysis: refleak read + attribution (refbalance.analyze, streamed), %s events" % n,
             _speed(ref["analyze_events_per_s"], ref["analyze_s"], ref["budget_s"]),
             "%.1f s, %d devices; %s unbalanced holds found of %s written; attribution alone %s%s" % (
                 ref["analyze_s"], ref["devices"], "{:,}".format(ref["unbalanced"]), "{:,}".format(ref["leaked_written"]),
                 _speed(ref["analyze_alone_events_per_s"], ref["analyze_s"], 0),
                 _spread(ref["analyze_alone_each_events_per_s"]))
             if ref["analyze_finished"] else "so below %.0f events/s" % (ref["events"] / ref["budget_s"])),
            ("analysis: `bpftools report` of a refleak recording, %s events" % n,
             _speed(ref["report_events_per_s"], ref["report_s"], ref["budget_s"]),
             "%.1f s (CPU %.1f s), peak RSS %.0f MiB" % (ref["report_s"], ref["report_cpu_s"], ref["report_peak_rss_mib"])
             if ref["report_peak_rss_mib"] else "-"),
        ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, action="append", help="events in the recording (1000000); "
                        "repeat for several sizes")
    parser.add_argument("--threads", type=int, default=64, help="writer threads (64)")
    parser.add_argument("--devices", type=int, default=200, help="refleak: watched devices (200)")
    parser.add_argument("--budget", type=float, default=0, help="seconds one step may take (0: no limit)")
    parser.add_argument("--no-orjson-up-to", type=int, default=1000000, metavar="N",
                        help="time `bpftools report` without orjson too on recordings of up to N events (1000000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the read and of each analysis, in turn; "
                        "the least time of each is reported (3)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    sizes = args.events or [1000000]
    if min(sizes) < 10 or args.threads < 1 or args.devices < 1 or args.budget < 0 or args.repeats < 1:
        parser.error("--events >= 10, --threads >= 1, --devices >= 1, --budget >= 0 and --repeats >= 1")
    workdir = tempfile.mkdtemp(prefix="bpftools-bench-")
    runs = []
    try:
        for events in sizes:
            runs.append((run(events, args.threads, workdir, args.budget,
                             events <= args.no_orjson_up_to, args.repeats),
                         run_refleak(events, args.devices, workdir, args.budget, args.repeats)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [row for r, ref in runs for row in table(r, ref)]
    benchlib.emit({"bench": "analysis_throughput", "result": runs[0][0], "refleak": runs[0][1],
                   "sizes": [{"iojitter": r, "refleak": ref} for r, ref in runs], "table": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
