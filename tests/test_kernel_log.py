"""Tests for analyses/kernel_log.py, log_forms.py and log_paste.py: the real-log corpora
(../shared/corpus/dmesg and tests/corpus, each with its EXPECTED.json), every message form of the table
on its real example, pasted and exported lines, interleaving, confidence, and synthetic lines."""
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpftools.analyses import log_forms
from bpftools.analyses.kernel_log import (KINDS, MAX_OPEN_SLUB, SLUB_WINDOW, Finding, LogAnalyser, analyse_log,
                                          find_incidents, parse_frame, parse_line, parse_lines)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "dmesg"
EXPECTED_FILE = CORPUS / "EXPECTED.json"
EXPECTED = (json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))["files"]
            if EXPECTED_FILE.exists() else {})
needs_corpus = pytest.mark.skipif(
    not EXPECTED, reason="corpus not found at %s (CI keeps it in ../shared next to the clone)" % CORPUS)
CORPUS_FILES = sorted(EXPECTED) or ["<corpus missing>"]
# The corpus kept in the repository: always there.
REPO_CORPUS = Path(__file__).resolve().parent / "corpus"
REPO_EXPECTED = json.loads((REPO_CORPUS / "EXPECTED.json").read_text(encoding="utf-8"))["files"]


def corpus_lines(name):
    return (CORPUS / name).read_bytes().decode("utf-8", errors="replace").splitlines()


def by_kind(findings):
    out = {finding.kind: finding for finding in findings}
    assert len(out) == len(findings), "one finding per kind"
    return out


def is_subsequence(needles, haystack):
    it = iter(haystack)
    return all(any(needle == item for item in it) for needle in needles)


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------

@needs_corpus
def test_every_corpus_file_is_described():
    logs = sorted(path.name for path in CORPUS.glob("*.log"))
    assert logs == sorted(EXPECTED)


@needs_corpus
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_file_timestamps(name):
    expected = EXPECTED[name]
    stamps = [line.timestamp for line in parse_lines(corpus_lines(name)) if line.timestamp]
    assert (stamps[0] if stamps else None) == expected["first_timestamp"]
    assert (stamps[-1] if stamps else None) == expected["last_timestamp"]


@needs_corpus
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_slub_failures(name):
    expected = EXPECTED[name]
    finding = by_kind(find_incidents(corpus_lines(name))).get("slub_alloc_failure")
    if not expected.get("slub_failure_messages"):
        assert finding is None
        return
    facts = finding.to_json()
    assert finding.count == expected["slub_failure_messages"]
    assert [c["cache"] for c in facts["caches"]] == expected["caches"]
    assert sum(c["count"] for c in facts["caches"]) == finding.count
    memcgs = list(dict.fromkeys("%d:%s" % (c["memcg_id"], c["cgroup"]) for c in facts["caches"]))
    assert memcgs == expected["memcg"]
    assert sorted({c["memcg_id"] for c in facts["caches"]}) == sorted(expected["memcg_ids"])
    if "cgroup_names" in expected:
        assert sorted({c["cgroup"] for c in facts["caches"]}) == expected["cgroup_names"]
    assert {g["value"]: g["count"] for g in facts["gfp"]} == expected["gfp_counts"]
    for printed in expected["gfp"]:
        if "(" in printed:  # the kernel printed the names: they are kept as printed
            value, names = printed.rstrip(")").split("(")
            entry = next(g for g in facts["gfp"] if g["value"] == value)
            assert (entry["flags"], entry["flags_source"]) == (names.split("|"), "log")
    assert facts["nodes"] == expected["numa_nodes_reported"]
    assert facts["requested_nodes"] == [-1]
    assert finding.last_seen == expected["last_timestamp"]
    if "netdev_refleak" not in expected["all_categories"]:
        assert finding.first_seen == expected["first_timestamp"]


@needs_corpus
def test_slub_decodes_unnamed_masks_per_layout():
    """A01/A03 print 3.10 masks, A02 4.4 masks (bit 0x2000000 is __GFP_KSWAPD_RECLAIM)."""
    def gfp(name):
        finding = by_kind(find_incidents(corpus_lines(name)))["slub_alloc_failure"]
        return {g["value"]: (g["flags"], g["flags_source"]) for g in finding.facts["gfp"]}
    assert gfp("A01_moby_35545.log") == {"0x20": (["GFP_ATOMIC"], "3.10")}
    assert gfp("A03_runc_1725.log") == {"0x8020": (["GFP_ATOMIC", "__GFP_ZERO"], "3.10")}
    assert gfp("A02_k8s_82534.log") == {"0x2088020": (["GFP_ATOMIC", "__GFP_ZERO"], "4.4"),
                                        "0x2080020": (["GFP_ATOMIC"], "4.4")}


@needs_corpus
def test_slub_counts_suppressed_callbacks():
    finding = by_kind(find_incidents(corpus_lines("A05_docker-for-linux_1001.log")))
    assert finding["slub_alloc_failure"].facts["callbacks_suppressed"] == 72


@needs_corpus
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_netdev_waits(name):
    expected = EXPECTED[name]
    finding = by_kind(find_incidents(corpus_lines(name))).get("netdev_unregister_wait")
    if not expected.get("netdev_wait_messages"):
        assert finding is None
        return
    devices = finding.facts["devices"]
    assert finding.count == expected["netdev_wait_messages"]
    assert [d["name"] for d in devices] == expected["devices"]
    assert max(d["max_usage_count"] for d in devices) == expected["max_usage_count"]
    for device in devices:
        if "usage_counts" in expected:
            counts = expected["usage_counts"][device["name"]]
            assert device["messages"] == len(counts)
            assert device["max_usage_count"] == max(counts)
            assert device["last_usage_count"] == counts[-1]
    distinct = expected.get("distinct_netdev_events", expected["netdev_wait_messages"])
    assert finding.facts["distinct_events"] == distinct
    if "matching_timestamps" in expected:
        assert finding.first_seen == expected["matching_timestamps"][0]
        assert finding.last_seen == expected["matching_timestamps"][-1]
    if expected["first_timestamp"] is None:
        assert (finding.first_seen, finding.last_seen) == (None, None)


@needs_corpus
def test_netdev_duplicate_wall_copy_is_one_event():
    """B14: syslogd's wall copy repeats the [11843724.403314] line."""
    finding = by_kind(find_incidents(corpus_lines("B14_ovpn-dco_51.log")))["netdev_unregister_wait"]
    (tun3,) = finding.facts["devices"]
    assert (finding.count, finding.facts["distinct_events"]) == (5, 4)
    assert (tun3["messages"], tun3["distinct_events"], tun3["max_usage_count"]) == (5, 4, 8)
    assert (tun3["first_seen"], tun3["last_seen"]) == ("[11843714.323165]", "[11843744.563620]")
    assert tun3["duration_seconds"] == pytest.approx(30.240455)


@needs_corpus
def test_netdev_duration_from_journal_wall_clock():
    finding = by_kind(find_incidents(corpus_lines("B02_moby_5618.log")))["netdev_unregister_wait"]
    assert finding.facts["devices"][0]["duration_seconds"] == 3 * 3600 + 29 * 60 + 49


@needs_corpus
def test_ref_tracker_is_attached_to_its_device():
    finding = by_kind(find_incidents(corpus_lines("B17_batman-adv-list_batadv-ref-tracker.log")))
    (device,) = finding["netdev_unregister_wait"].facts["devices"]
    (tracker,) = device["ref_tracker"]
    expected = EXPECTED.get("B17_batman-adv-list_batadv-ref-tracker.log", {}).get("ref_tracker", {})
    assert tracker["object"] == expected.get("object", "netdev@ffff88807bb4c620")
    assert tracker["users"] == expected.get("users", "1/1")
    assert tracker["holder"] == "batadv_hardif_add_interface"
    assert tracker["frames"][:3] == ["__netdev_tracker_alloc", "netdev_hold",
                                     "batadv_hardif_add_interface"]
    assert "veth_newlink" in tracker["frames"]
    assert tracker["frames"][-1] == "entry_SYSCALL_64_after_hwframe"
    assert len(tracker["frames"]) == 26
    # ref_tracker output means a 6.x kernel: Usage count = 2 is one leaked reference.
    assert finding["netdev_unregister_wait"].facts["leaked_references"]["base_references"] == 1
    assert device["leaked_references"] == 1


@needs_corpus
@pytest.mark.parametrize("name", CORPUS_FILES)
@pytest.mark.parametrize("kind, category", [("hung_task_mempool", "hung_task_mempool"),
                                            ("hung_task_netdev", "hung_task_netdev")])
def test_hung_tasks(name, kind, category):
    expected = EXPECTED[name]
    finding = by_kind(find_incidents(corpus_lines(name))).get(kind)
    if category not in expected["all_categories"]:
        assert finding is None
        return
    dumps = expected["task_dumps"]
    tasks = finding.facts["tasks"]
    assert finding.count == len(dumps)
    assert [(t["task"], t["pid"]) for t in tasks] == [(d["task"], d["pid"]) for d in dumps]
    for task, dump in zip(tasks, dumps):
        assert task["blocked_seconds"] == dump.get("blocked_seconds")
        assert is_subsequence(dump["frames"], task["frames"]), (dump["frames"], task["frames"])
        assert task["workqueue"] == dump.get("workqueue")
        assert task["reports"] == 1
    assert (finding.first_seen, finding.last_seen) == (expected["first_timestamp"],
                                                       expected["last_timestamp"])


@needs_corpus
def test_hung_task_frames_are_cleaned():
    """'?' markers, [<addr>] prefixes, offsets and .isra suffixes are gone, order is kept."""
    b09 = by_kind(find_incidents(corpus_lines("B09_moby_9605.log")))["hung_task_netdev"]
    (docker,) = b09.facts["tasks"]
    assert docker["frames"] == ["schedule_preempt_disabled", "__mutex_lock_slowpath",
                                "mutex_lock", "copy_net_ns"]
    assert (docker["state"], docker["matched_frames"]) == ("D", ["copy_net_ns"])
    a13 = by_kind(find_incidents(corpus_lines("A13_lkml_mempool-pitfall.log")))["hung_task_mempool"]
    kswapd = a13.facts["tasks"][0]
    assert kswapd["frames"][:7] == ["__schedule", "schedule", "schedule_timeout",
                                    "init_timer_on_stack_key", "io_schedule_timeout",
                                    "io_schedule_timeout", "mempool_alloc"]
    assert "pageout" in kswapd["frames"] and "__list_lru_count_one" in kswapd["frames"]
    assert (len(kswapd["frames"]), len(a13.facts["tasks"][1]["frames"])) == (26, 56)


@needs_corpus
@pytest.mark.parametrize("name", [n for n in CORPUS_FILES if n.startswith("N")])
def test_negatives_have_no_findings(name):
    assert EXPECTED[name]["category"] == "none"
    assert find_incidents(corpus_lines(name)) == []


@needs_corpus
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_findings_are_json_and_ordered(name):
    findings = find_incidents(corpus_lines(name))
    assert [f.kind for f in findings] == [k for k in KINDS if k in {f.kind for f in findings}]
    for finding in findings:
        data = json.loads(json.dumps(finding.to_json()))
        assert list(data)[:4] == ["kind", "count", "first_seen", "last_seen"]
        assert list(data)[-1] == "evidence"
        assert 1 <= len(data["evidence"]) <= 5
        assert all(isinstance(line, str) and line for line in data["evidence"])


# ---------------------------------------------------------------------------------------------
# Line formats
# ---------------------------------------------------------------------------------------------

WAIT = "unregister_netdevice: waiting for eth0 to become free. Usage count = 1"


@pytest.mark.parametrize("raw, timestamp, monotonic, wall, kernel", [
    ("[  122.222455] " + WAIT, "[  122.222455]", 122.222455, None, True),
    ("<0>[  122.222455] " + WAIT, "[  122.222455]", 122.222455, None, True),
    ("[  122.222455] [ T1234] " + WAIT, "[  122.222455]", 122.222455, None, True),
    ("[Thu May 14 23:17:24 2020] " + WAIT, "[Thu May 14 23:17:24 2020]", None,
     "Thu May 14 23:17:24 2020", True),
    ("[So Nov 15 15:59:41 2020] " + WAIT, "[So Nov 15 15:59:41 2020]", None,
     "So Nov 15 15:59:41 2020", True),
    ("[Mi Mär  4 01:02:03 2020] " + WAIT, "[Mi Mär  4 01:02:03 2020]", None,
     "Mi Mär  4 01:02:03 2020", True),
    ("Mar  5 03:41:22 node-1 kernel: [732240.608081] " + WAIT, "Mar  5 03:41:22 [732240.608081]",
     732240.608081, "Mar  5 03:41:22", True),
    ("Jul 05 19:33:34 gke-pool-0-rcc kernel: " + WAIT, "Jul 05 19:33:34", None, "Jul 05 19:33:34",
     True),
    ("Jul 05 19:33:34.123456 host kernel: " + WAIT, "Jul 05 19:33:34.123456", None,
     "Jul 05 19:33:34.123456", True),
    ("2023-09-27T23:18:39.123456+02:00 host kernel: " + WAIT, "2023-09-27T23:18:39.123456+02:00",
     None, "2023-09-27T23:18:39.123456+02:00", True),
    ("2023-09-27T23:18:39,123456+00:00 " + WAIT, "2023-09-27T23:18:39,123456+00:00", None,
     "2023-09-27T23:18:39,123456+00:00", True),
    ("[ 1234.567890] host kernel: " + WAIT, "[ 1234.567890]", 1234.56789, None, True),
    ("May 17 18:48:11 kernel: [ 6141.921740] " + WAIT, "May 17 18:48:11 [ 6141.921740]", 6141.92174,
     "May 17 18:48:11", True),
    ("Sep 13 14:34:10 ccgx user.warn kernel: [43500.178937] " + WAIT, "Sep 13 14:34:10 [43500.178937]",
     43500.178937, "Sep 13 14:34:10", True),
    ("Sep 13 14:34:10 ccgx user.info vedirect-dbus[1339]: " + WAIT, "Sep 13 14:34:10", None,
     "Sep 13 14:34:10", False),
    ("6,1234,5678901,-;" + WAIT, "5678901", 5.678901, None, True),
    ("4,99,1000,-,caller=T12;" + WAIT, "1000", 0.001, None, True),
    (" kernel:[11843724.403314] " + WAIT, "[11843724.403314]", 11843724.403314, None, True),
    ("> > [  122.222455] " + WAIT, "[  122.222455]", 122.222455, None, True),
    ("      " + WAIT, None, None, None, True),
    (WAIT, None, None, None, True),
])
def test_parse_line_formats(raw, timestamp, monotonic, wall, kernel):
    line = parse_line(raw)
    assert line.text == WAIT
    assert line.timestamp == timestamp
    assert line.monotonic == (pytest.approx(monotonic) if monotonic is not None else None)
    assert line.wall == wall
    assert line.kernel is kernel
    assert line.raw == raw


def test_parse_line_other_programs_and_wall_header():
    kubelet = parse_line("Jul 05 19:33:29 host kubelet[1545]: I0705 GET /healthz: (23µs) 200")
    assert (kubelet.kernel, kubelet.timestamp) == (False, "Jul 05 19:33:29")
    header = parse_line("Message from syslogd@ip-10-0-0-1 at Sep 27 23:18:39 ...")
    assert (header.kernel, header.timestamp, header.text) == (False, "Sep 27 23:18:39", "")
    # ISO-stamped dmesg lines whose text looks like "word word:" are still kernel lines
    for text in ("EXT4-fs (sda1): mounted filesystem", "IPv6: eth0: link becomes ready",
                 "docker0: port 5(vethfd2807b) entered blocking state"):
        line = parse_line("2020-05-14T23:17:24,000000+00:00 " + text)
        assert (line.kernel, line.text) == (True, text)


@pytest.mark.parametrize("raw", [
    "[  122.222455] " + WAIT,
    "[Thu May 14 23:17:24 2020] " + WAIT,
    "[So Nov 15 15:59:41 2020] " + WAIT,
    "Mar  5 03:41:22 host kernel: [732240.608081] " + WAIT,
    "Jul 05 19:33:34 host kernel: " + WAIT,
    "2023-09-27T23:18:39+0000 host kernel: " + WAIT,
    "6,1234,5678901,-;" + WAIT,
    " kernel:[11843724.403314] " + WAIT,
    "> " + WAIT,
    "\t" + WAIT,
    WAIT,
])
def test_every_format_finds_the_wait(raw):
    (finding,) = find_incidents(["Jul 05 19:33:33 host dockerd[1]: unrelated", raw, "other text"])
    assert finding.kind == "netdev_unregister_wait"
    assert finding.facts["devices"][0]["name"] == "eth0"
    assert finding.first_seen == parse_line(raw).timestamp


def test_other_programs_lines_are_ignored():
    assert find_incidents(["Jul 05 19:33:34 host kubelet[1545]: " + WAIT]) == []


@pytest.mark.parametrize("name", ["eth0.100", "wlan0-adhoc_262", "batadv_slave_0", "veth1a2b@if3",
                                  "br-3f2a9c1d8e7b", "lo"])
def test_device_names_beyond_word_characters(name):
    (finding,) = find_incidents([
        "[100.000000] unregister_netdevice: waiting for %s to become free. Usage count = 3" % name])
    assert finding.facts["devices"][0]["name"] == name
    assert finding.facts["devices"][0]["max_usage_count"] == 3


def test_wrapped_lines_are_joined():
    lines = parse_lines([
        "[  122.222455] SLUB: Unable to allocate memory on node -1, ",  # format=flowed
        "gfp=0x14000c0(GFP_KERNEL)",
        "[  122.224198]   cache: kmalloc-64(7:web), object size: ",
        "56, buffer size: 88, default order: 0, min order: 0",
        "[  122.224199] SLUB: Unable to allocate memory on node -1,",  # hard wrap after a comma
        "gfp=0x14000c0(GFP_KERNEL)",
        "[  122.224200] next line",
        "not a continuation",
    ])
    assert [line.text for line in lines] == [
        "SLUB: Unable to allocate memory on node -1, gfp=0x14000c0(GFP_KERNEL)",
        "cache: kmalloc-64(7:web), object size: 56, buffer size: 88, default order: 0, min order: 0",
        "SLUB: Unable to allocate memory on node -1, gfp=0x14000c0(GFP_KERNEL)",
        "next line",
        "not a continuation",
    ]
    assert lines[0].timestamp == "[  122.222455]"


def test_input_chunks_strings_and_bytes():
    text = "[1.000000] %s\n[2.000000] %s\n" % (WAIT, WAIT)
    for given_input in (text, text.encode(), text.splitlines(True), [text], [text.encode()]):
        (finding,) = find_incidents(given_input)
        assert (finding.count, finding.first_seen, finding.last_seen) == (2, "[1.000000]",
                                                                          "[2.000000]")


# ---------------------------------------------------------------------------------------------
# SLUB formats
# ---------------------------------------------------------------------------------------------

def test_slub_6_12_format():
    """mm/slub.c since bf6b9e9ba086 (v6.12) prints the CPU and its node."""
    (finding,) = find_incidents([
        "[ 5021.118230] SLUB: Unable to allocate memory on CPU 3 (of node 1) on node -1, "
        "gfp=0x400cc0(GFP_KERNEL_ACCOUNT)",
        "[ 5021.118235]   cache: kmalloc-cg-256, object size: 256, buffer size: 256, "
        "default order: 1, min order: 0",
        "[ 5021.118236]   node 0: slabs: 10, objs: 320, free: 0",
        "[ 5021.118237]   node 1: slabs: 12, objs: 384, free: 0",
    ])
    assert (finding.kind, finding.count) == ("slub_alloc_failure", 1)
    assert finding.facts["caches"] == [
        {"cache": "kmalloc-cg-256", "memcg_id": None, "cgroup": None, "count": 1}]
    assert finding.facts["gfp"] == [{"value": "0x400cc0", "flags": ["GFP_KERNEL_ACCOUNT"],
                                     "flags_source": "log", "count": 1}]
    assert (finding.facts["nodes"], finding.facts["requested_nodes"], finding.facts["cpus"]) == (
        [0, 1], [-1], [3])
    assert (finding.first_seen, finding.last_seen) == ("[ 5021.118230]", "[ 5021.118237]")


def test_slub_modern_format_with_empty_flags_and_interleaving():
    (finding,) = find_incidents([
        "[ 10.0] SLUB: Unable to allocate memory on node 0, gfp=0x0()",
        "[ 10.1] IPv6: ADDRCONF(NETDEV_CHANGE): cali0: link becomes ready",
        "[ 10.2]   cache: dentry(12:pod-1), object size: 192, buffer size: 192, default order: 0,"
        " min order: 0",
        "[ 10.3]   node 0: slabs: 1, objs: 21, free: 0",
        "[ 11.0] SLUB: Unable to allocate memory on node -1, gfp=0x0()",
        "[ 11.1]   cache: dentry(12:pod-1), object size: 192, buffer size: 192, default order: 0,"
        " min order: 0",
    ])
    assert finding.count == 2
    assert finding.facts["caches"] == [
        {"cache": "dentry", "memcg_id": 12, "cgroup": "pod-1", "count": 2}]
    assert finding.facts["gfp"] == [{"value": "0x0", "flags": [], "flags_source": "log",
                                     "count": 2}]
    assert finding.facts["requested_nodes"] == [-1, 0]


def test_slub_old_format_follows_the_kernel_release():
    lines = ["[1.0] SLUB: Unable to allocate memory on node -1 (gfp=0x2088020)"]
    assert find_incidents(lines)[0].facts["gfp"][0]["flags"] == ["GFP_ATOMIC", "__GFP_ZERO"]
    (finding,) = find_incidents(lines, kernel_release="3.10.0-957.el7.x86_64")
    assert finding.facts["gfp"][0]["flags_source"] == "3.10"
    assert finding.facts["gfp"][0]["flags"] == ["GFP_ATOMIC", "__GFP_ZERO", "__GFP_RECLAIMABLE",
                                                "0x2000000"]
    # a release printed in the log is used when none is given
    (finding,) = find_incidents(["[0.0] Linux version 4.4.0-161-generic (buildd@lgw01)"] + lines)
    assert finding.facts["gfp"][0]["flags_source"] == "4.4"


# ---------------------------------------------------------------------------------------------
# netdev waits
# ---------------------------------------------------------------------------------------------

def wait(ts, dev, count):
    return "[%s] unregister_netdevice: waiting for %s to become free. Usage count = %d" % (
        ts, dev, count)


@pytest.mark.parametrize("release, base, leaked", [
    ("3.10.0-1127.el7.x86_64", 0, 2),
    ("5.10.0-28-amd64", 0, 2),
    ("5.13.0", 1, 1),
    ("6.1.0-18-amd64", 1, 1),
    (None, None, None),
])
def test_usage_count_meaning(release, base, leaked):
    (finding,) = find_incidents([wait("10.000000", "eth0", 2)], kernel_release=release)
    meaning = finding.facts["leaked_references"]
    assert meaning["base_references"] == base
    assert finding.facts["devices"][0]["leaked_references"] == leaked
    if release:
        assert release in meaning["basis"]
    else:
        assert meaning["basis"].startswith("unknown")
        assert "N leaked" in meaning["explanation"] and "N-1" in meaning["explanation"]


def test_usage_count_meaning_from_release_in_log():
    (finding,) = find_incidents([
        "[5.0] CPU: 1 PID: 7 Comm: kworker/u4:0 Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1",
        wait("15.000000", "veth1", 2)])
    assert finding.facts["leaked_references"]["base_references"] == 1
    assert "6.1.0-18-amd64" in finding.facts["leaked_references"]["basis"]


def test_several_devices_and_ordering():
    (finding,) = find_incidents([
        wait("30.000000", "eth0.100", 3), wait("31.000000", "wlan0-adhoc_262", 1),
        wait("40.000000", "eth0.100", 2), wait("50.000000", "eth0.100", 2),
    ])
    eth, wlan = finding.facts["devices"]
    assert (eth["name"], eth["messages"], eth["max_usage_count"], eth["last_usage_count"]) == (
        "eth0.100", 3, 3, 2)
    assert (eth["first_seen"], eth["last_seen"], eth["duration_seconds"]) == (
        "[30.000000]", "[50.000000]", 20.0)
    assert (wlan["messages"], wlan["duration_seconds"]) == (1, 0.0)
    assert (finding.count, finding.facts["distinct_events"]) == (4, 4)


def test_duration_across_new_year_in_syslog():
    (finding,) = find_incidents([
        "Dec 31 23:59:50 host kernel: " + WAIT, "Jan  1 00:00:10 host kernel: " + WAIT])
    assert finding.facts["devices"][0]["duration_seconds"] == 20.0


def test_duration_from_dmesg_ctime():
    (finding,) = find_incidents(["[Thu May 14 23:17:24 2020] " + WAIT,
                                 "[Fri May 15 00:17:34 2020] " + WAIT])
    assert finding.facts["devices"][0]["duration_seconds"] == 3610.0


def test_duplicated_syslog_and_dmesg_copies():
    (finding,) = find_incidents([
        "Sep 27 23:18:39 host kernel: [100.500000] " + WAIT,
        "[100.500000] " + WAIT,
        "[110.500000] " + WAIT,
    ])
    assert (finding.count, finding.facts["distinct_events"]) == (3, 2)


def test_ref_tracker_with_timestamps_dedupes_repeated_stacks():
    block = [
        "ref_tracker: netdev@ffff888005b3c5d8 has 1/2 users at",
        "     dst_init+0x4f/0x1b0",
        "     dst_alloc+0x68/0xa0",
        "     ip_route_output_key_hash_rcu+0x4a8/0xb50",
    ]
    lines = []
    for second in (100, 110):
        lines.append(wait("%d.000000" % second, "veth0", 3))
        lines.extend("[%d.000001] %s" % (second, text) for text in block)
    lines.append("[120.000000] IPv6: eth1: link becomes ready")
    (finding,) = find_incidents(lines)
    (tracker,) = finding.facts["devices"][0]["ref_tracker"]
    assert tracker == {"object": "netdev@ffff888005b3c5d8", "users": "1/2", "holder": "dst_init",
                       "frames": ["dst_init", "dst_alloc", "ip_route_output_key_hash_rcu"],
                       "reports": 2}


# ---------------------------------------------------------------------------------------------
# Blocked tasks
# ---------------------------------------------------------------------------------------------

HUNG_6X = [
    "[  984.123456] INFO: task kworker/u8:3:1234 blocked for more than 122 seconds.",
    "[  984.123460]       Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1",
    '[  984.123461] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
    "[  984.123462] task:kworker/u8:3    state:D stack:0     pid:1234  ppid:2      flags:0x00004000",
    "[  984.123463] Workqueue: netns cleanup_net",
    "[  984.123464] Call Trace:",
    "[  984.123465]  <TASK>",
    "[  984.123466]  __schedule+0x34d/0x9e0",
    "[  984.123467]  schedule+0x5a/0xd0",
    "[  984.123468]  schedule_timeout+0x118/0x150",
    "[  984.123469]  msleep+0x2b/0x40",
    "[  984.123470]  netdev_run_todo+0x1a2/0x5b0",
    "[  984.123471]  default_device_exit_batch+0x16f/0x1a0",
    "[  984.123472]  ops_exit_list+0x5b/0x70",
    "[  984.123473]  cleanup_net+0x20e/0x360",
    "[  984.123474]  process_one_work+0x1c7/0x380",
    "[  984.123475]  </TASK>",
    "[  984.123476]  ? unrelated_after_end+0x1/0x2",
]


def test_hung_task_6x_format():
    (finding,) = find_incidents(HUNG_6X)
    assert (finding.kind, finding.count) == ("hung_task_netdev", 1)
    (task,) = finding.facts["tasks"]
    assert task == {
        "task": "kworker/u8:3", "pid": 1234, "state": "D", "blocked_seconds": 122,
        "workqueue": "netns cleanup_net", "reports": 1, "confidence": "certain",
        "rule": "the device unregistration wait (netdev_run_todo) in a blocked task's stack",
        "matched_frames": ["netdev_run_todo", "cleanup_net"],
        "frames": ["__schedule", "schedule", "schedule_timeout", "msleep", "netdev_run_todo",
                   "default_device_exit_batch", "ops_exit_list", "cleanup_net",
                   "process_one_work"]}
    assert (finding.first_seen, finding.last_seen) == ("[  984.123456]", "[  984.123475]")
    assert finding.evidence == [HUNG_6X[0], HUNG_6X[11]]


def test_repeated_reports_of_one_task_are_merged():
    later = [line.replace("[  984.", "[ 1106.").replace("122 seconds", "245 seconds")
             for line in HUNG_6X]
    (finding,) = find_incidents(HUNG_6X + later)
    (task,) = finding.facts["tasks"]
    assert (finding.count, task["reports"], task["blocked_seconds"]) == (2, 2, 245)
    assert finding.last_seen == "[ 1106.123475]"


def test_rtnl_lock_waiter_and_noprof_mempool():
    (netdev,) = find_incidents([
        "[1.0] INFO: task ip:4242 blocked for more than 120 seconds.",
        "[1.1]  __mutex_lock.constprop.0+0x3a2/0x6c0",
        "[1.2]  rtnl_lock+0x15/0x20",
        "[1.3]  do_setlink+0x1f/0x30",
    ])
    assert netdev.facts["tasks"][0]["matched_frames"] == ["rtnl_lock"]
    assert netdev.facts["tasks"][0]["frames"][0] == "__mutex_lock"
    (mempool,) = find_incidents([
        "task:jbd2/sda1-8    state:D stack:0     pid:321   tgid:321   ppid:2      flags:0x00004000",
        "Call Trace:",
        " io_schedule_timeout+0x19/0x40",
        " mempool_alloc_noprof+0x12f/0x190",
        " bio_alloc_bioset+0x1a6/0x3a0",
    ])
    assert mempool.kind == "hung_task_mempool"
    assert mempool.facts["tasks"][0]["matched_frames"] == ["io_schedule_timeout", "mempool_alloc"]
    assert mempool.facts["tasks"][0]["blocked_seconds"] is None


def test_writeback_without_mempool_needs_io_schedule_timeout():
    head = ["[2.0] INFO: task flush:77 blocked for more than 120 seconds.", "[2.1] Call Trace:"]
    (finding,) = find_incidents(head + ["[2.2]  io_schedule_timeout+0x1/0x2",
                                        "[2.3]  ext4_writepages+0x1/0x2"])
    assert finding.facts["tasks"][0]["matched_frames"] == ["io_schedule_timeout",
                                                           "ext4_writepages"]
    # N07-like: io_schedule_timeout alone, or writeback waits without it, are not mempool stalls
    assert find_incidents(head + ["[2.2]  io_schedule_timeout+0x1/0x2",
                                  "[2.3]  io_schedule+0x1/0x2", "[2.4]  do_fsync+0x1/0x2"]) == []
    assert find_incidents(head + ["[2.2]  io_schedule+0x1/0x2",
                                  "[2.3]  wait_on_page_writeback+0x1/0x2"]) == []


def test_sysrq_dump_ignores_tasks_not_in_d_state():
    dump = ["[3.0] sshd            S    0   911      1 0x00000000", "[3.1] Call Trace:",
            "[3.2]  rtnl_lock+0x15/0x20", "[3.3]  dev_ioctl+0x1/0x2", "",
            "[3.4] ip              D    0   912      1 0x00000000", "[3.5] Call Trace:",
            "[3.6]  rtnl_lock+0x15/0x20"]
    (finding,) = find_incidents(dump)
    assert [(t["task"], t["pid"]) for t in finding.facts["tasks"]] == [("ip", 912)]


def test_a_frame_after_unrelated_text_starts_no_new_stack():
    (finding,) = find_incidents([
        "[4.0] INFO: task dockerd:10 blocked for more than 120 seconds.",
        "[4.1]  schedule+0x1/0x2",
        "[4.2] IPv6: eth0: link becomes ready",
        "[4.3]  copy_net_ns+0x1/0x2",
        "[4.4] INFO: task runc:11 blocked for more than 120 seconds.",
        "[4.5]  copy_net_ns+0x9a/0x160",
    ])
    assert [(t["task"], t["frames"]) for t in finding.facts["tasks"]] == [
        ("runc", ["copy_net_ns"])]


@pytest.mark.parametrize("text, name", [
    (" [<ffffffff81544ebe>] ? schedule_preempt_disabled+0xe/0x20", "schedule_preempt_disabled"),
    (" pageout.isra.55+0x1a0/0x430", "pageout"),
    (" xfs_vm_writepage+0x3b/0x70 [xfs]", "xfs_vm_writepage"),
    (" xfs_vm_writepage+0x3b/0x70 [xfs 4f1e2d3c4b5a]", "xfs_vm_writepage"),
    ("     netdev_hold include/linux/netdevice.h:4419 [inline]", "netdev_hold"),
    ("  rtnl_newlink+0x16d6/0x1c70 net/core/rtnetlink.c:4057", "rtnl_newlink"),
    (" ? __list_lru_count_one.isra.2+0x22/0x70", "__list_lru_count_one"),
    ("[<c0882f18>] (__schedule) from [<c0883858>] (schedule+0x64/0xe4)", "__schedule"),
    ("[<7f4ba618>] (fuse_writepages [fuse]) from [<8022e284>] (do_writepages+0x30/0x8c)", "fuse_writepages"),
    ("[<c0609540>] (__mutex_lock.constprop.4) from [<c03fd58c>] (tty_unthrottle_safe+0x14/0x7c)", "__mutex_lock"),
    ("[<c0609540>] (x) then [<c03fd58c>]", None),
    ("Call Trace:", None),
    ("node 0: slabs: 663, objs: 20964, free: 0", None),
    ("Mem-Info:", None),
    ("kswapd", None),
])
def test_parse_frame(text, name):
    assert parse_frame(text) == name


# ---------------------------------------------------------------------------------------------
# All kinds at once, and robustness
# ---------------------------------------------------------------------------------------------

def test_all_kinds_in_one_log_in_kind_order():
    lines = HUNG_6X[:8] + [
        "[ 990.0]  mempool_alloc+0x1/0x2", "[ 990.1]  rtnl_lock+0x1/0x2",
        "[ 991.0] SLUB: Unable to allocate memory on node -1 (gfp=0x20)",
        wait("992.000000", "eth0", 1)]
    findings = find_incidents(lines)
    assert [f.kind for f in findings] == list(KINDS)
    assert all(isinstance(f, Finding) for f in findings)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=30), st.one_of(st.none(), st.text(max_size=20)))
def test_arbitrary_text_never_raises(lines, release):
    for finding in find_incidents(lines, kernel_release=release):
        assert finding.kind in KINDS
        json.dumps(finding.to_json())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data):
    find_incidents(data.decode("utf-8", errors="replace").splitlines())


PIECES = [
    "[  1.5] ", "Mar  5 03:41:22 h kernel: ", "6,1,2,-;", "> ", "SLUB: Unable to allocate memory on node ",
    "-1, gfp=0x", "(gfp=0x20)", "(GFP_KERNEL", "cache: ", "kmalloc-1(", "1:x)", "node 0: slabs: 1, objs: 1,"
    " free: 0", "unregister_netdevice: waiting for ", " to become free. Usage count = ", "99999999999",
    "ref_tracker: netdev@1 has 1/1 users at", " mempool_alloc+0x1/0x2", "INFO: task a:1 blocked for "
    "more than 1 seconds.", "task:x state:D stack:0 pid:1", "x  D 0 1 1 0x0", "Call Trace:", "</TASK>",
    "\n", " ", ",", "\x00", "\ufffd", "Linux version 9.9", "[Mo Jan  1 00:00:00 2024] ", "[ 99999999999.1]",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=8).map("".join), max_size=40))
def test_near_miss_log_fragments_never_raise(lines):
    for finding in find_incidents(lines):
        json.dumps(finding.to_json())


# ---------------------------------------------------------------------------------------------
# The repository corpus (tests/corpus): real logs of 6.x, RHEL, Ubuntu, pasted forms, negatives
# ---------------------------------------------------------------------------------------------

def repo_lines(name):
    return (REPO_CORPUS / name).read_bytes().decode("utf-8", errors="replace").splitlines()


def test_every_repo_corpus_file_is_described_with_its_source():
    assert sorted(path.name for path in REPO_CORPUS.glob("*.log")) == sorted(REPO_EXPECTED)
    assert len(REPO_EXPECTED) >= 15
    for name, entry in REPO_EXPECTED.items():
        assert entry["source_url"].startswith("https://"), name
        assert entry["where"] and entry["form"], name
        assert name.startswith("N") == (entry["findings"] == {}), name


@pytest.mark.parametrize("name", sorted(REPO_EXPECTED))
def test_repo_corpus_facts(name):
    expected = REPO_EXPECTED[name]["findings"]
    findings = by_kind(find_incidents(repo_lines(name)))
    assert sorted(findings) == sorted(expected)
    for kind, facts in expected.items():
        finding = findings[kind]
        data = finding.to_json()
        assert (finding.count, finding.confidence) == (facts["count"], facts["confidence"])
        assert (finding.first_seen, finding.last_seen) == (facts["first_seen"], facts["last_seen"])
        if "caches" in facts:
            assert {c["cache"]: c["count"] for c in data["caches"]} == facts["caches"]
            assert {g["value"]: g["count"] for g in data["gfp"]} == facts["gfp_counts"]
            assert data["nodes"] == facts["nodes"]
            assert data["orphan_lines"] == facts.get("orphan_lines", 0)
        if "memcg" in facts:
            assert ["%d:%s" % (c["memcg_id"], c["cgroup"]) for c in data["caches"]
                    if c["memcg_id"] is not None] == facts["memcg"]
        for value, flags in facts.get("gfp_flags", {}).items():
            assert next(g["flags"] for g in data["gfp"] if g["value"] == value) == flags
        for key in ("cpus", "requested_nodes"):
            if key in facts:
                assert data[key] == facts[key]
        if "devices" in facts:
            assert {d["name"]: d["max_usage_count"] for d in data["devices"]} == facts["devices"]
        if "tasks" in facts:
            assert [[t["task"], t["pid"]] for t in data["tasks"]] == facts["tasks"]
            (task,) = data["tasks"]
            assert (task["matched_frames"], task["workqueue"]) == (facts["matched_frames"], facts["workqueue"])
            assert task["confidence"] == facts["confidence"] and task["rule"] == finding.rule
            if "blocked_seconds" in facts:
                assert task["blocked_seconds"] == facts["blocked_seconds"]


def test_newest_slub_form_interleaved_with_a_warn_alloc_trace():
    """C01: 6.12+ header, kmalloc-rnd cache, each report's lines between another CPU's frames."""
    finding = by_kind(find_incidents(repo_lines("C01_tempesta_2494.log")))["slub_alloc_failure"]
    assert finding.facts["caches"] == [{"cache": "kmalloc-rnd-05-64", "memcg_id": None, "cgroup": None, "count": 3}]
    assert finding.evidence[:2] == [
        "[  163.151551] SLUB: Unable to allocate memory on CPU 0 (of node 0) on node -1, gfp=0x820(GFP_ATOMIC)",
        "[  163.152305]   cache: kmalloc-rnd-05-64, object size: 64, buffer size: 128, default order: 0, min order: 0"]


def test_real_html_paste_reads_as_the_plain_text_of_the_same_mail():
    """N26: the text/html part of a mail; its text/plain part (quoted with "> ") has these lines."""
    texts = [parse_line(line).text for line in repo_lines("N26_linux-dvb_2008-08-22_html.log")]
    assert texts[:3] == ["INFO: task khubd:1966 blocked for more than 120 seconds.",
                         '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
                         "khubd         D ffff81003dca9bc0     0  1966      2"]
    assert texts[7] == "[<ffffffff80245e8f>] ? kthread_stop+0x7f/0x90"
    assert [parse_frame(text) for text in texts[-4:]] == ["kthread", "child_rip", "kthread", "child_rip"]
    analysis = analyse_log(repo_lines("N26_linux-dvb_2008-08-22_html.log"))
    assert (analysis.findings, analysis.text_lines, analysis.garbled_lines) == ([], 28, 0)


def test_negative_dmesg_json_is_read_as_messages():
    analysis = analyse_log(repo_lines("N15_util-linux_2833_dmesg-json.log"))
    assert analysis.findings == [] and analysis.analysable
    assert (analysis.kernel_lines, analysis.stamped_lines) == (1, 1)  # the "fac": "syslog" record is not the kernel's


def test_memcg_oom_kills_are_counted_not_reported():
    if "N01_k8s_83044.log" not in EXPECTED:
        pytest.skip("shared corpus not found")
    analysis = analyse_log(corpus_lines("N01_k8s_83044.log"))
    assert (analysis.findings, analysis.memcg_oom_kills) == ([], 1)


# ---------------------------------------------------------------------------------------------
# The table of message forms
# ---------------------------------------------------------------------------------------------

def form_example(form):
    corpus, name, number = form.example
    if corpus == "shared":
        if name not in EXPECTED:
            pytest.skip("shared corpus not found")
        return corpus_lines(name)[number - 1]
    return repo_lines(name)[number - 1]


def test_the_table_covers_every_signature_and_names_its_commits():
    assert {f.signature for f in log_forms.FORMS} == {
        log_forms.SLUB, log_forms.NETDEV_WAIT, log_forms.REF_TRACKER, log_forms.HUNG_TASK, log_forms.MEMCG_OOM}
    for form in log_forms.FORMS:
        assert form.since.startswith("v") and (form.until is None or form.until.startswith("v")), form.name
        assert form.printk and form.commit, form.name
        assert form.example[0] in ("tests", "shared") and form.example[2] >= 1, form.name
    headers = [f for f in log_forms.of_signature(log_forms.SLUB) if f.name.startswith("slub_header")]
    assert [(f.since, f.until, f.commit[:12]) for f in headers] == [
        ("v2.6.32", "v4.5", "781b2ba6eb5f"), ("v4.6", "v6.11", "5b3810e5c6e1"), ("v6.12", None, "bf6b9e9ba086")]


@pytest.mark.parametrize("form", log_forms.FORMS, ids=lambda f: f.name)
def test_every_form_matches_its_real_example(form):
    """The example is a real line of the corpus: parsed like any line, the form reads it."""
    line = parse_line(form_example(form))
    assert form.pattern.search(line.text), (form.name, line.text)
    others = [f.name for f in log_forms.FORMS if f.signature == form.signature and f is not form
              and f.name.startswith(form.name.split("_")[0] + "_header") and f.pattern.search(line.text)]
    assert others == []  # no two header forms read the same line


SIGNATURE_KIND = {log_forms.SLUB: "slub_alloc_failure", log_forms.NETDEV_WAIT: "netdev_unregister_wait"}


@pytest.mark.parametrize("form", [f for f in log_forms.FORMS if f.name in (
    "slub_header_3", "slub_header_4_6", "slub_header_6_12", "netdev_wait")], ids=lambda f: f.name)
def test_a_header_form_alone_is_a_finding(form):
    (finding,) = find_incidents([form_example(form)])
    assert (finding.kind, finding.count, finding.confidence) == (SIGNATURE_KIND[form.signature], 1, "certain")


def test_continuation_forms_attach_to_the_newest_header():
    header = form_example(log_forms.BY_NAME["slub_header_6_12"])
    cache = form_example(log_forms.BY_NAME["slub_cache"])
    node = form_example(log_forms.BY_NAME["slub_node"])
    suppressed = form_example(log_forms.BY_NAME["slub_suppressed"])
    (finding,) = find_incidents([suppressed, header, cache, node])
    assert finding.facts["caches"][0]["cache"] == "kmalloc-rnd-05-64"
    assert (finding.facts["nodes"], finding.facts["callbacks_suppressed"], finding.facts["cpus"]) == ([0], 72, [0])


def test_ref_tracker_form_attaches_to_the_wait():
    wait_line = form_example(log_forms.BY_NAME["netdev_wait"])
    tracker = form_example(log_forms.BY_NAME["ref_tracker_users"])
    (finding,) = find_incidents([wait_line, tracker, "     netdev_hold+0x1/0x2", "     veth_newlink+0x1/0x2"])
    (device,) = finding.facts["devices"]
    assert device["ref_tracker"][0]["holder"] == "veth_newlink"


def test_ref_tracker_leaked_form_attaches_to_the_wait():
    """5.17 to 6.4: 'leaked reference.' then the stack, no object, no user count."""
    wait_line = form_example(log_forms.BY_NAME["netdev_wait"])
    leaked = form_example(log_forms.BY_NAME["ref_tracker_leaked"])
    assert leaked == "leaked reference."
    (finding,) = find_incidents([wait_line, leaked, " netdev_hold include/linux/netdevice.h:4099 [inline]",
                                 " dev_ifsioc+0xbc0/0xeb0 net/core/dev_ioctl.c:408"])
    (device,) = finding.facts["devices"]
    assert device["ref_tracker"] == [{"object": None, "users": None, "holder": "dev_ifsioc",
                                      "frames": ["netdev_hold", "dev_ifsioc"], "reports": 1}]
    assert finding.facts["leaked_references"]["base_references"] == 1  # a tracker means v5.17+
    assert find_incidents([leaked, " dev_ifsioc+0xbc0/0xeb0"]) == []  # no wait message: nothing


def test_syzbot_leaked_reference_report_names_the_holder():
    """C15: bridge0 at Usage count = 2 with one tracked reference, taken in dev_ifsioc."""
    finding = by_kind(find_incidents(repo_lines("C15_syzbot_881d65229ca4f9ae8c84.log")))["netdev_unregister_wait"]
    (device,) = finding.facts["devices"]
    (tracker,) = device["ref_tracker"]
    assert (device["name"], device["max_usage_count"], device["leaked_references"]) == ("bridge0", 2, 1)
    assert (tracker["holder"], len(tracker["frames"])) == ("dev_ifsioc", 13)
    assert tracker["frames"][:3] == ["__netdev_tracker_alloc", "netdev_hold", "dev_ifsioc"]
    assert tracker["frames"][-1] == "entry_SYSCALL_64_after_hwframe"
    assert finding.evidence == ["unregister_netdevice: waiting for bridge0 to become free. Usage count = 2",
                                "leaked reference."]


@pytest.mark.parametrize("task_form, task, pid, state", [("task_line_old", "kworker/u4:6", 293, "D"),
                                                        ("task_line_5_9", "systemd-getty-g", 11267, "D")])
def test_task_line_forms_start_a_dump(task_form, task, pid, state):
    lines = [form_example(log_forms.BY_NAME[task_form]), "Workqueue: netns cleanup_net", "Call Trace:",
             " netdev_run_todo+0x1/0x2", " cleanup_net+0x1/0x2"]
    (finding,) = find_incidents(lines)
    (entry,) = finding.facts["tasks"]
    assert (entry["task"], entry["pid"], entry["state"], entry["blocked_seconds"]) == (task, pid, state, None)
    assert (entry["confidence"], entry["matched_frames"]) == ("certain", ["netdev_run_todo", "cleanup_net"])


def test_hung_task_header_and_workqueue_forms():
    """C06's header and Workqueue lines (3.15.8, syslog) with the frames its excerpt lost."""
    lines = [form_example(log_forms.BY_NAME["hung_task_header"]), form_example(log_forms.BY_NAME["workqueue"]),
             "Call Trace:", " netdev_run_todo+0x1/0x2"]
    (finding,) = find_incidents(lines)
    (entry,) = finding.facts["tasks"]
    assert (entry["task"], entry["pid"], entry["blocked_seconds"], entry["workqueue"]) == (
        "kworker/u30:4", 31318, 120, "netns cleanup_net")
    assert entry["confidence"] == "certain"


def test_memcg_oom_form_is_counted():
    line = form_example(log_forms.BY_NAME["memcg_oom_kill_old"])
    assert analyse_log([line, line]).memcg_oom_kills == 2


def test_memcg_oom_killed_form_is_counted_and_a_global_oom_is_not():
    """v5.1+: the scope is on the 'Killed process' line; v5.4 appended UID, pgtables, oom_score_adj."""
    line = form_example(log_forms.BY_NAME["memcg_oom_killed"])
    assert log_forms.pattern("memcg_oom_killed").search(line).group("pid", "comm") == ("23793", "leaker")
    analysis = analyse_log(repo_lines("N24_lkml_memcg-oom-5.2.log"))
    assert (analysis.findings, analysis.memcg_oom_kills) == ([], 1)
    newer = line.replace("shmem-rss:0kB", "shmem-rss:0kB, UID:0 pgtables:4832kB oom_score_adj:998")
    assert analyse_log([newer]).memcg_oom_kills == 1
    assert analyse_log([line.replace("Memory cgroup out of memory", "Out of memory")]).memcg_oom_kills == 0


# ---------------------------------------------------------------------------------------------
# Pasted and exported lines (the normaliser)
# ---------------------------------------------------------------------------------------------

PASTED = "[  163.151551] SLUB: Unable to allocate memory on CPU 0 (of node 0) on node -1, gfp=0x820(GFP_ATOMIC)"


@pytest.mark.parametrize("raw, timestamp", [
    ("162 " + PASTED, "[  163.151551]"),
    ("  162: " + PASTED, "[  163.151551]"),
    ("162 | " + PASTED, "[  163.151551]"),
    ("> " + PASTED, "[  163.151551]"),
    ("> > 12 " + PASTED, "[  163.151551]"),
    ("`" + PASTED + "`", "[  163.151551]"),
    (PASTED.replace("(GFP_ATOMIC)", "&#40;GFP_ATOMIC&#41;"), "[  163.151551]"),
    (PASTED + "<br />", "[  163.151551]"),
    ("&gt; " + PASTED.replace("] SLUB", "]&nbsp;SLUB") + "<BR>", "[  163.151551]"),
    ("2024-05-02T10:11:12.123456789Z " + PASTED, "2024-05-02T10:11:12.123456789Z [  163.151551]"),
    ("netifd iw ip netifd " + PASTED, "[  163.151551]"),
    ('{"fac": "kern", "pri": "warn", "time": 163.151551, "msg": "%s"}' % PASTED[15:], "163.151551"),
    ('{"MESSAGE": "%s", "_TRANSPORT": "kernel", "_SOURCE_MONOTONIC_TIMESTAMP": "163151551"}' % PASTED[15:],
     "[163.151551]"),
])
def test_pasted_forms_give_the_message_and_keep_the_raw_line(raw, timestamp):
    line = parse_line(raw)
    assert line.text == PASTED[15:]
    assert (line.timestamp, line.kernel, line.raw) == (timestamp, True, raw)
    (finding,) = find_incidents([raw])
    assert finding.evidence == [raw.strip()]  # the evidence is the line as given


def test_html_escaped_trace_and_journald_json_of_another_program():
    assert parse_line("&lt;TASK&gt;").text == "<TASK>"
    assert parse_line("[1.0] a &amp;&amp; b").text == "a && b"
    other = parse_line('{"MESSAGE": "%s", "_TRANSPORT": "syslog", "SYSLOG_IDENTIFIER": "kubelet"}' % WAIT)
    assert other.kernel is False
    assert find_incidents([other.raw]) == []
    binary = parse_line('{"MESSAGE": [104, 105, 255], "_TRANSPORT": "kernel", '
                        '"__REALTIME_TIMESTAMP": "1700000000000000"}')
    assert (binary.text, binary.wall) == ("hi\ufffd", "2023-11-14T22:13:20.000000Z")


def test_numbers_that_are_not_line_numbers_stay():
    for text in ("6,1234,5678901,-;" + WAIT, "64 bytes from 10.0.0.1", "2 [x] not a stamp"):
        assert parse_line(text).text == (WAIT if text.startswith("6,") else text)


def test_indented_dmesg_json_gives_each_message_its_record_time():
    lines = ['{', '   "dmesg": [', '      {', '         "fac": "kern",', '         "pri": "emerg",',
             '         "time": 100.500000,', '         "msg": "%s"' % WAIT, '      },{',
             '         "fac": "kern",', '         "time": 110.500000,', '         "msg": "%s"' % WAIT,
             '      }', '   ]', '}']
    (finding,) = find_incidents(lines)
    assert (finding.count, finding.first_seen, finding.last_seen) == (2, "100.500000", "110.500000")
    assert finding.facts["devices"][0]["duration_seconds"] == 10.0


def test_backslash_continuation_is_joined():
    (finding,) = find_incidents(repo_lines("C13_linux-ipsec_510c321b5571.log"))
    assert finding.evidence == ["kernel:unregister_netdevice: waiting for veth0 to become free. Usage count = 2"]


# ---------------------------------------------------------------------------------------------
# Interleaved continuation lines
# ---------------------------------------------------------------------------------------------

def slub(ts, caller, cache, node=0):
    tag = "[%s] [%s] " % (ts, caller) if caller else "[%s] " % ts
    return [tag + "SLUB: Unable to allocate memory on CPU %s (of node 0) on node -1, gfp=0xcc0(GFP_KERNEL)"
            % (caller or "C0")[1:],
            tag + "  cache: %s, object size: 64, buffer size: 64, default order: 0, min order: 0" % cache,
            tag + "  node %d: slabs: 1, objs: 64, free: 0" % node]


def test_two_cpus_interleaved_are_reattached_by_caller_id():
    a, b = slub("1.0", "C0", "dentry", 0), slub("1.1", "C1", "kmalloc-cg-64", 1)
    lines = [a[0], b[0], b[1], a[1], b[2], a[2]]  # header, header, then continuations crossed
    (finding,) = find_incidents(lines)
    assert {c["cache"]: c["count"] for c in finding.facts["caches"]} == {"dentry": 1, "kmalloc-cg-64": 1}
    assert finding.facts["cpus"] == [0, 1] and finding.facts["orphan_lines"] == 0
    assert finding.evidence == [a[0], a[1], b[0], b[1]]  # each header with its own cache line


def test_without_caller_ids_continuations_go_to_the_nearest_header_that_needs_them():
    a, b = slub("1.0", None, "dentry"), slub("1.1", None, "filp")
    (finding,) = find_incidents([a[0], a[1], b[0], a[2], b[1], b[2]])
    assert [c["cache"] for c in finding.facts["caches"]] == ["dentry", "filp"]


def test_a_continuation_far_from_any_header_is_an_orphan():
    a = slub("1.0", None, "dentry")
    noise = ["[1.5] eth0: link up"] * (SLUB_WINDOW + 1)
    (finding,) = find_incidents([a[0]] + noise + [a[1], a[2]])
    assert finding.facts["caches"] == [] and finding.facts["orphan_lines"] == 2


def test_open_reports_are_bounded_and_a_stack_is_not_cut_by_slub_lines():
    headers = [slub("1.%d" % i, None, "c%d" % i)[0] for i in range(MAX_OPEN_SLUB + 3)]
    analyser = LogAnalyser()
    analyser.feed(headers + ["[9.9] done"])
    assert len(analyser.slub.open) == MAX_OPEN_SLUB and analyser.reports()["slub_alloc_failure"] == len(headers)
    a = slub("2.0", None, "dentry")
    (slab, hung) = find_incidents(["[2.0] INFO: task kswapd0:60 blocked for more than 120 seconds.",
                                   "[2.0] Call Trace:", "[2.0]  io_schedule_timeout+0x1/0x2"] + a +
                                  ["[2.1]  mempool_alloc+0x1/0x2", "[2.1]  bvec_alloc+0x1/0x2"])
    assert hung.facts["tasks"][0]["matched_frames"] == ["io_schedule_timeout", "mempool_alloc", "bvec_alloc"]


def test_feeding_line_by_line_is_the_same_as_one_pass():
    lines = repo_lines("C01_tempesta_2494.log") + repo_lines("C06_coreos-bugs_118.log")
    analyser = LogAnalyser()
    for line in lines:
        analyser.feed(line + "\n")
    assert analyser.reports() == {"slub_alloc_failure": 3, "netdev_unregister_wait": 0,
                                  "hung_task_mempool": 0, "hung_task_netdev": 0}  # the dump ends at finish
    streamed = [f.to_json() for f in analyser.finish().findings]
    assert streamed == [f.to_json() for f in analyse_log(lines).findings]


# ---------------------------------------------------------------------------------------------
# Confidence
# ---------------------------------------------------------------------------------------------

def hung(*frames, workqueue=None):
    lines = ["[9.0] INFO: task kworker/u8:1:77 blocked for more than 122 seconds.",
             "[9.0] task:kworker/u8:1    state:D stack:0     pid:77    ppid:2      flags:0x00004000"]
    if workqueue:
        lines.append("[9.0] Workqueue: " + workqueue)
    return lines + ["[9.0] Call Trace:"] + ["[9.1]  %s+0x1/0x2" % f for f in frames]


@pytest.mark.parametrize("lines, kind, confidence, matched", [
    (hung("io_schedule_timeout", "mempool_alloc_noprof", "bio_alloc_bioset"), "hung_task_mempool", "certain",
     ["io_schedule_timeout", "mempool_alloc"]),
    (hung("io_schedule_timeout", "shrink_page_list"), "hung_task_mempool", "likely",
     ["io_schedule_timeout", "shrink_page_list"]),
    (hung("io_schedule_timeout", "pageout"), "hung_task_mempool", "likely", ["io_schedule_timeout", "pageout"]),
    (hung("io_schedule_timeout", "shrink_folio_list"), "hung_task_mempool", "likely",
     ["io_schedule_timeout", "shrink_folio_list"]),
    (hung("schedule", workqueue="netns cleanup_net"), "hung_task_netdev", "likely", []),
    (hung("msleep", "netdev_run_todo", "cleanup_net"), "hung_task_netdev", "certain", ["netdev_run_todo", "cleanup_net"]),
    (hung("mutex_lock", "copy_net_ns"), "hung_task_netdev", "likely", ["copy_net_ns"]),
    (["[9.0] Workqueue: netns cleanup_net", "[9.0] Call Trace:", "[9.1]  netdev_run_todo+0x1/0x2"],
     "hung_task_netdev", "weak", ["netdev_run_todo"]),
])
def test_confidence_and_rule(lines, kind, confidence, matched):
    (finding,) = find_incidents(lines)
    (task,) = finding.facts["tasks"]
    assert (finding.kind, finding.confidence, task["confidence"], task["matched_frames"]) == (
        kind, confidence, confidence, matched)
    assert finding.rule == task["rule"] and finding.to_json()["rule"] == finding.rule
    if confidence == "weak":
        assert finding.rule.startswith("the excerpt starts inside the dump")


def test_no_decisive_frame_and_no_netns_worker_is_no_finding():
    assert find_incidents(hung("schedule", workqueue="events_unbound fsnotify_connector_destroy_workfn")) == []
    assert find_incidents(hung("io_schedule_timeout", "shrink_node")) == []
    assert find_incidents(["[9.0] Workqueue: writeback wb_workfn (flush-8:0)", "[9.1]  schedule+0x1/0x2"]) == []


def test_the_strongest_report_gives_the_finding_its_confidence():
    weak = ["[8.0] Workqueue: netns cleanup_net", "[8.1]  cleanup_net+0x1/0x2", ""]
    (finding,) = find_incidents(weak + hung("msleep", "netdev_run_todo"))
    assert (finding.count, finding.confidence) == (2, "certain")
    assert [t["confidence"] for t in finding.facts["tasks"]] == ["weak", "certain"]


def test_arm_frames_make_a_stack():
    (finding,) = find_incidents([
        "[1.0] INFO: task kworker/u8:0:5 blocked for more than 120 seconds.",
        "[1.0] kworker/u8:0    D    0     5      2 0x00000000",
        "[1.1] [<807762c0>] (io_schedule_timeout) from [<80776938>] (mempool_alloc+0x50/0xa8)",
        "[1.1] [<80776938>] (mempool_alloc) from [<8014ac8c>] (bvec_alloc+0x20/0x40)"])
    assert finding.facts["tasks"][0]["matched_frames"] == ["io_schedule_timeout", "mempool_alloc"]


def test_a_continuation_printed_before_a_header_is_not_its_own():
    """Newest-first export: lines come before their header in the file, after it in time; a line
    printed before the header (an earlier report's) is never given to it, whichever way it comes."""
    header = "[5.000200] SLUB: Unable to allocate memory on node -1, gfp=0xcc0(GFP_KERNEL)"
    cache = "[5.000300]   cache: filp, object size: 256, buffer size: 256, default order: 1, min order: 0"
    older = "[5.000100]   cache: dentry, object size: 192, buffer size: 192, default order: 0, min order: 0"
    for lines in ([cache, header, older], [older, header, cache]):
        (finding,) = find_incidents(lines)
        assert [c["cache"] for c in finding.facts["caches"]] == ["filp"]
        assert finding.facts["orphan_lines"] == 1
    # without stamps, file order decides: a line after its header is its
    (finding,) = find_incidents([header[11:], cache[11:]])
    assert [c["cache"] for c in finding.facts["caches"]] == ["filp"]
