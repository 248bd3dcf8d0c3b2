"""Prometheus metrics of `bpftools watch`: served on ``/metrics`` or written as a node_exporter textfile.

The text exposition format 0.0.4 is written here by hand (no ``prometheus_client``: no new dependency
on the nodes, Python 3.6 included, for a format a page long)::

    >>> metrics = Metrics()
    >>> metrics.slab_failure("biovec-max")
    >>> "bpftools_slab_failures_total{cache=\\"biovec-max\\"} 1" in metrics.exposition()
    True

Label sets are bounded: slab caches (the base name, never a 3.10 per-memcg one) at most
``MAX_CACHES``, the rest counted under ``cache="(other)"``; devices waiting in unregister by name,
the ``MAX_DEVICE_SERIES`` reported last, while ``bpftools_netdev_unregister_waiting_devices`` counts
every waiting device tracked (at most ``MAX_DEVICES_TRACKED``). No pid, no cgroup labels.

Every method takes one lock: the event thread updates while the HTTP thread renders.
"""
import collections
import ipaddress
import math
import re
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

from .. import __version__, outfiles
from ..errors import EXIT_USAGE, BadInput, BpftoolsError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_ADDR = "127.0.0.1:9862"
TEXTFILE_NAME = "bpftools.prom"
# A mempool sleeps at most 5 s (io_schedule_timeout(5 * HZ) in mempool_alloc); a timed-out wait
# measures a little over 5 s, so 5.0 and 6.0 tell the timeouts apart.
MEMPOOL_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 6.0, 10.0)
WRITEBACK_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
MEMPOOL_RESULTS = ("timed_out", "woken")
MAX_CACHES = 64
OTHER_CACHE = "(other)"
MAX_DEVICE_SERIES = 50
MAX_DEVICES_TRACKED = 1000
# The kernel repeats "waiting for DEV to become free" every 10 s (netdev_unregister_timeout_secs,
# 5.13+; a fixed 10 s before); a device unreported for this long is no longer waiting, or was lost.
DEVICE_STALE_SECONDS = 60.0


class BadAddress(BpftoolsError):
    """A metrics address that is not HOST:PORT (a usage error)."""

    exit_code = EXIT_USAGE


def parse_address(text: str) -> Tuple[str, int]:
    """(host, port) of ``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (every IPv4 interface); BadAddress.

    >>> parse_address("[::1]:9862")
    ('::1', 9862)
    """
    usage = "--metrics-addr %r: expected HOST:PORT, [IPV6]:PORT or :PORT" % text
    m = re.fullmatch(r"(?:\[([^\]]+)\]|([A-Za-z0-9.-]*)):([0-9]{1,5})", text)
    if not m:
        raise BadAddress(usage + (" (an IPv6 address goes in brackets)" if text.count(":") > 1 else ""))
    host, port = m.group(1) if m.group(1) is not None else m.group(2), int(m.group(3))
    if port > 65535:
        raise BadAddress("%s: port %d is above 65535" % (usage, port))
    if m.group(1) is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadAddress("%s: %r is not an IPv6 address" % (usage, host))
    return host, port


def escape_label_value(value: str) -> str:
    """A label value as the format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers as such, +Inf/-Inf/NaN as the format spells them, floats by repr."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Sequence[Tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (name, escape_label_value(value)) for name, value in pairs)


class _Family(object):
    """One metric family's HELP/TYPE header and sample lines."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.lines = ["# HELP %s %s" % (name, _escape_help(help_text)), "# TYPE %s %s" % (name, kind)]

    def sample(self, value: float, labels: Sequence[Tuple[str, str]] = (), suffix: str = "") -> None:
        self.lines.append("%s%s%s %s" % (self.name, suffix, _labels(labels), format_value(value)))


class Histogram(object):
    """Cumulative buckets, a sum and a count of observations (one label set)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def emit(self, family: _Family, labels: Sequence[Tuple[str, str]]) -> None:
        for bound, count in zip(self.bounds, self.counts):
            family.sample(count, tuple(labels) + (("le", format_value(float(bound))),), "_bucket")
        family.sample(self.count, tuple(labels) + (("le", "+Inf"),), "_bucket")
        family.sample(self.total, labels, "_sum")
        family.sample(self.count, labels, "_count")


class _Waiting(object):
    """A device last reported waiting in unregister."""

    def __init__(self, seconds: float, usage_count: int, seen: float) -> None:
        self.seconds, self.usage_count, self.seen = seconds, usage_count, seen


class Metrics(object):
    """What `watch` has seen, as Prometheus metrics; safe to update and render from two threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._slab = collections.OrderedDict()        # type: Dict[str, int]
        self._mempool = {result: Histogram(MEMPOOL_WAIT_BUCKETS) for result in MEMPOOL_RESULTS}
        self._writeback = Histogram(WRITEBACK_BUCKETS)
        self._devices = collections.OrderedDict()     # type: Dict[str, _Waiting]  (oldest report first)
        self._bundles = 0
        self._lost = 0
        self._up = 1
        self._server = None                           # type: Optional[HTTPServer]
        self._textfile_dir = None                     # type: Optional[str]

    def slab_failure(self, cache: str) -> None:
        """One failed slab allocation from CACHE (its base name: ``kmalloc-1024``, not a per-memcg one)."""
        with self._lock:
            key = cache if cache in self._slab or len(self._slab) < MAX_CACHES else OTHER_CACHE
            self._slab[key] = self._slab.get(key, 0) + 1

    def mempool_wait(self, seconds: float, timed_out: bool) -> None:
        """One sleep in mempool_alloc of SECONDS, which ended by its timeout or by a wake-up."""
        with self._lock:
            self._mempool["timed_out" if timed_out else "woken"].observe(seconds)

    def slow_writeback(self, seconds: float) -> None:
        """One slow writeback call of SECONDS."""
        with self._lock:
            self._writeback.observe(seconds)

    def unregister_wait(self, device: str, seconds: float, usage_count: int) -> None:
        """DEVICE has waited SECONDS in unregister with USAGE_COUNT references (call on every report)."""
        with self._lock:
            self._devices.pop(device, None)
            self._devices[device] = _Waiting(seconds, usage_count, self._clock())
            while len(self._devices) > MAX_DEVICES_TRACKED:
                self._devices.popitem(last=False)

    def unregister_done(self, device: str) -> None:
        """DEVICE was freed: it waits no more."""
        with self._lock:
            self._devices.pop(device, None)

    def bundle_written(self) -> None:
        """One evidence bundle written."""
        with self._lock:
            self._bundles += 1

    def lost_events(self, count: int) -> None:
        """COUNT events the kernel dropped (perf or ring buffer full)."""
        with self._lock:
            self._lost += max(0, int(count))

    def exposition(self) -> str:
        """Every metric in the text format 0.0.4."""
        with self._lock:
            self._expire_devices()
            return "\n".join(line for family in self._families() for line in family.lines) + "\n"

    def _expire_devices(self) -> None:
        limit = self._clock() - DEVICE_STALE_SECONDS
        for device in [d for d, w in self._devices.items() if w.seen < limit]:
            del self._devices[device]

    def _families(self) -> Iterable[_Family]:
        up = _Family("bpftools_up", "gauge", "1 while bpftools watch runs; 0 in the file it leaves when it stops.")
        up.sample(self._up)
        info = _Family("bpftools_build_info", "gauge", "The bpftools version, as a label; always 1.")
        info.sample(1, (("version", __version__),))
        slab = _Family("bpftools_slab_failures_total", "counter",
                       "Failed slab allocations by cache (at most %d caches, then cache=\"%s\")."
                       % (MAX_CACHES, OTHER_CACHE))
        for cache, count in self._slab.items():
            slab.sample(count, (("cache", cache),))
        mempool = _Family("bpftools_mempool_wait_seconds", "histogram",
                          "Sleeps in mempool_alloc, by how they ended: timed_out (the 5 s timeout) or woken.")
        for result in MEMPOOL_RESULTS:
            self._mempool[result].emit(mempool, (("result", result),))
        writeback = _Family("bpftools_slow_writeback_seconds", "histogram",
                            "Slow writeback calls (their count is _count).")
        self._writeback.emit(writeback, ())
        shown = list(self._devices.items())[-MAX_DEVICE_SERIES:]
        waited = _Family("bpftools_netdev_unregister_wait_seconds", "gauge",
                         "How long a device has waited in unregister for its references, as last reported "
                         "(the %d devices reported last)." % MAX_DEVICE_SERIES)
        usage = _Family("bpftools_netdev_unregister_refcount", "gauge",
                        "The usage count ('Usage count = N') the kernel last reported for a device waiting "
                        "in unregister.")
        for device, waiting in shown:
            waited.sample(waiting.seconds, (("device", device),))
            usage.sample(waiting.usage_count, (("device", device),))
        devices = _Family("bpftools_netdev_unregister_waiting_devices", "gauge",
                          "Devices waiting in unregister now, shown or not (at most %d)." % MAX_DEVICES_TRACKED)
        devices.sample(len(self._devices))
        bundles = _Family("bpftools_bundles_written_total", "counter", "Evidence bundles written.")
        bundles.sample(self._bundles)
        lost = _Family("bpftools_lost_events_total", "counter", "Events the kernel dropped before bpftools read them.")
        lost.sample(self._lost)
        return (up, info, slab, mempool, writeback, waited, usage, devices, bundles, lost)

    def serve(self, addr: str = DEFAULT_ADDR) -> str:
        """Serve GET /metrics on ADDR (``HOST:PORT``, ``[IPV6]:PORT``; port 0 picks one) from a daemon
        thread; the address it listens on. BadAddress for a malformed ADDR, BadInput when it cannot bind."""
        host, port = parse_address(addr)
        try:
            server = _server_for(host, port, self)
        except OSError as err:
            raise BadInput("cannot serve metrics on %s: %s" % (addr, err.strerror or err))
        self._server = server
        thread = threading.Thread(target=server.serve_forever, name="bpftools-metrics", daemon=True)
        thread.start()
        bound_host, bound_port = server.server_address[:2]
        return ("[%s]:%d" if server.address_family == socket.AF_INET6 else "%s:%d") % (bound_host, bound_port)

    def write_textfile(self, directory: str) -> str:
        """Write every metric to DIRECTORY/bpftools.prom for node_exporter's textfile collector, atomically
        (a temp name, then a rename), mode 0644 for an unprivileged node_exporter; its path."""
        with self._lock:
            self._textfile_dir = directory
        with outfiles.Directory(directory, what="the metrics textfile") as target:
            return target.write_text(TEXTFILE_NAME, self.exposition(), mode=0o644)

    def close(self) -> None:
        """Stop serving; the textfile, if one was written, is left saying ``bpftools_up 0``."""
        with self._lock:
            self._up = 0
            server, self._server, directory = self._server, None, self._textfile_dir
        if server is not None:
            server.shutdown()
            server.server_close()
        if directory is not None:
            self.write_textfile(directory)


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics (and HEAD); anything else is 404."""

    metrics = None            # type: Metrics

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "bpftools serves /metrics only")
            return
        data = self.metrics.exposition().encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a scrape every 15 s is no news."""


class _ThreadingServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True


def _server_for(host: str, port: int, metrics: Metrics) -> HTTPServer:
    """An HTTP server bound to HOST:PORT (IPv6 when HOST is an IPv6 address) answering from METRICS."""
    handler = type("MetricsHandler", (_Handler,), {"metrics": metrics})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("MetricsServer", (_ThreadingServer,), {"address_family": family})
    return server_class((host, port), handler)


__all__ = ["BadAddress", "CONTENT_TYPE", "DEFAULT_ADDR", "Metrics", "parse_address", "TEXTFILE_NAME"]
