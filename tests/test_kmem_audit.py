"""Tests for bpftools.kmem_audit on fixture trees and on this machine's cgroup v1 memory tree."""
import json
import os
import shutil

import pytest

from bpftools.analyses.known_bugs import parse_release
from bpftools.kernel.cgroups import ContainerRef, memory_cgroup_mount
from bpftools.kmem_audit import (PAGE_COUNTER_MAX_BYTES, KmemSummary, audit_kmem,
                                 kmem_check_applies, read_slabinfo)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "cgroup")
MOUNT_957 = os.path.join(FIXTURES, "rhel7-957", "sys", "fs", "cgroup", "memory")
RHEL_957 = "3.10.0-957.el7.x86_64"

POD1 = "6f1c3d5e-2b7a-11e9-8a4c-fa163e1b2c3d"
POD2 = "0b9d2e44-2c51-11e9-9b1a-fa163e5d6e7f"
C_APP = "c8edefa90517e21bc691deef20c17220af0f0ac69962cc51007d372e7dd40256"
C_PAUSE = "3a166877f91031145f6dc491df3c915c57f1439f4b3bcea4c6a37d1885ea27ea"
C_BE = "9946b3f0a1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d"
C_DOCKER = "ea4c61d01895b46bf04a9b8c54602a4a6fff12ca7341b3b21f879414c120da79"
PATHS_957 = [
    "/", "/kubepods", "/kubepods/besteffort", "/kubepods/besteffort/pod" + POD2,
    "/kubepods/besteffort/pod%s/%s" % (POD2, C_BE), "/kubepods/burstable",
    "/kubepods/burstable/pod" + POD1, "/kubepods/burstable/pod%s/%s" % (POD1, C_PAUSE),
    "/kubepods/burstable/pod%s/%s" % (POD1, C_APP), "/system.slice",
    "/system.slice/docker-%s.scope" % C_DOCKER,
]
EACCES_FILE = "/sys/bus/pci/rescan"  # write-only sysfs file: open for reading is EACCES, even as root


def _by_path(audit):
    return {c.path: c for c in audit.cgroups}


def test_audit_rhel7_957_fixture():
    audit = audit_kmem(MOUNT_957, RHEL_957)
    assert audit.applies is True
    assert audit.explanation.startswith("Linux 3.10: kmem accounting is opt-in per memory cgroup")
    assert [c.path for c in audit.cgroups] == PATHS_957
    assert audit.summary == KmemSummary(walked=11, active=8, with_failcnt=2, vanished=0,
                                        truncated=False)
    assert audit.errors == []
    # inactive: the three EIO cgroups (real EIO, see tests/fixtures/cgroup/README.md)
    assert [c.path for c in audit.cgroups if c.active is False] == [
        "/", "/system.slice", "/system.slice/docker-%s.scope" % C_DOCKER]
    rows = _by_path(audit)
    app = rows["/kubepods/burstable/pod%s/%s" % (POD1, C_APP)]
    assert (app.active, app.usage, app.max_usage, app.limit, app.unlimited, app.failcnt) == (
        True, 1904144384, 2147479552, None, True, 1533)
    assert app.container == ContainerRef(None, C_APP, POD1, "burstable")
    assert app.errors == []
    be = rows["/kubepods/besteffort/pod%s/%s" % (POD2, C_BE)]
    assert (be.active, be.usage, be.limit, be.unlimited, be.failcnt) == (
        True, 104755200, 104857600, False, 27)
    assert be.container == ContainerRef(None, C_BE, POD2, "besteffort")
    docker = rows["/system.slice/docker-%s.scope" % C_DOCKER]
    assert (docker.active, docker.usage, docker.failcnt) == (False, 0, 0)
    assert docker.container == ContainerRef("docker", C_DOCKER, None, None)
    pod = rows["/kubepods/burstable/pod" + POD1]
    assert pod.container == ContainerRef(None, None, POD1, "burstable")
    assert rows["/"].container is None


def test_audit_to_json_round_trips():
    data = audit_kmem(MOUNT_957, RHEL_957).to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["cgroups"][8]["container"] == {"runtime": None, "container_id": C_APP, "pod_uid": POD1,
                                               "qos": "burstable", "namespace": None, "pod": None,
                                               "container": None}
    assert data["summary"] == {"walked": 11, "active": 8, "with_failcnt": 2, "vanished": 0,
                               "truncated": False}


def test_audit_on_6x_lists_counters_but_does_not_apply():
    audit = audit_kmem(MOUNT_957, "6.18.2")
    assert audit.applies is False
    assert "deprecated" in audit.explanation and "b313aeee2509" in audit.explanation
    assert [c.path for c in audit.cgroups] == PATHS_957
    assert [c.active for c in audit.cgroups] == [None] * 11
    assert (audit.summary.active, audit.summary.with_failcnt) == (0, 2)


def test_audit_without_v1_memory_mount():
    audit = audit_kmem(None, "6.1.0-28-amd64")
    assert (audit.applies, audit.cgroups, audit.summary) == (False, [], KmemSummary())
    assert audit.explanation.startswith("no cgroup v1 memory controller is mounted")


def test_audit_missing_mount_directory(tmp_path):
    audit = audit_kmem(str(tmp_path / "gone"), RHEL_957)
    assert audit.cgroups == []
    assert audit.errors == ["%s: not a directory" % (tmp_path / "gone")]


@pytest.mark.parametrize("release, mount, applies", [
    (RHEL_957, "/m", True),
    ("3.10.0-1127.19.1.el7.x86_64", "/m", True),
    ("3.10.99", "/m", True),
    ("4.4.0-21-generic", "/m", True),
    ("4.19.0-6-amd64", "/m", False),
    ("6.1.0-28-amd64", "/m", False),
    ("6.18.44-fc-v657", "/m", False),
    ("not-a-kernel", "/m", False),
    (RHEL_957, None, False),
])
def test_kmem_check_applies(release, mount, applies):
    assert kmem_check_applies(release, mount)[0] is applies


def test_read_slabinfo_mapping(tmp_path):
    # A real EIO: reading one's own memory at offset 0 (unmapped) through /proc/self/mem.
    assert read_slabinfo("/proc/self/mem") is False
    regular = tmp_path / "memory.kmem.slabinfo"
    regular.write_text("slabinfo - version: 2.1\n")
    assert read_slabinfo(str(regular)) is True
    regular.write_text("")  # 6.x: reads empty
    assert read_slabinfo(str(regular)) is True
    assert read_slabinfo(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not os.path.exists(EACCES_FILE), reason="no %s here" % EACCES_FILE)
def test_read_slabinfo_permission_denied_is_undecided():
    assert read_slabinfo(EACCES_FILE) is None


def _cgroup(directory, limit="9223372036854775807", usage="0", max_usage="0", failcnt="0"):
    os.makedirs(directory, exist_ok=True)
    for name, value in (("limit_in_bytes", limit), ("usage_in_bytes", usage),
                        ("max_usage_in_bytes", max_usage), ("failcnt", failcnt)):
        if value is not None:
            with open(os.path.join(directory, "memory.kmem." + name), "w") as f:
                f.write(value + "\n")


def test_injected_reader_is_used_and_undecided_is_reported():
    seen = []

    def undecided(path):
        seen.append(os.path.relpath(path, MOUNT_957))
        return None

    audit = audit_kmem(MOUNT_957, RHEL_957, read_slabinfo=undecided)
    assert seen[0] == "memory.kmem.slabinfo" and len(seen) == 11
    assert [c.active for c in audit.cgroups] == [None] * 11
    assert audit.cgroups[0].errors == [
        "memory.kmem.slabinfo: could not tell whether kmem accounting is on"]
    everything = audit_kmem(MOUNT_957, RHEL_957, read_slabinfo=lambda path: True)
    assert everything.summary.active == 11


def test_vanished_cgroup_is_skipped(tmp_path):
    mount = str(tmp_path / "memory")
    for rel in ("", "a", "b", "b/c"):
        _cgroup(os.path.join(mount, rel))

    def reader(path):
        # While "/a" is read, "/b" (already listed) is removed, as when a container exits.
        if os.path.basename(os.path.dirname(path)) == "a":
            shutil.rmtree(os.path.join(mount, "b"))
        return True

    audit = audit_kmem(mount, RHEL_957, read_slabinfo=reader)
    assert [c.path for c in audit.cgroups] == ["/", "/a"]
    assert (audit.summary.vanished, audit.summary.walked, audit.errors) == (1, 2, [])


def test_unreadable_counters_are_reported(tmp_path):
    mount = str(tmp_path / "memory")
    _cgroup(mount, usage="garbage", failcnt=None, limit=str(PAGE_COUNTER_MAX_BYTES))
    audit = audit_kmem(mount, "6.18.2")
    [root] = audit.cgroups
    assert (root.usage, root.failcnt, root.limit, root.unlimited) == (None, None, None, True)
    assert root.errors == ["memory.kmem.usage_in_bytes: not a number: 'garbage'",
                           "memory.kmem.failcnt: No such file or directory"]
    assert audit.summary.vanished == 0


@pytest.mark.skipif(not os.path.exists(EACCES_FILE), reason="no %s here" % EACCES_FILE)
def test_permission_denied_counter(tmp_path):
    mount = str(tmp_path / "memory")
    _cgroup(mount, usage=None)
    os.symlink(EACCES_FILE, os.path.join(mount, "memory.kmem.usage_in_bytes"))
    [root] = audit_kmem(mount, RHEL_957, read_slabinfo=lambda p: True).cgroups
    assert root.usage is None
    assert root.errors == ["memory.kmem.usage_in_bytes: Permission denied"]


def test_walk_is_bounded():
    audit = audit_kmem(MOUNT_957, RHEL_957, max_cgroups=3)
    assert [c.path for c in audit.cgroups] == PATHS_957[:3]
    assert (audit.summary.truncated, audit.summary.walked) == (True, 3)


def _read(path):
    with open(path) as f:
        return int(f.read().strip())


@pytest.mark.root
def test_live_cgroup_v1_memory_tree():
    """On this machine's 6.x kernel: create a child cgroup, do what runc rc3+ does (write 1 then
    -1 to memory.kmem.limit_in_bytes) and audit the real tree."""
    mount = memory_cgroup_mount()
    release = os.uname().release
    parsed = parse_release(release)
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if mount is None or not os.path.exists(os.path.join(mount, "memory.kmem.limit_in_bytes")):
        pytest.skip("no cgroup v1 memory controller with kmem files")
    if parsed is None or parsed.version < 6:
        pytest.skip("the assertions below describe Linux 6.x; this is %s" % release)
    name = "bpftools-test-%d" % os.getpid()
    cg = os.path.join(mount, name)
    os.mkdir(cg)
    try:
        limit_file = os.path.join(cg, "memory.kmem.limit_in_bytes")
        # 6.1+: the write succeeds (warns once in dmesg that it is deprecated) and changes
        # nothing: the limit still reads PAGE_COUNTER_MAX pages in bytes.
        for value in ("1", "-1"):
            with open(limit_file, "w") as f:
                f.write(value)
            assert _read(limit_file) == PAGE_COUNTER_MAX_BYTES
        with open(os.path.join(cg, "memory.kmem.slabinfo"), "rb") as f:
            assert f.read() == b""  # 6.x: reads empty instead of EIO
        audit = audit_kmem(mount, release)
        assert audit.applies is False
        assert audit.cgroups[0].path == "/"
        rows = _by_path(audit)
        mine = rows["/" + name]
        assert mine.usage == _read(os.path.join(cg, "memory.kmem.usage_in_bytes")) == 0
        assert mine.max_usage == _read(os.path.join(cg, "memory.kmem.max_usage_in_bytes")) == 0
        assert mine.failcnt == _read(os.path.join(cg, "memory.kmem.failcnt")) == 0
        assert (mine.limit, mine.unlimited, mine.active) == (None, True, None)
        assert (mine.container, mine.errors) == (None, [])
        assert audit.summary.walked == len(audit.cgroups) >= 2
        assert audit.summary.active == 0
    finally:
        os.rmdir(cg)
    assert not os.path.exists(cg)
