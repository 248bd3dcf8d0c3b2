"""``bpftools plan`` on a real kernel: the node's own plans, and the same plans made elsewhere from the
description ``--save-kernel`` writes. The description is kept for the host tests
(tests/fixtures/kernels/<release>/, see tests/test_plan.py)."""
import json
import os
import subprocess
import sys

import pytest

from kerneltier import keep_for_host

pytestmark = pytest.mark.kernel


def _bpftools(*args):
    done = subprocess.run([sys.executable, "-m", "bpftools.cli"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, cwd="/")
    assert done.returncode == 0, (args, done.returncode, done.stderr)
    return done


def test_a_saved_description_plans_exactly_like_the_node(tmp_path):
    described = str(tmp_path / "kernel")
    saved = _bpftools("plan", "--save-kernel", described)
    assert sorted(os.listdir(described)) == ["config", "facts.json", "kallsyms"], saved.stderr
    here = json.loads(_bpftools("plan", "--json").stdout)
    there = json.loads(_bpftools("plan", "--json", "--kernel", described).stdout)
    assert here["kernel_release"] == there["kernel_release"] == os.uname().release
    assert (here["described"], there["described"]) == (False, True)
    assert there["assumed"] == []          # every answer came from the description
    assert here["plans"] == there["plans"]
    # the lab kernels have kprobes and BTF: the kprobe plans, not the fallbacks
    modes = dict((p["tool"], p["mode"]) for p in here["plans"])
    assert modes["mempoolwait"] == modes["slabfail"] == "kprobe", here["plans"]
    assert modes["netdevwait"] == "kprobe", here["plans"]
    for name in ("config", "facts.json", "kallsyms"):
        keep_for_host(os.path.join(described, name), "kernel/" + name)
