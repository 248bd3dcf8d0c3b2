"""Property-based fuzzing (hypothesis) of what a user feeds bpftools: kernel logs, recordings, arguments
(and the float option type they go through).

Whatever the input, the CLI answers with an exit code from the README's table and at most a one-line
error, never a traceback. Exit code 1 ("internal error (a bug)") and 130 (interrupted) are failures
here: nothing below is a bug or an interruption. ``main()`` runs in-process (fast), with stdin empty,
the working directory a temporary one and, for random arguments, ``os.geteuid`` reporting an ordinary
user, so no random combination can attach a probe or touch the node; ``repro`` and the commands
still in development are fuzzed in a subprocess as user nobody instead.
"""
import contextlib
import io
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import click
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bpftools import outfiles
from bpftools.analyses.kernel_log import LineJoiner, parse_line
from bpftools.analyses.log_paste import unpaste
from bpftools.cli import cli, main
from bpftools.errors import BadInput
from bpftools.options import FiniteFloat
from bpftools.recording import Recorder, make_header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import analysis_throughput  # noqa: E402

CORPUS = os.path.join(os.path.dirname(ROOT), "shared", "corpus", "dmesg")
REPO_CORPUS = os.path.join(ROOT, "tests", "corpus")
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 130}
NOT_A_BUG = DOCUMENTED - {1, 130}
SAFE_COMMANDS = ["doctor", "report", "kmemsnoop", "slabfail", "mempoolwait", "writeslow", "iojitter"]
FUZZ = settings(max_examples=int(os.environ.get("BPFTOOLS_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
SEED_LINES = [   # used when the shared corpus is not beside the clone
    "[8643296.448116] SLUB: Unable to allocate memory on node -1 (gfp=0x8020)",
    "[8643296.448120]   cache: kmalloc-1024(1793:c8edefa90517e21bc691deef20c17220af0f0ac69962cc51007d372e7dd40256), "
    "object size: 1024, buffer size: 1024, default order: 3, min order: 0",
    "[  10.000000] unregister_netdevice: waiting for eth0.100 to become free. Usage count = 1",
    "Jan  3 10:00:00 node kernel: INFO: task kworker/u8:2:1234 blocked for more than 120 seconds.",
    "6,1234,5678,-;mempool_alloc+0x64/0x170",
]


def corpus_lines():
    lines = list(SEED_LINES)
    for corpus in (CORPUS, REPO_CORPUS):
        for name in sorted(os.listdir(corpus)) if os.path.isdir(corpus) else []:
            if name.endswith(".log"):
                with open(os.path.join(corpus, name), "rb") as f:
                    lines += f.read().decode("utf-8", "replace").splitlines()[:400]
    return lines


LINES = corpus_lines()


def run_cli(args, stdin=b""):
    """``bpftools ARGS`` in-process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


def assert_clean(code, err, allowed=NOT_A_BUG):
    assert code in allowed, (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 7:                                       # doctor: partial answer, its notes on stderr
        assert all(line.startswith("bpftools: ") for line in err.strip().splitlines()), err
    elif code != 0 and not err.startswith("Usage:"):   # a group without its command prints its help
        assert len(err.strip().splitlines()) == 1 and err.startswith("bpftools: error: "), err


@contextlib.contextmanager
def scratch_dir():
    """A temporary working directory for one example."""
    old = os.getcwd()
    path = tempfile.mkdtemp(prefix="bpftools-fuzz-")
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)
        shutil.rmtree(path, ignore_errors=True)


def mutate_text(rnd, text):
    """One random edit of a line: cut, insert, delete or replace a span."""
    if not text:
        return text
    i = rnd.randrange(len(text))
    j = min(len(text), i + rnd.randint(1, 12))
    junk = "".join(chr(rnd.choice([rnd.randint(0, 0x7f), rnd.randint(0x80, 0x10ffff)])) for _ in range(rnd.randint(0, 6)))
    junk = junk.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return rnd.choice([text[:i], text[:i] + junk + text[i:], text[:i] + text[j:], text[:i] + junk + text[j:]])


log_lines = st.lists(st.one_of(
    st.sampled_from(LINES),
    st.tuples(st.sampled_from(LINES), st.randoms(use_true_random=False)).map(lambda t: mutate_text(t[1], t[0])),
    st.text(max_size=200),
), max_size=40)
releases = st.one_of(st.sampled_from(["3.10.0-957.el7.x86_64", "3.10.0-1160.el7.x86_64", "5.4.0-29-generic",
                                      "6.1.0-56-amd64", "4.19", "", "x"]), st.text(max_size=30))


@FUZZ
@given(lines=log_lines, release=releases, raw=st.binary(max_size=200), as_json=st.booleans())
def test_doctor_log_never_fails_on_mutated_corpus_lines(lines, release, raw, as_json):
    with scratch_dir():
        with open("k.log", "wb") as f:
            f.write("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n" + raw)
        code, out, err = run_cli(["doctor", "--log", "k.log", "--release", release] + (["--json"] if as_json else []))
    assert_clean(code, err, allowed={0, 7})       # 7: the log was cut or nothing in it was analysable
    if as_json:
        report = json.loads(out)
        assert report["log"] == {"source": "k.log", "lines": report["log"]["lines"]}
        assert report["kernel_release"] == (release or os.uname().release)


# ---------------------------------------------------------------------------------------------
# The normaliser: pasted and exported lines
# ---------------------------------------------------------------------------------------------

def _html(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


NUMBERS = [lambda text, n: "%d %s" % (n, text), lambda text, n: "%d: %s" % (n, text),
           lambda text, n: "%d | %s" % (n, text)]
WRAPS = [lambda text: "> " + text, lambda text: ">> " + text, lambda text: "`%s`" % text, _html]
stamped = [line for line in LINES if line.startswith("[") and parse_line(line).monotonic is not None
           and parse_line(line).text]


@FUZZ
@given(line=st.sampled_from(stamped), wraps=st.lists(st.sampled_from(WRAPS), unique=True, max_size=4),
       number=st.one_of(st.none(), st.tuples(st.sampled_from(NUMBERS), st.integers(0, 9999999))),
       where=st.integers(0, 4))
def test_decorated_corpus_lines_read_as_the_line_itself(line, wraps, number, where):
    """A line number, quote markers, backticks and HTML escapes, stacked in any order: the message
    and its stamp are those of the line as the kernel wrote it, and the raw line is kept."""
    decorated = line
    for i, wrap in enumerate(wraps + [None]):
        if number is not None and i == min(where, len(wraps)):
            decorated = number[0](decorated, number[1])
        if wrap is not None:
            decorated = wrap(decorated)
    plain, read = parse_line(line), parse_line(decorated)
    assert (read.text, read.timestamp, read.monotonic) == (plain.text, plain.timestamp, plain.monotonic)
    assert read.raw == decorated


@FUZZ
@given(line=st.sampled_from(stamped), export=st.sampled_from(["journald", "dmesg"]))
def test_exported_corpus_lines_read_as_the_line_itself(line, export):
    plain = parse_line(line)
    if export == "journald":
        record = {"MESSAGE": plain.text, "_TRANSPORT": "kernel",
                  "_SOURCE_MONOTONIC_TIMESTAMP": str(int(round(plain.monotonic * 1e6)))}
    else:
        record = {"fac": "kern", "pri": "warn", "time": plain.monotonic, "msg": plain.text}
    read = parse_line(json.dumps(record))
    assert (read.text, read.kernel) == (plain.text, True)
    assert read.monotonic == pytest.approx(plain.monotonic, abs=1e-6)


@FUZZ
@given(text=st.one_of(st.text(max_size=300), st.sampled_from(LINES).map(lambda l: "{" + l + "}"),
                      st.sampled_from(['"time": ', '"msg": ', '{"MESSAGE": ', '"fac": ', "&#", "12 ", "> "]).flatmap(
                          lambda head: st.text(max_size=100).map(lambda tail: head + tail))))
def test_the_normaliser_never_raises(text):
    pasted = unpaste(text)
    assert isinstance(pasted.text, str) and len(pasted.text) <= len(text) + 8 * text.count("&")
    parse_line(text)


@FUZZ
@given(lines=log_lines)
def test_the_line_joiner_keeps_one_line_and_one_record(lines):
    """Bounded lookback: whatever it is fed, the joiner holds one line and at most two record fields."""
    joiner = LineJoiner()
    for raw in lines + ['"time": 1.5,', '"fac": "kern",', '"pri": "x",', '"time": 2,']:
        joiner.push(raw)
        assert len(joiner.record) <= 2
        assert joiner.prev is None or len(joiner.prev.raw) <= 8192 + len(raw) + 1


@pytest.mark.parametrize("text", ["1" * 200000 + " [", ">" * 200000, "&amp;" * 40000, "`" * 200000,
                                  '"time": ' + "1" * 200000, "{" + '"a":[' * 1000 + "}",
                                  "x " * 100000 + "[  1.0] y"])
def test_the_normaliser_is_linear_on_crafted_lines(text):
    start = time.perf_counter()
    parse_line(text)
    assert time.perf_counter() - start < 0.5


def _kmem_event(i):
    return {"type": "kmem_file", "ts_ns": 10 ** 9 + i, "tgid": 100 + i, "tid": 100 + i, "comm": "sh",
            "op": "write" if i % 2 else "open", "path": "/sys/fs/cgroup/memory/pod%d/memory.kmem.limit_in_bytes" % i,
            "value": "1\n" if i % 2 else None, "ret": 2 if i % 2 else 3, "writer_cgroup": "/kubepods/pod%d" % i,
            "writer_cgroup_v2": None, "container": None, "error": None}


def kmem_recording(path, n):
    rec = Recorder(path, make_header("kmemsnoop", ["bpftools", "kmemsnoop", "--record", path]))
    for i in range(n):
        rec.write(_kmem_event(i))
    rec.close({"lost_events": 0, "interrupted": False, "events": n})


@FUZZ
@given(n=st.integers(0, 12), where=st.floats(0, 1))
def test_a_recording_cut_anywhere_after_its_header_reports_every_whole_line(n, where):
    with scratch_dir():
        kmem_recording("r.jsonl", n)
        with open("r.jsonl", "rb") as f:
            data = f.read()
        lines = data.split(b"\n")[:-1]
        start = len(lines[0]) + 1
        cut = start + int(where * (len(data) - start))
        with open("r.jsonl", "wb") as f:
            f.write(data[:cut])
        kept = data[:cut].split(b"\n")
        whole = kept[:-1] + ([kept[-1]] if kept[-1] in lines else [])
        damaged = 0 if kept[-1] in (b"",) or kept[-1] in lines else 1
        code, out, err = run_cli(["report", "r.jsonl", "--json"])
        assert_clean(code, err, allowed={0, 7})       # 7: the log was cut or nothing in it was analysable
        back = json.loads(out)
        events = [json.loads(l) for l in whole[1:] if b'"trailer"' not in l]
        assert back["events"] == events and back["damaged_lines"] == damaged
        assert (back["trailer"] is not None) == (len(whole) == n + 2)
        code, out, err = run_cli(["report", "r.jsonl"])
        assert_clean(code, err, allowed={0, 7})       # 7: the log was cut or nothing in it was analysable
        assert ("%d damaged line(s) skipped" % damaged in " ".join(out.split())) == bool(damaged)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                           max_leaves=6)
TOOLS = ["kmemsnoop", "iojitter", "slabfail", "mempoolwait", "writeslow", "netdevwait", "refleak", "nosuchtool"]


def _json_or(line, default):
    """LINE as JSON, or DEFAULT when an earlier edit left it invalid."""
    try:
        return json.loads(line)
    except ValueError:
        return default


@FUZZ
@given(tool=st.sampled_from(TOOLS), data=st.data(), rnd=st.randoms(use_true_random=False),
       command=st.sampled_from([[], ["--json"], ["--folded", "-"]]))
def test_report_on_a_mutated_recording_never_fails(tool, data, rnd, command):
    with scratch_dir():
        if tool == "kmemsnoop":
            kmem_recording("r.jsonl", 6)
        else:
            analysis_throughput.write_recording("r.jsonl", 30, 2)
        with open("r.jsonl", encoding="utf-8") as f:
            lines = f.read().splitlines()
        header = json.loads(lines[0])
        header["tool"] = tool
        lines[0] = json.dumps(header)
        for _ in range(data.draw(st.integers(1, 4), label="edits")):
            i = rnd.randrange(len(lines))
            edit = data.draw(st.sampled_from(["field", "text", "delete", "duplicate", "insert", "header"]), label="edit")
            if edit == "field" and i > 0:
                obj = _json_or(lines[i], {})
                if isinstance(obj, dict) and obj:
                    obj[rnd.choice(sorted(obj))] = data.draw(json_values, label="value")
                    lines[i] = json.dumps(obj)
            elif edit == "text":
                lines[i] = mutate_text(rnd, lines[i])
            elif edit == "delete" and len(lines) > 1:
                del lines[i]
            elif edit == "duplicate":
                lines.insert(i, lines[i])
            elif edit == "insert":
                lines.insert(i, json.dumps(data.draw(json_values, label="line")))
            elif edit == "header":
                head = _json_or(lines[0], None)
                if isinstance(head, dict):
                    head[data.draw(st.sampled_from(["argv", "version", "kernel_release", "capabilities"]))] = \
                        data.draw(json_values, label="header value")
                    lines[0] = json.dumps(head)
        with open("r.jsonl", "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write("\n".join(lines) + "\n")
        code, out, err = run_cli(["report", "r.jsonl"] + command)
    assert_clean(code, err, allowed={0, 3})


def _option_names(command):
    names = set()
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts + param.secondary_opts)
    return names


OPTION_NAMES = sorted(set(n for name in SAFE_COMMANDS for n in _option_names(cli.commands[name]))
                      | _option_names(cli) | {"--help", "-h", "--version"})
ALL_NAMES = sorted(set(OPTION_NAMES) | set(n for c in cli.commands.values() for n in _option_names(c)))
value = st.one_of(
    st.integers(-2 ** 70, 2 ** 70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["-", "--", "", "-1", "0", "1", "nan", "inf", "1e999", "r.jsonl", "k.log", "out"]),
    st.text(alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), max_size=10),
)
token = st.one_of(st.sampled_from(OPTION_NAMES), value)


def arguments(command):
    """COMMAND then a few of its own options, with or without a value, and stray tokens."""
    names = sorted(_option_names(cli.commands[command]) | {"--help"}) if command in cli.commands else OPTION_NAMES
    pair = st.tuples(st.sampled_from(names), value).map(list)
    single = st.one_of(st.sampled_from(names), value).map(lambda t: [t])
    return st.lists(st.one_of(pair, pair, single), max_size=4).map(
        lambda groups: [command] + [t for g in groups for t in g])


# Mostly real commands (a random word is a usage error at once).
commands = st.one_of(st.sampled_from(SAFE_COMMANDS), st.sampled_from(SAFE_COMMANDS), st.text(max_size=6))


@settings(FUZZ, max_examples=3 * FUZZ.max_examples)
@given(args=commands.flatmap(arguments),
       leading=st.lists(st.sampled_from(["-v", "--traceback", "-vv"]), max_size=2))
def test_random_arguments_never_fail(monkeypatch, args, leading):
    """As an ordinary user (os.geteuid patched): tracing stops at the privilege check, never attaches."""
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    with scratch_dir():
        with open("k.log", "w") as f:
            f.write(SEED_LINES[2] + "\n")
        kmem_recording("r.jsonl", 2)
        code, out, err = run_cli(leading + args)
    event("exit %d" % code)
    if "--traceback" in leading and code in (3, 4, 5, 6):
        err = err.split("\n", 1)[0] + "\n"      # --traceback adds the traceback of a typed error on purpose
    assert_clean(code, err)


@pytest.mark.root
@settings(max_examples=8, deadline=None)
@given(command=st.sampled_from(sorted(set(cli.commands) - set(SAFE_COMMANDS))),
       tokens=st.lists(st.one_of(st.sampled_from(ALL_NAMES), token), max_size=5))
def test_random_arguments_as_nobody_never_fail(command, tokens):
    """The other commands (repro creates cgroups and namespaces) as the unprivileged user nobody."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) missing")
    proc = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                           "bpftools.cli", command] + tokens, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, cwd="/tmp",
                          timeout=60)
    assert_clean(proc.returncode, proc.stderr)


@FUZZ
@given(text=st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.floats().map(str),
                      st.sampled_from(["nan", "NaN", "-nan", "inf", "-Infinity", "1e999", "-1e999", "0", "-0.0",
                                       "1_0", " 5 ", "0x10", ""]),
                      st.text(max_size=8)),
       minimum=st.sampled_from([None, 0.0, 1.0]), exclusive=st.booleans())
def test_the_float_option_type_gives_a_finite_bounded_number_or_a_usage_error(text, minimum, exclusive):
    kind = FiniteFloat(minimum, exclusive)
    try:
        number = kind.convert(text, None, None)
    except click.BadParameter as err:
        event("refused")
        assert "\n" not in err.format_message()
        return
    assert math.isfinite(number)
    assert minimum is None or number > minimum or (not exclusive and number == minimum)


# --- fuzz: whatever was planted, nothing is written through it and no temp file stays -------------------

KINDS = ["none", "file", "others-file", "dir", "link", "dangling", "fifo"]
NOBODY = 65534
SECRET = "root only\n"
FUZZ_OUT = settings(FUZZ, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def scratch():
    path = tempfile.mkdtemp(prefix="bpftools-outfiles-")
    try:
        yield path
    finally:
        shutil.rmtree(path)


def plant(kind, path, secret):
    """Put an entry of KIND at PATH (a link points at SECRET, or beside it when dangling)."""
    if kind == "file":
        with open(path, "w") as f:
            f.write("mine")
    elif kind == "others-file":
        with open(path, "w") as f:
            f.write("nobody's")
        os.chown(path, NOBODY, NOBODY)
    elif kind == "dir":
        os.mkdir(path)
    elif kind in ("link", "dangling"):
        os.symlink(secret if kind == "link" else secret + ".new", path)
        os.lchown(path, NOBODY, NOBODY)
    elif kind == "fifo":
        os.mkfifo(path)


@FUZZ_OUT
@given(name=st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1,
                    max_size=40).filter(lambda n: n not in (".", "..")),
       kind=st.sampled_from(KINDS), dir_kind=st.sampled_from(["mine", "others", "shared", "link", "dangling"]),
       stream=st.booleans(), force=st.booleans())
def test_fuzz_the_output_layer(name, kind, dir_kind, stream, force):
    with scratch() as base:
        secret = os.path.join(base, "secret")
        with open(secret, "w") as f:
            f.write(SECRET)
        real = os.path.join(base, "real")
        os.mkdir(real, 0o755)
        out = os.path.join(base, "out")
        if dir_kind in ("link", "dangling"):
            os.symlink(real if dir_kind == "link" else os.path.join(base, "made"), out)
        else:
            os.mkdir(out)
            os.chmod(out, 0o1777 if dir_kind == "shared" else 0o755)
            if dir_kind == "others":
                os.chown(out, NOBODY, NOBODY)
        path = os.path.join(out, name)
        if dir_kind not in ("link", "dangling"):
            plant(kind, path, secret)
        before = sorted(os.listdir(real))
        outfiles.set_force(force)
        try:
            if stream:
                with outfiles.open_stream(path) as f:
                    f.write("line\n")
            else:
                outfiles.write_text(path, "line\n")
            written = True
        except BadInput as err:
            written = False
            assert "\n" not in str(err).replace(name, "") and str(err)
        finally:
            outfiles.set_force(False)
        with open(secret) as f:
            assert f.read() == SECRET
        assert not os.path.lexists(secret + ".new") and not os.path.lexists(os.path.join(base, "made"))
        assert sorted(os.listdir(real)) == before
        allowed = dir_kind in ("mine", "shared") or (dir_kind == "others" and force)
        replaceable = kind in ("none", "file") or (kind == "others-file" and force)
        assert written == (allowed and replaceable)
        if dir_kind not in ("link", "dangling"):
            assert os.listdir(out) == ([name] if written or kind != "none" else [])
        if written:
            st_ = os.lstat(path)
            assert stat.S_ISREG(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o600 and st_.st_uid == 0
            with open(path) as f:
                assert f.read() == "line\n"
