"""`bpftools doctor` lists a real live patch: the lab's bpftools_livepatch module replaces
cmdline_proc_show with an equivalent; doctor must report it with its function, enabled, not in
transition, and the kernel's K taint, and the module must come out cleanly at the end."""
import json
import os
import subprocess
import time

import pytest

from injectors import build_module, loaded
from kerneltier import skip_or_fail

pytestmark = pytest.mark.kernel
NAME = "bpftools_livepatch"
SYSFS = "/sys/kernel/livepatch/" + NAME


def _wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("%s did not happen within %d s" % (what, timeout))
        time.sleep(0.2)


def _read(path):
    with open(path) as f:
        return f.read().strip()


def _remove():
    """Disable the patch, wait for the transition back, rmmod (safe when nothing is loaded)."""
    if os.path.exists(SYSFS + "/enabled") and _read(SYSFS + "/enabled") == "1":
        with open(SYSFS + "/enabled", "w") as f:
            f.write("0\n")
    _wait(lambda: not os.path.exists(SYSFS), 60, "the patch's transition back")
    if loaded(NAME):
        subprocess.check_call(["rmmod", NAME])


def test_doctor_lists_a_real_live_patch_and_it_comes_out_cleanly(tmp_path):
    if not os.path.isdir("/sys/kernel/livepatch"):
        skip_or_fail("no /sys/kernel/livepatch: this kernel has no CONFIG_LIVEPATCH")
    before = _read("/proc/cmdline")
    ko = build_module(NAME, str(tmp_path))
    _remove()
    subprocess.check_call(["insmod", ko])
    try:
        _wait(lambda: os.path.exists(SYSFS + "/transition") and _read(SYSFS + "/transition") == "0", 60,
              "the patch's transition")
        assert _read("/proc/cmdline") == before          # the replacement is equivalent
        proc = subprocess.run(["bpftools", "doctor", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
        assert proc.returncode == 0, proc.stderr
        found = json.loads(proc.stdout)["live_patches"]
        (patch,) = [p for p in found["patches"] if p["name"] == NAME]
        assert (patch["source"], patch["enabled"], patch["transition"], patch["active"]) == (
            "livepatch", True, False, True)
        assert patch["functions"] == [{"object": "vmlinux", "name": "cmdline_proc_show", "sympos": 1}]
        assert NAME in found["modules"] and found["tainted"] is True
        text = subprocess.run(["bpftools", "doctor"], stdout=subprocess.PIPE, universal_newlines=True).stdout
        assert "vmlinux:cmdline_proc_show,1" in text and "tainted by a live patch (K)" in text
    finally:
        _remove()
    assert not loaded(NAME) and not os.path.exists(SYSFS)
    assert _read("/proc/cmdline") == before
