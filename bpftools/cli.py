"""The `bpftools` command line: one click group, and ``main()`` mapping every error to an exit code."""
import codecs
import errno
import io
import json
import locale
import os
import sys
import traceback
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import click

from . import __version__, npd, outfiles, pointers, render
from .capture import try_fentry_attach
from .doctor import run_doctor
from .errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, BadInput, BpftoolsError
from .exports import combine, export, now_iso
from .kernel import hostroot
from .kernel.capabilities import detect
from .options import CONTEXT, PATH
from .planner import command as plan_command
from .recording import CountedRecording, MergedRecording, collector_paused, stream_recording
from .registry import TOOLS, build_report, tool_named
from .render import one_line
from .repro.cli import repro


class Options(object):
    """Global flags shared by every command."""

    def __init__(self, verbose: int = 0, show_traceback: bool = False) -> None:
        self.verbose = verbose
        self.show_traceback = show_traceback


@click.group(context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools doctor                      # triage this node for both incidents
  bpftools doctor --log dmesg.txt      # analyse a saved kernel log instead
  bpftools doctor --capabilities       # what this kernel offers a tracer
  bpftools kmemsnoop -d 60             # who turns on kmem accounting, for 60 s
  bpftools report run.jsonl            # re-render a recording
""")
@click.version_option(__version__, prog_name="bpftools")
@click.option("-v", "--verbose", count=True, help="More detail (probe load logs, feature detection).")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the Python traceback of unexpected errors.")
@click.option("--force", is_flag=True,
              help="Write into a directory, or replace a file, owned by another user (neither root nor you). "
                   "Symbolic links, FIFOs and devices are refused even so.")
@click.option("--show-kernel-pointers", is_flag=True,
              help="Keep kernel addresses in recordings and reports (hidden behind per-run tokens by default, "
                   "as the kernel's %p does: they defeat KASLR for whoever reads the file).")
@click.option("--host-root", metavar="DIR", envvar=hostroot.ENV, type=click.Path(exists=True, file_okay=False),
              help="The node's / is mounted at DIR (a container): read its /proc, cgroupfs, /dev/kmsg, /boot, "
                   "/etc/os-release and /var/log/pods there (also $%s)." % hostroot.ENV)
@click.pass_context
def cli(ctx: click.Context, verbose: int, show_traceback: bool, force: bool, show_kernel_pointers: bool,
        host_root: Optional[str]) -> None:
    """Diagnose kmem-accounting I/O jitter and netdev refcount leaks on Kubernetes nodes."""
    opts = ctx.ensure_object(Options)
    opts.verbose = verbose
    opts.show_traceback = show_traceback
    outfiles.set_force(force)
    pointers.Settings.show = show_kernel_pointers
    hostroot.set_host_root(host_root)


@cli.command(epilog="""\b
Examples:
  bpftools doctor                      # live kernel log + cgroup audit + known-bug matrix
  bpftools doctor --json               # the same, machine-readable
  bpftools doctor --log /var/log/messages
  journalctl -k | bpftools doctor --log -
  bpftools doctor --capabilities       # kernel capability table only
  bpftools doctor --npd kmem           # node-problem-detector plugin: exit 0/1/2, one line
""", context_settings=CONTEXT)
@click.option("--log", "log_path", type=PATH, metavar="FILE",
              help="Analyse this kernel log ('-' for stdin) instead of the live one.")
@click.option("--release", metavar="RELEASE", help="Kernel release the log came from (default: this node's when live).")
@click.option("--capabilities", "only_caps", is_flag=True, help="Print the kernel capability table and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--npd", "npd_condition", type=click.Choice(sorted(npd.CONDITIONS)), metavar="kmem|netdev",
              help="Run as a node-problem-detector custom plugin for one condition: exit 0 OK, 1 problem, "
                   "2 unknown (also on any error), one line of at most 80 bytes on stdout.")
@click.pass_obj
def doctor(opts: Options, log_path: Optional[str], release: Optional[str], only_caps: bool, as_json: bool,
           npd_condition: Optional[str]) -> None:
    """Triage this node: a verdict for each incident, with evidence and remediation."""
    if only_caps and (log_path is not None or release is not None):
        raise click.UsageError("--capabilities describes this kernel: it takes no --log or --release")
    if npd_condition is not None:
        if only_caps or as_json:
            raise click.UsageError("--npd prints one line for node-problem-detector: it takes no --capabilities "
                                   "or --json")
        code, line = npd.check(npd_condition, lambda: run_doctor(log_path=log_path, release=release))
        click.echo(line)
        raise click.exceptions.Exit(code)
    if only_caps:
        caps = detect(try_fentry=try_fentry_attach)
        if as_json:
            _print_json(caps.to_json())
        else:
            render.capabilities(caps, render.terminal())
        return
    triage = run_doctor(log_path=log_path, release=release)
    if as_json:
        _print_json(triage.to_json())
    else:
        render.triage(triage, render.terminal())
    if triage.exit_code:          # the log was cut or nothing in it was analysable: said on stderr
        raise click.exceptions.Exit(triage.exit_code)


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False))


@cli.command(epilog="""\b
Examples:
  bpftools report kmem.jsonl                   # the table the live tool printed
  bpftools report kmem.jsonl --json
  bpftools report kmem.jsonl --report out/     # report.html + .svg/.folded/.speedscope.json
  bpftools report kmem.jsonl --folded - | flamegraph.pl > kmem.svg
  bpftools report iojitter.jsonl refleak.jsonl --html incident.html   # one report of both
  bpftools report iojitter.jsonl refleak.jsonl --report out/          # + every flame graph
  bpftools report node1/io.jsonl.gz node2/io.jsonl.gz --report out/   # one tool: merged in time order
\b
Recordings are read as streams (any size, bounded memory); FILE.gz is gzip-compressed. Several
recordings: those of one tool merge into one, in time order; the text of each tool in turn; --json
prints a JSON list of their objects; --html and --report make one report of all of them (--folded,
--speedscope and --svg write a single flame graph, so they take the recordings of one tool: use
--report DIR for several tools).
""", context_settings=CONTEXT)
@click.argument("recordings", metavar="RECORDING...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON (a list of recordings for several).")
@click.option("--folded", type=PATH, metavar="FILE",
              help="Write folded stacks (flamegraph.pl/inferno); '-' for stdout.")
@click.option("--speedscope", type=PATH, metavar="FILE", help="Write a speedscope JSON profile.")
@click.option("--svg", type=PATH, metavar="FILE", help="Write an interactive SVG flame graph.")
@click.option("--html", type=PATH, metavar="FILE", help="Write the self-contained HTML incident report.")
@click.option("--report", "out_dir", type=PATH, metavar="DIR", help="Write all of the above into DIR.")
@collector_paused()
def report(recordings: Tuple[str, ...], as_json: bool, folded: Optional[str], speedscope: Optional[str],
           svg: Optional[str], html: Optional[str], out_dir: Optional[str]) -> None:
    """Re-render recordings made with --record, or export them (several: one report)."""
    if as_json and any((folded, speedscope, svg, html, out_dir)):
        raise click.UsageError("--json prints the recordings: it cannot be combined with --folded, --speedscope, "
                               "--svg, --html or --report")
    if as_json:
        _print_recordings_json(recordings)
        return
    streams = []  # type: List[Any]
    try:
        for path in recordings:
            streams.append(stream_recording(path))
        groups = _merged_by_tool(recordings, streams)
        if len(groups) > 1 and any((folded, speedscope, svg)):
            raise BadInput("--folded, --speedscope and --svg write one flame graph: with %d recordings use "
                           "--report DIR" % len(recordings))
        if any((folded, speedscope, svg, html, out_dir)):
            generated = now_iso()
            hider = pointers.PointerHider(pointers.Settings.show)     # one for all: a pointer keeps its token
            parts = [(rec.tool, _typed(what, build_report, hider.hide(rec.header), (hider.hide(e) for e in rec.events),
                                       generated)) for what, rec in groups]
            for path in _typed(", ".join(recordings), export, combine(parts), folded, speedscope, svg, html, out_dir):
                click.echo("wrote %s" % path, err=True)
            return
        console = render.terminal()
        for i, (what, rec) in enumerate(groups):
            if i:
                console.print()
            tool = tool_named(rec.tool)
            _typed(what, render.recording, rec, console, tool.render_recording if tool else None)
    finally:
        for stream in streams:
            stream.close()


def _print_recordings_json(paths: Tuple[str, ...]) -> None:
    """``report --json``: each recording as :func:`_print_json` lays out its header, events, trailer and
    damaged lines (a list of them for several), written event by event. Every recording is read through
    first, so that a file that is not one prints nothing, and to count its damaged lines (they come first)."""
    counted = []  # type: List[CountedRecording]
    try:
        for path in paths:
            counted.append(CountedRecording(path))
        write = sys.stdout.write
        if len(counted) == 1:
            _write_recording_json(counted[0], "", write)
        else:
            for i, rec in enumerate(counted):
                write(",\n  " if i else "[\n  ")
                _write_recording_json(rec, "  ", write)
            write("\n]")
        write("\n")
    finally:
        for rec in counted:
            rec.close()


_EVENTS = "\0events\0"          # where the events go in the document's text (the first string in it)


def _write_recording_json(rec: CountedRecording, indent: str, write: Any) -> None:
    """WRITE the text json.dumps(indent=2) makes of REC's document, INDENT before each line but the first."""
    def dumps(obj: Any, prefix: str) -> str:
        return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).replace("\n", "\n" + prefix)

    doc = {"damaged_lines": rec.damaged_lines, "events": _EVENTS, "header": rec.header, "trailer": rec.trailer}
    before, after = dumps(doc, indent).split(dumps(_EVENTS, ""), 1)
    write(before)
    item = indent + "    "
    separator = "[\n" + item
    for event in rec.events():
        write(separator)
        write(dumps(event, item))
        separator = ",\n" + item
    write("[]" if separator.startswith("[") else "\n" + indent + "  ]")
    write(after)


def _merged_by_tool(paths: Tuple[str, ...], streams: List[Any]) -> List[Tuple[str, Any]]:
    """The recordings as (their paths, one recording per tool): those of one tool merged in time order."""
    by_tool = OrderedDict()  # type: Dict[str, List[Tuple[str, Any]]]
    for path, stream in zip(paths, streams):
        by_tool.setdefault(stream.tool, []).append((path, stream))
    return [(", ".join(p for p, _ in group), group[0][1] if len(group) == 1 else MergedRecording([s for _, s in group]))
            for group in by_tool.values()]


def _typed(what: str, func: Any, *args: Any) -> Any:
    """FUNC(*ARGS); the errors of recordings whose fields have the wrong types (edited or damaged by
    hand: JSON lines of the right shape) become one BadInput naming WHAT."""
    try:
        return func(*args)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        raise BadInput("%s: events with fields of the wrong type (%s: %s); --json shows them as they are"
                       % (what, type(err).__name__, err))


cli.add_command(repro)
cli.add_command(plan_command)
for _tool in TOOLS.values():
    cli.add_command(_tool.command)


def utf8_in_ascii_locale() -> bool:
    """In an ASCII locale (LC_ALL=C: containers, kubectl debug pods, cron), do what Python 3.7+ does on
    its own (PEP 538/540) and Python 3.6, CentOS 7's, does not: stdout and stderr speak UTF-8
    (backslash escapes for what cannot be encoded), and click < 8.1 is kept from aborting every command
    ("Python 3 was configured to use ASCII as encoding for the environment"). True when it applied."""
    if codecs.lookup(locale.getpreferredencoding(False) or "ascii").name != "ascii":
        return False
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if hasattr(stream, "buffer") and codecs.lookup(stream.encoding or "ascii").name == "ascii":
            stream.flush()
            setattr(sys, name, io.TextIOWrapper(stream.buffer, encoding="utf-8", errors="backslashreplace",
                                                line_buffering=stream.line_buffering))
    for check in ("_verify_python3_env", "_verify_python_env"):    # click 7.x, click 8.0.x
        if hasattr(click.core, check):
            setattr(click.core, check, lambda: None)
    return True


# click >= 8.2: ``bpftools`` alone prints the help on stderr (exit 2), as click always did.
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
_REPLACED = []  # type: List[Any]      # stdout streams replaced by guard_stdout (their finaliser would close fd 1)


class StdoutError(OSError):
    """A write to stdout failed: the reader of the pipe went away, or the disk is full."""


class _StdoutFd(io.RawIOBase):
    """The file descriptor of stdout as a raw stream whose write errors are StdoutError."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, data: Any) -> int:
        try:
            return os.write(self.fd, data)
        except OSError as err:
            raise StdoutError(err.errno, err.strerror, "<stdout>")


def guard_stdout() -> None:
    """Make sys.stdout raise StdoutError when it cannot be written (same encoding and buffering), so
    main() tells that failure from all others. A stream that is not a file (a test's capture) stays."""
    stream = sys.stdout
    binary = getattr(stream, "buffer", None)
    if not isinstance(getattr(binary, "raw", binary), io.FileIO):
        return
    stream.flush()
    _REPLACED.append(stream)
    raw = _StdoutFd(stream.fileno())
    sys.stdout = io.TextIOWrapper(raw if isinstance(binary, io.FileIO) else io.BufferedWriter(raw),   # -u or not
                                  encoding=stream.encoding, errors=stream.errors, line_buffering=stream.line_buffering,
                                  write_through=getattr(stream, "write_through", False))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: run the CLI, map errors to exit codes with a one-line message."""
    utf8_in_ascii_locale()
    guard_stdout()
    args = list(sys.argv[1:] if argv is None else argv)
    opts = Options(show_traceback="--traceback" in args)
    try:
        # not cli.main(): it turns a closed stdout (EPIPE) into exit 1, as the run's own error
        with cli.make_context("bpftools", args, obj=opts) as ctx:
            cli.invoke(ctx)
        sys.stdout.flush()
        return EXIT_OK
    except click.exceptions.Abort:
        click.echo("bpftools: interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("bpftools: interrupted, probes detached", err=True)
        return EXIT_INTERRUPTED
    except click.exceptions.Exit as err:
        return err.exit_code
    except NO_ARGS_IS_HELP as err:
        err.show()
        return EXIT_USAGE
    except click.ClickException as err:
        ctx = getattr(err, "ctx", None)
        click.echo("bpftools: error: %s%s" % (one_line(err.format_message()).rstrip("."),
                                             "; try '%s --help'" % ctx.command_path if ctx else ""), err=True)
        return EXIT_USAGE
    except StdoutError as err:
        return _stdout_failed(err)
    except BpftoolsError as err:
        if isinstance(err.__context__, StdoutError):      # a layer that wrapped stdout's failure
            return _stdout_failed(err.__context__)
        click.echo("bpftools: error: %s" % one_line(err), err=True)
        if opts.verbose and err.detail():
            click.echo(err.detail(), err=True)
        if opts.show_traceback:
            traceback.print_exc()
        return err.exit_code
    except Exception as err:  # a bug: one line unless --traceback
        return _internal_error(err, opts)


def _stdout_failed(err: StdoutError) -> int:
    """A closed pipe (``| head``) ends the run quietly, exit 0, as Unix tools do; any other failure is one
    line, exit 3. Then stdout points at /dev/null, so that the flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    if err.errno == errno.EPIPE:
        return EXIT_OK
    click.echo("bpftools: error: cannot write to stdout: %s" % one_line(err.strerror), err=True)
    return EXIT_BAD_INPUT


def _internal_error(err: Exception, opts: Options) -> int:
    """A bug: one line on stderr (the traceback with --traceback), exit 1."""
    click.echo("bpftools: internal error: %s: %s (rerun with --traceback)" % (type(err).__name__, one_line(err)),
               err=True)
    if opts.show_traceback:
        traceback.print_exc()
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
