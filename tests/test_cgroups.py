"""Tests for bpftools.kernel.cgroups: container/pod naming and cgroup layout discovery."""
import os

import pytest

from bpftools.kernel.cgroups import (ContainerRef, cgroup_layout, container_of, memory_cgroup_mount, memory_cgroup_of_pid)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "cgroup")
RHEL7 = os.path.join(FIXTURES, "rhel7-957")
DEBIAN12 = os.path.join(FIXTURES, "debian12-v2")
HYBRID = os.path.join(FIXTURES, "ubuntu2004-hybrid")

CID = "c8edefa90517e21bc691deef20c17220af0f0ac69962cc51007d372e7dd40256"
UID = "6f1c3d5e-2b7a-11e9-8a4c-fa163e1b2c3d"
UID_ = UID.replace("-", "_")
STATIC_UID = "d6b0cb5d5d6d1e3b8c0b9a3c4b8c1f2e"


@pytest.mark.parametrize("path, expected", [
    # kubelet, cgroupfs driver
    ("/kubepods/burstable/pod%s/%s" % (UID, CID), (None, CID, UID, "burstable")),
    ("/kubepods/besteffort/pod%s/%s" % (UID, CID), (None, CID, UID, "besteffort")),
    ("/kubepods/pod%s/%s" % (UID, CID), (None, CID, UID, "guaranteed")),
    ("/kubepods/burstable/pod%s/crio-%s" % (UID, CID), ("cri-o", CID, UID, "burstable")),
    ("/kubepods/burstable/pod%s" % UID, (None, None, UID, "burstable")),
    ("/kubepods/burstable/pod%s/%s" % (STATIC_UID, CID), (None, CID, STATIC_UID, "burstable")),
    ("/sys/fs/cgroup/memory/kubepods/burstable/pod%s/%s" % (UID, CID),
     (None, CID, UID, "burstable")),
    ("/docker/%s/kubepods/besteffort/pod%s/%s" % ("ab" * 32, UID, CID),  # kind node
     (None, CID, UID, "besteffort")),
    # kubelet, systemd driver
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/docker-%s.scope"
     % (UID_, CID), ("docker", CID, UID, "burstable")),
    ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/"
     "cri-containerd-%s.scope" % (UID_, CID), ("containerd", CID, UID, "besteffort")),
    ("/kubepods.slice/kubepods-pod%s.slice/crio-%s.scope" % (UID_, CID),
     ("cri-o", CID, UID, "guaranteed")),
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/"
     "crio-conmon-%s.scope" % (UID_, CID), (None, None, UID, "burstable")),
    # plain docker / podman
    ("/docker/%s" % CID, ("docker", CID, None, None)),
    ("/system.slice/docker-%s.scope" % CID, ("docker", CID, None, None)),
    ("/machine.slice/libpod-%s.scope" % CID, ("podman", CID, None, None)),
    # 3.10 memcg cache names carry only the directory name
    (CID, (None, CID, None, None)),
    ("docker-%s.scope" % CID, ("docker", CID, None, None)),
    ("kubepods-burstable-pod%s.slice" % UID_, (None, None, UID, "burstable")),
])
def test_container_of(path, expected):
    assert container_of(path) == ContainerRef(*expected)


@pytest.mark.parametrize("path", [
    "/", "", "/kubepods", "/kubepods/burstable", "/kubepods.slice/kubepods-besteffort.slice",
    "/system.slice/containerd.service", "/user.slice/user-1000.slice/session-3.scope",
    "fsnotify",                      # fanotify_event_info(110:fsnotify)
    "/docker/4d60db4abcde",          # short id
    "/podbeef/%s" % ("ab" * 31),     # "pod…" outside kubepods, 62 hex digits
    "/system.slice/docker-%s.scope" % CID.upper(),
])
def test_container_of_none(path):
    assert container_of(path) is None


def test_container_ref_to_json():
    ref = container_of("/kubepods/pod%s/%s" % (UID, CID))
    assert ref.to_json() == {"runtime": None, "container_id": CID, "pod_uid": UID,
                             "qos": "guaranteed", "namespace": None, "pod": None, "container": None}


@pytest.mark.parametrize("root, mount, layout", [
    (RHEL7, os.path.join(RHEL7, "sys/fs/cgroup/memory"), "v1"),
    (DEBIAN12, None, "v2"),
    (HYBRID, os.path.join(HYBRID, "sys/fs/cgroup/memory"), "hybrid"),
    (os.path.join(FIXTURES, "does-not-exist"), None, "none"),
])
def test_mount_and_layout_from_fixtures(root, mount, layout):
    assert memory_cgroup_mount(root) == mount
    assert cgroup_layout(root) == layout


def mountinfo(tmp_path, text):
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "mountinfo").write_text(text)
    return str(tmp_path)


def test_memory_mount_escaped_and_comounted(tmp_path):
    root = mountinfo(tmp_path, (
        "30 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "garbage line\n"
        "40 30 0:35 / /cg/cpu\\040and\\040mem rw,relatime shared:16 - cgroup cgroup rw,cpu,memory\n"))
    assert memory_cgroup_mount(root) == os.path.join(root, "cg/cpu and mem")
    assert cgroup_layout(root) == "v1"


def test_memory_mount_ignores_other_controllers(tmp_path):
    root = mountinfo(tmp_path, (
        "36 34 0:31 / /sys/fs/cgroup/memory_like rw - cgroup cgroup rw,name=memory_like\n"
        "41 34 0:36 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"))
    assert memory_cgroup_mount(root) is None


def test_memory_cgroup_of_pid_from_fixtures():
    assert memory_cgroup_of_pid(4242, RHEL7) == "/kubepods/burstable/pod%s/%s" % (UID, CID)
    assert memory_cgroup_of_pid(4242, DEBIAN12) == (
        "/system.slice/docker-ea4c61d01895b46bf04a9b8c54602a4a6fff12ca7341b3b21f879414c120da79.scope")
    assert memory_cgroup_of_pid(4242, HYBRID) == (
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b9d2e44_2c51_11e9_9b1a_"
        "fa163e5d6e7f.slice/cri-containerd-9946b3f0a1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071829"
        "3a4b5c6d.scope")
    assert memory_cgroup_of_pid(4243, RHEL7) is None


def test_memory_cgroup_of_pid_prefers_v1_memory_line(tmp_path):
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "cgroup").write_text(
        "0::/unified/path\n5:cpu,memory:/v1/memory/path\n1:name=systemd:/systemd/path\n")
    assert memory_cgroup_of_pid(7, str(tmp_path)) == "/v1/memory/path"
    (tmp_path / "proc" / "7" / "cgroup").write_text("1:name=systemd:/s\n0::/unified/path\n")
    assert memory_cgroup_of_pid(7, str(tmp_path)) == "/unified/path"


@pytest.mark.skipif(not os.path.ismount("/sys/fs/cgroup/memory"),
                    reason="no cgroup v1 memory controller mounted at /sys/fs/cgroup/memory")
def test_live_memory_cgroup_of_self():
    mount = memory_cgroup_mount()
    assert mount == "/sys/fs/cgroup/memory"
    assert cgroup_layout() == ("hybrid" if os.path.ismount("/sys/fs/cgroup/unified") else "v1")
    path = memory_cgroup_of_pid(os.getpid())
    with open(os.path.join(mount, path.lstrip("/"), "cgroup.procs")) as f:
        pids = [int(x) for x in f.read().split()]
    assert os.getpid() in pids
