"""writeslow: writeback calls slower than a threshold, nested, with stacks, process, cgroup and device.

Like bcc's funcslower for the writeback path, but every slow call shows, not only the innermost: each
thread keeps a stack of the writeback calls it is inside, so an outer ``do_writepages`` and the
``ext4_writepages`` in it are both reported, each with its nesting depth.

Modes (``--mode``):
- kprobe: entry and return kprobes on the writeback functions this kernel has (3.10: ``__writepage``,
  ``ext4_writepage``, ``xfs_vm_writepage``...; 6.x: ``do_writepages``, ``ext4_writepages``,
  ``iomap_writepages``...), or the ones named with ``-F``. Device, inode and pages written are read
  from the arguments only with this kernel's own headers installed.
- tracepoint: the ``writeback:writeback_single_inode_start``/``writeback_single_inode`` and
  ``ext4:ext4_writepages``/``ext4_writepages_result`` pairs (device, inode, pages written included).
"""
from typing import Any, List, Optional, Tuple

import click

from ..analyses import folded as folded_stacks
from ..analyses import stacks
from ..iostall import face as io
from ..iostall.program import Decoder
from ..iostall.writeback import WritebackCall, decode, plan
from ..live import then
from ..capture import Outline
from ..kernel.target import Running, Target
from ..options import CONTEXT, NON_NEGATIVE

TOOL = "writeslow"
MIN_MS = 10.0         # the shortest call shown (--min-ms)
HEADER = "%-14s %-7s %-16s %10s %-7s %-9s %6s  %s" % ("TIME(s)", "PID", "COMM", "LAT(ms)", "DEV", "INO", "PAGES",
                                                     "FUNC (nested calls indented)")


def line(event: WritebackCall) -> str:
    """One output line; nested calls are indented by their depth."""
    pages = "-" if event.written is None else str(event.written)
    return "%-14.6f %-7d %-16s %10.3f %-7s %-9s %6s  %s%s%s" % (
        event.ts_ns / 1e9, event.tgid, event.comm, event.duration_ns / 1e6, event.dev or "-",
        "-" if event.ino is None else event.ino, pages, "  " * event.depth, event.func,
        " (deeper calls not recorded)" if event.deeper else "")


def folded_sample(event: WritebackCall) -> Tuple[List[str], int]:
    """``comm;outermost..innermost;[writeback FUNC]`` weighted by the call's duration (outermost calls only)."""
    label = folded_stacks.annotation("writeback %s" % event.func)
    return [event.comm] + stacks.root_first(event.kstack) + [label], event.duration_ns



def outline(target: Target) -> Outline:
    """The plan of ``bpftools writeslow`` on TARGET, in words."""
    return plan(target, "auto", None, int(MIN_MS * 1e6)).outline()


@click.command(TOOL, context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools writeslow                   # writeback calls of 10 ms or more, until Ctrl-C
  bpftools writeslow -m 1000 -K        # 1 s or more, with stacks
  bpftools writeslow -F do_writepages -F ext4_writepages   # these functions (kprobes)
  bpftools writeslow -f -d 60 > wb.folded                   # time per stack, outermost calls
""")
@io.common_options
@click.option("-m", "--min-ms", type=NON_NEGATIVE, default=MIN_MS, show_default=True,
              help="Report calls that took at least this long.")
@click.option("-F", "--function", "functions", multiple=True, metavar="NAME",
              help="Probe this writeback function (repeatable; needs kprobes).")
@click.option("-K", "kernel_stacks", is_flag=True, help="Print the kernel stack (the callers) of each call.")
@click.option("-f", "--folded", is_flag=True, help="Print folded stacks of the outermost calls at the end.")
def command(pid: Optional[int], cgroup: Optional[str], duration: Optional[float], mode: str, as_json: bool,
            record: Optional[str], ready_file: Optional[str], ebpf: bool, min_ms: float,
            functions: Tuple[str, ...], kernel_stacks: bool, folded: bool) -> None:
    """Trace writeback calls slower than a threshold, outer and inner ones, with device, inode and stack."""
    the_plan = plan(Running(), mode, pid, int(min_ms * 1e6), tuple(functions))
    if ebpf:
        click.echo(the_plan.describe())
        return
    samples = []  # type: List[Tuple[List[str], int]]

    def keep(raw: Any, decoder: Decoder) -> Optional[WritebackCall]:
        event = decode(raw, decoder)
        if event is None or not io.cgroup_matches(event.wb_cgroup or event.cgroup, cgroup):
            return None
        return event

    def show(event: WritebackCall) -> None:
        if folded:
            if event.depth == 0:
                samples.append(folded_sample(event))
        else:
            io.print_event(event, as_json, kernel_stacks, line)

    if not (folded or as_json):
        click.echo(HEADER)
    def finish() -> None:
        if folded:
            io.print_folded(samples)

    with then(finish):
        io.live(TOOL, the_plan, record, ready_file, duration, keep, show)


def render_recording(rec: Any, console: Any) -> None:
    """``bpftools report`` of a writeslow recording: the same lines as the live run."""
    io.render_events(rec, console, HEADER, {WritebackCall.TYPE: WritebackCall.from_json}, line)
