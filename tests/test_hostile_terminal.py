"""Terminal escape injection: control characters in a device name, a task comm, stack frames or argv,
from a kernel log or a recording, reach the terminal escaped (``\\x1b``), never raw.

The payload clears the screen (CSI 2J), writes the clipboard (OSC 52, ended by BEL), opens a C1 CSI and
reverses the text (U+202E). Every command runs as a subprocess, its stdout a pipe: rich adds no escape
sequence of its own there, so any control character in the output came from the input.
"""
import json
import os
import re

import pytest

from bpftools.iostall import face
from bpftools.iostall.slab import SlabFailure
from bpftools.recording import Recorder, make_header
from bpftools.render import one_line, visible

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
IOJITTER = os.path.join(FIXTURES, "iojitter", "synthetic-rhel7-incident.jsonl")
REFLEAK = os.path.join(FIXTURES, "refleak", "6.1.0-56-amd64", "refleak-leak-new.jsonl")
HOSTILE = "\x1b[2J\x1b]52;c;aGk=\x07\x9b31m\u202e"
SHOWN = "\\x1b[2J\\x1b]52;c;aGk=\\x07\\x9b31m\\u202e"
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")     # what must never reach the terminal
TEXT_KEYS = {"comm", "name", "path", "cache", "call_site", "caller", "func", "pool_cache", "blocked_in",
             "cgroup", "wb_cgroup", "stack", "kstack"}


def test_visible_escapes_controls_and_keeps_lines():
    assert visible("eth0" + HOSTILE + "\nnext\ttab\r") == "eth0" + SHOWN + "\nnext\\x09tab\\x0d"
    assert one_line("a\nb" + HOSTILE) == "a\\x0ab" + SHOWN
    assert visible("plain text, ünïcode, 中文") == "plain text, ünïcode, 中文"


def _poisoned(value, key=None):
    """VALUE with HOSTILE appended to every string under TEXT_KEYS (equal names stay equal)."""
    if isinstance(value, dict):
        return dict((k, _poisoned(v, k)) for k, v in value.items())
    if isinstance(value, list):
        return [_poisoned(v, key) for v in value]
    if isinstance(value, str) and key in TEXT_KEYS:
        return value + HOSTILE
    return value


def _hostile_copy(src, dst, tool=None):
    """SRC with every event poisoned, its header's tool TOOL and its argv hostile."""
    with open(src, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    header = dict(lines[0], argv=["bpftools", "report", "--x" + HOSTILE])
    if tool:
        header["tool"] = tool
    with open(dst, "w", encoding="utf-8") as f:
        for obj in [header] + [_poisoned(obj) for obj in lines[1:]]:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return str(dst)


def _assert_escaped(r):
    assert r.code == 0, r.err
    assert RAW.search(r.out) is None, repr(RAW.search(r.out))
    assert RAW.search(r.err) is None, r.err
    assert SHOWN in r.out


@pytest.mark.parametrize("src, tool", [(IOJITTER, "iojitter"), (IOJITTER, "slabfail"), (IOJITTER, "mempoolwait"),
                                       (IOJITTER, "writeslow"), (REFLEAK, "refleak"), (IOJITTER, "no-such-tool")])
def test_report_of_a_hostile_recording_escapes_every_control_character(bpftools_cli, tmp_path, src, tool):
    r = bpftools_cli("report", _hostile_copy(src, tmp_path / "r.jsonl", tool))
    _assert_escaped(r)
    assert "command: bpftools report --x" + SHOWN in r.out


def test_report_of_a_hostile_kmemsnoop_recording(bpftools_cli, tmp_path):
    path = str(tmp_path / "k.jsonl")
    rec = Recorder(path, make_header("kmemsnoop", ["bpftools", "kmemsnoop"]))
    rec.write({"type": "kmem_file", "ts_ns": 10 ** 9, "tgid": 100, "tid": 100, "comm": "runc" + HOSTILE,
               "op": "write", "path": "/sys/fs/cgroup/memory/pod/memory.kmem.limit_in_bytes" + HOSTILE,
               "value": "1" + HOSTILE, "ret": 2, "writer_cgroup": "/kubepods/pod" + HOSTILE,
               "writer_cgroup_v2": None, "container": None, "error": None})
    rec.close({"lost_events": 0, "interrupted": False, "events": 1})
    _assert_escaped(bpftools_cli("report", path))


def _hostile_kmsg(tmp_path):
    log = tmp_path / "kmsg"
    log.write_text("0,1,20000000,-;unregister_netdevice: waiting for eth%s0 to become free. Usage count = 2\n"
                   % HOSTILE, encoding="utf-8")
    return str(log)


def test_netdevwait_live_lines_and_their_report_are_escaped(bpftools_cli, tmp_path):
    rec = str(tmp_path / "ndw.jsonl")
    r = bpftools_cli("netdevwait", "--mode", "log", "--kmsg", _hostile_kmsg(tmp_path), "-d", "0.3", "--record", rec)
    _assert_escaped(r)
    _assert_escaped(bpftools_cli("report", rec))


def test_netdevwait_log_file_summary_is_escaped(bpftools_cli, tmp_path):
    _assert_escaped(bpftools_cli("netdevwait", "--log", _hostile_kmsg(tmp_path), "--release", "6.1.0"))


def test_doctor_of_a_hostile_kernel_log_is_escaped(bpftools_cli, tmp_path):
    log = tmp_path / "dmesg.txt"
    log.write_text("[  10.000000] unregister_netdevice: waiting for eth%s0 to become free. Usage count = 1\n"
                   "[  20.000000] INFO: task kworker%s:1234 blocked for more than 120 seconds.\n"
                   "[  20.000001] Call Trace:\n"
                   "[  20.000002]  mempool_alloc%s+0x64/0x170\n"
                   "[  30.000000] SLUB: Unable to allocate memory on node -1 (gfp=0x8020)\n"
                   "[  30.000001]   cache: kmalloc-1024%s, object size: 1024, buffer size: 1024, default order: 3, "
                   "min order: 0\n" % (HOSTILE, HOSTILE, HOSTILE, HOSTILE), encoding="utf-8")
    _assert_escaped(bpftools_cli("doctor", "--log", str(log), "--release", "3.10.0-957.el7.x86_64"))


def test_an_error_naming_a_hostile_file_stays_one_escaped_line(bpftools_cli, tmp_path):
    r = bpftools_cli("report", str(tmp_path / ("x" + HOSTILE + "\n.jsonl")))
    assert r.code == 3
    assert r.err == "bpftools: error: cannot read %s: No such file or directory\n" % (
        str(tmp_path / "x") + SHOWN + "\\x0a.jsonl")


def test_a_usage_error_naming_a_hostile_option_stays_one_escaped_line(bpftools_cli):
    r = bpftools_cli("kmemsnoop", "--x\x1b[2J\x07\u202e")
    assert r.code == 2
    assert r.err == "bpftools: error: No such option '--x\\x1b[2J\\x07\\u202e'; try 'bpftools kmemsnoop --help'\n"


def test_live_event_lines_and_stacks_are_escaped(capsys):
    """The live path of slabfail, mempoolwait and writeslow (click.echo, no console): one line per event."""
    with open(IOJITTER, encoding="utf-8") as f:
        raw = next(obj for obj in map(json.loads, f) if obj.get("type") == SlabFailure.TYPE)
    event = SlabFailure.from_json(_poisoned(dict(raw, comm="sh\nfake line")))
    face.print_event(event, False, True, lambda e: "%s %s" % (e.comm, e.cache))
    out = capsys.readouterr().out
    assert RAW.search(out) is None and SHOWN in out
    assert out.splitlines()[0] == "sh\\x0afake line%s %s%s" % (SHOWN, raw["cache"], SHOWN)
