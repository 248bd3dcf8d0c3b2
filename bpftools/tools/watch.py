"""watch: the always-on detector and flight recorder (a DaemonSet's command).

Keeps the cheapest detectors of both incidents attached (mempool waits, slab failures, slow
writebacks, devices stuck in unregister, writes to memory.kmem.* files) in the best mode this kernel
offers, follows the kernel log with doctor's analyser, keeps bounded rings of recent events, and on a
trigger writes an evidence bundle (the recording before and after, report.html, folded stacks, the
kernel log excerpt, doctor's verdict) into a directory kept across restarts. Metrics go to
Prometheus (``--metrics-addr``) or node_exporter's textfile collector (``--textfile``).

The registry builds this tool with the modules of the three tools whose programs and reports it reuses
(:func:`tool_parts`): tools never import each other.
"""
import json
import os
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import click

from ..kernel.capabilities import detect
from ..kernel.log import kmsg_device
from ..kernel.target import Running, Target
from ..live import LiveRun, warn
from ..options import CONTEXT, NON_NEGATIVE, PATH, POSITIVE
from ..pointers import PointerHider, Settings as PointerSettings
from ..recording import make_header
from ..render import one_line
from ..watch import detectors as det
from ..watch.bundles import BundleDir
from ..watch.leftovers import remove_stale_kprobe_events
from ..watch.loop import Limits, Watch, run
from ..watch.metrics import DEFAULT_ADDR, Metrics
from ..watch.report import incident_report, render_recording

TOOL = "watch"
BUNDLE_DIR = "/var/lib/bpftools/bundles"
MIB = 1024 * 1024


def tool_parts(iojitter: Any, kmemsnoop: Any, netdevwait: Any) -> Tuple[Any, Callable, Callable, Callable]:
    """(command, render_recording, outline, incident_report) of watch, reusing the modules of the tools
    iojitter, kmemsnoop and netdevwait (what the registry's Tool takes)."""
    reused = det.Reused(iojitter=iojitter, kmemsnoop=kmemsnoop, netdevwait=netdevwait)

    def outline(target: Target) -> Any:
        """The plan of ``bpftools watch`` on TARGET, in words."""
        return det.outline(reused, target, det.Settings())

    def report(header: Dict[str, Any], events: Any, generated: str) -> Any:
        return incident_report(reused, header, events, generated)

    def render(rec: Any, console: Any) -> None:
        render_recording(reused, rec, console)

    return make_command(reused), render, outline, report


def _say(as_json: bool) -> Callable[[Dict[str, Any], str], None]:
    def say(obj: Dict[str, Any], line: str) -> None:
        sys.stdout.write((json.dumps(obj, sort_keys=True) if as_json else one_line(line)) + "\n")
        sys.stdout.flush()
    return say


def make_command(reused: det.Reused) -> Any:
    """The click command of watch."""

    @click.command(TOOL, context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools watch                       # until SIGTERM; bundles in %s
  bpftools watch --bundle-dir /data/bundles --max-mb 200 --textfile /var/lib/node_exporter
  bpftools watch --metrics-addr 0.0.0.0:9862 --json    # metrics for a scraper; JSON lines on stdout
  bpftools watch --mode tracepoint -d 600              # no kprobes, ten minutes
  bpftools watch --every-slab-allocation               # also slab failures SLUB does not report (costs more)
  kill -USR1 $(pidof -s bpftools)      # ask a running watch for a bundle now
  bpftools report /var/lib/bpftools/bundles/*/recording.jsonl   # a bundle again, in the terminal
""" % BUNDLE_DIR)
    @click.option("--bundle-dir", type=PATH, default=BUNDLE_DIR, show_default=True, metavar="DIR",
                  help="Where bundles are written (a hostPath in a DaemonSet: kept across pod restarts).")
    @click.option("--mode", type=click.Choice(("auto", "tracepoint")), default="auto", show_default=True,
                  help="auto: kprobes where the kernel has them, tracepoints and the kernel log otherwise.")
    @click.option("--wait-trigger", "wait_trigger", type=POSITIVE, default=1.0, show_default=True, metavar="SECONDS",
                  help="A mempool wait this long writes a bundle.")
    @click.option("--slow-ms", type=NON_NEGATIVE, default=100.0, show_default=True,
                  help="A writeback call this slow is recorded (and counted as a slow writeback).")
    @click.option("--every-slab-allocation", is_flag=True,
                  help="Also follow every slab allocation (kmem tracepoints): sees the failures SLUB does not "
                       "report (__GFP_NOWARN, per-object memcg charges), at one BPF run per allocation of the node. "
                       "Default where kprobes exist: only the failures SLUB reports (slab_out_of_memory).")
    @click.option("--after", type=NON_NEGATIVE, default=15.0, show_default=True, metavar="SECONDS",
                  help="Keep recording this long after a trigger before the bundle is written (the kernel "
                       "logs 'waiting for DEV' 10 s into a wait).")
    @click.option("--min-interval", type=NON_NEGATIVE, default=300.0, show_default=True, metavar="SECONDS",
                  help="At most one bundle per incident in this time; triggers between are counted.")
    @click.option("--ring-seconds", type=POSITIVE, default=300.0, show_default=True,
                  help="Each detector keeps its events of the last SECONDS ...")
    @click.option("--ring-events", type=click.IntRange(1, 10 ** 6), default=5000, show_default=True,
                  help="... and at most this many.")
    @click.option("--max-mb", type=POSITIVE, default=512.0, show_default=True,
                  help="The bundles together stay under this size (the oldest are removed).")
    @click.option("--max-bundles", type=click.IntRange(1, 10 ** 5), default=100, show_default=True,
                  help="At most this many bundles are kept.")
    @click.option("--metrics-addr", default=DEFAULT_ADDR, show_default=True, metavar="HOST:PORT",
                  help="Serve Prometheus /metrics here ('off': do not serve).")
    @click.option("--textfile", type=PATH, metavar="DIR",
                  help="Also write node_exporter textfile metrics (bpftools.prom) into DIR.")
    @click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout (kmem writes, triggers, bundles).")
    @click.option("-d", "--duration", type=POSITIVE, metavar="SECONDS", help="Stop after SECONDS (tests, benches).")
    @click.option("--ready-file", type=PATH, metavar="FILE", hidden=True, help="Touch FILE once attached (for tests).")
    @click.option("--kmsg", "kmsg_path", metavar="FILE", hidden=True, help="The kernel log to follow (tests).")
    def command(bundle_dir: str, mode: str, wait_trigger: float, slow_ms: float, every_slab_allocation: bool,
                after: float, min_interval: float,
                ring_seconds: float, ring_events: int, max_mb: float, max_bundles: int, metrics_addr: str,
                textfile: Optional[str], as_json: bool, duration: Optional[float], ready_file: Optional[str],
                kmsg_path: Optional[str]) -> None:
        """Always on: detect both incidents and write an evidence bundle when one happens."""
        limits = Limits(ring_events=ring_events, ring_seconds=ring_seconds, after=after,
                        min_wait_ns=int(wait_trigger * 1e9), min_interval=min_interval)
        bundles = BundleDir(bundle_dir, int(max_mb * MIB), max_bundles)
        for name in bundles.clean_leftovers():
            warn("removed %s, a bundle a killed run left half-written" % os.path.join(bundle_dir, name))
        for name in remove_stale_kprobe_events():
            warn("removed kprobe event %s, left by a killed run" % name)
        metrics = Metrics()
        try:
            if textfile:
                metrics.write_textfile(textfile)        # a directory it cannot write is said now, not later
            if metrics_addr != "off":
                warn("metrics on http://%s/metrics" % metrics.serve(metrics_addr))
            settings = det.Settings(mode=mode, slow_writeback_ns=int(slow_ms * 1e6),
                                    every_slab_allocation=every_slab_allocation)
            detectors = det.start(reused, Running(), settings, warn)
            hider = PointerHider(PointerSettings.show)
            header = hider.hide(make_header(TOOL, ["bpftools"] + sys.argv[1:],
                                            {"capabilities": detect().to_json()}))
            watch = Watch(reused, detectors, bundles, limits, metrics, header, hider, _say(as_json), warn, textfile)
            warn("watching: %s; bundles in %s" % (", ".join("%s (%s)" % (d.name, d.mode.get("mode")) for d in detectors)
                                                  or "the kernel log only", bundle_dir))
            run(watch, kmsg_device() if kmsg_path is None else kmsg_path, duration,
                LiveRun.ready_callback(ready_file))
        finally:
            metrics.close()

    return command
