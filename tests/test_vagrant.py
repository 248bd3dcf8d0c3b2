"""The Vagrant boxes cannot boot here (no box can be downloaded): check what can be checked."""
import os
import shutil
import subprocess

import pytest

VAGRANT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vagrant")
VAGRANTFILES = [os.path.join(VAGRANT, d, "Vagrantfile") for d in ("centos7", "debian")]
SCRIPTS = [os.path.join(VAGRANT, "centos7", s) for s in ("provision.sh", "run-tier.sh")]


@pytest.mark.parametrize("path", VAGRANTFILES, ids=os.path.dirname)
def test_vagrantfile_is_valid_ruby(path):
    ruby = shutil.which("ruby")
    if ruby is None:
        if os.environ.get("BPFTOOLS_REQUIRE_ROOT") == "1":
            pytest.fail("ruby missing (scripts/test installs it)")
        pytest.skip("ruby not installed")
    proc = subprocess.run([ruby, "-c", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stdout


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_provision_scripts_parse(path):
    proc = subprocess.run(["bash", "-n", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stdout


def test_centos_box_is_pinned_to_7_6_and_provisions_with_scripts_setup():
    text = open(VAGRANTFILES[0]).read()
    assert 'config.vm.box = "centos/7"' in text and 'config.vm.box_version = "1811.02"' in text
    provision = open(SCRIPTS[0]).read()
    assert "bash scripts/setup" in provision and "/vagrant-src/.venv/bin/bpftools" in provision


def test_setup_has_the_el7_path():
    """What a CentOS/RHEL 7 install needs, in scripts/setup (it cannot run here: no EL7 machine or
    repository is reachable; the README says so)."""
    setup = open(os.path.join(os.path.dirname(VAGRANT), "scripts", "setup")).read()
    el7 = setup[setup.index("setup_el7() {"):setup.index("\n}\n", setup.index("setup_el7() {"))]
    for step in ('"kernel-devel-$(uname -r)"', "yum install -y python3 python3-pip",
                 "yum install -y epel-release && yum install -y python36 python36-pip",
                 "yum install -y bcc bcc-tools python-bcc", 'version_ge "$have" "$BCC_FLOOR"',
                 "vault.centos.org/7.9.2009/os/$basearch/", "bpftools-bcc-python2-bindings.pth",
                 "--upgrade 'pip<22' 'setuptools<60' wheel", "pip install -q '.[test]'"):
        assert step in el7, step
    assert "pip install -q -e" not in el7            # Python 3.6 cannot install a pyproject project editable
    assert "BCC_FLOOR=0.9.0" in setup


def test_the_version_compare_of_setup(tmp_path):
    setup = open(os.path.join(os.path.dirname(VAGRANT), "scripts", "setup")).read()
    func = [line for line in setup.splitlines() if line.startswith("version_ge()")][0]
    for a, b, expected in (("0.6.0", "0.9.0", 1), ("0.10.0", "0.9.0", 0), ("0.9.0", "0.9.0", 0), ("0.8.0", "0.9.0", 1)):
        proc = subprocess.run(["bash", "-c", func + "; version_ge %s %s" % (a, b)])
        assert proc.returncode == expected, (a, b)
