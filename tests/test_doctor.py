"""`bpftools doctor` end to end through the real CLI: verdicts from real logs, the live node, JSON shape."""
import json
import os
from io import StringIO

import pytest
from rich.console import Console

from bpftools import render
from bpftools.analyses.kernel_log import find_incidents

CORPUS = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                      "corpus", "dmesg"))

needs_corpus = pytest.mark.skipif(not os.path.isdir(CORPUS), reason="corpus not found at %s" % CORPUS)


def _doctor_json(bpftools_cli, *args, **kw):
    r = bpftools_cli("doctor", "--json", *args, **kw)
    assert r.code == 0, r.err
    return json.loads(r.out)


def _status(report):
    return dict((v["incident"], v["status"]) for v in report["verdicts"])


@needs_corpus
@pytest.mark.parametrize("name, release, kmem, netdev", [
    ("A01_moby_35545.log", "3.10.0-957.el7.x86_64", "detected", "detected"),
    ("A03_runc_1725.log", "3.10.0-957.el7.x86_64", "detected", "at-risk"),      # fnhe race unfixed in 957
    ("A03_runc_1725.log", "3.10.0-1127.el7.x86_64", "detected", "clear"),       # fixed in 1127
    ("A13_lkml_mempool-pitfall.log", "6.18.2", "detected", "clear"),
    ("B17_batman-adv-list_batadv-ref-tracker.log", "6.18.2", "clear", "detected"),
    ("B09_moby_9605.log", "6.18.2", "clear", "detected"),
    ("N07_moby_41676.log", "6.18.2", "clear", "clear"),
    ("N01_k8s_83044.log", "3.10.0-957.el7.x86_64", "at-risk", "at-risk"),
])
def test_verdicts_on_real_logs(bpftools_cli, name, release, kmem, netdev):
    report = _doctor_json(bpftools_cli, "--log", os.path.join(CORPUS, name), "--release", release)
    assert _status(report) == {"kmem_io_jitter": kmem, "netdev_refcount_leak": netdev}
    assert report["kernel_release"] == release


@needs_corpus
def test_evidence_names_the_container_cache_and_the_fix(bpftools_cli):
    report = _doctor_json(bpftools_cli, "--log", os.path.join(CORPUS, "A01_moby_35545.log"),
                          "--release", "3.10.0-957.el7.x86_64")
    kmem = report["verdicts"][0]
    assert ("cache kmalloc-1024 charged to memcg 1793, cgroup "
            "c8edefa90517e21bc691deef20c17220af0f0ac69962cc51007d372e7dd40256") in kmem["evidence"]
    assert any("3.10.0-1075" in fix for fix in kmem["remediation"])
    netdev = report["verdicts"][1]
    assert "lo: 1 message(s), max usage count 1" in netdev["evidence"]
    kinds = [f["kind"] for f in report["findings"]]
    assert kinds == ["slub_alloc_failure", "netdev_unregister_wait"]


@needs_corpus
def test_log_from_stdin_matches_log_from_file(bpftools_cli):
    path = os.path.join(CORPUS, "B14_ovpn-dco_51.log")
    from_file = _doctor_json(bpftools_cli, "--log", path, "--release", "6.1.0-28-amd64")
    with open(path, "rb") as f:
        from_stdin = _doctor_json(bpftools_cli, "--log", "-", "--release", "6.1.0-28-amd64", stdin=f)
    assert from_stdin["findings"] == from_file["findings"]
    assert from_stdin["log"]["source"] == "-"


@pytest.mark.root
def test_live_node(bpftools_cli):
    """No arguments: the live kernel log of this node, its cgroups and its release."""
    report = _doctor_json(bpftools_cli)
    assert report["kernel_release"] == os.uname().release
    assert report["log"]["source"] == "live kernel log" and report["log"]["lines"] > 0
    assert [v["incident"] for v in report["verdicts"]] == ["kmem_io_jitter", "netdev_refcount_leak"]
    text = bpftools_cli("doctor")
    assert text.code == 0 and "bpftools doctor" in text.out and "Known-bug matrix" in text.out


@pytest.mark.root
def test_capabilities_json_on_this_machine(bpftools_cli):
    caps = _doctor_json(bpftools_cli, "--capabilities")
    checks = dict((c["name"], c["ok"]) for c in caps["checks"])
    kprobes_here = os.path.exists("/sys/kernel/tracing/kprobe_events") or \
        os.path.exists("/sys/kernel/debug/tracing/kprobe_events")
    assert checks["kprobes"] is kprobes_here
    assert checks["root"] is True and checks["tracefs"] is True
    assert caps["tracepoints"]["sched:sched_switch"] is True
    assert checks["btf"] is os.path.exists("/sys/kernel/btf/vmlinux")
    symbols = dict((s["wanted"], s) for s in caps["symbols"])
    with open("/proc/kallsyms") as f:
        names = set(line.split()[2] for line in f)
    want = "mempool_alloc_noprof" if "mempool_alloc_noprof" in names else "mempool_alloc"
    assert symbols["mempool_alloc"]["attach"] == want


REPO_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


@pytest.mark.parametrize("name, kmem, netdev, confidence", [
    ("C01_tempesta_2494.log", "detected", "clear", ("certain", None)),
    ("C06_coreos-bugs_118.log", "clear", "detected", (None, "likely")),
    ("C07_coreos-bugs_2357.log", "clear", "at-risk", (None, "weak")),    # a weak sign is not a detection
    ("C13_linux-ipsec_510c321b5571.log", "clear", "detected", (None, "certain")),
    ("N10_aristanetworks-sonic_105.log", "clear", "clear", (None, None)),
    ("N12_open-cas-linux_746.log", "clear", "clear", (None, None)),
    ("N16_openzfs_922.log", "clear", "clear", (None, None)),
])
def test_verdicts_carry_confidence_and_rule(bpftools_cli, name, kmem, netdev, confidence):
    report = _doctor_json(bpftools_cli, "--log", os.path.join(REPO_CORPUS, name), "--release", "6.18.2")
    assert _status(report) == {"kmem_io_jitter": kmem, "netdev_refcount_leak": netdev}
    assert tuple(v["confidence"] for v in report["verdicts"]) == confidence
    for verdict, finding_kinds in zip(report["verdicts"], (("slub_alloc_failure", "hung_task_mempool"),
                                                          ("netdev_unregister_wait", "hung_task_netdev"))):
        findings = [f for f in report["findings"] if f["kind"] in finding_kinds]
        assert (verdict["rule"] is None) == (not findings)
        if findings:
            assert verdict["rule"] in [f["rule"] for f in findings] and verdict["rule"] in verdict["summary"]


def test_a_cut_netns_worker_says_why_it_counts(bpftools_cli):
    report = _doctor_json(bpftools_cli, "--log", os.path.join(REPO_CORPUS, "C06_coreos-bugs_118.log"),
                          "--release", "6.18.2")
    assert report["verdicts"][1]["evidence"] == [
        "task kworker/u30:4 (pid 31318) blocked as a 'netns cleanup_net' worker (frames: schedule) "
        "[likely: a blocked 'netns cleanup_net' worker whose stack has no decisive frame]"]
    text = bpftools_cli("doctor", "--log", os.path.join(REPO_CORPUS, "C07_coreos-bugs_2357.log"),
                        "--release", "6.18.2")
    assert text.code == 0 and "AT-RISK" in text.out and "only a weak sign in the kernel log" in text.out


def test_findings_table_shows_each_findings_confidence():
    """The rendered table says how sure each finding is, on an 80-column terminal."""
    findings = []
    for name in ("C06_coreos-bugs_118.log", "C01_tempesta_2494.log", "C07_coreos-bugs_2357.log"):
        with open(os.path.join(REPO_CORPUS, name), "rb") as f:
            findings += find_incidents(f.read().decode("utf-8", "replace").splitlines())
    console = Console(file=StringIO(), width=80)
    render.findings_table(findings, console)
    lines = console.file.getvalue().splitlines()
    header = next(line for line in lines if "kind" in line)
    assert [cell.strip() for cell in header.split("\u2503")[1:4]] == ["kind", "count", "confidence"]
    rows = [[cell.strip() for cell in line.split("\u2502")[1:-1]] for line in lines if line.startswith("\u2502")]
    assert [row[:3] for row in rows if row[0]] == [["hung_task_netdev", "1", "likely"],
                                                  ["slub_alloc_failure", "3", "certain"],
                                                  ["hung_task_netdev", "1", "weak"]]
    assert all(len(line) <= 80 for line in lines)
    assert "?/?" in lines[-2]  # the weak report starts inside a dump: task and pid unknown
