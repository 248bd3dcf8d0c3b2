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

