"""Live patches in the known-bug matrix: sysfs trees laid out as the kernel and kpatch lay them out,
read by bpftools.kernel.livepatch, and the matrix's answer for each case."""
import io
import json
import os

from rich.console import Console

from bpftools import render
from bpftools.analyses.known_bugs import (AFFECTED, FIXED, FNHE_DEL_RACE, SLUB_DEAD_CACHES, UNKNOWN,
                                          apply_live_patches, check_release)
from bpftools.cli import main
from bpftools.doctor import run_doctor
from bpftools.kernel.livepatch import livepatch_modules, read_live_patches

RHEL76 = "3.10.0-957.el7.x86_64"


def livepatch_tree(root, name, functions, enabled=1, transition=0, with_transition=True):
    """/sys/kernel/livepatch/NAME as the kernel lays it out (Documentation/ABI/testing/
    sysfs-kernel-livepatch): enabled, transition (4.12+), <object>/<function,sympos>/."""
    base = root / "sys" / "kernel" / "livepatch" / name
    base.mkdir(parents=True)
    (base / "enabled").write_text("%d\n" % enabled)
    if with_transition:
        (base / "transition").write_text("%d\n" % transition)
    for obj, func, pos in functions:
        (base / obj).mkdir(exist_ok=True)
        (base / obj / "patched").write_text("1\n")
        (base / obj / ("%s,%d" % (func, pos))).mkdir()
    return base


def kpatch_tree(root, name, functions, enabled=1, old_abi=False):
    """The kpatch core module's layout (kpatch v0.6.3 kmod/patch/kpatch-patch-hook.c): /sys/kernel/kpatch/
    <patch>/{enabled,checksum}, <object>/<function,sympos>/{old_addr,new_addr}; before kpatch 0.4
    the patches sat under /sys/kernel/kpatch/patches/."""
    base = root / "sys" / "kernel" / "kpatch" / ("patches" if old_abi else "") / name
    base.mkdir(parents=True)
    (base / "enabled").write_text("%d\n" % enabled)
    (base / "checksum").write_text("0123abcd\n")
    for obj, func, pos in functions:
        (base / obj / ("%s,%d" % (func, pos))).mkdir(parents=True)
        (base / obj / ("%s,%d" % (func, pos)) / "old_addr").write_text("0xffffffff81234560\n")
    return base


def proc(root, modules="", tainted=0):
    (root / "proc" / "sys" / "kernel").mkdir(parents=True)
    (root / "proc" / "sys" / "kernel" / "tainted").write_text("%d\n" % tainted)
    (root / "proc" / "modules").write_text(modules)


def matrix(root, release=RHEL76):
    found = read_live_patches(str(root))
    rows = apply_live_patches(check_release(release), [p.to_json() for p in found.patches])
    return dict((r.id, r) for r in rows), found


def test_the_rhel76_release_alone_is_affected(tmp_path):
    rows, found = matrix(tmp_path)
    assert found.patches == [] and found.tainted is None
    assert rows[FNHE_DEL_RACE].status == AFFECTED and rows[FNHE_DEL_RACE].fix_functions == ["ip_del_fnhe"]


def test_a_livepatch_replacing_ip_del_fnhe_fixes_the_fnhe_race(tmp_path):
    livepatch_tree(tmp_path, "kpatch_fnhe", [("vmlinux", "ip_del_fnhe", 1)])
    proc(tmp_path, "kpatch_fnhe 20480 1 - Live 0xffffffffc0a00000 (OEK)\nveth 28672 0 - Live 0x0\n", 1 << 15)
    rows, found = matrix(tmp_path)
    (patch,) = found.patches
    assert (patch.name, patch.source, patch.enabled, patch.transition, patch.active) == (
        "kpatch_fnhe", "livepatch", True, False, True)
    assert [(f.object, f.name, f.sympos) for f in patch.functions] == [("vmlinux", "ip_del_fnhe", 1)]
    assert found.modules == ["kpatch_fnhe"] and found.tainted is True
    row = rows[FNHE_DEL_RACE]
    assert (row.status, row.live_patch, row.remediation) == (FIXED, "kpatch_fnhe", "")
    assert row.reason.startswith("live patch kpatch_fnhe (livepatch, enabled) replaces ip_del_fnhe (the function "
                                 "ee60ad219f5c changes): evidence that the fix is applied, not proof")
    assert rows[SLUB_DEAD_CACHES].status == AFFECTED            # nothing else changes


def test_a_patch_replacing_more_functions_than_the_fix_fixes_it_too(tmp_path):
    livepatch_tree(tmp_path, "livepatch_route", [("vmlinux", "ip_del_fnhe", 1), ("vmlinux", "rt_bind_exception", 1)])
    rows, _ = matrix(tmp_path)
    assert (rows[FNHE_DEL_RACE].status, rows[FNHE_DEL_RACE].live_patch) == (FIXED, "livepatch_route")


def test_a_partial_replacement_is_unknown_and_names_what_is_missing(tmp_path):
    livepatch_tree(tmp_path, "lp_slub", [("vmlinux", "put_cpu_partial", 1)])
    rows, _ = matrix(tmp_path)
    row = rows[SLUB_DEAD_CACHES]
    assert (row.status, row.live_patch) == (UNKNOWN, "lp_slub")
    assert row.reason.startswith("live patch lp_slub replaces put_cpu_partial but not __kmem_cache_shrink, "
                                 "which d6e0b7fa1186 also changes")


def test_a_patch_in_transition_or_disabled_is_unknown(tmp_path):
    livepatch_tree(tmp_path, "lp_moving", [("vmlinux", "ip_del_fnhe", 1)], transition=1)
    rows, found = matrix(tmp_path)
    assert found.patches[0].active is False
    assert rows[FNHE_DEL_RACE].status == UNKNOWN
    assert "replaces ip_del_fnhe (the function ee60ad219f5c changes) but is in transition" in rows[FNHE_DEL_RACE].reason
    off = tmp_path / "off"
    livepatch_tree(off, "lp_off", [("vmlinux", "ip_del_fnhe", 1)], enabled=0)
    rows, _ = matrix(off)
    assert rows[FNHE_DEL_RACE].status == UNKNOWN and "but is disabled" in rows[FNHE_DEL_RACE].reason


def test_the_kpatch_core_layouts(tmp_path):
    kpatch_tree(tmp_path, "kpatch_fnhe_957", [("vmlinux", "ip_del_fnhe", 1)])
    kpatch_tree(tmp_path, "kpatch_old", [("vmlinux", "put_cpu_partial", 1), ("vmlinux", "__kmem_cache_shrink", 1)],
                old_abi=True)
    rows, found = matrix(tmp_path)
    assert sorted((p.name, p.source, p.transition) for p in found.patches) == [
        ("kpatch_fnhe_957", "kpatch", None), ("kpatch_old", "kpatch", None)]
    assert (rows[FNHE_DEL_RACE].status, rows[FNHE_DEL_RACE].live_patch) == (FIXED, "kpatch_fnhe_957")
    assert (rows[SLUB_DEAD_CACHES].status, rows[SLUB_DEAD_CACHES].live_patch) == (FIXED, "kpatch_old")


def test_before_4_12_there_is_no_transition_file(tmp_path):
    livepatch_tree(tmp_path, "lp_310", [("vmlinux", "ip_del_fnhe", 1)], with_transition=False)
    rows, found = matrix(tmp_path)
    assert found.patches[0].transition is None and found.patches[0].active
    assert rows[FNHE_DEL_RACE].status == FIXED


def test_a_fixed_release_stays_fixed_and_a_module_without_sysfs_is_listed(tmp_path):
    proc(tmp_path, "mystery 16384 0 - Live 0xffffffffc0000000 (K)\n", 0)
    rows, found = matrix(tmp_path, "6.18.2")
    assert rows[FNHE_DEL_RACE].status == FIXED and rows[FNHE_DEL_RACE].live_patch is None
    assert found.modules == ["mystery"] and found.tainted is False
    assert livepatch_modules("a 1 0 - Live 0x0 (OE)\nb 1 0 - Live 0x0\n") == []


def test_doctor_shows_the_patches_in_the_matrix_and_in_json(tmp_path, monkeypatch):
    root = tmp_path / "root"
    livepatch_tree(root, "kpatch_fnhe", [("vmlinux", "ip_del_fnhe", 1)])
    proc(root, "kpatch_fnhe 20480 1 - Live 0xffffffffc0a00000 (OEK)\n", 1 << 15)
    log = tmp_path / "empty.log"
    log.write_text("")
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "n", RHEL76, "#1", "x86_64")))
    triage = run_doctor(log_path=str(log), root=str(root))
    buf = io.StringIO()
    render.triage(triage, Console(file=buf, width=200))
    out = buf.getvalue()
    assert "fixed (live patch kpatch_fnhe)" in out
    assert "kpatch_fnhe" in out and "vmlinux:ip_del_fnhe,1" in out and "tainted by a live patch (K)" in out
    data = triage.to_json()
    assert data["live_patches"]["patches"][0]["functions"] == [{"object": "vmlinux", "name": "ip_del_fnhe", "sympos": 1}]
    fnhe = [b for b in data["known_bugs"] if b["id"] == FNHE_DEL_RACE][0]
    assert (fnhe["status"], fnhe["live_patch"]) == ("fixed", "kpatch_fnhe")
    # another kernel's release (--release): this node's patches do not apply to it
    other = run_doctor(log_path=str(log), release="3.10.0-514.el7.x86_64", root=str(root))
    assert other.live_patches is None
    assert [b.status for b in other.bugs if b.id == FNHE_DEL_RACE] == [AFFECTED]


def test_doctor_json_on_this_node_carries_live_patches(capsys):
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["live_patches"]) == {"patches", "modules", "tainted"}
