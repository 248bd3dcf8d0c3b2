"""Reports of iojitter recordings, and one report of several recordings (incident 1 + incident 2).

The recordings are the lab's: iojitter on 6.1.0-56 and 5.10.0-46 with the slab injector holding
fs_bio_set's bvec reserve, refleak on 6.1.0-56 with the devref module leaking a reference.
"""
import json
import os

from test_cli import _one_line_error
from test_html_report import EVIL, Page, embedded_json

from bpftools.analyses.iojitter import correlate
from bpftools.errors import EXIT_BAD_INPUT
from bpftools.exports import combine, export_names, folded_text
from bpftools.recording import Recorder, read_recording
from bpftools.registry import build_report
from bpftools.tools.iojitter import incident_report

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
IOJITTER_61 = os.path.join(FIXTURES, "iojitter", "lab-6.1-injector.jsonl")
IOJITTER_510 = os.path.join(FIXTURES, "iojitter", "lab-5.10-injector.jsonl")
REFLEAK_61 = os.path.join(FIXTURES, "refleak", "6.1.0-56-amd64", "refleak-leak-new.jsonl")
GENERATED = "2024-05-01T10:00:00Z"
IOJITTER_TITLE = "Slow writebacks stalled in mempool_alloc"
REFLEAK_TITLE = "Device references not dropped"


def report_of(path):
    rec = read_recording(path)
    return build_report(rec.header, rec.events, GENERATED)


# --- iojitter's report ----------------------------------------------------------------------------

def test_iojitter_report_of_the_61_lab_recording():
    """The writer (tid 413) waited on biovec-max, mempool_alloc called from bio_alloc_bioset (bvec_alloc is a
    tail call since 5.12); the flusher (tid 25) waited behind it on the same inode."""
    rec = read_recording(IOJITTER_61)
    report = incident_report(rec.header, rec.events, GENERATED)
    (verdict,) = report.verdicts
    assert (verdict["incident"], verdict["title"], verdict["status"]) == ("kmem_io_jitter", IOJITTER_TITLE, "detected")
    assert verdict["summary"] == "2 of 2 slow writebacks (>= 1.00 s) explained by mempool waits; pools: biovec-max"
    assert verdict["evidence"] == [
        "tid 413 (python3): do_writepages stalled 6.21 s, explained; 2 mempool wait(s) for 6.06 s, 1 timed out; "
        "pool biovec-max; mempool_alloc called from bio_alloc_bioset",
        "tid 25 (kworker/u4:1): do_writepages stalled 1.31 s, explained; behind tid 413 (python3) in mempool wait "
        "1.16 s on the same inode",
        "confidence high (sleeps from kprobe)"]
    episodes, groups = report.tables
    assert episodes.title == "Slow writebacks"
    col = dict((name, i) for i, name in enumerate(episodes.columns))
    assert [[row[col[c]] for c in ("tid", "comm", "group", "explained", "mempool waits", "timeouts", "pool cache",
                                   "mempool_alloc caller")] for row in episodes.rows] == [
        [413, "python3", "host", True, 2, 1, "biovec-max", "bio_alloc_bioset"],
        [25, "kworker/u4:1", "host", "yes, behind tid 413", 0, 0, "", ""]]
    assert episodes.rows[0][col["stall (s)"]] == 6.214
    assert episodes.rows[0][col["first frames"]].startswith("__sched_text_start <- mempool_alloc <- bio_alloc_bioset")
    assert groups.rows == [["host", 2, 2, 100, 7.519, 6.057, 0]]
    assert [(kind, label) for _, label, kind in report.timeline] == [
        ("slow writeback", "tid 413 python3: do_writepages stalled 6.21 s"),
        ("mempool wait", "tid 413: mempool wait 5.14 s on biovec-max (timed out)"),
        ("mempool wait", "tid 413: mempool wait 0.91 s on biovec-max (woken)"),
        ("slow writeback", "tid 25 kworker/u4:1: do_writepages stalled 1.31 s")]
    (graph,) = report.flame_graphs
    assert (graph.name, graph.unit) == ("iojitter", "ns")
    assert graph.folded == correlate(rec.events).folded           # the same stacks as `iojitter --folded`
    assert sum(graph.folded.values()) == 5144900590 + 912138360 + 156665980 + 1305577950
    assert (report.kernel_release, report.capabilities) == ("6.1.0-56-amd64", rec.header["capabilities"])


def test_iojitter_report_of_the_510_lab_recording_names_bvec_alloc():
    report = report_of(IOJITTER_510)
    (verdict,) = report.verdicts
    assert verdict["status"] == "detected"
    assert verdict["summary"] == "1 of 1 slow writebacks (>= 1.00 s) explained by mempool waits; pools: biovec-max"
    assert verdict["evidence"][0] == ("tid 472 (python3): do_writepages stalled 6.12 s, explained; 2 mempool wait(s) "
                                      "for 6.03 s, 1 timed out; pool biovec-max; mempool_alloc called from bvec_alloc")
    (row,) = report.tables[0].rows
    assert row[1:3] + row[10:12] == [472, "python3", "biovec-max", "bvec_alloc"]


def test_iojitter_report_without_mempool_waits_is_clear():
    """The development machine's syncfs stall: the flusher slept in rq_qos_wait and blk_mq_get_tag."""
    (verdict,) = report_of(os.path.join(FIXTURES, "iojitter", "tracepoint-syncfs-stall.jsonl")).verdicts
    assert verdict["status"] == "clear"
    assert verdict["summary"] == "0 of 1 slow writebacks (>= 0.10 s) explained by mempool waits"
    assert verdict["evidence"][0].startswith(
        "tid 33 (kworker/u8:1): writeback_single_inode stalled 0.42 s, not explained; blocked 0.10s in rq_qos_wait "
        "-> blocked 0.32s in blk_mq_get_tag")


# --- several recordings, one report ---------------------------------------------------------------

def test_combine_keeps_both_incidents_in_order():
    io, leak = report_of(IOJITTER_61), report_of(REFLEAK_61)
    merged = combine([("iojitter", io), ("refleak", leak)])
    assert merged.title == "bpftools incident report: iojitter + refleak"
    assert [(v["incident"], v["title"]) for v in merged.verdicts] == [
        ("kmem_io_jitter", IOJITTER_TITLE), ("netdev_refcount_leak", REFLEAK_TITLE)]
    # the lab dropped the leaked reference before refleak stopped: the device was freed, balanced
    assert [(v["status"], v["summary"]) for v in merged.verdicts] == [
        ("detected", io.verdicts[0]["summary"]), ("clear", "every watched device balanced or still in use (1 watched)")]
    assert [t.title for t in merged.tables] == [
        "iojitter: Slow writebacks", "iojitter: By container / pod / cgroup",
        "refleak: Balance per device and strategy", "refleak: Unbalanced stacks",
        "refleak: Holders alive at unregister"]
    assert merged.tables[0].rows == io.tables[0].rows and merged.tables[2].rows == leak.tables[0].rows
    assert [g.title for g in merged.flame_graphs] == [
        "iojitter: Time in slow writebacks by kernel stack (waits and the rest)",
        "refleak: References not dropped, by stack"]
    assert [g.unit for g in merged.flame_graphs] == ["ns", "references"]
    assert export_names(merged) == ["iojitter", "refleak"]
    assert len(merged.timeline) == len(io.timeline) + len(leak.timeline)
    assert merged.timeline[0][1:] == ("iojitter: tid 413 python3: do_writepages stalled 6.21 s", "slow writeback")
    assert merged.timeline[len(io.timeline)][1].startswith("refleak: ")
    assert merged.commands == [("iojitter", io.command), ("refleak", leak.command)]
    assert merged.command == io.command and merged.generated == GENERATED
    assert merged.kernel_release == "6.1.0-56-amd64" and merged.capabilities == io.capabilities
    assert merged.notes == ["the timeline puts every recording on one axis of monotonic time (ts_ns): events line "
                            "up only for recordings made on the same node during one boot"]
    assert merged.to_json()["commands"] == [["iojitter", io.command], ["refleak", leak.command]]


def test_combine_says_when_kernels_differ_and_keeps_export_names_unique():
    old, new = report_of(IOJITTER_510), report_of(IOJITTER_61)
    merged = combine([("iojitter", old), ("iojitter", new)])
    assert merged.kernel_release == "5.10.0-46-amd64 (iojitter), 6.1.0-56-amd64 (iojitter)"
    assert merged.notes[0] == "the recordings come from different kernels: " + merged.kernel_release
    assert export_names(merged) == ["iojitter", "iojitter-2"]
    assert [v["summary"][:6] for v in merged.verdicts] == ["1 of 1", "2 of 2"]


def test_combine_of_one_report_is_that_report():
    io = report_of(IOJITTER_61)
    assert combine([("iojitter", io)]) is io


# --- the CLI --------------------------------------------------------------------------------------

def hostile_iojitter(tmp_path):
    """The 6.1 recording with the writer's comm replaced by markup."""
    path = str(tmp_path / "iojitter.jsonl")
    with open(IOJITTER_61, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace('"comm": "python3"', '"comm": %s' % json.dumps(EVIL)))
    return path


def test_cli_writes_one_html_report_of_both_recordings(bpftools_cli, tmp_path):
    out = str(tmp_path / "incident.html")
    r = bpftools_cli("report", hostile_iojitter(tmp_path), REFLEAK_61, "--html", out)
    assert r.code == 0, r.err
    assert r.err == "wrote %s\n" % out
    with open(out, encoding="utf-8") as f:
        html = f.read()
    page = Page(html)
    assert page.tags.count("script") == 4          # a script per flame graph, the JSON data, the page script
    assert "img" not in page.tags and "<script>alert" not in html
    assert not [a for a in page.attrs if a[0].startswith("on")]
    texts = set(t.strip() for t in page.texts)
    assert "bpftools incident report: iojitter + refleak" in texts
    assert IOJITTER_TITLE in texts and REFLEAK_TITLE in texts
    assert html.count('</h3><pre class="command">') == 2            # the command of each recording
    assert '<h3>refleak</h3><pre class="command"><code>bpftools refleak --json --record /tmp/bpftools-refleak-' in html
    assert EVIL in texts                                            # the writer's comm, shown as text
    data = json.loads(embedded_json(html))
    assert [v["title"] for v in data["verdicts"]] == [IOJITTER_TITLE, REFLEAK_TITLE]
    assert [t["title"] for t in data["tables"]][:2] == ["iojitter: Slow writebacks",
                                                        "iojitter: By container / pod / cgroup"]
    assert data["tables"][0]["rows"][0][2] == EVIL


def test_cli_report_dir_writes_every_flame_graph(bpftools_cli, tmp_path):
    out = tmp_path / "out"
    r = bpftools_cli("report", IOJITTER_61, REFLEAK_61, "--report", str(out))
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == [
        "iojitter.folded", "iojitter.speedscope.json", "iojitter.svg",
        "refleak.folded", "refleak.speedscope.json", "refleak.svg", "report.html"]
    assert (out / "iojitter.folded").read_text().splitlines()[-1].endswith(";[mempool wait 5.14s] 5144900590")


def test_cli_one_flame_graph_file_for_several_recordings_asks_for_report_dir(bpftools_cli, tmp_path):
    for option in ("--svg", "--folded", "--speedscope"):
        r = bpftools_cli("report", IOJITTER_61, REFLEAK_61, option, str(tmp_path / "x"))
        assert _one_line_error(r, EXIT_BAD_INPUT) == (
            "bpftools: error: --folded, --speedscope and --svg write one flame graph: with 2 recordings use "
            "--report DIR")
    assert os.listdir(str(tmp_path)) == []


def test_cli_text_and_json_of_several_recordings(bpftools_cli):
    r = bpftools_cli("report", IOJITTER_61, REFLEAK_61)
    assert r.code == 0, r.err
    first = r.out.index("iojitter recording: bpftools 0.1.0 on 6.1.0-56-amd64\n")
    second = r.out.index("refleak recording: bpftools 0.1.0 on 6.1.0-56-amd64\n")
    assert first == 0 and first < r.out.index("read 8 events\n") < second     # streamed: counted once read
    assert "Verdict: 2 of 2 slow writebacks (100%) were stalled in mempool_alloc" in r.out
    r = bpftools_cli("report", IOJITTER_61, REFLEAK_61, "--json")
    assert r.code == 0, r.err
    docs = json.loads(r.out)
    assert [d["header"]["tool"] for d in docs] == ["iojitter", "refleak"]
    assert [len(d["events"]) for d in docs] == [len(read_recording(p).events) for p in (IOJITTER_61, REFLEAK_61)]
    one = json.loads(bpftools_cli("report", IOJITTER_61, "--json").out)
    assert one["header"]["tool"] == "iojitter" and one == docs[0]


# --- several recordings of one tool (per-node bundles) merge into one report in time order ----------

SMALL = os.path.join(FIXTURES, "streaming", "synthetic-iojitter-small.jsonl.gz")


def _split_by_thread(tmp_path):
    """The small synthetic recording as two (even and odd threads, the second gzip-compressed), every
    thread whole in one of them, as two nodes would record it; lost-record markers left out (their
    place in one stream is not in the other)."""
    rec = read_recording(SMALL)
    events = [e for e in rec.events if e["type"] != "lost"]
    paths = [str(tmp_path / "even.jsonl"), str(tmp_path / "odd.jsonl.gz")]
    for parity, path in enumerate(paths):
        out = Recorder(path, rec.header)
        for e in events:
            if e["type"] == "mode" or e["tid"] % 2 == parity:
                out.write(e)
        out.close({"lost_events": 0, "interrupted": False, "events": out.events})
    return rec.header, events, paths


def test_cli_merges_recordings_of_one_tool_into_one_report(bpftools_cli, tmp_path):
    header, events, paths = _split_by_thread(tmp_path)
    whole = build_report(header, events, GENERATED)
    r = bpftools_cli("report", paths[0], paths[1], "--folded", "-")
    assert r.code == 0, r.err
    assert r.out == folded_text(whole.flame_graphs[0].folded)          # byte for byte, one flame graph
    r = bpftools_cli("report", paths[0], paths[1], "--report", str(tmp_path / "out"))
    assert r.code == 0, r.err
    data = json.loads(embedded_json(open(str(tmp_path / "out" / "report.html")).read()))
    assert [v["summary"] for v in data["verdicts"]] == [whole.verdicts[0]["summary"]] == [
        "398 of 403 slow writebacks explained by mempool waits"]
    assert [t["rows"] for t in data["tables"]] == [json.loads(json.dumps(t.rows)) for t in whole.tables]
    r = bpftools_cli("report", paths[0], paths[1])
    assert r.code == 0, r.err
    assert r.out.count("iojitter recording:") == 1
    assert "read %d events\n" % (len(events) + 1) in r.out                # the mode record is in both
    assert "Verdict: 398 of 403 slow writebacks (99%) were stalled in mempool_alloc" in " ".join(r.out.split())
