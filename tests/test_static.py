"""Static guarantees: the Python 3.6 floor, and pure layers that never import bcc, click or rich."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PURE_DIRS = ["analyses"]
PURE_MODULES = ["bpftools/recording.py", "bpftools/errors.py", "bpftools/flamegraph.py",
                "bpftools/html_report.py", "bpftools/exports.py"]
FORBIDDEN = {"bcc", "click", "rich"}


def _python_files(*dirs):
    for d in dirs:
        for base, _, files in os.walk(os.path.join(ROOT, d)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(base, name)


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("path", sorted(list(_python_files(*PURE_DIRS))
                                        + [os.path.join(ROOT, m) for m in PURE_MODULES]))
def test_pure_modules_never_import_bcc_click_or_rich(path):
    assert FORBIDDEN.isdisjoint(_imports(path)), path


def test_only_the_capture_layer_imports_bcc():
    importers = sorted(os.path.relpath(p, ROOT) for p in _python_files("bpftools", "analyses", "probes")
                       if "bcc" in set(_imports(p)))
    assert importers == ["bpftools/capture.py"]


def test_python_36_floor():
    """vermin finds the minimum Python version of every shipped module: it must be <= 3.6."""
    targets = [os.path.join(ROOT, d) for d in ("bpftools", "analyses", "probes")]
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vermin"), "--no-tips", "--violations", "-t=3.6-",
                           "--backport", "dataclasses", "--eval-annotations"] + targets,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout


def test_test_module_basenames_are_unique():
    """pytest imports test modules by basename (rootdir mode, no packages): two test_x.py in tests/ and
    tests/kernel/ stop the collection of the whole suite."""
    names = [name for base, _, files in os.walk(os.path.join(ROOT, "tests")) for name in files
             if name.startswith("test_") and name.endswith(".py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
