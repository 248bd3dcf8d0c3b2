"""The host-root prefix (bpftools/kernel/hostroot.py, `bpftools --host-root DIR`, $BPFTOOLS_HOST_ROOT): a host tree
under tmp, as a container sees the node's / mounted at /host, and every reader that must take the prefix reading
it there: /dev/kmsg, /proc (kallsyms, PID/cgroup, PID/ns/net, 1/mountinfo), cgroupfs, /boot, /etc/os-release,
/var/log/pods, /run/netns; the CLI end to end (doctor and its capability table)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from bpftools.kernel import headers, hostroot, pods
from bpftools.kernel.cgroups import (cgroup2_mount, cgroup2_path_of_id, cgroup_layout, memory_cgroup_mount,
                                     memory_cgroup_of_pid, mountinfo)
from bpftools.kernel.distro import bcc_hint, distro_name, headers_hint
from bpftools.kernel.kconfig import kernel_config
from bpftools.kernel.log import kmsg_device, read_live_log, read_log
from bpftools.kernel.symbols import SymbolTable, read_kallsyms
from bpftools.errors import MissingKernelFeature
from bpftools.refleak import devices
from bpftools.tools import netdevwait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RHEL7 = os.path.join(ROOT, "tests", "fixtures", "cgroup", "rhel7-957")
POD1 = "6f1c3d5e-2b7a-11e9-8a4c-fa163e1b2c3d"            # the burstable pod of the rhel7-957 tree
C_APP = "c8edefa90517e21bc691deef20c17220af0f0ac69962cc51007d372e7dd40256"
RELEASE = os.uname().release
CACHE = "kmalloc-1024(1793:%s)" % C_APP
KMSG = ("4,1001,8643296448116,-;SLUB: Unable to allocate memory on node -1 (gfp=0x20)\n"
        " SUBSYSTEM=none\n"
        "4,1002,8643296448122,-;  cache: %s, object size: 1024, buffer size: 1024, default order: 3, min order: 0\n"
        "4,1003,8643296448125,-;  node 0: slabs: 663, objs: 20964, free: 0\n") % CACHE
MOUNTINFO = ("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
             "30 1 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
             "31 1 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n")
# What a container's own /proc/self/mountinfo shows, with the node's / bind-mounted at /host: read at the
# wrong place, the mount points would be /host/... (prefixed twice) or the container's own cgroupfs.
CONTAINER_MOUNTINFO = "500 400 0:50 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"


def _file(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def host(tmp_path):
    """A node's / as a container sees it at /host; the prefix set, and reset after the test."""
    root = str(tmp_path / "host")
    shutil.copytree(os.path.join(RHEL7, "sys"), os.path.join(root, "sys"), symlinks=True)
    os.makedirs(os.path.join(root, "sys/fs/cgroup/unified/kubepods/burstable/pod%s" % POD1))
    _file(os.path.join(root, "dev/kmsg"), KMSG)
    _file(os.path.join(root, "proc/1/mountinfo"), MOUNTINFO)
    _file(os.path.join(root, "proc/self/mountinfo"), CONTAINER_MOUNTINFO)
    _file(os.path.join(root, "proc/4242/cgroup"), "4:memory:/kubepods/burstable/pod%s/%s\n0::/\n" % (POD1, C_APP))
    _file(os.path.join(root, "proc/4242/ns/net"))
    _file(os.path.join(root, "proc/kallsyms"),
          "ffffffff81000000 T _stext\nffffffff81234560 T mempool_alloc\nffffffff81234999 T bvec_alloc\n")
    _file(os.path.join(root, "boot/config-%s" % RELEASE), "CONFIG_MEMCG_KMEM=y\n# CONFIG_KPROBES is not set\n")
    _file(os.path.join(root, "etc/os-release"), 'ID="centos"\nVERSION_ID="7"\nPRETTY_NAME="CentOS Linux 7 (Core)"\n')
    _file(os.path.join(root, "var/log/pods/default_web-0_%s/app/0.log" % POD1))
    os.makedirs(os.path.join(root, "var/log/containers"))
    os.symlink("/var/log/pods/default_web-0_%s/app/0.log" % POD1,
               os.path.join(root, "var/log/containers/web-0_default_app-%s.log" % C_APP))
    _file(os.path.join(root, "var/run/netns/demo-pod"))
    hostroot.set_host_root(root)
    pods._Shared.names = None
    yield root
    hostroot.set_host_root(None)
    pods._Shared.names = None


def test_without_a_prefix_paths_are_the_paths():
    assert hostroot.host_root() == "/"
    assert hostroot.host_path("/proc/kallsyms") == "/proc/kallsyms"
    assert hostroot.mount_table() == "/proc/self/mountinfo"
    assert kmsg_device() == "/dev/kmsg"
    assert hostroot.host_path("/proc/1/cgroup", "/host/") == "/host/proc/1/cgroup"


def test_the_prefix_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    hostroot.set_host_root("host")
    try:
        assert hostroot.host_root() == str(tmp_path / "host")
    finally:
        hostroot.set_host_root(None)


def test_kmsg_is_read_under_the_prefix(host):
    assert kmsg_device() == os.path.join(host, "dev/kmsg")
    assert read_live_log() == KMSG.encode()
    log = read_log(None)
    assert list(log) == KMSG.splitlines() and log.lines == 4


def test_cgroupfs_is_found_in_the_hosts_mount_table(host):
    assert hostroot.mount_table() == os.path.join(host, "proc/1/mountinfo")
    assert [m[0] for m in mountinfo()] == ["/", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"]
    assert memory_cgroup_mount() == os.path.join(host, "sys/fs/cgroup/memory")
    assert cgroup2_mount() == os.path.join(host, "sys/fs/cgroup/unified")
    assert cgroup_layout() == "hybrid"
    pod_dir = os.path.join(host, "sys/fs/cgroup/unified/kubepods/burstable/pod%s" % POD1)
    assert cgroup2_path_of_id(os.stat(pod_dir).st_ino) == "/kubepods/burstable/pod%s" % POD1


def test_proc_of_a_pid_is_the_hosts(host):
    assert memory_cgroup_of_pid(4242) == "/kubepods/burstable/pod%s/%s" % (POD1, C_APP)


def test_kallsyms_is_read_under_the_prefix(host):
    assert read_kallsyms()[1] == "ffffffff81234560 T mempool_alloc"
    table = SymbolTable.from_system()
    assert table.resolve("mempool_alloc").attach == "mempool_alloc"       # this kernel (6.18) says _noprof
    assert table.resolve("bvec_alloc").attach == "bvec_alloc"


def test_boot_config_and_os_release_are_the_hosts(host):
    assert kernel_config(RELEASE) == {"CONFIG_MEMCG_KMEM": "y", "CONFIG_KPROBES": "n"}
    assert distro_name() == "CentOS Linux 7 (Core)"
    assert headers_hint("3.10.0-957.el7.x86_64") == "yum install kernel-devel-3.10.0-957.el7.x86_64"
    assert bcc_hint().startswith("apt-get install python3-bpfcc")         # bcc is the image's (Debian) own


def test_netns_names_and_processes_are_the_hosts(host):
    assert devices.netns_path("demo-pod") == os.path.join(host, "var/run/netns/demo-pod")
    found = dict(devices.namespaces(devices.Selector([], {})))
    assert found[os.stat(os.path.join(host, "proc/4242/ns/net")).st_ino] == os.path.join(host, "proc/4242/ns/net")
    assert found[os.stat(os.path.join(host, "var/run/netns/demo-pod")).st_ino] == os.path.join(
        host, "var/run/netns/demo-pod")
    assert netdevwait.NetnsUsers().root == host


def test_headers_missing_here_but_on_the_host_say_how_to_mount_them(host, monkeypatch):
    """bcc reads /lib/modules where the container sees it: the prefix only tells the host has them."""
    release = "0.0.0-not-installed-here"
    os.makedirs(os.path.join(host, "usr/src/linux-headers-%s/include" % release))
    os.makedirs(os.path.join(host, "lib/modules", release))
    os.symlink("/usr/src/linux-headers-%s" % release, os.path.join(host, "lib/modules", release, "build"))
    monkeypatch.setattr(headers.os, "uname", lambda: os.uname_result(("Linux", "n", release, "#1", "x86_64")))
    with pytest.raises(MissingKernelFeature) as err:
        headers.require_headers()
    assert str(err.value) == ("missing kernel feature: kernel headers for %s in this container; try: the host has "
                              "them: mount its /lib/modules and /usr/src at the same paths here (read-only)" % release)
    hostroot.set_host_root(None)
    with pytest.raises(MissingKernelFeature) as err:
        headers.require_headers()
    assert "in this container" not in str(err.value)


def _cli(*args, env=None):
    environ = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "bpftools.cli"] + list(args), cwd=ROOT, env=environ,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)


@pytest.mark.root
@pytest.mark.parametrize("how", ["option", "env"])
def test_doctor_reads_the_node_through_the_prefix(host, how):
    """`doctor` in a container: the host's kernel log, its memory cgroups, and the pod's names."""
    args, env = (["--host-root", host], None) if how == "option" else ([], {hostroot.ENV: host})
    proc = _cli(*(args + ["doctor", "--json"]), env=env)
    assert proc.returncode == 0, proc.stderr
    triage = json.loads(proc.stdout)
    assert triage["log"] == {"source": "live kernel log", "lines": 4}
    slub = [f for f in triage["findings"] if f["kind"] == "slub_alloc_failure"]
    assert [c for f in slub for c in f["caches"]] == [{"cache": "kmalloc-1024", "cgroup": C_APP, "count": 1,
                                                       "memcg_id": 1793}]
    audit = triage["kmem_audit"]
    assert audit["mount"] == os.path.join(host, "sys/fs/cgroup/memory") and audit["summary"]["walked"] == 11
    app = [c for c in audit["cgroups"] if c["path"] == "/kubepods/burstable/pod%s/%s" % (POD1, C_APP)][0]
    assert app["container"] == {"runtime": None, "container_id": C_APP, "pod_uid": POD1, "qos": "burstable",
                                "namespace": "default", "pod": "web-0", "container": "app"}


@pytest.mark.root
def test_capabilities_describe_the_node_through_the_prefix(host):
    proc = _cli("--host-root", host, "doctor", "--capabilities", "--json")
    assert proc.returncode == 0, proc.stderr
    caps = json.loads(proc.stdout)
    assert (caps["distro"], caps["cgroup_layout"]) == ("CentOS Linux 7 (Core)", "hybrid")
    mempool = [s for s in caps["symbols"] if s["wanted"] == "mempool_alloc"][0]
    assert (mempool["attach"], mempool["how"]) == ("mempool_alloc", "exact")


def test_a_host_root_that_is_not_a_directory_is_a_usage_error(tmp_path):
    proc = _cli("--host-root", str(tmp_path / "nothing"), "doctor")
    assert proc.returncode == 2
    assert proc.stderr == ("bpftools: error: Invalid value for '--host-root': Directory '%s' does not exist; "
                           "try 'bpftools --help'\n" % (tmp_path / "nothing"))
