"""The node's distribution decides the install hints; a bcc older than the floor is named, not a crash."""
import os
import subprocess
import sys

import pytest

from bpftools.kernel.distro import bcc_hint, distro_name, family, headers_hint

OS_RELEASES = [
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n', "debian"),
    ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"\n', "debian"),
    # CentOS 7.6's /etc/os-release (centos-release-7-6.1810.2.el7.centos)
    ('NAME="CentOS Linux"\nVERSION="7 (Core)"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"\n'
     'PRETTY_NAME="CentOS Linux 7 (Core)"\n', "el7"),
    ('NAME="Red Hat Enterprise Linux Server"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="7.6"\n', "el7"),
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\n', "el"),
    ('ID=fedora\nVERSION_ID=40\n', "el"),
    ('ID=alpine\nVERSION_ID=3.20.0\n', "unknown"),
]


@pytest.mark.parametrize("text, expected", OS_RELEASES, ids=[e + str(i) for i, (_, e) in enumerate(OS_RELEASES)])
def test_family_from_os_release(tmp_path, text, expected):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text(text)
    assert family(str(tmp_path)) == expected


def test_hints_per_family(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text(OS_RELEASES[2][0])
    root = str(tmp_path)
    assert distro_name(root) == "CentOS Linux 7 (Core)"
    assert bcc_hint(root).startswith("scripts/setup, or: yum install bcc python-bcc (0.9.0 or newer")
    assert headers_hint("3.10.0-957.el7.x86_64", root) == "yum install kernel-devel-3.10.0-957.el7.x86_64"
    assert family(str(tmp_path / "nothing")) == "unknown"
    assert "0.9.0 or newer" in bcc_hint(str(tmp_path / "nothing"))


# The shape of bcc 0.6.0 - 0.8.0's Python package as far as the floor check looks: table.PerfEventArray
# without event() (it came in v0.9.0). The real old releases cannot run here (they need their own libbcc).
OLD_BCC = {"__init__.py": "from . import table\n", "table.py": "class PerfEventArray(object):\n    pass\n"}


@pytest.mark.root
def test_a_bcc_older_than_the_floor_is_named(tmp_path):
    pkg = tmp_path / "bcc"
    pkg.mkdir()
    for name, text in OLD_BCC.items():
        (pkg / name).write_text(text)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    code = "import sys; sys.path.insert(0, %r); from bpftools.cli import main; sys.exit(main())" % str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code, "kmemsnoop", "-d", "1"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120, env=env)
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.strip().startswith("bpftools: error: missing dependency: bcc 0.9.0 or newer (this bcc cannot "
                                          "decode perf records: no PerfEventArray.event)")
    assert "Traceback" not in proc.stderr
