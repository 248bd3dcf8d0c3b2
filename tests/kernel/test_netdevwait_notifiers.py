"""netdevwait's notifier chain on real kernels: the subscribers each rebroadcast runs, checked against a
notifier of the test's own, and the verdict per device.

The bpftools_notifier module registers bpftools_notifier_event on netdev_chain with a marked priority
and lists, under rtnl_lock, the chain from its own block to the end (%pS): the independent read. Two
devices wait in turn, each the namespace end of a veth pair whose namespace is deleted:
- SLOW_IF: the module holds a reference and its callback drops it in its K-th call for the device
  (a subscriber releasing late): verdict ``slow release``, by bpftools_notifier_event, in round K;
- LEAK_IF: bpftools_devref holds a reference and never drops it while the tool runs: verdict ``leak``.
Expected on 5.10 (the module registers only on the global chain there too), 6.1 and 6.12: the tool's
global chain from the marked block on equals the module's list (symbol, module, priority), blocks
before it have a priority at least as high, the marked callback is called once per round with
NOTIFY_OK, and the count change is attributed exactly.

Runs inside ``python3 lab/run.py SUITE -- tests/kernel/test_netdevwait_notifiers.py``.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from injectors import Injector
from kerneltier import keep_for_host, modprobe
from test_netdevwait_kprobes import Run, _quiet, base_references, delete_netns, veth_into_netns

pytestmark = pytest.mark.kernel

PRIORITY = 2147483000                      # marked: no kernel notifier uses it
K = 5                                      # the module drops its reference in its 5th call
SLOW = ("bpftools-ndws", "ndwsh", "ndwsn")
LEAK = ("bpftools-ndwl", "ndwlh", "ndwln")
MARKED = "bpftools_notifier_event [bpftools_notifier]"
_PS = re.compile(r"^chain (\S+?)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[(\S+)\])? (-?\d+)$")


def module_chain(text: str) -> List[Tuple[str, int]]:
    """The module's list: (``symbol [module]``, priority) from its own block to the end of netdev_chain."""
    out = []
    for line in text.splitlines():
        if line.startswith("chain "):
            m = _PS.match(line)
            assert m, line
            out.append(("%s [%s]" % (m.group(1), m.group(2)) if m.group(2) else m.group(1), int(m.group(3))))
    return out


def chain_of(summary: Dict[str, Any], name: str) -> Dict[str, Any]:
    (chain,) = [c for c in summary["chains"] if c["name"] == name]
    return chain


@pytest.fixture(scope="module")
def waits() -> Iterator[Dict[str, Any]]:
    """One netdevwait run over the slow release, then the leak; its objects, recording and the modules' views."""
    modprobe("veth")
    workdir = tempfile.mkdtemp(prefix="bpftools-ndwn-")
    run = None  # type: Optional[Run]
    try:
        with Injector("bpftools_notifier", priority=PRIORITY) as notifier, Injector("bpftools_devref") as devref:
            slow = veth_into_netns(*SLOW)
            leak = veth_into_netns(*LEAK)
            subprocess.check_call(["ip", "netns", "exec", SLOW[0], "sh", "-c",
                                   "echo hold %s %d > %s" % (SLOW[2], K, notifier.proc)])
            subprocess.check_call(["ip", "netns", "exec", LEAK[0], "sh", "-c",
                                   "echo hold %s > %s" % (LEAK[2], devref.proc)])
            record = os.path.join(workdir, "ndw.jsonl")
            run = Run(workdir, "chain", "--mode", "kprobe", "--record", record, "-d", "300")
            run.wait_ready()
            delete_netns(SLOW[0], slow)
            run.wait_for(lambda o: o.get("name") == SLOW[2] and o.get("update") == "end", 60 + 10 * K)
            delete_netns(LEAK[0], leak)
            leaking = run.wait_for(lambda o: o.get("name") == LEAK[2] and (o.get("rounds") or 0) >= 4, 90)
            run.stop()
            listed = notifier.read()
            devref.command("put")
            report = subprocess.run([sys.executable, "-m", "bpftools.cli", "report", record], cwd="/",
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            keep_for_host(record, "netdevwait-notifiers.jsonl")
            listing = os.path.join(workdir, "listed.txt")
            with open(listing, "w") as f:
                f.write(listed)
            keep_for_host(listing, "bpftools_notifier.txt")
            yield {"run": run, "listed": listed, "leaking": leaking, "report": report}
    finally:
        if run is not None:
            run.stop()
        for netns, host_if, _ in (SLOW, LEAK):
            _quiet("ip", "netns", "del", netns)
            _quiet("ip", "link", "del", host_if)
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_chain_listed_is_the_one_the_kernel_has(waits):
    run = waits["run"]
    assert run.proc.returncode == 0, run.err
    assert "subscribers: the notifier blocks of" in run.err
    expected = module_chain(waits["listed"])
    assert expected[0] == (MARKED, PRIORITY)
    for name in (SLOW[2], LEAK[2]):
        listed = [s for s in chain_of(run.summary(), name)["subscribers"] if s["chain"] == "global"]
        labels = [s["label"] for s in listed]
        at = labels.index(MARKED)
        assert [(s["label"], s["priority"]) for s in listed[at:]] == expected, name
        assert [s["index"] for s in listed] == list(range(len(listed)))
        assert all(s["priority"] >= PRIORITY for s in listed[:at])
        priorities = [s["priority"] for s in listed]
        assert priorities == sorted(priorities, reverse=True)       # the kernel keeps the chain sorted


def test_a_subscriber_that_drops_the_reference_after_k_rounds_is_named(waits):
    run = waits["run"]
    chain = chain_of(run.summary(), SLOW[2])
    assert re.search(r"^dropped %s %d$" % (SLOW[2], K), waits["listed"], re.M), waits["listed"]
    (marked,) = [s for s in chain["subscribers"] if s["label"] == MARKED]
    assert marked["changes"] == [{"round": K, "ts_ns": marked["changes"][0]["ts_ns"],
                                  "before": 1 + base_references(), "after": base_references()}]
    # kallsyms indexed before the tool was ready: the first walk's callbacks are probed in round 1
    assert (chain["first_timed_round"], marked["calls"], marked["returns"]) == (2, K - 1, {"OK": K - 1})
    assert chain["verdict"] == "slow release"
    assert chain["evidence"] == ["end of wait: count %d -> %d, by %s" % (1 + base_references(), base_references(),
                                                                         MARKED)]
    assert (chain["rounds"], chain["ended"]) == (K, True)
    others = [s for s in chain["subscribers"] if s["label"] != MARKED]
    assert all(s["changes"] == [] for s in others)


def test_the_injectors_leak_is_a_leak_and_every_round_called_the_marked_notifier(waits):
    run, leaking = waits["run"], waits["leaking"]
    assert leaking["verdict"] == "leak", leaking
    assert leaking["evidence"][0] == "count %d flat over %d rounds (1-%d)" % (
        1 + base_references(), leaking["rounds"], leaking["rounds"])
    assert leaking["evidence"][1].startswith("no subscriber dropped a reference (")
    chain = chain_of(run.summary(), LEAK[2])
    (marked,) = [s for s in chain["subscribers"] if s["label"] == MARKED]
    assert chain["first_timed_round"] == 1                   # the probes were attached during the slow wait
    assert (marked["calls"], marked["returns"], marked["changes"]) == (chain["rounds"], {"OK": chain["rounds"]}, [])
    assert 0 < marked["total_ns"] and marked["max_ns"] <= marked["total_ns"]
    calls = re.search(r"^calls %s (\d+)$" % LEAK[2], waits["listed"], re.M)
    assert calls and int(calls.group(1)) >= chain["rounds"]


def test_report_shows_the_verdicts_and_the_subscribers(waits):
    report = waits["report"]
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert any(line.startswith("%s: slow release (end of wait: " % SLOW[2]) for line in lines), report.stdout
    assert any(line.startswith("%s: leak (count %d flat" % (LEAK[2], 1 + base_references())) for line in lines)
    assert sum(1 for line in lines if "bpftools_notifier_event" in line and "[bpftools_notifier]" in line) >= 2
