"""Tests for bpftools.runtimes: version parsing, kmem flags, discovery with real fake executables."""
import json
import os
import shutil
import time

import pytest

from bpftools.analyses.known_bugs import (DOCKER_BEFORE_18_09_1, RUNC_ALWAYS_KMEM,
                                          RUNC_KMEM_UNLESS_NOKMEM)
from bpftools.runtimes import discover_runtimes, kmem_flags, parse_version, version_key


@pytest.mark.parametrize("runtime, output, expected", [
    ("runc", "runc version 1.0.0-rc2\ncommit: 54296cf40ad8143b62dbcaa1d90e520a2136ddfe\n"
             "spec: 1.0.0-rc2-dev\n", "1.0.0-rc2"),
    ("runc", "runc version 1.0.0-rc5+dev\ncommit: 4fc53a81fb7c994640722ac585fa9ca548971871\n",
     "1.0.0-rc5+dev"),
    ("runc", "runc version 1.0.0~rc6+dfsg1\ncommit: 1.0.0~rc6+dfsg1-3\n", "1.0.0~rc6+dfsg1"),
    ("runc", "runc version 1.1.12\ncommit: v1.1.12-0-g51d5e946\nspec: 1.0.2-dev\n"
             "go: go1.20.13\nlibseccomp: 2.5.4\n", "1.1.12"),
    ("runc", "runc version spec: 1.0.0\n", None),
    ("docker", "Docker version 18.09.0, build 4d60db4\n", "18.09.0"),
    ("docker", "Docker version 1.13.1, build 7d71120/1.13.1\n", "1.13.1"),
    ("docker", "Docker version 17.03.2-ce, build f5ec1e2\n", "17.03.2-ce"),
    ("docker", "Docker version 28.2.2, build e6534b4\n", "28.2.2"),
    ("containerd", "containerd github.com/containerd/containerd v1.6.21 "
                   "3dce8eb055cbb6872793272b4f20ed16117344f8\n", "1.6.21"),
    ("containerd", "containerd containerd.io 1.2.6 894b81a4b802e4eb2a91d1ce216b8817763c29fb\n",
     "1.2.6"),
    ("kubelet", "Kubernetes v1.13.5\n", "1.13.5"),
    ("kubelet", "Flag --cadvisor-port has been deprecated\nKubernetes v1.22.17\n", "1.22.17"),
    ("kubelet", "Docker version 18.09.0, build 4d60db4\n", None),
    ("podman", "podman version 4.3.1\n", None),
])
def test_parse_version(runtime, output, expected):
    assert parse_version(runtime, output) == expected


def test_version_key_orders_prereleases_and_editions():
    ordered = ["0.1.1", "1.0.0-rc2", "1.0.0-rc5+dev", "1.0.0~rc6+dfsg1", "1.0.0-rc10",
               "1.0.0-rc93", "1.0.0-rc94", "1.0.0", "1.1.12"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert version_key("18.09.1-rc1") < version_key("18.09.1") == version_key("18.9.1")
    assert version_key("17.03.2-ce") == version_key("17.3.2")


@pytest.mark.parametrize("runtime, version, flags", [
    ("runc", "0.1.1", []),
    ("runc", "1.0.0-rc2", []),
    ("runc", "1.0.0-rc3", [RUNC_ALWAYS_KMEM]),
    ("runc", "1.0.0-rc5+dev", [RUNC_ALWAYS_KMEM]),
    ("runc", "1.0.0~rc6+dfsg1", [RUNC_KMEM_UNLESS_NOKMEM]),
    ("runc", "1.0.0-rc10", [RUNC_KMEM_UNLESS_NOKMEM]),
    ("runc", "1.0.0-rc93", [RUNC_KMEM_UNLESS_NOKMEM]),
    ("runc", "1.0.0-rc94", []),
    ("runc", "1.0.0", []),
    ("runc", "1.1.12", []),
    ("runc", None, []),
    ("docker", "1.13.1", [DOCKER_BEFORE_18_09_1]),
    ("docker", "17.03.2-ce", [DOCKER_BEFORE_18_09_1]),
    ("docker", "18.06.1-ce", [DOCKER_BEFORE_18_09_1]),
    ("docker", "18.09.0", [DOCKER_BEFORE_18_09_1]),
    ("docker", "18.09.1-rc1", [DOCKER_BEFORE_18_09_1]),
    ("docker", "18.09.1", []),
    ("docker", "20.10.21", []),
    ("containerd", "1.2.6", []),
    ("kubelet", "1.13.5", []),
])
def test_kmem_flags(runtime, version, flags):
    assert kmem_flags(runtime, version) == flags


def _script(directory, name, body, mode=0o755):
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write(body)
    os.chmod(path, mode)
    return path


@pytest.fixture
def bindir(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    return d


def _which(directory):
    return lambda name: shutil.which(name, path=str(directory))


def test_discover_with_fake_executables(bindir):
    runc = _script(bindir, "runc", "#!/bin/sh\n[ \"$1\" = --version ] || exit 64\n"
                                   "echo 'runc version 1.0.0-rc5+dev'\necho 'commit: 4fc53a81'\n")
    docker = _script(bindir, "docker", "#!/bin/sh\n[ \"$1\" = --version ] || exit 64\n"
                                       "echo 'Docker version 18.09.0, build 4d60db4'\n")
    containerd = _script(bindir, "containerd",
                         "#!/bin/sh\necho 'containerd: flag provided but not defined' >&2\nexit 2\n")
    _script(bindir, "kubelet", "#!/bin/sh\necho 'Kubernetes v1.13.5'\n", mode=0o644)  # not executable
    found = discover_runtimes(which=_which(bindir))
    assert [(r.name, r.runtime, r.path) for r in found] == [
        ("runc", "runc", runc), ("docker", "docker", docker),
        ("containerd", "containerd", containerd)]
    rc, dk, ct = found
    assert (rc.version, rc.raw, rc.error, rc.kmem_flags) == (
        "1.0.0-rc5+dev", "runc version 1.0.0-rc5+dev", None, [RUNC_ALWAYS_KMEM])
    assert (dk.version, dk.error, dk.kmem_flags) == ("18.09.0", None, [DOCKER_BEFORE_18_09_1])
    assert (ct.version, ct.raw, ct.kmem_flags) == (
        None, "containerd: flag provided but not defined", [])
    assert ct.error == ("%s --version exited with status 2: containerd: flag provided but not "
                        "defined" % containerd)
    assert json.loads(json.dumps(rc.to_json()))["kmem_flags"] == [RUNC_ALWAYS_KMEM]


def test_discover_timeout_kills_the_whole_session(bindir):
    # The shell waits for a child `sleep`, which also holds the output pipe: killing only the
    # shell would leave communicate() waiting for the sleep.
    kubelet = _script(bindir, "kubelet", "#!/bin/sh\nsleep 30\necho 'Kubernetes v1.13.5'\n")
    start = time.monotonic()
    found = discover_runtimes(which=_which(bindir), timeout=0.5)
    elapsed = time.monotonic() - start
    assert elapsed < 5
    assert [(r.name, r.version, r.error) for r in found] == [
        ("kubelet", None, "%s --version timed out after 0.5 s" % kubelet)]


def test_discover_unparsable_and_unrunnable(bindir):
    runc = _script(bindir, "runc", "#!/bin/sh\necho 'hello'\n")
    docker = _script(bindir, "docker", "\x7fELF not really\n")  # executable, no shebang
    found = discover_runtimes(which=_which(bindir))
    assert [(r.name, r.version, r.raw) for r in found] == [("runc", None, "hello"),
                                                           ("docker", None, "")]
    assert found[0].error == "no version found in the output of %s --version" % runc
    assert found[1].error == "cannot run %s: Exec format error" % docker


def test_discover_nothing_installed(bindir):
    assert discover_runtimes(which=_which(bindir)) == []
