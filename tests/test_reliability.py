"""Reliability on the live kernel: cleanup after SIGINT, SIGTERM and SIGKILL under an event flood, losses
counted and shown, and a clean next run.

Every run is ``bpftools kmemsnoop --mode tracepoint -p FLOOD --record FILE`` against its own flood
process, which opens a path named ``memory.kmem.failcnt`` (an event per open, even a failed one) faster
than the consumer can take: the perf buffer overflows and the consumer is inside a perf-buffer
callback nearly all the time, where a signal used to be swallowed. "Ours" is exact: the BPF programs
and maps whose fds the tool's pid holds (its fdinfo) and its perf events (``bpftool perf show``);
after exit none may be left in ``bpftool prog show`` / ``map show``, nor a bcc probe of the pid in
tracefs. All runs attach at once (see BATCH); the number of signal repeats is BPFTOOLS_SIGNAL_REPEATS (3).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import benchlib  # noqa: E402

pytestmark = pytest.mark.root
REPEATS = int(os.environ.get("BPFTOOLS_SIGNAL_REPEATS", "3"))
STOP_S = 10          # a signal stops the tool within this, flood or not
FLOOD_THREADS = 2 * len(os.sched_getaffinity(0))
LOST_LINE = re.compile(r"^bpftools: (\d+) events lost \(perf buffer overflow or full maps\)$", re.M)
TRACEFS = "/sys/kernel/tracing"
FLOOD = r"""
import os, sys, threading
path = sys.argv[1]
print("pid", flush=True)
command = sys.stdin.readline().split()      # go COUNT THREADS: COUNT opens (0: until killed)
count, threads = int(command[1]), int(command[2])
if threads == 1:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})   # one CPU: one perf ring holds all our events


def flood():
    n = 0
    while count == 0 or n < count:
        try:
            os.open(path, os.O_RDONLY)
        except OSError:
            pass
        n += 1


workers = [threading.Thread(target=flood) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(count * threads, flush=True)
if sys.stdin.readline().strip() == "flush":   # one more event in the same ring
    try:
        os.open(path, os.O_RDONLY)
    except OSError:
        pass
print("flushed", flush=True)
"""


class Flooded(object):
    """A flood process and the kmemsnoop that watches only it (not attached yet)."""

    def __init__(self, tmp_path, name):
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.path = str(self.dir / "memory.kmem.failcnt")   # never created: every open fails, each is an event
        self.record = str(self.dir / "rec.jsonl")
        self.ready = str(self.dir / "ready")
        self.flood = subprocess.Popen([sys.executable, "-c", FLOOD, self.path], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, universal_newlines=True)
        assert self.flood.stdout.readline().strip() == "pid"
        self.tool = subprocess.Popen(
            benchlib.bpftools("kmemsnoop", "--mode", "tracepoint", "-p", str(self.flood.pid), "--record",
                              self.record, "--ready-file", self.ready),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, universal_newlines=True)
        self.ours = None
        self.perf = None

    def attached(self):
        return os.path.exists(self.ready)

    def note_ours(self):
        """Record the programs, maps and perf events the tool holds now (it must hold some)."""
        self.ours = benchlib.owned_bpf_ids(self.tool.pid)
        self.perf = [p for p in benchlib.bpftool_json("perf", "show") if p["pid"] == self.tool.pid]
        assert self.ours["prog"] and self.ours["map"], self.ours
        assert set(p["prog_id"] for p in self.perf) == self.ours["prog"]   # every program on a perf event

    def send(self, line):
        self.flood.stdin.write(line + "\n")
        self.flood.stdin.flush()

    def recorded_lines(self):
        with open(self.record, "rb") as f:
            return sum(1 for _ in f)

    def wait_recording(self, at_least, timeout=60.0):
        deadline = time.monotonic() + timeout
        while self.recorded_lines() < at_least:
            assert time.monotonic() < deadline, "the recording did not grow to %d lines" % at_least
            time.sleep(0.05)

    def wait_drained(self):
        """Until the recording stops growing (the consumer emptied the perf buffer)."""
        seen, still = -1, 0
        while still < 5:
            now = self.recorded_lines()
            still = still + 1 if now == seen else 0
            seen = now
            time.sleep(0.2)

    def stop(self, signum, timeout=STOP_S):
        self.tool.send_signal(signum)
        try:
            _, err = self.tool.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail("kmemsnoop still running %d s after signal %d under a flood" % (timeout, signum))
        return err

    def close(self):
        for proc in (self.tool, self.flood):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def attach_all(runs, timeout=300):
    """Wait until every run's kmemsnoop is attached (they compile in parallel)."""
    deadline = time.monotonic() + timeout
    for run in runs:
        while not run.attached():
            if run.tool.poll() is not None or time.monotonic() > deadline:
                run.close()
                pytest.fail("kmemsnoop did not attach: %s" % run.tool.stderr.read())
            time.sleep(0.05)
        run.note_ours()


# What each test needs, all attached at once by one module fixture: bcc compiles each program in ~3 s of
# CPU, and on a machine shared with other work parallel compiles get more of it than serial ones.
BATCH = [("SIGINT", REPEATS), ("SIGTERM", REPEATS), ("SIGKILL", 1), ("exact", 1), ("tail", 1)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool missing (apt-get install bpftool)")
    base = tmp_path_factory.mktemp("reliability")
    made = dict((name, [Flooded(base, "%s-%d" % (name, i)) for i in range(n)]) for name, n in BATCH)
    try:
        attach_all([r for group in made.values() for r in group])
        yield made
    finally:
        for group in made.values():
            for run in group:
                run.close()


@pytest.fixture
def next_run(tmp_path):
    made = []

    def make():
        run = Flooded(tmp_path, "next")
        made.append(run)
        attach_all([run])
        return run
    yield make
    for run in made:
        run.close()


def assert_nothing_left(pid, ours, timeout=10.0):
    """None of OURS (prog and map ids) is loaded any more, no perf event of PID, no bcc probe of PID."""
    deadline = time.monotonic() + timeout
    while True:
        progs = set(p["id"] for p in benchlib.bpftool_json("prog", "show")) & ours["prog"]
        maps = set(m["id"] for m in benchlib.bpftool_json("map", "show")) & ours["map"]
        if not progs and not maps or time.monotonic() > deadline:   # the kernel frees them after an RCU grace period
            break
        time.sleep(0.2)
    assert progs == set() and maps == set()
    assert [p for p in benchlib.bpftool_json("perf", "show") if p["pid"] == pid] == []
    for name in ("kprobe_events", "uprobe_events"):   # bcc names its probes p_FUNC_bcc_PID / r_..._bcc_PID
        path = os.path.join(TRACEFS, name)
        if os.path.exists(path):
            with open(path) as f:
                assert "bcc_%d" % pid not in f.read()


def read_trailer(record):
    with open(record) as f:
        lines = f.read().splitlines()
    events = [json.loads(l) for l in lines[1:-1]]
    return json.loads(lines[-1]), events


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_under_flood_stops_detaches_and_keeps_the_recording(runs, signum):
    """Two flood threads per CPU, the consumer on one CPU: the producers outrun it for as long as they
    last, and bcc's perf_buffer_poll() returns only once the rings are empty. A signal must still stop
    the tool within STOP_S seconds."""
    for run in runs[signal.Signals(signum).name]:
        os.sched_setaffinity(run.tool.pid, {min(os.sched_getaffinity(0))})
        run.send("go 0 %d" % FLOOD_THREADS)     # flood until killed
        run.wait_recording(2000)          # the consumer is busy in its callbacks now
        err = run.stop(signum, timeout=STOP_S)
        pid = run.tool.pid
        run.close()
        expected_code = 130 if signum == signal.SIGINT else 0
        assert run.tool.returncode == expected_code, err
        assert "Traceback" not in err and "Exception ignored" not in err, err
        trailer, events = read_trailer(run.record)
        assert trailer["trailer"] is True and trailer["interrupted"] is (signum == signal.SIGINT)
        assert trailer["events"] == len(events) >= 2000 - 1
        assert set((e["tgid"], e["op"], e["path"], e["ret"]) for e in events) == {
            (run.flood.pid, "open", run.path, -2)}                 # ENOENT, every one
        shown = [int(n) for n in LOST_LINE.findall(err)]
        assert shown == [trailer["lost_events"]] and trailer["lost_events"] > 0
        assert_nothing_left(pid, run.ours)


def test_sigkill_leaves_nothing_attached_and_the_next_run_starts_cleanly(runs, next_run):
    killed, = runs["SIGKILL"]
    killed.send("go 0 1")
    killed.wait_recording(500)
    killed.tool.kill()
    killed.tool.wait(30)
    assert_nothing_left(killed.tool.pid, killed.ours)
    killed.close()
    with open(killed.record) as f:        # every line written so far is whole: the file still reports
        assert all(json.loads(l) for l in f.read().splitlines()[:-1])
    nxt = next_run()
    nxt.send("go 25 1")
    assert nxt.flood.stdout.readline().strip() == "25"
    nxt.wait_drained()
    err = nxt.stop(signal.SIGTERM)
    assert nxt.tool.returncode == 0, err
    assert err.strip() == ("bpftools: syscalls: syscalls:* tracepoints; no kernel hook (--mode tracepoint); "
                           "writer's cgroup: bpf_get_current_cgroup_id (its cgroup2 id)")
    trailer, events = read_trailer(nxt.record)
    assert (trailer["events"], trailer["lost_events"], len(events)) == (25, 0, 25)
    assert_nothing_left(nxt.tool.pid, nxt.ours)


def _flood_and_count(run, count, flush):
    """Flood COUNT events, let the consumer drain, optionally one more event; the trailer and stderr."""
    run.send("go %d 1" % count)
    assert run.flood.stdout.readline().strip() == str(count)
    run.wait_drained()
    run.send("flush" if flush else "no")
    assert run.flood.stdout.readline().strip() == "flushed"
    run.wait_drained()
    err = run.stop(signal.SIGTERM)
    assert run.tool.returncode == 0, err
    trailer, events = read_trailer(run.record)
    assert trailer["events"] == len(events)
    shown = [int(n) for n in LOST_LINE.findall(err)]
    return trailer, shown


def test_every_flood_event_is_recorded_or_counted_lost_and_shown(runs):
    """The kernel reports a perf-buffer loss with the next record written to that ring: after one more
    event, recorded + lost is exactly what the flood generated."""
    run, = runs["exact"]
    trailer, shown = _flood_and_count(run, 30000, flush=True)
    assert trailer["lost_events"] > 0 and shown == [trailer["lost_events"]]
    assert trailer["events"] + trailer["lost_events"] == 30000 + 1


def test_losses_at_the_end_of_a_flood_are_counted(runs):
    """No event after the flood: the kernel never reports the ring's last losses, kmemsnoop's own count
    of failed perf_submit() calls does."""
    run, = runs["tail"]
    trailer, shown = _flood_and_count(run, 30000, flush=False)
    assert shown == [trailer["lost_events"]]
    assert trailer["events"] + trailer["lost_events"] == 30000


@pytest.mark.parametrize("tool,message", [
    ("kmemsnoop", "a kprobe on the kernel's kmem limit handler ("),
    ("slabfail", "kprobes (CONFIG_KPROBES) for slabfail"),
    ("mempoolwait", "kprobes (CONFIG_KPROBES) for mempoolwait"),
    ("writeslow", "kprobes (CONFIG_KPROBES) for writeslow"),
])
def test_kprobe_mode_without_kprobes_names_the_fallback(bpftools_cli, tool, message):
    if os.path.exists(os.path.join(TRACEFS, "kprobe_events")):
        pytest.skip("this kernel has kprobes")
    r = bpftools_cli(tool, "--mode", "kprobe", "-d", "1")
    assert r.code == 5, r.err
    line, = r.err.strip().splitlines()
    assert line.startswith("bpftools: error: missing kernel feature: " + message)
    assert line.endswith("; try: --mode tracepoint")
