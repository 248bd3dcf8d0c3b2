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


def test_centos_box_is_pinned_to_7_6():
    text = open(VAGRANTFILES[0]).read()
    assert 'config.vm.box = "centos/7"' in text and 'config.vm.box_version = "1811.02"' in text
    assert "7.6.1810" in open(SCRIPTS[0]).read()
