"""The ``bpftools repro`` command group: workloads that reproduce the two incidents on a test node
or in the QEMU lab, bounded in count and time, leaving nothing behind.

Registered by the main CLI with ``cli.add_command(repro)``; errors are the typed ones of
``bpftools.errors`` (mapped to exit codes by ``bpftools.cli.main``).
"""
import json
from typing import Any, Callable, Dict, Optional

import click

from ..options import CONTEXT, FINITE, PATH
from ..render import one_line
from . import ReproError, parse_size
from .kmem_io import KmemIoConfig, failed_writers, run_kmem_io
from .kmem_io import render_text as kmem_io_text
from .netns_churn import NetnsChurnConfig, run_netns_churn
from .netns_churn import render_text as netns_churn_text



def _say(as_json: bool) -> Callable[[str], None]:
    """Progress lines: stdout normally; stderr with --json, so stdout is one JSON document."""
    def say(line: str) -> None:
        click.echo(one_line(line), err=as_json)
    return say


def _print_json(summary: Dict[str, Any]) -> None:
    click.echo(json.dumps(summary, indent=2, sort_keys=True))


def _workload_options(start_delay_after: str, ready_when: str) -> Callable[[Callable], Callable]:
    """--start-delay, --json and --ready-file, which every workload has."""
    def decorate(fn: Callable) -> Callable:
        for deco in reversed([
                click.option("--start-delay", type=FINITE, default=0.0, metavar="SECONDS",
                             help="Wait SECONDS after %s (to attach a tracer)." % start_delay_after),
                click.option("--json", "as_json", is_flag=True,
                             help="Print the summary as JSON (progress goes to stderr)."),
                click.option("--ready-file", type=PATH, metavar="FILE", hidden=True,
                             help="Write FILE (JSON) once %s (for tests)." % ready_when)]):
            fn = deco(fn)
        return fn
    return decorate


@click.group(context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools repro kmem-io                  # 2 fsync writers in a kmem-accounted memory cgroup, 10 s
  bpftools repro netns-churn              # 10 rounds of namespaces + veths + PMTU exceptions
""")
def repro() -> None:
    """Reproduce the incidents: kmem-accounted fsync writers, network namespace churn (root)."""


@repro.command("kmem-io", context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools repro kmem-io                          # 2 writers, 1M chunks, 10 s, 256M ext4 image
  bpftools repro kmem-io --writers 8 --duration 60 --memory-limit 64M
  bpftools repro kmem-io --dir /var/lib/docker/tmp --iterations 500 --json
  bpftools repro kmem-io --no-kmem                # the same without runc's kmem activation (A/B)
  bpftools repro kmem-io --start-delay 5          # time to attach: bpftools ... -p <writer pid>
\b
The writers' pids are printed as soon as they start. Removed afterwards (also on Ctrl-C and
SIGTERM): writers, mount, loop device, image, writer files, the cgroup. Needs root, a cgroup v1
memory controller, and mkfs.ext4 (e2fsprogs), losetup/mount/umount (mount, or util-linux).
""")
@click.option("--writers", type=int, default=2, show_default=True, help="Writer processes.")
@click.option("--chunk", default="1M", show_default=True, metavar="SIZE",
              help="Bytes written before each fsync (4K..64M).")
@click.option("--size", default="256M", show_default=True, metavar="SIZE",
              help="Size of the ext4 image; with --dir, the space the writers' files may use.")
@click.option("--memory-limit", default="256M", show_default=True, metavar="SIZE",
              help="memory.limit_in_bytes of the cgroup.")
@click.option("-d", "--duration", type=FINITE, default=10.0, show_default=True, metavar="SECONDS",
              help="Stop after SECONDS (or --iterations, whichever comes first).")
@click.option("--iterations", type=int, metavar="N", help="Stop each writer after N fsyncs.")
@click.option("--slow-ms", type=FINITE, default=1000.0, show_default=True, metavar="MS",
              help="Count fsyncs slower than MS.")
@click.option("--dir", "directory", metavar="DIR", help="Write in DIR instead of a loop-mounted ext4 image.")
@click.option("--kmem/--no-kmem", default=True, show_default=True,
              help="Switch kmem accounting on the way runc does (write 1 then -1 to memory.kmem.limit_in_bytes).")
@_workload_options("the writers joined the cgroup, before they write",
                   "the writers are in the cgroup (pids, cgroup, ...)")
def kmem_io(writers: int, chunk: str, size: str, memory_limit: str, duration: float, iterations: Optional[int],
            slow_ms: float, directory: Optional[str], kmem: bool, start_delay: float, as_json: bool,
            ready_file: Optional[str]) -> None:
    """Run fsync writers inside a memory cgroup with kmem accounting switched on the way runc does it."""
    cfg = KmemIoConfig(writers=writers, chunk=parse_size(chunk), size=parse_size(size),
                       memory_limit=parse_size(memory_limit), duration=duration, iterations=iterations,
                       slow_ms=slow_ms, directory=directory, kmem=kmem, start_delay=start_delay,
                       ready_file=ready_file)
    summary = run_kmem_io(cfg, _say(as_json))
    if as_json:
        _print_json(summary)
    else:
        for line in kmem_io_text(summary):
            click.echo(one_line(line))
    failed = failed_writers(summary)
    if failed:
        raise ReproError("writers failed: %s" % "; ".join(failed))


@repro.command("netns-churn", context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools repro netns-churn                      # 10 rounds, PMTU 1280, client namespace deleted first
  bpftools repro netns-churn --count 100 --duration 120 --teardown router-first
  bpftools repro netns-churn --pmtu 1400 --json
  bpftools repro netns-churn --hold-route         # keep a cached route across the veth deletion
  bpftools repro netns-churn --settle 15          # wait for 'waiting for <dev>' lines before reporting
\b
Everything happens in namespaces the run creates (bpft-<pid base36>-<round><c|r|s>), with
addresses from 198.18.0.0/15 that exist only inside them; no traffic leaves them. The traffic
worker's pid is printed first. Needs root, veth and network namespaces, and ip (iproute2).
""")
@click.option("-c", "--count", type=int, default=10, show_default=True, metavar="N", help="Rounds.")
@click.option("-d", "--duration", type=FINITE, default=25.0, show_default=True, metavar="SECONDS",
              help="Start no new round after SECONDS.")
@click.option("--pmtu", type=int, default=1280, show_default=True,
              help="MTU of the router-server link: the PMTU the exception must show.")
@click.option("--payload", type=int, default=1400, show_default=True,
              help="UDP payload bytes of the DF datagrams (datagram = payload + 28).")
@click.option("--teardown", type=click.Choice(["client-first", "router-first"]), default="client-first",
              show_default=True, help="Which namespace is deleted first.")
@click.option("--hold-route", is_flag=True,
              help="Keep a connected UDP socket (cached route) in the client while the router's veth is deleted.")
@click.option("--settle", type=FINITE, default=0.0, metavar="SECONDS",
              help="Wait SECONDS after the last round before reading the kernel log.")
@_workload_options("the worker started, before round 1", "round 1's namespaces exist (pids, namespaces)")
def netns_churn(count: int, duration: float, pmtu: int, payload: int, teardown: str, hold_route: bool,
                settle: float, start_delay: float, as_json: bool, ready_file: Optional[str]) -> None:
    """Create and delete network namespaces with veths and PMTU route exceptions (fnhe), in rounds."""
    cfg = NetnsChurnConfig(count=count, duration=duration, pmtu=pmtu, payload=payload, teardown=teardown,
                           hold_route=hold_route, settle=settle, start_delay=start_delay, ready_file=ready_file)
    summary = run_netns_churn(cfg, _say(as_json))
    if as_json:
        _print_json(summary)
    else:
        for line in netns_churn_text(summary):
            click.echo(one_line(line))
