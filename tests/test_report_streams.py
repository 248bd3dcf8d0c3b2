"""Every tool's ``bpftools report`` (render_recording) and incident report read a recording's events once,
in bounded memory: the same output as from a list, from an iterator that cannot be read twice, and
(tests/fixtures/reports/expected.json, made by the tools when they held every event in a list) the same
verdicts, tables, timeline, folded stacks and text as before for the kmemsnoop, netdevwait and watch
recordings there."""
import importlib.util
import io
import json
import os

import pytest
from rich.console import Console

from bpftools.html_report import MAX_TABLE_ROWS, render_html
from bpftools.recording import Recording, read_recording, stream_recording
from bpftools.registry import TOOLS, build_report
from bpftools.tools import kmemsnoop, netdevwait
from bpftools.watch import report as watch_report

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
REPORTS = os.path.join(FIXTURES, "reports")
_SPEC = importlib.util.spec_from_file_location("make_expected", os.path.join(REPORTS, "make_expected.py"))
_MAKER = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MAKER)
GENERATED = "2026-01-01T00:00:00+00:00"
with open(os.path.join(REPORTS, "expected.json")) as f:
    EXPECTED = json.load(f)
RHEL7 = "iojitter/synthetic-rhel7-incident.jsonl"        # slab failures, mempool waits and slow writebacks
FIXTURE_OF = {"kmemsnoop": "reports/kmemsnoop.jsonl", "slabfail": RHEL7, "mempoolwait": RHEL7, "writeslow": RHEL7,
              "iojitter": "iojitter/lab-6.1-injector.jsonl", "netdevwait": "reports/netdevwait-kprobe.jsonl",
              "refleak": "refleak/6.1.0-56-amd64/refleak-leak-new.jsonl", "watch": "reports/watch.jsonl"}


class OneShot(object):
    """EVENTS that can be iterated once: a second iteration fails the test."""

    def __init__(self, events):
        self.events = events
        self.iterated = 0

    def __iter__(self):
        self.iterated += 1
        assert self.iterated == 1, "the events were iterated twice"
        return iter(self.events)


def _recording(tool):
    """The fixture recording of TOOL, its header saying TOOL (the I/O-stall tools share iojitter's events)."""
    rec = read_recording(os.path.join(FIXTURES, FIXTURE_OF[tool]))
    return Recording(dict(rec.header, tool=tool), rec.events, rec.trailer, 0)


def _rendered(tool, rec):
    buf = io.StringIO()
    TOOLS[tool].render_recording(rec, Console(file=buf, width=200))
    return buf.getvalue()


def _facts(report):
    """The report as the fixtures' maker compares it."""
    return _MAKER.facts(report)


def test_every_tool_has_a_fixture_here():
    assert sorted(FIXTURE_OF) == sorted(TOOLS)


@pytest.mark.parametrize("tool", sorted(FIXTURE_OF))
def test_render_reads_a_one_shot_iterator_and_prints_what_it_prints_of_the_list(tool):
    rec = _recording(tool)
    listed = _rendered(tool, rec)
    once = OneShot(rec.events)
    assert _rendered(tool, Recording(rec.header, once, rec.trailer, 0)) == listed
    assert once.iterated == 1 and listed.count("\n") > 3


@pytest.mark.parametrize("tool", sorted(t for t in FIXTURE_OF if TOOLS[t].incident_report is not None))
def test_incident_report_reads_a_one_shot_iterator_and_gives_what_it_gives_of_the_list(tool):
    rec = _recording(tool)
    listed = build_report(rec.header, rec.events, GENERATED)
    once = OneShot(rec.events)
    streamed = TOOLS[tool].incident_report(rec.header, once, GENERATED)
    assert once.iterated == 1
    assert _facts(streamed) == _facts(listed) and any(t.rows for t in listed.tables)
    assert render_html(streamed) == render_html(listed)


def test_the_io_stall_tools_print_each_of_their_events_once():
    rec = _recording("slabfail")
    lines = {tool: _rendered(tool, Recording(rec.header, OneShot(rec.events), None, 0)).splitlines()
             for tool in ("slabfail", "mempoolwait", "writeslow")}
    assert [l.split()[:3] for l in lines["slabfail"][1:]] == [
        ["1000.002000", "4242", "mysqld"], ["1000.002050", "4242", "mysqld"], ["1000.500000", "4242", "mysqld"],
        ["1003.000000", "1200", "dockerd"]]
    assert [l.split()[5] for l in lines["mempoolwait"][1:]] == ["woken", "alloc", "timed-out", "alloc"]
    assert [l.split()[3] for l in lines["writeslow"][1:]] == ["1251.000", "350.000", "5010.000", "5012.000"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_streamed_reports_and_text_are_what_the_whole_list_gave(name):
    want = EXPECTED[name]
    with stream_recording(os.path.join(REPORTS, name)) as stream:
        assert _facts(build_report(stream.header, stream.events, GENERATED)) == want["report"]
    with stream_recording(os.path.join(REPORTS, name)) as stream:
        assert _rendered(stream.tool, stream) == want["render"]


def test_the_fixtures_say_what_each_report_found():
    kmem = EXPECTED["kmemsnoop.jsonl"]["report"]
    assert kmem["verdicts"][0]["summary"] == "109 successful write(s) to memory.kmem.limit_in_bytes by 4 process(es)"
    assert len(kmem["tables"][0]["rows"]) == 240 and len(kmem["timeline"]) == 240
    ndw = EXPECTED["netdevwait-kprobe.jsonl"]
    assert ndw["report"]["verdicts"][0]["summary"] == "1 device wait(s); ndwn: slow release"
    assert "netns=cni-7 pod=0b5c4d1e-6d3f-4a47-9f0e-3c1a2b4d5e6f ctr=c8edefa90517 peer=veth7" in \
        ndw["render"].splitlines()[2]         # the first update: its context was recorded after it
    assert [t["title"] for t in EXPECTED["watch.jsonl"]["report"]["tables"]] == [
        "watch: Triggers", "iojitter: Slow writebacks", "iojitter: By container / pod / cgroup",
        "netdevwait: Device waits", "netdevwait: Notifier subscribers per device",
        "kmemsnoop: Opens and writes of memory.kmem.* files"]


# --- bounded: what a long recording keeps ---------------------------------------------------------

def _kmem_events(count):
    import sys
    sys.path.insert(0, REPORTS)
    try:
        import make_expected
    finally:
        sys.path.remove(REPORTS)
    return make_expected.kmem_events(count)


def test_kmemsnoop_keeps_the_first_rows_and_counts_every_event():
    events = _kmem_events(MAX_TABLE_ROWS + 7)
    report = kmemsnoop.incident_report({"argv": []}, OneShot(events), GENERATED)
    (table,) = report.tables
    first = kmemsnoop.incident_report({"argv": []}, events[:MAX_TABLE_ROWS], GENERATED)
    assert table.rows == first.tables[0].rows and len(table.rows) == MAX_TABLE_ROWS
    assert table.note == ("the first 5000 of 5007 events: 7 left out (counted in the verdict, the activity "
                          "timeline and the flame graph)") and first.tables[0].note == ""
    assert report.timeline == first.timeline and len(report.timeline) == MAX_TABLE_ROWS
    enabling = [e for e in events if e["op"] == "write" and e["ret"] >= 0
                and e["path"].endswith("/memory.kmem.limit_in_bytes")]
    assert set(e["tgid"] for e in enabling) == {901, 902, 904, 905}
    assert report.verdicts[0]["summary"] == ("%d successful write(s) to memory.kmem.limit_in_bytes by 4 process(es)"
                                             % len(enabling))
    assert len(report.verdicts[0]["evidence"]) == 20
    assert report.verdicts[0]["evidence"][0] == "pid %d (%s) wrote %r to %s: ok" % (
        enabling[0]["tgid"], enabling[0]["comm"], enabling[0]["value"], enabling[0]["path"])
    assert sum(report.flame_graphs[0].folded.values()) == MAX_TABLE_ROWS + 7
    counts = report.activity.to_json()["counts"]
    assert sum(sum(row) for row in counts.values()) == MAX_TABLE_ROWS + 7
    assert sum(counts["open"]) == len([e for e in events if e["op"] == "open"])


def test_netdevwait_marks_the_first_updates_and_counts_the_rest(monkeypatch):
    monkeypatch.setattr(netdevwait, "MAX_TIMELINE_MARKERS", 2)
    rec = read_recording(os.path.join(REPORTS, "netdevwait-kprobe.jsonl"))
    report = netdevwait.incident_report(rec.header, OneShot(rec.events), GENERATED)
    assert report.timeline == [(1000000000, "waiting ndwn", "waiting"), (2000000000, "round ndwn", "round")]
    assert report.notes == ["kprobe mode: test", "the timeline marks the first 2 updates: 2 more not marked"]
    assert report.tables[0].rows == [["ndwn", 2, 7, 1, 0, "3", 2.01, True]]


def test_watch_lists_the_first_triggers_and_leaves_no_spool(monkeypatch, tmp_path):
    monkeypatch.setattr(watch_report, "MAX_TRIGGERS", 1)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    rec = read_recording(os.path.join(REPORTS, "watch.jsonl"))
    report = build_report(rec.header, OneShot(rec.events), GENERATED)
    assert report.tables[0].rows == [["kmem_io_jitter", "mempool_wait", "mempool wait of 5.14 s"]]
    assert report.tables[0].note == "the first 1 triggers: 1 more left out"
    assert os.listdir(str(tmp_path)) == []
    text = _rendered("watch", Recording(rec.header, OneShot(rec.events), rec.trailer, 0))
    assert text.splitlines()[:3] == ["trigger: [kmem_io_jitter] mempool wait of 5.14 s", "(1 more triggers)",
                                     "doctor: kmem_io_jitter: detected: hung tasks in writeback"]
    assert os.listdir(str(tmp_path)) == []


def test_a_watch_report_interrupted_midway_leaves_no_spool(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    rec = read_recording(os.path.join(REPORTS, "watch.jsonl"))

    def cut():
        for i, event in enumerate(rec.events):
            if i == 30:
                raise KeyboardInterrupt
            yield event

    with pytest.raises(KeyboardInterrupt):
        build_report(rec.header, cut(), GENERATED)
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_report_streams_every_recording_and_counts_it_at_the_end(bpftools_cli, name):
    path = os.path.join(REPORTS, name)
    r = bpftools_cli("report", path, env=dict(os.environ, COLUMNS="200"))     # the width the fixtures were made at
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    header = read_recording(path)
    assert lines[0] == "%s recording: bpftools %s on %s" % (header.tool, header.header["version"],
                                                             header.header["kernel_release"])
    assert "\n".join(lines[2:-1]) == EXPECTED[name]["render"].rstrip("\n")
    assert lines[-1] == "read %d events" % len(header.events)
