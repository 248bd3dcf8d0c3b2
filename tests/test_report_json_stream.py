"""`bpftools report --json` writes its JSON event by event, the same bytes as when it loaded each
recording whole (fixtures printed by that code: tests/fixtures/report_json/README.md)."""
import gzip
import json
import os
import subprocess
import sys

import pytest

from bpftools.errors import EXIT_BAD_INPUT
from bpftools.recording import CountedRecording, Recorder, make_header, read_recording

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "report_json")
SEVERAL = ["mixed.jsonl", "empty.jsonl", "cut.jsonl.gz", "trailer-only.jsonl"]


def _report_json(*paths, **kw):
    proc = subprocess.run([sys.executable, "-m", "bpftools.cli", "report"] + list(paths) + ["--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=FIXTURES, timeout=120, **kw)
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


def _expected(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("name", SEVERAL)
def test_one_recording_prints_the_bytes_it_printed_loaded_whole(name):
    code, out, err = _report_json(name)
    assert (code, err) == (0, "")
    assert out == _expected(name.split(".")[0] + ".json")


def test_several_recordings_print_the_list_they_printed_loaded_whole():
    code, out, err = _report_json(*SEVERAL)
    assert (code, err) == (0, "")
    assert out == _expected("several.json")
    docs = json.loads(out.decode("utf-8"))
    assert [(len(d["events"]), d["damaged_lines"], d["trailer"] is None) for d in docs] == [
        (3, 2, False), (0, 0, True), (114, 0, True), (0, 0, False)]


def test_a_pipe_prints_what_the_file_does():
    with open(os.path.join(FIXTURES, "cut.jsonl.gz"), "rb") as f:
        code, out, err = _report_json("/dev/stdin", stdin=f)
    assert (code, err) == (0, "")
    assert out == _expected("cut.json")


def _gz_recording(path, n):
    rec = Recorder(path, make_header("iojitter", ["bpftools", "iojitter"]))
    for i in range(n):
        rec.write({"ts_ns": 10 ** 9 + i, "type": "sleep", "tid": 100 + i % 3, "comm": "w\u00e9%d" % i})
    rec.close({"lost_events": 0, "interrupted": False, "events": n})


@pytest.mark.parametrize("keep", [0.3, 0.7, 0.97])
def test_a_cut_gz_recording_prints_every_event_before_the_cut(tmp_path, keep):
    whole, cut = str(tmp_path / "whole.jsonl.gz"), str(tmp_path / "cut.jsonl.gz")
    _gz_recording(whole, 500)
    data = open(whole, "rb").read()
    with open(cut, "wb") as f:
        f.write(data[:int(len(data) * keep)])
    code, out, err = _report_json(cut)
    assert (code, err) == (0, "")
    doc = json.loads(out.decode("utf-8"))
    n = len(doc["events"])
    assert 0 < n < 500 and doc["trailer"] is None
    assert doc["events"] == [{"ts_ns": 10 ** 9 + i, "type": "sleep", "tid": 100 + i % 3, "comm": "w\u00e9%d" % i}
                             for i in range(n)]
    loaded = read_recording(cut)          # the reader that holds the list: the same events, nothing more
    assert (loaded.events, loaded.damaged_lines) == (doc["events"], doc["damaged_lines"])
    expected = {"header": loaded.header, "events": loaded.events, "trailer": None, "damaged_lines": loaded.damaged_lines}
    assert out == (json.dumps(expected, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def test_a_line_no_recording_holds_prints_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "bpftools-recording/1", "tool": "iojitter"}\n{"ts_ns": 1}\n'
                   '{"ts_ns": 123456789012345678901234}\n')
    code, out, err = _report_json(os.path.join(FIXTURES, "mixed.jsonl"), str(bad))
    assert (code, out) == (EXIT_BAD_INPUT, b"")
    assert err == "bpftools: error: %s line 3: integer out of range (64 bits): 123456789012345678901234\n" % bad


def test_the_second_reading_is_the_file_as_first_read(tmp_path):
    """A recording still being written (or replaced) meanwhile: the events counted, the trailer as it was."""
    path = str(tmp_path / "live.jsonl")
    header = make_header("iojitter", ["bpftools", "iojitter"])
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n" + json.dumps({"ts_ns": 1}) + "\n" + '{"ts_ns": 2, "cut')
    counted = CountedRecording(path)
    try:
        with open(path, "a") as f:
            f.write('": 0}\n' + json.dumps({"ts_ns": 3}) + "\n" + json.dumps({"trailer": True}) + "\n")
        os.rename(path, path + ".old")
        with open(path, "w") as f:
            f.write(json.dumps(header) + "\n" + json.dumps({"ts_ns": 99}) + "\n")
        assert (counted.count, counted.damaged_lines, counted.trailer) == (1, 1, None)
        assert list(counted.events()) == [{"ts_ns": 1}]
    finally:
        counted.close()


def test_a_gz_read_twice_leaves_no_descriptor_open(tmp_path):
    path = str(tmp_path / "r.jsonl.gz")
    _gz_recording(path, 10)
    before = set(os.listdir("/proc/self/fd"))
    counted = CountedRecording(path)
    assert [e["ts_ns"] for e in counted.events()] == [10 ** 9 + i for i in range(10)]
    counted.close()
    assert set(os.listdir("/proc/self/fd")) == before
    assert gzip.open(path).read().count(b"\n") == 12
