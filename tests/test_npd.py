"""`bpftools doctor --npd`: node-problem-detector's custom plugin protocol (exit 0 OK, 1 problem, 2 unknown;
one line of at most 80 bytes on stdout; an answer within NPD's default 5 s timeout)."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from bpftools import npd

CORPUS = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                      "corpus", "dmesg"))
needs_corpus = pytest.mark.skipif(not os.path.isdir(CORPUS), reason="corpus not found at %s" % CORPUS)
KMEM_CATEGORIES = {"kmem_slub", "hung_task_mempool"}
NETDEV_CATEGORIES = {"netdev_refleak", "hung_task_netdev"}
NPD_TIMEOUT_S = 5.0


def _expected():
    with open(os.path.join(CORPUS, "EXPECTED.json")) as f:
        return json.load(f)["files"]


def plugin(*args):
    """Run `bpftools doctor --npd ARGS` as NPD does: a subprocess, stdout trimmed; returns (code, stdout
    bytes, seconds)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bpftools.cli", "doctor", "--npd"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    return proc.returncode, proc.stdout, time.monotonic() - start


def assert_protocol_line(out):
    """What NPD keeps of stdout (TrimSpace, cut at 80 bytes) is the whole of it, and one line."""
    line = out.strip()
    assert out == line + b"\n"
    assert b"\n" not in line and 0 < len(line) <= npd.MAX_MESSAGE_BYTES
    line.decode("ascii")


@needs_corpus
@pytest.mark.parametrize("condition", ["kmem", "netdev"])
def test_corpus_every_log_exit_code_and_message(condition):
    categories = KMEM_CATEGORIES if condition == "kmem" else NETDEV_CATEGORIES
    for name, facts in sorted(_expected().items()):
        code, out, _ = plugin(condition, "--log", os.path.join(CORPUS, name))
        assert_protocol_line(out)
        problem = bool(categories & set(facts["all_categories"]))
        assert code == (1 if problem else 0), (name, code, out)
        assert out.startswith(b"detected: " if problem else b"clear: "), (name, out)


@needs_corpus
def test_corpus_message_names_the_evidence():
    facts = _expected()["A02_k8s_82534.log"]
    code, out, _ = plugin("kmem", "--log", os.path.join(CORPUS, "A02_k8s_82534.log"))
    assert code == 1
    assert out.startswith(b"detected: %d SLUB allocation failure(s) (%s x1" % (
        facts["slub_failure_messages"], facts["caches"][0].encode()))
    assert out == b"detected: 3 SLUB allocation failure(s) (mnt_cache x1, blkdev_ioc x1, kmalloc-...\n"
    code, out, _ = plugin("netdev", "--log", os.path.join(CORPUS, "B05_node-problem-detector_47.log"))
    assert (code, out) == (1, b"detected: lo: 1 message(s), max usage count 1\n")


@needs_corpus
def test_at_risk_is_a_problem_for_kmem_only():
    """A clean log from a RHEL 7.5 kernel: both incidents at risk from the known-bug matrix."""
    log = os.path.join(CORPUS, "N01_k8s_83044.log")
    code, out, _ = plugin("kmem", "--log", log, "--release", "3.10.0-862.el7.x86_64")
    assert code == 1 and out.startswith(b"at-risk: kmem accounting charges every slab allocation")
    assert_protocol_line(out)
    code, out, _ = plugin("netdev", "--log", log, "--release", "3.10.0-862.el7.x86_64")
    assert code == 0 and out.startswith(b"no sign in the log; at risk: route: set the deleted fnhe")
    assert_protocol_line(out)


def test_unreadable_and_empty_logs_are_unknown(tmp_path):
    code, out, _ = plugin("kmem", "--log", "/nonexistent/kern.log")
    assert (code, out) == (2, b"unknown: cannot read log /nonexistent/kern.log: No such file or directory\n")
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    code, out, _ = plugin("netdev", "--log", str(empty))
    assert (code, out) == (2, b"unknown: the kernel log could not be analysed, and no known precondition\n")


def test_usage_errors_are_unknown_not_problems(tmp_path):
    for args in (["fs"], ["kmem", "--json"], ["netdev", "--capabilities"]):
        code, out, _ = plugin(*args)
        assert code == 2 and out == b"", (args, code, out)


def test_a_bug_of_ours_is_unknown():
    def broken():
        return {}["verdicts"]
    assert npd.check("kmem", broken) == (2, "unknown: internal error: KeyError: 'verdicts'")


def test_out_of_time_is_unknown_before_npd_kills_it():
    start = time.monotonic()
    code, line = npd.check("netdev", lambda: time.sleep(3), budget=0.3)
    elapsed = time.monotonic() - start
    assert (code, line) == (2, "unknown: no answer within 0.3 s")
    assert 0.3 <= elapsed < 1.0


def test_message_is_one_ascii_line_of_80_bytes_at_most():
    assert npd.message("a\nb\t c") == "a b c"
    assert npd.message("dev \u00e9th0 \x1b[31m") == "dev ?th0 ?[31m"
    long = npd.message("x" * 200)
    assert long == "x" * 77 + "..." and len(long.encode()) == 80
    assert npd.message("y" * 80) == "y" * 80


def _live_statuses():
    doctor = subprocess.run([sys.executable, "-m", "bpftools.cli", "doctor", "--json"], stdout=subprocess.PIPE,
                            timeout=30)
    return {v["incident"]: v["status"] for v in json.loads(doctor.stdout.decode())["verdicts"]}


def _expected_answer(incident, status):
    """(exit code, start of the line) the plugin gives for doctor's STATUS of INCIDENT."""
    if status in npd.PROBLEM_STATES[incident]:
        return 1, status + ": "
    return {"clear": (0, "clear: "), "unknown": (2, "unknown: "),
            "at-risk": (0, "no sign in the log; at risk: ")}[status]


@pytest.mark.root
def test_live_node_answers_within_npd_timeout():
    """The live kernel log: the answer agrees with doctor's verdict (before or after it: the kernel
    log may change meanwhile), within NPD's 5 s, in protocol."""
    for condition, incident in sorted(npd.CONDITIONS.items()):
        before = _live_statuses()[incident]
        code, out, seconds = plugin(condition)
        after = _live_statuses()[incident]
        assert_protocol_line(out)
        assert seconds < NPD_TIMEOUT_S, seconds
        answers = {_expected_answer(incident, before), _expected_answer(incident, after)}
        assert any(code == c and out.decode().startswith(start) for c, start in answers), (code, out, answers)


def test_a_log_that_never_ends_is_unknown_within_npds_timeout():
    """A log source that blocks (stdin kept open, nothing written): the answer still comes in time."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bpftools.cli", "doctor", "--npd", "kmem", "--log", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killer = threading.Timer(NPD_TIMEOUT_S * 2, proc.kill)     # as NPD would, later
    killer.start()
    try:
        out = proc.stdout.read()          # until doctor exits: its stdin stays open
        proc.wait()
    finally:
        killer.cancel()
        proc.stdin.close()
    elapsed = time.monotonic() - start
    assert (proc.returncode, out) == (2, b"unknown: no answer within 3.0 s\n")
    assert npd.TIME_BUDGET_S <= elapsed < NPD_TIMEOUT_S, elapsed
