"""netdevwait on the host: the episode analysis on streams, the kernel-log fallback on real logs, the
kprobe plan per kallsyms fixture, namespace context, and the CLI (help, exit codes, log follower,
recording and report).

The kprobe mode itself runs in the QEMU lab: tests/kernel/test_netdevwait.py.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpftools.kernel import cpus
from bpftools.kernel.capabilities import kprobes_available
from bpftools.kernel.symbols import symbol_address
from bpftools.analyses.netdev_wait import (FREED, MESSAGE, ROUND, EpisodeTracker, Observation, count_meaning,
                                           episodes_from_log, message_observation)
from bpftools.errors import MissingKernelFeature
from bpftools.kernel.symbols import SymbolTable
from bpftools.tools import netdevwait as ndw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KALLSYMS = os.path.join(ROOT, "tests", "fixtures", "kallsyms")
CORPUS = "/work/shared/corpus/dmesg"
BTF_OFFSETS = {"OFF_DEV_NAME": 280, "OFF_DEV_IFINDEX": 224, "OFF_DEV_NET": 264, "OFF_NET_NS": 152,
               "OFF_NS_INUM": 24, "OFF_DEV_REG_STATE": 1312}     # the 6.18 lab kernel's BTF
S = 1000 * 1000 * 1000


def rnd(dev="0xff01", ts=0.0, count=2, **kw):
    return Observation(ROUND, dev, ts_ns=int(ts * S), count=count, **kw)


def freed(dev="0xff01", ts=0.0, count=1):
    return Observation(FREED, dev, ts_ns=int(ts * S), count=count)


def run(tracker, stream):
    return [(u.what, u.episode.rounds, u.episode.count) for u in (tracker.feed(o) for o in stream) if u]


# ---------------------------------------------------------------------------------------------
# The analysis
# ---------------------------------------------------------------------------------------------

def test_a_6x_leak_waits_round_after_round_until_freed():
    t = EpisodeTracker(base=1)
    stream = [rnd(ts=1.0, name="eth0", ifindex=7, netns=4026532281, pid=45, comm="kworker/u4:1"),
              rnd(ts=1.00001),                                  # the same rebroadcast seen twice: one round
              rnd(ts=2.1), rnd(ts=3.2, count=3), rnd(ts=3.3, count=2), freed(ts=4.0)]
    assert run(t, stream) == [("waiting", 1, 2), ("round", 2, 2), ("round", 3, 3), ("count", 3, 2), ("end", 3, 1)]
    (e,) = t.episodes()
    assert (e.name, e.ifindex, e.netns, e.base, e.count, e.max_count, e.leaked, e.rounds, e.ended) == (
        "eth0", 7, 4026532281, 1, 1, 3, 0, 3, True)
    assert (e.first_ns, e.last_ns, e.waited, e.waiter_pid, e.waiter_comm) == (S, 4 * S, 3.0, 45, "kworker/u4:1")


def test_a_5_10_leak_counts_from_zero_and_ends_when_the_count_does():
    t = EpisodeTracker(base=0)
    assert run(t, [rnd(count=1), rnd(ts=1.25, count=1), rnd(ts=2.5, count=0)]) == [
        ("waiting", 1, 1), ("round", 2, 1), ("end", 2, 0)]
    (e,) = t.episodes()
    assert (e.count, e.max_count, e.leaked, e.ended) == (0, 1, 0, True)


def test_the_update_carries_the_leak_while_it_waits():
    t = EpisodeTracker(base=1)
    t.feed(rnd(ts=1.0))
    data = t.feed(rnd(ts=2.5)).to_json()
    assert (data["update"], data["ts_ns"], data["count"], data["leaked"], data["rounds"], data["ended"],
            data["waited"]) == ("round", int(2.5 * S), 2, 1, 2, False, 1.5)


def test_rounds_at_the_base_and_frees_of_other_devices_are_ignored():
    t = EpisodeTracker(base=1)
    assert not t.relevant(rnd(count=1))
    assert not t.relevant(freed())
    assert run(t, [rnd(count=1), freed(ts=1.0)]) == []
    assert t.episodes() == []


def test_a_reused_address_starts_a_new_episode():
    t = EpisodeTracker(base=1)
    run(t, [rnd(name="eth0"), freed(ts=1.2), rnd(ts=5.0, count=4, name="veth9"), freed(ts=6.2)])
    assert [(e.name, e.max_count, e.first_ns, e.ended) for e in t.episodes()] == [
        ("eth0", 2, 0, True), ("veth9", 4, 5 * S, True)]


def test_episodes_are_listed_in_start_order_ended_or_not():
    t = EpisodeTracker(base=1)
    run(t, [rnd("0xb", ts=0.5, count=3, name="b"), rnd("0xa", ts=1.0, name="a"), freed("0xb", ts=1.3)])
    assert [(e.name, e.ended) for e in t.episodes()] == [("b", True), ("a", False)]


OBSERVATIONS = st.lists(st.tuples(st.sampled_from([ROUND, FREED]), st.sampled_from(["0xa", "0xb"]),
                                  st.integers(0, 3), st.integers(0, 900)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(OBSERVATIONS, st.sampled_from([0, 1]))
def test_replaying_only_the_relevant_observations_gives_the_same_episodes(items, base):
    """A recording keeps only what ``relevant`` accepts; replaying it must give what the live run gave."""
    stream, ts = [], 0
    for kind, dev, count, step in items:
        ts += step * 1000 * 1000
        stream.append(Observation(kind, dev, ts_ns=ts, count=count))
    live, kept = EpisodeTracker(base), []
    live_updates = []
    for obs in stream:
        if live.relevant(obs):
            kept.append(obs)
        update = live.feed(obs)
        if update:
            live_updates.append(update)
    replay = EpisodeTracker(base)
    assert [u for u in (replay.feed(o) for o in kept) if u] == live_updates
    assert replay.episodes() == live.episodes()


@pytest.mark.parametrize("release, base", [("3.10.0-1127.el7.x86_64", 0), ("5.10.0-46-amd64", 0),
                                           ("5.13.0", 1), ("6.1.0-56-amd64", 1), ("6.12.118+deb13-amd64", 1)])
def test_count_meaning_is_kernel_logs(release, base):
    meaning = count_meaning(release)
    assert meaning["base_references"] == base
    assert meaning["basis"] == "kernel release %s (running kernel)" % release


def test_kernel_log_records_become_messages():
    obs = message_observation("0,1234,31000000,-;unregister_netdevice: waiting for veth7 to become free. "
                              "Usage count = 2", "6.1.0")
    assert (obs.kind, obs.dev, obs.name, obs.count, obs.ts_ns, obs.stamp) == (
        MESSAGE, "veth7", "veth7", 2, 31 * S, "31000000")
    obs = message_observation("[  42.500000] unregister_netdevice: waiting for lo to become free. Usage count = 1",
                              "5.10.0")
    assert (obs.dev, obs.count, obs.ts_ns) == ("lo", 1, int(42.5 * S))
    assert message_observation("6,1,2,-;veth1: renamed from eth0", "6.1.0") is None
    assert message_observation("unregister_netdevice: waiting for", "6.1.0") is None


def test_messages_open_and_continue_an_episode_that_never_ends():
    t = EpisodeTracker(base=0)
    lines = ["0,1,10000000,-;unregister_netdevice: waiting for eth0 to become free. Usage count = 1",
             "0,2,20000000,-;unregister_netdevice: waiting for eth0 to become free. Usage count = 1"]
    assert run(t, [message_observation(line, "5.10.0") for line in lines]) == [("waiting", None, 1), ("message", None, 1)]
    (e,) = t.episodes()
    assert (e.messages, e.rounds, e.ended, e.leaked, e.waited, e.first_stamp, e.last_stamp) == (
        2, None, None, 1, 10.0, "10000000", "20000000")


def _corpus_expectations():
    """(file, devices, distinct messages, max count) for each corpus log with "waiting for" messages;
    the distinct count is the line count unless EXPECTED.json's notes name fewer distinct events."""
    path = os.path.join(CORPUS, "EXPECTED.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        files = json.load(f)["files"]
    out = []
    for name, facts in sorted(files.items()):
        distinct = re.search(r"(\d+) distinct events", facts.get("notes") or "")
        out.append((name, facts.get("devices") or [], int(distinct.group(1)) if distinct else
                    facts.get("netdev_wait_messages", 0), facts.get("max_usage_count")))
    return out


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="no corpus at %s" % CORPUS)
@pytest.mark.parametrize("name, devices, distinct, max_count", _corpus_expectations())
def test_real_logs_give_the_expected_episodes(name, devices, distinct, max_count):
    with open(os.path.join(CORPUS, name), encoding="utf-8", errors="replace") as f:
        episodes, meaning = episodes_from_log(f.read().splitlines())
    assert [e.name for e in episodes] == devices
    assert sum(e.messages for e in episodes) == distinct
    if episodes:
        assert max(e.max_count for e in episodes) == max_count
        assert all(e.ended is None and e.rounds is None for e in episodes)
    else:
        assert meaning is None


def test_a_saved_log_with_the_release_given_counts_leaks():
    lines = ["[100.000000] unregister_netdevice: waiting for eth0 to become free. Usage count = 2",
             "[110.000000] unregister_netdevice: waiting for eth0 to become free. Usage count = 2",
             "[110.000000] unregister_netdevice: waiting for eth0 to become free. Usage count = 2"]
    (e,), meaning = episodes_from_log(lines, "6.1.0-56-amd64")
    assert (e.name, e.count, e.base, e.leaked, e.messages, e.waited, e.first_stamp, e.last_stamp) == (
        "eth0", 2, 1, 1, 2, 10.0, "[100.000000]", "[110.000000]")
    (e,), meaning = episodes_from_log(lines, "5.10.0-46-amd64")
    assert (e.base, e.leaked, meaning["base_references"]) == (0, 2, 0)


# ---------------------------------------------------------------------------------------------
# The kprobe plan per kernel (kallsyms fixtures)
# ---------------------------------------------------------------------------------------------

def fixture(name):
    with open(os.path.join(KALLSYMS, name + ".kallsyms")) as f:
        return f.read()


# Synthetic lines: the fixtures list the text symbols other tools need, not these.
HOOKS = ("ffffffff81900000 T raw_notifier_call_chain\nffffffff81900400 T free_netdev\n"
         "ffffffff82a00000 D __per_cpu_offset\nffffffff82b00000 b netdev_chain\n")
PCPU = dict(BTF_OFFSETS, OFF_DEV_PCPU_REFCNT=1288)
FIXTURES = ["3.10.0-957.el7.x86_64", "6.1.0-amd64", "6.12.0-amd64", "6.18.0", "6.18.44-fc-live"]


@pytest.mark.parametrize("name", FIXTURES)
def test_kprobe_plan_per_kernel(name):
    text = fixture(name) + HOOKS
    plan = ndw.make_plan("auto", SymbolTable.from_kallsyms(text), text.splitlines(), PCPU, True, 4)
    assert plan.mode == "kprobe"
    assert [(a.event, a.fn_name, a.ret) for a in plan.kprobes] == [
        ("raw_notifier_call_chain", "on_notify", False), ("free_netdev", "on_free", False)]
    assert plan.params == dict(PCPU, PER_CPU_OFFSET=0xffffffff82a00000, NCPUS=4, NETDEV_CHAIN=0xffffffff82b00000)
    assert plan.hooks == {"rounds": "raw_notifier_call_chain", "end": "free_netdev"}
    assert plan.notes == ["kprobe mode: rounds from raw_notifier_call_chain(netdev_chain, NETDEV_UNREGISTER) for "
                          "unregistered devices, the end from free_netdev; count summed from the per-cpu "
                          "counters of 4 CPUs"]
    assert "-DPER_CPU_OFFSET=%d" % 0xffffffff82a00000 in plan.probe().cflags()


@pytest.mark.parametrize("name", FIXTURES)
def test_the_fixtures_alone_lack_the_hooks(name):
    text = fixture(name)
    plan = ndw.make_plan("auto", SymbolTable.from_kallsyms(text), text.splitlines(), BTF_OFFSETS, True, 4)
    assert plan.mode == "log"
    assert plan.notes == ["kernel log mode (no BTF for the device's reference count (net_device.pcpu_refcnt or "
                          "dev_refcnt)): " + ndw.LOG_NOTE]
    plan = ndw.make_plan("auto", SymbolTable.from_kallsyms(text), text.splitlines(), PCPU, True, 4)
    assert plan.notes[0].startswith("kernel log mode (__per_cpu_offset is not in /proc/kallsyms")
    text += "ffffffff82a00000 D __per_cpu_offset\n"
    plan = ndw.make_plan("auto", SymbolTable.from_kallsyms(text), text.splitlines(), PCPU, True, 4)
    assert plan.notes[0].startswith("kernel log mode (raw_notifier_call_chain cannot be probed: "
                                    "raw_notifier_call_chain is not a text symbol on this kernel.)")


def test_refcount_t_kernels_and_kernels_without_data_symbols():
    text = fixture("6.12.0-amd64") + HOOKS.replace("b netdev_chain", "t not_netdev_chain")
    table = SymbolTable.from_kallsyms(text)
    plan = ndw.make_plan("kprobe", table, text.splitlines(), dict(BTF_OFFSETS, OFF_DEV_REFCNT=1300), True, 4)
    assert plan.params == dict(BTF_OFFSETS, OFF_DEV_REFCNT=1300)
    assert plan.notes == ["kprobe mode: rounds from raw_notifier_call_chain(any chain, NETDEV_UNREGISTER) for "
                          "unregistered devices, the end from free_netdev; count summed from dev_refcnt"]


def test_plan_falls_back_to_the_kernel_log():
    text = fixture("6.1.0-amd64") + HOOKS
    table = SymbolTable.from_kallsyms(text)
    plan = ndw.make_plan("auto", table, text.splitlines(), PCPU, False, 4)
    assert (plan.mode, plan.kprobes, plan.params) == ("log", [], {})
    assert plan.notes == ["kernel log mode (no kprobes): " + ndw.LOG_NOTE]
    no_btf = dict((k, v) for k, v in PCPU.items() if k != "OFF_DEV_REG_STATE")
    plan = ndw.make_plan("auto", table, text.splitlines(), no_btf, True, 4)
    assert plan.notes[0].startswith("kernel log mode (no BTF for struct net_device (net_device.reg_state)): ")
    hidden = re.sub(r"^[0-9a-f]{16}", "0" * 16, text, flags=re.M)
    plan = ndw.make_plan("auto", SymbolTable.from_kallsyms(hidden), hidden.splitlines(), PCPU, True, 4)
    assert plan.notes[0].startswith("kernel log mode (__per_cpu_offset is not in /proc/kallsyms")
    blacklisted = SymbolTable.from_kallsyms(text, blacklist=["0xffffffff81900400-0xffffffff81900800\tfree_netdev"])
    plan = ndw.make_plan("auto", blacklisted, text.splitlines(), PCPU, True, 4)
    assert plan.notes[0].startswith("kernel log mode (free_netdev cannot be probed: free_netdev is on the kprobes "
                                    "blacklist")
    with pytest.raises(MissingKernelFeature) as info:
        ndw.make_plan("kprobe", table, text.splitlines(), PCPU, False, 4)
    assert (info.value.feature, info.value.fallback) == ("kprobe mode of netdevwait (no kprobes)", "--mode log")
    assert ndw.make_plan("log", table, text.splitlines(), PCPU, True, 4).notes == [
        "kernel log mode (--mode log): " + ndw.LOG_NOTE]


def test_symbol_addresses_and_possible_cpus():
    lines = ["ffffffff81000000 T a", "ffffffff82000100 d data", "ffffffffc0000000 t mod\t[m]", "0000000000000000 T z"]
    assert [symbol_address(lines, n) for n in ("a", "data", "mod", "z", "missing")] == [
        0xffffffff81000000, 0xffffffff82000100, None, None, None]
    assert [cpus.slots(t) for t in ("0\n", "0-1\n", "0-3,8-11\n")] == [1, 2, 12]


# ---------------------------------------------------------------------------------------------
# Who used the namespace
# ---------------------------------------------------------------------------------------------

CID = "c0ffee" * 10 + "abcd"
POD_CGROUP = ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_abcd.slice/"
              "cri-containerd-%s.scope" % CID)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _netns_link(root, pid, inode):
    os.makedirs(os.path.join(root, "proc", pid, "ns"), exist_ok=True)
    os.symlink("net:[%d]" % inode, os.path.join(root, "proc", pid, "ns", "net"))


def test_netns_users_remember_the_last_users_and_the_veth_peer(tmp_path):
    root = str(tmp_path)
    _netns_link(root, "self", 4026531992)
    _netns_link(root, "42", 4026532300)
    _write(os.path.join(root, "proc/42/comm"), "pause\n")
    _write(os.path.join(root, "proc/42/cgroup"), "0::%s\n" % POD_CGROUP)
    _netns_link(root, "43", 4026531992)              # a host process: not a namespace user
    for where, name, ifindex, iflink in (("", "lo", 1, 1), ("", "vethA", 9, 3), ("", "vethB", 10, 3),
                                         ("proc/42/root/", "eth0", 3, 9)):   # vethB: another pod's eth0 is 3 too
        _write(os.path.join(root, where + "sys/class/net", name, "ifindex"), "%d\n" % ifindex)
        _write(os.path.join(root, where + "sys/class/net", name, "iflink"), "%d\n" % iflink)
    users = ndw.NetnsUsers(root)
    users.refresh()
    os.unlink(os.path.join(root, "proc/42/ns/net"))  # the namespace's last process is gone
    users.refresh()
    assert users.context(4026532300, 3) == {
        "netns": 4026532300, "host_netns": False, "netns_names": [],
        "processes": [{"pid": 42, "comm": "pause", "cgroup": POD_CGROUP}],
        "containers": [{"runtime": "containerd", "container_id": CID, "pod_uid": "1234-abcd", "qos": "besteffort"}],
        "veth_peers": [{"name": "vethA", "ifindex": 9}]}
    assert users.context(4026531992, 9)["veth_peers"] == [] and users.context(4026531992, 9)["host_netns"]
    assert users.context(None, 3) is None


@pytest.mark.root
def test_netns_users_of_a_real_named_namespace():
    ns, host_if, ns_if = "bpftools-ndwt", "ndwth", "ndwtn"
    subprocess.call(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    subprocess.check_call(["ip", "netns", "add", ns])
    sleeper = None
    try:
        subprocess.check_call(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns])
        sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
        inode = os.stat("/run/netns/%s" % ns).st_ino
        ifindex = int(subprocess.check_output(["ip", "netns", "exec", ns, "cat", "/sys/class/net/%s/ifindex" % ns_if]))
        with open("/sys/class/net/%s/ifindex" % host_if) as f:
            host_ifindex = int(f.read())
        users = ndw.NetnsUsers()
        deadline = time.monotonic() + 10
        while True:
            users.refresh()
            ctx = users.context(inode, ifindex)
            if any(p["pid"] == sleeper.pid for p in ctx["processes"]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert ctx["netns_names"] == [ns] and ctx["host_netns"] is False
        assert {"pid": sleeper.pid, "comm": "sleep", "cgroup": ndw.memory_cgroup_of_pid(sleeper.pid)} \
            in ctx["processes"]
        assert {"name": host_if, "ifindex": host_ifindex} in ctx["veth_peers"]
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        subprocess.call(["ip", "netns", "del", ns])
        subprocess.call(["ip", "link", "del", host_if], stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------

def kmsg(seq, seconds, dev, count):
    return "0,%d,%d,-;unregister_netdevice: waiting for %s to become free. Usage count = %d\n" % (
        seq, seconds * 1000000, dev, count)


def test_help(bpftools_cli):
    r = bpftools_cli("netdevwait", "--help")
    assert r.code == 0
    for option in ("--dev PATTERN", "-d, --duration SECONDS", "--mode [auto|kprobe|log]", "--log FILE",
                   "--release RELEASE", "--json", "--record FILE"):
        assert option in r.out
    assert "--kmsg" not in r.out and "--ready-file" not in r.out and "--ebpf" not in r.out


@pytest.mark.parametrize("args, code, message", [
    (["--log", "/nonexistent/kern.log"], 3, "cannot read log /nonexistent/kern.log"),
    (["--log", "/"], 3, "cannot read log /"),
    (["--log", "-", "--record", "/nonexistent/dir/r.jsonl"], 3, "cannot write recording"),
    (["-d", "0"], 2, "must be > 0"),
    (["--mode", "fentry"], 2, "Invalid value for '--mode'"),
    (["--log", "-", "--mode", "kprobe"], 2, "cannot be combined with --mode kprobe"),
    (["--release", "6.1.0"], 2, "--release goes with --log"),
    (["--mode", "log", "--kmsg", "/nonexistent/kmsg", "-d", "1"], 3, "cannot read /nonexistent/kmsg"),
])
def test_bad_input_exit_codes(bpftools_cli, args, code, message):
    r = bpftools_cli("netdevwait", *args, input="")
    assert r.code == code, r.err
    assert message in r.err


def test_report_of_something_else_is_bad_input(bpftools_cli, tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("not json\n")
    assert bpftools_cli("report", str(path)).code == 3


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="no corpus at %s" % CORPUS)
def test_saved_log_summary_json(bpftools_cli):
    path = os.path.join(CORPUS, "B14_ovpn-dco_51.log")
    r = bpftools_cli("netdevwait", "--log", path, "--json")
    assert r.code == 0, r.err
    (summary,) = [json.loads(line) for line in r.out.splitlines()]
    (e,) = summary["episodes"]
    assert (summary["type"], summary["mode"], e["name"], e["messages"], e["count"], e["base"], e["leaked"],
            e["ended"], e["waited"]) == ("netdev_wait_summary", "log file", "tun3", 4, 8, None, None, None, 30.240455)
    r = bpftools_cli("netdevwait", "--log", path, "--json", "--release", "6.1.0-56-amd64")
    (e,) = json.loads(r.out)["episodes"]
    assert (e["base"], e["leaked"]) == (1, 7)
    r = bpftools_cli("netdevwait", "--log", path, "--dev", "eth*")
    assert r.code == 0 and "0 device wait(s) in unregister" in r.out


def test_saved_log_from_stdin(bpftools_cli):
    r = bpftools_cli("netdevwait", "--log", "-", "--release", "5.10.0-46-amd64",
                     input="[5.000000] unregister_netdevice: waiting for veth3 to become free. Usage count = 1\n")
    assert r.code == 0, r.err
    assert r.out.splitlines()[2].split()[:8] == ["veth3", "-", "-", "1", "0", "1", "1msg", "0.0s"]


def test_kernel_log_mode_follows_records_records_and_reports_the_same(bpftools_cli, tmp_path):
    log = tmp_path / "kmsg"
    log.write_text("6,1,5000000,-;veth1: renamed from eth0\n" + kmsg(2, 20, "eth0", 2) + kmsg(3, 30, "eth0", 2)
                   + kmsg(4, 31, "lo", 3) + kmsg(5, 40, "eth0", 3))
    rec = str(tmp_path / "r.jsonl")
    r = bpftools_cli("netdevwait", "--mode", "log", "--kmsg", str(log), "-d", "0.3", "--record", rec)
    assert r.code == 0, r.err
    assert "kernel log mode (--mode log)" in r.err
    lines = r.out.splitlines()
    assert lines[0] == ndw.HEADER
    base = count_meaning(os.uname().release)["base_references"]
    rows = [line.split()[:8] for line in lines[1:5]]
    assert rows == [["20.000000", "waiting", "eth0", "-", "-", "2", str(2 - base), "1msg"],
                    ["30.000000", "message", "eth0", "-", "-", "2", str(2 - base), "2msg"],
                    ["31.000000", "waiting", "lo", "-", "-", "3", str(3 - base), "1msg"],
                    ["40.000000", "message", "eth0", "-", "-", "3", str(3 - base), "3msg"]]
    assert lines[5] == "netdevwait summary (kernel log mode): 2 device wait(s) in unregister"
    assert [line.split()[:9] for line in lines[7:9]] == [
        ["eth0", "-", "-", "3", str(base), str(3 - base), "3msg", "20.0s", "no-end"],
        ["lo", "-", "-", "3", str(base), str(3 - base), "1msg", "0.0s", "no-end"]]
    report = bpftools_cli("report", rec)
    assert report.code == 0, report.err
    shown = report.out.splitlines()
    start = shown.index(ndw.HEADER)
    assert shown[start:start + len(lines)] == lines


def test_kernel_log_mode_dev_filter_and_json(bpftools_cli, tmp_path):
    log = tmp_path / "kmsg"
    log.write_text(kmsg(1, 20, "eth0", 2) + kmsg(2, 21, "veth9", 2))
    r = bpftools_cli("netdevwait", "--mode", "log", "--kmsg", str(log), "-d", "0.3", "--json", "--dev", "veth*")
    assert r.code == 0, r.err
    objs = [json.loads(line) for line in r.out.splitlines()]
    assert [(o["type"], o.get("update"), o.get("name")) for o in objs] == [
        ("netdev_wait", "waiting", "veth9"), ("netdev_wait_summary", None, None)]
    assert [e["name"] for e in objs[1]["episodes"]] == ["veth9"]
    assert objs[0]["context"] is None and objs[0]["ts_ns"] == 21 * S


def test_kernel_log_mode_follows_new_records_until_sigterm(tmp_path):
    log, ready = tmp_path / "kmsg", tmp_path / "ready"
    log.write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "bpftools.cli", "netdevwait", "--mode", "log", "--json",
                             "--kmsg", str(log), "--ready-file", str(ready)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate(timeout=5)
        with open(str(log), "a") as f:
            f.write(kmsg(7, 50, "veth5", 2))
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    objs = [json.loads(line) for line in out.splitlines()]
    assert [(o["type"], o.get("update"), o.get("name")) for o in objs] == [
        ("netdev_wait", "waiting", "veth5"), ("netdev_wait_summary", None, None)]


@pytest.mark.root
def test_live_kernel_log_of_this_machine(bpftools_cli):
    """This machine has no kprobes: auto mode reads /dev/kmsg (no leak is made here)."""
    r = bpftools_cli("netdevwait", "-d", "1", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out.splitlines()[-1])
    meaning = count_meaning(os.uname().release)
    if kprobes_available():
        assert summary["mode"] == "kprobe"
    else:
        assert summary["mode"] == "log"
        assert "kernel log mode (no kprobes)" in r.err
    assert (summary["type"], summary["meaning"]) == ("netdev_wait_summary", meaning)


@pytest.mark.root
def test_ebpf_prints_the_plan(bpftools_cli):
    r = bpftools_cli("netdevwait", "--ebpf")
    assert r.code == 0, r.err
    if kprobes_available():
        assert r.out.startswith("// mode: kprobe\n") and "int on_refcnt_read(struct pt_regs *ctx)" in r.out
    else:
        assert r.out.splitlines()[:2] == ["// mode: log", "// kernel log mode (no kprobes): " + ndw.LOG_NOTE]


def test_decode_turns_the_raw_record_into_an_observation():
    from types import SimpleNamespace
    raw = SimpleNamespace(type=1, dev=0xffff888003a1c000, ts_ns=12 * S, count=2, name=b"ndwn\0\0\0\0", ifindex=2,
                          netns=4026532281, tgid=45, tid=45, comm=b"kworker/u4:1\0\0\0")
    assert ndw.decode(raw) == Observation(ROUND, "0xffff888003a1c000", ts_ns=12 * S, count=2, name="ndwn",
                                          ifindex=2, netns=4026532281, pid=45, comm="kworker/u4:1")
    raw.type, raw.netns = 2, 0
    assert (ndw.decode(raw).kind, ndw.decode(raw).netns) == (FREED, None)
