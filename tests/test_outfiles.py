"""The output layer (bpftools/outfiles.py) against a hostile local user: planted links, FIFOs and directories.

Run as root, as bpftools is; the planted entries belong to user nobody (uid 65534), the victims to root.
Each writer is driven through the real CLI where one reaches it without BPF (report's exports,
netdevwait's --record and --ready-file in kernel-log mode, plan --save-kernel).
"""
import errno
import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from bpftools import outfiles
from bpftools.errors import EXIT_BAD_INPUT, BadInput
from bpftools.recording import FORMAT, Recorder, make_header
from bpftools.refleak import inline_sites

pytestmark = pytest.mark.root

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IOJITTER_61 = os.path.join(ROOT, "tests", "fixtures", "iojitter", "lab-6.1-injector.jsonl")
NOBODY = 65534
SECRET = "root only\n"


def cli(*args, timeout=60, sudo_uid=None):
    """`bpftools ARGS` as a subprocess with umask 0, so the modes seen are the ones bpftools asks for."""
    env = dict((k, v) for k, v in os.environ.items() if k != "SUDO_UID")
    env.update({"SUDO_UID": str(sudo_uid)} if sudo_uid is not None else {})
    proc = subprocess.run([sys.executable, "-m", "bpftools.cli"] + list(args), cwd=ROOT, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, preexec_fn=lambda: os.umask(0))
    return proc.returncode, proc.stdout, proc.stderr


def one_line_error(result):
    """The error line (the last; netdevwait's log mode prints a note before it)."""
    code, _, err = result
    assert code == EXIT_BAD_INPUT, err
    lines = err.splitlines()
    assert "Traceback" not in err and [n for n in lines if n.startswith("bpftools: error")] == lines[-1:], err
    return lines[-1]


def recording(path):
    """A kmemsnoop recording made by hand: a header and one event."""
    event = {"type": "kmem_file", "ts_ns": 10 ** 9, "tgid": 100, "tid": 100, "comm": "sh", "op": "write",
             "path": "/sys/fs/cgroup/memory/pod/memory.kmem.limit_in_bytes", "value": "1\n", "ret": 2,
             "writer_cgroup": "/kubepods/pod", "writer_cgroup_v2": None, "container": None, "error": None}
    with open(path, "w") as f:
        f.write(json.dumps({"format": FORMAT, "tool": "kmemsnoop", "argv": ["bpftools", "kmemsnoop"]}) + "\n")
        f.write(json.dumps(event) + "\n")
    return path


def victim(tmp_path):
    """A root-only file a planted link points at."""
    path = tmp_path / "victim"
    path.write_text(SECRET)
    os.chmod(str(path), 0o600)
    return path


def planted_dir(path, mode=0o755):
    """A directory of user nobody's."""
    os.mkdir(str(path))
    os.chmod(str(path), mode)
    os.chown(str(path), NOBODY, NOBODY)
    return path


def planted_link(target, path):
    os.symlink(str(target), str(path))
    os.lchown(str(path), NOBODY, NOBODY)
    return path


def shared_tmp(tmp_path):
    """A /tmp of its own: root's, world-writable and sticky, where anyone can plant."""
    path = tmp_path / "tmp"
    os.mkdir(str(path))
    os.chmod(str(path), 0o1777)
    return path


def mode(path):
    return stat.S_IMODE(os.lstat(str(path)).st_mode)


def entries(path):
    return sorted(os.listdir(str(path)))


# --- finding 1: planted links and FIFOs ------------------------------------------------------------

def test_report_into_a_directory_of_another_user_is_refused(tmp_path):
    """The issue's case: nobody's D, D/report.html -> a root-only file."""
    secret = victim(tmp_path)
    d = planted_dir(tmp_path / "D")
    planted_link(secret, d / "report.html")
    line = one_line_error(cli("report", recording(str(tmp_path / "r.jsonl")), "--report", str(d)))
    assert line == ("bpftools: error: %s is owned by uid 65534 (not root or you): not writing into it "
                    "without --force" % d)
    assert secret.read_text() == SECRET and entries(d) == ["report.html"]


def test_force_still_never_writes_through_a_planted_link(tmp_path):
    secret = victim(tmp_path)
    d = planted_dir(tmp_path / "D")
    planted_link(secret, d / "report.html")
    line = one_line_error(cli("--force", "report", recording(str(tmp_path / "r.jsonl")), "--report", str(d)))
    assert line == "bpftools: error: %s/report.html is a symbolic link: not writing through it" % d
    assert secret.read_text() == SECRET and entries(d) == ["report.html"]


def test_a_link_planted_in_a_shared_tmp_is_not_written_through(tmp_path):
    secret, shared = victim(tmp_path), shared_tmp(tmp_path)
    link = planted_link(secret, shared / "incident.html")
    line = one_line_error(cli("report", recording(str(tmp_path / "r.jsonl")), "--html", str(link)))
    assert line == "bpftools: error: %s is a symbolic link: not writing through it" % link
    assert secret.read_text() == SECRET and os.path.islink(str(link))


def test_a_report_directory_that_is_a_link_is_refused(tmp_path):
    shared, elsewhere = shared_tmp(tmp_path), tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = planted_link(elsewhere, shared / "kmem-report")
    line = one_line_error(cli("report", recording(str(tmp_path / "r.jsonl")), "--report", str(link)))
    assert line == "bpftools: error: %s is a symbolic link: not writing through it" % link
    assert entries(elsewhere) == []


def test_a_dangling_link_is_not_created_through(tmp_path):
    shared = shared_tmp(tmp_path)
    target = tmp_path / "created-by-root"
    link = planted_link(target, shared / "flame.svg")
    line = one_line_error(cli("report", IOJITTER_61, "--svg", str(link)))
    assert line == "bpftools: error: %s is a symbolic link: not writing through it" % link
    assert not os.path.lexists(str(target))


def test_a_dangling_link_as_report_directory_is_not_created(tmp_path):
    shared = shared_tmp(tmp_path)
    target = tmp_path / "made-by-root"
    link = planted_link(target, shared / "out")
    line = one_line_error(cli("report", recording(str(tmp_path / "r.jsonl")), "--report", str(link)))
    assert line == "bpftools: error: %s is a symbolic link: not writing through it" % link
    assert not os.path.lexists(str(target))


def test_a_fifo_named_report_html_is_refused_without_hanging(tmp_path):
    shared = shared_tmp(tmp_path)
    out = shared / "out"
    out.mkdir()
    os.mkfifo(str(out / "report.html"))
    line = one_line_error(cli("report", recording(str(tmp_path / "r.jsonl")), "--report", str(out), timeout=30))
    assert line == "bpftools: error: %s/report.html is a FIFO: not writing to it" % out
    assert stat.S_ISFIFO(os.lstat(str(out / "report.html")).st_mode)


@pytest.mark.parametrize("option", ["--folded", "--speedscope", "--svg", "--html"])
def test_every_export_option_refuses_a_fifo(tmp_path, option):
    fifo = shared_tmp(tmp_path) / "out"
    os.mkfifo(str(fifo))
    line = one_line_error(cli("report", IOJITTER_61, option, str(fifo), timeout=30))
    assert line == "bpftools: error: %s is a FIFO: not writing to it" % fifo


def test_a_socket_is_refused(tmp_path):
    path = str(tmp_path / "s")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(path)
        with pytest.raises(BadInput) as err:
            outfiles.write_text(path, "x")
        assert str(err.value) == "%s is a socket: not writing to it" % path
    finally:
        sock.close()


def test_a_device_is_refused(tmp_path):
    path = str(tmp_path / "null")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(BadInput) as err:
        outfiles.write_text(path, "x")
    assert str(err.value) == "%s is a device: not writing to it" % path


def test_a_hard_link_to_a_root_file_is_replaced_not_written_into(tmp_path):
    secret = victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    os.link(str(secret), str(out / "report.html"))
    code, _, err = cli("report", recording(str(tmp_path / "r.jsonl")), "--report", str(out))
    assert code == 0, err
    assert secret.read_text() == SECRET and os.stat(str(secret)).st_nlink == 1
    assert "<html" in (out / "report.html").read_text()


def test_another_users_file_in_a_shared_tmp_is_refused_then_replaced_with_force(tmp_path):
    shared = shared_tmp(tmp_path)
    planted = shared / "incident.html"
    planted.write_text("nobody's")
    os.chown(str(planted), NOBODY, NOBODY)
    args = ("report", recording(str(tmp_path / "r.jsonl")), "--html", str(planted))
    line = one_line_error(cli(*args))
    assert line == ("bpftools: error: %s is owned by uid 65534 (not root or you): not replacing it without --force"
                    % planted)
    code, _, err = cli("--force", *args)
    assert code == 0, err
    st = os.lstat(str(planted))
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600) and "<html" in planted.read_text()


# --- --record and --ready-file (netdevwait in kernel-log mode needs no BPF) -----------------------------

def netdevwait(tmp_path, *args):
    log = tmp_path / "kmsg"
    log.write_text("6,1,20000000,-;unregister_netdevice: waiting for eth0 to become free. Usage count = 2\n")
    return cli("netdevwait", "--mode", "log", "--kmsg", str(log), "-d", "0.3", *args, timeout=60)


def test_record_and_ready_file_are_0600(tmp_path):
    rec, ready = tmp_path / "r.jsonl", tmp_path / "ready"
    code, _, err = netdevwait(tmp_path, "--record", str(rec), "--ready-file", str(ready))
    assert code == 0, err
    assert (mode(rec), mode(ready)) == (0o600, 0o600)
    assert ready.read_text() == "ready\n" and json.loads(rec.read_text().splitlines()[0])["format"] == FORMAT


def test_record_through_a_planted_link_is_refused(tmp_path):
    secret = victim(tmp_path)
    link = planted_link(secret, shared_tmp(tmp_path) / "r.jsonl")
    line = one_line_error(netdevwait(tmp_path, "--record", str(link)))
    assert line == "bpftools: error: %s is a symbolic link: not writing through it" % link
    assert secret.read_text() == SECRET


def test_record_to_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = shared_tmp(tmp_path) / "r.jsonl"
    os.mkfifo(str(fifo))
    line = one_line_error(netdevwait(tmp_path, "--record", str(fifo)))
    assert line == "bpftools: error: %s is a FIFO: not writing to it" % fifo


def test_record_into_a_missing_directory_names_it():
    line = one_line_error(cli("netdevwait", "--log", "-", "--record", "/nonexistent/dir/r.jsonl"))
    assert line == "bpftools: error: cannot write recording into /nonexistent/dir: No such file or directory"


def test_ready_file_through_a_dangling_link_is_not_created(tmp_path):
    target = tmp_path / "made-by-root"
    link = planted_link(target, shared_tmp(tmp_path) / "ready")
    line = one_line_error(netdevwait(tmp_path, "--ready-file", str(link)))
    assert line == "bpftools: error: %s is a symbolic link: not writing through it" % link
    assert not os.path.lexists(str(target))


def test_a_recording_replaces_its_own_old_file_and_stays_flushed_line_by_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("old\n")
    os.chmod(str(path), 0o644)
    old_inode = os.stat(str(path)).st_ino
    keep = tmp_path / "keep"
    os.link(str(path), str(keep))          # the old inode, still held by another name: never written into
    rec = Recorder(str(path), make_header("kmemsnoop", []))
    rec.write({"tgid": 7})
    assert json.loads(path.read_text().splitlines()[1]) == {"tgid": 7}      # on disk before close
    rec.close()
    assert keep.read_text() == "old\n" and os.stat(str(path)).st_ino != old_inode and mode(path) == 0o600


# --- modes and directories ------------------------------------------------------------------------------

def test_report_directory_0700_and_files_0600(tmp_path):
    out = tmp_path / "new" / "report"
    code, _, err = cli("report", IOJITTER_61, "--report", str(out))
    assert code == 0, err
    assert (mode(tmp_path / "new"), mode(out)) == (0o700, 0o700)
    assert len(entries(out)) > 1 and {mode(out / name) for name in entries(out)} == {0o600}
    assert not [n for n in entries(out) if n.startswith(".")]


@pytest.mark.parametrize("option", ["--folded", "--speedscope", "--svg", "--html"])
def test_every_export_is_0600(tmp_path, option):
    path = tmp_path / "out"
    code, _, err = cli("report", IOJITTER_61, option, str(path))
    assert code == 0, err
    assert mode(path) == 0o600 and entries(tmp_path) == ["out"]


def test_folded_dash_is_still_stdout(tmp_path):
    code, out, err = cli("report", IOJITTER_61, "--folded", "-")
    assert code == 0, err
    assert out and all(line.rsplit(" ", 1)[1].isdigit() for line in out.splitlines())


def test_force_writes_into_a_directory_of_another_user(tmp_path):
    d = planted_dir(tmp_path / "D")
    code, _, err = cli("--force", "report", recording(str(tmp_path / "r.jsonl")), "--report", str(d))
    assert code == 0, err
    assert "report.html" in entries(d) and {mode(d / n) for n in entries(d)} == {0o600}
    assert {os.stat(str(d / n)).st_uid for n in entries(d)} == {0}


def test_the_user_who_ran_sudo_owns_their_directories_too(tmp_path):
    """`sudo bpftools report r.jsonl --html incident.html` in one's own directory needs no --force."""
    d = planted_dir(tmp_path / "home")
    code, _, err = cli("report", recording(str(tmp_path / "r.jsonl")), "--html", str(d / "incident.html"),
                       sudo_uid=NOBODY)
    assert code == 0, err
    assert mode(d / "incident.html") == 0o600 and os.stat(str(d / "incident.html")).st_uid == 0


def test_force_is_documented():
    code, out, _ = cli("--help")
    help_text = " ".join(out.split())
    assert code == 0 and "--force Write into a directory, or replace a file, owned by another user" in help_text


def test_a_link_above_the_last_level_is_followed_only_from_a_directory_others_cannot_change(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(str(real), str(tmp_path / "trusted-link"))          # root's, in root's 0755 directory
    assert outfiles.write_text(str(tmp_path / "trusted-link" / "sub" / "f"), "x", create_dirs=True)
    assert (real / "sub" / "f").read_text() == "x"
    link = planted_link(real, shared_tmp(tmp_path) / "planted")
    with pytest.raises(BadInput) as err:
        outfiles.write_text(str(link / "sub" / "g"), "x", create_dirs=True)
    assert str(err.value) == "%s is a symbolic link: not writing through it" % link
    assert not (real / "sub" / "g").exists()
    monkeypatch.setattr(outfiles, "_force", True)
    outfiles.write_text(str(link / "sub" / "g"), "x", create_dirs=True)
    assert (real / "sub" / "g").read_text() == "x"


def test_a_file_where_the_directory_should_be(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInput) as err:
        outfiles.write_text(str(tmp_path / "f" / "g"), "x")
    assert str(err.value) == "%s/f is not a directory: not writing into it" % tmp_path


# --- plan --save-kernel -------------------------------------------------------------------------------

def test_save_kernel_modes(tmp_path):
    out = tmp_path / "k"
    code, _, err = cli("plan", "--save-kernel", str(out), timeout=300)
    assert code == 0, err
    assert mode(out) == 0o700 and {mode(out / n) for n in entries(out)} == {0o600}


def test_save_kernel_into_a_link_or_another_users_directory_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = planted_link(elsewhere, shared_tmp(tmp_path) / "k")
    line = one_line_error(cli("plan", "--save-kernel", str(link), timeout=300))
    assert line == "bpftools: error: %s is a symbolic link: not writing through it" % link
    d = planted_dir(tmp_path / "D")
    line = one_line_error(cli("plan", "--save-kernel", str(d), timeout=300))
    assert line.endswith("%s is owned by uid 65534 (not root or you): not writing into it without --force" % d)
    assert entries(elsewhere) == [] and entries(d) == []


# --- the inline-sites cache ----------------------------------------------------------------------------

def test_the_inline_sites_cache_is_not_written_through_a_planted_link(tmp_path):
    secret = victim(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    planted_link(secret, cache / "abc.json")
    inline_sites._store_cache(str(cache / "abc.json"), "abc", inline_sites.Discovery(sites=[]))   # quietly not cached
    assert secret.read_text() == SECRET and os.path.islink(str(cache / "abc.json"))
    inline_sites._store_cache(str(tmp_path / "new" / "abc.json"), "abc", inline_sites.Discovery(sites=[]))
    assert (mode(tmp_path / "new"), mode(tmp_path / "new" / "abc.json")) == (0o700, 0o600)


# --- the rename leaves no temp file ---------------------------------------------------------------------

def test_no_temp_file_after_success_or_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "f")
    outfiles.write_text(path, "one")
    assert entries(tmp_path) == ["f"]

    def disk_error(*args, **kw):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(outfiles.os, "replace", disk_error)
    with pytest.raises(BadInput) as err:
        outfiles.write_text(path, "two")
    assert str(err.value) == "cannot write %s: Input/output error" % path
    assert entries(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "one"

    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(outfiles.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        outfiles.write_text(path, "three")
    assert entries(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "one"
