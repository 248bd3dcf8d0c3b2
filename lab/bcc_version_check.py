"""In-VM check of a ``--bcc TAG`` lab image: the bcc that Python imports is the one built from TAG.

Not collected on the host (testpaths is tests/); name it on the run's command line:

    python3 lab/run.py bullseye --bcc v0.10.0 -- lab/bcc_version_check.py tests/kernel/test_mempool_probes.py

lab/build.py writes /etc/bpftools-lab-bcc.json (tag, commits, LLVM) into such an image; on an image
with the suite's own python3-bpfcc the check skips.
"""
import ctypes.util
import json
import os
import subprocess

import pytest

MARKER = "/etc/bpftools-lab-bcc.json"


@pytest.mark.kernel
def test_python_imports_the_bcc_built_from_the_tag():
    if not os.path.exists(MARKER):
        pytest.skip("not a --bcc lab image (no %s)" % MARKER)
    with open(MARKER) as f:
        built = json.load(f)
    import bcc
    import bcc.version
    want = built["tag"].lstrip("v")
    assert bcc.version.__version__ == want, (bcc.version.__version__, bcc.__file__)
    assert bcc.__file__.startswith("/usr/lib/python3/dist-packages/bcc/"), bcc.__file__
    # libbcc.so.0 (what bcc/libbcc.py loads) is the library of that version, and Debian's is absent.
    lib = ctypes.util.find_library("bcc")
    assert lib == "libbcc.so.0", lib
    assert os.path.realpath("/usr/lib/x86_64-linux-gnu/libbcc.so.0").endswith("libbcc.so." + want)
    dpkg = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", "python3-bpfcc", "libbpfcc"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert "install ok installed" not in dpkg.stdout, dpkg.stdout
