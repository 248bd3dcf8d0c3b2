"""kmemsnoop's choice of kernel hook per kernel (kallsyms fixtures), and its plan on this machine."""
import os

import pytest

from bpftools.errors import MissingKernelFeature
from bpftools.kernel.symbols import SymbolTable
from bpftools.tools import kmemsnoop

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "kallsyms")
HOST_BTF = "/sys/kernel/btf/vmlinux"


def _table(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return SymbolTable.from_kallsyms(f.read())


def test_rhel7_hooks_memcg_update_kmem_limit_with_no_struct_reads():
    hook, note = kmemsnoop.kernel_hook(_table("3.10.0-957.el7.x86_64.kallsyms"), btf_path="/nonexistent")
    assert (hook.function, hook.kind, hook.params) == ("memcg_update_kmem_limit", 1, {})
    assert note == "kernel hook: kprobe on memcg_update_kmem_limit"


@pytest.mark.skipif(not os.path.exists(HOST_BTF), reason="needs this kernel's BTF")
@pytest.mark.parametrize("fixture", ["6.1.0-amd64.kallsyms", "6.12.0-amd64.kallsyms", "6.18.0.kallsyms"])
def test_6x_hooks_mem_cgroup_write_filtered_by_kernfs_name(fixture):
    hook, _ = kmemsnoop.kernel_hook(_table(fixture), btf_path=HOST_BTF)
    assert (hook.function, hook.kind) == ("mem_cgroup_write", 3)
    # kernfs_open_file.kn and kernfs_node.name on this kernel's BTF (both pointers, 8-byte aligned)
    assert sorted(hook.params) == ["OFF_KN_NAME", "OFF_OF_KN"]
    assert all(off % 8 == 0 for off in hook.params.values())


def test_without_btf_mem_cgroup_write_is_refused_with_the_reason():
    hook, note = kmemsnoop.kernel_hook(_table("6.1.0-amd64.kallsyms"), btf_path="/nonexistent")
    assert hook is None
    assert note == "no kernel hook: mem_cgroup_write needs BTF (kernfs_open_file, kernfs_node) to tell kmem files"


def test_a_kernel_with_memcg_update_kmem_max_hooks_it_and_counts_pages():
    table = SymbolTable.from_kallsyms("ffffffff81000000 t mem_cgroup_write\nffffffff81000100 t memcg_update_kmem_max\n")
    hook, _ = kmemsnoop.kernel_hook(table, btf_path="/nonexistent")
    assert (hook.function, hook.kind) == ("memcg_update_kmem_max", 2)


def test_no_handler_at_all_says_which_were_looked_for():
    hook, note = kmemsnoop.kernel_hook(SymbolTable.from_kallsyms("ffffffff81000000 T vfs_write\n"))
    assert hook is None
    assert note == ("no kernel hook: none of memcg_update_kmem_limit, memcg_update_kmem_max, mem_cgroup_write "
                    "can be probed on this kernel")


def test_plan_here_is_tracepoints_only_and_kprobe_mode_is_a_clear_error():
    """This machine has no kprobes (lab-notes): auto falls back, --mode kprobe refuses."""
    table = SymbolTable.from_system()
    if os.path.exists("/sys/kernel/tracing/kprobe_events"):
        pytest.skip("this kernel has kprobes")
    plan = kmemsnoop.plan(None, "auto", table)
    assert plan.hook is None and "KERNEL_HOOK" not in plan.probe.params
    assert plan.note.startswith("no kernel hook: no kprobe_events in tracefs")
    with pytest.raises(MissingKernelFeature):
        kmemsnoop.plan(None, "kprobe", table)
    assert kmemsnoop.plan(4242, "tracepoint", table).probe.params == {"FILTER_TGID": 4242}
