"""Tests for bpftools.kernel.symbols: table-driven resolutions per kernel fixture, the rules on synthetic
inputs, from_system on a fake root, and from_system on this machine's live kernel."""
import errno
import io
import os

import pytest

from bpftools.kernel import symbols
from bpftools.errors import MissingKernelFeature
from bpftools.kernel.symbols import KNOWN_SYMBOLS, SymbolTable

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "kallsyms")


def _table(name, **kwargs):
    with io.open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return SymbolTable.from_kallsyms(f.read(), **kwargs)


# wanted -> (attach, how, fallback), per fixture (see fixtures/kallsyms/README.md for each fact).
EXPECTED = {
    "3.10.0-957.el7.x86_64.kallsyms": {
        "mempool_alloc": ("mempool_alloc", "exact", None),
        "bvec_alloc": ("bvec_alloc", "exact", None),
        "bio_alloc_bioset": ("bio_alloc_bioset", "exact", None),
        "kmem_cache_alloc": ("kmem_cache_alloc", "exact", None),
        "kmem_cache_alloc_lru": (None, "absent", None),
        "kmem_cache_alloc_trace": ("kmem_cache_alloc_trace", "exact", None),
        "kmalloc_trace": (None, "absent", "kmem_cache_alloc_trace"),
        "__kmalloc": ("__kmalloc", "exact", None),
        "kmalloc_large": (None, "absent", None),
        "slab_out_of_memory": ("slab_out_of_memory", "exact", None),
        "io_schedule_timeout": ("io_schedule_timeout", "exact", None),
        "finish_wait": ("finish_wait", "exact", None),
        "netdev_wait_allrefs": ("netdev_wait_allrefs", "exact", None),
        "netdev_run_todo": ("netdev_run_todo", "exact", None),
        "netdev_refcnt_read": ("netdev_refcnt_read", "exact", None),
        "dev_hold": (None, "inlined", "dst_init"),
        "dev_put": (None, "inlined", "dst_destroy"),
        "netdev_hold": (None, "inlined", "dst_init"),
        "dst_init": ("dst_init", "exact", None),
        "dst_destroy": ("dst_destroy", "exact", None),
        "rt_bind_exception": ("rt_bind_exception", "exact", None),
        "ip_del_fnhe": (None, "inlined", "find_exception"),
        "fnhe_remove_oldest": (None, "inlined", "update_or_create_fnhe"),
        "__writepage": ("__writepage", "exact", None),
        "write_cache_pages": ("write_cache_pages", "exact", None),
        "do_writepages": ("do_writepages", "exact", None),
        "memcg_update_kmem_limit": ("memcg_update_kmem_limit", "exact", None),
        "ext4_writepages": ("ext4_writepages", "exact", None),
        "init_net": (None, "absent", None),          # a D symbol: not text
    },
    "6.1.0-amd64.kallsyms": {
        "mempool_alloc": ("mempool_alloc", "exact", None),
        "bvec_alloc": ("bvec_alloc", "exact", None),
        "bio_alloc_bioset": ("bio_alloc_bioset", "exact", None),
        "kmem_cache_alloc": ("kmem_cache_alloc", "exact", None),
        "kmem_cache_alloc_lru": ("kmem_cache_alloc_lru", "exact", None),
        "kmem_cache_alloc_trace": (None, "absent", "kmalloc_trace"),
        "kmalloc_trace": ("kmalloc_trace", "exact", None),
        "__kmalloc": ("__kmalloc", "exact", None),
        "kmalloc_large": ("kmalloc_large", "exact", None),
        "slab_out_of_memory": ("slab_out_of_memory", "exact", None),
        "io_schedule_timeout": ("io_schedule_timeout", "exact", None),
        "finish_wait": ("finish_wait", "exact", None),
        "netdev_wait_allrefs": (None, "inlined", "netdev_run_todo"),
        "netdev_run_todo": ("netdev_run_todo", "exact", None),
        "netdev_refcnt_read": ("netdev_refcnt_read", "exact", None),
        "dev_hold": (None, "inlined", "dst_init"),
        "dev_put": (None, "inlined", "dst_destroy"),
        "netdev_hold": (None, "inlined", "dst_init"),
        "dst_init": ("dst_init", "exact", None),
        "dst_destroy": ("dst_destroy", "exact", None),
        "rt_bind_exception": ("rt_bind_exception", "exact", None),
        "ip_del_fnhe": ("ip_del_fnhe", "exact", None),
        "fnhe_remove_oldest": (None, "inlined", "update_or_create_fnhe"),
        "__writepage": ("__writepage", "exact", None),
        "write_cache_pages": ("write_cache_pages", "exact", None),
        "do_writepages": ("do_writepages", "exact", None),
        "memcg_update_kmem_limit": (None, "absent", "mem_cgroup_write"),
        "ext4_writepages": ("ext4_writepages", "exact", None),
        "init_net": (None, "absent", None),
    },
    "6.12.0-amd64.kallsyms": {
        "mempool_alloc": ("mempool_alloc_noprof", "noprof", None),
        "bvec_alloc": ("bvec_alloc", "exact", None),
        "bio_alloc_bioset": ("bio_alloc_bioset", "exact", None),
        "kmem_cache_alloc": ("kmem_cache_alloc_noprof", "noprof", None),
        "kmem_cache_alloc_lru": ("kmem_cache_alloc_lru_noprof", "noprof", None),
        "kmem_cache_alloc_trace": (None, "absent", "__kmalloc_cache_noprof"),
        "kmalloc_trace": (None, "absent", "__kmalloc_cache_noprof"),
        "__kmalloc": ("__kmalloc_noprof", "noprof", None),
        "kmalloc_large": (None, "absent", "__kmalloc_large_noprof"),
        "slab_out_of_memory": ("slab_out_of_memory", "exact", None),
        "io_schedule_timeout": ("io_schedule_timeout", "exact", None),
        "finish_wait": ("finish_wait", "exact", None),
        "netdev_wait_allrefs": ("netdev_wait_allrefs_any", "any", None),
        "netdev_run_todo": ("netdev_run_todo", "exact", None),
        "netdev_refcnt_read": ("netdev_refcnt_read", "exact", None),
        "dev_hold": (None, "inlined", "dst_init"),
        "dev_put": (None, "inlined", "dst_destroy"),
        "netdev_hold": (None, "inlined", "dst_init"),
        "dst_init": ("dst_init", "exact", None),
        "dst_destroy": ("dst_destroy", "exact", None),
        "rt_bind_exception": ("rt_bind_exception", "exact", None),
        "ip_del_fnhe": (None, "inlined", "find_exception"),
        "fnhe_remove_oldest": ("fnhe_remove_oldest", "exact", None),
        "__writepage": (None, "inlined", "write_cache_pages"),
        "write_cache_pages": ("write_cache_pages", "exact", None),
        "do_writepages": ("do_writepages", "exact", None),
        "memcg_update_kmem_limit": (None, "absent", "mem_cgroup_write"),
        "ext4_writepages": ("ext4_writepages", "exact", None),
        "init_net": (None, "absent", None),
    },
    "6.18.0.kallsyms": {
        "mempool_alloc": ("mempool_alloc_noprof", "noprof", None),
        "bvec_alloc": (None, "inlined", "bio_alloc_bioset"),
        "bio_alloc_bioset": ("bio_alloc_bioset", "exact", None),
        "kmem_cache_alloc": ("kmem_cache_alloc_noprof", "noprof", None),
        "kmem_cache_alloc_lru": ("kmem_cache_alloc_lru_noprof", "noprof", None),
        "kmem_cache_alloc_trace": (None, "absent", "__kmalloc_cache_noprof"),
        "kmalloc_trace": (None, "absent", "__kmalloc_cache_noprof"),
        "__kmalloc": ("__kmalloc_noprof", "noprof", None),
        "kmalloc_large": (None, "absent", "__kmalloc_large_noprof"),
        "slab_out_of_memory": ("slab_out_of_memory.isra.0", "clone", None),
        "io_schedule_timeout": ("io_schedule_timeout", "exact", None),
        "finish_wait": ("finish_wait", "exact", None),
        "netdev_wait_allrefs": (None, "inlined", "netdev_run_todo"),
        "netdev_run_todo": ("netdev_run_todo", "exact", None),
        "netdev_refcnt_read": ("netdev_refcnt_read", "exact", None),
        "dev_hold": (None, "inlined", "ref_tracker_alloc"),
        "dev_put": (None, "inlined", "ref_tracker_free"),
        "netdev_hold": (None, "inlined", "ref_tracker_alloc"),
        "dst_init": ("dst_init", "exact", None),
        "dst_destroy": ("dst_destroy", "exact", None),
        "rt_bind_exception": (None, "inlined", "rt_set_nexthop.isra.0"),
        "ip_del_fnhe": (None, "inlined", "find_exception"),
        "fnhe_remove_oldest": (None, "inlined", "update_or_create_fnhe"),
        "__writepage": (None, "inlined", "do_writepages"),
        "write_cache_pages": (None, "absent", None),
        "do_writepages": ("do_writepages", "exact", None),
        "memcg_update_kmem_limit": (None, "absent", "mem_cgroup_write"),
        "ext4_writepages": ("ext4_writepages", "exact", None),
        "init_net": (None, "absent", None),
    },
    "6.18.44-fc-live.kallsyms": {
        "mempool_alloc": ("mempool_alloc_noprof", "noprof", None),
        "bvec_alloc": ("bvec_alloc", "exact", None),
        "bio_alloc_bioset": ("bio_alloc_bioset", "exact", None),
        "kmem_cache_alloc": ("kmem_cache_alloc_noprof", "noprof", None),
        "kmem_cache_alloc_lru": ("kmem_cache_alloc_lru_noprof", "noprof", None),
        "kmem_cache_alloc_trace": (None, "absent", "__kmalloc_cache_noprof"),
        "kmalloc_trace": (None, "absent", "__kmalloc_cache_noprof"),
        "__kmalloc": ("__kmalloc_noprof", "noprof", None),
        "kmalloc_large": (None, "absent", "__kmalloc_large_noprof"),
        "slab_out_of_memory": ("slab_out_of_memory", "exact", None),
        "io_schedule_timeout": ("io_schedule_timeout", "exact", None),
        "finish_wait": ("finish_wait", "exact", None),
        "netdev_wait_allrefs": (None, "inlined", "netdev_run_todo"),
        "netdev_run_todo": ("netdev_run_todo", "exact", None),
        "netdev_refcnt_read": ("netdev_refcnt_read", "exact", None),
        "dev_hold": (None, "inlined", "dst_init"),
        "dev_put": (None, "inlined", "dst_destroy"),
        "netdev_hold": (None, "inlined", "dst_init"),
        "dst_init": ("dst_init", "exact", None),
        "dst_destroy": ("dst_destroy", "exact", None),
        "rt_bind_exception": (None, "inlined", "rt_set_nexthop.isra.0"),
        "ip_del_fnhe": (None, "inlined", "find_exception"),
        "fnhe_remove_oldest": (None, "inlined", "update_or_create_fnhe"),
        "__writepage": (None, "inlined", "do_writepages"),
        "write_cache_pages": (None, "absent", None),
        "do_writepages": ("do_writepages", "exact", None),
        "memcg_update_kmem_limit": (None, "absent", "mem_cgroup_write"),
        "ext4_writepages": ("ext4_writepages", "exact", None),   # built in on the lab kernel
        "init_net": (None, "absent", None),
    },
}

CASES = [(fixture, wanted) + expected
         for fixture, table in sorted(EXPECTED.items()) for wanted, expected in sorted(table.items())]


@pytest.mark.parametrize("fixture,wanted,attach,how,fallback", CASES)
def test_resolution_per_fixture(fixture, wanted, attach, how, fallback):
    r = _table(fixture).resolve(wanted)
    assert (r.attach, r.how, r.fallback) == (attach, how, fallback)
    assert r.wanted == wanted
    assert r.ftrace is None          # no available_filter_functions given
    assert r.note.endswith(".")


def test_every_fixture_has_expectations():
    files = sorted(f for f in os.listdir(FIXTURES) if f.endswith(".kallsyms"))
    assert files == sorted(EXPECTED)


@pytest.mark.parametrize("fixture,wanted,candidates", [
    ("6.1.0-amd64.kallsyms", "slab_out_of_memory", ("slab_out_of_memory", "slab_out_of_memory.cold")),
    ("6.18.0.kallsyms", "slab_out_of_memory", ("slab_out_of_memory.isra.0", "slab_out_of_memory.isra.0.cold")),
    ("6.18.44-fc-live.kallsyms", "slab_out_of_memory", ("slab_out_of_memory", "slab_out_of_memory.cold")),
    ("6.18.44-fc-live.kallsyms", "kmalloc_array", ("kmalloc_array_noprof", "kmalloc_array_noprof.constprop.0")),
    # __pfx_ padding symbols are text symbols but never candidates
    ("6.12.0-amd64.kallsyms", "mempool_alloc", ("mempool_alloc_noprof",)),
    ("6.12.0-amd64.kallsyms", "netdev_wait_allrefs", ("netdev_wait_allrefs_any",)),
    ("6.18.0.kallsyms", "netdev_wait_allrefs", ()),
])
def test_candidates(fixture, wanted, candidates):
    assert _table(fixture).resolve(wanted).candidates == candidates


@pytest.mark.parametrize("fixture,wanted,module", [
    ("3.10.0-957.el7.x86_64.kallsyms", "ext4_writepages", "ext4"),
    ("3.10.0-957.el7.x86_64.kallsyms", "xfs_vm_writepage", "xfs"),
    ("3.10.0-957.el7.x86_64.kallsyms", "mempool_alloc", None),
    ("6.18.0.kallsyms", "ext4_writepages", "ext4"),
    ("6.18.44-fc-live.kallsyms", "ftrace_trampoline", "__builtin__ftrace"),
    ("6.18.44-fc-live.kallsyms", "ext4_writepages", None),
])
def test_module_is_recorded(fixture, wanted, module):
    r = _table(fixture).resolve(wanted)
    assert r.attach == wanted
    assert r.module == module


def test_has_is_exact_and_text_only():
    t = _table("3.10.0-957.el7.x86_64.kallsyms")
    assert t.has("netdev_wait_allrefs")
    assert not t.has("init_net")        # D
    assert not t.has("net_todo_list")   # d
    assert not t.has("fnhe_lock")       # b
    assert not t.has("mempool")         # no prefix matching
    t612 = _table("6.12.0-amd64.kallsyms")
    assert t612.has("__pfx_mempool_alloc_noprof")
    assert not t612.has("mempool_alloc")


def _fixture_types(name):
    """name -> sorted list of the type letters the fixture gives that name (read here, independently)."""
    out = {}
    with io.open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        for line in f:
            addr, typ, rest = line.rstrip("\n").split(" ", 2)
            out.setdefault(rest.split("\t")[0], []).append(typ)
    return dict((n, sorted(types)) for n, types in out.items())


def test_rhel76_syscall_bpf_and_tracepoint_symbols():
    """RHEL 7.6 facts the offline planner reads (fixtures/kallsyms/README.md, 3.10.0-957 section)."""
    name = "3.10.0-957.el7.x86_64.kallsyms"
    t = _table(name)
    # SYSCALL_DEFINEn: SyS_NAME is the function, sys_NAME a global alias at the same address; no __x64_
    addresses = dict((line.split()[2], line.split()[0]) for line in _fixture_text(name).splitlines())
    for call in ("open", "openat", "write", "dup2"):
        for prefix in ("SyS_", "sys_"):
            r = t.resolve(prefix + call)
            assert (r.attach, r.how) == (prefix + call, "exact")
        assert addresses["sys_" + call] == addresses["SyS_" + call]
        assert not t.has("__x64_sys_" + call)
    # the RHEL 7.6 tracing-only BPF backport: perf output and stack maps, no 4.18/5.8 helpers; BPF on
    # syscalls:* tracepoints (perf_call_bpf_enter) is not established for 957, so it is left out
    assert t.resolve("bpf_perf_event_output").how == "exact"
    assert t.resolve("bpf_get_stackid").how == "exact"
    for absent in ("bpf_get_current_cgroup_id", "bpf_ringbuf_output", "perf_call_bpf_enter", "call_rcu"):
        assert (t.resolve(absent).attach, t.resolve(absent).how) == (None, "absent"), absent
    # tracepoint and syscall-metadata objects: data symbols, never text
    types = _fixture_types(name)
    data = {"__tracepoint_sched_switch": ["D"], "__tracepoint_sched_process_hang": ["D"],
            "__tracepoint_kmem_cache_alloc": ["D"], "__tracepoint_wbc_writepage": ["D"],
            "__tracepoint_writeback_single_inode_start": ["D"], "__tracepoint_block_bio_queue": ["D"],
            "__tracepoint_net_dev_xmit": ["D"], "event_enter__openat": ["d"],
            "__syscall_meta__openat": ["d"], "__syscall_meta__open": ["d"], "__syscall_meta__write": ["d"],
            "__syscall_meta__dup2": ["d"]}
    assert dict((n, types.get(n)) for n in data) == data
    assert not any(t.has(n) for n in data)
    assert "__tracepoint_fib_table_lookup" not in types          # no fib tracepoints in RHEL 7
    # static functions are local `t`; call_rcu is call_rcu_sched on this non-preempt kernel
    assert [types[n] for n in ("__netif_receive_skb", "__mutex_lock_slowpath", "cgroup_mkdir",
                               "slab_out_of_memory", "__writepage", "call_rcu_sched", "dev_get_flags",
                               "free_netdev")] == [["t"], ["t"], ["t"], ["t"], ["t"], ["T"], ["T"], ["T"]]


def test_notes_name_the_reason_and_the_fallback():
    assert _table("6.12.0-amd64.kallsyms").resolve("mempool_alloc").note == \
        "since 6.10 mempool_alloc is a macro around mempool_alloc_noprof."
    assert _table("6.12.0-amd64.kallsyms").resolve("netdev_wait_allrefs").note == \
        "netdev_wait_allrefs is named netdev_wait_allrefs_any on this kernel."
    assert _table("6.1.0-amd64.kallsyms").resolve("netdev_wait_allrefs").note == (
        "netdev_wait_allrefs is not in kallsyms: static and often inlined into netdev_run_todo; "
        "use netdev_run_todo instead.")
    assert _table("3.10.0-957.el7.x86_64.kallsyms").resolve("ext4_writepages").note == \
        "ext4_writepages is a text symbol on this kernel (module ext4)."
    assert _table("3.10.0-957.el7.x86_64.kallsyms").resolve("kmalloc_large").note == (
        "kmalloc_large is not in kallsyms: renamed __kmalloc_large_noprof on 6.10+; "
        "none of its fallbacks (__kmalloc_large) is here either.")
    assert _table("6.18.0.kallsyms").resolve("slab_out_of_memory").note == (
        "only compiler clones exist; slab_out_of_memory.isra.0 may take fewer or reordered arguments "
        "than slab_out_of_memory.")


def test_inline_note_carries_the_non_symbol_advice():
    note = _table("6.18.44-fc-live.kallsyms").resolve("dev_hold").note
    assert note.startswith("dev_hold is not in kallsyms: always inline")
    assert "use dst_init instead" in note
    assert "hardware watchpoint on the refcount" in note


def test_same_named_static_functions_are_flagged():
    r = _table("6.18.44-fc-live.kallsyms").resolve("dst_discard")
    assert (r.attach, r.how) == ("dst_discard", "exact")
    assert r.note == ("dst_discard is a text symbol on this kernel; 5 text symbols are named dst_discard "
                      "(distinct static functions), so attaching by name is ambiguous.")


def test_resolve_all_keeps_order():
    t = _table("6.1.0-amd64.kallsyms")
    assert [r.attach for r in t.resolve_all(["finish_wait", "dev_put", "bvec_alloc"])] == \
        ["finish_wait", None, "bvec_alloc"]


def test_to_json():
    r = _table("6.18.0.kallsyms").resolve("slab_out_of_memory")
    assert r.to_json() == {
        "wanted": "slab_out_of_memory", "attach": "slab_out_of_memory.isra.0", "how": "clone",
        "candidates": ["slab_out_of_memory.isra.0", "slab_out_of_memory.isra.0.cold"],
        "fallback": None, "note": r.note, "module": None, "ftrace": None,
    }


def test_addresses_visible():
    assert _table("6.1.0-amd64.kallsyms").addresses_visible
    hidden = SymbolTable.from_kallsyms("0000000000000000 T mempool_alloc\n0000000000000000 t netdev_run_todo\n")
    assert not hidden.addresses_visible
    assert hidden.resolve("mempool_alloc").attach == "mempool_alloc"   # names still resolve


# --- the rules, on synthetic kallsyms lines (function names chosen to hit each rule) ---

def test_noprof_wins_over_a_same_named_symbol():
    t = SymbolTable.from_kallsyms(["ffffffff81000100 T kmem_cache_alloc",
                                   "ffffffff81000200 T kmem_cache_alloc_noprof"])
    r = t.resolve("kmem_cache_alloc")
    assert (r.attach, r.how, r.candidates) == (
        "kmem_cache_alloc_noprof", "noprof", ("kmem_cache_alloc_noprof", "kmem_cache_alloc"))


def test_exact_wins_over_any_and_clones():
    t = SymbolTable.from_kallsyms(["ffffffff81000100 t foo.isra.0", "ffffffff81000200 t foo_any",
                                   "ffffffff81000300 t foo"])
    r = t.resolve("foo")
    assert (r.attach, r.how, r.candidates) == ("foo", "exact", ("foo", "foo_any", "foo.isra.0"))


def test_clone_preference_never_cold_and_full_clones_before_parts():
    t = SymbolTable.from_kallsyms([
        "ffffffff81000100 t foo.cold",
        "ffffffff81000200 t foo.part.0",
        "ffffffff81000300 t foo.constprop.0.isra.0",
        "ffffffff81000400 t foo.isra.0",
        "ffffffff81000500 t foo.isra.0.cold",
        "ffffffff81000600 t foo.slowpath",          # not a gcc clone suffix
        "ffffffff81000700 t foobar.isra.0",         # another function
    ])
    r = t.resolve("foo")
    assert (r.attach, r.how, r.fallback) == ("foo.isra.0", "clone", None)
    assert r.candidates == ("foo.cold", "foo.part.0", "foo.constprop.0.isra.0", "foo.isra.0", "foo.isra.0.cold")
    assert "other clones foo.part.0, foo.constprop.0.isra.0 are separate copies: probe them too" in r.note


def test_only_cold_fragments_are_not_an_attach_point():
    t = SymbolTable.from_kallsyms(["ffffffff81000100 t foo.cold", "ffffffff81000200 t foo.cold.12"])
    r = t.resolve("foo")
    assert (r.attach, r.how, r.candidates) == (None, "absent", ("foo.cold", "foo.cold.12"))


def test_a_part_clone_is_partial_and_gets_the_fallback():
    t = SymbolTable.from_kallsyms(["ffffffff81000100 t __writepage.part.0",
                                   "ffffffff81000200 T write_cache_pages"])
    r = t.resolve("__writepage")
    assert (r.attach, r.how, r.fallback) == ("__writepage.part.0", "clone", "write_cache_pages")
    assert "calls that return early are missed" in r.note
    assert "also probe write_cache_pages" in r.note


def test_clones_of_noprof_and_any_names():
    t = SymbolTable.from_kallsyms(["ffffffff81000100 t netdev_wait_allrefs_any.constprop.0"])
    assert t.resolve("netdev_wait_allrefs").attach == "netdev_wait_allrefs_any.constprop.0"
    t = SymbolTable.from_kallsyms(["ffffffff81000100 t kmalloc_array_noprof.constprop.0"])
    assert t.resolve("kmalloc_array").attach == "kmalloc_array_noprof.constprop.0"


def test_module_line_format():
    t = SymbolTable.from_kallsyms("ffffffffc0a01000 t xfs_vm_writepages\t[xfs]\n")
    r = t.resolve("xfs_vm_writepages")
    assert (r.attach, r.how, r.module) == ("xfs_vm_writepages", "exact", "xfs")


# --- kprobes blacklist and available_filter_functions (synthetic lists) ---

KALLSYMS_61 = "6.1.0-amd64.kallsyms"
BLACKLIST_LINE = "0xffffffff81000100-0xffffffff81000180\t%s"


def test_blacklisted_symbol_is_refused_and_the_fallback_offered():
    t = _table(KALLSYMS_61, blacklist=[BLACKLIST_LINE % "bvec_alloc", BLACKLIST_LINE % "notify_die"])
    assert t.blacklist_known
    r = t.resolve("bvec_alloc")
    assert (r.attach, r.how, r.fallback) == (None, "blacklisted", "bio_alloc_bioset")
    assert r.candidates == ("bvec_alloc",)
    assert r.note.startswith("bvec_alloc is on the kprobes blacklist; use bio_alloc_bioset instead")
    r = t.resolve("mempool_alloc")
    assert (r.attach, r.how) == ("mempool_alloc", "exact")


def test_blacklisted_fallbacks_are_skipped():
    t = _table("6.18.0.kallsyms", blacklist=["ref_tracker_alloc"])      # bare names work too
    assert t.resolve("dev_hold").fallback == "dst_init"


def test_blacklist_unknown_versus_empty():
    assert not _table(KALLSYMS_61).blacklist_known
    assert _table(KALLSYMS_61, blacklist=[]).blacklist_known


def test_filter_functions_decide_fentry():
    with io.open(os.path.join(FIXTURES, KALLSYMS_61), encoding="utf-8") as f:
        text = f.read()
    names = [line.split()[2] + (" " + line.split()[3] if len(line.split()) > 3 else "")
             for line in text.splitlines()]
    # pretend slab_out_of_memory is notrace: everything else is traceable
    t = SymbolTable.from_kallsyms(text, filter_functions=[n for n in names if n != "slab_out_of_memory"])
    assert t.filter_functions_known
    r = t.resolve("slab_out_of_memory")
    assert (r.attach, r.how, r.ftrace) == ("slab_out_of_memory", "exact", False)
    assert r.note == ("slab_out_of_memory is a text symbol on this kernel; slab_out_of_memory is not in "
                      "available_filter_functions, so fentry and kprobe-on-ftrace cannot attach "
                      "(a plain kprobe may).")
    assert t.resolve("ext4_writepages").ftrace is True           # "ext4_writepages [ext4]" line
    r = t.resolve("netdev_wait_allrefs")                          # checks the fallback
    assert (r.attach, r.fallback, r.ftrace) == (None, "netdev_run_todo", True)
    assert t.resolve("kmalloc_large_noprof").ftrace is None       # nothing to attach
    assert not _table(KALLSYMS_61).filter_functions_known


# --- the knowledge table ---

def test_known_symbols_fallbacks_are_not_themselves_inline():
    for name, known in KNOWN_SYMBOLS.items():
        assert known.kind in (symbols.INLINE, symbols.MAY_INLINE, symbols.RENAMED), name
        assert name not in known.fallbacks, name
        for fb in known.fallbacks:
            assert KNOWN_SYMBOLS.get(fb) is None or KNOWN_SYMBOLS[fb].kind != symbols.INLINE, (name, fb)


# --- from_system on a fake root ---

def _write(root, path, text):
    full = os.path.join(str(root), path)
    if not os.path.isdir(os.path.dirname(full)):
        os.makedirs(os.path.dirname(full))
    with io.open(full, "w", encoding="utf-8") as f:
        f.write(text)


def _fixture_text(name):
    with io.open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


def test_from_system_rhel7_without_blacklist_or_tracefs(tmp_path):
    _write(tmp_path, "proc/kallsyms", _fixture_text("3.10.0-957.el7.x86_64.kallsyms"))
    t = SymbolTable.from_system(str(tmp_path))
    assert not t.blacklist_known
    assert not t.filter_functions_known
    assert t.resolve("netdev_wait_allrefs").attach == "netdev_wait_allrefs"


def test_from_system_reads_tracefs_and_debugfs_blacklist(tmp_path):
    _write(tmp_path, "proc/kallsyms", _fixture_text(KALLSYMS_61))
    _write(tmp_path, "sys/kernel/tracing/available_events", "sched:sched_switch\n")
    _write(tmp_path, "sys/kernel/tracing/available_filter_functions",
           "mempool_alloc\nbvec_alloc\next4_writepages [ext4]\n")
    _write(tmp_path, "sys/kernel/debug/kprobes/blacklist", BLACKLIST_LINE % "finish_wait" + "\n")
    t = SymbolTable.from_system(str(tmp_path))
    assert t.blacklist_known and t.filter_functions_known
    assert t.filter_functions == frozenset(["mempool_alloc", "bvec_alloc", "ext4_writepages"])
    assert t.resolve("finish_wait").how == "blacklisted"
    assert t.resolve("bvec_alloc").ftrace is True
    assert t.resolve("do_writepages").ftrace is False


def test_from_system_old_layout_tracefs_under_debugfs(tmp_path):
    _write(tmp_path, "proc/kallsyms", _fixture_text(KALLSYMS_61))
    _write(tmp_path, "sys/kernel/debug/tracing/available_events", "sched:sched_switch\n")
    _write(tmp_path, "sys/kernel/debug/tracing/available_filter_functions", "finish_wait\n")
    t = SymbolTable.from_system(str(tmp_path))
    assert t.filter_functions == frozenset(["finish_wait"])
    assert not t.blacklist_known


def test_from_system_eperm_on_filter_functions_means_unknown(tmp_path, monkeypatch):
    _write(tmp_path, "proc/kallsyms", _fixture_text(KALLSYMS_61))
    _write(tmp_path, "sys/kernel/tracing/available_events", "sched:sched_switch\n")
    _write(tmp_path, "sys/kernel/tracing/available_filter_functions", "finish_wait\n")
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith("available_filter_functions"):
            raise OSError(errno.EPERM, "Operation not permitted", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(symbols, "open", refusing_open, raising=False)
    t = SymbolTable.from_system(str(tmp_path))
    assert not t.filter_functions_known
    assert t.resolve("finish_wait").ftrace is None


def test_from_system_without_kallsyms(tmp_path):
    with pytest.raises(MissingKernelFeature) as info:
        SymbolTable.from_system(str(tmp_path))
    assert "/proc/kallsyms" in str(info.value)


# --- the live kernel of this machine ---

def _live_kallsyms():
    """name -> list of types, read here independently of the module under test."""
    out = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out.setdefault(parts[2], []).append((parts[0], parts[1]))
    return out


@pytest.mark.root
def test_live_kernel():
    if not os.path.exists("/proc/kallsyms"):
        pytest.skip("no /proc/kallsyms")
    live = _live_kallsyms()
    if all(int(addr, 16) == 0 for entries in live.values() for addr, _ in entries):
        pytest.skip("kallsyms addresses are hidden (not root, or kptr_restrict)")
    text = dict((name, [typ for _, typ in entries if typ in "tTW"]) for name, entries in live.items())
    text = dict((name, types) for name, types in text.items() if types)
    table = SymbolTable.from_system()
    assert table.addresses_visible
    checked = 0
    if "mempool_alloc_noprof" in text:
        r = table.resolve("mempool_alloc")
        assert (r.attach, r.how) == ("mempool_alloc_noprof", "noprof")
        checked += 1
    elif "mempool_alloc" in text:
        assert table.resolve("mempool_alloc").how == "exact"
        checked += 1
    if not any(n in text for n in ("netdev_wait_allrefs", "netdev_wait_allrefs_any")) \
            and "netdev_run_todo" in text:
        r = table.resolve("netdev_wait_allrefs")
        assert (r.attach, r.how, r.fallback) == (None, "inlined", "netdev_run_todo")
        checked += 1
    if "slab_out_of_memory" in text:
        r = table.resolve("slab_out_of_memory")
        assert r.attach == "slab_out_of_memory"
        assert ("slab_out_of_memory.cold" in r.candidates) == ("slab_out_of_memory.cold" in text)
        checked += 1
    hosts = sorted(n for n in text if n == "rt_set_nexthop" or n.startswith("rt_set_nexthop."))
    if "rt_bind_exception" not in text and hosts:
        assert table.resolve("rt_bind_exception").fallback in hosts
        checked += 1
    assert table.has("dev_hold") == ("dev_hold" in text)
    assert table.resolve("dev_hold").how == ("exact" if "dev_hold" in text else "inlined")
    # what the machine allows: compare with reading the files here
    assert table.blacklist_known == os.access("/sys/kernel/debug/kprobes/blacklist", os.R_OK)
    assert checked >= 2, "none of the facts this test knows applies to kernel %s" % os.uname().release
