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


@pytest.mark.parametrize("args, line", [
    (["kmemsnoop", "-p", "abc"], "Invalid value for '-p' / '--pid': 'abc' is not a valid integer range; "
                                 "try 'bpftools kmemsnoop --help'"),
    (["kmemsnoop", "-d", "-3"], "Invalid value for '-d' / '--duration': must be > 0; try 'bpftools kmemsnoop --help'"),
    (["nosuchcommand"], "No such command 'nosuchcommand'; try 'bpftools --help'"),
    (["report"], "Missing argument 'RECORDING...'; try 'bpftools report --help'"),
])
def test_a_usage_error_is_one_line_exit_2(bpftools_cli, args, line):
    """click's own four lines (usage, try, blank, error) become one."""
    assert _one_line_error(bpftools_cli(*args), EXIT_USAGE) == "bpftools: error: " + line


# Every float option and argument, fed NaN or infinity (they passed the "> 0" checks: four tools attached
# and exited 0 at once, netdevwait -d nan never stopped).
@pytest.mark.parametrize("args, option", [
    (["kmemsnoop", "-d", "nan"], "'-d' / '--duration'"),
    (["netdevwait", "-d", "nan"], "'-d' / '--duration'"),
    (["refleak", "-d", "inf"], "'-d' / '--duration'"),
    (["slabfail", "-d", "-inf"], "'-d' / '--duration'"),
    (["slabfail", "nan"], "'[INTERVAL]'"),
    (["iojitter", "5", "inf"], "'[COUNT]'"),
    (["iojitter", "inf"], "'[INTERVAL]'"),
    (["iojitter", "-m", "nan"], "'-m' / '--min-ms'"),
    (["iojitter", "--wait-min-ms", "NaN"], "'--wait-min-ms'"),
    (["mempoolwait", "-m", "nan"], "'-m' / '--min-ms'"),
    (["writeslow", "-m", "1e999"], "'-m' / '--min-ms'"),
    (["repro", "kmem-io", "--slow-ms", "nan"], "'--slow-ms'"),
    (["repro", "kmem-io", "-d", "inf"], "'-d' / '--duration'"),
    (["repro", "netns-churn", "--settle", "nan"], "'--settle'"),
    (["repro", "netns-churn", "--start-delay", "inf"], "'--start-delay'"),
])
def test_nan_and_infinity_are_usage_errors(bpftools_cli, args, option):
    value = args[-1]
    r = bpftools_cli(*args, timeout=30)
    line = _one_line_error(r, EXIT_USAGE)
    if option == "'[COUNT]'":       # an integer argument: click's own message
        assert line.startswith("bpftools: error: Invalid value for '[COUNT]': 'inf' is not a valid integer")
        return
    assert line == "bpftools: error: Invalid value for %s: %r is not a finite number; try 'bpftools %s --help'" % (
        option, value, " ".join(args[:2] if args[0] == "repro" else args[:1]))


@pytest.mark.parametrize("args, message", [
    (["writeslow", "-m", "-0.5"], "Invalid value for '-m' / '--min-ms': must be >= 0"),
    (["slabfail", "0"], "Invalid value for '[INTERVAL]': must be > 0"),
    (["netdevwait", "-d", "x"], "Invalid value for '-d' / '--duration': 'x' is not a number"),
])
def test_float_bounds_are_usage_errors(bpftools_cli, args, message):
    assert _one_line_error(bpftools_cli(*args), EXIT_USAGE).startswith("bpftools: error: " + message + ";")


def test_refleak_unknown_strategy_is_a_usage_error(bpftools_cli):
    assert _one_line_error(bpftools_cli("refleak", "--strategy", "bogus"), EXIT_USAGE) == (
        "bpftools: error: Invalid value for '--strategy': 'bogus': choose from auto, watch, holders, ref_tracker, "
        "inline (comma-separated); try 'bpftools refleak --help'")


# Conflicting or empty options were ignored without a word.
@pytest.mark.parametrize("args, message", [
    (["report", "R", "--report", ""], "Invalid value for '--report': an empty name: give a file or directory; "
                                      "try 'bpftools report --help'"),
    (["report", "R", "--html", ""], "Invalid value for '--html': an empty name: give a file or directory; "
                                    "try 'bpftools report --help'"),
    (["report", "R", "--json", "--report", "D"], "--json prints the recordings: it cannot be combined with --folded, "
                                                 "--speedscope, --svg, --html or --report; try 'bpftools report --help'"),
    (["report", "R", "--json", "--folded", "-"], "--json prints the recordings: it cannot be combined with --folded, "
                                                 "--speedscope, --svg, --html or --report; try 'bpftools report --help'"),
    (["doctor", "--capabilities", "--log", "X"], "--capabilities describes this kernel: it takes no --log or "
                                                 "--release; try 'bpftools doctor --help'"),
    (["kmemsnoop", "--record", ""], "Invalid value for '--record': an empty name: give a file or directory; "
                                    "try 'bpftools kmemsnoop --help'"),
    (["refleak", "--json", "--folded", "-"], "--json and --folded - both print on stdout: write the folded stacks "
                                             "to a file; try 'bpftools refleak --help'"),
])
def test_conflicting_or_empty_options_are_usage_errors(bpftools_cli, tmp_path, args, message):
    kmem_recording = tmp_path / "r.jsonl"
    kmem_recording.write_text('{"format": "bpftools-recording/1", "tool": "kmemsnoop", "argv": []}\n')
    args = [str(kmem_recording) if a == "R" else str(tmp_path / "d") if a == "D" else a for a in args]
    assert _one_line_error(bpftools_cli(*args), EXIT_USAGE) == "bpftools: error: " + message
    assert not (tmp_path / "d").exists()


def _doctor_log(tmp_path):
    log = tmp_path / "k.log"
    log.write_text("[  10.000000] unregister_netdevice: waiting for eth0 to become free. Usage count = 1\n")
    return ["doctor", "--log", str(log), "--release", "5.4.0-29-generic"]


@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_a_closed_pipe_ends_quietly_with_exit_0(tmp_path, as_json):
    """`bpftools doctor | head -1`: the reader is gone before the first write (EPIPE, SIGPIPE ignored)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "bpftools.cli"] + _doctor_log(tmp_path) + as_json,
                              stdout=write_end, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_full_stdout_is_one_line_exit_3(tmp_path, unbuffered):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    env = dict(os.environ, PYTHONUNBUFFERED=unbuffered)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "bpftools.cli"] + _doctor_log(tmp_path), stdout=full,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=120, env=env)
    assert (proc.returncode, proc.stderr) == (EXIT_BAD_INPUT, "bpftools: error: cannot write to stdout: "
                                                              "No space left on device\n")


def test_a_slub_line_without_timestamp_prints_no_none(bpftools_cli, tmp_path):
    log = tmp_path / "k.log"
    log.write_text("SLUB: Unable to allocate memory on node -1 (gfp=0x8020)\n")
    r = bpftools_cli("doctor", "--log", str(log), "--release", "3.10.0-957.el7.x86_64")
    assert r.code == 0, r.err
    assert "  - 1 SLUB allocation failure(s)\n" in r.out                  # not "(), None .. None"
    assert "│ slub_alloc_failure │ 1     │ certain    │ -          │ -         │" in r.out  # not None, None


def test_argv_stored_as_a_string_prints_as_one_command(bpftools_cli, tmp_path):
    rec = tmp_path / "r.jsonl"
    rec.write_text('{"format": "bpftools-recording/1", "tool": "kmemsnoop", "argv": "bpftools kmemsnoop -d 5"}\n')
    r = bpftools_cli("report", str(rec))
    assert r.code == 0, r.err
    assert "command: bpftools kmemsnoop -d 5\n" in r.out


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
