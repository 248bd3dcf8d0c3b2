"""analyses/iojitter.py and analyses/stacks.py on recorded event streams (tests/fixtures/iojitter).

Two streams were recorded on this machine by ``bpftools iojitter`` in tracepoint mode (writebacks
stalled behind a frozen loop device: no mempool involved); three are synthetic (marked so in their
header), built by make_synthetic.py from the kernel's documented bvec/mempool sequence, because slab
failures inside writeback and mempool sleeps cannot be caused here.
"""
import io
import json
import os

import pytest
from rich.console import Console

from bpftools.analyses import iojitter, stacks
from bpftools.analyses.iojitter import (MEMPOOL_TIMEOUT_NS, TIMEOUT_SLACK_NS, Correlator, correlate, timed_out)
from bpftools.recording import read_recording

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "iojitter")
S = 1000 ** 3
MS = 1000 ** 2


def load(name):
    return read_recording(os.path.join(FIXTURES, name))


def test_synthetic_streams_say_so_in_their_header():
    for name in sorted(os.listdir(FIXTURES)):
        if name.endswith(".jsonl"):
            header = load(name).header
            assert header["tool"] == "iojitter"
            assert header.get("synthetic", False) is name.startswith("synthetic-"), name


# --- the RHEL 7 incident (synthetic, kprobe mode) -------------------------------------------------

@pytest.fixture(scope="module")
def incident():
    return correlate(load("synthetic-rhel7-incident.jsonl").events)


def test_incident_totals(incident):
    r = incident
    assert (r.sleeps_from, r.slow_writebacks, r.explained, r.fraction_explained) == ("kprobe", 3, 2, 2.0 / 3)
    assert (r.stalled_ns, r.mempool_ns) == ((5012 + 1251 + 350) * MS, 6200 * MS)
    assert (r.mempool_waits, r.mempool_timeouts, r.mempool_waits_elsewhere) == (2, 1, 0)
    assert (r.slab_failures, r.slab_failures_elsewhere, r.lost_records, r.skipped_records) == (4, 1, 0, 0)
    assert (r.confidence, r.reasons) == ("high", [])


def test_incident_causal_records_in_time_order_across_interleaved_threads(incident):
    pod = "container c8ed4b2c05cb pod 1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"
    assert [(e.tid, e.comm, e.group, e.explained, e.incomplete, e.chain()) for e in incident.episodes] == [
        (4250, "mysqld", pod, True, False,
         "slab fail biovec-64(1793:c8ed4b2c05cb), biovec-256(1793:c8ed4b2c05cb) -> mempool wait 5.00s (timed out)"
         " -> do_writepages 5.01s > ext4_writepages 5.01s"),
        (4251, "mysqld", pod, True, False,
         "slab fail biovec-16(1793:c8ed4b2c05cb) -> mempool wait 1.20s (woken) -> ext4_writepages 1.25s"),
        (900, "rsyslogd", "cgroup /system.slice/rsyslog.service", False, False, "ext4_writepages 0.35s"),
    ]


def test_incident_nested_calls_and_the_wait_inside_the_innermost(incident):
    first = incident.episodes[0]
    assert [(c.func, c.depth, c.end_ns - c.start_ns) for c in first.calls] == [
        ("do_writepages", 0, 5012 * MS), ("ext4_writepages", 1, 5010 * MS)]
    (wait,) = first.waits
    assert (wait.in_mempool, wait.timed_out, wait.duration_ns, wait.caller, wait.call) == (
        True, True, 5000 * MS, "bvec_alloc", "ext4_writepages")
    assert (first.mempool_ns, first.other_blocked_ns, first.mempool_timeouts) == (5000 * MS, 0, 1)
    assert first.slab_failures == ["biovec-64(1793:c8ed4b2c05cb)", "biovec-256(1793:c8ed4b2c05cb)"]


def test_incident_verdict_and_groups(incident):
    assert incident.verdict == (
        "2 of 3 slow writebacks (67%) were stalled in mempool_alloc; 6.20s of 6.61s blocked there in 2 waits "
        "(1 timed out at 5 s, 1 woken early); slab allocation failures preceded 2 of the waits "
        "(biovec-64, biovec-256, biovec-16); stalls explained by the mempool in container c8ed4b2c05cb pod "
        "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9")
    assert [(g.group, g.episodes, g.explained, g.stalled_ns, g.mempool_ns, g.slab_failures) for g in incident.groups] == [
        ("container c8ed4b2c05cb pod 1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9", 2, 2, 6263 * MS, 6200 * MS, 3),
        ("cgroup /system.slice/rsyslog.service", 1, 0, 350 * MS, 0, 0)]


def test_incident_folded_stacks_weighted_by_time_blocked(incident):
    fsync = ("system_call_fastpath;sys_fsync;do_fsync;ext4_sync_file;filemap_write_and_wait_range;"
             "__filemap_fdatawrite_range;do_writepages")
    sleep = fsync + ";ext4_writepages;mpage_da_submit_io;ext4_bio_write_page;bio_alloc_bioset;bvec_alloc;" \
                    "mempool_alloc;io_schedule_timeout"
    assert incident.folded == {
        "mysqld;%s;[writeback other time]" % fsync: 12 * MS,
        "mysqld;%s;ext4_writepages;[writeback other time]" % fsync: 51 * MS,
        "mysqld;%s;[after slab fail biovec-16(1793:c8ed4b2c05cb)];[mempool wait 1.20s]" % sleep: 1200 * MS,
        "mysqld;%s;[after slab fail biovec-64(1793:c8ed4b2c05cb), biovec-256(1793:c8ed4b2c05cb)];"
        "[mempool wait 5.00s]" % sleep: 5000 * MS,
        "rsyslogd;%s;ext4_writepages;[writeback other time]" % fsync: 350 * MS,
    }
    assert sum(incident.folded.values()) == incident.stalled_ns


def test_folded_lines_add_up_equal_seconds_and_keep_a_comm_with_percent_signs():
    stack = ["io_schedule_timeout", "mempool_alloc"]
    events = []
    for start, sleep_ms, end_ms in ((S, 1200, 1500), (10 * S, 1200, 1500), (20 * S, 400, 500)):
        events += [{"type": "sleep", "tid": 5, "start_ns": start + 50 * MS, "ts_ns": start + (50 + sleep_ms) * MS,
                    "in_mempool": True, "kstack": stack},
                   {"type": "writeback", "tid": 5, "comm": "kworker%s%d", "start_ns": start,
                    "ts_ns": start + end_ms * MS, "func": "do_writepages"}]
    assert correlate(events).folded == {
        "kworker%s%d;[writeback other time]": 700 * MS,
        "kworker%s%d;mempool_alloc;io_schedule_timeout;[mempool wait 0.40s]": 400 * MS,
        "kworker%s%d;mempool_alloc;io_schedule_timeout;[mempool wait 1.20s]": 2400 * MS}


def test_incident_json_is_plain_data(incident):
    out = json.loads(json.dumps(incident.to_json()))
    assert out["episodes"][0]["chain"].startswith("slab fail biovec-64(1793:c8ed4b2c05cb)")
    assert out["episodes"][0]["mempool_timeouts"] == 1
    assert out["other_blocking"] == []


def test_the_order_of_the_stream_does_not_matter_without_losses():
    events = load("synthetic-rhel7-incident.jsonl").events
    forward, backward = correlate(events), correlate(list(reversed(events)))
    assert forward.to_json() == backward.to_json()


# --- lost records ---------------------------------------------------------------------------------

def test_a_loss_during_a_stall_marks_it_incomplete_and_lowers_confidence():
    rec = load("synthetic-lost-records.jsonl")
    assert (rec.damaged_lines, rec.trailer) == (1, None)       # a run that was killed
    r = correlate(rec.events)
    assert [(e.comm, e.incomplete) for e in r.episodes] == [("postgres", False), ("mysqld", True)]
    assert r.lost_records == 9
    assert r.confidence == "low"
    assert r.reasons == ["9 records lost while 1 of the slow writebacks ran: their causes may be missing"]
    assert r.explained == 2                                    # what was seen still counts


def test_a_loss_outside_every_stall_lowers_confidence_to_medium():
    events = [e for e in load("synthetic-rhel7-incident.jsonl").events]
    events.append({"type": "lost", "count": 4, "source": "perf_buffer", "ts_ns": 9999 * S})
    r = correlate(events)
    assert (r.confidence, r.lost_records, [e.incomplete for e in r.episodes]) == ("medium", 4, [False] * 3)
    assert r.reasons == ["4 records lost during the capture (outside the slow writebacks shown)"]


def test_losses_known_only_from_the_trailer_may_hit_every_stall():
    r = correlate(load("synthetic-rhel7-incident.jsonl").events, extra_lost=3)
    assert (r.confidence, r.lost_records, [e.incomplete for e in r.episodes]) == ("low", 3, [True] * 3)


@pytest.mark.parametrize("events", [
    [{"type": "lost", "count": 5, "source": "perf_buffer", "ts_ns": None}],
    [{"type": "lost"}, {"type": "lost", "count": None, "ts_ns": None}],
    [None, 7, "x", {"type": "writeback"}, {"type": "sleep", "tid": 1, "start_ns": 5, "ts_ns": 4},
     {"type": "writeback", "tid": True, "start_ns": 1, "ts_ns": 2}],
    [],
])
def test_gaps_and_garbage_never_crash(events):
    r = correlate(events)
    assert r.slow_writebacks == 0 and r.verdict == "no slow writeback in this capture"
    assert r.confidence in ("medium", "low") or events == []


def test_unusable_records_are_counted():
    r = correlate([None, {"type": "writeback", "tid": 1}, {"type": "slab_failure", "tid": 1, "ts_ns": "x"}])
    assert r.skipped_records == 3
    assert "3 records could not be used (missing or invalid fields)" in r.reasons


# --- tracepoint mode ------------------------------------------------------------------------------

def test_tracepoint_stream_recognises_the_mempool_by_stack_and_says_so():
    r = correlate(load("synthetic-tracepoint-mempool.jsonl").events)
    (e,) = r.episodes
    assert (r.sleeps_from, e.explained, e.mempool_ns, e.other_blocked_ns) == ("sched_switch", True, 5004 * MS, 60 * MS)
    assert [(w.in_mempool, w.timed_out, w.blocked_in, w.kstack is None) for w in e.waits] == [
        (True, True, "mempool_alloc", False), (False, None, None, True)]
    assert e.chain() == ("slab fail biovec-64 -> mempool wait 5.00s (timed out) -> blocked 0.06s in [no stack]"
                         " -> writeback_single_inode 5.10s > ext4_writepages 5.10s")
    assert r.confidence == "medium"
    assert r.reasons == [
        "tracepoint fallback: mempool sleeps recognised by their kernel stack (no pool pointer; "
        "'timed out' inferred from ~5 s sleeps)",
        "1 sleeps inside slow writebacks had no kernel stack: cannot tell whether they were mempool waits"]


def test_recorded_flusher_stall_nested_calls_and_other_blocking():
    r = correlate(load("tracepoint-syncfs-stall.jsonl").events)
    (e,) = r.episodes
    assert (e.comm, e.dev, e.ino, e.explained, e.mempool_ns) == ("kworker/u8:1", "7:1", 12, False, 0)
    assert [(c.func, c.depth) for c in e.calls] == [("writeback_single_inode", 0), ("ext4_writepages", 1)]
    assert [(w.blocked_in, w.call) for w in e.waits] == [("rq_qos_wait", "ext4_writepages"),
                                                         ("blk_mq_get_tag", "ext4_writepages")]
    assert [f for f, _ in r.other_blocking] == ["blk_mq_get_tag", "rq_qos_wait"]
    assert r.verdict == ("0 of 1 slow writebacks (0%) were stalled in mempool_alloc; other blocking: "
                         "blk_mq_get_tag 0.32s, rq_qos_wait 0.10s")
    assert (r.fraction_explained, r.confidence) == (0.0, "medium")


def test_recorded_interleaved_writers_keep_their_own_sleeps():
    r = correlate(load("tracepoint-two-writers.jsonl").events)
    assert [(e.comm, e.ino, len(e.waits), e.chain().split(" -> ")[0]) for e in r.episodes] == [
        ("writer0", 13, 4, "blocked 0.44s in blk_mq_get_tag (4 sleeps)"),
        ("writer1", 14, 1, "blocked 0.42s in blk_mq_get_tag")]
    for e in r.episodes:
        assert all(e.start_ns <= w.start_ns <= e.end_ns for w in e.waits)


# --- building blocks ------------------------------------------------------------------------------

def _wb(tid, start, end, func="do_writepages"):
    return {"type": "writeback", "tid": tid, "tgid": tid, "comm": "t%d" % tid, "start_ns": start, "ts_ns": end,
            "func": func, "kstack": [func]}


def test_sequential_calls_are_two_episodes_and_an_overlapping_sleep_stays_outside():
    events = [_wb(1, 0, 10 * S, "ext4_writepages"), _wb(1, 20 * S, 30 * S),
              {"type": "sleep", "tid": 1, "start_ns": 15 * S, "ts_ns": 21 * S, "in_mempool": True, "kstack": None},
              {"type": "slab_failure", "tid": 1, "ts_ns": 12 * S, "cache": "biovec-64"}]
    r = correlate(events)
    assert [(e.func, e.start_ns, len(e.waits)) for e in r.episodes] == [("ext4_writepages", 0, 0), ("do_writepages", 20 * S, 0)]
    assert (r.mempool_waits_elsewhere, r.slab_failures_elsewhere) == (1, 1)


def test_deep_nesting_is_rebuilt_from_times():
    events = [_wb(3, 3, 7, "c"), _wb(3, 2, 8, "b"), _wb(3, 1, 9, "a")]
    (e,) = correlate(events).episodes
    assert [(c.func, c.depth) for c in e.calls] == [("a", 0), ("b", 1), ("c", 2)]


@pytest.mark.parametrize("ns, expected", [
    (MEMPOOL_TIMEOUT_NS, True), (MEMPOOL_TIMEOUT_NS - TIMEOUT_SLACK_NS, True),
    (MEMPOOL_TIMEOUT_NS - TIMEOUT_SLACK_NS - 1, False), (7 * S, True), (0, False)])
def test_timed_out_boundary(ns, expected):
    assert timed_out(ns) is expected


@pytest.mark.parametrize("frame, base", [
    ("mempool_alloc_noprof", "mempool_alloc"), ("mempool_alloc+0x5a/0x190", "mempool_alloc"),
    ("mempool_alloc.isra.0", "mempool_alloc"), ("slab_out_of_memory.constprop.0.cold", "slab_out_of_memory"),
    ("ext4_writepages [ext4]", "ext4_writepages"), ("mempool_alloc_slab", "mempool_alloc_slab"),
    ("[unknown]", "[unknown]")])
def test_base_name(frame, base):
    assert stacks.base_name(frame) == base


def test_stack_queries():
    frames = ["__schedule", "schedule", "schedule_timeout", "io_schedule_timeout", "mempool_alloc_noprof",
              "mempool_alloc_noprof", "bvec_alloc", "bio_alloc_bioset"]
    assert stacks.holds(frames, "mempool_alloc") and not stacks.holds(frames, "kmem_cache_alloc")
    assert not stacks.holds(None, "mempool_alloc") and not stacks.holds([], "mempool_alloc")
    assert stacks.index_of(frames, "mempool_alloc") == 4
    assert stacks.caller_of(frames, "mempool_alloc") == "bvec_alloc"
    assert stacks.caller_of(frames, "nothing") is None
    assert stacks.blocking_frame(frames) == "mempool_alloc_noprof"
    assert stacks.blocking_frame(["__schedule", "schedule"]) is None
    assert stacks.root_first(frames)[0] == "bio_alloc_bioset" and stacks.root_first(None) == []


def test_render_shows_verdict_confidence_and_causal_records():
    from bpftools.tools.iojitter import render
    buf = io.StringIO()
    render(correlate(load("synthetic-lost-records.jsonl").events), Console(file=buf, width=300))
    text = buf.getvalue()
    assert "Verdict: 2 of 2 slow writebacks (100%) were stalled in mempool_alloc" in text
    assert "confidence: low  (sleeps from kprobe)" in text
    assert "  1. mempool wait 5.00s (timed out) -> do_writepages 5.20s (records lost meanwhile)" in text  # longest first


# --- recorded in the lab (tests/kernel/test_iojitter_injector.py, kprobe mode) -------------------

def test_lab_61_injector_stall_and_the_flusher_behind_it():
    """6.1.0-56 under TCG: the slab injector held fs_bio_set's bvec reserve; the writer (tid 413) slept in
    mempool_alloc on the biovec-max pool until the 5 s timeout (1250 jiffies at HZ=250), then until the
    test stopped the injection; the flusher kworker (tid 25) wrote back the same inode meanwhile and
    waited behind it."""
    events = load("lab-6.1-injector.jsonl").events
    r = correlate(events)
    assert [(e.tid, e.comm, e.func, e.dev, e.ino, e.explained) for e in r.episodes] == [
        (413, "python3", "do_writepages", "7:0", 12, True), (25, "kworker/u4:1", "do_writepages", "7:0", 12, True)]
    writer, flusher = r.episodes
    sleeps = [e for e in events if e.get("type") == "sleep" and e["tid"] == 413]
    assert [(w.in_mempool, w.timed_out, w.caller, w.pool_cache, w.duration_ns) for w in writer.waits] == [
        (True, True, "bio_alloc_bioset", "biovec-max", sleeps[0]["duration_ns"]),
        (True, False, "bio_alloc_bioset", "biovec-max", sleeps[1]["duration_ns"])]
    assert [s["timeout_jiffies"] for s in sleeps] == [1250, 1250]
    assert writer.chain().startswith("mempool wait 5.14s on biovec-max (timed out) -> mempool wait 0.91s on "
                                     "biovec-max (woken) -> do_writepages 6.21s > ext4_writepages")
    assert writer.behind is None and flusher.waits == []
    (wb,) = [e for e in events if e.get("type") == "writeback" and e["tid"] == 25 and e["depth"] == 0]
    overlap = sum(min(s["ts_ns"], wb["ts_ns"]) - max(s["start_ns"], wb["start_ns"]) for s in sleeps
                  if s["ts_ns"] > wb["start_ns"])
    assert 1e9 < overlap < wb["duration_ns"]
    assert flusher.behind == {"tid": 413, "comm": "python3", "overlap_ns": overlap}
    assert (r.slow_writebacks, r.explained, r.mempool_timeouts, r.confidence) == (2, 2, 1, "high")
    assert r.verdict.startswith("2 of 2 slow writebacks (100%) were stalled in mempool_alloc (1 of them behind "
                                "another thread's mempool wait on the same inode)")


def test_lab_510_injector_stall_goes_through_bvec_alloc():
    """5.10.0-46: the same run; before 5.12 bvec_alloc calls mempool_alloc (no tail call)."""
    r = correlate(load("lab-5.10-injector.jsonl").events)
    (e,) = r.episodes
    assert (e.tid, e.func, e.explained, e.mempool_timeouts) == (472, "do_writepages", True, 1)
    assert [stacks.base_name(f) for f in e.waits[0].kstack[1:4]] == ["mempool_alloc", "bvec_alloc", "bio_alloc_bioset"]
    assert [(w.timed_out, w.pool_cache) for w in e.waits] == [(True, "biovec-max"), (False, "biovec-max")]


def test_a_flusher_on_another_inode_is_not_behind_the_stall():
    stream = [e for e in load("lab-6.1-injector.jsonl").events]
    for e in stream:
        if e.get("type") == "writeback" and e.get("tid") == 25:
            e["ino"] = 13
    flusher = [e for e in correlate(stream).episodes if e.tid == 25][0]
    assert (flusher.explained, flusher.behind) == (False, None)


# ---- streams of any length: each thread keeps its open window, the result its first and longest -----

def _writer_stream(episodes, threads=2, gap_s=10):
    """EPISODES slow writebacks per thread, GAP_S apart, each a mempool wait after a slab failure; the
    i-th of a thread lasts 100 + i ms (so the longest are the last)."""
    for i in range(episodes):
        for tid in range(100, 100 + threads):
            start = (i * gap_s + 1) * S + tid
            wait = (100 + i) * MS
            yield {"type": "slab_failure", "tid": tid, "ts_ns": start + 10, "cache": "biovec-64"}
            yield {"type": "sleep", "tid": tid, "start_ns": start + 20, "ts_ns": start + 20 + wait,
                   "duration_ns": wait, "in_mempool": True, "kstack": ["mempool_alloc"]}
            yield {"type": "writeback", "tid": tid, "comm": "w%d" % tid, "start_ns": start, "ts_ns": start + wait + 30,
                   "func": "do_writepages", "ino": None}


def test_a_long_stream_keeps_only_each_threads_open_window():
    correlator = Correlator()
    most = 0
    for n, event in enumerate(_writer_stream(3000), 1):
        correlator.feed(event)
        if n % 3 == 0:
            held = sum(len(t.calls) + len(t.sleeps) + len(t.slabs) for t in correlator.threads.values())
            most = max(most, held)
    assert most <= 2 * 3 * 2           # two threads, at most their last two writebacks' records each
    r = correlator.result()
    assert (r.slow_writebacks, r.explained, r.slab_failures, r.mempool_waits) == (6000, 6000, 6000, 6000)
    assert r.groups[0].episodes == 6000 and r.episodes_left_out == 6000 - len(r.episodes)


def test_idle_threads_and_old_stalls_are_swept_by_stream_time():
    """A thread that falls silent keeps its open window until PENDING_NS of stream time passed; then the next
    sweep (once per SWEEP_NS) decides its records. A stall leaves the index of the stalls other threads may be
    behind no sooner than 3 * COLLATERAL_NS after it ended, and at most 3 * COLLATERAL_NS and two sweep intervals
    after it was indexed (the index is dropped whole, a sweep interval's stalls at a time)."""
    correlator = Correlator()
    end, last = S + 500 * MS, 4 * S      # thread 7's writeback ends at END; its last record, a mempool wait, at LAST
    for event in ({"type": "slab_failure", "tid": 7, "ts_ns": S + 10, "cache": "biovec-64"},
                  {"type": "sleep", "tid": 7, "start_ns": S + 20, "ts_ns": S + 20 + 400 * MS, "in_mempool": True},
                  {"type": "writeback", "tid": 7, "comm": "w7", "start_ns": S, "ts_ns": end,
                   "func": "do_writepages", "dev": "8:16", "ino": 5},
                  {"type": "sleep", "tid": 7, "start_ns": last - MS, "ts_ns": last, "in_mempool": True}):
        correlator.feed(event)
    indexed = last      # settled at thread 7's next record: 3.5 s past END
    assert (correlator.totals.episodes, len(correlator.explained_on("8:16", 5))) == (1, 1)
    seen = []      # (time, thread 7 open, its wait decided, the stall indexed) after each record of thread 8
    for ts in range(5 * S, last + iojitter.PENDING_NS + 3 * iojitter.SWEEP_NS, 5 * S):
        correlator.feed({"type": "sleep", "tid": 8, "start_ns": ts - MS, "ts_ns": ts, "in_mempool": False})
        seen.append((ts, 7 in correlator.threads, correlator.totals.mempool_elsewhere,
                     bool(correlator.explained_on("8:16", 5))))
    swept = min(ts for ts, is_open, _, _ in seen if not is_open)
    assert last + iojitter.PENDING_NS < swept <= last + iojitter.PENDING_NS + iojitter.SWEEP_NS + 5 * S
    assert [(is_open, decided) for _, is_open, decided, _ in seen] == [(ts < swept, int(ts >= swept))
                                                                      for ts, _, _, _ in seen]
    dropped = min(ts for ts, _, _, is_indexed in seen if not is_indexed)
    sweeps = 2 * (iojitter.SWEEP_NS + 5 * S)      # two sweeps: the records come 5 s apart
    assert end + 3 * iojitter.COLLATERAL_NS < dropped <= indexed + 3 * iojitter.COLLATERAL_NS + sweeps
    assert [is_indexed for _, _, _, is_indexed in seen] == [ts < dropped for ts, _, _, _ in seen]
    assert not correlator.direct and not correlator.direct_before
    r = correlator.result()
    assert (r.slow_writebacks, r.explained, r.mempool_waits, r.mempool_waits_elsewhere) == (1, 1, 1, 1)


def test_the_episodes_kept_are_the_first_and_the_longest(monkeypatch):
    monkeypatch.setattr(iojitter, "KEEP_EPISODES", 5)
    r = correlate(_writer_stream(50))
    kept = [(e.tid, round(e.mempool_ns / MS)) for e in r.episodes]
    first = [(tid, 100 + i) for i in range(3) for tid in (100, 101)][:5]
    longest = [(100, 149), (101, 149), (100, 148), (101, 148), (100, 147)]   # equal: the earlier first
    assert sorted(kept) == sorted(first + longest) and r.episodes_left_out == 100 - 10
    assert [e.start_ns for e in r.episodes] == sorted(e.start_ns for e in r.episodes)
