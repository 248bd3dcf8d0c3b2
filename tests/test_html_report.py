"""The HTML incident report and the export directory: structure, escaping of hostile input, files."""
import base64
import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET
from html import unescape
from html.parser import HTMLParser

from bpftools.analyses.folded import annotation, fold, parse_folded
from bpftools.exports import export_names, folded_text, write_exports
from bpftools.html_report import (MAX_BUCKETS, MAX_TABLE_ROWS, Activity, FlameGraph, IncidentReport, Table, command_line,
                                  json_for_script, render_html, sections, slug)

EVIL = "<script>alert(1)</script>"
SVG = "{http://www.w3.org/2000/svg}"


class Page(HTMLParser):
    """Start tags, and the text of the page as a browser would show it (entities decoded)."""

    def __init__(self, html):
        HTMLParser.__init__(self, convert_charrefs=True)
        self.tags, self.texts, self.attrs = [], [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.texts.append(data)


def writeback_stacks():
    head = [annotation("pid 1234 kworker/u8:2"), "ret_from_fork", "kthread", "worker_thread", "wb_workfn",
            "__writepage", "bio_alloc_bioset", "bvec_alloc"]
    return fold([(head + ["mempool_alloc", annotation("mempool wait 5.00s")], 5 * 10 ** 9),
                 (head + ["kmem_cache_alloc", annotation("slab fail biovec-64")], 2 * 10 ** 9),
                 ([EVIL, "\"q'uote", "x]]>y", "</script>", "bad\udcff\ud800\ufffd"], 3 * 10 ** 8)])


def hostile_report():
    return IncidentReport(
        title="Incident " + EVIL,
        command=["bpftools", "report", "rec.jsonl", "--html", "x y.html", EVIL],
        generated="2024-05-01T10:00:00Z",
        kernel_release="3.10.0-957.el7.x86_64\udcff",
        verdicts=[
            {"incident": "kmem_io_jitter", "title": "I/O jitter from kmem accounting", "status": "detected",
             "summary": "slab failures " + EVIL, "evidence": ["cache biovec-64(1234:pod" + EVIL + ")", "bad \udcff"],
             "remediation": ["boot with cgroup.memory=nokmem"]},
            {"incident": "netdev_refcount_leak", "title": "netdev refcount leak", "status": "at-risk",
             "summary": "fnhe race", "evidence": [], "remediation": ["upgrade"]},
            {"incident": "other", "title": "t", "status": "\"><img src=x onerror=alert(4)>", "summary": "",
             "evidence": [], "remediation": []},
        ],
        tables=[Table("kmem writers " + EVIL, ["pid", "comm", "path", "value"],
                      [[4242, "runc" + EVIL, "/sys/fs/cgroup/memory/kubepods/x\udcff/memory.kmem.limit_in_bytes", "1"],
                       [17, b"dockerd\xff", "</script>", None], [1, True, 2.5, "]]>"]])],
        timeline=[(1000000000, "writepage start", "writeback"), (1200000000, "slab fail " + EVIL, "slab\ud800"),
                  (6200000000, "mempool wait 5.00s", "mempool"), (6300000000, "writepage end", "writeback")],
        flame_graphs=[FlameGraph("Slow writebacks", writeback_stacks(), unit="ns"),
                      FlameGraph("Writers " + EVIL, fold([(["runc", "write"], 3), (["dockerd", "write"], 1)]),
                                 count_name="writes")],
        capabilities={"kernel_release": "3.10.0-957", "distro": "CentOS Linux 7 (Core)",
                      "checks": [{"name": "kprobes", "ok": True, "detail": "kprobe_events present"},
                                 {"name": "btf", "ok": False, "detail": "no BTF " + EVIL},
                                 {"name": "hw_breakpoint", "ok": None, "detail": ""}],
                      "tracepoints": {"sched:sched_switch": True, "kmem:kmem_cache_alloc": False},
                      "symbols": [{"wanted": "bvec_alloc", "attach": "bvec_alloc.isra.0", "how": "alias",
                                   "fallback": None, "note": "isra clone"}],
                      "cgroup_layout": "v1"},
        notes=["recording truncated " + EVIL], tool_version="0.1.0")


def embedded_json(html):
    m = re.search(r'<script type="application/json" id="bpftools-report-data">(.*?)</script>', html, re.S)
    return m.group(1)


def test_hostile_strings_are_text_everywhere():
    html = render_html(hostile_report())
    html.encode("utf-8")                                    # nothing unencodable survives
    page = Page(html)
    # our scripts only: one per flame graph, the JSON data and the page script
    assert page.tags.count("script") == 4
    assert "img" not in page.tags and "<script>alert" not in html
    assert not [a for a in page.attrs if a[0].startswith("on")]
    texts = set(t.strip() for t in page.texts)
    for shown in ("Incident " + EVIL, "slab failures " + EVIL, "cache biovec-64(1234:pod" + EVIL + ")", "bad \\xff",
                  "runc" + EVIL, "dockerd\\xff", "</script>", "]]>", "no BTF " + EVIL, "recording truncated " + EVIL,
                  "3.10.0-957.el7.x86_64\\xff", "\"><img src=x onerror=alert(4)>", "kmem writers " + EVIL):
        assert shown in texts, shown


def test_embedded_json_cannot_break_out_and_round_trips():
    html = render_html(hostile_report())
    raw = embedded_json(html)
    assert "<" not in raw and ">" not in raw and "&" not in raw
    data = json.loads(raw)
    assert data["title"] == "Incident " + EVIL
    assert data["command"][-1] == EVIL
    assert data["kernel_release"] == "3.10.0-957.el7.x86_64\\xff"
    assert data["tables"][0]["rows"][1] == [17, "dockerd\\xff", "</script>", None]
    assert data["timeline"][1] == [1200000000, "slab fail " + EVIL, "slab\ufffd"]
    assert data["flame_graphs"] == [
        {"title": "Slow writebacks", "name": "", "unit": "ns", "stacks": 3, "total": 7300000000},
        {"title": "Writers " + EVIL, "name": "", "unit": "samples", "stacks": 2, "total": 4}]
    assert data["verdicts"][0]["evidence"] == ["cache biovec-64(1234:pod" + EVIL + ")", "bad \\xff"]


def test_json_for_script_escapes_markup_and_separators():
    assert json_for_script({"a": "</script>&\u2028"}) == '{"a": "\\u003c/script\\u003e\\u0026\\u2028"}'


def test_sections_order_anchors_and_counts():
    got = [(s.anchor, s.title, s.count) for s in sections(hostile_report())]
    assert got == [("verdicts", "Verdicts", 3), ("flame-graphs", "Flame graphs", 2), ("timeline", "Timeline", 4),
                   ("tables", "Tables", 1), ("capabilities", "Node capabilities", None), ("command", "Command", None)]
    bare = IncidentReport("t", ["bpftools"], "2024-01-01T00:00:00Z", "6.1.0")
    assert [s.anchor for s in sections(bare)] == ["verdicts", "command"]
    assert "No verdicts in this report." in render_html(bare)


def test_verdict_cards_and_summary_badges():
    html = render_html(hostile_report())
    assert html.count('<article class="verdict detected">') == 1
    assert html.count('<article class="verdict at-risk">') == 1
    assert html.count('<article class="verdict unknown">') == 1
    assert '<span class="badge detected">1 detected</span> <span class="badge at-risk">1 at-risk</span>' in html
    assert "<li>boot with cgroup.memory=nokmem</li>" in html


def test_tables_escape_cells_and_align_numbers():
    html = render_html(hostile_report())
    assert ('<tr><td class="num">4242</td><td>runc&lt;script&gt;alert(1)&lt;/script&gt;</td>'
            '<td>/sys/fs/cgroup/memory/kubepods/x\\xff/memory.kmem.limit_in_bytes</td><td>1</td></tr>') in html
    assert '<tr><td class="num">1</td><td>yes</td><td class="num">2.5</td><td>]]&gt;</td></tr>' in html


def test_long_tables_are_cut_and_say_so():
    report = IncidentReport("t", [], "g", "k", tables=[Table("big", ["n"], [[i] for i in range(MAX_TABLE_ROWS + 7)])])
    html = render_html(report)
    assert html.count('<td class="num">') == MAX_TABLE_ROWS
    assert "7 more row(s) not shown" in html


def test_capabilities_tables():
    html = render_html(hostile_report())
    assert '<tr><td>kprobes</td><td><span class="ok">yes</span></td><td>kprobe_events present</td></tr>' in html
    assert '<tr><td>hw_breakpoint</td><td><span class="unknown">?</span></td><td></td></tr>' in html
    assert ('<tr><td>kmem:kmem_cache_alloc</td><td><span class="bad">no</span></td></tr>'
            '<tr><td>sched:sched_switch</td><td><span class="ok">yes</span></td></tr>') in html
    assert ('<tr><td>bvec_alloc</td><td>bvec_alloc.isra.0</td><td>alias</td><td></td><td>isra clone</td></tr>'
            in html)


def test_command_is_shell_quoted():
    assert command_line(["bpftools", "report", "x y.html", "it's"]) == "bpftools report 'x y.html' 'it'\"'\"'s'"
    html = render_html(hostile_report())
    assert ("<pre class=\"command\"><code>bpftools report rec.jsonl --html &#x27;x y.html&#x27; "
            "&#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27;</code></pre>") in html


def test_timeline_places_events_by_time_and_lanes_by_kind():
    html = render_html(hostile_report())
    lanes = re.findall(r'<text x="\d+" y="\d+" class="lane" text-anchor="end">([^<]*)</text>', html)
    assert lanes == ["writeback", "slab\ufffd", "mempool"]
    # a 110 px label column, then 1090 px of plot for 5.3 s (markers are 3 px wide)
    assert re.findall(r'<rect class="ev" x="([0-9.]+)"', html) == ["110.0", "151.0", "1176.5", "1197.0"]
    assert "4 event(s) over 5.30 s, from ts_ns 1000000000." in html
    assert '<td class="num">+0.200000</td><td class="num">1200000000</td><td>slab\ufffd</td>' in html


def test_inline_flame_graphs_are_well_formed_svg_with_their_search_box():
    html = render_html(hostile_report())
    svgs = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" class="bpffg".*?</svg>', html, re.S)
    assert len(svgs) == 2
    roots = [ET.fromstring(s.encode("utf-8")) for s in svgs]
    assert [r.find(SVG + "text[@class='title']").text for r in roots] == ["Slow writebacks", "Writers " + EVIL]
    assert html.count('<form class="fg-search" data-target="fg-1">') == 1
    assert '<div class="flamegraph" id="fg-2">' in html
    assert "<?xml" not in html


def test_write_exports_writes_every_file(tmp_path):
    out = str(tmp_path / "rep")
    report = hostile_report()
    report.flame_graphs.append(FlameGraph("Slow writebacks", {"a": 1}, name=""))   # same title: made unique
    paths = write_exports(out, report)
    names = ["slow-writebacks", "writers-script-alert-1-script", "slow-writebacks-2"]
    assert export_names(report) == names
    assert [os.path.relpath(p, out) for p in paths] == ["report.html"] + [
        n + ext for n in names for ext in (".folded", ".speedscope.json", ".svg")]
    with open(os.path.join(out, "slow-writebacks.folded"), encoding="utf-8") as f:
        text = f.read()
    assert text == folded_text(writeback_stacks())
    assert parse_folded(text.splitlines()) == writeback_stacks()
    with open(os.path.join(out, "slow-writebacks.speedscope.json"), encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["profiles"][0]["unit"] == "nanoseconds" and doc["profiles"][0]["endValue"] == 7300000000
    ET.parse(os.path.join(out, "writers-script-alert-1-script.svg"))
    with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
        assert f.read() == render_html(report)


def test_exports_never_fail_on_unencodable_stacks(tmp_path):
    report = IncidentReport("t", [], "g", "k", flame_graphs=[FlameGraph("raw", {"a\udcff;b": 2}, name="raw")])
    paths = write_exports(str(tmp_path), report)
    with open(paths[1], encoding="utf-8") as f:
        assert f.read() == "a\\udcff;b 2\n"
    ET.parse(paths[3])


def test_slug():
    assert slug("Slow writebacks (mempool)", "x") == "slow-writebacks-mempool"
    assert slug("<<>>", "flamegraph-3") == "flamegraph-3"


def test_content_security_policy_allows_exactly_our_scripts():
    html = render_html(hostile_report())
    csp = unescape(re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', html).group(1))
    assert csp.startswith("default-src 'none'; script-src 'sha256-")
    assert csp.endswith("; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'")
    allowed = set(re.findall(r"'sha256-([A-Za-z0-9+/=]+)'", csp))
    scripts = (re.findall(r"<script>(.*?)</script>", html, re.S)
               + re.findall(r'<script type="text/ecmascript"><!\[CDATA\[(.*?)\]\]></script>', html, re.S))
    assert len(scripts) == 3
    assert set(base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode() for s in scripts) == allowed
    assert len(allowed) == 2          # the page script, and the flame graph script shared by both graphs


def test_json_for_script_keeps_json_valid_for_non_finite_numbers():
    assert json_for_script({"x": float("nan"), "y": [float("inf")]}) == '{"x": "nan", "y": ["inf"]}'


# ---- the timeline of a recording of any length: activity counted in buckets -------------------------

def test_activity_buckets_widen_and_merge_keeping_every_count():
    a = Activity()
    for ts in (0, 239, 5, 5):
        a.add(ts, "x")
    assert a.to_json() == {"start_ns": 0, "bucket_ns": 1, "counts": {"x": [1] + [0] * 4 + [2] + [0] * 233 + [1]}}
    a.add(240, "y")                          # 241 buckets of 1 ns: the width doubles, neighbours merge
    data = a.to_json()
    assert (data["start_ns"], data["bucket_ns"], len(data["counts"]["x"])) == (0, 2, 121)
    assert (data["counts"]["x"][0], data["counts"]["x"][2], data["counts"]["x"][119]) == (1, 2, 1)
    assert data["counts"]["y"][120] == 1 and sum(data["counts"]["y"]) == 1


def test_activity_of_any_order_and_span_stays_bounded():
    a = Activity()
    times = [(i * 7919) % 1000003 * 10 ** 6 - 5 * 10 ** 11 for i in range(20000)]   # shuffled, some negative
    for ts in times:
        a.add(ts, "even" if ts % 2 == 0 else "odd", 2)
    data = a.to_json()
    row = data["counts"]["even"]
    assert len(row) <= MAX_BUCKETS and sum(row) == 2 * len(times)
    assert data["start_ns"] <= min(times) < max(times) < data["start_ns"] + len(row) * data["bucket_ns"]
    first = min(times)
    assert row[(first - data["start_ns"]) // data["bucket_ns"]] > 0


def test_iojitter_report_counts_every_record_in_the_activity_timeline():
    from bpftools.recording import read_recording
    from bpftools.registry import build_report
    rec = read_recording(os.path.join(os.path.dirname(__file__), "fixtures", "streaming",
                                      "synthetic-iojitter-small.jsonl.gz"))
    report = build_report(rec.header, iter(rec.events), "2026-01-01T00:00:00Z")
    counts = dict((kind, sum(row)) for kind, row in report.activity.to_json()["counts"].items())
    sleeps = [e for e in rec.events if e["type"] == "sleep"]
    assert counts == {"slab failure": sum(1 for e in rec.events if e["type"] == "slab_failure"),
                      "mempool wait": sum(1 for e in sleeps if e["in_mempool"]),
                      "other sleep": sum(1 for e in sleeps if not e["in_mempool"]),
                      "writeback call": sum(1 for e in rec.events if e["type"] == "writeback")}
    html = render_html(report)
    assert html.count('class="bucket"') > 100
    assert "All {:,} event(s) of the recording, counted in spans of".format(sum(counts.values())) in html
    assert json.loads(embedded_json(html))["activity"]["counts"].keys() == counts.keys()
