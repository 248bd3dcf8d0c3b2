"""Smoke versions of the benchmarks in bench/: each runs for real, small, and its figures are checked for
being produced, consistent and within stated bounds (the README's table comes from the full runs)."""
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)
import flamegraph_scale  # noqa: E402
import run_all  # noqa: E402

RSS_CEILING_MIB = 400        # kmemsnoop under a flood (measured ~150 MiB: Python + bcc + LLVM)
REPORT_RSS_CEILING_MIB = 300  # `bpftools report` of a few thousand events
MAPS_CEILING_MIB = 8         # kmemsnoop's kernel maps, all preallocated


def bench(script, *args):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script)] + list(args) + ["--json"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.root
def test_tool_overhead_ratio_of_one_interleaved_run():
    out = bench("tool_overhead.py", "--only", "kmemsnoop", "--rounds", "2", "--calls", "3000")
    row, = out["rows"]
    assert (row["tool"], row["args"], row["workload"], row["calls"]) == ("kmemsnoop", ["--mode", "tracepoint"],
                                                                         "syscalls", 3000)
    assert len(row["runs_without"]) == len(row["runs_with"]) == 2
    assert row["ratio"] == pytest.approx(row["median_s_with"] / row["median_s_without"])
    assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
    assert 0.2 < row["ratio"] < 20
    assert row["calls_per_s_without"] == pytest.approx(3000 / row["median_s_without"])
    assert 0 < row["median_attach_s"] < 300
    assert out["table"][0][0] == "overhead: kmemsnoop --mode tracepoint on `syscalls` loop (time with/without)"
    assert out["table"][0][1] == "%.2fx" % row["ratio"]


@pytest.mark.root
def test_startup_ours_attaches_and_bcc_is_timed_or_its_failure_shown():
    out = bench("startup.py", "--only", "kmemsnoop", "--only", "bcc opensnoop", "--rounds", "1")
    ours, bcc = out["rows"]
    assert (ours["tool"], ours["kind"], bcc["tool"], bcc["kind"]) == (
        "bpftools kmemsnoop --mode tracepoint", "ours", "bcc opensnoop", "bcc")
    assert len(ours["runs"]) == 1 and 0 < ours["median_s"] < 300 and ours["failure"] == ""
    if bcc["runs"]:
        assert 0 < bcc["median_s"] < 300 and bcc["failure"] == ""
    else:   # e.g. this machine: opensnoop's fentry load is refused
        assert bcc["failure"].startswith("failed after ")
        assert out["table"][1][1:] == ["does not attach here", bcc["failure"]]


@pytest.mark.root
def test_iojitter_overhead_control_arm_runs_no_bpf_program():
    r = bench("iojitter_overhead.py", "--tool", "none", "--repeats", "2", "--seconds", "1", "--settle", "0")
    assert (r["tool"], len(r["runs_with"]), len(r["runs_without"])) == ("none", 2, 2)
    assert r["events_recorded"] == [0, 0] and r["bpf_runs_per_s"] == [] and r["bpf_by_program"] == {}
    assert r["per_round_ratios"] == pytest.approx([w / wo for w, wo in zip(r["runs_with"], r["runs_without"])],
                                                  rel=1e-2)


@pytest.mark.root
def test_iojitter_overhead_interleaves_and_counts_what_the_tool_recorded():
    r = bench("iojitter_overhead.py", "--tool", "writeslow", "--mode", "tracepoint", "--repeats", "2", "--seconds", "1",
              "--settle", "0.5")
    assert (r["tool"], r["mode"], r["repeats"], r["seconds"], r["chunk"], r["settle"]) == (
        "writeslow", "tracepoint", 2, 1.0, 1 << 20, 0.5)
    assert r["per_round_ratios"] == pytest.approx([w / wo for w, wo in zip(r["runs_with"], r["runs_without"])],
                                                  rel=1e-2)   # the runs are rounded to 0.01 MiB/s
    assert len(r["runs_without"]) == len(r["runs_with"]) == len(r["events_recorded"]) == 2
    assert r["ratio"] == pytest.approx(r["mib_s_with"] / r["mib_s_without"], rel=1e-2)
    assert r["slowdown_pct"] == pytest.approx((1 - r["ratio"]) * 100, abs=0.01)
    assert all(n >= 0 for n in r["events_recorded"])
    # writeslow's programs ran while the writer fsynced (kernel.bpf_stats_enabled on for the run)
    assert len(r["bpf_runs_per_s"]) == len(r["bpf_cpu_pct"]) == len(r["bpf_ns_per_run"]) == 2
    assert all(n > 0 for n in r["bpf_runs_per_s"]) and all(ns > 0 for ns in r["bpf_ns_per_run"])
    # per program, by the names the kernel keeps (bcc drops "tracepoint__"; 15 characters): the ext4 pair
    # (or writeback_single_inode's), and together every run counted above
    assert set(r["bpf_by_program"]) <= {"ext4__ext4_writ", "writeback__writ"} and r["bpf_by_program"]
    assert sum(p["runs_per_s"] for p in r["bpf_by_program"].values()) == pytest.approx(
        sum(r["bpf_runs_per_s"]) / 2, abs=2)
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        assert f.read().strip() == "0"                     # put back
    low, high = r["ratio_ci95"]
    assert low <= r["geomean_per_round_ratio"] <= high and r["target_shown"] == (low >= 0.95)


def test_ratio_interval_is_the_geometric_mean_with_a_bootstrap_interval_that_narrows_with_rounds():
    import benchlib
    assert benchlib.ratio_interval([0.5, 2.0])[0] == pytest.approx(1.0)
    mean, low, high = benchlib.ratio_interval([0.98, 1.0] * 3)
    assert mean == pytest.approx((0.98 ** 3) ** (1 / 6.0) * 1.0, rel=1e-9)
    assert 0.98 <= low < mean < high <= 1.0
    assert benchlib.ratio_interval([0.98, 1.0] * 3) == (mean, low, high)          # seeded: reproducible
    wide = benchlib.ratio_interval([0.7, 1.1, 0.9, 1.05])
    narrow = benchlib.ratio_interval([0.7, 1.1, 0.9, 1.05] * 8)
    assert narrow[2] - narrow[1] < (wide[2] - wide[1]) / 2
    assert benchlib.ratio_interval([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)


@pytest.mark.root
def test_netns_overhead_without_kprobes_exits_5_with_one_line():
    from bpftools.kernel.capabilities import check_kprobes
    from bpftools.kernel.tracefs import find_tracefs, tracing_ready
    tracing_ready()
    if check_kprobes(find_tracefs()).ok:
        pytest.skip("this machine has kprobes: the bench would run for real")
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "netns_overhead.py"), "--json"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (5, "")
    line, = proc.stderr.splitlines()
    assert line.startswith("netns_overhead: no kprobes here (no kprobe_events in tracefs")
    assert line.endswith("; run it in the lab: python3 lab/run.py bookworm --exec 'python3 bench/netns_overhead.py'")


@pytest.mark.root
def test_netns_overhead_log_arm_churns_and_reports_what_netdevwait_saw():
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) missing")
    out = bench("netns_overhead.py", "--only", "netdevwait-log", "--rounds", "2", "--count", "2")
    row, = out["rows"]
    assert (out["count"], out["rounds"], row["tool"], row["argv"]) == (
        2, 2, "netdevwait-log", ["netdevwait", "--mode", "log", "--dev", "bpft-*"])
    assert len(row["runs_without"]) == len(row["runs_with"]) == len(row["attach_s"]) == 2
    assert row["exceptions_without"] == row["exceptions_with"] == [2, 2]   # every churn round made its fnhe
    assert row["saw"] == [{"bpf_programs": 0, "devices_created": 8, "mode": "log", "updates": 0, "waits": 0}] * 2
    assert row["ratio"] == pytest.approx(row["median_s_with"] / row["median_s_without"])
    assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
    assert row["s_per_round_without"] == pytest.approx(row["median_s_without"] / 2)
    assert out["table"][0][0] == "overhead: netdevwait --mode log --dev 'bpft-*' on `repro netns-churn` (time with/without)"
    assert out["table"][0][1] == "%.2fx" % row["ratio"]
    assert out["table"][0][2].endswith("log mode, 0 BPF programs, 0 waits over 16 devices churned")


def test_analysis_throughput_counts_every_episode_and_leak():
    out = bench("analysis_throughput.py", "--events", "3000", "--threads", "4", "--devices", "5")
    r, ref = out["result"], out["refleak"]
    assert r["events"] >= 3000
    assert r["episodes"] == r["episodes_written"] > 0          # correlate finds each slow writeback written
    assert 0 < r["explained"] <= r["episodes"]
    for step in ("read", "correlate", "report"):
        assert r["%s_events_per_s" % step] == pytest.approx(r["events"] / r["%s_s" % step])
    assert r["correlate_alone_events_per_s"] == pytest.approx(r["events"] / (r["correlate_s"] - r["read_s"]))
    assert r["repeats"] == 3 and len(r["correlate_alone_each_events_per_s"]) == 3      # the least times count
    assert "correlate alone" in out["table"][1][2] and "(each run: " in out["table"][1][2]
    assert 0 < r["correlate_own_s"] < r["correlate_s"]          # the reading between the chunks not timed
    assert r["correlate_own_events_per_s"] == pytest.approx(r["events"] / r["correlate_own_s"])
    assert "its own time in the stream" in out["table"][1][2]
    assert 0 < r["report_peak_rss_mib"] < REPORT_RSS_CEILING_MIB
    assert 0 < r["report_json_peak_rss_mib"] < REPORT_RSS_CEILING_MIB and r["report_json_s"] > 0   # orjson hidden
    assert 0 < r["gz_bytes_per_event"] < r["bytes_per_event"]   # compressed, each line flushed
    if ref is not None:                                         # analyses/refbalance.py exists
        assert ref["unbalanced"] == ref["leaked_written"] == 1  # one hold in 1000 never put
        assert ref["analyze_events_per_s"] == pytest.approx(ref["events"] / ref["analyze_s"])
        assert len(ref["analyze_alone_each_events_per_s"]) == 3
        assert 0 < ref["report_peak_rss_mib"] < REPORT_RSS_CEILING_MIB


def test_flamegraph_scale_figures():
    r = bench("flamegraph_scale.py", "--stacks", "1500")["result"]
    assert r["stacks"] == 1500
    assert r["svg_stacks_per_s"] == pytest.approx(1500 / r["svg_s"])
    assert 1 <= r["frames_drawn"] <= 50000 and r["frames_pruned"] >= 0
    assert r["svg_mib"] > 0 and r["speedscope_mib"] > 0


def test_flamegraph_stacks_are_distinct_deterministic_and_render():
    from bpftools.flamegraph import render_svg
    stacks = flamegraph_scale.distinct_stacks(300)
    assert len(stacks) == 300 and stacks == flamegraph_scale.distinct_stacks(300)
    assert all(8 <= len(key.split(";")) <= 40 and weight > 0 for key, weight in stacks.items())
    root = ET.fromstring(render_svg(stacks, "t", unit="ns").encode("utf-8"))
    assert int(root.get("data-total")) == sum(stacks.values())


@pytest.mark.root
def test_memory_flood_rss_bounded_maps_bounded_losses_counted_and_shown():
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool missing (apt-get install bpftool)")
    r = bench("memory_flood.py", "--seconds", "1", "--hold", "4200")["result"]
    assert r["kmem_fds_max_entries"] == 4096
    assert r["kmem_fds_entries_while_held"] == 4096            # full, never past its bound
    assert r["map_full"] == 4200 - 4096
    assert r["lost_trailer"] > 0 and r["lost_stderr"] == r["lost_trailer"]
    # What is neither recorded nor counted is at most what the rings held when the flood ended (the
    # kernel reports those losses only with a next record): 64 pages per CPU of ~400-byte events.
    assert r["unaccounted"] == 0          # failed perf_submit() calls are counted by the program
    assert 0 < r["rss_attached_mib"] <= r["rss_peak_flood_mib"] < RSS_CEILING_MIB
    assert 0 < r["maps_memlock_mib"] < MAPS_CEILING_MIB
    assert sorted(m["name"] for m in r["maps"]) == ["events", "kmem_fds", "lost", "pending_by_tid", "scratch",
                                                         "unsent"]


def test_run_all_names_benches_that_exist():
    for script, _, quick in run_all.BENCHES:
        assert os.path.exists(os.path.join(BENCH, script)), script
        assert "--json" not in quick
