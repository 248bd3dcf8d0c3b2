"""kmemsnoop's plan per kernel: its syscall entry points, its kernel hook and how it records the writer's
cgroup, on kernels described by the kallsyms fixtures (bpftools.kernel.target.Described), and on this
machine."""
import os

import pytest

from bpftools.errors import MissingKernelFeature
from bpftools.kernel.target import Described, Running
from bpftools.tools import kmemsnoop

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "kallsyms")
EL7 = "3.10.0-957.el7.x86_64"
# What the fixtures leave out, as the kernels have it. RHEL 7.6 (3.10): bpf_get_current_task is in
# 1062/1127, not shown for 957 [U] (the fixture README).
EL7_TASK_HELPER = ["ffffffff81300000 T bpf_get_current_task"]
# 6.x x86-64: the __x64_sys_NAME wrappers (4.17+) [V], the two helpers [L] and perf_call_bpf_enter, a
# static function: a `t` symbol on this machine's 6.18 and the lab's 6.12.118, inlined away on the lab's
# 5.10.0-46 and 6.1.0-57 [L].
X64_SYSCALLS = ["ffffffff812%05x T __x64_sys_%s" % (0x100 * i, name)
                for i, name in enumerate(("openat", "open", "write", "close", "dup2", "dup3"))]
X64_BPF = ["ffffffff81300000 t perf_call_bpf_enter", "ffffffff81300100 T bpf_get_current_cgroup_id",
           "ffffffff81300200 T bpf_get_current_task"]
CGROUP_WRITE_OFFSETS = {"OFF_OF_KN": 56, "OFF_KN_NAME": 8}   # any offsets a description holds


def _lines(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read().splitlines()


def _described(fixture, extra=(), config=None, facts=None):
    """The kernel of kallsyms FIXTURE plus the EXTRA lines (lists of them), as ``bpftools plan`` sees it."""
    return Described(fixture[:-len(".kallsyms")], _lines(fixture) + [l for lines in extra for l in lines],
                     config, facts)


def _el7(*extra, config=None, facts=None):
    return _described(EL7 + ".kallsyms", extra, config, facts)


def _6x(fixture, *extra, facts=None):
    return _described(fixture, extra, facts=facts)


def _attaches(plan):
    return [a.describe() for a in plan.attaches]


EL7_ATTACHES = [
    "kretprobe sys_openat -> syscall_return", "kprobe sys_openat -> syscall_openat_entry",
    "kretprobe sys_open -> syscall_return", "kprobe sys_open -> syscall_open_entry",
    "kretprobe sys_write -> syscall_return", "kprobe sys_write -> syscall_write_entry",
    "kprobe sys_close -> syscall_close_entry",
    "kprobe sys_dup2 -> syscall_dup_entry", "kprobe sys_dup3 -> syscall_dup_entry",
    "kretprobe memcg_update_kmem_limit -> kernel_write_return",
    "kprobe memcg_update_kmem_limit -> kernel_write_entry"]
NO_SYSCALL_TRACEPOINTS = ("no perf_call_bpf_enter nor bpf_get_current_cgroup_id in kallsyms: "
                          "BPF on syscalls:* tracepoints needs 4.14+")


def test_rhel7_plans_syscall_kprobes_the_kmem_limit_hook_and_the_css_set_cgroup():
    target = _el7(EL7_TASK_HELPER)
    plan = kmemsnoop.plan(None, "auto", target)
    assert _attaches(plan) == EL7_ATTACHES
    assert plan.probe.flags == ["SYSCALL_KPROBES", "MEMCG_FROM_CSS"]      # no HAVE_CGROUP_ID, no wrapper
    assert plan.probe.params == {"KERNEL_HOOK": 1}
    assert plan.notes == [
        "syscalls: kprobes on sys_openat, sys_open, sys_write, sys_close, sys_dup2, sys_dup3 (%s)"
        % NO_SYSCALL_TRACEPOINTS,
        "kernel hook: kprobe on memcg_update_kmem_limit",
        "writer's memory cgroup: read from its css_set (this kernel's headers)"]
    assert target.assumptions == ["this kernel's own headers assumed installed (bcc needs them)"]
    assert plan.outline().to_json() == {"mode": "kprobe-syscalls + kernel hook", "attaches": EL7_ATTACHES,
                                        "notes": plan.notes, "off": []}
    assert kmemsnoop.plan(7, "kprobe-syscalls", target).probe.params == {"KERNEL_HOOK": 1, "FILTER_TGID": 7}


def _el7_without(words, *extra):
    """The 3.10 kernel plus EXTRA, without the kallsyms lines that contain one of WORDS."""
    lines = _lines(EL7 + ".kallsyms") + [l for lines in extra for l in lines]
    return Described(EL7, [l for l in lines if not any(w in l for w in words)])


def test_rhel7_syscall_functions_named_SyS_only_are_taken():
    plan = kmemsnoop.plan(None, "auto", _el7_without([" sys_"]))
    assert _attaches(plan)[:9] == [a.replace(" sys_", " SyS_") for a in EL7_ATTACHES[:9]]


def test_rhel7_without_bpf_get_current_task_takes_the_writers_cgroup_from_proc():
    plan = kmemsnoop.plan(None, "auto", _el7())
    assert plan.probe.flags == ["SYSCALL_KPROBES"]
    assert plan.notes[2] == ("writer's memory cgroup: from /proc while the writer lives (no "
                             "bpf_get_current_cgroup_id, and its css_set cannot be read: no bpf_get_current_task)")


def test_rhel7_without_its_headers_takes_the_writers_cgroup_from_proc():
    target = _el7(EL7_TASK_HELPER, facts={"headers_match": False})
    plan = kmemsnoop.plan(None, "auto", target)
    assert plan.probe.flags == ["SYSCALL_KPROBES"]
    assert plan.notes[2] == ("writer's memory cgroup: from /proc while the writer lives (no "
                             "bpf_get_current_cgroup_id, and its css_set cannot be read: this kernel's own "
                             "headers are not installed)")
    with pytest.raises(MissingKernelFeature) as err:
        kmemsnoop.plan(None, "auto", target, memcg_from_css=True)
    assert str(err.value) == ("missing kernel feature: the writer's memory cgroup from its css_set (this "
                              "kernel's own headers are not installed)")


def test_rhel7_without_kprobes_is_one_line_naming_the_limit():
    target = _el7(config={"CONFIG_KPROBES": "n"})
    with pytest.raises(MissingKernelFeature) as err:
        kmemsnoop.plan(None, "auto", target)
    assert str(err.value) == ("missing kernel feature: kprobes on the syscall functions (%s): CONFIG_KPROBES=n; "
                              "needs Linux 4.14 or later" % NO_SYSCALL_TRACEPOINTS)
    plan = kmemsnoop.plan(None, "tracepoint", target)     # insisted on: taken, with the doubt said
    assert plan.notes[0] == ("syscalls: syscalls:* tracepoints (--mode tracepoint; BPF on them needs 4.14+: "
                             "no perf_call_bpf_enter nor bpf_get_current_cgroup_id in kallsyms, unless inlined)")


def test_rhel7_with_no_syscall_function_to_probe_says_which_were_looked_for():
    with pytest.raises(MissingKernelFeature) as err:
        kmemsnoop.plan(None, "auto", _el7_without([" sys_", " SyS_"]))
    assert str(err.value) == ("missing kernel feature: kprobes on the syscall functions: none can be probed as "
                              "__x64_sys_* or sys_*/SyS_* (none found)")
    without_close = _el7_without([" sys_close", " SyS_close"])
    with pytest.raises(MissingKernelFeature) as err:
        kmemsnoop.plan(None, "auto", without_close)
    assert str(err.value) == ("missing kernel feature: kprobes on the syscall functions: none can be probed as "
                              "__x64_sys_* or sys_*/SyS_* (sys_*/SyS_*: no close)")


@pytest.mark.parametrize("fixture", ["6.1.0-amd64.kallsyms", "6.12.0-amd64.kallsyms", "6.18.0.kallsyms"])
def test_6x_plans_syscall_tracepoints_and_the_cgroup_id_helper(fixture):
    target = _6x(fixture, X64_SYSCALLS, X64_BPF, facts={"offsets": CGROUP_WRITE_OFFSETS})
    plan = kmemsnoop.plan(None, "auto", target)
    assert _attaches(plan) == ["kretprobe mem_cgroup_write -> kernel_write_return",
                               "kprobe mem_cgroup_write -> kernel_write_entry"]
    # kallsyms shows no syscall tracepoint's data symbol: open and dup2 are taken as absent
    assert plan.probe.flags == ["HAVE_CGROUP_ID"]
    assert plan.probe.params == dict(CGROUP_WRITE_OFFSETS, KERNEL_HOOK=3)
    assert plan.notes == [
        "syscalls: syscalls:* tracepoints",
        "kernel hook: kprobe on mem_cgroup_write, memory.kmem.* files only (names read with BTF offsets)",
        "writer's cgroup: bpf_get_current_cgroup_id (its cgroup2 id)"]
    assert plan.outline().mode == "tracepoint + kernel hook"


@pytest.mark.parametrize("fixture", ["6.1.0-amd64.kallsyms", "6.12.0-amd64.kallsyms"])
def test_6x_kprobe_syscalls_reads_the_arguments_through_the_x64_wrappers(fixture):
    target = _6x(fixture, X64_SYSCALLS, X64_BPF)
    plan = kmemsnoop.plan(None, "kprobe-syscalls", target, memcg_from_css=True)
    assert _attaches(plan) == [a.replace(" sys_", " __x64_sys_") for a in EL7_ATTACHES[:9]]
    assert plan.probe.flags == ["SYSCALL_KPROBES", "SYSCALL_WRAPPER", "HAVE_CGROUP_ID", "MEMCG_FROM_CSS"]
    assert plan.notes[0] == ("syscalls: kprobes on __x64_sys_openat, __x64_sys_open, __x64_sys_write, "
                             "__x64_sys_close, __x64_sys_dup2, __x64_sys_dup3 (--mode kprobe-syscalls)")
    assert plan.notes[1] == ("no kernel hook: mem_cgroup_write needs BTF (kernfs_open_file, kernfs_node) to "
                             "tell kmem files")


def test_rhel7_hooks_memcg_update_kmem_limit_with_no_struct_reads():
    hook, note = kmemsnoop.kernel_hook(_el7())
    assert (hook.function, hook.kind, hook.params) == ("memcg_update_kmem_limit", 1, {})
    assert note == "kernel hook: kprobe on memcg_update_kmem_limit"


def test_without_btf_mem_cgroup_write_is_refused_with_the_reason():
    hook, note = kmemsnoop.kernel_hook(_6x("6.1.0-amd64.kallsyms"))
    assert hook is None
    assert note == "no kernel hook: mem_cgroup_write needs BTF (kernfs_open_file, kernfs_node) to tell kmem files"


def test_a_kernel_with_memcg_update_kmem_max_hooks_it_and_counts_pages():
    target = Described("5.4.0", ["ffffffff81000000 t mem_cgroup_write", "ffffffff81000100 t memcg_update_kmem_max"])
    hook, _ = kmemsnoop.kernel_hook(target)
    assert (hook.function, hook.kind) == ("memcg_update_kmem_max", 2)


def test_no_handler_at_all_says_which_were_looked_for():
    hook, note = kmemsnoop.kernel_hook(Described("6.1.0", ["ffffffff81000000 T vfs_write"]))
    assert hook is None
    assert note == ("no kernel hook: none of memcg_update_kmem_limit, memcg_update_kmem_max, mem_cgroup_write "
                    "can be probed on this kernel")


def test_plan_here_is_tracepoints_only_and_kprobe_modes_are_clear_errors():
    """This machine has no kprobes (lab-notes): auto falls back, --mode kprobe(-syscalls) refuses."""
    if os.path.exists("/sys/kernel/tracing/kprobe_events"):
        pytest.skip("this kernel has kprobes")
    target = Running()
    plan = kmemsnoop.plan(None, "auto", target)
    assert plan.hook is None and "KERNEL_HOOK" not in plan.probe.params and plan.attaches == []
    assert plan.notes[:2] == ["syscalls: syscalls:* tracepoints",
                              "no kernel hook: no kprobe_events in tracefs (CONFIG_KPROBES off): tracepoint "
                              "fallbacks only"]
    with pytest.raises(MissingKernelFeature):
        kmemsnoop.plan(None, "kprobe", target)
    with pytest.raises(MissingKernelFeature) as err:
        kmemsnoop.plan(None, "kprobe-syscalls", target)
    assert str(err.value) == ("missing kernel feature: kprobes on the syscall functions (--mode kprobe-syscalls): "
                              "no kprobe_events in tracefs (CONFIG_KPROBES off): tracepoint fallbacks only")
    assert kmemsnoop.plan(4242, "tracepoint", target).probe.params == {"FILTER_TGID": 4242}


def test_6_1_without_perf_call_bpf_enter_in_kallsyms_still_plans_syscall_tracepoints():
    target = _6x("6.1.0-amd64.kallsyms", X64_SYSCALLS, [l for l in X64_BPF if "perf_call_bpf_enter" not in l])
    assert kmemsnoop.plan(None, "auto", target).syscalls.mode == "tracepoint"
