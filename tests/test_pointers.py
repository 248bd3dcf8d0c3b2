"""Kernel pointers never reach a recording or a report unless --show-kernel-pointers (bpftools.pointers)."""
import json
import os
import subprocess
import sys

import pytest

from bpftools.live import LiveRun
from bpftools.pointers import PointerHider, Settings, is_kernel_pointer, pointer_text

DEV = "0xffff8a77c19fc800"          # a net_device, as refleak records it
POOL = 0xffff9c4e0a7d3e40           # a mempool_t, as mempoolwait records it
SIGNED = POOL - (1 << 64)           # the same as a signed 64-bit -D value (refleak's plan params)


@pytest.mark.parametrize("value, kernel", [
    (POOL, True), (SIGNED, True), (0xffff800000000000, True), (0xffff7fffffffffff, False),
    (0, False), (1700000000000000000, False), (-1, False), (-4095, False), (-(1 << 29), False),
    (-(1 << 47), True), (-(1 << 30), True), (True, False),
    ((1 << 64), False), (DEV, False),
])
def test_what_counts_as_a_kernel_pointer(value, kernel):
    assert is_kernel_pointer(value) is kernel


def test_hide_replaces_every_pointer_by_one_token_per_address():
    hider = PointerHider()
    event = {"type": "ref", "dev": DEV, "counter": "0xFFFF8A77C19FC800", "pool": POOL,
             "params": {"PER_CPU_OFFSET": SIGNED}, "stack": ["dst_alloc+0x4a"], "ts_ns": 1700000000000000000,
             "argv": ["bpftools", "refleak", "--note", "saw %s twice" % DEV], DEV: 1}
    out = hider.hide(event)
    token = hider.token(int(DEV, 16))
    assert token.startswith("kptr-") and len(token) == 17
    assert out["dev"] == out["counter"] == token
    assert out["pool"] == out["params"]["PER_CPU_OFFSET"] == hider.token(POOL)
    assert out["argv"][3] == "saw %s twice" % token and out[token] == 1
    assert (out["stack"], out["ts_ns"], out["type"]) == (["dst_alloc+0x4a"], 1700000000000000000, "ref")
    assert "ffff" not in json.dumps(out)
    assert event["dev"] == DEV                               # the caller's own event is untouched


def test_tokens_differ_between_runs_and_shown_pointers_stay():
    assert PointerHider().token(POOL) != PointerHider().token(POOL)
    assert PointerHider(show=True).hide({"pool": POOL}) == {"pool": POOL}
    assert (pointer_text(POOL), pointer_text("kptr-0123456789ab")) == ("0xffff9c4e0a7d3e40", "kptr-0123456789ab")


def test_a_live_run_records_tokens_not_addresses(tmp_path, monkeypatch):
    path = str(tmp_path / "run.jsonl")
    monkeypatch.setattr(Settings, "show", False)
    with LiveRun("mempoolwait", path, argv=["bpftools", "mempoolwait", "--note", DEV]) as run:
        run.record({"type": "sleep", "pool": POOL, "tid": 7})
        run.record({"type": "sleep", "pool": POOL, "tid": 8})
    lines = [json.loads(l) for l in open(path)]
    header, first, second = lines[0], lines[1], lines[2]
    assert first["pool"] == second["pool"] and first["pool"].startswith("kptr-")
    assert header["argv"][3].startswith("kptr-")
    assert "ffff8a77" not in open(path).read() and "ffff9c4e" not in open(path).read()


def _recording(path):
    events = [{"type": "holder", "kind": "dst", "obj": "0xffff8a77c0001000", "dev": DEV, "delta": 1,
               "stack": ["dst_alloc"], "ts_ns": 1},
              {"type": "ref", "strategy": "watch", "dev": DEV, "delta": 1, "addr": "0xffff8a77c19fcc08",
               "value": 2, "stack": ["dev_hold"], "ts_ns": 2}]
    with open(path, "w") as f:
        f.write(json.dumps({"format": "bpftools-recording/1", "tool": "refleak", "version": "0",
                            "argv": ["bpftools", "refleak", "--dev", "eth0", "--netns", DEV],
                            "kernel_release": "6.1.0"}) + "\n")
        for e in events:
            f.write(json.dumps(e) + "\n")


@pytest.mark.parametrize("show", [False, True])
def test_report_exports_hide_pointers_of_an_old_recording(tmp_path, show):
    """The report's command line (argv in the recording's header) is shown in report.html."""
    rec = str(tmp_path / "old.jsonl")
    _recording(rec)
    out = str(tmp_path / "out")
    args = [sys.executable, "-m", "bpftools.cli"] + (["--show-kernel-pointers"] if show else []) + [
        "report", rec, "--report", out]
    done = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stderr
    text = open(os.path.join(out, "report.html")).read()
    assert ("ffff8a77c19fc800" in text) is show
    assert ("kptr-" in text) is not show
