"""bpftools watch without a live kernel: rings, triggers, the rate limit, bundles (written whole, rotated
under the size cap after 1,000 triggers) and the report of a bundle.

The bundle of incident 1 is made from the lab's own iojitter recording (6.1, the slab injector: the
writer waited 5.14 s on biovec-max) fed through the watch loop as the io detector's events; the bundle
of incident 2 from a kernel log record of the wait, through netdevwait's log mode and doctor's analyser.
"""
import json
import os

import pytest

from bpftools.kernel.target import Running
from bpftools.pointers import PointerHider
from bpftools.recording import make_header, read_recording
from bpftools.tools import iojitter, kmemsnoop, netdevwait
from bpftools.watch import detectors as det
from bpftools.watch import triggers as trig
from bpftools.watch.bundles import PARTIAL, BundleDir
from bpftools.watch.leftovers import stale_kprobe_events
from bpftools.watch.loop import Limits, Watch
from bpftools.watch.metrics import Metrics
from bpftools.watch.report import incident_report
from bpftools.watch.ring import Ring

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
IOJITTER_61 = os.path.join(FIXTURES, "iojitter", "lab-6.1-injector.jsonl")
REUSED = det.Reused(iojitter=iojitter, kmemsnoop=kmemsnoop, netdevwait=netdevwait)
WAIT_RECORD = b"4,9001,%d,-;unregister_netdevice: waiting for ndwn to become free. Usage count = 2\n"


def _watch(tmp_path, detectors, limits, max_bytes=1 << 30, max_bundles=10 ** 5):
    said = []
    watch = Watch(REUSED, detectors, BundleDir(str(tmp_path / "bundles"), max_bytes, max_bundles), limits, Metrics(),
                  make_header("watch", ["bpftools", "watch"]), PointerHider(), lambda obj, line: said.append(obj),
                  lambda note: None)
    return watch, said


# --- rings, triggers, rate limit, leftovers --------------------------------------------------------

def test_a_ring_keeps_the_last_events_and_none_older_than_its_age():
    ring = Ring(max_events=3, max_age=10.0)
    for seq in range(5):
        ring.add(seq, float(seq), {"n": seq})
    assert [e["n"] for _, e in ring.entries()] == [2, 3, 4] and ring.dropped == 2
    ring.expire(13.5)
    assert [seq for seq, _ in ring.entries()] == [4] and ring.dropped == 4


def _sleep(duration_ns, in_mempool=True):
    return {"type": "sleep", "in_mempool": in_mempool, "duration_ns": duration_ns, "tid": 413, "comm": "python3",
            "caller": "bio_alloc_bioset", "pool_cache": "biovec-max", "ts_ns": 7}


def test_a_mempool_wait_triggers_from_the_threshold_up():
    trigger = trig.from_event("io", _sleep(10 ** 9), 10 ** 9, 5.0)
    assert trigger.to_json() == {
        "type": "trigger", "incident": "kmem_io_jitter", "source": "mempool_wait", "at": 5.0, "ts_ns": 7,
        "what": "mempool wait of 1.00 s by tid 413 (python3); called from bio_alloc_bioset, pool biovec-max"}
    assert trig.from_event("io", _sleep(10 ** 9 - 1), 10 ** 9, 5.0) is None
    assert trig.from_event("io", _sleep(5 * 10 ** 9, in_mempool=False), 10 ** 9, 5.0) is None


def test_kernel_log_reports_trigger_their_incident_once():
    before = {"slub_alloc_failure": 1, "netdev_unregister_wait": 0, "hung_task_mempool": 0}
    after = {"slub_alloc_failure": 3, "netdev_unregister_wait": 1, "hung_task_mempool": 0}
    assert [(t.incident, t.source, t.what) for t in trig.from_log(before, after, 1.0)] == [
        ("kmem_io_jitter", "slub_alloc_failure", "SLUB allocation failure in the kernel log (2 new)"),
        ("netdev_refcount_leak", "netdev_unregister_wait", "unregister_netdevice wait in the kernel log (1 new)")]


def test_the_rate_limit_is_per_incident_and_counts_what_it_suppressed():
    rate = trig.RateLimit(300.0)
    assert [rate.allow("kmem", t) for t in (0.0, 100.0, 299.0, 300.0)] == [True, False, False, True]
    assert rate.allow("netdev", 100.0) is True
    assert rate.take_suppressed("kmem") == 2 and rate.take_suppressed("kmem") == 0


def test_stale_kprobe_events_are_those_of_bcc_processes_that_are_gone():
    text = ("p:kprobes/p_mempool_alloc_bcc_4242 mempool_alloc\n"
            "r128:kprobes/r_mempool_alloc_bcc_4242 mempool_alloc\n"
            "p:kprobes/p_finish_wait_bcc_77 finish_wait\n"
            "p:kprobes/myprobe do_sys_open\n")
    assert stale_kprobe_events(text, lambda pid: pid == 77) == [
        "kprobes/p_mempool_alloc_bcc_4242", "kprobes/r_mempool_alloc_bcc_4242"]


# --- bundles -----------------------------------------------------------------------------------------

def _io_detector():
    rec = read_recording(IOJITTER_61)
    mode = next(e for e in rec.events if e["type"] == "mode")
    return det.Detector("io", mode, None, lambda raw: []), [e for e in rec.events if e["type"] != "mode"]


def test_both_incidents_make_a_bundle_each_that_names_the_pool_the_frames_and_the_device(tmp_path):
    io, events = _io_detector()
    netdev = det.NetdevDetector(REUSED, Running(), det.Settings(mode="tracepoint"))
    watch, said = _watch(tmp_path, [io, netdev], Limits(after=10.0, min_interval=300.0))
    watch.add("io", [dict(e, detector="io") for e in events], now=100.0)
    watch.log_record(WAIT_RECORD % 240000000)
    assert [(o["incident"], o["source"]) for o in said if o["type"] == "trigger"] == [
        ("kmem_io_jitter", "mempool_wait"), ("netdev_refcount_leak", "netdev_wait"),
        ("netdev_refcount_leak", "netdev_unregister_wait")]
    watch.tick(now=109.0)                       # the first bundle's window is still open
    assert watch.written == []
    watch.flush(interrupted=False)
    kmem_dir, netdev_dir = watch.written
    assert kmem_dir.endswith("-kmem_io_jitter") and netdev_dir.endswith("-netdev_refcount_leak")

    rec = read_recording(os.path.join(kmem_dir, "recording.jsonl"))
    report = incident_report(REUSED, rec.header, rec.events, "2026-01-01T00:00:00Z")
    streamed = incident_report(REUSED, rec.header, iter(rec.events), "2026-01-01T00:00:00Z")    # read once
    assert [(t.title, t.rows) for t in streamed.tables] == [(t.title, t.rows) for t in report.tables]
    assert streamed.verdicts == report.verdicts and [t.title for t in report.tables][:2] == [
        "watch: Triggers", "iojitter: Slow writebacks"]
    verdict = next(v for v in report.verdicts if v["title"] == "Slow writebacks stalled in mempool_alloc")
    assert verdict["summary"] == "2 of 2 slow writebacks (>= 1.00 s) explained by mempool waits; pools: biovec-max"
    assert verdict["evidence"][0].startswith("tid 413 (python3): do_writepages stalled 6.21 s, explained; "
                                             "2 mempool wait(s) for 6.06 s, 1 timed out; pool biovec-max; "
                                             "mempool_alloc called from bio_alloc_bioset")
    folded = open(os.path.join(kmem_dir, "iojitter.folded")).read().splitlines()
    assert [line for line in folded if ";bio_alloc_bioset;mempool_alloc;" in line]
    html = open(os.path.join(kmem_dir, "report.html")).read()
    assert "biovec-max" in html and "mempool_alloc called from bio_alloc_bioset" in html

    rec = read_recording(os.path.join(netdev_dir, "recording.jsonl"))
    (update,) = [e for e in rec.events if e["type"] == "netdev_wait"]
    assert (update["name"], update["count"], update["leaked"], update["update"]) == ("ndwn", 2, 1, "waiting")
    html = open(os.path.join(netdev_dir, "report.html")).read()
    assert "ndwn" in html
    excerpt = open(os.path.join(netdev_dir, "kernel-log.txt")).read()
    assert excerpt == (WAIT_RECORD % 240000000).decode()
    doctor = json.load(open(os.path.join(netdev_dir, "doctor.json")))
    (leak,) = [v for v in doctor["verdicts"] if v["incident"] == "netdev_refcount_leak"]
    assert leak["status"] == "detected" and "ndwn" in " ".join(leak["evidence"])
    assert "bpftools_bundles_written_total 2" in watch.metrics.exposition()


def test_triggers_within_the_window_join_its_bundle_and_later_ones_are_rate_limited(tmp_path):
    watch, _ = _watch(tmp_path, [], Limits(after=5.0, min_interval=60.0))
    for at in (0.0, 1.0, 20.0, 30.0):
        watch.tick(now=at)
        watch.trigger(trig.Trigger("kmem_io_jitter", "slub_alloc_failure", "t%g" % at, at))
    watch.trigger(trig.Trigger("kmem_io_jitter", "slub_alloc_failure", "t61", 61.0))
    watch.flush(interrupted=False)
    first, second = [json.load(open(os.path.join(p, "bundle.json"))) for p in watch.written]
    assert [t["what"] for t in first["triggers"]] == ["t0", "t1"]
    assert ([t["what"] for t in second["triggers"]], second["suppressed_before"]) == (["t61"], 2)


def test_the_size_cap_holds_after_1000_triggers_and_no_bundle_is_half_written(tmp_path):
    """A synthetic trigger source: 1,000 manual triggers, each bundle with the kmem ring's 50 events."""
    kmem = det.Detector("kmem", {"mode": "tracepoint"}, None, lambda raw: [])
    cap = 3 * 1024 * 1024
    watch, _ = _watch(tmp_path, [kmem], Limits(after=0.0, min_interval=0.0, ring_events=50), max_bytes=cap)
    event = {"type": "kmem_file", "tgid": 1, "tid": 1, "comm": "runc", "op": "write", "ret": 1, "value": "1",
             "path": "/sys/fs/cgroup/memory/kubepods/pod1/memory.kmem.limit_in_bytes", "ts_ns": 0,
             "writer_cgroup": "/kubepods/pod1", "writer_cgroup_v2": None, "container": None, "detector": "kmem"}
    sizes = []
    for n in range(1000):
        watch.add("kmem", [dict(event, ts_ns=n, tgid=n + 1)], now=float(n))
        watch.trigger(trig.Trigger("manual", "signal", "trigger %d" % n, float(n)))
        watch.tick(now=float(n))
        sizes.append(watch.bundles.used_bytes())
    names = os.listdir(str(tmp_path / "bundles"))
    assert len(watch.written) == 1000 and max(sizes) <= cap
    assert not [n for n in names if n.startswith(PARTIAL)]
    kept = watch.bundles.bundles()
    assert kept == [os.path.basename(p) for p in watch.written[-len(kept):]]    # the newest are kept
    assert watch.bundles.removed == 1000 - len(kept) and len(kept) > 10
    last = read_recording(os.path.join(watch.written[-1], "recording.jsonl"))
    assert [e["tgid"] for e in last.events if e.get("type") == "kmem_file"] == list(range(951, 1001))


def test_a_killed_runs_partial_bundle_is_removed_at_start_and_complete_ones_stay(tmp_path):
    top = tmp_path / "bundles"
    (top / (PARTIAL + "20260101T000000Z-manual")).mkdir(parents=True)
    (top / (PARTIAL + "20260101T000000Z-manual") / "recording.jsonl").write_text("{")
    (top / "20251231T000000Z-manual").mkdir()
    bundles = BundleDir(str(top), 1 << 20, 10)
    assert bundles.clean_leftovers() == [PARTIAL + "20260101T000000Z-manual"]
    assert sorted(os.listdir(str(top))) == ["20251231T000000Z-manual"]


@pytest.mark.parametrize("args, message", [
    (["--ring-events", "0"], "Invalid value for '--ring-events'"),
    (["--after", "-1"], "Invalid value for '--after'"),
    (["--metrics-addr", "localhost"], "expected HOST:PORT"),
])
def test_bad_options_are_one_line_errors(bpftools_cli, args, message):
    result = bpftools_cli("watch", *args)
    assert result.code != 0 and message in result.err and "Traceback" not in result.err
