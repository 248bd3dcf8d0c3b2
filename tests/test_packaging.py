"""The one distribution ships everything under bpftools/ (probes and analyses mapped inside it)."""
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_contents(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path), ROOT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stdout
    wheel = [f for f in os.listdir(str(tmp_path)) if f.endswith(".whl")][0]
    names = set(zipfile.ZipFile(str(tmp_path / wheel)).namelist())
    for probe in os.listdir(os.path.join(ROOT, "probes")):
        if probe.endswith((".c", ".h")):
            assert "bpftools/probes/" + probe in names
    for module in ("bpftools/analyses/kernel_log.py", "bpftools/tools/kmemsnoop.py", "bpftools/repro/cli.py",
                   "bpftools/cli.py", "bpftools/registry.py", "bpftools/kernel/symbols.py", "bpftools/iostall/program.py",
                   "bpftools/refleak/session.py"):
        assert module in names
    top_level = set(n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info"))
    assert top_level == {"bpftools"}
    entry = [n for n in names if n.endswith("entry_points.txt")][0]
    assert "bpftools = bpftools.cli:main" in zipfile.ZipFile(str(tmp_path / wheel)).read(entry).decode()


def test_wheel_has_every_package_of_the_tree(tmp_path):
    """setup.cfg lists the packages by hand (Python 3.6's setuptools): none may be left out."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), ROOT],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout
    wheel = [f for f in os.listdir(str(tmp_path)) if f.endswith(".whl")][0]
    names = set(zipfile.ZipFile(str(tmp_path / wheel)).namelist())
    for base, _, files in os.walk(os.path.join(ROOT, "bpftools")):
        for name in files:
            if name.endswith(".py"):
                assert os.path.relpath(os.path.join(base, name), ROOT) in names


def test_a_checkout_imports_as_is():
    """No install needed to import the package from a checkout: analyses/ and probes/ are reached
    through bpftools/analyses and bpftools/probes (links to the design card's top-level folders)."""
    code = ("import sys; sys.path.insert(0, %r); import bpftools.capture, bpftools.analyses.iojitter, "
            "bpftools.kernel.symbols; print(bpftools.capture.PROBES_DIR)" % ROOT)
    proc = subprocess.run(["/usr/bin/python3", "-S", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, cwd="/")
    assert proc.returncode == 0, proc.stdout
    assert os.path.realpath(proc.stdout.strip()) == os.path.join(ROOT, "probes")
