"""Commands work in an ASCII locale on the oldest click and rich setup.cfg allows.

CentOS 7's Python 3.6 keeps LC_ALL=C as ASCII (PEP 538/540, which coerce it to UTF-8, are 3.7), and
click < 8.1 then aborts every command. This Python is newer, so the 3.6 behaviour is brought back
with PYTHONCOERCECLOCALE=0 PYTHONUTF8=0; the test checks that it is (an ASCII preferred encoding and
plain click aborting), then runs the commands from a venv holding click 7.0 and rich 10.0.0.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
OLDEST = ["click==7.0", "rich==10.0.0", "pyelftools==0.27"]     # setup.cfg's floors
ASCII_ENV = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0", PYTHONIOENCODING="")
LOG = "[  100.100000] unregister_netdevice: waiting for v\u00e9th0 to become free. Usage count = 1\n"


@pytest.fixture(scope="module")
def oldest(tmp_path_factory):
    """A venv with the oldest click and rich, and bpftools installed from this tree (not editable, as on 3.6)."""
    venv = str(tmp_path_factory.mktemp("oldest") / "venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in (OLDEST, ["--no-deps", ROOT]):
        proc = subprocess.run(pip + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        assert proc.returncode == 0, proc.stdout
    return venv


def run(venv, *args, **kw):
    env = dict(ASCII_ENV)
    env.pop("PYTHONIOENCODING")
    return subprocess.run([os.path.join(venv, "bin", "bpftools")] + list(args), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=kw.get("cwd", "/"))


def test_the_environment_is_the_one_that_breaks(oldest):
    """Not vacuous: in this environment the encoding is ASCII and click 7.0 on its own aborts."""
    env = dict(ASCII_ENV)
    env.pop("PYTHONIOENCODING")
    python = os.path.join(oldest, "bin", "python")
    enc = subprocess.run([python, "-c", "import locale; print(locale.getpreferredencoding(False))"], env=env,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    assert enc in ("ANSI_X3.4-1968", "ascii")
    plain = subprocess.run([python, "-c", "import click; click.command()(lambda: None)(args=[])"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert plain.returncode != 0 and "ASCII" in plain.stdout
    version = subprocess.run([python, "-c", "import click, rich; print(click.__version__)"], env=env,
                             stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    assert version == "7.0"


def test_help_and_version(oldest):
    proc = run(oldest, "--help")
    assert proc.returncode == 0, proc.stderr
    assert b"Diagnose kmem-accounting I/O jitter" in proc.stdout
    assert run(oldest, "refleak", "--help").returncode == 0


def test_doctor_reads_a_log_with_non_ascii_text(oldest, tmp_path):
    log = tmp_path / "dmesg.txt"
    log.write_bytes(LOG.encode("utf-8"))
    proc = run(oldest, "doctor", "--log", str(log), "--release", "3.10.0-957.el7.x86_64")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode("utf-8")
    assert "DETECTED" in out and "- v\u00e9th0: 1 message(s), max usage count 1" in out   # UTF-8 out
    proc = run(oldest, "doctor", "--log", str(log), "--release", "3.10.0-957.el7.x86_64", "--json")
    assert proc.returncode == 0, proc.stderr


def test_report_renders_and_exports_a_recording(oldest, tmp_path):
    rec = os.path.join(FIXTURES, "iojitter", "lab-6.1-injector.jsonl")
    proc = run(oldest, "report", rec)
    assert proc.returncode == 0, proc.stderr
    assert b"Verdict:" in proc.stdout
    proc = run(oldest, "report", rec, "--report", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "report.html").exists()


def test_a_usage_error_is_one_clear_line(oldest):
    proc = run(oldest, "slabfail", "--mode", "bogus")
    assert proc.returncode == 2
    assert b"Invalid value" in proc.stderr
