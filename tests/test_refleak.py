"""bpftools refleak without a kernel to trace: CLI errors and exit codes, the plan per kernel (from the
lab's kallsyms and BTF offsets), watchpoint bookkeeping, inline-site entries, device selection, the
capture's decoding and device lifecycle on fakes, and the reports of real lab recordings."""
import ctypes
import errno
import fcntl
import glob
import json
import os
import types

import pytest

from bpftools.kernel import breakpoints, cpus
from bpftools.errors import EXIT_BAD_INPUT, EXIT_NOT_ROOT, EXIT_USAGE, BadInput
from bpftools.recording import read_recording
from bpftools.refleak.session import Decoder, Session
from bpftools.refleak.devices import Selector, find_existing, make_selector, validate_pattern
from bpftools.kernel.symbols import DATA_TYPES, symbol_address
from bpftools.refleak.plan import MissingHook, MissingOffsets, make_plan, base_references
from bpftools.kernel.symbols import text_addresses
from bpftools.refleak.sites import site_entries
from bpftools.kernel.symbols import SymbolTable
from bpftools.html_report import render_html
from bpftools.tools import refleak
from test_html_report import embedded_json

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "refleak")
ALL = ["watch", "holders", "ref_tracker", "inline"]
LEAK = sorted(glob.glob(os.path.join(FIXTURES, "*", "refleak-leak-existing.jsonl")))
PLANS = sorted(glob.glob(os.path.join(FIXTURES, "*", "refleak-plan.json")))


# ---- command line --------------------------------------------------------------------------------

def _one_line_error(r, code):
    assert r.code == code, (r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    return lines[0]


def test_help_names_the_strategies_and_has_examples(bpftools_cli):
    r = bpftools_cli("refleak", "--help")
    assert r.code == 0
    for word in ("Examples:", "bpftools refleak --dev eth0", "--netns", "--strategy", "--debuginfo", "--record",
                 "--folded", "--svg", "4 debug registers"):
        assert word in r.out


@pytest.mark.parametrize("args, message", [
    (["--dev", "a-name-longer-than-15"], "--dev 'a-name-longer-than-15': a device name or pattern is 1-15"),
    (["--dev", "eth 0"], "--dev 'eth 0': a device name or pattern"),
    (["--netns", "bpftools-no-such-netns"], "--netns 'bpftools-no-such-netns': no such network namespace"),
])
def test_bad_input_is_one_line_and_exit_3(bpftools_cli, args, message):
    line = _one_line_error(bpftools_cli("refleak", *args), EXIT_BAD_INPUT)
    assert line.startswith("bpftools: error: " + message), line


@pytest.mark.parametrize("args", [["-d", "0"], ["-d", "x"], ["--nosuch"], ["--strategy", "magic"]])
def test_usage_errors_exit_2(bpftools_cli, args):
    r = bpftools_cli("refleak", *args)
    assert r.code == EXIT_USAGE and "Traceback" not in r.err


def test_not_root_exits_4(bpftools_cli):
    if os.geteuid() == 0:
        r = bpftools_cli("refleak", "-d", "1", preexec_fn=lambda: os.setuid(65534))
    else:
        r = bpftools_cli("refleak", "-d", "1")
    line = _one_line_error(r, EXIT_NOT_ROOT)
    assert "needs root" in line


# ---- plans ---------------------------------------------------------------------------------------

def _fixture_plan(plan_path):
    folder = os.path.dirname(plan_path)
    with open(os.path.join(folder, "refleak-kallsyms.txt")) as f:
        kallsyms = f.read().splitlines()
    with open(os.path.join(folder, "refleak-offsets.json")) as f:
        offsets = json.load(f)
    with open(plan_path) as f:
        recorded = json.load(f)
    table = SymbolTable.from_kallsyms(kallsyms)
    plan = make_plan(table, offsets, symbol_address(kallsyms, "__per_cpu_offset", DATA_TYPES), recorded["ncpus"],
                     recorded["base_refs"], ALL, True, recorded["params"]["SELF_TGID"],
                     cgroup_id=table.has("bpf_get_current_cgroup_id"))
    return plan, recorded


@pytest.mark.parametrize("path", PLANS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_the_plan_from_the_lab_kernels_kallsyms_and_btf_is_the_one_made_there(path):
    plan, recorded = _fixture_plan(path)
    assert plan.to_json() == recorded
    assert plan.strategies == ["watch", "holders"]
    assert "DEV_REFCNT_PCPU" in plan.flags and "WATCH" in plan.flags and "LEVEL_UNKNOWN" not in plan.flags
    assert plan.params["NCPUS"] == 2 and plan.params["PER_CPU_OFFSET"] < 0
    events = dict((a.fn_name, a.event) for a in plan.kprobes)
    assert (events["lookup_entry"], events["dst_alloc_entry"], events["unregister_entry"]) == (
        "dev_get_flags", "dst_alloc", "unregister_netdevice_queue")
    release = os.path.basename(os.path.dirname(path))
    # rt_bind_exception is inlined everywhere; its caller is a clone: .constprop on 5.10/6.1, .isra on 6.12
    assert events["fnhe_entry"] == ("rt_set_nexthop.isra.0" if release.startswith("6.12")
                                    else "rt_set_nexthop.constprop.0")
    assert plan.params["FNHE_ARG"] == 4
    assert plan.base_refs == (0 if release.startswith("5.10") else 1)


def _synthetic_kallsyms(*extra):
    names = ["dev_get_flags", "unregister_netdevice_queue", "free_netdev", "register_netdevice", "dst_alloc",
             "dst_init", "dst_dev_put", "dst_destroy"] + list(extra)
    lines = ["ffffffff8100%04x T %s" % (i * 16, n) for i, n in enumerate(names)]
    return lines + ["ffffffff82400000 D __per_cpu_offset"]


OFFSETS = {"OFF_DEV_NAME": 0, "OFF_DEV_IFINDEX": 216, "OFF_DEV_ND_NET": 1280, "OFF_NET_NS": 128, "OFF_NS_INUM": 16,
           "OFF_DEV_PCPU_REFCNT": 1232, "OFF_DST_DEV": 0}


def test_a_tracker_kernel_gets_the_ref_tracker_strategy():
    lines = _synthetic_kallsyms("ref_tracker_alloc", "ref_tracker_free")
    offsets = dict(OFFSETS, OFF_DEV_REFCNT_TRACKER=1240)
    plan = make_plan(SymbolTable.from_kallsyms(lines), offsets, symbol_address(lines, "__per_cpu_offset", DATA_TYPES), 4, 1,
                     ALL, True, 7)
    assert plan.strategies == ["watch", "holders", "ref_tracker"]
    assert plan.params["OFF_DEV_REFCNT_TRACKER"] == 1240 and "TRACKER" in plan.flags
    assert [(a.event, a.fn_name) for a in plan.kprobes if "tracker" in a.fn_name] == [
        ("ref_tracker_alloc", "tracker_alloc_entry"), ("ref_tracker_free", "tracker_free_entry")]


def test_without_data_symbols_the_watch_is_off_and_the_level_unknown():
    lines = _synthetic_kallsyms()[:-1]
    plan = make_plan(SymbolTable.from_kallsyms(lines), OFFSETS, None, 2, 1, ALL, True, 7)
    assert plan.strategies == ["holders"] and "LEVEL_UNKNOWN" in plan.flags
    assert plan.off["watch"] == "the counter's per-cpu slots cannot be located (see notes)"
    assert plan.notes[0].startswith("__per_cpu_offset is not in /proc/kallsyms")
    assert plan.holders == ["dst"]         # neigh & co. are not in this kallsyms


def test_a_refcount_t_kernel_watches_one_address_and_needs_no_per_cpu_offsets():
    offsets = dict(OFFSETS)
    del offsets["OFF_DEV_PCPU_REFCNT"]
    offsets["OFF_DEV_REFCOUNT_T"] = 1236
    plan = make_plan(SymbolTable.from_kallsyms(_synthetic_kallsyms()), offsets, None, 200, 1, ["watch"], False, 7)
    assert (plan.pcpu, plan.strategies, plan.params["OFF_DEV_REFCNT"]) == (False, ["watch"], 1236)
    assert "DEV_REFCNT_PCPU" not in plan.flags and "WATCH_NEW" not in plan.flags


def test_renamed_lookup_function_and_missing_hooks():
    lines = [l.replace("dev_get_flags", "netif_get_flags") for l in _synthetic_kallsyms()]    # v6.18
    plan = make_plan(SymbolTable.from_kallsyms(lines), OFFSETS, None, 2, 1, ["holders"], True, 7)
    assert plan.kprobes[0].event == "netif_get_flags"
    with pytest.raises(MissingHook) as info:
        make_plan(SymbolTable.from_kallsyms([l for l in lines if "free_netdev" not in l]), OFFSETS, None, 2, 1,
                  ["holders"], True, 7)
    assert info.value.wanted == "free_netdev"
    with pytest.raises(MissingOffsets):
        make_plan(SymbolTable.from_kallsyms(lines), {}, None, 2, 1, ["holders"], True, 7)


def test_base_references_from_the_config_btf_or_release():
    assert base_references("6.1.0-56-amd64", {"CONFIG_PCPU_DEV_REFCNT": "y"}, False) == 1
    assert base_references("6.1.0", {"CONFIG_PCPU_DEV_REFCNT": "n"}, False) == 1
    assert base_references("5.10.0-46-amd64", {"CONFIG_NET": "y"}, False) == 0
    assert base_references("6.18.0", None, True) == 1
    assert (base_references("5.12.1", None, False), base_references("5.13.0", None, False)) == (0, 1)


def test_ebpf_prints_the_plan_and_the_program(bpftools_cli):
    r = bpftools_cli("refleak", "--ebpf", "--strategy", "holders")
    if r.code != 0:       # this machine may lack the hooks: then the error names them
        assert "missing kernel feature" in r.err
        return
    head, _, rest = r.out.partition("// cflags: ")
    assert head.startswith("// strategies: holders\n")
    assert "-DSELF_TGID=" in rest and "int lookup_entry(struct pt_regs *ctx)" in rest


# ---- watchpoints -----------------------------------------------------------------------------------

def test_breakpoint_attr_is_a_disabled_4_byte_write_watch_sampling_every_hit():
    attr = breakpoints.breakpoint_attr(0xffffed79bfc007c8)
    assert (attr.type, attr.size, attr.bp_type, attr.bp_addr, attr.bp_len, attr.sample_period, attr.flags) == (
        5, 72, 2, 0xffffed79bfc007c8, 4, 1, 1)


def test_arming_reports_the_cpus_whose_debug_registers_are_full():
    opened, closed, attached = [], [], []

    def opener(addr, cpu, length):
        if cpu == 1 and len([o for o in opened if o[1] == 1]) >= 4:
            raise OSError(errno.ENOSPC, "full")
        opened.append((addr, cpu))
        return 100 + len(opened)

    wp = breakpoints.Watchpoints(opener=opener, attacher=lambda fd, prog: attached.append((fd, prog)))
    real_close = os.close
    os.close = lambda fd: closed.append(fd)
    try:
        for dev in range(4):
            assert wp.arm(dev, {0: 0x1000 + dev, 1: 0x2000 + dev}, 9).complete
        fifth = wp.arm(4, {0: 0x1004, 1: 0x2004}, 9)
        assert (fifth.cpus, fifth.failed, fifth.complete) == ([0], {1: "ENOSPC"}, False)
        assert wp.armed(4) == [0]
        assert wp.disarm(4) == {0: None} and closed == [109]       # a fake fd: its count cannot be read
        assert wp.keys() == [0, 1, 2, 3]
        wp.close()
        assert sorted(closed) == list(range(101, 110))
    finally:
        os.close = real_close
    assert attached[0] == (101, 9)


def test_a_watchpoint_counts_every_write_it_traps():
    """A real breakpoint on a variable of this process (no BPF program): perf's count is the hits."""
    value = ctypes.c_int(0)
    try:
        fd = breakpoints.open_breakpoint(ctypes.addressof(value), cpu=-1, pid=0)
    except OSError as err:
        pytest.skip("no hardware breakpoints here: %s" % err)
    wp = breakpoints.Watchpoints(opener=lambda addr, cpu, length: fd,
                                 attacher=lambda fd, prog: fcntl.ioctl(fd, breakpoints.PERF_EVENT_IOC_ENABLE, 0))
    assert wp.arm(7, {0: ctypes.addressof(value)}, -1).complete
    for i in range(5):
        value.value = i + 1
    _ = value.value                                   # a read: not a hit of a write watchpoint
    assert wp.disarm(7) == {0: 5}
    value.value = 9                                   # disarmed and closed
    assert wp.keys() == []


def test_cpu_lists():
    assert cpus.parse_cpu_list("0-3,5") == [0, 1, 2, 3, 5]
    assert cpus.parse_cpu_list("0\n") == [0]
    assert breakpoints.slot_limit("x86_64") == 4 and breakpoints.slot_limit("s390x") is None


# ---- inline sites --------------------------------------------------------------------------------

def _site(caller, offset, delta=1, module=None, reg="di", kind="reg", off=0):
    dev = types.SimpleNamespace(kind=kind, reg=reg, offset=off) if reg else None
    return types.SimpleNamespace(helper="dev_hold", delta=delta, caller=caller, offset=offset, module=module, dev=dev)


def test_site_entries_key_by_the_probed_address_and_say_what_was_left_out():
    addresses = text_addresses([
        "ffffffffc0a01000 t bpftools_devref_take\t[bpftools_devref]",
        "ffffffffc0a01040 t bpftools_devref_drop\t[bpftools_devref]",
        "ffffffff817d79d0 T dev_get_by_name", "ffffffff81000000 t dup", "ffffffff81000100 t dup",
        "ffffffff82000000 D some_data"])
    sites = [_site("bpftools_devref_take", 0xb, module="bpftools_devref"),
             _site("bpftools_devref_drop", 0xb, delta=-1, module="bpftools_devref"),
             _site("dev_get_by_name", 117, reg="bx"), _site("dup", 4), _site("gone", 4, module="veth"),
             _site("dev_get_by_name", 9, reg=None), _site("dev_get_by_name", 12, reg="orig_ax")]
    usable, skipped = site_entries(sites, addresses)
    assert [(hex(a), s.caller, s.delta) for a, s in usable] == [
        ("0xffffffffc0a0100b", "bpftools_devref_take", 1), ("0xffffffffc0a0104b", "bpftools_devref_drop", -1),
        ("0xffffffff817d7a45", "dev_get_by_name", 1)]
    assert skipped == {"caller name not unique": 1, "caller not in kallsyms (module veth not loaded)": 1,
                       "no device location": 1, "device in register orig_ax": 1}


# ---- devices ----------------------------------------------------------------------------------------

def test_selector_matches_names_and_namespaces():
    sel = Selector(["veth*", "eth0"], {4026532281: "pod-a"})
    assert [sel.matches(n, ns) for n, ns in (("veth12", 4026532281), ("eth0", 4026532281), ("eth0", 1), ("lo", 4026532281))] == [
        True, True, False, False]
    assert Selector().everything_new and Selector().matches("anything", None)
    assert sel.describe() == "devices veth*, eth0 in pod-a"
    assert list(find_existing(Selector(), lambda name: True)) == []
    assert validate_pattern("bpft-*") == "bpft-*"
    with pytest.raises(BadInput):
        make_selector([], ["/nonexistent/netns/file"])


# ---- capture: decoding and the device lifecycle on fakes -------------------------------------------

class FakeTable(dict):
    def __init__(self, leaf=None):
        super(FakeTable, self).__init__()
        self.leaf = leaf

    @staticmethod
    def _key(key):
        return key.value if hasattr(key, "value") else key

    def __setitem__(self, key, value):
        super(FakeTable, self).__setitem__(self._key(key), value.value if hasattr(value, "value") else value)

    def __getitem__(self, key):
        value = super(FakeTable, self).__getitem__(self._key(key))
        return types.SimpleNamespace(value=value) if isinstance(value, int) else value

    def __delitem__(self, key):
        super(FakeTable, self).__delitem__(self._key(key))

    def get(self, key, default=None):
        return self[key] if self._key(key) in self else default

    def walk(self, stack_id):
        return {7: [0x10, 0x20], 8: [0x99]}[stack_id]


class FakeBpf(object):
    """The maps the Session touches; getppid() (the sync) is simulated by Session tests."""

    def __init__(self):
        self.maps = {"ctl": FakeTable(), "cpu_offsets": FakeTable(), "watched": FakeTable(), "slots": FakeTable(),
                     "stacks": FakeTable(), "watch_runs": FakeTable()}
        self.maps["cpu_offsets"][0] = 0x1000
        self.maps["cpu_offsets"][1] = 0x2000

    def __getitem__(self, name):
        return self.maps[name]

    def ksym(self, addr, show_offset=False):
        return {0x10: b"bpftools_devref_take+0x14", 0x20: b"devref_write+0x251"}[addr]


def raw(**fields):
    base = dict(ts_ns=1, dev=0xffff8c2aa585c000, obj=0, aux=0, cgroup_id=0, level=0, type=0, tgid=5, tid=5,
                cpu=0, kstack=-1, delta=0, strategy=0, kind=0, func=0, flags=0, ifindex=0, netns=0,
                comm=b"sh\0", name=b"\0")
    base.update(fields)
    return types.SimpleNamespace(**base)


def _plan(flags=()):
    return types.SimpleNamespace(flags=list(flags), base_refs=1, strategies=["watch", "holders"])


def test_decoder_turns_each_record_kind_into_its_event():
    dec = Decoder(FakeBpf(), _plan())
    assert dec(raw(type=1, name=b"rln\0x", ifindex=2, netns=4026532281, flags=3, aux=0x614ee8c007c8, level=8)) == {
        "type": "device", "ts_ns": 1, "dev": "0xffff8c2aa585c000", "tgid": 5, "tid": 5, "cpu": 0, "comm": "sh",
        "name": "rln", "ifindex": 2, "netns": 4026532281, "how": "registered", "pcpu": True,
        "counter": "0x614ee8c007c8", "level": 8, "base_refs": 1}
    ref = dec(raw(type=3, strategy=1, delta=1, obj=0xffffed79bfc007c8, aux=10, kstack=7, flags=0))
    assert (ref["type"], ref["strategy"], ref["delta"], ref["addr"], ref["value"], ref["gap"], ref["stack"]) == (
        "ref", "watch", 1, "0xffffed79bfc007c8", 10, False, ["bpftools_devref_take+0x14", "devref_write+0x251"])
    assert dec(raw(type=3, strategy=1, delta=-1, aux=(1 << 64) - 3))["value"] == -3
    assert dec(raw(type=3, strategy=2, delta=-1, obj=0xabc))["tracker"] == "0xabc"
    end = dec(raw(type=5, kind=1, func=1, obj=0xd5))
    assert (end["type"], end["kind"], end["obj"], end["func"], end["stack"]) == ("holder_end", "dst", "0xd5",
                                                                                 "dst_dev_put", None)
    fnhe = dec(raw(type=6, kind=1, obj=0xd5, aux=0xf5, flags=8))
    assert (fnhe["fnhe"], fnhe["input"]) == ("0xf5", True)
    assert dec(raw(type=9, level=4)) == {"type": "dropped", "count": 4, "source": "kernel_map_full", "ts_ns": 1}
    assert dec(raw(type=9, level=8))["count"] == 4
    assert Decoder(FakeBpf(), _plan(flags=["LEVEL_UNKNOWN"]))(raw(type=2, level=0))["level"] is None


class FakeWatchpoints(object):
    def __init__(self, free=4):
        self.free = free
        self.armed = {}
        self.hits = {}           # by address: what perf would count

    def keys(self):
        return sorted(self.armed)

    def arm(self, key, addrs, prog_fd):
        result = breakpoints.Armed(key)
        for cpu in sorted(addrs):
            if self.free > 0:
                result.cpus.append(cpu)
            else:
                result.failed[cpu] = "ENOSPC"
        if result.cpus:
            self.armed[key] = addrs
        self.free -= 1 if result.complete else 0
        return result

    def disarm(self, key):
        addrs = self.armed.pop(key, None)
        if addrs is None:
            return {}
        self.free += 1
        return dict((cpu, self.hits.get(addr, 0)) for cpu, addr in addrs.items())

    def close(self):
        self.armed.clear()


def _session(monkeypatch, selector, free=4):
    emitted, said, synced = [], [], []
    bpf = FakeBpf()
    plan = types.SimpleNamespace(flags=[], base_refs=1, strategies=["watch", "holders"])
    session = Session(plan, selector, emitted.append, said.append, watchpoints=FakeWatchpoints(free))
    session.bpf, session.decode, session.prog_fd, session.cpus = bpf, Decoder(bpf, plan), 3, [0, 1]

    def getppid():       # the program's sync: it reads the device the request names
        dev = bpf["ctl"].get(1).value
        if dev:
            synced.append(dev)
            bpf["ctl"][2] = 1
        return 1
    monkeypatch.setattr(os, "getppid", getppid)
    return session, emitted, said, synced


def test_session_watches_wanted_devices_and_drops_the_others_records(monkeypatch):
    session, emitted, said, synced = _session(monkeypatch, Selector(["rln"]))
    session.on_raw(raw(type=4, dev=0xd1, kind=2, obj=0xa1))                 # before its announcement: kept
    session.on_raw(raw(type=1, dev=0xd1, name=b"rln", flags=3, aux=0x3000, level=10))
    session.on_raw(raw(type=1, dev=0xd2, name=b"lo", flags=3, aux=0x4000, level=1))
    session.on_raw(raw(type=4, dev=0xd2, kind=2, obj=0xa2))                 # lo: not wanted, dropped
    assert [(e["type"], e.get("name") or e.get("obj")) for e in emitted] == [
        ("device", "rln"), ("holder_new", "0xa1"), ("watch", None)]
    assert emitted[2]["armed"] is True and emitted[2]["cpus"] == [0, 1]
    assert session.watchpoints.armed[0xd1] == {0: 0x4000, 1: 0x5000}        # counter + each CPU's offset
    assert synced == [0xd1]
    assert 0xd2 not in session.bpf["watched"] and said[0].startswith("watching rln (ifindex 0")


def test_a_device_waits_for_a_free_debug_register_and_is_armed_when_one_is_freed(monkeypatch):
    session, emitted, said, synced = _session(monkeypatch, Selector(), free=1)
    session.on_raw(raw(type=1, dev=0xd1, name=b"a", flags=3, aux=0x3000))
    session.on_raw(raw(type=1, dev=0xd2, name=b"b", flags=3, aux=0x6000))
    watches = [e for e in emitted if e["type"] == "watch"]
    assert [(w["dev"], w["armed"], w.get("reason")) for w in watches] == [
        ("0xd1", True, None), ("0xd2", False, "no free debug register on cpu 0, 1")]
    session.on_raw(raw(type=8, dev=0xd1, level=1))                           # a is freed
    watches = [e for e in emitted if e["type"] == "watch"]
    assert (watches[-1]["dev"], watches[-1]["armed"]) == ("0xd2", True)
    # b is synced when announced (the baseline of the other strategies) and again once armed
    assert synced == [0xd1, 0xd2, 0xd2] and session.waiting_slots == []


def test_the_end_of_a_watch_compares_the_hits_with_the_runs_of_our_program(monkeypatch):
    session, emitted, said, synced = _session(monkeypatch, Selector())
    session.on_raw(raw(type=1, dev=0xd1, name=b"a", flags=3, aux=0x3000))
    session.watchpoints.hits = {0x4000: 7, 0x5000: 2}                        # counter 0x3000 + each CPU's offset
    runs = lambda *per_cpu: [types.SimpleNamespace(runs=r, in_sync=s) for r, s in per_cpu]
    session.bpf["watch_runs"][0x4000] = runs((5, 1), (0, 0))                # cpu 0 ran 5 of its 7 hits
    session.bpf["watch_runs"][0x5000] = runs((0, 0), (2, 0))
    session.on_raw(raw(type=8, dev=0xd1, level=1))                           # freed: the watch ends
    end = emitted[-1]
    assert (end["type"], end["dev"], end["hits"], end["runs"], end["skipped"], end["in_sync"], end["cpus"]) == (
        "watch_end", "0xd1", 9, 7, 2, 1, {"0": [7, 5], "1": [2, 2]})
    assert dict(session.bpf["watch_runs"]) == {} and session.watchpoints.armed == {}


def test_a_freed_devices_writes_read_late_from_another_cpus_buffer_are_kept(monkeypatch):
    session, emitted, said, synced = _session(monkeypatch, Selector())
    session.on_raw(raw(type=1, dev=0xd1, name=b"a", flags=3, aux=0x3000, ts_ns=10))
    session.on_raw(raw(type=8, dev=0xd1, level=1, ts_ns=50, cpu=0))           # the free, from cpu 0's ring
    session.on_raw(raw(type=3, dev=0xd1, strategy=1, delta=-1, ts_ns=40, cpu=1))   # cpu 1's ring: before it
    session.on_raw(raw(type=3, dev=0xd1, strategy=1, delta=1, ts_ns=60, cpu=1))    # after it: not this device's
    assert [(e["type"], e["ts_ns"]) for e in emitted if e["type"] in ("free", "ref")] == [("free", 50), ("ref", 40)]


def test_a_new_device_on_a_freed_devices_counter_ends_that_watch_first(monkeypatch):
    session, emitted, said, synced = _session(monkeypatch, Selector())
    session.on_raw(raw(type=1, dev=0xd1, name=b"a", flags=3, aux=0x3000, ts_ns=10))
    session.on_raw(raw(type=1, dev=0xd2, name=b"b", flags=3, aux=0x3000, ts_ns=60))   # a's free not read yet
    assert [(e["type"], e["dev"]) for e in emitted if e["type"] in ("watch", "watch_end")] == [
        ("watch", "0xd1"), ("watch_end", "0xd1"), ("watch", "0xd2")]
    assert sorted(session.watchpoints.armed) == [0xd2]
    session.on_raw(raw(type=8, dev=0xd1, level=1, ts_ns=50))                            # now it is
    assert [e["dev"] for e in emitted if e["type"] == "watch_end"] == ["0xd1"] and 0xd2 in session.watchpoints.armed


def test_the_end_of_the_run_ends_the_watches_still_armed(monkeypatch):
    session, emitted, said, synced = _session(monkeypatch, Selector())
    session.on_raw(raw(type=1, dev=0xd1, name=b"a", flags=3, aux=0x3000))
    session.end_watches()
    assert [(e["type"], e["hits"], e["skipped"]) for e in emitted if e["type"] == "watch_end"] == [
        ("watch_end", 0, 0)]
    assert session.watchpoints.armed == {}


def test_a_record_that_cannot_be_processed_becomes_a_gap(monkeypatch):
    session, emitted, said, synced = _session(monkeypatch, Selector())
    session.on_raw(raw(type=3, strategy=1, kstack=8))      # a frame the fake cannot name: KeyError
    assert emitted[-1]["type"] == "lost" and emitted[-1]["source"] == "decode_error"
    assert said and said[0].startswith("cannot process a record: KeyError")


# ---- reports of lab recordings -------------------------------------------------------------------

@pytest.mark.parametrize("path", LEAK, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_report_of_a_lab_leak_recording(bpftools_cli, tmp_path, path):
    r = bpftools_cli("report", path)
    assert r.code == 0, r.err
    assert "rln (ifindex " in r.out and "freed" in r.out and "no leak" in r.out
    out = tmp_path / "report"
    r = bpftools_cli("report", path, "--report", str(out))
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["refleak.folded", "refleak.speedscope.json", "refleak.svg",
                                                    "report.html"]
    html = (out / "report.html").read_text()
    assert "Balance per device and strategy" in html and "Holders alive at unregister" in html


@pytest.mark.parametrize("path", LEAK, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_the_report_while_the_device_waits_names_the_leak(path):
    from io import StringIO
    from rich.console import Console
    from bpftools.analyses.refbalance import analyze
    from bpftools.tools.refleak import folded_text, render_result
    events = read_recording(path).events
    drop = min(e["ts_ns"] for e in events if e["type"] == "ref" and "bpftools_devref_drop" in json.dumps(e["stack"]))
    result = analyze([e for e in events if e.get("ts_ns") is None or e["ts_ns"] < drop])
    console = Console(file=StringIO(), width=200)
    render_result(result, console)
    text = console.file.getvalue()
    device = result.device("rln")
    base = 0 if os.path.basename(os.path.dirname(path)).startswith("5.10") else 1
    assert "leaking: rln" in text.splitlines()[0]
    assert ("rln (ifindex %d, netns %d, existing) unregistered, not freed, %d reference(s) now: LEAK, waiting for 1 "
            "reference(s)" % (device.ifindex, device.netns, base + 1)) in text
    takes = [l for l in text.splitlines() if "bpftools_devref_take" in l]
    assert [l.split()[:2] for l in takes] == [["watch", "+1"], ["inline", "+1"]]
    assert folded_text(result).splitlines() == [
        "[rln ifindex %d];[%s];entry_SYSCALL_64_after_hwframe;do_syscall_64;ksys_write;vfs_write;proc_reg_write;"
        "devref_write;bpftools_devref_take 1" % (device.ifindex, s) for s in ("inline", "watch")]


def test_the_report_counts_every_record_in_the_activity_timeline_and_marks_the_device_records():
    path = os.path.join(os.path.dirname(FIXTURES), "streaming", "synthetic-refleak.jsonl.gz")
    rec = read_recording(path)
    report = refleak.incident_report(rec.header, iter(rec.events), "2026-01-01T00:00:00Z")
    data = report.activity.to_json()
    refs = [e for e in rec.events if e["type"] == "ref"]
    assert dict((kind, sum(row)) for kind, row in data["counts"].items()) == {
        "device": 20, "hold": sum(1 for e in refs if e["delta"] > 0), "put": sum(1 for e in refs if e["delta"] < 0)}
    assert len(data["counts"]["hold"]) <= 240 and data["start_ns"] <= 1
    assert report.timeline == [(1 + d, "device 0x%x" % (0xffff888000000000 + d * 0x1000), "device") for d in range(20)]
    assert report.notes == []
    html = render_html(report)
    assert "All {:,} event(s) of the recording, counted in spans of".format(len(refs) + 20) in html
    assert sorted(json.loads(embedded_json(html))["activity"]["counts"]) == ["device", "hold", "put"]


def test_the_report_marks_the_first_device_records_and_counts_the_others(monkeypatch):
    monkeypatch.setattr(refleak, "MAX_TIMELINE_MARKERS", 3)
    events = [{"type": "plan", "strategies": ["watch"]}]
    for i in range(5):
        dev = "0x%x" % (i + 1)
        events += [{"type": "device", "dev": dev, "name": "veth%d" % i, "ifindex": i, "ts_ns": 10 * i, "level": 1,
                    "base_refs": 1},
                   {"type": "unregister", "dev": dev, "ts_ns": 10 * i + 1, "level": 1},
                   {"type": "free", "dev": dev, "ts_ns": 10 * i + 2, "level": 1},
                   {"type": "lost", "count": 4, "source": "perf_buffer", "ts_ns": 10 * i + 3}]
    report = refleak.incident_report({"tool": "refleak"}, iter(events), "2026-01-01T00:00:00Z")
    assert [label for _, label, _ in report.timeline] == ["device 0x1", "unregister 0x1", "free 0x1"]
    assert report.notes == ["the timeline marks the first 3 device records: 12 more are counted in its lanes only"]
    counts = dict((kind, sum(row)) for kind, row in report.activity.to_json()["counts"].items())
    assert counts == {"device": 5, "unregister": 5, "free": 5, "records lost": 20}


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_live_run_balances_the_records_as_they_come_not_kept(monkeypatch, capsys, interrupted):
    """The capture's records go through the analysis one by one: the end (or Ctrl-C) reports what the
    recording's analysis reports."""
    events = read_recording(LEAK[-1]).events
    fed = []

    class FakeSession(object):
        def __init__(self, plan, selector, emit, say, sites=()):
            self.emit = emit

    def fake_run(session, duration, ready):
        for event in events[1:]:
            session.emit(event)
            fed.append(event)
        if interrupted:
            raise KeyboardInterrupt()

    monkeypatch.setattr(refleak, "Session", FakeSession)
    monkeypatch.setattr(refleak, "run", fake_run)
    plan = types.SimpleNamespace(to_json=lambda: events[0])
    assert events[0]["type"] == "plan" and len(events) > 10
    if interrupted:
        with pytest.raises(KeyboardInterrupt):
            refleak._run(plan, None, [], None, True, None, None, None, None, None)
    else:
        refleak._run(plan, None, [], None, True, None, None, None, None, None)
    assert fed == events[1:]
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(refleak.analyze(events).to_json()))


def test_on_rhel76_the_neigh_holder_follows_the_310_constructor():
    """3.10 has __neigh_create(tbl, pkey, dev, want_ref), no ___neigh_create (kernel-facts.md; the
    3.10.0-957 kallsyms fixture); newer kernels have both, and the inner ___neigh_create is taken."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "kallsyms",
                        "3.10.0-957.el7.x86_64.kallsyms")
    with open(path) as f:
        lines = f.read().splitlines()
    # the lifecycle hooks every plan needs (3.10 net/core/dev.c has them; the fixture lists the probed
    # functions of the incidents only)
    lines += ["ffffffff81005400 T dev_get_flags", "ffffffff81005500 T free_netdev"]
    table = SymbolTable.from_kallsyms(lines)
    assert table.has("__neigh_create") and not table.has("___neigh_create")
    plan = make_plan(table, {}, None, 4, 0, ["holders"], False, 7, cgroup_id=False, headers=True)
    assert "neigh" in plan.holders
    assert [(a.event, a.fn_name, a.ret) for a in plan.kprobes if "neigh_create" in a.fn_name] == [
        ("__neigh_create", "neigh_create_return", True), ("__neigh_create", "neigh_create_entry", False)]
    both = SymbolTable.from_kallsyms(lines + ["ffffffff8100dd00 T ___neigh_create"])
    plan = make_plan(both, {}, None, 4, 0, ["holders"], False, 7, cgroup_id=False, headers=True)
    assert set(a.event for a in plan.kprobes if "neigh_create" in a.fn_name) == {"___neigh_create"}


def test_without_the_breakpoint_address_the_watch_is_off_and_says_why():
    """A perf_event program reads the trapped address from ctx->addr (bpf_perf_event_data.addr, about
    4.17): where the kernel lacks it (3.10), the watch strategy is off with that reason."""
    lines = _synthetic_kallsyms()
    table = SymbolTable.from_kallsyms(lines)
    per_cpu = symbol_address(lines, "__per_cpu_offset", DATA_TYPES)
    assert "watch" in make_plan(table, OFFSETS, per_cpu, 2, 1, ALL, True, 7).strategies
    plan = make_plan(table, OFFSETS, per_cpu, 2, 1, ALL, True, 7, perf_addr=False)
    assert "watch" not in plan.strategies and "WATCH" not in plan.flags
    assert plan.off["watch"] == ("this kernel's perf_event programs cannot read the breakpoint address "
                                 "(bpf_perf_event_data.addr, Linux 4.17)")
