"""Recordings: written line by line and flushed (gzip-compressed or not), read back whole, cut mid-line or
as streams, several merged in time order."""
import json
import zlib

import pytest

from bpftools.errors import BadInput
from bpftools import recording
from bpftools.recording import (FORMAT, MergedRecording, Recorder, make_header, merged, read_recording,
                                stream_recording)


def test_round_trip_with_trailer(tmp_path):
    path = str(tmp_path / "r.jsonl")
    rec = Recorder(path, make_header("kmemsnoop", ["bpftools", "kmemsnoop"], {"capabilities": {"x": 1}}))
    rec.write({"type": "kmem_file", "tgid": 42, "value": "1"})
    rec.write({"type": "kmem_file", "tgid": 43, "value": "-1"})
    rec.close({"lost_events": 3})
    back = read_recording(path)
    assert back.tool == "kmemsnoop"
    assert back.header["format"] == FORMAT
    assert back.header["argv"] == ["bpftools", "kmemsnoop"]
    assert back.header["capabilities"] == {"x": 1}
    assert [e["tgid"] for e in back.events] == [42, 43]
    assert back.trailer["lost_events"] == 3
    assert back.damaged_lines == 0


def test_each_event_is_on_disk_before_close(tmp_path):
    path = str(tmp_path / "r.jsonl")
    rec = Recorder(path, make_header("kmemsnoop", []))
    rec.write({"tgid": 7})
    lines = open(path).read().splitlines()   # read while still open: flushed
    assert json.loads(lines[1]) == {"tgid": 7}
    rec.close()


def test_a_recording_cut_mid_line_still_reads(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = Recorder(str(path), make_header("kmemsnoop", []))
    for i in range(3):
        rec.write({"tgid": i})
    rec.close()
    data = path.read_bytes()
    path.write_bytes(data[:-7])   # cut the last event line
    back = read_recording(str(path))
    assert [e["tgid"] for e in back.events] == [0, 1]
    assert back.damaged_lines == 1
    assert back.trailer is None


@pytest.mark.parametrize("content", ["", "not json\n", '{"format": "other"}\n', "[1, 2]\n"])
def test_not_a_recording_is_bad_input(tmp_path, content):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(BadInput):
        read_recording(str(path))


def test_missing_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput) as err:
        read_recording(str(tmp_path / "nope.jsonl"))
    assert "nope.jsonl" in str(err.value)



STACK = ["mempool_alloc+0x1", "bio_alloc_bioset+0x2", "do_writepages+0x3"]
CONTAINER = {"container_id": "c8edefa9", "runtime": "containerd"}


def _shared_events():
    return [{"tid": 1, "kstack": STACK, "container": CONTAINER, "flags": []},
            {"tid": 2, "kstack": STACK, "container": CONTAINER, "flags": ["GFP_NOIO"]},
            {"tid": 3, "kstack": ["schedule+0x4"] + STACK, "container": CONTAINER, "flags": ["GFP_NOIO"]}]


def test_arrays_and_objects_are_written_once_and_by_number_after(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = Recorder(str(path), make_header("iojitter", []))
    events = _shared_events()
    for event in events:
        rec.write(event)
    rec.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert lines[0] == {"tid": 1, "flags": [], "@": {"kstack": [0, STACK], "container": [1, CONTAINER]}}
    assert lines[1] == {"tid": 2, "@": {"kstack": 0, "container": 1, "flags": [2, ["GFP_NOIO"]]}}
    assert lines[2] == {"tid": 3, "@": {"kstack": [3, ["schedule+0x4"] + STACK], "container": 1, "flags": 2}}
    assert events == _shared_events()           # the caller's events are left as they were
    back = read_recording(str(path))
    assert back.events == events and back.damaged_lines == 0
    assert back.events[0]["kstack"] is back.events[1]["kstack"]     # one object for the events sharing it


def test_values_equal_in_python_but_written_differently_are_not_shared(tmp_path):
    path = tmp_path / "r.jsonl"
    events = [{"a": [1]}, {"a": [True]}, {"a": [1.0]}, {"a": ["1"]}, {"c": {"x": 1}}, {"c": {"x": True}},
              {"c": {"x": "1"}}, {"c": {"x": None}}, {"c": {"x": [1]}}, {"c": {"x": [True]}}, {"a": [["x"]]},
              {"a": [["x"]]}]
    rec = Recorder(str(path), make_header("kmemsnoop", []))
    for event in events:
        rec.write(event)
    rec.close()
    back = read_recording(str(path)).events
    assert [json.dumps(e) for e in back] == [json.dumps(e) for e in events]
    assert back[-1]["a"] is back[-2]["a"]


def test_past_the_limit_values_are_written_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(recording, "MAX_SHARED", 2)
    path = tmp_path / "r.jsonl"
    rec = Recorder(str(path), make_header("iojitter", []))
    for event in _shared_events():
        rec.write(event)
    rec.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert lines[1] == {"tid": 2, "flags": ["GFP_NOIO"], "@": {"kstack": 0, "container": 1}}
    assert lines[2]["kstack"] == ["schedule+0x4"] + STACK and lines[2]["@"] == {"container": 1}
    assert read_recording(str(path)).events == _shared_events()


def test_a_value_whose_first_line_is_damaged_damages_the_lines_that_share_it(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = Recorder(str(path), make_header("iojitter", []))
    for event in _shared_events():
        rec.write(event)
    rec.close()
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:30]                    # the line defining the stack and the container, cut
    path.write_text("\n".join(lines) + "\n")
    back = read_recording(str(path))
    assert back.events == [] and back.damaged_lines == 3    # both later lines name the container


@pytest.mark.parametrize("refs", ['[0]', '{"kstack": 7}', '{"kstack": [0]}', '{"kstack": [0, 5]}',
                                  '{"kstack": [-1, []]}', '{"kstack": "0"}', '{"kstack": true}'])
def test_malformed_shared_values_are_damaged_lines(tmp_path, refs):
    path = tmp_path / "r.jsonl"
    path.write_text(HEADER + '{"tid": 1, "@": %s}\n{"tid": 2}\n' % refs)
    back = read_recording(str(path))
    assert back.events == [{"tid": 2}] and back.damaged_lines == 1


def test_a_first_format_recording_reads_alike(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(HEADER + "".join(json.dumps(e) + "\n" for e in _shared_events()))
    assert read_recording(str(path)).events == _shared_events()


HEADER = '{"format": "bpftools-recording/1", "tool": "kmemsnoop", "argv": ["bpftools", "kmemsnoop"]}\n'


def _report(bpftools_cli, tmp_path, data):
    path = tmp_path / "r.jsonl"
    path.write_bytes(data)
    return str(path), bpftools_cli("report", str(path))


# Numbers and nesting no recording holds: they ended in "internal error: OverflowError / RecursionError".
@pytest.mark.parametrize("line, message", [
    ('{"ts_ns": Infinity, "tgid": 1, "comm": "sh"}', "Infinity is not a number a recording holds"),
    ('{"ts_ns": -Infinity}', "-Infinity is not a number a recording holds"),
    ('{"ts_ns": NaN}', "NaN is not a number a recording holds"),
    ('{"ts_ns": 1e400, "tgid": 1}', "number out of range: 1e400"),
    ('{"ts_ns": 1%s}' % ("0" * 400), "integer out of range (64 bits): 10000000000000000000..."),
    ('{"ts_ns": 18446744073709551616}', "integer out of range (64 bits): 18446744073709551616"),
    ('{"x": %s1%s}' % ("[" * 100000, "]" * 100000), "nested deeper than 32 levels"),
    ('{"x": %s1%s}' % ("[" * 40, "]" * 40), "nested deeper than 32 levels"),
])
def test_nonsense_numbers_and_nesting_are_bad_input(bpftools_cli, tmp_path, line, message):
    path, r = _report(bpftools_cli, tmp_path, (HEADER + line + "\n").encode())
    assert (r.code, r.err) == (3, "bpftools: error: %s line 2: %s\n" % (path, message))


def test_the_widest_numbers_a_recording_holds_still_read(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(HEADER + '{"a": 18446744073709551615, "b": -9223372036854775808, "c": 1.5e308, "d": %s1%s}\n'
                    % ("[" * 30, "]" * 30))
    (event,) = read_recording(str(path)).events
    assert (event["a"], event["b"], event["c"]) == (2 ** 64 - 1, -2 ** 63, 1.5e308)


def test_a_utf8_bom_is_skipped(bpftools_cli, tmp_path):
    _, r = _report(bpftools_cli, tmp_path, b"\xef\xbb\xbf" + HEADER.encode())
    assert r.code == 0, r.err
    assert r.out.startswith("kmemsnoop recording")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_says_so(bpftools_cli, tmp_path, encoding):
    path, r = _report(bpftools_cli, tmp_path, HEADER.encode(encoding))
    assert (r.code, r.err) == (3, "bpftools: error: %s is not a bpftools recording: it is UTF-16 text, and a "
                                  "recording is UTF-8 (iconv -f UTF-16 -t UTF-8 converts it)\n" % path)


# ---- compressed recordings, streams, merging -------------------------------------------------------



def _gz_recording(path, n, trailer=True):
    rec = Recorder(path, make_header("kmemsnoop", ["bpftools", "kmemsnoop", "--record", path]))
    for i in range(n):
        rec.write({"type": "kmem_file", "tgid": i, "ts_ns": 1000 + i, "path": "/sys/fs/cgroup/memory/x%d" % i})
    rec.close({"lost_events": 2, "interrupted": False, "events": n} if trailer else None)


def test_gz_round_trip(tmp_path):
    path = str(tmp_path / "r.jsonl.gz")
    _gz_recording(path, 300)
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"                  # gzip on disk
    back = read_recording(path)
    assert [e["tgid"] for e in back.events] == list(range(300))
    assert (back.header["argv"][-1], back.trailer["lost_events"], back.damaged_lines) == (path, 2, 0)


def test_gz_is_flushed_line_by_line_before_close(tmp_path):
    path = str(tmp_path / "r.jsonl.gz")
    rec = Recorder(path, make_header("kmemsnoop", []))
    rec.write({"tgid": 7})
    rec.write({"tgid": 8})
    back = read_recording(path)                          # read while still open: a crash here loses nothing
    assert ([e["tgid"] for e in back.events], back.trailer) == ([7, 8], None)
    rec.close()


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.999])
def test_a_cut_gz_recording_reads_everything_before_the_cut(tmp_path, keep):
    whole = tmp_path / "whole.jsonl.gz"
    _gz_recording(str(whole), 2000)
    data = whole.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[:int(len(data) * keep)])
    inflated = zlib.decompressobj(31).decompress(data[:int(len(data) * keep)])   # what the cut file still holds
    lines = inflated.split(b"\n")
    whole_lines = [json.loads(l) for l in lines[1:-1]]
    stream = stream_recording(str(cut))
    events = list(stream.events)
    assert events == [e for e in whole_lines if not e.get("trailer")] and len(events) > 500
    assert [e["tgid"] for e in events] == list(range(len(events)))
    assert (stream.damaged_lines, stream.count) == (1 if lines[-1] else 0, len(events))
    assert (stream.trailer is None) == (len(whole_lines) == len(events))


def test_a_cut_gz_recording_reports_like_a_cut_plain_one(bpftools_cli, tmp_path):
    plain, gz = str(tmp_path / "r.jsonl"), str(tmp_path / "r.jsonl.gz")
    _gz_recording(plain, 50, trailer=False)
    _gz_recording(gz, 50, trailer=False)
    a, b = bpftools_cli("report", plain, "--json"), bpftools_cli("report", gz, "--json")
    assert (a.code, b.code) == (0, 0)
    docs = [json.loads(a.out), json.loads(b.out)]
    for doc in docs:
        doc["header"]["argv"] = None
    assert docs[0] == docs[1] and len(docs[0]["events"]) == 50 and docs[0]["trailer"] is None


def test_merged_streams_come_in_time_order_each_keeping_its_own():
    a = [{"ts_ns": 1, "n": "a1"}, {"type": "lost", "n": "a-lost"}, {"ts_ns": 5, "n": "a5"}, {"ts_ns": 9, "n": "a9"}]
    b = [{"ts_ns": 2, "n": "b2"}, {"ts_ns": 5, "n": "b5"}, {"ts_ns": 3, "n": "b3-late"}, {"ts_ns": 10, "n": "b10"}]
    assert [e["n"] for e in merged([iter(a), iter(b)])] == [
        "a1", "a-lost", "b2", "a5", "b5", "b3-late", "a9", "b10"]   # untimed and late records keep their place


def test_merged_recording_sums_trailers_and_is_cut_when_one_is(tmp_path):
    paths = [str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl")]
    _gz_recording(paths[0], 3)
    _gz_recording(paths[1], 2)
    rec = MergedRecording([stream_recording(p) for p in paths])
    assert [(e["tgid"], e["ts_ns"]) for e in rec.events] == [(0, 1000), (0, 1000), (1, 1001), (1, 1001), (2, 1002)]
    assert (rec.count, rec.trailer["lost_events"], rec.trailer["events"], rec.trailer["recordings"]) == (5, 4, 5, 2)
    _gz_recording(paths[1], 2, trailer=False)
    rec = MergedRecording([stream_recording(p) for p in paths])
    assert len(list(rec.events)) == 5 and rec.trailer is None
