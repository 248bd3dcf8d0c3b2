"""Recordings: written line by line and flushed, read back whole or cut mid-line."""
import json

import pytest

from bpftools.errors import BadInput
from bpftools.recording import FORMAT, Recorder, make_header, read_recording


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
