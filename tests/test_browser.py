"""The flame graph SVG and the HTML report in a real headless Chromium, driven over the DevTools protocol.

Checks what a person would: the page loads without console errors or exceptions, search highlights
the right frames, a click zooms and "Reset Zoom" restores, hovering explains a frame, hostile strings
show as text and no ``alert`` ever opens, and the screenshot is not blank.

Needs Debian's ``chromium`` (/usr/bin/chromium); skipped without it unless BPFTOOLS_REQUIRE_BROWSER=1.
Standard library only: the DevTools protocol runs over a pipe (``--remote-debugging-pipe``: JSON
messages ended by NUL on fds 3 and 4), so no websocket client is needed. Set
BPFTOOLS_SCREENSHOT_DIR to keep the screenshots.
"""
import base64
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
import zlib

import pytest

from bpftools.analyses.folded import annotation, fixed, fold, format_weight
from bpftools.exports import write_exports, write_svg
from bpftools.flamegraph import HIGHLIGHT, layout
from bpftools.html_report import FlameGraph, IncidentReport, Table, render_html

CHROMIUM = os.environ.get("BPFTOOLS_CHROMIUM", "/usr/bin/chromium")
EVIL = "<script>alert(1)</script>"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe"]


class Chromium(object):
    """A headless Chromium and one page of it, spoken to over the DevTools pipe."""

    def __init__(self, profile_dir):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def child_fds():   # Chromium reads commands on fd 3 and writes replies and events on fd 4
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([CHROMIUM] + FLAGS + ["--user-data-dir=" + profile_dir, "about:blank"],
                                     preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next_id = 0
        self.events = []          # every event received, in order
        self.dialogs = []         # (type, message) of every JavaScript dialog that opened
        self.prompt_answers = []  # texts to type into the next prompt() dialogs
        self.session = None

    # -- protocol ---------------------------------------------------------------------------
    def _write(self, method, params, session):
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to_chrome, data):]
        return self._next_id

    def _read(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.time()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (exit %s)" % self.proc.poll())
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw.decode())
        if "method" in msg:
            self.events.append(msg)
            if msg["method"] == "Page.javascriptDialogOpening":
                p = msg["params"]
                self.dialogs.append((p["type"], p["message"]))
                answer = self.prompt_answers.pop(0) if p["type"] == "prompt" and self.prompt_answers else ""
                self._write("Page.handleJavaScriptDialog", {"accept": p["type"] == "prompt", "promptText": answer},
                            msg.get("sessionId"))
        return msg

    def call(self, method, params=None, browser=False, timeout=60):
        """Send a command (to the page unless browser=True) and return its result."""
        wanted = self._write(method, params, None if browser else self.session)
        deadline = time.time() + timeout
        while True:
            msg = self._read(deadline)
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})

    def wait_event(self, method, since, timeout=60):
        deadline = time.time() + timeout
        while True:
            for ev in self.events[since:]:
                if ev["method"] == method:
                    return ev
            since = len(self.events)
            self._read(deadline)

    # -- page -------------------------------------------------------------------------------
    def open_page(self, width=1280, height=900):
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 browser=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(domain + ".enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def navigate(self, path):
        mark = len(self.events)
        started = time.time()
        self.call("Page.navigate", {"url": "file://" + path})
        self.wait_event("Page.loadEventFired", mark, timeout=120)
        return time.time() - started

    def js(self, expression):
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise AssertionError("JS failed: %s" % json.dumps(res["exceptionDetails"])[:500])
        return res["result"].get("value")

    def mouse(self, kind, x, y):
        params = {"type": kind, "x": x, "y": y}
        if kind != "mouseMoved":
            params.update(button="left", clickCount=1)
        self.call("Input.dispatchMouseEvent", params)

    def click(self, x, y):
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def errors(self):
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for ev in self.events:
            p = ev["params"]
            if ev["method"] == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("text", "") + " " +
                           str(p["exceptionDetails"].get("exception", {}).get("description", "")))
            elif ev["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert", "warning"):
                out.append("console.%s: %s" % (p["type"], [a.get("value") for a in p["args"]]))
            elif ev["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append("log: %s" % p["entry"]["text"])
        return out

    def screenshot(self):
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self):
        try:
            self._write("Browser.close", None, None)
            self.proc.wait(timeout=15)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)


@pytest.fixture
def chromium():
    if not os.access(CHROMIUM, os.X_OK):
        reason = "no Chromium at %s (apt-get install chromium)" % CHROMIUM
        if os.environ.get("BPFTOOLS_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " but BPFTOOLS_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    profile = tempfile.mkdtemp(prefix="bpftools-chromium-")
    browser = Chromium(profile)
    try:
        browser.open_page()
        yield browser
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)


def png_colours(png):
    """(width, height, number of distinct RGB colours) of an 8-bit RGB/RGBA PNG, decoded here."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunk = png[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, (depth, colour_type, interlace)
    bpp = 3 if colour_type == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    prev = bytearray(stride)
    colours = set()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif kind == 3:
            for x in range(stride):
                line[x] = (line[x] + ((line[x - bpp] if x >= bpp else 0) + prev[x]) // 2) & 0xFF
        elif kind == 4:
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        for x in range(0, stride, bpp):
            colours.add(bytes(line[x:x + 3]))
        prev = line
    return width, height, len(colours)


def keep_screenshot(png, name, tmp_path):
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(png)
    target = os.environ.get("BPFTOOLS_SCREENSHOT_DIR")
    if target:
        os.makedirs(target, exist_ok=True)
        shutil.copy(path, os.path.join(target, name))


def writeback_stacks():
    head = [annotation("pid 1234 kworker/u8:2"), "ret_from_fork", "kthread", "worker_thread", "wb_workfn",
            "__writepage", "bio_alloc_bioset", "bvec_alloc"]
    return fold([(head + ["mempool_alloc", annotation("mempool wait 5.00s")], 5 * 10 ** 9),
                 (head + ["kmem_cache_alloc", annotation("slab fail biovec-64")], 2 * 10 ** 9),
                 (["runc", "main", "-", "entry_SYSCALL_64", "sys_write", "memcg_update_kmem_limit"], 1 * 10 ** 9),
                 ([EVIL, "\"q'uote", "x]]>y", "</script>", "bad\udcff\ud800\ufffd"], 3 * 10 ** 8)])


# JS helpers evaluated in the page: geometry of the frames of one flame graph.
FRAMES_JS = """(function (root) {
  return Array.prototype.map.call(root.querySelectorAll('g.f'), function (g) {
    var r = g.querySelector('rect'), b = r.getBoundingClientRect();
    return {name: g.querySelector('title').textContent.split('\\n')[0], x: r.getAttribute('x'),
            w: r.getAttribute('width'), fill: r.getAttribute('fill'), shown: g.style.display !== 'none',
            parent: g.classList.contains('parent'), cx: b.left + b.width / 2, cy: b.top + b.height / 2,
            label: g.querySelector('text').textContent};
  });
})(%s)"""


def frames_by_name(browser, root_js):
    return dict((f["name"], f) for f in browser.js(FRAMES_JS % root_js))


def centre_of(browser, selector):
    return browser.js("(function () { var b = document.querySelector(%s).getBoundingClientRect();"
                      " return [b.left + b.width / 2, b.top + b.height / 2]; })()" % json.dumps(selector))


def test_svg_search_zoom_hover_and_hostile_text(chromium, tmp_path):
    folded = writeback_stacks()
    path = str(tmp_path / "writeback.svg")
    write_svg(path, folded, "Slow writebacks " + EVIL, unit="ns")
    chromium.navigate(path)
    assert chromium.errors() == []
    lay = layout(folded)
    total = lay.total
    frames = frames_by_name(chromium, "document")
    assert chromium.js("document.querySelectorAll('g.f').length") == len(lay.frames) == 24
    original = dict((n, (f["x"], f["w"])) for n, f in frames.items())

    # hostile strings are text: titles, frame names; our script is the only one
    assert chromium.js("document.querySelector('.title').textContent") == "Slow writebacks " + EVIL
    assert {EVIL, "</script>", "x]]>y", "\"q'uote", "bad\\xff\ufffd\ufffd"} <= set(frames)
    assert chromium.js("document.querySelectorAll('script').length") == 1

    # hover explains a frame in the details bar
    f = frames["mempool_alloc"]
    chromium.mouse("mouseMoved", f["cx"], f["cy"])
    share = fixed(100.0 * 5 * 10 ** 9 / total, 2)
    assert chromium.js("document.querySelector('.details').textContent") == \
        "mempool_alloc \u2014 %s (%s%%)" % (format_weight(5 * 10 ** 9, "ns"), share) == \
        "mempool_alloc \u2014 5.00 s (60.24%)"

    # search through the real button and prompt(): substring
    chromium.prompt_answers.append("mempool")
    chromium.click(*centre_of(chromium, ".search"))
    assert chromium.dialogs == [("prompt", "Search frames: text, or /regex/flags")]
    highlighted = chromium.js("Array.prototype.filter.call(document.querySelectorAll('g.f rect'),"
                              " function (r) { return r.getAttribute('fill') === %s; }).length" % json.dumps(HIGHLIGHT))
    assert highlighted == 2            # mempool_alloc and [mempool wait 5.00s]
    assert chromium.js("document.querySelector('.matched').textContent") == "Matched: 60.24% (2 frames)"
    assert chromium.js("document.querySelector('.search').textContent") == "Reset Search"
    chromium.click(*centre_of(chromium, ".search"))          # resets
    assert chromium.js("document.querySelectorAll('g.f.match').length") == 0
    assert chromium.js("document.querySelector('.matched').textContent") == " "

    # a regex, and the hostile frame found by its text
    chromium.prompt_answers.append("/^(bvec|kmem)_|alloc_bioset$/")
    chromium.click(*centre_of(chromium, ".search"))
    assert sorted(chromium.js("Array.prototype.map.call(document.querySelectorAll('g.f.match'),"
                              " function (g) { return g.querySelector('title').textContent.split('\\n')[0]; })")) == [
        "bio_alloc_bioset", "bvec_alloc", "kmem_cache_alloc"]
    assert chromium.js("document.querySelector('svg').bpfFlame.search('<script>').frames") == 1

    # click zooms: bvec_alloc fills the width, its children scale, other branches hide
    chromium.click(frames["bvec_alloc"]["cx"], frames["bvec_alloc"]["cy"])
    zoomed = frames_by_name(chromium, "document")
    assert (zoomed["bvec_alloc"]["x"], zoomed["bvec_alloc"]["w"]) == ("10.00", "1180.00")
    # children in name order: kmem_cache_alloc (2 of 7 s), then mempool_alloc (5 of 7 s)
    assert (zoomed["kmem_cache_alloc"]["x"], zoomed["kmem_cache_alloc"]["w"]) == ("10.00", "337.14")
    assert (zoomed["mempool_alloc"]["x"], zoomed["mempool_alloc"]["w"]) == ("347.14", "842.86")
    assert zoomed["kthread"]["parent"] and zoomed["kthread"]["w"] == "1180.00"
    assert not zoomed[EVIL]["shown"] and not zoomed["runc"]["shown"]
    assert zoomed["mempool_alloc"]["label"] == "mempool_alloc"
    assert chromium.js("document.querySelector('.unzoom').getAttribute('visibility')") == "visible"

    # reset zoom restores every frame
    chromium.click(*centre_of(chromium, ".unzoom"))
    restored = frames_by_name(chromium, "document")
    assert dict((n, (f["x"], f["w"])) for n, f in restored.items()) == original
    assert all(f["shown"] and not f["parent"] for f in restored.values())

    png = chromium.screenshot()
    keep_screenshot(png, "flamegraph.png", tmp_path)
    width, height, colours = png_colours(png)
    assert (width, height) == (1280, 900) and colours > 30
    assert [d for d in chromium.dialogs if d[0] != "prompt"] == []      # no alert, ever
    assert chromium.errors() == []


def hostile_report():
    return IncidentReport(
        title="Incident " + EVIL, command=["bpftools", "report", EVIL], generated="2024-05-01T10:00:00Z",
        kernel_release="3.10.0-957.el7.x86_64",
        verdicts=[{"incident": "kmem_io_jitter", "title": "I/O jitter from kmem accounting", "status": "detected",
                   "summary": "writebacks waited 5 s in mempool_alloc " + EVIL,
                   "evidence": ["cache biovec-64(1234:pod" + EVIL + ")"], "remediation": ["cgroup.memory=nokmem"]},
                  {"incident": "netdev_refcount_leak", "title": "netdev refcount leak", "status": "clear",
                   "summary": "no sign", "evidence": [], "remediation": []}],
        tables=[Table("kmem writers", ["pid", "comm", "path"], [[4242, "runc" + EVIL, "</script>\udcff"]])],
        timeline=[(10 ** 9, "writepage start", "writeback"), (12 * 10 ** 8, "slab fail " + EVIL, "slab"),
                  (62 * 10 ** 8, "mempool wait 5.00s", "mempool")],
        flame_graphs=[FlameGraph("Slow writebacks", writeback_stacks(), unit="ns"),
                      FlameGraph("Writers " + EVIL, fold([(["runc", "write"], 3), (["dockerd", "write"], 1)]))],
        capabilities={"kernel_release": "3.10.0-957.el7.x86_64", "distro": "CentOS Linux 7 (Core)",
                      "checks": [{"name": "kprobes", "ok": True, "detail": "kprobe_events present"}],
                      "tracepoints": {"sched:sched_switch": True}, "symbols": [], "cgroup_layout": "v1"})


def test_html_report_graphs_work_inline_and_strings_stay_text(chromium, tmp_path):
    paths = write_exports(str(tmp_path / "report"), hostile_report())
    chromium.navigate(paths[0])
    assert chromium.errors() == []
    assert chromium.js("document.title") == "Incident " + EVIL
    assert chromium.js("document.querySelectorAll('script').length") == 4
    assert chromium.js("document.querySelector('.verdict.detected .summary').textContent") == \
        "writebacks waited 5 s in mempool_alloc " + EVIL
    assert chromium.js("Array.prototype.map.call(document.querySelectorAll('#table-1 td'),"
                       " function (td) { return td.textContent; })") == ["4242", "runc" + EVIL, "</script>\\xff"]
    data = chromium.js("JSON.parse(document.getElementById('bpftools-report-data').textContent)")
    assert data["title"] == "Incident " + EVIL and data["tables"][0]["rows"][0][2] == "</script>\\xff"
    assert chromium.js("document.querySelectorAll('svg.bpffg').length") == 2
    assert chromium.js("Array.prototype.every.call(document.querySelectorAll('svg.bpffg'),"
                       " function (s) { return !!s.bpfFlame; })") is True

    # the search box of the first graph: type, press Enter
    chromium.js("document.querySelector('#fg-1 input').scrollIntoView({block: 'center'})")
    before_1 = frames_by_name(chromium, "document.querySelector('#fg-1')")
    chromium.click(*centre_of(chromium, "#fg-1 input"))
    chromium.call("Input.insertText", {"text": "mempool"})
    for kind in ("keyDown", "keyUp"):
        chromium.call("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                 "windowsVirtualKeyCode": 13, "text": "\r"})
    assert chromium.js("document.querySelectorAll('#fg-1 g.f.match').length") == 2
    assert chromium.js("document.querySelectorAll('#fg-2 g.f.match').length") == 0
    assert chromium.js("document.querySelector('#fg-1 .fg-result').textContent") == "2 frame(s), 60.24% of the total"

    # click zoom inside the first graph; the second is untouched
    before_2 = frames_by_name(chromium, "document.querySelector('#fg-2')")
    f = frames_by_name(chromium, "document.querySelector('#fg-1')")["bvec_alloc"]
    chromium.click(f["cx"], f["cy"])
    zoomed = frames_by_name(chromium, "document.querySelector('#fg-1')")
    assert zoomed["bvec_alloc"]["w"] == "1180.00" and zoomed["mempool_alloc"]["w"] == "842.86"
    assert not zoomed["runc"]["shown"]
    assert frames_by_name(chromium, "document.querySelector('#fg-2')") == before_2

    # hover in the second graph uses its own unit
    g2 = frames_by_name(chromium, "document.querySelector('#fg-2')")["runc"]
    chromium.mouse("mouseMoved", g2["cx"], g2["cy"])
    assert chromium.js("document.querySelector('#fg-2 .details').textContent") == "runc \u2014 3 samples (75.00%)"
    assert chromium.js("document.querySelector('#fg-1 .details').textContent") == " "

    # the Reset button undoes search and zoom
    chromium.click(*centre_of(chromium, "#fg-1 .fg-reset"))
    assert chromium.js("document.querySelectorAll('#fg-1 g.f.match').length") == 0
    assert frames_by_name(chromium, "document.querySelector('#fg-1')") == before_1

    chromium.js("window.scrollTo(0, 0)")
    png = chromium.screenshot()
    keep_screenshot(png, "report.png", tmp_path)
    assert png_colours(png)[2] > 30
    assert chromium.dialogs == []
    assert chromium.errors() == []


def test_largest_svg_opens_and_searches(chromium, tmp_path):
    """The worst case the renderer allows (MAX_FRAMES frames) still loads and answers a search."""
    folded = dict((";".join(["c%d" % i] + ["f%d_%d" % (i, d) for d in range(30)]), 1000 if i < 10000 else 1)
                  for i in range(100000))
    path = str(tmp_path / "big.svg")
    write_svg(path, folded, "100k stacks", unit="ns")
    seconds = chromium.navigate(path)
    assert chromium.errors() == []
    assert chromium.js("document.querySelector('svg').bpfFlame.frames()") == 50000
    assert seconds < 60, "loading took %.1f s" % seconds
    assert chromium.js("document.querySelector('svg').bpfFlame.search('/^f7_[0-2]$/').frames") == 3


def test_content_security_policy_stops_scripts_that_escaping_would_have_let_through(chromium, tmp_path):
    """Defence in depth: markup injected past the escaping (simulated here) runs no script."""
    html = render_html(IncidentReport("t", ["bpftools"], "g", "k", flame_graphs=[FlameGraph("g", {"a;b": 1})]))
    html = html.replace("<main>", "<main><script>window.pwned = 1</script>"
                        "<img src=x onerror=\"window.pwned = 2\"><svg><script>window.pwned = 3</script></svg>", 1)
    path = str(tmp_path / "tampered.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(html)
    chromium.navigate(path)
    assert chromium.js("typeof window.pwned") == "undefined"
    assert chromium.js("!!document.querySelector('svg.bpffg').bpfFlame") is True      # ours still run
    errors = chromium.errors()
    assert len(errors) == 4 and all("Content Security Policy" in e for e in errors), errors
    assert sum("Executing inline script" in e for e in errors) == 2        # the HTML and the SVG script
    assert sum("Executing inline event handler" in e for e in errors) == 1
    assert sum("Loading the image" in e for e in errors) == 1
    assert chromium.dialogs == []
