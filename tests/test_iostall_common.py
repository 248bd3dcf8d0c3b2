"""The plumbing of the I/O-stall tools: tracepoint formats, BTF offsets, plans, cgroup filter (no root needed)."""
import os
import struct

import pytest

from bpftools.kernel import btf as _btf
from bpftools.iostall import program as io
from bpftools.iostall.writeback import kernel_dev
from bpftools.iostall.face import cgroup_matches
from bpftools.kernel import structs
from bpftools.kernel.tracefs import tracepoint_fields

KMEM_CACHE_ALLOC_6_18 = """name: kmem_cache_alloc
ID: 476
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long call_site;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * ptr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:0;
\tfield:size_t bytes_req;\toffset:32;\tsize:8;\tsigned:0;
\tfield:char comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:bool accounted;\toffset:60;\tsize:1;\tsigned:0;

print fmt: "call_site=%pS ptr=%p name=%s", (void *)REC->call_site, REC->ptr, __get_str(name)
"""


def test_tracepoint_fields_from_a_format_file(tmp_path):
    fmt = tmp_path / "events" / "kmem" / "kmem_cache_alloc" / "format"
    fmt.parent.mkdir(parents=True)
    fmt.write_text(KMEM_CACHE_ALLOC_6_18)
    assert tracepoint_fields("kmem", "kmem_cache_alloc", tracefs=str(tmp_path)) == {
        "common_type", "common_pid", "call_site", "ptr", "name", "bytes_req", "comm", "accounted"}
    assert tracepoint_fields("kmem", "kmalloc", tracefs=str(tmp_path)) is None


def _btf_blob():
    """A hand-made BTF: int, struct outer { int a; union { int b; struct { int c; int d; }; }; }."""
    strings = b"\0int\0outer\0a\0b\0c\0d\0"
    off = dict((name, strings.index(b"\0" + name.encode() + b"\0") + 1) for name in ("int", "outer", "a", "b", "c", "d"))
    types = b""
    types += struct.pack("<III", off["int"], 1 << 24, 4) + struct.pack("<I", 32)                 # 1: int
    types += struct.pack("<III", 0, (4 << 24) | 2, 8)                                           # 2: anon struct
    types += struct.pack("<III", off["c"], 1, 0) + struct.pack("<III", off["d"], 1, 32)
    types += struct.pack("<III", 0, (5 << 24) | 2, 8)                                           # 3: anon union
    types += struct.pack("<III", off["b"], 1, 0) + struct.pack("<III", 0, 2, 0)
    types += struct.pack("<III", 0, 10 << 24, 3)                                                # 4: const union
    types += struct.pack("<III", off["outer"], (4 << 24) | 2, 12)                               # 5: struct outer
    types += struct.pack("<III", off["a"], 1, 0) + struct.pack("<III", 0, 4, 32)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_btf_member_offsets_look_into_anonymous_unions_and_structs(tmp_path):
    btf = _btf.Btf(_btf_blob())
    assert [btf.member_offset("outer", m) for m in ("a", "b", "c", "d", "e")] == [0, 4, 4, 8, None]
    assert btf.member_offset("inner", "a") is None
    path = tmp_path / "vmlinux"
    path.write_bytes(_btf_blob())
    assert _btf.offsets({"X": [("nope", "a"), ("outer", "d")], "Y": [("outer", "zz")]}, str(path)) == {"X": 8}
    assert _btf.offsets({"X": [("outer", "a")]}, str(tmp_path / "missing")) == {}
    with pytest.raises(_btf.BtfError):
        _btf.Btf(b"\x00" * 32)


@pytest.mark.skipif(not os.access(_btf.VMLINUX, os.R_OK), reason="no readable kernel BTF")
def test_btf_of_this_kernel_knows_fixed_uapi_layouts():
    btf = _btf.Btf.from_file()
    assert (btf.member_offset("list_head", "prev"), btf.member_offset("sockaddr_in", "sin_port"),
            btf.member_offset("sockaddr_in", "sin_addr")) == (8, 2, 4)
    found = structs.offsets(io.STRUCT_MEMBERS)
    assert set(found) == set(io.STRUCT_MEMBERS)          # every offset the kprobe modes read
    assert found["OFF_MAPPING_HOST"] == 0 and found["OFF_WBC_NR_TO_WRITE"] == 0   # first members in 6.x


def test_plans_merge_and_describe():
    a = io.Plan(mode="tracepoint", flags=["WANT_SLAB", "HAVE_TP_NAME"], params={"FILTER_TGID": 7},
                notes=["slab note"])
    b = io.Plan(mode="kprobe", flags=["WANT_WB_KPROBE", "WANT_SLAB"], params={"WB_MIN_NS": 5},
                kprobes=[io.Attach("do_writepages", "wb_entry_0")], slots={0: "do_writepages"})
    m = a.merge(b)
    assert (m.mode, m.flags, m.params, m.slots) == (
        "tracepoint", ["HAVE_TP_NAME", "WANT_SLAB", "WANT_WB_KPROBE"], {"FILTER_TGID": 7, "WB_MIN_NS": 5},
        {0: "do_writepages"})
    assert m.to_json()["kprobes"] == [{"event": "do_writepages", "fn_name": "wb_entry_0", "ret": False}]
    text = m.describe()
    assert text.splitlines()[:3] == ["// mode: tracepoint", "// slab note", "// attach kprobe do_writepages -> wb_entry_0"]
    assert "-DFILTER_TGID=7 -DWB_MIN_NS=5 -DHAVE_TP_NAME -DWANT_SLAB -DWANT_WB_KPROBE" in text


def test_kprobe_mode_without_kprobes_names_the_fallback():
    with pytest.raises(io.MissingKernelFeature) as err:
        io.choose_mode("kprobe", False, "writeslow")
    assert str(err.value) == "missing kernel feature: kprobes (CONFIG_KPROBES) for writeslow; try: --mode tracepoint"
    assert [io.choose_mode(m, k, "x") for m, k in (("auto", True), ("auto", False), ("tracepoint", True))] == [
        "kprobe", "tracepoint", "tracepoint"]


@pytest.mark.parametrize("cgroup, want, expected", [
    ("/kubepods/burstable/pod1/abc", "kubepods", True), ("/kubepods/burstable/pod1/abc", "/kubepods/", True),
    ("/kubepods.slice/x", "kubepods", False), ("/", "kubepods", False), (None, "kubepods", False),
    ("/anything", None, True), (None, None, True), ("/a", "/", True)])
def test_cgroup_filter(cgroup, want, expected):
    assert cgroup_matches(cgroup, want) is expected


def test_kernel_dev_numbers():
    assert [kernel_dev(d) for d in ((7 << 20) | 1, (259 << 20) | 65536, 0)] == ["7:1", "259:65536", "0:0"]


def test_a_kernel_drop_report_counts_the_drops_since_the_last_one():
    class Raw(object):
        def __init__(self, dropped):
            self.dropped = dropped
    decoder = io.Decoder(bpf=None, plan=io.Plan(mode="tracepoint"))
    decoder.seen(500)
    decoder.seen(400)
    first, second = decoder.dropped(Raw(1)), decoder.dropped(Raw(4))
    assert (first.to_json(), second.to_json()) == (
        {"type": "lost", "count": 1, "source": "kernel_map_full", "ts_ns": 500},
        {"type": "lost", "count": 3, "source": "kernel_map_full", "ts_ns": 500})
