"""`bpftools watch`'s Prometheus metrics (bpftools/watch/metrics.py): the text format 0.0.4 parsed back by a
strict parser written here from the format's specification, a real HTTP GET of /metrics on loopback, and the
node_exporter textfile (atomic, complete, readable by an unprivileged collector)."""
import math
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from bpftools import __version__
from bpftools.errors import EXIT_USAGE, BadInput
from bpftools.watch import metrics as metrics_module
from bpftools.watch.metrics import (CONTENT_TYPE, MAX_CACHES, MAX_DEVICE_SERIES, OTHER_CACHE, BadAddress, Metrics,
                                    escape_label_value, parse_address)

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(r"^(%s)(?:\{((?:%s)(?:,%s)*)?\})? (\S+)$" % (_NAME, _LABEL, _LABEL))
_VALUE = re.compile(r"^(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+)|[+-]Inf|NaN)$")
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _unescape(value):
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse(text):
    """{family: {"type", "help", "samples": [(name, labels dict, float)]}}; AssertionError on anything the
    format 0.0.4 does not allow: a sample before its TYPE, a name that is not its family's, a label
    twice, a bad escape or value, a family split in two, a histogram without +Inf or with falling buckets."""
    assert text.endswith("\n"), "the exposition ends with a line feed"
    families, current = {}, None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.match("^%s$" % _NAME, name) and name not in families, line
            families[name] = {"help": _unescape(help_text), "type": None, "samples": []}
            current = name
            continue
        if line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name == current and families[name]["type"] is None and not families[name]["samples"], line
            assert kind in _SUFFIXES, line
            families[name]["type"] = kind
            continue
        assert not line.startswith("#") and line.strip() == line and line, repr(line)
        m = _SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        name, label_text, value = m.group(1), m.group(2) or "", m.group(m.lastindex)
        family = families[current]
        assert family["type"] is not None, line
        assert name in [current + s for s in _SUFFIXES[family["type"]]], "%s outside family %s" % (name, current)
        pairs = re.findall(_LABEL, label_text)
        labels = {k: _unescape(v) for k, v in pairs}
        assert len(labels) == len(pairs), "a label twice: %s" % line
        assert _VALUE.match(value), line
        family["samples"].append((name, labels, float(value)))
    for name, family in families.items():
        if family["type"] == "histogram":
            _check_histogram(name, family["samples"])
        if family["type"] == "counter":
            assert name.endswith("_total") and all(v >= 0 for _, _, v in family["samples"]), name
    return families


def _check_histogram(name, samples):
    series = {}
    for sample_name, labels, value in samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        series.setdefault(key, []).append((sample_name, labels.get("le"), value))
    for key, rows in series.items():
        buckets = [(float(le), v) for n, le, v in rows if n == name + "_bucket"]
        assert buckets and buckets[-1][0] == math.inf, "no +Inf bucket: %s %s" % (name, key)
        assert [b for b, _ in buckets] == sorted(b for b, _ in buckets), "buckets out of order"
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "buckets not cumulative"
        count = [v for n, _, v in rows if n == name + "_count"]
        assert count == [buckets[-1][1]], "_count is not the +Inf bucket"
        assert len([v for n, _, v in rows if n == name + "_sum"]) == 1


def value(families, family, name=None, **labels):
    """The one sample of FAMILY named NAME (default: the family) whose labels are exactly LABELS."""
    found = [v for n, ls, v in families[family]["samples"] if n == (name or family) and ls == labels]
    assert len(found) == 1, (family, name, labels, families[family]["samples"])
    return found[0]


def series(families, family, name=None):
    return [ls for n, ls, _ in families[family]["samples"] if n == (name or family)]


class Clock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_parser_refuses_what_the_format_refuses():
    good = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 2\n'
    assert value(parse(good), "a_total", x="1") == 2
    for bad in (good.replace('x="1"', 'x="1",x="2"'), good.replace("2\n", "two\n"), good[:-1],
                good.replace('"1"', '"\\t"'), good.replace("a_total{", "b_total{"),
                '# HELP h H.\n# TYPE h histogram\nh_bucket{le="1.0"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
                '# HELP h H.\n# TYPE h histogram\nh_bucket{le="1.0"} 1\nh_sum 1\nh_count 1\n'):
        with pytest.raises(AssertionError):
            parse(bad)


def test_a_fresh_exposition_says_up_and_version_and_zeros():
    families = parse(Metrics().exposition())
    assert value(families, "bpftools_up") == 1
    assert value(families, "bpftools_build_info", version=__version__) == 1
    assert families["bpftools_slab_failures_total"]["samples"] == []
    for result in ("timed_out", "woken"):
        assert value(families, "bpftools_mempool_wait_seconds", "bpftools_mempool_wait_seconds_count",
                     result=result) == 0
    assert value(families, "bpftools_bundles_written_total") == 0
    assert value(families, "bpftools_lost_events_total") == 0
    assert value(families, "bpftools_netdev_unregister_waiting_devices") == 0
    assert {name: f["type"] for name, f in families.items()} == {
        "bpftools_up": "gauge", "bpftools_build_info": "gauge", "bpftools_slab_failures_total": "counter",
        "bpftools_mempool_wait_seconds": "histogram", "bpftools_slow_writeback_seconds": "histogram",
        "bpftools_netdev_unregister_wait_seconds": "gauge", "bpftools_netdev_unregister_refcount": "gauge",
        "bpftools_netdev_unregister_waiting_devices": "gauge", "bpftools_bundles_written_total": "counter",
        "bpftools_lost_events_total": "counter"}


def test_every_event_lands_in_its_metric():
    m = Metrics()
    for cache in ("biovec-max", "kmalloc-1024", "biovec-max"):
        m.slab_failure(cache)
    m.mempool_wait(5.12, timed_out=True)
    m.mempool_wait(0.9, timed_out=False)
    m.mempool_wait(0.003, timed_out=False)
    m.slow_writeback(6.11)
    m.slow_writeback(0.3)
    m.unregister_wait("eth0", 20.0, 2)
    m.unregister_wait("eth0", 30.0, 2)      # the next report replaces the last
    m.bundle_written()
    m.lost_events(7)
    m.lost_events(3)
    f = parse(m.exposition())
    assert value(f, "bpftools_slab_failures_total", cache="biovec-max") == 2
    assert value(f, "bpftools_slab_failures_total", cache="kmalloc-1024") == 1
    hist = "bpftools_mempool_wait_seconds"
    assert value(f, hist, hist + "_bucket", result="timed_out", le="5.0") == 0
    assert value(f, hist, hist + "_bucket", result="timed_out", le="6.0") == 1
    assert value(f, hist, hist + "_bucket", result="woken", le="0.01") == 1
    assert value(f, hist, hist + "_bucket", result="woken", le="0.5") == 1
    assert value(f, hist, hist + "_bucket", result="woken", le="1.0") == 2
    assert value(f, hist, hist + "_bucket", result="woken", le="+Inf") == 2
    assert value(f, hist, hist + "_sum", result="woken") == pytest.approx(0.903)
    assert value(f, hist, hist + "_sum", result="timed_out") == pytest.approx(5.12)
    wb = "bpftools_slow_writeback_seconds"
    assert value(f, wb, wb + "_count") == 2
    assert value(f, wb, wb + "_bucket", le="5.0") == 1
    assert value(f, wb, wb + "_sum") == pytest.approx(6.41)
    assert value(f, "bpftools_netdev_unregister_wait_seconds", device="eth0") == 30.0
    assert value(f, "bpftools_netdev_unregister_refcount", device="eth0") == 2
    assert value(f, "bpftools_netdev_unregister_waiting_devices") == 1
    assert value(f, "bpftools_bundles_written_total") == 1
    assert value(f, "bpftools_lost_events_total") == 10


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed")
def test_prometheus_own_linter_accepts_the_exposition():
    """promtool check metrics: Prometheus' parser and its naming lint (units, _total, no _count on a gauge)."""
    m = Metrics()
    m.slab_failure("biovec-max")
    m.mempool_wait(5.1, timed_out=True)
    m.slow_writeback(2.0)
    m.unregister_wait("eth0", 30.0, 2)
    m.lost_events(1)
    proc = subprocess.run(["promtool", "check", "metrics"], input=m.exposition(), universal_newlines=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "")
    bad = subprocess.run(["promtool", "check", "metrics"], input="# TYPE x counter\nx 1\n", universal_newlines=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert bad.returncode != 0 and "_total" in bad.stdout                # the linter does lint


def test_label_values_are_escaped_and_read_back():
    m = Metrics()
    odd = 'a"b\\c\nd'
    m.slab_failure(odd)
    m.unregister_wait(odd, 1.5, 1)
    text = m.exposition()
    assert 'cache="a\\"b\\\\c\\nd"' in text
    assert escape_label_value(odd) == 'a\\"b\\\\c\\nd'
    f = parse(text)
    assert value(f, "bpftools_slab_failures_total", cache=odd) == 1
    assert value(f, "bpftools_netdev_unregister_refcount", device=odd) == 1


def test_caches_beyond_the_cap_are_counted_as_other():
    m = Metrics()
    for i in range(MAX_CACHES + 10):
        m.slab_failure("cache-%d" % i)
    m.slab_failure("cache-0")                # a cache already shown keeps its series
    f = parse(m.exposition())
    assert len(series(f, "bpftools_slab_failures_total")) == MAX_CACHES + 1
    assert value(f, "bpftools_slab_failures_total", cache="cache-0") == 2
    assert value(f, "bpftools_slab_failures_total", cache=OTHER_CACHE) == 10


def test_devices_shown_are_the_last_reported_and_the_rest_are_counted():
    clock = Clock()
    m = Metrics(clock=clock)
    for i in range(MAX_DEVICE_SERIES + 20):
        clock.now = 1000.0 + i * 0.125
        m.unregister_wait("veth%d" % i, 10.0 + i, 1)
    m.unregister_wait("veth0", 99.0, 3)      # reported again: among the last
    f = parse(m.exposition())
    shown = {ls["device"] for ls in series(f, "bpftools_netdev_unregister_wait_seconds")}
    assert len(shown) == MAX_DEVICE_SERIES
    assert shown == {"veth0"} | {"veth%d" % i for i in range(21, MAX_DEVICE_SERIES + 20)}
    assert value(f, "bpftools_netdev_unregister_wait_seconds", device="veth0") == 99.0
    assert value(f, "bpftools_netdev_unregister_refcount", device="veth0") == 3
    assert value(f, "bpftools_netdev_unregister_waiting_devices") == MAX_DEVICE_SERIES + 20
    m.unregister_done("veth0")
    clock.now = 1000.5 + metrics_module.DEVICE_STALE_SECONDS    # veth1..veth3, reported before 1000.5, are stale
    f = parse(m.exposition())
    assert "veth0" not in {ls["device"] for ls in series(f, "bpftools_netdev_unregister_wait_seconds")}
    assert value(f, "bpftools_netdev_unregister_waiting_devices") == MAX_DEVICE_SERIES + 20 - 1 - 3


def test_tracked_devices_are_bounded():
    m = Metrics()
    for i in range(metrics_module.MAX_DEVICES_TRACKED + 300):
        m.unregister_wait("d%d" % i, 1.0, 1)
    f = parse(m.exposition())
    assert value(f, "bpftools_netdev_unregister_waiting_devices") == metrics_module.MAX_DEVICES_TRACKED


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9862", ("127.0.0.1", 9862)), ("[::1]:0", ("::1", 0)), (":9100", ("", 9100)),
    ("localhost:65535", ("localhost", 65535)), ("[::]:80", ("::", 80))])
def test_addresses(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text,says", [
    ("9862", "expected HOST:PORT"), ("::1:9862", "in brackets"), ("[::g]:1", "not an IPv6 address"),
    ("127.0.0.1:65536", "above 65535"), ("127.0.0.1:", "expected HOST:PORT"), ("a b:1", "expected HOST:PORT"),
    ("127.0.0.1:9862\n", "expected HOST:PORT")])
def test_bad_addresses_are_usage_errors(text, says):
    with pytest.raises(BadAddress) as err:
        Metrics().serve(text)
    assert err.value.exit_code == EXIT_USAGE and says in str(err.value) and "\n" not in str(err.value)


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read().decode("utf-8")


@pytest.mark.parametrize("addr", ["127.0.0.1:0", "[::1]:0"])
def test_http_get_of_metrics_on_loopback(addr):
    if addr.startswith("[") and not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    m = Metrics()
    bound = m.serve(addr)
    try:
        assert re.match(r"^(127\.0\.0\.1|\[::1\]):\d+$", bound) and not bound.endswith(":0"), bound
        m.slab_failure("biovec-max")
        status, content_type, body = _get("http://%s/metrics" % bound)
        assert (status, content_type) == (200, CONTENT_TYPE)
        assert value(parse(body), "bpftools_slab_failures_total", cache="biovec-max") == 1
        m.slab_failure("biovec-max")                      # the next scrape sees the next count
        assert value(parse(_get("http://%s/metrics" % bound)[2]), "bpftools_slab_failures_total",
                     cache="biovec-max") == 2
        with pytest.raises(urllib.error.HTTPError) as err:
            _get("http://%s/" % bound)
        assert err.value.code == 404
    finally:
        m.close()
    with pytest.raises(OSError):                          # closed: nothing listens there any more
        _get("http://%s/metrics" % bound)


def test_a_taken_port_is_one_line_of_bad_input():
    first = Metrics()
    bound = first.serve("127.0.0.1:0")
    try:
        with pytest.raises(BadInput) as err:
            Metrics().serve(bound)
        assert str(err.value) == "cannot serve metrics on %s: Address already in use" % bound
    finally:
        first.close()


def test_scrapes_during_a_flood_of_updates_are_always_whole():
    """The event thread updates while the HTTP thread renders: every scrape parses and its counts agree."""
    m = Metrics()
    bound = m.serve("127.0.0.1:0")
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            m.mempool_wait(0.5, timed_out=False)
            m.slab_failure("biovec-max")

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        for _ in range(20):
            f = parse(_get("http://%s/metrics" % bound)[2])
            hist = "bpftools_mempool_wait_seconds"
            count = value(f, hist, hist + "_count", result="woken")
            assert value(f, hist, hist + "_sum", result="woken") == pytest.approx(count * 0.5)
    finally:
        stop.set()
        thread.join()
        m.close()
    assert count > 0


def test_textfile_is_complete_readable_and_replaced_atomically(tmp_path):
    m = Metrics()
    m.bundle_written()
    path = m.write_textfile(str(tmp_path))
    assert path == str(tmp_path / "bpftools.prom")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644              # node_exporter may run as nobody
    assert value(parse(open(path).read()), "bpftools_bundles_written_total") == 1
    inode = os.stat(path).st_ino
    m.bundle_written()
    m.write_textfile(str(tmp_path))
    assert os.stat(path).st_ino != inode                              # a new file renamed over the old
    assert os.listdir(str(tmp_path)) == ["bpftools.prom"]             # no temp file left behind
    assert value(parse(open(path).read()), "bpftools_bundles_written_total") == 2
    m.close()                                                         # the file it leaves says it stopped
    f = parse(open(path).read())
    assert value(f, "bpftools_up") == 0 and value(f, "bpftools_bundles_written_total") == 2


def test_textfile_readers_never_see_half_a_file(tmp_path):
    """A reader polling the file while it is rewritten 200 times only ever reads whole expositions."""
    m = Metrics()
    for i in range(300):
        m.slab_failure("cache-%d" % (i % 60))
    path = str(tmp_path / "bpftools.prom")
    m.write_textfile(str(tmp_path))
    stop, seen = threading.Event(), []

    def read():
        while not stop.is_set():
            with open(path) as f:
                seen.append(len(parse(f.read())))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            m.lost_events(1)
            m.write_textfile(str(tmp_path))
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) == {10}


def test_textfile_refuses_a_link_at_its_name(tmp_path):
    os.symlink("/etc/passwd", str(tmp_path / "bpftools.prom"))
    with pytest.raises(BadInput) as err:
        Metrics().write_textfile(str(tmp_path))
    assert "symbolic link" in str(err.value)
