"""``bpftools plan``: every tool's plan on every fixture kernel, made from files, never loaded.

Kernels: the lab's 5.10, 6.1 and 6.12 as ``bpftools plan --save-kernel`` described them inside the VMs
(tests/kernel/test_plan_description.py checks there that the description plans exactly like the node),
this machine's 6.18 (described the same way, no kprobes), and RHEL 7.6's 3.10.0-957 from its kallsyms
and config alone (tests/fixtures/kallsyms/README.md says where each name comes from)."""
import json
import os
import subprocess
import sys

import pytest

from bpftools.kernel.target import Described, Running
from bpftools.planner import plan_all
from bpftools.registry import TOOLS

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(HERE, "fixtures", "kernels")
KALLSYMS = os.path.join(HERE, "fixtures", "kallsyms")
EL7 = "3.10.0-957.el7.x86_64"
LAB = {"5.10": "5.10.0-46-amd64", "6.1": "6.1.0-57-amd64", "6.12": "6.12.118+deb13-amd64"}
HOST = "6.18.44-fc-v1272"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bpftools.cli", "plan"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)


def _plans(*args):
    done = _cli("--json", *args)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    return doc, dict((p["tool"], p) for p in doc["plans"])


def _described(release):
    return _plans("--kernel", os.path.join(KERNELS, release))


def _el7():
    return _plans("--release", EL7, "--kallsyms", os.path.join(KALLSYMS, EL7 + ".kallsyms"),
                  "--config", os.path.join(KALLSYMS, EL7 + ".config"))


def _events(plan, kind="kprobe"):
    return [a.split()[1] for a in plan["attaches"] if a.split()[0] == kind]


@pytest.mark.parametrize("kernel", sorted(LAB))
def test_lab_kernels_plan_every_tool_in_kprobe_mode(kernel):
    doc, plans = _described(LAB[kernel])
    assert (doc["kernel_release"], doc["described"], doc["assumed"]) == (LAB[kernel], True, [])
    assert [p["tool"] for p in doc["plans"]] == list(TOOLS)
    for tool in ("slabfail", "mempoolwait", "writeslow", "iojitter", "netdevwait"):
        assert plans[tool]["mode"] == "kprobe", plans[tool]
    assert plans["refleak"]["mode"] == "strategies: watch, holders"
    assert _events(plans["netdevwait"]) == ["raw_notifier_call_chain", "free_netdev"]
    assert "neigh_create_entry" in " ".join(plans["refleak"]["attaches"])
    assert _events(plans["refleak"], "kretprobe")[:1] == ["register_netdevice"]


def test_each_lab_kernel_gets_its_own_symbols():
    plans = dict((k, _described(r)[1]) for k, r in LAB.items())
    assert _events(plans["5.10"]["slabfail"]) == ["kmem_cache_alloc", "kmem_cache_alloc_trace", "slab_out_of_memory"]
    assert _events(plans["6.1"]["slabfail"]) == ["kmem_cache_alloc", "kmalloc_trace", "slab_out_of_memory"]
    assert _events(plans["6.12"]["slabfail"]) == ["kmem_cache_alloc_noprof", "__kmalloc_cache_noprof",
                                                  "slab_out_of_memory"]
    # before 5.15 a kretprobe on mempool_alloc would hide its callers: no per-call records on 5.10
    assert _events(plans["5.10"]["mempoolwait"], "kretprobe") == []
    assert _events(plans["6.1"]["mempoolwait"], "kretprobe") == ["mempool_alloc"]
    assert _events(plans["6.12"]["mempoolwait"], "kretprobe") == ["mempool_alloc_noprof"]
    assert "kretprobe_trampoline, before 5.15" in plans["5.10"]["writeslow"]["notes"][0]
    assert _events(plans["5.10"]["writeslow"]) == ["do_writepages", "generic_writepages", "iomap_writepages",
                                                   "__writepage"]
    assert _events(plans["6.12"]["writeslow"]) == ["do_writepages", "iomap_writepages"]
    fnhe = dict((k, [e for e in _events(p["refleak"]) if e.startswith("rt_set_nexthop")]) for k, p in plans.items())
    assert fnhe == {"5.10": ["rt_set_nexthop.constprop.0"], "6.1": ["rt_set_nexthop.constprop.0"],
                    "6.12": ["rt_set_nexthop.isra.0"]}


def test_this_machine_without_kprobes_plans_the_tracepoint_fallbacks():
    doc, plans = _described(HOST)
    assert doc["assumed"] == []
    assert [plans[t]["mode"] for t in ("slabfail", "mempoolwait", "writeslow", "iojitter")] == ["tracepoint"] * 4
    assert plans["netdevwait"]["mode"] == "log"
    assert plans["refleak"]["mode"] == "cannot run"
    assert plans["refleak"]["notes"][0].startswith("missing kernel feature: kprobes for refleak's holds and puts")


def test_a_description_saved_here_plans_like_this_machine(tmp_path):
    saved = _cli("--save-kernel", str(tmp_path / "k"))
    assert saved.returncode == 0, saved.stderr
    here, there = _plans()[0], _plans("--kernel", str(tmp_path / "k"))[0]
    assert (here["described"], there["described"]) == (False, True)
    assert here["plans"] == there["plans"] and there["assumed"] == []


def test_el7_plans_from_kallsyms_and_config_with_the_3_10_limits():
    doc, plans = _el7()
    assert doc["kernel_release"] == EL7
    assert "kretprobe maxactive (4.12, 696ced4fb1d7): assumed absent by the release number" in doc["assumed"]
    assert "ctx->addr of perf_event programs (about 4.17): assumed absent by the release number" in doc["assumed"]
    # no kretprobe maxactive: writebacks timed by tracepoint pairs, not kretprobes that miss the slow calls
    assert plans["writeslow"]["mode"] == "tracepoint"
    assert plans["writeslow"]["notes"] == [
        "writeslow: this kernel's kretprobes have no maxactive (before 4.12): writebacks timed by the tracepoint pairs",
        "writeslow: tracepoint mode: writeback_single_inode start/end pairs"]
    assert _events(plans["slabfail"]) == ["kmem_cache_alloc", "kmem_cache_alloc_trace", "slab_out_of_memory"]
    assert "offset from this kernel's headers" in plans["slabfail"]["notes"][-1]
    assert _events(plans["mempoolwait"]) == ["mempool_alloc", "io_schedule_timeout", "finish_wait"]
    assert _events(plans["mempoolwait"], "kretprobe") == []
    # no BTF: netdevwait reads the kernel log; refleak's watch needs ctx->addr
    assert plans["netdevwait"]["mode"] == "log"
    assert "watch: " in " ".join(plans["refleak"]["off"])
    assert "__neigh_create" in _events(plans["refleak"]) and "___neigh_create" not in _events(plans["refleak"])
    assert plans["refleak"]["mode"] == "strategies: holders"
    assert "holders: dst, neigh, in_dev, inet6_dev" in plans["refleak"]["notes"]
    assert "holders: route-exception binding not checked (no fib_nh_exception offsets)" in plans["refleak"]["notes"]


def test_plans_are_made_in_process_from_the_same_target():
    target = Described.from_dir(os.path.join(KERNELS, LAB["6.1"]))
    first = plan_all(target, list(TOOLS))
    assert plan_all(target, list(TOOLS)) == first
    assert "kmem:kmem_cache_alloc" in target.asked_tracepoints
    assert {"dst_alloc", "free_netdev"} <= target.asked_symbols


@pytest.mark.parametrize("args, message", [
    (["nosuchtool"], "no tool named nosuchtool: choose from kmemsnoop, slabfail"),
    (["--kallsyms", "/etc/hostname"], "a kernel described by files needs both --kallsyms FILE and --release RELEASE"),
    (["--kernel", "/nonexistent"], "cannot read /nonexistent/facts.json"),
    (["--kallsyms", "/nonexistent", "--release", "5.10.0"], "cannot read /nonexistent"),
    (["--kallsyms", "/etc/hostname", "--release", "linux"], "kernel release 'linux': expected a number"),
    (["--kernel", KERNELS, "--release", "5.10.0"], "--kernel DIR already holds kallsyms, config and facts"),
])
def test_bad_input_is_one_line_and_exit_3(args, message):
    done = _cli(*args)
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("bpftools: error: " + message) and done.stderr.count("\n") == 1, done.stderr


def test_save_kernel_does_not_write_through_a_planted_link(tmp_path):
    os.mkdir(str(tmp_path / "k"))
    os.symlink(str(tmp_path / "victim"), str(tmp_path / "k" / "facts.json"))
    done = _cli("--save-kernel", str(tmp_path / "k"))
    assert done.returncode == 3 and "is a symbolic link: not writing through it" in done.stderr
    assert not os.path.exists(str(tmp_path / "victim"))


def test_the_running_target_needs_no_argument():
    assert Running().release == os.uname().release


@pytest.mark.parametrize("kernel,stacks", [("5.10", "WB_NO_STACK"), ("6.1", "WB_STACK_AT_EXIT"),
                                           ("6.12", "WB_STACK_AT_EXIT")])
def test_watch_times_the_outermost_writebacks_and_walks_no_stack_at_every_entry(kernel, stacks):
    """Always on: do_writepages (and reclaim's ->writepage) only, and before 5.15, where a writeback's
    stack could only be taken at each call's entry, none; iojitter keeps the nested calls and the stacks."""
    from bpftools.watch.detectors import Settings, io_plan
    from bpftools.iostall import sections
    target = Described.from_dir(os.path.join(KERNELS, LAB[kernel]))
    watch = io_plan(target, Settings())
    assert watch.mode == "kprobe" and stacks in watch.flags
    assert list(watch.slots.values()) == ["do_writepages"]      # ext4_writepage: gone or inlined in 5.10+
    assert "WB_KEEP_STACKS" in watch.flags
    iojitter = sections.plan(target, "auto", None, 10 ** 8, 10 ** 6)
    assert "WB_NO_STACK" not in iojitter.flags and "WB_KEEP_STACKS" not in iojitter.flags


@pytest.mark.parametrize("kernel", sorted(LAB))
def test_watch_takes_the_slab_failures_slub_reports_not_a_run_per_allocation(kernel):
    """Always on where kprobes exist: the slab_out_of_memory kprobe alone (SLAB_REPORTS_ONLY compiles the
    kmem tracepoints out); --every-slab-allocation brings the tracepoints back, as iojitter has them."""
    from bpftools.watch.detectors import Settings, io_plan
    target = Described.from_dir(os.path.join(KERNELS, LAB[kernel]))
    watch = io_plan(target, Settings())
    assert {"WANT_SLAB", "SLAB_REPORTS_ONLY", "WANT_SLUB_OOM", "SLUB_OOM_ARGS"} <= set(watch.flags)
    assert [a.fn_name for a in watch.kprobes if a.event == "slab_out_of_memory"] == ["slub_oom_entry"]
    assert "OFF_CACHE_NAME" in watch.params
    every = io_plan(target, Settings(every_slab_allocation=True))
    assert "SLAB_REPORTS_ONLY" not in every.flags and "WANT_SLUB_OOM" in every.flags


def test_watch_on_el7_and_without_kprobes():
    """3.10 from its kallsyms: the SLUB report kprobe (slab_out_of_memory is a local noinline symbol there);
    this machine (no kprobes): the kmem tracepoints, the only way left."""
    _, el7 = _el7()
    assert "io: kprobe slab_out_of_memory -> slub_oom_entry" in el7["watch"]["attaches"]
    assert any("the failures SLUB reports" in n for n in el7["watch"]["notes"])
    _, host = _described(HOST)
    assert not any("slab_out_of_memory" in a for a in host["watch"]["attaches"])
    assert any("slabfail: tracepoint mode" in n for n in host["watch"]["notes"])
