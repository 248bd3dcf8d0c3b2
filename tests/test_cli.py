"""The real CLI: help with examples everywhere, one-line errors with distinct exit codes, no tracebacks."""
import os
import shutil
import subprocess
import sys

import pytest

from bpftools.errors import EXIT_BAD_INPUT, EXIT_NOT_ROOT, EXIT_USAGE

COMMANDS = [[], ["doctor"], ["kmemsnoop"], ["report"], ["slabfail"], ["mempoolwait"], ["writeslow"], ["iojitter"],
            ["netdevwait"], ["refleak"], ["repro"], ["repro", "kmem-io"], ["repro", "netns-churn"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "bpftools")
def test_help_has_examples(bpftools_cli, cmd):
    r = bpftools_cli(*(cmd + ["--help"]))
    assert r.code == 0
    assert "Examples:" in r.out
    assert ("bpftools %s" % cmd[0] if cmd else "bpftools doctor") in r.out


def _one_line_error(r, code):
    assert r.code == code, (r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    return lines[0]


def test_report_of_missing_file(bpftools_cli, tmp_path):
    line = _one_line_error(bpftools_cli("report", str(tmp_path / "none.jsonl")), EXIT_BAD_INPUT)
    assert line.startswith("bpftools: error: cannot read") and "none.jsonl" in line


def test_report_of_a_non_recording(bpftools_cli, tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_bytes(b"\xff\xfe garbage\n")
    line = _one_line_error(bpftools_cli("report", str(bad)), EXIT_BAD_INPUT)
    assert "not a bpftools recording" in line


def test_doctor_log_missing(bpftools_cli, tmp_path):
    line = _one_line_error(bpftools_cli("doctor", "--log", str(tmp_path / "nope.log")), EXIT_BAD_INPUT)
    assert "nope.log" in line


@pytest.mark.parametrize("args", [["kmemsnoop", "-p", "abc"], ["kmemsnoop", "-p", "0"],
                                  ["kmemsnoop", "-d", "-3"], ["nosuchcommand"], ["report"]])
def test_usage_errors(bpftools_cli, args):
    r = bpftools_cli(*args)
    assert r.code == EXIT_USAGE and "Traceback" not in r.err
    assert "Error" in r.err


def test_ebpf_passes_values_as_cflags_not_source(bpftools_cli):
    r = bpftools_cli("kmemsnoop", "--ebpf", "-p", "424242")
    assert r.code == 0
    note, first, rest = r.out.split("\n", 2)
    assert note.startswith("// ") and "424242" not in note
    assert "-DFILTER_TGID=424242" in first
    assert "424242" not in rest and "struct kmem_event" in rest


@pytest.mark.root
def test_not_root_is_a_one_line_error(bpftools_cli):
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) missing")
    proc_args = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                 "-m", "bpftools.cli", "kmemsnoop", "-d", "1"]
    proc = subprocess.run(proc_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          cwd="/")
    assert proc.returncode == EXIT_NOT_ROOT, proc.stderr
    assert proc.stderr.strip() == ("bpftools: error: tracing needs root (or CAP_BPF and CAP_PERFMON); "
                                   "run it with sudo")


NO_BCC = "import sys; sys.modules['bcc'] = None; from bpftools.cli import main; sys.exit(main(sys.argv[1:]))"


def _without_bcc(*args, **kw):
    """Run the CLI in a Python where `import bcc` fails, as on a node without python3-bpfcc."""
    return subprocess.run([sys.executable, "-c", NO_BCC] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120, **kw)


@pytest.mark.parametrize("args", [["--help"], ["doctor", "--help"], ["report", "--help"]])
def test_help_works_without_bcc(args):
    proc = _without_bcc(*args)
    assert proc.returncode == 0 and "Examples:" in proc.stdout, proc.stderr


def test_doctor_on_a_log_and_report_work_without_bcc(tmp_path):
    log = tmp_path / "k.log"
    log.write_text("[  10.000000] unregister_netdevice: waiting for eth0.100 to become free. Usage count = 1\n")
    proc = _without_bcc("doctor", "--json", "--log", str(log), "--release", "5.4.0-29-generic")
    assert proc.returncode == 0, proc.stderr
    import json
    report = json.loads(proc.stdout)
    assert report["findings"][0]["devices"][0]["name"] == "eth0.100"
    rec = tmp_path / "r.jsonl"
    rec.write_text('{"format": "bpftools-recording/1", "tool": "kmemsnoop", "argv": []}\n')
    assert _without_bcc("report", str(rec)).returncode == 0


@pytest.mark.root
def test_tracing_without_bcc_names_the_package():
    proc = _without_bcc("kmemsnoop", "-d", "1")
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.strip().startswith("bpftools: error: missing dependency: the bcc Python module")
    assert "python3-bpfcc" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.root
def test_missing_kernel_headers_is_a_one_line_error():
    """In a private mount namespace /lib/modules is an empty tmpfs: no headers for bcc."""
    if shutil.which("unshare") is None or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        pytest.skip("needs unshare and a kernel without built-in kheaders")
    script = 'mount -t tmpfs none /lib/modules && exec "$0" -m bpftools.cli kmemsnoop -d 1'
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, sys.executable],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert proc.returncode == 5, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("bpftools: error: missing kernel feature: kernel headers for %s" % os.uname().release)
    assert "linux-headers-" in line and "\n" not in line
