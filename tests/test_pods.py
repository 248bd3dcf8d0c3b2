"""Pods and containers by name (bpftools/kernel/pods.py) from a real tree of kubelet's log directories:
/var/log/pods/<ns>_<pod>_<uid>/<container>/, /var/log/containers/<pod>_<ns>_<container>-<id>.log links,
dockershim's links to docker's json logs, and both cgroup drivers' paths; live, a kmemsnoop event of a task in a
real kubepods memory cgroup, named through --host-root."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bpftools.kernel import hostroot, pods
from bpftools.kernel.cgroups import ContainerRef, container_of
from bpftools.kernel.pods import PodNames, container_named

UID_WEB = "0b9d2e44-2c51-11e9-9b1a-fa163e5d6e7f"
UID_DB = "5f1c7a10-8e2b-4c3d-9a7e-112233445566"
UID_STATIC = "b1f8c4d2e5a6978012345678abcdef01"          # a static pod: an md5 hex, no dashes
UID_OLD = "7d0e4f1a-0000-4000-8000-000000000001"         # only in a pre-1.14 /var/log/pods/<uid>/ layout
CID_NGINX = "9946b3f0a1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d"
CID_SIDECAR = "c8edefa90517e21bc691deef20c17220af0f0ac69962cc51007d372e7dd40256"
CID_PG = "ea4c61d01895b46bf04a9b8c54602a4a6fff12ca7341b3b21f879414c120da79"
CID_ETCD = "1111111111111111111111111111111111111111111111111111111111111111"
CID_PAUSE = "2222222222222222222222222222222222222222222222222222222222222222"


def _file(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def node(root):
    """A node's kubelet log directories: containerd pods (web: nginx and a sidecar; db: postgres), a static
    etcd pod under dockershim (its N.log links to docker's json log) and a directory of the old layout."""
    logs = os.path.join(root, "var/log")
    web = "default_web-7d4b9c-xk2lp_%s" % UID_WEB
    db = "prod_db-0_%s" % UID_DB
    etcd = "kube-system_etcd-node1_%s" % UID_STATIC
    for pod_dir, container in ((web, "nginx"), (web, "istio-proxy"), (db, "postgres")):
        _file(os.path.join(logs, "pods", pod_dir, container, "0.log"), "log\n")
    os.makedirs(os.path.join(logs, "pods", etcd, "etcd"))
    os.symlink("/var/lib/docker/containers/%s/%s-json.log" % (CID_ETCD, CID_ETCD),
               os.path.join(logs, "pods", etcd, "etcd", "0.log"))
    _file(os.path.join(logs, "pods", UID_OLD, "app_0.log"))
    os.makedirs(os.path.join(logs, "containers"))
    for pod, ns, container, cid, pod_dir in (("web-7d4b9c-xk2lp", "default", "nginx", CID_NGINX, web),
                                             ("web-7d4b9c-xk2lp", "default", "istio-proxy", CID_SIDECAR, web),
                                             ("db-0", "prod", "postgres", CID_PG, db)):
        os.symlink("/var/log/pods/%s/%s/0.log" % (pod_dir, container),
                   os.path.join(logs, "containers", "%s_%s_%s-%s.log" % (pod, ns, container, cid)))
    os.symlink("/elsewhere/not-a-pod/0.log",                      # a link whose target names no pod: ignored
               os.path.join(logs, "containers", "x_default_y-%s.log" % ("3" * 64)))
    _file(os.path.join(logs, "containers", "README"))
    return root


CGROUPFS = "/kubepods/burstable/pod%s/%s"
SYSTEMD = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/cri-containerd-%s.scope")


@pytest.mark.parametrize("path,namespace,pod,container", [
    (CGROUPFS % (UID_WEB, CID_NGINX), "default", "web-7d4b9c-xk2lp", "nginx"),
    (CGROUPFS % (UID_WEB, CID_SIDECAR), "default", "web-7d4b9c-xk2lp", "istio-proxy"),
    (SYSTEMD % (UID_DB.replace("-", "_"), CID_PG), "prod", "db-0", "postgres"),
    ("/kubepods/pod%s/%s" % (UID_STATIC, CID_ETCD), "kube-system", "etcd-node1", "etcd"),
    (CGROUPFS % (UID_WEB, CID_PAUSE), "default", "web-7d4b9c-xk2lp", None),     # the sandbox: no log, no name
    ("/kubepods/burstable/pod%s" % UID_DB, "prod", "db-0", None),                # a pod-level cgroup
])
def test_cgroup_paths_of_both_drivers_get_their_names(tmp_path, path, namespace, pod, container):
    names = PodNames(node(str(tmp_path)))
    ref = names.name(container_of(path))
    assert (ref.namespace, ref.pod, ref.container) == (namespace, pod, container)
    assert ref.pod_uid == container_of(path).pod_uid and ref.container_id == container_of(path).container_id
    assert ref.to_json()["pod"] == pod


def test_a_bare_container_id_gets_its_pod_from_the_link(tmp_path):
    """A 3.10 per-memcg cache name carries only the container's directory name: the link names the pod."""
    ref = PodNames(node(str(tmp_path))).name(container_of(CID_SIDECAR))
    assert ref == ContainerRef(None, CID_SIDECAR, UID_WEB, None, "default", "web-7d4b9c-xk2lp", "istio-proxy")


def test_unknown_and_non_kubernetes_refs_are_returned_as_they_are(tmp_path):
    names = PodNames(node(str(tmp_path)))
    docker = container_of("/docker/" + CID_PG)                # plain docker: the id is known from a pod link
    assert names.name(docker).container == "postgres"
    stranger = container_of(CGROUPFS % (UID_OLD, CID_PAUSE))   # only the old layout: no names
    assert names.name(stranger) is stranger
    assert names.name(None) is None
    assert names.name(container_of("/kubepods/burstable")) is None
    assert PodNames(str(tmp_path / "empty")).name(container_of(CGROUPFS % (UID_WEB, CID_NGINX))).pod is None


class Clock(object):
    now = 100.0

    def __call__(self):
        return self.now


def test_a_pod_created_later_is_found_after_the_refresh_interval(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "var/log/pods"))
    clock = Clock()
    names = PodNames(root, clock=clock)
    ref = container_of(CGROUPFS % (UID_WEB, CID_NGINX))
    assert names.name(ref).pod is None
    node(root)
    clock.now += pods.REFRESH_SECONDS - 1                      # too soon: the directories are not read again
    assert names.name(ref).pod is None
    clock.now += 1
    assert names.name(ref).container == "nginx"
    os.rename(os.path.join(root, "var/log/containers"), os.path.join(root, "var/log/gone"))
    clock.now += pods.REFRESH_SECONDS
    assert names.name(ref).container == "nginx"               # known: no new read, the name is kept
    assert names.name(container_of(CGROUPFS % (UID_WEB, CID_PAUSE))).container is None   # unknown: read again
    assert names.name(ref).container is None and names.name(ref).pod == "web-7d4b9c-xk2lp"


def test_container_named_reads_under_the_host_root(tmp_path):
    root = node(str(tmp_path))
    hostroot.set_host_root(root)
    pods._Shared.names = None
    try:
        ref = container_named(SYSTEMD % (UID_DB.replace("-", "_"), CID_PG))
        assert (ref.namespace, ref.pod, ref.container) == ("prod", "db-0", "postgres")
        assert container_named(None) is None and container_named("") is None
    finally:
        hostroot.set_host_root(None)
        pods._Shared.names = None


WRITER = r"""
import os, sys, time
container, probe = sys.argv[1], sys.argv[2]
with open(container + "/cgroup.procs", "w") as f:     # join the container's memory cgroup, as runc puts a task
    f.write(str(os.getpid()))
os.mkdir(probe)
print(os.getpid(), flush=True)
fd = os.open(probe + "/memory.kmem.limit_in_bytes", os.O_WRONLY)
os.write(fd, b"1")
os.close(fd)
time.sleep(1)                                          # alive while kmemsnoop reads /proc/PID/cgroup
"""


@pytest.mark.root
def test_a_live_event_carries_the_pod_and_container_names(tmp_path):
    """kmemsnoop, in a container's view (--host-root: the host's /proc, /sys and /dev linked in, kubelet's
    log directories made up), sees a task of a kubepods memory cgroup write a kmem limit: its event names
    the namespace, pod and container."""
    memcg = "/sys/fs/cgroup/memory"
    if not os.path.exists(os.path.join(memcg, "memory.kmem.limit_in_bytes")):
        pytest.skip("no cgroup v1 memory controller with kmem files at %s" % memcg)
    top = os.path.join(memcg, "kubepods-bpftools-%d" % os.getpid())
    container = os.path.join(top, "burstable", "pod" + UID_WEB, CID_NGINX)
    host = node(str(tmp_path / "host"))
    for name in ("proc", "sys", "dev"):
        os.symlink("/" + name, os.path.join(host, name))
    ready = tmp_path / "ready"
    os.makedirs(container)
    tool = subprocess.Popen([sys.executable, "-m", "bpftools.cli", "--host-root", host, "kmemsnoop", "--json",
                             "-d", "60", "--ready-file", str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert tool.poll() is None and time.monotonic() < deadline, tool.communicate()
            time.sleep(0.05)
        writer = subprocess.run([sys.executable, "-c", WRITER, container, os.path.join(container, "probe")],
                                stdout=subprocess.PIPE, universal_newlines=True, check=True, timeout=60)
        pid = int(writer.stdout.strip())
        time.sleep(0.5)
        tool.send_signal(signal.SIGTERM)
        out, err = tool.communicate(timeout=30)
        assert tool.returncode == 0, err
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
        for path in (os.path.join(container, "probe"), container, os.path.dirname(container),
                     os.path.join(top, "burstable"), top):
            if os.path.isdir(path):
                os.rmdir(path)
    writes = [e for e in map(json.loads, out.splitlines()) if e["tgid"] == pid and e["op"] == "write"]
    assert [e["value"] for e in writes] == ["1"]
    assert writes[0]["writer_cgroup"] == "/kubepods-bpftools-%d/burstable/pod%s/%s" % (os.getpid(), UID_WEB, CID_NGINX)
    assert writes[0]["container"] == {"runtime": None, "container_id": CID_NGINX, "pod_uid": UID_WEB,
                                      "qos": "burstable", "namespace": "default", "pod": "web-7d4b9c-xk2lp",
                                      "container": "nginx"}
