#!/usr/bin/env python3
"""Boot a real Debian kernel in QEMU (software emulation) and run the in-VM pytest tier there.

    python3 lab/run.py bookworm                       # tests/kernel on Linux 6.1
    python3 lab/run.py trixie -- -k mempool -x        # extra pytest arguments after --
    python3 lab/run.py bookworm --exec 'python3 bench/iojitter_overhead.py --mode kprobe'
    python3 lab/run.py bullseye --bcc v0.10.0 -- tests/kernel/test_mempool_probes.py
                                                      # bcc built from that tag (lab/build.py --bcc)

Builds the suite's image if needed (lab/build.py), packs the current project tree (git-tracked and
untracked files of the clone this script is in, without .git/.venv) into a small second cpio at
/opt/bpftools, plus the package in its installed layout at /opt/site/bpftools (``probes/`` and
``analyses/`` become ``bpftools.probes`` and ``bpftools.analyses``, as setup.cfg maps them) and
lab/init.sh as /init; concatenates it after base.cpio (the kernel unpacks both) and boots
``qemu-system-x86_64 -accel tcg`` (never KVM). The console is streamed to stdout and to
``<cache>/logs/<suite>-<time>.log``.

Files the tests write under ``$BPFTOOLS_LAB_OUT`` in the VM come back through the console (base64
between markers) and are written under ``--out DIR`` (default ``<cache>/out/<suite>-<time>/``).

Exit status: the in-VM pytest's exit code (0 passed, 1 failed, 5 no tests, ...), or
EXIT_BUILD_FAILED (90), EXIT_NO_RESULT (91: the VM stopped without printing a result, e.g. a boot
failure or a crash) or EXIT_TIMEOUT (92).
"""
import argparse
import base64
import os
import re
import stat
import subprocess
import sys
import threading
import time
from typing import IO, Dict, Iterable, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build  # noqa: E402  (lab/ is a folder of scripts, not a package)

EXIT_BUILD_FAILED = 90
EXIT_NO_RESULT = 91
EXIT_TIMEOUT = 92

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "init.sh")
EXCLUDED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis"}
# setup.cfg's package_dir: these folders are these subpackages of bpftools.
PACKAGE_MAP = (("bpftools", "bpftools"), ("probes", "bpftools/probes"), ("analyses", "bpftools/analyses"))

EXIT_RE = re.compile(r"@@BPFTOOLS-LAB-EXIT=(\d+)@@")
KERNEL_RE = re.compile(r"@@BPFTOOLS-LAB-KERNEL=(\S+)@@")
BEGIN = "@@BPFTOOLS-LAB-BEGIN@@"
FILE_RE = re.compile(r"^@@BPFTOOLS-LAB-FILE=(.+)@@$")
FILE_END = "@@BPFTOOLS-LAB-FILE-END@@"
BASE64_LINE = re.compile(r"^[A-Za-z0-9+/]+=*$")
# Console lines after which the VM will never print a result (the kernel falls back to /bin/sh).
FATAL_RE = re.compile(r"Failed to execute /init|Kernel panic - not syncing")
# pytest's closing line, e.g. "3 passed, 1 skipped in 12.34s" (with -q, no "=" decoration).
SUMMARY_RE = re.compile(r"^=*\s*(\d+ (passed|failed|skipped|error|errors|deselected|xfailed|xpassed|"
                        r"warnings?)\b.*) in [\d.]+s")


class CpioWriter(object):
    """Writes an uncompressed newc cpio archive (what the kernel's initramfs unpacker reads)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.ino = 1
        self.dirs = set()  # type: set

    def _entry(self, name: str, mode: int, data: bytes, mtime: int) -> None:
        raw = name.encode("utf-8") + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self.ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, 0, 0, len(raw), 0)
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.ino += 1
        self.out.write(header + raw + b"\0" * (-(len(header) + len(raw)) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str, mtime: int = 0) -> None:
        """NAME and its missing parents (absolute archive paths are written relative)."""
        name = name.strip("/")
        parts = name.split("/") if name else []
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self.dirs:
                self.dirs.add(path)
                self._entry(path, stat.S_IFDIR | 0o755, b"", mtime)

    def file(self, name: str, source: str) -> None:
        """Copy SOURCE (a file or a symlink) to NAME, keeping its mode bits."""
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        st = os.lstat(source)
        if stat.S_ISLNK(st.st_mode):
            self._entry(name, stat.S_IFLNK | 0o777, os.readlink(source).encode("utf-8"), int(st.st_mtime))
        else:
            with open(source, "rb") as f:
                self._entry(name, stat.S_IFREG | (st.st_mode & 0o7777), f.read(), int(st.st_mtime))

    def data(self, name: str, content: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        self._entry(name, stat.S_IFREG | mode, content, int(time.time()))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, b"", 0)
        self.out.write(b"\0" * (-self.out.tell() % 512))


def project_files(repo: str) -> List[str]:
    """Tracked and untracked (not ignored) files of REPO, relative paths; a plain walk without git."""
    try:
        out = subprocess.check_output(
            ["git", "-c", "safe.directory=*", "-C", repo, "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"], stderr=subprocess.DEVNULL)
        names = [n.decode("utf-8") for n in out.split(b"\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for top, dirs, files in os.walk(repo):
            dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS and not d.endswith(".egg-info")]
            names.extend(os.path.relpath(os.path.join(top, f), repo) for f in files)
    keep = []
    for name in sorted(set(names)):
        parts = name.split("/")
        if any(p in EXCLUDED_DIRS or p.endswith(".egg-info") for p in parts[:-1]) or name.endswith(".pyc"):
            continue
        if os.path.lexists(os.path.join(repo, name)):  # tracked but deleted in the work tree: skip
            keep.append(name)
    return keep


def installed_name(name: str) -> Optional[str]:
    """Where NAME (relative to the repo) sits in the installed package layout, or None."""
    for folder, package in PACKAGE_MAP:
        if name.startswith(folder + "/"):
            return package + name[len(folder):]
    return None


def pytest_arguments(extra: List[str], repo: str) -> List[str]:
    """EXTRA, after the default test path tests/kernel unless EXTRA names test paths of its own."""
    names_paths = any(not a.startswith("-") and os.path.exists(os.path.join(repo, a.split("::")[0]))
                      for a in extra)
    return list(extra) if names_paths else ["tests/kernel"] + list(extra)


def write_project_cpio(path: str, repo: str, suite: str, pytest_args: List[str],
                       command: Optional[str] = None, timeout: float = 1800) -> int:
    """The project tree, its installed layout, /init and the run's settings (the pytest arguments, or a
    shell COMMAND to run instead of pytest; the seconds before the host kills the VM, TIMEOUT, for the
    watchdog of /init); returns the file count."""
    files = project_files(repo)
    for arg in pytest_args:
        if "\n" in arg:
            raise ValueError("pytest arguments cannot contain newlines")
    with open(path, "wb") as f:
        cpio = CpioWriter(f)
        with open(INIT, "rb") as init:
            cpio.data("init", init.read(), mode=0o755)
        for name in files:
            cpio.file("opt/bpftools/" + name, os.path.join(repo, name))
            target = installed_name(name)
            # bpftools/analyses and bpftools/probes are links for a checkout: the installed layout has
            # the folders themselves (PACKAGE_MAP)
            if target is not None and not os.path.isdir(os.path.join(repo, name)):
                cpio.file("opt/site/" + target, os.path.join(repo, name))
        cpio.data("opt/bpftools-lab/pytest-args", "".join(a + "\n" for a in pytest_args).encode())
        if command is not None:
            cpio.data("opt/bpftools-lab/command", (command + "\n").encode())
        cpio.data("opt/bpftools-lab/env", ("BPFTOOLS_LAB_SUITE=%s\nBPFTOOLS_LAB_TIMEOUT=%d\n"
                                           "export BPFTOOLS_LAB_SUITE BPFTOOLS_LAB_TIMEOUT\n" % (suite, timeout)).encode())
        cpio.close()
    return len(files)


def concatenate(parts: Iterable[str], out: str) -> None:
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                while True:
                    chunk = src.read(1 << 22)
                    if not chunk:
                        break
                    dst.write(chunk)


def prune_logs(log_dir: str, suite: str, keep: int = 30) -> None:
    """Keep the newest KEEP console logs of SUITE."""
    own = re.compile(r"^%s-\d{8}-\d{6}\.log$" % re.escape(suite))  # not bullseye-bcc-v0.10.0-... for bullseye
    logs = sorted(n for n in os.listdir(log_dir) if own.match(n))
    for name in logs[:-keep]:
        os.remove(os.path.join(log_dir, name))


def qemu_command(vmlinuz: str, initrd: str, memory_mb: int, cpus: int, kernel_args: Sequence[str] = ()) -> List[str]:
    """Software emulation only: /dev/kvm here is a PVM hypervisor on which Debian kernels hang."""
    return ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-smp", str(cpus), "-m", str(memory_mb),
            "-nographic", "-no-reboot", "-nic", "none", "-kernel", vmlinuz, "-initrd", initrd,
            "-append", " ".join(["console=ttyS0 panic=-1 rdinit=/init quiet"] + list(kernel_args))]


class ConsoleState(object):
    """What the console has said so far: the kernel release, pytest's closing line, the exit marker."""

    def __init__(self) -> None:
        self.exit_code = None  # type: Optional[int]
        self.kernel = None  # type: Optional[str]
        self.summary = None  # type: Optional[str]
        self.began = False
        self.fatal = threading.Event()  # set on a line after which no result can come
        self.files = {}  # type: Dict[str, bytes]   # relative path -> content, from $BPFTOOLS_LAB_OUT
        self._file = None  # type: Optional[str]
        self._chunks = []  # type: List[str]

    def in_file(self) -> bool:
        """True while the console carries a file's base64 lines."""
        return self._file is not None

    def parse(self, line: str) -> None:
        if self._file is not None:
            if line.strip() == FILE_END:
                self.files[self._file] = base64.b64decode("".join(self._chunks))
                self._file, self._chunks = None, []
            elif BASE64_LINE.match(line.strip()):
                self._chunks.append(line.strip())
            return
        m = FILE_RE.match(line.strip())
        if m:
            self._file = m.group(1)
            return
        if FATAL_RE.search(line):
            self.fatal.set()
        if BEGIN in line:
            self.began = True
        m = KERNEL_RE.search(line)
        if m:
            self.kernel = m.group(1)
        m = EXIT_RE.search(line)
        if m:
            self.exit_code = int(m.group(1))
        m = SUMMARY_RE.match(line.strip())
        if m and self.began and self.exit_code is None:
            self.summary = m.group(1)


class Console(ConsoleState):
    """Reads the VM's serial console in a thread: echoes it, logs it and parses it."""

    def __init__(self, stream: IO[bytes], logf: IO[str], echo: Optional[IO[str]]) -> None:
        super(Console, self).__init__()
        self.stream, self.logf, self.echo = stream, logf, echo
        self.thread = threading.Thread(target=self._read)
        self.thread.daemon = True
        self.thread.start()

    def _read(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").replace("\r", "").rstrip("\n")
            quiet = self.in_file() or FILE_RE.match(line.strip()) is not None
            self.parse(line)
            if quiet:
                continue
            self.logf.write(line + "\n")
            self.logf.flush()
            if self.echo is not None:
                self.echo.write(line + "\n")
                self.echo.flush()


def boot(image: "build.Image", initrd: str, log_path: str, timeout: float, memory_mb: int, cpus: int,
         echo: Optional[IO[str]], kernel_args: Sequence[str] = ()) -> Tuple[int, Console]:
    """Run the VM to its end; returns (exit status, console)."""
    cmd = qemu_command(image.vmlinuz, initrd, memory_mb, cpus, kernel_args)
    with open(log_path, "w") as logf:
        logf.write("# %s\n" % " ".join(cmd))
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        console = Console(proc.stdout, logf, echo)
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            if console.fatal.wait(1.0):
                time.sleep(2)  # let the rest of the panic or error reach the log
                break
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            console.thread.join(5)
            if not console.fatal.is_set():
                logf.write("# lab-run: timed out after %.0f s\n" % timeout)
                return EXIT_TIMEOUT, console
        console.thread.join(10)
    if console.exit_code is None:
        return EXIT_NO_RESULT, console
    return console.exit_code, console


def save_files(files: Dict[str, bytes], out_dir: str) -> List[str]:
    """Write the VM's files under OUT_DIR (paths that would leave it are refused); returns the paths."""
    written = []
    base = os.path.realpath(out_dir)
    for rel, data in sorted(files.items()):
        path = os.path.realpath(os.path.join(base, rel))
        if not path.startswith(base + os.sep):
            sys.stderr.write("lab-run: refused a file path from the VM: %r\n" % rel)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        written.append(path)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = []  # type: List[str]
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(build.SUITES))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before the VM is killed (1800)")
    parser.add_argument("--memory", type=int, default=3072, help="VM memory in MiB (3072)")
    parser.add_argument("--cpus", type=int, default=2, help="VM CPUs (2)")
    parser.add_argument("--offline", action="store_true", help="use the newest cached image without asking the archive")
    parser.add_argument("--quiet", action="store_true", help="do not echo the console (the log still has it)")
    parser.add_argument("--exec", dest="command", metavar="CMD",
                        help="run the shell command CMD in /opt/bpftools instead of pytest (its exit status is the "
                             "result); e.g. a benchmark or the demo")
    parser.add_argument("--bcc", metavar="TAG", help="the image with bcc built from this release tag (e.g. v0.10.0) "
                                                   "instead of the suite's python3-bpfcc (bullseye only)")
    parser.add_argument("--kernel-arg", dest="kernel_args", action="append", default=[], metavar="ARG",
                        help="one more kernel command-line argument (repeatable), e.g. tsc=reliable for a "
                             "benchmark that reads the clock (under TCG the kernel otherwise falls back to hpet)")
    parser.add_argument("--out", metavar="DIR", help="where the files the tests left in $BPFTOOLS_LAB_OUT go "
                                                     "(default <cache>/out/<suite>-<time>)")
    args = parser.parse_args(argv)

    started = time.time()
    try:
        image = build.ensure(args.suite, offline=args.offline, bcc=args.bcc)
    except (build.BuildError, OSError) as e:
        sys.stderr.write("lab-run: build failed: %s\n" % e)
        return EXIT_BUILD_FAILED
    built = time.time()

    root = build.cache_root()
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    os.makedirs(os.path.join(root, "runs"), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = build.image_name(args.suite, args.bcc)
    log_path = os.path.join(root, "logs", "%s-%s.log" % (name, stamp))
    run_base = os.path.join(root, "runs", "%s-%s-%d" % (name, stamp, os.getpid()))
    project = run_base + ".project.cpio"
    initrd = run_base + ".initrd"
    try:
        count = write_project_cpio(project, REPO, args.suite, pytest_arguments(pytest_args, REPO), args.command,
                                   args.timeout)
        concatenate([image.base_cpio, project], initrd)
        sys.stderr.write("lab-run: %s kernel %s, %d project files, console log %s\n"
                         % (name, image.kernel_release, count, log_path))
        code, console = boot(image, initrd, log_path, args.timeout, args.memory, args.cpus,
                             None if args.quiet else sys.stdout, args.kernel_args)
    finally:
        for path in (project, initrd):
            if os.path.exists(path):
                os.remove(path)
    finished = time.time()
    prune_logs(os.path.join(root, "logs"), name)
    if console.files:
        out_dir = args.out or os.path.join(root, "out", "%s-%s" % (name, stamp))
        for path in save_files(console.files, out_dir):
            sys.stdout.write("lab-run: file from the VM: %s\n" % path)
    what = {EXIT_TIMEOUT: "VM timed out", EXIT_NO_RESULT: "VM stopped without a result"}.get(
        code, "%s exit %d" % ("command" if args.command else "pytest", code))
    sys.stdout.write("lab-run: %s kernel %s: %s; %s; build/cache %.1f s, boot+tier %.1f s; log %s\n" % (
        name, console.kernel or image.kernel_release, console.summary or "no pytest summary", what,
        built - started, finished - built, log_path))
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
