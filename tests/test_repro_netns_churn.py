"""`bpftools repro netns-churn`: names, parsers and validation on exact values anywhere; as root the
real rounds (namespaces, veths, the PMTU route exception at the configured MTU), their cleanup, and
SIGTERM / SIGKILL mid-run."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bpftools.errors import EXIT_BAD_INPUT, EXIT_NOT_ROOT, BadInput, MissingKernelFeature
from bpftools.repro.netns_churn import (NetnsChurnConfig, RoundNames, base36, classify_ip_error, netns_owner,
                                        parse_links, parse_netns_list, parse_route_mtu, round_names, validate)

RUN = ("import sys\nfrom bpftools.cli import cli, main\nfrom bpftools.repro.cli import repro\n"
       "'repro' in cli.commands or cli.add_command(repro)\nsys.exit(main(sys.argv[1:]))\n")


def repro(*args, **kw):
    return subprocess.run([sys.executable, "-c", RUN, "repro", "netns-churn"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=kw.pop("timeout", 120), **kw)


def start(*args):
    return subprocess.Popen([sys.executable, "-c", RUN, "repro", "netns-churn"] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


# --------------------------------------------------------------------------------------------
# Anywhere
# --------------------------------------------------------------------------------------------

def test_names_are_exact_and_short():
    assert base36(12345) == "9ix" and base36(7, 2) == "07" and base36(1295, 2) == "zz"
    assert round_names(12345, 1) == RoundNames(
        "bpft-9ix-01c", "bpft-9ix-01r", "bpft-9ix-01s",
        "bpft-9ix-01cr", "bpft-9ix-01rc", "bpft-9ix-01rs", "bpft-9ix-01sr")
    longest = round_names(4194304, 1295)  # pid_max on 64-bit, the last round
    assert longest.router_server_dev == "bpft-2hwcg-zzrs" and len(longest.router_server_dev) == 15


def test_netns_owner_only_for_our_namespace_names():
    assert netns_owner("bpft-9ix-01c") == 12345
    assert netns_owner("bpft-2hwcg-zzs") == 4194304 == int("2hwcg", 36)
    for other in ("bpft-9ix-01cr", "bpft-9ix-1c", "bpft-foo", "bpft-9ix-01x", "cni-1234", "bpft-9IX-01c"):
        assert netns_owner(other) is None, other


def test_parse_route_mtu():
    with_exception = ("198.18.1.2 via 198.18.0.1 dev bpft-9ix-01cr src 198.18.0.2 uid 0 \n"
                      "    cache expires 599sec mtu 1280 \n")
    assert parse_route_mtu(with_exception) == 1280
    assert parse_route_mtu("198.18.1.2 via 198.18.0.1 dev x src 198.18.0.2 uid 0 \n    cache \n") is None
    assert parse_route_mtu("10.0.0.1 dev eth0 src 10.0.0.2\n    cache expires 12sec mtu lock 552\n") == 552


def test_parse_links_and_netns_list():
    text = ("1: lo: <LOOPBACK> mtu 65536 qdisc noop state DOWN mode DEFAULT group default qlen 1000\\    link/loopback\n"
            "2: bpft-9ix-01rc@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP\\    link/ether\n"
            "3: bpft-9ix-01rs@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1280 qdisc noqueue state UP\\    link/ether\n")
    assert parse_links(text) == {"lo": {"ifindex": 1, "mtu": 65536},
                                 "bpft-9ix-01rc": {"ifindex": 2, "mtu": 1500},
                                 "bpft-9ix-01rs": {"ifindex": 3, "mtu": 1280}}
    assert parse_netns_list("bpft-9ix-01s (id: 2)\nbpft-9ix-01r\n\n") == ["bpft-9ix-01s", "bpft-9ix-01r"]


def test_classify_ip_error():
    veth = classify_ip_error(["ip", "-n", "x", "link", "add", "name", "a", "type", "veth", "peer", "name", "b"],
                             "Error: Unknown device type.\n")
    assert isinstance(veth, MissingKernelFeature)
    assert str(veth) == ("missing kernel feature: veth devices (CONFIG_VETH): ip said 'Error: Unknown device "
                         "type.'; try: modprobe veth")
    netns = classify_ip_error(["ip", "netns", "add", "bpft-9ix-01c"], "mount --make-shared /run/netns failed: "
                              "Invalid argument\n")
    assert isinstance(netns, MissingKernelFeature) and "network namespaces (CONFIG_NET_NS)" in str(netns)
    assert classify_ip_error(["ip", "-n", "x", "addr", "add", "1.2.3.4/24", "dev", "y"],
                             "RTNETLINK answers: File exists\n") is None


@pytest.mark.parametrize("changes, message", [
    ({"count": 0}, "--count must be 1..1295"),
    ({"count": 1296}, "--count must be 1..1295"),
    ({"pmtu": 1428}, "--pmtu must be 552..1427"),
    ({"pmtu": 551}, "--pmtu must be 552..1427"),
    ({"payload": 1473}, "--payload must be 1..1472"),
    ({"payload": 600, "pmtu": 1280}, "--pmtu must be 552..627"),
    ({"teardown": "server-first"}, "--teardown must be one of client-first, router-first"),
    ({"duration": 0}, "--duration must be > 0"),
    ({"settle": 121}, "--settle must be 0..120 s"),
])
def test_validate_rejects(changes, message):
    with pytest.raises(BadInput) as err:
        validate(NetnsChurnConfig(**changes))
    assert str(err.value).startswith(message)


def test_not_root_and_bad_values_in_process(monkeypatch, capsys):
    from bpftools.cli import cli, main
    from bpftools.repro.cli import repro as group
    if "repro" not in cli.commands:
        cli.add_command(group)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["repro", "netns-churn", "--count", "1"]) == EXIT_NOT_ROOT
    assert capsys.readouterr().err.strip().splitlines() == [
        "bpftools: error: bpftools repro netns-churn needs root (it creates cgroups, mounts, loop devices or "
        "network namespaces); run it with sudo"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["repro", "netns-churn", "--pmtu", "1500"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines()[0].startswith("bpftools: error: --pmtu must be 552..1427")


def test_kmsg_delta_and_unregister_waits_of_our_devices_only(tmp_path, monkeypatch):
    from bpftools.repro import kmsg_mark, kmsg_since
    from bpftools.repro import netns_churn
    log = tmp_path / "kmsg"
    log.write_text("6,10,100,-;before\n6,11,200,-;b\n SUBSYSTEM=net\n6,12,300,-;c\n")
    assert kmsg_mark(str(log)) == (12, None)
    assert kmsg_since(10, str(log)) == ["6,11,200,-;b", " SUBSYSTEM=net", "6,12,300,-;c"]
    assert kmsg_mark(str(tmp_path / "none")) == (None, "%s: No such file or directory" % (tmp_path / "none"))
    records = ["0,13,%d,-;unregister_netdevice: waiting for %s to become free. Usage count = %d" % (t, dev, n)
               for t, dev, n in ((10000000, "bpft-9ix-01cr", 2), (20000000, "bpft-9ix-01cr", 3),
                                 (30000000, "eth0", 2))]
    monkeypatch.setattr(netns_churn, "kmsg_since", lambda mark: records)
    waits = netns_churn._unregister_waits(12, None, ["bpft-9ix-01cr", "bpft-9ix-01rc"])
    assert waits["available"] is True
    assert waits["waits"] == [{"device": "bpft-9ix-01cr", "messages": 2, "max_usage_count": 3}]
    assert netns_churn._unregister_waits(None, "/dev/kmsg: denied", [])["error"] == "/dev/kmsg: denied"


def test_help_has_examples():
    r = subprocess.run([sys.executable, "-c", RUN, "repro", "netns-churn", "--help"], stdout=subprocess.PIPE,
                       universal_newlines=True)
    assert r.returncode == 0
    assert "Examples:" in r.stdout and "bpftools repro netns-churn --hold-route" in r.stdout
    assert "--ready-file" not in r.stdout


# --------------------------------------------------------------------------------------------
# Root: real namespaces
# --------------------------------------------------------------------------------------------

def _netns_names():
    out = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, universal_newlines=True).stdout
    return parse_netns_list(out)


def _root_links():
    out = subprocess.run(["ip", "-o", "link", "show"], stdout=subprocess.PIPE, universal_newlines=True).stdout
    return list(parse_links(out))


def _nothing_left(owner):
    stem = "bpft-%s-" % base36(owner)
    assert [n for n in _netns_names() if n.startswith(stem)] == []
    assert [d for d in _root_links() if d.startswith("bpft-")] == []


@pytest.mark.root
@pytest.mark.parametrize("pmtu", [1280, 1400])
def test_three_rounds_show_the_exception_at_the_configured_pmtu(pmtu):
    r = repro("--count", "3", "--pmtu", str(pmtu), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    owner = s["owner_pid"]
    assert (s["rounds_completed"], s["stopped_by"], s["exceptions_seen"]) == (3, "count", 3)
    assert [x["round"] for x in s["rounds"]] == [1, 2, 3]
    for x in s["rounds"]:
        n = round_names(owner, x["round"])
        assert x["namespaces"] == {"client": n.client, "router": n.router, "server": n.server}
        assert x["pmtu_exceptions_seen"] == pmtu
        assert x["route_get"].endswith(" mtu %d" % pmtu) and " dev %s " % n.client_dev in x["route_get"]
        assert (x["first_send"], x["send_after_exception"], x["router_ip_forward"]) == ("ok", "EMSGSIZE", 1)
        assert [(d["name"], d["netns"], d["peer"], d["mtu"]) for d in x["devices"]] == [
            (n.client_dev, n.client, n.router_client_dev, 1500),
            (n.router_client_dev, n.router, n.client_dev, 1500),
            (n.router_server_dev, n.router, n.server_dev, pmtu),
            (n.server_dev, n.server, n.router_server_dev, pmtu)]
        assert all(isinstance(d["ifindex"], int) and d["ifindex"] > 1 for d in x["devices"])
        assert [d["deleted_by"] for d in x["devices"]] == [
            "netns %s deleted" % n.client, "peer of %s (netns %s deleted)" % (n.client_dev, n.client),
            "netns %s deleted" % n.router, "peer of %s (netns %s deleted)" % (n.router_server_dev, n.router)]
        assert x["seconds"] > 0 and x["held_route"] is None
    assert (s["devices_created"], s["devices_deleted"], s["rounds_without_exception"]) == (12, 12, [])
    assert s["cleanup"] == {"errors": [], "removed": []}
    assert s["kernel_log"]["waits"] == []
    _nothing_left(owner)


@pytest.mark.root
def test_router_first_with_held_route():
    r = repro("--count", "2", "--teardown", "router-first", "--hold-route", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    for x in s["rounds"]:
        n = round_names(s["owner_pid"], x["round"])
        assert x["held_route"] == {"ip_mtu_before_delete": 1280, "deleted": n.router_client_dev,
                                   "send_after_delete": "ENETUNREACH", "ip_mtu_after_delete": "ENOTCONN",
                                   "closed": True}
        assert [d["deleted_by"] for d in x["devices"]] == [
            "peer of %s (ip link del)" % n.router_client_dev, "ip link del",
            "netns %s deleted" % n.router, "peer of %s (netns %s deleted)" % (n.router_server_dev, n.router)]
        assert all(d["gone_after_ms"] is not None for d in x["devices"] if d["name"] != n.router_server_dev)
    _nothing_left(s["owner_pid"])


@pytest.mark.root
def test_sigterm_mid_run_cleans_up(tmp_path):
    ready_path = str(tmp_path / "ready.json")
    proc = start("--count", "500", "--duration", "60", "--ready-file", ready_path)
    deadline = time.monotonic() + 30
    while not os.path.exists(ready_path):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    with open(ready_path) as f:
        ready = json.load(f)
    owner = ready["owner_pid"]
    assert ready["namespaces"] == [round_names(owner, 1).client, round_names(owner, 1).router,
                                   round_names(owner, 1).server]
    time.sleep(0.5)
    assert proc.poll() is None and os.path.exists("/proc/%d" % ready["pids"][0])  # mid-run, worker alive
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    m = re.match(r"^bpftools: error: repro netns-churn interrupted by SIGTERM after \d+\.\d s; (\d+) of 500 "
                 r"rounds done; namespaces of the unfinished round deleted: [0-3]$", lines[0])
    assert m and int(m.group(1)) < 500, lines[0]
    assert out.splitlines()[0] == "traffic worker: pid %d" % ready["pids"][0]
    assert not os.path.exists("/proc/%d" % ready["pids"][0])
    _nothing_left(owner)


@pytest.mark.root
def test_next_run_removes_namespaces_of_dead_runs(tmp_path):
    # A run SIGKILLed mid-run (no cleanup at all) ...
    ready_path = str(tmp_path / "ready.json")
    proc = start("--count", "500", "--duration", "60", "--ready-file", ready_path)
    deadline = time.monotonic() + 30
    while not os.path.exists(ready_path):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.3)
    proc.kill()
    proc.communicate(timeout=30)
    time.sleep(0.3)  # an `ip` it had started (own session: not killed with it) finishes
    with open(ready_path) as f:
        killed = json.load(f)["owner_pid"]
    left_by_kill = [n for n in _netns_names() if netns_owner(n) == killed]
    # ... and a dead run that had just created its namespaces (pid of a reaped child: surely dead).
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    synthetic = ["bpft-%s-01%s" % (base36(child.pid), role) for role in "crs"]
    for name in synthetic:
        subprocess.run(["ip", "netns", "add", name], check=True)
    r = repro("--count", "1", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert sorted(s["leftovers_removed"]["removed"]) == sorted("deleted netns %s" % n for n in left_by_kill + synthetic)
    assert s["leftovers_removed"]["errors"] == []
    _nothing_left(killed)
    _nothing_left(child.pid)


@pytest.mark.root
def test_live_runs_namespaces_are_not_touched():
    mine = "bpft-%s-01c" % base36(os.getpid())  # this pytest process is alive: never a leftover
    subprocess.run(["ip", "netns", "add", mine], check=True)
    try:
        r = repro("--count", "1", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["leftovers_removed"] == {"errors": [], "removed": []}
        assert mine in _netns_names()
    finally:
        subprocess.run(["ip", "netns", "del", mine])
