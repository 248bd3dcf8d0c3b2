"""Tests for bpftools.analyses.known_bugs: release parsing, the bug matrix, remediation steps."""
import json

import pytest

from bpftools.analyses import known_bugs as kb
from bpftools.runtimes import RuntimeVersion, kmem_flags

A, F, U, NA = kb.AFFECTED, kb.FIXED, kb.UNKNOWN, kb.NOT_APPLICABLE
ORDER = [kb.KMEM_ALL_SLABS, kb.SLUB_DEAD_CACHES, kb.MEMCG_ID_SPACE, kb.NOKMEM_BOOT_OPTION,
         kb.FNHE_DEL_RACE, kb.FNHE_REMOVE_OLDEST]


@pytest.mark.parametrize("release, vendor, base, sublevel, rhel_build, zstream, abi, rc", [
    ("3.10.0-957.el7.x86_64", "rhel", (3, 10), None, (957,), False, None, None),
    ("3.10.0-1127.19.1.el7.x86_64", "rhel", (3, 10), None, (1127, 19, 1), True, None, None),
    ("4.18.0-305.el8.x86_64", "rhel", (4, 18), None, (305,), False, None, None),
    ("5.14.0-70.13.1.el9_0.x86_64", "rhel", (5, 14), None, (70, 13, 1), True, None, None),
    ("6.1.0-28-amd64", "debian", (6, 1), None, None, False, 28, None),
    ("5.10.0-30-cloud-amd64", "debian", (5, 10), None, None, False, 30, None),
    ("4.19.0-0.bpo.1-amd64", "debian", (4, 19), None, None, False, 0, None),
    ("5.4.0-29-generic", "ubuntu", (5, 4), None, None, False, 29, None),
    ("5.15.0-1034-azure", "ubuntu", (5, 15), None, None, False, 1034, None),
    ("5.10.0-1-custom", "distro", (5, 10), None, None, False, 1, None),
    ("6.18.2", "upstream", (6, 18), 2, None, False, None, None),
    ("4.19", "upstream", (4, 19), 0, None, False, None, None),
    ("6.19-rc1", "upstream", (6, 19), 0, None, False, None, 1),
    ("6.18.44-fc-v657", "custom", (6, 18), 44, None, False, None, None),
    ("6.12.48+deb13-amd64", "custom", (6, 12), 48, None, False, None, None),
])
def test_parse_release(release, vendor, base, sublevel, rhel_build, zstream, abi, rc):
    r = kb.parse_release(release)
    assert (r.vendor, r.base, r.sublevel, r.rhel_build, r.zstream, r.abi, r.rc) == \
        (vendor, base, sublevel, rhel_build, zstream, abi, rc)


@pytest.mark.parametrize("release", ["", "linux", "v6.1", "6", "6.1.x", "6.18.2 extra"])
def test_parse_release_rejects(release):
    assert kb.parse_release(release) is None


# columns: kmem-all-slabs, slub-dead-caches, memcg-id-space, nokmem-boot-option,
#          fnhe-del-race, fnhe-remove-oldest
MATRIX = [
    ("3.10.0-327.el7.x86_64", (A, A, U, A, U, U)),       # 7.2 GA: before 514, fnhe unknown
    ("3.10.0-514.el7.x86_64", (A, A, U, A, A, U)),       # 7.3 GA (read in source)
    ("3.10.0-514.26.2.el7.x86_64", (A, U, U, U, U, U)),  # 7.3 z-stream: backports possible
    ("3.10.0-957.el7.x86_64", (A, A, U, U, A, U)),       # 7.6 GA, the incident kernel
    ("3.10.0-957.21.3.el7.x86_64", (A, U, U, U, U, U)),  # 7.6 z-stream
    ("3.10.0-1062.el7.x86_64", (U, A, U, U, U, U)),      # 7.7 GA: between the data points
    ("3.10.0-1075.el7.x86_64", (U, F, U, U, U, U)),      # first build with the slub fix
    ("3.10.0-1127.el7.x86_64", (NA, F, U, F, F, U)),     # 7.8 GA (read in source)
    ("3.10.0-1127.19.1.el7.x86_64", (NA, F, U, F, F, U)),
    ("3.10.0-1160.el7.x86_64", (NA, F, U, F, F, U)),     # 7.9
    ("3.10.99", (A, U, U, A, NA, U)),                    # vanilla: no ip_del_fnhe
    ("3.10.105", (A, U, U, A, U, U)),
    ("3.16.69", (A, U, U, A, U, U)),
    ("3.16.70", (A, U, U, A, F, U)),                     # fnhe fix backported to 3.16.70
    ("4.4.0-21-generic", (A, F, U, A, U, U)),
    ("4.5.0", (NA, F, U, U, U, U)),                      # nokmem: cgroup v2 only in 4.5
    ("4.19.0-6-amd64", (NA, F, F, F, U, U)),
    ("4.18.0-305.el8.x86_64", (NA, F, F, F, U, U)),      # RHEL 8: no el7 data, mainline rules
    ("5.4.0-29-generic", (NA, F, F, F, F, U)),
    ("5.10.0-30-cloud-amd64", (NA, F, F, F, F, U)),
    ("6.1.0-28-amd64", (NA, F, F, F, F, U)),             # Debian ABI hides the sublevel
    ("6.1", (NA, F, F, F, F, A)),
    ("6.1.141", (NA, F, F, F, F, A)),                    # absent in 6.1.141 (read in source)
    ("6.1.142", (NA, F, F, F, F, U)),
    ("6.12.48+deb13-amd64", (NA, F, F, F, F, U)),
    ("6.18", (NA, F, F, F, F, U)),
    ("6.18.1", (NA, F, F, F, F, U)),
    ("6.18.2", (NA, F, F, F, F, F)),                     # present in 6.18.2 (read in source)
    ("6.18.44-fc-v657", (NA, F, F, F, F, F)),            # this machine
    ("6.19-rc1", (NA, F, F, F, F, U)),
    ("6.19.3", (NA, F, F, F, F, F)),
    ("not-a-kernel", (U, U, U, U, U, U)),
]


@pytest.mark.parametrize("release, expected", MATRIX)
def test_check_release_matrix(release, expected):
    statuses = kb.check_release(release)
    assert [s.id for s in statuses] == ORDER
    assert tuple(s.status for s in statuses) == expected


def test_check_release_957_rows():
    rows = {s.id: s for s in kb.check_release("3.10.0-957.el7.x86_64")}
    fnhe = rows[kb.FNHE_DEL_RACE]
    assert fnhe.commit == "ee60ad219f5c"
    assert fnhe.title == "route: set the deleted fnhe fnhe_daddr to 0 in ip_del_fnhe to fix a race"
    assert "514 and 957 GA" in fnhe.reason
    assert fnhe.remediation.startswith("upgrade the kernel (RHEL 7: 3.10.0-1127 or later")
    assert "live patch" in fnhe.remediation
    slub = rows[kb.SLUB_DEAD_CACHES]
    assert (slub.commit, slub.title) == ("d6e0b7fa1186",
                                         "slub: make dead caches discard free slabs immediately")
    assert rows[kb.MEMCG_ID_SPACE].commit == "73f576c04b94"
    nokmem = rows[kb.NOKMEM_BOOT_OPTION]
    assert nokmem.reason.startswith("likely absent in RHEL 7.6 (957)")
    assert "rpm -q --changelog" in nokmem.remediation
    # fixed and not-applicable rows carry no remediation
    assert [s.remediation for s in kb.check_release("6.18.2")] == [""] * 6


def test_unknown_reason_names_debian_abi():
    oldest = kb.check_release("6.1.0-28-amd64")[-1]
    assert oldest.status == U
    assert oldest.reason.endswith("debian ABI 28 does not show the upstream stable sublevel "
                                  "(`uname -v` does)")


def test_unparsable_release_reason():
    assert kb.check_release("foo")[0].reason == "kernel release 'foo' not understood"


def test_bug_status_to_json():
    row = kb.check_release("6.1.141")[-1].to_json()
    assert json.loads(json.dumps(row)) == row
    assert (row["id"], row["commit"], row["status"]) == (kb.FNHE_REMOVE_OLDEST, "ac1499fcd40f", A)


def _rt(name, runtime, version):
    return RuntimeVersion(name, runtime, "/usr/bin/" + name, version,
                          kmem_flags=kmem_flags(runtime, version))


def test_remediation_957_with_old_runtimes():
    runtimes = [_rt("runc", "runc", "1.0.0-rc5+dev"), _rt("docker", "docker", "18.09.0"),
                _rt("containerd", "containerd", "1.2.6"), _rt("kubelet", "kubelet", "1.13.5")]
    steps = kb.remediation_for(kb.check_release("3.10.0-957.el7.x86_64"), runtimes)
    assert [s.id for s in steps] == ["runc-upgrade", "docker-upgrade", "kubelet-nokmem",
                                     "kernel-slub-dead-caches", "kernel-nokmem-boot-option",
                                     "kernel-fnhe-del-race"]
    assert steps[0].action.startswith("replace runc 1.0.0-rc5+dev (/usr/bin/runc): runc "
                                      "1.0.0-rc3 to rc5 turns kmem accounting on")
    assert "runc#1725" in steps[1].action and "--kernel-memory 100M" in steps[1].action
    assert steps[2].action.startswith("check how kubelet 1.13.5 (/usr/bin/kubelet) was built")
    assert "GOFLAGS=-tags=nokmem" in steps[2].action
    assert steps[0].why == "kmem-all-slabs-charged: affected"
    assert steps[4].why == "nokmem-boot-option: unknown"


def test_remediation_runc_between_rc6_and_rc94():
    steps = kb.remediation_for(kb.check_release("3.10.0-957.el7.x86_64"),
                               [_rt("docker-runc", "runc", "1.0.0-rc6")])
    assert [s.id for s in steps][:1] == ["runc-check-nokmem"]
    assert "kernel memory accounting disabled in this runc build" in steps[0].action


def test_remediation_514_without_runtimes():
    steps = kb.remediation_for(kb.check_release("3.10.0-514.el7.x86_64"), [])
    assert [s.id for s in steps] == ["runc-nokmem", "kernel-slub-dead-caches",
                                     "kernel-nokmem-boot-option", "kernel-fnhe-del-race"]
    assert steps[2].action.startswith("this kernel cannot switch kmem accounting off at boot")


def test_remediation_modern_runtimes_on_957_only_kernel_steps():
    runtimes = [_rt("runc", "runc", "1.1.12"), _rt("docker", "docker", "20.10.21")]
    steps = kb.remediation_for(kb.check_release("3.10.0-957.el7.x86_64"), runtimes)
    assert [s.id for s in steps] == ["kernel-slub-dead-caches", "kernel-nokmem-boot-option",
                                     "kernel-fnhe-del-race"]


def test_remediation_fixed_kernels():
    old = [_rt("runc", "runc", "1.0.0-rc3")]
    assert kb.remediation_for(kb.check_release("3.10.0-1127.19.1.el7.x86_64"), old) == []
    steps = kb.remediation_for(kb.check_release("6.1.141"), old)
    assert [(s.id, s.why) for s in steps] == [("kernel-fnhe-remove-oldest",
                                               "fnhe-remove-oldest: affected")]
    assert kb.remediation_for(kb.check_release("6.18.44-fc-v657"), old) == []
