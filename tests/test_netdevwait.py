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
from bpftools.analyses.netdev_chain import (GLOBAL, NETNS, OUTSIDE, Call, ChainTracker, Link, folded_time,
                                            notify_name)
from bpftools.analyses.netdev_wait import (FREED, MESSAGE, ROUND, EpisodeTracker, Observation, count_meaning,
                                           episodes_from_log, message_observation)
from bpftools.errors import MissingKernelFeature
from bpftools.kernel.symbols import SymbolTable
from bpftools.recording import make_header, read_recording
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
CHAIN_OFFSETS = {"OFF_NB_CALL": 0, "OFF_NB_NEXT": 8, "OFF_NB_PRIORITY": 16, "OFF_NET_NETDEV_CHAIN": 424}  # 6.18 BTF
NO_CHAIN_NOTE = ("subscribers: not shown, no BTF for notifier_block.notifier_call, notifier_block.next, "
                 "notifier_block.priority")
FIXTURES = ["3.10.0-957.el7.x86_64", "6.1.0-amd64", "6.12.0-amd64", "6.18.0", "6.18.44-fc-live"]


@pytest.mark.parametrize("name", FIXTURES)
def test_kprobe_plan_per_kernel(name):
    text = fixture(name) + HOOKS
    plan = ndw.make_plan("auto", SymbolTable.from_kallsyms(text), text.splitlines(), dict(PCPU, **CHAIN_OFFSETS),
                         True, 4)
    assert plan.mode == "kprobe"
    assert [(a.event, a.fn_name, a.ret) for a in plan.kprobes] == [
        ("raw_notifier_call_chain", "on_notify", False), ("free_netdev", "on_free", False)]
    assert plan.params == dict(PCPU, PER_CPU_OFFSET=0xffffffff82a00000, NCPUS=4, NETDEV_CHAIN=0xffffffff82b00000,
                               **CHAIN_OFFSETS)
    assert plan.hooks == {"rounds": "raw_notifier_call_chain", "end": "free_netdev",
                          "subscribers": "on_sub_entry/on_sub_return"}
    assert plan.notes == ["kprobe mode: rounds from raw_notifier_call_chain(netdev_chain, NETDEV_UNREGISTER) for "
                          "unregistered devices, the end from free_netdev; count summed from the per-cpu "
                          "counters of 4 CPUs",
                          "subscribers: the notifier blocks of the namespace's chain and netdev_chain walked at "
                          "each round (at most 64 a chain), each callback found kprobed (entry and return) from "
                          "then on: calls, time, return value, count before and after"]
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
                          "unregistered devices, the end from free_netdev; count summed from dev_refcnt", NO_CHAIN_NOTE]
    pre_5_7 = dict((k, v) for k, v in CHAIN_OFFSETS.items() if k != "OFF_NET_NETDEV_CHAIN")
    plan = ndw.make_plan("kprobe", table, text.splitlines(), dict(BTF_OFFSETS, OFF_DEV_REFCNT=1300, **pre_5_7),
                         True, 4)
    assert plan.params == dict(BTF_OFFSETS, OFF_DEV_REFCNT=1300, **pre_5_7)
    assert plan.notes[1].startswith("subscribers: the notifier blocks of netdev_chain walked at each round")
    plan = ndw.make_plan("kprobe", table, text.splitlines(), dict(BTF_OFFSETS, OFF_DEV_REFCNT=1300, **CHAIN_OFFSETS),
                         True, 4, subscribers=False)
    assert (plan.params, plan.notes[1]) == (dict(BTF_OFFSETS, OFF_DEV_REFCNT=1300),
                                            "subscribers: off (--no-subscribers)")


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
        "containers": [{"runtime": "containerd", "container_id": CID, "pod_uid": "1234-abcd", "qos": "besteffort",
                        "namespace": None, "pod": None, "container": None}],
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


# ---------------------------------------------------------------------------------------------
# The notifier chain: subscribers, their calls, the verdict (analyses.netdev_chain)
# ---------------------------------------------------------------------------------------------

DEV = "0xffff888003a1c000"
CHAIN = [("0xb1", "0xc1", 2147483630, "bpftools_notifier_event", "bpftools_notifier"),
         ("0xb2", "0xc2", 0, "rtnetlink_event", None),
         ("0xb3", "0xc3", -10, "dev_ifsioc_event", None)]


def walk(ts, dev=DEV, chain=CHAIN, which=GLOBAL):
    return [Link(dev, int(ts * S), which, i, nb, call, prio, sym, mod) for i, (nb, call, prio, sym, mod) in enumerate(chain)]


def calls(ts, before=2, after=None, dev=DEV, ret=1, dur=1000):
    """One round of calls of CHAIN, 1 ms apart; the first subscriber changes the count to AFTER."""
    out = []
    for i, (nb, call, prio, sym, mod) in enumerate(CHAIN):
        a = after if (after is not None and i == 0) else before
        out.append(Call(dev, int(ts * S) + i * 1000000, dur * (i + 1), nb, call, prio, ret, before, a, sym, mod))
        before = a
    return out


def rounds(tracker, counts, calls_from=1):
    """Rounds 1.. at 1.0, 2.0, ... s with COUNTS; each rebroadcast's walk, and calls from round CALLS_FROM."""
    for n, count in enumerate(counts, 1):
        tracker.round(DEV, "ndwn", n, n * S, count)
        for link in walk(n + 0.0001):
            tracker.link(link)
        if n >= calls_from:
            for c in calls(n + 0.001, before=count):
                tracker.call(c)


def test_a_flat_count_over_three_rounds_with_no_subscriber_putting_is_a_leak():
    t = ChainTracker()
    rounds(t, [2, 2], calls_from=2)
    (d,) = t.devices()
    assert d.verdict() == ("undecided", ["2 round(s) seen; a leak needs the count flat over 3"])
    t = ChainTracker()
    rounds(t, [2, 2, 2], calls_from=2)
    (d,) = t.devices()
    assert d.verdict() == ("leak", ["count 2 flat over 3 rounds (1-3)",
                                    "no subscriber dropped a reference (6 calls of 3 subscribers timed from round 2)"])
    data = d.to_json()
    assert [(s["index"], s["chain"], s["priority"], s["label"], s["calls"], s["total_ns"], s["max_ns"], s["returns"])
            for s in data["subscribers"]] == [
        (0, GLOBAL, 2147483630, "bpftools_notifier_event [bpftools_notifier]", 2, 2000, 1000, {"OK": 2}),
        (1, GLOBAL, 0, "rtnetlink_event", 2, 4000, 2000, {"OK": 2}),
        (2, GLOBAL, -10, "dev_ifsioc_event", 2, 6000, 3000, {"OK": 2})]


def test_a_subscriber_that_drops_the_reference_is_named_with_its_round():
    t = ChainTracker()
    rounds(t, [2, 2, 2, 2])
    for c in calls(4.2, before=2, after=1):          # round 4's interval: the first subscriber puts
        t.call(c)
    t.end(DEV, 5 * S, 1)
    (d,) = t.devices()
    assert d.verdict() == ("slow release", ["end of wait: count 2 -> 1, by bpftools_notifier_event [bpftools_notifier]"])
    first = d.ordered()[0]
    assert [(c["round"], c["before"], c["after"]) for c in first.changes] == [(4, 2, 1)]
    assert d.changes == [{"round": None, "ts_ns": 5 * S, "before": 2, "after": 1,
                          "by": ["bpftools_notifier_event [bpftools_notifier]"]}]
    assert (d.ended, d.end_count) == (True, 1)


def test_a_count_that_moves_down_between_rounds_without_a_subscriber_is_released_outside_the_chain():
    t = ChainTracker()
    rounds(t, [3, 3, 2])
    t.end(DEV, 4 * S, 1)
    (d,) = t.devices()
    assert d.verdict() == ("slow release", ["round 3: count 3 -> 2, by " + OUTSIDE,
                                            "end of wait: count 2 -> 1, by " + OUTSIDE])


def test_global_chain_calls_of_a_round_not_seen_are_not_counted():
    """The end of a lab run: on_notify is detached before the callbacks' probes, which still time a round."""
    t = ChainTracker()
    rounds(t, [2, 2, 2])
    for c in calls(4.001):
        t.call(c)
    (d,) = t.devices()
    assert [s.calls for s in d.ordered()] == [3, 3, 3]


def test_calls_belong_to_the_round_by_time_and_walks_keep_the_order_as_it_is_now():
    t = ChainTracker()
    t.round(DEV, "ndwn", 1, 1 * S, 2)
    t.round(DEV, "ndwn", 2, 2 * S, 2)
    (d,) = t.devices()
    assert [d.round_at(int(x * S)) for x in (0.5, 1.2, 2.0, 2.4, 2.6)] == [1, 1, 2, 2, 3]
    for link in walk(1) + walk(2, chain=CHAIN[1:]):   # the marked block went away between the walks
        t.link(link)
    t.link(Link(DEV, 2 * S, NETNS, 0, "0xb9", "0xc9", 5, "ns_event", "mod9"))
    t.link(Link(DEV, 2 * S, GLOBAL, 64, "0x0", "0x0", 0, truncated=True))
    assert [(s.chain, s.index, s.label) for s in d.ordered()] == [
        (NETNS, 0, "ns_event [mod9]"), (GLOBAL, 0, "rtnetlink_event"), (GLOBAL, 1, "dev_ifsioc_event"),
        (GLOBAL, None, "bpftools_notifier_event [bpftools_notifier]")]
    assert d.truncated


@pytest.mark.parametrize("ret, name", [(0, "DONE"), (1, "OK"), (0x8001, "STOP"), (0x8002, "BAD"),
                                       (0x8000 | (1 + 22), "BAD(errno 22)"), (7, "0x7")])
def test_notifier_return_values_in_words(ret, name):
    assert notify_name(ret) == name


def test_folded_time_of_subscribers_per_device():
    t = ChainTracker()
    rounds(t, [2, 2, 2])
    assert folded_time([d.to_json() for d in t.devices()]) == {
        "ndwn;global chain;bpftools_notifier_event [bpftools_notifier]": 3,
        "ndwn;global chain;rtnetlink_event": 6, "ndwn;global chain;dev_ifsioc_event": 9}


def test_decode_turns_chain_links_and_calls_into_records():
    from types import SimpleNamespace
    raw = SimpleNamespace(type=3, dev=0xffff888003a1c000, ts_ns=12 * S, count=2, name=b"ndwn\0", ifindex=2,
                          netns=1, tgid=45, tid=45, comm=b"kworker\0", nb=0xffffffffc0a01000, call=0xffffffffc09ff000,
                          dur_ns=0, priority=-5, ret=0, count_after=0, index=3, chain=1, flags=0)
    assert ndw.decode(raw) == Link(DEV, 12 * S, NETNS, 3, "0xffffffffc0a01000", "0xffffffffc09ff000", -5)
    raw.flags, raw.chain = 1, 0
    assert (ndw.decode(raw).truncated, ndw.decode(raw).chain) == (True, GLOBAL)
    raw.type, raw.dur_ns, raw.ret, raw.count_after = 4, 2500, 0x8002, 1
    assert ndw.decode(raw) == Call(DEV, 12 * S, 2500, "0xffffffffc0a01000", "0xffffffffc09ff000", -5, 0x8002, 2, 1)


KALLSYMS_MOD = ("ffffffff81a00000 T rtnetlink_event\nffffffff81a00100 t dev_ifsioc_event\n"
                "ffffffff81a00200 t dup_event\nffffffffc09ff000 t bpftools_notifier_event\t[bpftools_notifier]\n"
                "ffffffffc0aff000 t dup_event\t[other]\n")


def test_subscribers_are_named_from_kallsyms_and_probed_once_each():
    reads, attached, now = [], [], [100.0]

    def kallsyms():
        reads.append(now[0])
        return KALLSYMS_MOD.splitlines()

    subs = ndw.Subscribers(lambda probe: attached.append((probe.event, probe.fn_name, probe.ret)) or None,
                           kallsyms, lambda: now[0])
    link = subs.named(Link(DEV, 0, GLOBAL, 0, "0xb1", "0xffffffffc09ff000", 7))
    assert (link.symbol, link.module) == ("bpftools_notifier_event", "bpftools_notifier")
    subs.named(Link(DEV, 0, GLOBAL, 1, "0xb2", "0xffffffff81a00000", 0))
    subs.named(Link(DEV, 1, GLOBAL, 1, "0xb2", "0xffffffff81a00000", 0))         # the next walk: no new probe
    assert attached == [("bpftools_notifier_event", "on_sub_return", True),
                        ("bpftools_notifier_event", "on_sub_entry", False),
                        ("rtnetlink_event", "on_sub_return", True), ("rtnetlink_event", "on_sub_entry", False)]
    subs.named(Link(DEV, 0, GLOBAL, 2, "0xb3", "0xffffffffc0aff000", 0))
    assert subs.attached["dup_event [other]"] == "2 text symbols are named dup_event"
    unknown = subs.named(Link(DEV, 0, GLOBAL, 3, "0xb4", "0xffffffffc0bbb000", 0))   # within 5 s: not read again
    assert (unknown.symbol, reads) == (None, [100.0])
    now[0] = 105.0
    subs.named(Call(DEV, 0, 1, "0xb4", "0xffffffffc0bbb000", 0, 0, 2, 2))
    assert reads == [100.0, 105.0] and subs.attached["0xffffffffc0bbb000"] == "not in /proc/kallsyms"
    assert len(attached) == 4


def test_subscribers_given_the_plans_kallsyms_name_the_first_walk_without_reading_it_again():
    reads, attached = [], []
    subs = ndw.Subscribers(lambda probe: attached.append(probe.event) or None, lambda: reads.append(1) or [],
                           lambda: 100.0, lines=KALLSYMS_MOD.splitlines())
    link = subs.named(Link(DEV, 0, GLOBAL, 0, "0xb1", "0xffffffffc09ff000", 7))
    assert (link.symbol, link.module, reads) == ("bpftools_notifier_event", "bpftools_notifier", [])
    assert attached == ["bpftools_notifier_event", "bpftools_notifier_event"]



def chain_recording(path, put_in_round=None):
    """A kprobe-mode recording of one device over 4 rounds, its chain and calls; the first subscriber
    drops the leaked reference in round PUT_IN_ROUND (the wait then ends), or it is freed after a put."""
    events = [{"type": "mode", "mode": "kprobe", "hooks": {}, "params": {}, "notes": ["kprobe mode: test"],
               "meaning": count_meaning("6.1.0-amd64")}]
    for n in range(1, 5):
        events.append(dict(rnd(DEV, n, 2, name="ndwn", ifindex=2, netns=7, pid=45, comm="kworker").to_json(),
                           type=ndw.OBS))
        events += [dict(link.to_json(), type=ndw.LINK) for link in walk(n + 0.0001)]
        events += [dict(c.to_json(), type=ndw.CALL) for c in calls(n + 0.001, after=1 if n == put_in_round else None)]
        if n == put_in_round:
            break
    events.append(dict(freed(DEV, 5 if put_in_round is None else put_in_round + 0.01, 1).to_json(), type=ndw.OBS))
    header = make_header("netdevwait", ["netdevwait"], {"kernel_release": "6.1.0-amd64"})
    with open(path, "w") as f:
        for obj in [header] + events:
            f.write(json.dumps(obj) + "\n")
    return header, events


def test_report_shows_each_devices_chain_and_verdict(bpftools_cli, tmp_path):
    path = str(tmp_path / "ndw.jsonl")
    chain_recording(path, put_in_round=3)
    r = bpftools_cli("report", path)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    start = lines.index("ndwn: slow release (round 3: count 2 -> 1, by bpftools_notifier_event [bpftools_notifier])"
                        .replace("round 3", "end of wait"))
    assert lines[start + 1] == ndw.CHAIN_HEADER
    assert lines[start + 2].split() == ["0", "global", "2147483630", "bpftools_notifier_event", "[bpftools_notifier]",
                                        "3", "3.0", "1.0", "OK", "3;", "round", "3", "2->1"]
    assert lines[start + 4].split() == ["2", "global", "-10", "dev_ifsioc_event", "3", "9.0", "3.0", "OK", "3"]


def test_html_report_has_the_subscriber_table_and_flame_graph(tmp_path):
    header, events = chain_recording(str(tmp_path / "ndw.jsonl"))
    report = ndw.incident_report(header, events, "2026-12-07T00:00:00Z")
    (verdict,) = report.verdicts
    assert verdict["summary"] == "1 device wait(s); ndwn: slow release"
    assert verdict["evidence"] == ["ndwn: end of wait: count 2 -> 1, by " + OUTSIDE]
    table = report.tables[1]
    assert [row[5] for row in table.rows] == ["bpftools_notifier_event [bpftools_notifier]", "rtnetlink_event",
                                              "dev_ifsioc_event"]
    assert [row[6] for row in table.rows] == [4, 4, 4]
    assert report.flame_graphs[0].folded == {"ndwn;global chain;bpftools_notifier_event [bpftools_notifier]": 4,
                                             "ndwn;global chain;rtnetlink_event": 8,
                                             "ndwn;global chain;dev_ifsioc_event": 12}


def test_records_read_late_from_another_cpu_are_handled_in_time_order():
    """The 5.10 lab run: rounds 4 and 5 of a wait came from one CPU's buffer after its end from the other's."""
    seen, now = [], [0]
    ordered = ndw.InOrder(seen.append, window_ns=3 * S, clock=lambda: now[0])
    arrival = [rnd(ts=1), rnd(ts=2), rnd(ts=3), freed(ts=5.5, count=0), rnd(ts=4), rnd(ts=5)]
    now[0] = int(6 * S)
    for obs in arrival:
        ordered.push(obs)
    assert [o.ts_ns for o in seen] == [1 * S, 2 * S, 3 * S]         # older than 3 s: handed on
    ordered.flush()
    assert [o.ts_ns for o in seen] == [1 * S, 2 * S, 3 * S, 4 * S, 5 * S, int(5.5 * S)]
    t = EpisodeTracker(base=0)
    assert run(t, seen) == [("waiting", 1, 2), ("round", 2, 2), ("round", 3, 2), ("round", 4, 2), ("round", 5, 2),
                            ("end", 5, 0)]


def test_a_round_read_after_the_end_of_its_wait_does_not_open_another():
    t = EpisodeTracker(base=0)
    assert run(t, [rnd(ts=1, count=1), rnd(ts=2, count=1), freed(ts=3.5, count=0), rnd(ts=3, count=1)]) == [
        ("waiting", 1, 1), ("round", 2, 1), ("end", 2, 0)]
    assert run(t, [rnd(ts=9, count=1)]) == [("waiting", 1, 1)]        # a reused address, later: a new wait
    assert len(t.episodes()) == 2


def test_a_round_read_late_from_another_cpu_is_counted_in_time_order():
    """Recorded in the lab (5.10, test_netdevwait_notifiers.py, the host loaded): the waiter moved between
    CPUs and its third round's record came after the fourth's. The five rounds are counted, numbered in
    time order, and the module's drop in its fifth call is in round 5 (it was round 4 of 4 before)."""
    path = os.path.join(ROOT, "tests", "fixtures", "netdevwait", "lab-5.10-rounds-read-late.jsonl")
    events = read_recording(path).events
    rounds = [e["ts_ns"] for e in events if e.get("kind") == "round" and e.get("name") == "ndwsn"]
    assert rounds != sorted(rounds)                     # read late, as recorded
    summary = [obj for kind, obj in ndw.replayed(events) if kind == "end"][0]
    (chain,) = [c for c in summary["chains"] if c["name"] == "ndwsn"]
    (marked,) = [s for s in chain["subscribers"] if s["symbol"] == "bpftools_notifier_event"]
    assert marked["changes"] == [{"round": 5, "ts_ns": 1307308425670, "before": 1, "after": 0}]
    assert (chain["rounds"], chain["first_timed_round"], marked["calls"]) == (5, 2, 4)
    assert chain["verdict"] == "slow release" and chain["ended"]


def test_a_global_chain_call_read_before_its_rounds_record_waits_for_it():
    """The waiter moved between CPUs after its third rebroadcast's record: the drop in that rebroadcast's global
    chain is read first, then the round. It is counted in round 3 when the round comes, and named as the cause of
    round 4's lower count. So is a slow subscriber's call 0.7 s into round 1, read before round 2. A call whose
    round never comes (the probes went one by one at the end) is not counted."""
    ms = 1000 ** 2
    t = ChainTracker()
    t.link(Link("0xd", 0, GLOBAL, 0, "0xb", "0xc", 5, "drop_it", "mod"))
    t.link(Link("0xd", 0, GLOBAL, 1, "0xe", "0xf", 0, "slow_one", None))
    t.round("0xd", "veth0", 1, S, 3)
    t.call(Call("0xd", S + 700 * ms, 300, "0xe", "0xf", 0, 1, 3, 2, "slow_one", None))
    t.round("0xd", "veth0", 2, 2 * S, 2)
    t.call(Call("0xd", 3 * S + 10 * ms, 300, "0xb", "0xc", 5, 1, 2, 1, "drop_it", "mod"))
    t.round("0xd", "veth0", 3, 3 * S, 2)
    t.round("0xd", "veth0", 4, 4 * S, 1)
    t.call(Call("0xd", 5 * S + 10 * ms, 300, "0xb", "0xc", 5, 1, 1, 1, "drop_it", "mod"))   # no round 5
    t.end("0xd", 5 * S + 20 * ms, 1)
    (d,) = t.devices()
    drop_it, slow_one = d.subscribers["0xb"], d.subscribers["0xe"]
    assert [(c["round"], c["before"], c["after"]) for c in drop_it.changes] == [(3, 2, 1)] and drop_it.calls == 1
    assert [(c["round"], c["before"], c["after"]) for c in slow_one.changes] == [(1, 3, 2)] and slow_one.calls == 1
    assert [(c["round"], c["before"], c["after"], c["by"]) for c in d.changes] == [
        (2, 3, 2, ["slow_one"]), (4, 2, 1, ["drop_it [mod]"])]
    assert (d.first_timed_round, d.verdict()[0]) == (1, "slow release")


def test_a_late_round_shifts_what_came_after_it_and_keeps_a_namespace_calls_round():
    """A namespace-chain call runs before its rebroadcast's global-chain record: numbered then with the round
    still to come (3), it stays one past the round before it when an earlier round is read late (4, not 3)."""
    t = ChainTracker()
    t.round("0xd", "veth0", 1, 0, 2)
    t.round("0xd", "veth0", 2, 3 * S, 2)
    t.call(Call("0xd", 4 * S + 200 * 1000 ** 2, 300, "0xb", "0xc", 5, 1, 2, 1, "drop_it", "mod"))
    t.round("0xd", "veth0", 3, 4 * S + 300 * 1000 ** 2, 1)
    t.round("0xd", "veth0", 4, S + 500 * 1000 ** 2, 2)        # read late: between the first two
    d = t.open("0xd")
    assert [(n, ts) for n, ts, _ in d.rounds] == [(1, 0), (2, S + 500 * 1000 ** 2), (3, 3 * S),
                                                  (4, 4 * S + 300 * 1000 ** 2)]
    (sub,) = d.subscribers.values()
    assert (sub.chain, [c["round"] for c in sub.changes], d.first_timed_round) == (NETNS, [4], 4)
    assert [(c["round"], c["before"], c["after"], c["by"]) for c in d.changes] == [(4, 2, 1, ["drop_it [mod]"])]
