"""Recordings read as streams give what the analyses gave when they held every event: the same verdicts,
notes, tables (the episodes table: its first rows, and all of them when it fits), per-container totals
and byte-identical folded stacks. tests/fixtures/streaming/expected.json was made by the analyses as
they were before (tests/fixtures/streaming/README.md)."""
import json
import os

import pytest

from bpftools.analyses.iojitter import KEEP_EPISODES
from bpftools.exports import folded_text
from bpftools.recording import stream_recording
from bpftools.registry import build_report

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
GENERATED = "2026-01-01T00:00:00+00:00"
with open(os.path.join(FIXTURES, "streaming", "expected.json")) as f:
    EXPECTED = json.load(f)


def _plain(value):
    """VALUE as JSON reads it back (tuples as lists)."""
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_streamed_report_equals_the_report_of_the_whole_list(rel):
    want = EXPECTED[rel]
    with stream_recording(os.path.join(FIXTURES, rel)) as stream:
        report = build_report(stream.header, stream.events, GENERATED)
        assert stream.count == want["events"]
    assert _plain(report.verdicts) == want["verdicts"]
    assert report.notes == want["notes"]
    assert [folded_text(g.folded) for g in report.flame_graphs] == want["folded"]
    assert [t.title for t in report.tables] == [t["title"] for t in want["tables"]]
    for table, old in zip(report.tables, want["tables"]):
        assert table.columns == old["columns"]
        rows = _plain(table.rows)
        assert rows[:len(old["rows"])] == old["rows"]
        if old["row_count"] <= KEEP_EPISODES:
            assert (len(rows), table.note) == (old["row_count"], "")
        else:        # the episodes table of a recording too big to keep them all: the first and the longest
            assert KEEP_EPISODES < len(rows) < old["row_count"]
            assert "%d left out" % (old["row_count"] - len(rows)) in table.note


def test_the_big_synthetic_recording_leaves_episodes_out_and_keeps_every_total():
    want = EXPECTED["streaming/synthetic-iojitter.jsonl.gz"]
    assert [t["row_count"] for t in want["tables"]] == [3229, 1]     # 3229 episodes: more than kept
    with stream_recording(os.path.join(FIXTURES, "streaming", "synthetic-iojitter.jsonl.gz")) as stream:
        report = build_report(stream.header, stream.events, GENERATED)
    (episodes, groups) = report.tables
    assert _plain(groups.rows) == want["tables"][1]["rows"] == [[
        "container c8edefa90517 pod 0b5c4d1e-6d3f-4a47-9f0e-3c1a2b4d5e6f", 3229, 3184, 99, 6429.687, 6363.242, 6436]]
    assert report.verdicts[0]["summary"] == "3184 of 3229 slow writebacks explained by mempool waits"
    assert len(episodes.rows) == 3229 - 2302      # 73 of the first 500 are among the longest 500
    assert episodes.note == ("the first 500 and the longest 500 slow writebacks of 3229: 2302 left out (counted in "
                             "every total, the per-container table and the flame graph)")
