"""Hostile and huge inputs (issue 18, items 2, 4, 6, 7, 10, 12): each built here, each answered with
exact facts, in time linear in the input and memory bounded whatever its size.

Time bounds are generous (the machine is shared) but far below what the old quadratic code took.
"""
import json
import os
import random
import sys
import time
from io import StringIO

import pytest
from rich.console import Console

from bpftools import render
from bpftools.analyses.kernel_log import MAX_LISTED, MAX_NAME, find_incidents
from bpftools.analyses.refbalance import MAX_CONTEXTS, analyze
from bpftools.doctor import run_doctor
from bpftools.errors import EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, BadInput
from bpftools.html_report import MAX_TABLE_ROWS, MAX_TIMELINE_MARKERS, IncidentReport, Table, render_html
from bpftools.kernel.log import MAX_LINE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import doctor_biglog  # noqa: E402

WAIT = "unregister_netdevice: waiting for eth0 to become free. Usage count = 1"
RELEASE = "6.18.2"   # no known bug applies: with no finding the verdicts are clear (or unknown)
_RANDOM = random.Random(18)
RANDOM_BYTES = bytes(_RANDOM.getrandbits(8) for _ in range(200000))


def timed(func, *args):
    start = time.monotonic()
    value = func(*args)
    return value, time.monotonic() - start


def statuses(triage):
    return [(v.incident, v.status) for v in triage.verdicts]


def wait_devices(findings):
    (finding,) = [f for f in findings if f.kind == "netdev_unregister_wait"]
    return finding


# ---------------------------------------------------------------------------------------------
# Item 2: any size, bounded memory, the newest line is seen
# ---------------------------------------------------------------------------------------------

def test_a_64_mib_log_in_bounded_memory_reports_its_last_line(tmp_path):
    """The 1 GiB bench (bench/doctor_biglog.py) in small: the old reader cut at 256 MiB and kept
    the oldest data; the stream reads everything and reports the last line."""
    path = str(tmp_path / "kern.log")
    size = doctor_biglog.write_log(path, 64 * 2 ** 20)
    assert size >= 64 * 2 ** 20
    result = doctor_biglog.run_one(path)
    assert result["code"] == EXIT_OK, result["err"]
    assert result["err"] == ""
    assert doctor_biglog.last_line_found(result["out"])
    with open(path, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(2 ** 20), b""))
    report = json.loads(result["out"])
    assert report["log"] == {"source": path, "lines": lines}
    assert report["log_analysis"] == {"analysable": True, "lines_cut": 0, "notes": []}
    assert result["maxrss_kib"] / 1024.0 <= doctor_biglog.LIMIT_MIB
    assert result["seconds"] < 120


def test_a_line_longer_than_the_bound_is_cut_and_said(tmp_path, capsys):
    log = tmp_path / "long.log"
    with open(str(log), "wb") as f:
        f.write(b"[1.000000] " + b"x" * (20 * 2 ** 20) + b"\n")
        f.write(("[2.000000] %s\n" % WAIT).encode())
    triage = run_doctor(log_path=str(log), release=RELEASE)
    assert (triage.log_lines, triage.log_lines_cut, triage.exit_code) == (2, 1, EXIT_INCOMPLETE)
    note = "%s: 1 line(s) longer than %d bytes: only their first %d bytes were analysed" % (log, MAX_LINE, MAX_LINE)
    assert triage.log_notes == [note]
    assert capsys.readouterr().err == "bpftools: %s\n" % note
    assert statuses(triage) == [("kmem_io_jitter", "clear"), ("netdev_refcount_leak", "detected")]


# ---------------------------------------------------------------------------------------------
# Item 10: nothing analysable; an empty --log
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, what", [
    (None, "it is empty"),
    (b"", "it is empty"),
    (RANDOM_BYTES,
     "none of its {lines} line(s) looks like a kernel log (no timestamp, no readable text)"),
])
def test_a_log_with_nothing_to_analyse_gives_unknown(tmp_path, capsys, content, what):
    path = "/dev/null" if content is None else str(tmp_path / "log")
    if content is not None:
        with open(path, "wb") as f:
            f.write(content)
    triage = run_doctor(log_path=path, release=RELEASE)
    note = "%s: nothing to analyse: %s; the log part of the verdicts is unknown" % (
        path, what.format(lines=triage.log_lines))
    assert triage.log_notes == [note] and capsys.readouterr().err == "bpftools: %s\n" % note
    assert statuses(triage) == [("kmem_io_jitter", "unknown"), ("netdev_refcount_leak", "unknown")]
    assert triage.verdicts[0].summary == "the kernel log could not be analysed, and no known precondition"
    assert (triage.exit_code, triage.to_json()["log_analysis"]["analysable"]) == (EXIT_INCOMPLETE, False)


def test_the_command_exits_7_when_the_log_was_cut_or_not_analysable(tmp_path, bpftools_cli):
    """The verdicts are printed, the reason is on stderr, and the exit code says the answer is partial."""
    r = bpftools_cli("doctor", "--log", "/dev/null", "--release", RELEASE, "--json")
    assert r.code == EXIT_INCOMPLETE
    assert json.loads(r.out)["log_analysis"]["analysable"] is False
    assert r.err.startswith("bpftools: /dev/null: nothing to analyse")
    cut = tmp_path / "cut.log"
    cut.write_text("[  1.0] " + "x" * (MAX_LINE + 10) + "\n[  2.0] unregister_netdevice: waiting for eth0 to "
                   "become free. Usage count = 1\n")
    r = bpftools_cli("doctor", "--log", str(cut), "--release", RELEASE, "--json")
    assert r.code == EXIT_INCOMPLETE
    assert json.loads(r.out)["verdicts"][1]["status"] == "detected"


def test_a_plain_log_without_stamps_is_analysable(tmp_path, capsys):
    """`dmesg --notime`: readable kernel text, no finding: clear, not unknown."""
    path = tmp_path / "notime.log"
    path.write_text("eth0: link up\nEXT4-fs (sda1): mounted filesystem\n")
    triage = run_doctor(log_path=str(path), release=RELEASE)
    assert statuses(triage) == [("kmem_io_jitter", "clear"), ("netdev_refcount_leak", "clear")]
    assert (triage.exit_code, capsys.readouterr().err) == (EXIT_OK, "")


def test_an_empty_log_name_is_refused_not_read_as_the_live_log(bpftools_cli):
    r = bpftools_cli("doctor", "--log", "")
    assert r.code == EXIT_USAGE
    assert r.err == ("bpftools: error: Invalid value for '--log': an empty name: give a file or directory; "
                     "try 'bpftools doctor --help'\n")
    assert r.out == ""
    with pytest.raises(BadInput, match="--log '' names no file"):     # the same for callers of the API
        run_doctor(log_path="")


# ---------------------------------------------------------------------------------------------
# Item 6: crafted lines, linear time; long names cut for display
# ---------------------------------------------------------------------------------------------

HUNG = "[ 1.0] INFO: task a:1 blocked for more than 1 seconds."


@pytest.mark.parametrize("name, lines", [
    ("task: and blanks (45 s before)", lambda n: ["task:" + " " * n]),
    ("INFO: task a:1 repeated (9.5 s before)", lambda n: ["INFO: task a:1 " * (n // 15)]),
    ("Tainted: and blanks", lambda n: ["CPU: 0 PID: 1 Comm: x Tainted: " + " " * n]),
    ("hex words in a dump (exponential before)", lambda n: [HUNG, "0123456789abcdef" * (n // 16) + "x"]),
    ("compiler suffixes", lambda n: [HUNG, " f" + ".isra" * (n // 5) + "x+0x1/0x2"]),
    ("wrapped lines", lambda n: ["[ 1.0] a,"] + ["b,"] * (n // 200)),
])
def test_crafted_lines_take_linear_time(name, lines):
    findings, seconds = timed(find_incidents, lines(400000))
    assert findings == []
    assert seconds < 5, name


def test_a_hex_line_of_a_dump_is_still_trace_noise():
    """The rewritten noise pattern accepts what the old one did: a frame after it stays in the dump."""
    (finding,) = find_incidents([HUNG, " ffff8800 0000000000000001  deadbeefcafe0000", " mempool_alloc+0x1/0x2"])
    assert finding.facts["tasks"][0]["frames"] == ["mempool_alloc"]


def test_a_10_mb_device_name_is_cut_for_display():
    name = "e" * (10 * 2 ** 20)
    finding = wait_devices(find_incidents(["[1.0] unregister_netdevice: waiting for %s to become free. "
                                           "Usage count = 1" % name]))
    shown = finding.facts["devices"][0]["name"]
    assert shown == "e" * MAX_NAME + "...[10485760 characters]"
    assert all(len(line) < 3000 for line in finding.evidence)


def test_a_long_device_name_draws_quickly(tmp_path):
    """Under the line bound (a longer line is cut, and its message with it), the name is cut for display."""
    path = tmp_path / "name.log"
    path.write_text("[1.0] unregister_netdevice: waiting for %s to become free. Usage count = 1\n" % ("e" * 16000))
    triage = run_doctor(log_path=str(path), release=RELEASE)
    out = StringIO()
    _, seconds = timed(render.triage, triage, Console(file=out, width=80))
    assert seconds < 10
    assert "%s: 1 message(s), max usage count 1" % ("e" * MAX_NAME + "...[16000 characters]") in triage.verdicts[1].evidence
    assert "e" * MAX_NAME + "...[16000characters]" in out.getvalue().replace("\n", "").replace(" ", "")


# ---------------------------------------------------------------------------------------------
# Item 12: many devices: a bounded listing that says what it left out
# ---------------------------------------------------------------------------------------------

def test_20000_devices_are_counted_and_the_newest_listed(tmp_path):
    path = tmp_path / "many.log"
    path.write_text("".join("[%d.0] unregister_netdevice: waiting for veth%d to become free. Usage count = 1\n"
                            % (i, i) for i in range(20000)))
    triage = run_doctor(log_path=str(path), release=RELEASE)
    finding = wait_devices(triage.findings)
    assert finding.count == 20000 and finding.facts["distinct_events"] == 20000
    assert [d["name"] for d in finding.facts["devices"]] == ["veth%d" % i for i in range(20000 - MAX_LISTED, 20000)]
    assert finding.left_out == {"devices": 20000 - MAX_LISTED}
    assert (finding.first_seen, finding.last_seen) == ("[0.0]", "[19999.0]")
    netdev = triage.verdicts[1]
    assert netdev.evidence[-1] == ("netdev_unregister_wait: 19,980 devices left out "
                                   "(the 20 seen last are listed; all are counted)")
    assert len(netdev.evidence) == MAX_LISTED + 2            # the devices, the count semantics, what was left out
    out = StringIO()
    render.triage(triage, Console(file=out, width=100))
    assert len(out.getvalue().splitlines()) < 150


# ---------------------------------------------------------------------------------------------
# Item 4: numbers from recordings; hold/put matching
# ---------------------------------------------------------------------------------------------

def refleak_stream(*refs):
    return [{"type": "plan", "strategies": ["watch"]},
            {"type": "device", "dev": "0x1", "name": "veth1", "ifindex": 7, "ts_ns": 0, "level": 3, "base_refs": 1},
            {"type": "watch", "dev": "0x1", "ts_ns": 1, "armed": True},
            {"type": "sync", "dev": "0x1", "ts_ns": 2, "level": 3}] + list(refs)


def ref(ts, delta, stack):
    return {"type": "ref", "dev": "0x1", "ts_ns": ts, "delta": delta, "stack": stack, "comm": "sh", "tgid": 1}


def test_a_huge_delta_is_counted_in_constant_time():
    """"delta": -10000000 took 53 s and 9.4 GB: the 2 older references absorb two puts, the rest is one line."""
    result, seconds = timed(analyze, refleak_stream(ref(5, -10000000, ["devref_put"])))
    (watch,) = result.devices[0].strategies
    assert seconds < 1
    assert (watch.level_end, watch.missed, watch.matched, watch.older) == (3 - 10000000, 9999999, {"older": 2}, 0)
    assert watch.uncertain == [
        "watch: the counter moved by -10000000 at one write (cpu None): 9999999 write(s) not seen",
        "watch: 9999997 puts with no hold to balance (holds were not seen): [no stack]",
        "watch: a put with no hold to balance (a hold was not seen): devref_put"]


@pytest.mark.parametrize("delta", [-9e29, 1e9, "1", True, 2 ** 70])
def test_a_delta_that_is_not_a_count_is_refused(delta):
    with pytest.raises(ValueError) as err:
        analyze(refleak_stream(ref(5, delta, ["x"])))
    assert str(err.value) == "ref 0x1 event: delta is %r, not an integer within +-2^63" % (delta,)


def test_a_nonsense_level_is_bad_input_through_the_cli(tmp_path, bpftools_cli):
    rec = tmp_path / "refleak.jsonl"
    events = refleak_stream(ref(5, 1, ["x"]))
    events[3]["level"] = -9e29
    rec.write_text("\n".join(json.dumps(e) for e in
                             [{"format": "bpftools-recording/1", "tool": "refleak", "argv": []}] + events) + "\n")
    r = bpftools_cli("report", str(rec))
    assert r.code == EXIT_BAD_INPUT
    assert r.err == ("bpftools: error: %s: events with fields of the wrong type (ValueError: sync 0x1 event: "
                     "level is -9e+29, not an integer within +-2^63); --json shows them as they are\n" % rec)


@pytest.mark.parametrize("holds, stacks", [(50000, 1), (50000, 100), (20000, 20000)])
def test_hold_put_matching_is_not_quadratic(holds, stacks):
    """50k holds + 50k puts took 164 s; distinct stacks beyond MAX_CONTEXTS are matched by order."""
    refs = [ref(10 + i, 1, ["take%d" % (i % stacks), "devref_write"]) for i in range(holds)]
    refs += [ref(10 + holds + i, -1, ["put", "devref_write" if i % 2 else "other"]) for i in range(holds)]
    result, seconds = timed(analyze, refleak_stream(*refs))
    (watch,) = result.devices[0].strategies
    assert seconds < 30
    assert (watch.holds, watch.puts, watch.outstanding) == (holds, holds, 2)    # 2 puts took older references
    context = MAX_CONTEXTS if stacks > MAX_CONTEXTS else holds // 2
    assert watch.matched == {"older": 2, "context": context, "order": holds - 2 - context}
    assert watch.uncertain == ([] if stacks <= MAX_CONTEXTS else [
        "watch: more than 256 distinct hold stacks outstanding at once: holds from further stacks are matched "
        "by order only"])


# ---------------------------------------------------------------------------------------------
# Item 7: what the report page embeds
# ---------------------------------------------------------------------------------------------

def test_the_page_embeds_what_it_shows_and_says_what_it_left_out():
    rows, events = 250000, 60000
    report = IncidentReport("big", ["bpftools"], "g", "6.1", tables=[Table("t", ["n"], [[i] for i in range(rows)])],
                            timeline=[(events - i, "ev %d" % i, "k") for i in range(events)])
    html = render_html(report)
    start = html.index('id="bpftools-report-data">') + len('id="bpftools-report-data">')
    data = json.loads(html[start:html.index("</script>", start)])
    assert len(data["tables"][0]["rows"]) == MAX_TABLE_ROWS
    assert data["timeline"][0] == [1, "ev %d" % (events - 1), "k"]          # the earliest, as drawn
    assert len(data["timeline"]) == MAX_TIMELINE_MARKERS
    assert data["left_out"] == {"table_rows": rows - MAX_TABLE_ROWS, "timeline_events": events - MAX_TIMELINE_MARKERS}
    assert ('<p class="note">This page embeds the data it shows: 245,000 table row(s) and 55,000 timeline '
            'event(s) were left out (the recordings hold them all).</p>') in html
    assert len(html) < 3 * 2 ** 20
