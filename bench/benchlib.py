"""What every benchmark here shares: interleaved A/B runs, medians and spreads, starting a tool until it
is attached, a process's memory, and the BPF programs and maps a process owns.

The benchmarks run as scripts (``sudo .venv/bin/python bench/NAME.py``); each prints a table, or with
``--json`` one JSON object whose ``table`` rows ``bench/run_all.py`` gathers into the README's table.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Sequence, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bpftools(*args: str) -> List[str]:
    """The command line of ``bpftools ARGS`` with this Python (the venv that sees the system bcc)."""
    return [sys.executable, "-m", "bpftools.cli"] + list(args)


def median_spread(values: Sequence[float]) -> Tuple[float, float]:
    """The median and the spread (max - min) / median: how noisy the repeats were."""
    med = statistics.median(values)
    return med, ((max(values) - min(values)) / med if med else 0.0)


def ratio_interval(per_round: Sequence[float], level: float = 0.95, resamples: int = 4000,
                   seed: int = 1) -> Tuple[float, float, float]:
    """The geometric mean of paired per-round ratios (with/without of one round) and its bootstrap
    confidence interval at LEVEL: (mean, low, high). Seeded: the same rounds give the same interval."""
    import math
    import random
    logs = [math.log(r) for r in per_round]
    draw = random.Random(seed)
    means = sorted(sum(draw.choice(logs) for _ in logs) / len(logs) for _ in range(resamples))
    cut = int(resamples * (1 - level) / 2)
    return (math.exp(sum(logs) / len(logs)), math.exp(means[cut]), math.exp(means[resamples - 1 - cut]))


def interleaved(rounds: int, arms: Sequence[Tuple[str, Callable[[], float]]]) -> Dict[str, List[float]]:
    """Run each arm once per round, the order reversed every other round (A B, B A, ...), so drift and
    the neighbours' load hit every arm alike."""
    out = dict((name, []) for name, _ in arms)  # type: Dict[str, List[float]]
    for i in range(rounds):
        for name, fn in (arms if i % 2 == 0 else list(reversed(arms))):
            out[name].append(fn())
    return out


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds from now until READY() holds; SystemExit with the process's stderr if it exits first."""
    start = time.monotonic()
    while not ready():
        if proc.poll() is not None or time.monotonic() - start > timeout:
            if proc.poll() is None:
                proc.kill()
            err = proc.communicate()[1]
            raise SystemExit("%s did not attach (exit %s): %s" % (what, proc.returncode,
                                                                  (err or "").strip()[-2000:]))
        time.sleep(0.01)
    return time.monotonic() - start


class Tool(object):
    """``bpftools ARGS`` in the background, attached (its ready file exists) until ``stop()``. CWD "/" where
    the source tree must not shadow the installed package (the lab VM: /opt/bpftools vs /opt/site)."""

    def __init__(self, args: Sequence[str], workdir: str, timeout: float = 300.0,
                 stdout: Any = subprocess.DEVNULL, cwd: str = ROOT) -> None:
        self.ready = os.path.join(workdir, "ready-%d-%d" % (os.getpid(), id(self)))
        if os.path.exists(self.ready):
            os.remove(self.ready)
        started = time.monotonic()
        self.proc = subprocess.Popen(bpftools(*(list(args) + ["--ready-file", self.ready])), cwd=cwd,
                                     stdout=stdout, stderr=subprocess.PIPE, universal_newlines=True)
        wait_for(self.proc, lambda: os.path.exists(self.ready), timeout, "bpftools %s" % " ".join(args))
        self.attach_s = time.monotonic() - started
        self.pid = self.proc.pid

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 120.0) -> Tuple[int, str]:
        """Send SIGNUM, wait; the exit code and stderr."""
        self.proc.send_signal(signum)
        _, err = self.proc.communicate(timeout=timeout)
        if os.path.exists(self.ready):
            os.remove(self.ready)
        return self.proc.returncode, err


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM...), in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _fdinfos(pid: int) -> Iterator[Dict[str, str]]:
    """The ``key: value`` fields of each of process PID's file descriptors (/proc/PID/fdinfo)."""
    base = "/proc/%d/fdinfo" % pid
    for fd in os.listdir(base):
        try:
            with open(os.path.join(base, fd)) as f:
                text = f.read()
        except OSError:   # closed meanwhile
            continue
        yield dict((k, v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines()))


def owned_bpf_ids(pid: int) -> Dict[str, Set[int]]:
    """The ids of the BPF programs and maps whose file descriptors process PID holds (its fdinfo)."""
    out = {"prog": set(), "map": set()}  # type: Dict[str, Set[int]]
    for fields in _fdinfos(pid):
        for key in ("prog_id", "map_id"):
            if key in fields:
                out[key[:-3]].add(int(fields[key]))
    return out


def bpf_run_stats(pid: int) -> Dict[int, Tuple[int, int]]:
    """{prog_id: (run_cnt, run_time_ns)} of the BPF programs process PID holds, from its fdinfo (the
    kernel counts them while sysctl kernel.bpf_stats_enabled is 1; see :class:`BpfStats`)."""
    return dict((int(f["prog_id"]), (int(f["run_cnt"]), int(f["run_time_ns"])))
                for f in _fdinfos(pid) if "prog_id" in f and "run_cnt" in f)


def bpf_prog_name(prog_id: int) -> str:
    """The name of BPF program PROG_ID (the kernel keeps its first 15 characters), by the bpf()
    syscall: BPF_PROG_GET_FD_BY_ID, then BPF_OBJ_GET_INFO_BY_FD (struct bpf_prog_info.name at 64)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    nr_bpf = 321   # x86_64
    attr = ctypes.create_string_buffer(128)
    ctypes.c_uint32.from_buffer(attr, 0).value = prog_id
    fd = libc.syscall(nr_bpf, 13, attr, 128)          # BPF_PROG_GET_FD_BY_ID
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_PROG_GET_FD_BY_ID %d" % prog_id)
    try:
        info = ctypes.create_string_buffer(256)
        attr = ctypes.create_string_buffer(128)
        ctypes.c_uint32.from_buffer(attr, 0).value = fd                   # info.bpf_fd
        ctypes.c_uint32.from_buffer(attr, 4).value = len(info)            # info.info_len
        ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(info)
        if libc.syscall(nr_bpf, 15, attr, 128) < 0:   # BPF_OBJ_GET_INFO_BY_FD
            raise OSError(ctypes.get_errno(), "BPF_OBJ_GET_INFO_BY_FD %d" % prog_id)
        return info.raw[64:80].split(b"\0", 1)[0].decode("ascii", "replace")
    finally:
        os.close(fd)


def runs_by_program(before: Dict[int, Tuple[int, int]], after: Dict[int, Tuple[int, int]]) -> Dict[str, Tuple[int, int]]:
    """{program name: (runs, run time ns)} between two :func:`bpf_run_stats` readings (ids of one name summed)."""
    out = {}  # type: Dict[str, Tuple[int, int]]
    for prog, (runs, ns) in after.items():
        was = before.get(prog, (0, 0))
        name = bpf_prog_name(prog)
        had = out.get(name, (0, 0))
        out[name] = (had[0] + runs - was[0], had[1] + ns - was[1])
    return out


def programs_total(per_run: Sequence[Dict[str, Tuple[int, int]]]) -> Dict[str, Tuple[int, int]]:
    """{program name: (runs, run time ns)} summed over several :func:`runs_by_program` readings."""
    out = {}  # type: Dict[str, Tuple[int, int]]
    for programs in per_run:
        for name, (runs, ns) in programs.items():
            had = out.get(name, (0, 0))
            out[name] = (had[0] + runs, had[1] + ns)
    return out


class BpfStats(object):
    """``with BpfStats():`` turns sysctl kernel.bpf_stats_enabled on (run counts and times of every BPF
    program) and back to what it was."""

    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __enter__(self) -> "BpfStats":
        with open(self.PATH) as f:
            self.before = f.read().strip()
        with open(self.PATH, "w") as f:
            f.write("1")
        return self

    def __exit__(self, *exc: Any) -> None:
        with open(self.PATH, "w") as f:
            f.write(self.before)


def bpftool_json(*args: str) -> Any:
    """``bpftool ARGS --json`` parsed (bpftool from the distribution's package ``bpftool``)."""
    out = subprocess.check_output(["bpftool"] + list(args) + ["--json"], universal_newlines=True)
    return json.loads(out) if out.strip() else []


def map_entries(map_id: int) -> int:
    """How many entries map MAP_ID holds now (its dump)."""
    return len(bpftool_json("map", "dump", "id", str(map_id)))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(result: Dict[str, Any], as_json: bool, header: Sequence[str] = ("figure", "value", "noise / detail")) -> None:
    """Print RESULT: one JSON object, or its ``table`` rows as a markdown table."""
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(markdown_table(header, result["table"]))

