"""SVG flame graphs from folded stacks: one self-contained, offline file that zooms, searches and explains.

Drawn the way Brendan Gregg's flamegraph.pl draws them (root at the bottom, one row per stack depth,
width proportional to weight, frames narrower than MIN_WIDTH_PX left out and counted), with the
embedded script written here. The same SVG text works opened on its own, inlined in an HTML page
(several per page: the script finds its own ``<svg>`` and uses classes, never ids) and in an iframe.

Interaction: click a frame to zoom to it (its ancestors stay, greyed), click "Reset Zoom" or the
root to go back; "Search" (or Ctrl-F when the SVG is the page) takes a substring or ``/regex/flags``,
highlights matching frames and shows the matched share of the total; hover shows the frame, its
weight and share in the details bar. Each frame's ``<title>`` is the tooltip: name, then weight and
share. Scripts can drive it through ``svgElement.bpfFlame`` (search, resetSearch, zoomTo, unzoom).

Colours by frame kind (:func:`bpftools.analyses.folded.frame_kinds`): kernel warm, user aqua,
our ``[annotations]`` green, ``-`` separators grey; search matches magenta.
"""
import bisect
import zlib
from html import escape
from typing import Any, Dict, List, Optional

from dataclasses import dataclass

from .analyses.folded import (ANNOTATION, KERNEL, SEPARATOR, USER, clean_text, fixed, format_weight,
                              frame_kinds, sanitize_stack, uses_kernel_suffix)

ROOT = "root"             # the kind of the "all" frame
ROOT_NAME = "all"
MIN_WIDTH_PX = 0.1        # narrower frames are not drawn (flamegraph.pl's --minwidth)
MAX_FRAMES = 50000        # beyond this the minimum width grows: the SVG must stay openable (~10 MB)
XPAD = 10                 # left and right margin, px
FRAME_HEIGHT = 16
FONT_SIZE = 12
FONT_WIDTH = 0.59         # average glyph width / font size, for fitting labels
TOP = 60                  # title, subtitle and buttons
BOTTOM = 34               # details bar and search result
HIGHLIGHT = "rgb(230,0,230)"
KIND_CLASS = {KERNEL: "k", USER: "u", ANNOTATION: "a", SEPARATOR: "s", ROOT: "r"}


@dataclass
class Frame:
    """One drawn frame: ``start`` and ``value`` are in weight units, depth 0 is the root."""

    name: str
    depth: int
    start: int
    value: int
    kind: str


@dataclass
class Layout:
    """The frames to draw (root first, then in the order they close), and what was left out."""

    frames: List[Frame]
    total: int
    stacks: int
    pruned: int               # frames left out where the graph was cut (each with all it holds)
    width: int
    capped: bool = False      # more frames than max_frames were wide enough; the narrowest went

    @property
    def max_depth(self) -> int:
        return max(f.depth for f in self.frames)

    def x(self, frame: Frame) -> float:
        return XPAD + frame.start * self.scale

    def w(self, frame: Frame) -> float:
        return frame.value * self.scale

    @property
    def scale(self) -> float:
        """Pixels per weight unit."""
        return (self.width - 2 * XPAD) / self.total if self.total else 0.0


_SEP = "\x01"     # frames joined for sorting: below every character a sanitised frame holds, so the
_PAST = "\x02"    # order of the keys is that of their frame lists, and PREFIX + _PAST follows PREFIX's subtree


def layout(folded: Dict[str, int], width: int = 1200, max_frames: int = MAX_FRAMES) -> Layout:
    """Merge the stacks into frames and place them, leaving out frames narrower than MIN_WIDTH_PX.

    The stacks are sorted frame by frame, so equal prefixes are contiguous and merge (the flow of
    flamegraph.pl); with the running sums of their weights, a frame's width is one subtraction and
    its extent one bisection, so a frame too narrow to draw is cut with all it holds before anything
    under it is looked at: the work after the sort is linear in the frames drawn. ``pruned`` counts
    the frames left out where they were cut. When more than ``max_frames`` frames would remain, the
    narrowest go too (a child is never wider than its parent, so no frame loses its parent) and
    ``capped`` is set.
    """
    kernel_suffix = uses_kernel_suffix(folded)
    stacks = sorted((sanitize_stack(key).replace(";", _SEP), value) for key, value in folded.items() if value > 0)
    keys = [key for key, _ in stacks]
    sums = [0]
    for _, value in stacks:
        sums.append(sums[-1] + value)
    total = sums[-1]
    out = Layout(frames=[Frame(ROOT_NAME, 0, 0, total, ROOT)], total=total, stacks=len(stacks),
                 pruned=0, width=width)
    if not total:
        return out
    min_value = MIN_WIDTH_PX / out.scale
    closed = []  # type: List[Frame]
    kinds = {}  # type: Dict[int, List[str]]     # of the first stack through each frame drawn
    todo = [[0, 0, len(keys), None]]  # type: List[List[Any]]   # [depth, next stack, end, frame] per open frame
    while todo:
        node = todo[-1]
        depth, pos, end = node[0], node[1], node[2]
        while pos < end and keys[pos].count(_SEP) < depth:     # stacks that end at this frame
            pos += 1
        if pos >= end:
            todo.pop()
            if node[3] is not None:
                closed.append(node[3])
            continue
        frames = keys[pos].split(_SEP, depth + 1)
        child_end = bisect.bisect_left(keys, _SEP.join(frames[:depth + 1]) + _PAST, pos, end)
        node[1] = child_end
        value = sums[child_end] - sums[pos]
        if value < min_value:
            out.pruned += 1
            continue
        if pos not in kinds:
            kinds[pos] = frame_kinds(keys[pos].split(_SEP), kernel_suffix)
        todo.append([depth + 1, pos, child_end, Frame(frames[depth], depth + 1, sums[pos], value, kinds[pos][depth])])
    if len(closed) + 1 > max_frames:
        # Keep the widest; among equal widths the shallower first, so a kept frame's parent is kept.
        order = sorted(range(len(closed)), key=lambda i: (-closed[i].value, closed[i].depth))
        keep = set(order[:max(max_frames - 1, 0)])
        out.pruned += len(closed) - len(keep)
        out.capped = True
        closed = [f for i, f in enumerate(closed) if i in keep]
    out.frames.extend(closed)
    return out


def frame_colour(name: str, kind: str) -> str:
    """A stable colour for a frame: its kind picks the palette, its name the shade."""
    h = zlib.crc32(name.encode("utf-8", "surrogatepass"))
    v1, v2, v3 = (h & 0xFF) / 255.0, ((h >> 8) & 0xFF) / 255.0, ((h >> 16) & 0xFF) / 255.0
    if kind == KERNEL:        # warm: flamegraph.pl's "hot"
        rgb = (205 + 50 * v3, 230 * v1, 55 * v2)
    elif kind == USER:        # aqua / blue
        rgb = (50 + 60 * v1, 165 + 55 * v2, 165 + 55 * v2)
    elif kind == ANNOTATION:  # green: ours, not code
        rgb = (80 + 50 * v1, 180 + 40 * v2, 80 + 40 * v3)
    elif kind == SEPARATOR:
        rgb = (160, 160, 160)
    else:
        rgb = (200, 200, 205)
    return "rgb(%d,%d,%d)" % rgb


def fit_label(name: str, width_px: float) -> str:
    """The part of a frame's name that fits its width ('..' marks a cut), '' when under 3 chars fit."""
    chars = int(width_px / (FONT_SIZE * FONT_WIDTH))
    if chars < 3:
        return ""
    return name if len(name) <= chars else name[:chars - 2] + ".."


def _t(text: str) -> str:
    """XML/HTML-safe text or attribute value."""
    return escape(clean_text(text), quote=True)


def render_svg(folded: Dict[str, int], title: str, unit: str = "samples",
               count_name: Optional[str] = None, width: int = 1200) -> str:
    """The flame graph of ``folded`` as a standalone SVG document (see the module docstring).

    ``unit`` formats weights (``ns``/``us``/``ms``/``s`` and ``bytes`` are scaled for people);
    ``count_name`` labels plain counts (default: the unit).
    """
    lay = layout(folded, width)
    count_name = count_name or unit
    height = TOP + (lay.max_depth + 1) * FRAME_HEIGHT + BOTTOM
    total_text = format_weight(lay.total, unit, count_name)
    subtitle = "%s in %s stack%s" % (total_text, "{:,}".format(lay.stacks), "" if lay.stacks == 1 else "s")
    if lay.pruned:
        subtitle += "; %s frame%s not drawn (narrower than %s px%s; see the .folded export)" % (
            "{:,}".format(lay.pruned), "" if lay.pruned == 1 else "s", MIN_WIDTH_PX,
            ", or past the {:,}-frame limit".format(MAX_FRAMES) if lay.capped else "")
    parts = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n',
        '<svg xmlns="http://www.w3.org/2000/svg" version="1.1" class="bpffg" width="%d" height="%d" '
        'viewBox="0 0 %d %d" data-total="%d" data-unit="%s" data-count-name="%s" data-pruned="%d" '
        'data-xpad="%d" data-font="%d">\n' % (width, height, width, height, lay.total, _t(unit),
                                             _t(count_name), lay.pruned, XPAD, FONT_SIZE),
        "<style>%s</style>\n" % _CSS,
        '<rect class="bg" x="0" y="0" width="%d" height="%d" fill="#f6f6f2"/>\n' % (width, height),
        '<text class="title" x="%.1f" y="24" text-anchor="middle">%s</text>\n' % (width / 2.0, _t(title)),
        '<text class="subtitle" x="%.1f" y="44" text-anchor="middle">%s</text>\n' % (width / 2.0, _t(subtitle)),
        '<text class="unzoom button" x="%d" y="24" visibility="hidden">Reset Zoom</text>\n' % XPAD,
        '<text class="search button" x="%d" y="24" text-anchor="end">Search</text>\n' % (width - XPAD),
        '<text class="details" x="%d" y="%d"> </text>\n' % (XPAD, height - 12),
        '<text class="matched" x="%d" y="%d" text-anchor="end"> </text>\n' % (width - XPAD, height - 12),
        '<g class="frames">\n',
    ]
    base = height - BOTTOM
    for frame in lay.frames:
        x, w = lay.x(frame), lay.w(frame)
        y = base - (frame.depth + 1) * FRAME_HEIGHT
        share = fixed(100.0 * frame.value / lay.total, 2) if lay.total else "0.00"
        parts.append(
            '<g class="f %s" data-s="%d" data-v="%d" data-d="%d"><title>%s\n%s, %s%%</title>'
            '<rect x="%.2f" y="%d" width="%.2f" height="%d" rx="2" ry="2" fill="%s"/>'
            '<text x="%.2f" y="%d">%s</text></g>\n' % (
                KIND_CLASS[frame.kind], frame.start, frame.value, frame.depth, _t(frame.name),
                _t(format_weight(frame.value, unit, count_name)), share,
                x, y, w, FRAME_HEIGHT - 1, frame_colour(frame.name, frame.kind),
                x + 3, y + 11, _t(fit_label(frame.name, w))))
    parts.append("</g>\n")
    parts.append('<script type="text/ecmascript"><![CDATA[%s]]></script>\n' % SCRIPT)
    parts.append("</svg>\n")
    return "".join(parts)


_CSS = (
    ".bpffg text{font-family:Verdana,Helvetica,Arial,sans-serif;font-size:12px;fill:#000}"
    ".bpffg .title{font-size:17px}"
    ".bpffg .subtitle{fill:#555}"
    ".bpffg .button{fill:#335;cursor:pointer;text-decoration:underline}"
    ".bpffg .button:hover{fill:#c00}"
    ".bpffg .f{cursor:pointer}"
    ".bpffg .f text{pointer-events:none}"
    ".bpffg .f:hover rect{stroke:#000;stroke-width:0.5}"
    ".bpffg .f.a text{font-style:italic}"
    ".bpffg .f.parent{opacity:0.5}"
)

# Plain ES5 so that old browsers on jump hosts run it; no user data is ever placed in here.
SCRIPT = r"""
(function () {
  "use strict";
  var svg = document.currentScript;
  while (svg && svg.localName !== "svg") { svg = svg.parentNode; }
  if (!svg) { return; }
  var HIGHLIGHT = "rgb(230,0,230)";
  var NS = { ns: 1, us: 1e3, ms: 1e6, s: 1e9 };
  var q = function (sel) { return svg.querySelector(sel); };
  var framesG = q(".frames"), details = q(".details"), matchedT = q(".matched");
  var unzoomB = q(".unzoom"), searchB = q(".search");
  var total = +svg.getAttribute("data-total"), unit = svg.getAttribute("data-unit");
  var countName = svg.getAttribute("data-count-name");
  var xpad = +svg.getAttribute("data-xpad"), fontW = +svg.getAttribute("data-font") * 0.59;
  var width = +svg.getAttribute("width"), full = width - 2 * xpad;
  var frames = [], zoomed = null, searching = null, lastTerm = "";

  function group(n) { return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  function fmt(v) {
    var ns, b, i, scales;
    if (NS.hasOwnProperty(unit)) {
      ns = v * NS[unit];
      scales = [[1e9, " s"], [1e6, " ms"], [1e3, " \u00b5s"]];
      for (i = 0; i < scales.length; i++) {
        if (Math.abs(ns) >= scales[i][0]) { return (ns / scales[i][0]).toFixed(2) + scales[i][1]; }
      }
      return ns + " ns";
    }
    if (unit === "bytes") {
      b = [[4, " TiB"], [3, " GiB"], [2, " MiB"], [1, " KiB"]];
      for (i = 0; i < b.length; i++) {
        if (Math.abs(v) >= Math.pow(1024, b[i][0])) { return (v / Math.pow(1024, b[i][0])).toFixed(2) + b[i][1]; }
      }
      return v + " B";
    }
    return group(v) + " " + countName;
  }
  function pct(v) { return total ? (100 * v / total).toFixed(2) : "0.00"; }
  function label(name, w) {
    var chars = Math.floor(w / fontW);
    if (chars < 3) { return ""; }
    return name.length <= chars ? name : name.substring(0, chars - 2) + "..";
  }

  Array.prototype.forEach.call(framesG.querySelectorAll("g.f"), function (g, i) {
    var title = g.querySelector("title"), rect = g.querySelector("rect");
    frames.push({ g: g, rect: rect, text: g.querySelector("text"),
      name: title.textContent.split("\n")[0], fill: rect.getAttribute("fill"),
      s: +g.getAttribute("data-s"), v: +g.getAttribute("data-v"), d: +g.getAttribute("data-d") });
    g.setAttribute("data-i", i);
  });

  function place(f, x, w) {
    f.rect.setAttribute("x", x.toFixed(2));
    f.rect.setAttribute("width", w.toFixed(2));
    f.text.setAttribute("x", (x + 3).toFixed(2));
    f.text.textContent = label(f.name, w);
  }
  function show(f, on) { f.g.style.display = on ? "" : "none"; }

  function unzoom() {
    var scale = total ? full / total : 0;
    frames.forEach(function (f) {
      show(f, true);
      f.g.classList.remove("parent");
      place(f, xpad + f.s * scale, f.v * scale);
    });
    zoomed = null;
    unzoomB.setAttribute("visibility", "hidden");
  }
  function zoom(z) {
    if (z.d === 0) { unzoom(); return; }
    var scale = full / z.v, end = z.s + z.v;
    frames.forEach(function (f) {
      var inside = f.s >= z.s && f.s + f.v <= end;
      if (f.d < z.d && f.s <= z.s && f.s + f.v >= end) {
        show(f, true);
        f.g.classList.add("parent");
        place(f, xpad, full);
      } else if (f.d >= z.d && inside) {
        show(f, true);
        f.g.classList.remove("parent");
        place(f, xpad + (f.s - z.s) * scale, f.v * scale);
      } else {
        show(f, false);
      }
    });
    zoomed = z;
    unzoomB.setAttribute("visibility", "visible");
  }

  function matcher(term) {
    var m = /^\/(.*)\/([a-z]*)$/.exec(term), re;
    if (m) {
      try {
        re = new RegExp(m[1], m[2].replace(/[gy]/g, ""));
        return function (s) { return re.test(s); };
      } catch (e) { /* not a valid regex: search for the text itself */ }
    }
    return function (s) { return s.indexOf(term) !== -1; };
  }
  function resetSearch() {
    frames.forEach(function (f) { f.rect.setAttribute("fill", f.fill); f.g.classList.remove("match"); });
    matchedT.textContent = " ";
    searchB.textContent = "Search";
    searching = null;
  }
  function search(term) {
    var test = matcher(term), hits = [], sum = 0, end = -1;
    resetSearch();
    if (!term) { return { frames: 0, value: 0, percent: "0.00" }; }
    frames.forEach(function (f) {
      if (f.d > 0 && test(f.name)) {
        f.rect.setAttribute("fill", HIGHLIGHT);
        f.g.classList.add("match");
        hits.push(f);
      }
    });
    // Share of the total: count a match once, not again for matches nested inside it.
    hits.slice().sort(function (a, b) { return a.s - b.s || b.v - a.v; }).forEach(function (f) {
      if (f.s >= end) { sum += f.v; end = f.s + f.v; }
    });
    searching = term;
    lastTerm = term;
    searchB.textContent = "Reset Search";
    matchedT.textContent = "Matched: " + pct(sum) + "% (" + group(hits.length) + " frame" +
      (hits.length === 1 ? "" : "s") + ")";
    return { frames: hits.length, value: sum, percent: pct(sum) };
  }
  function promptSearch() {
    var term = window.prompt("Search frames: text, or /regex/flags", lastTerm);
    if (term) { search(term); }
  }

  function frameOf(node) {
    while (node && node !== framesG) {
      if (node.classList && node.classList.contains("f")) { return frames[+node.getAttribute("data-i")]; }
      node = node.parentNode;
    }
    return null;
  }
  framesG.addEventListener("click", function (e) { var f = frameOf(e.target); if (f) { zoom(f); } });
  framesG.addEventListener("mouseover", function (e) {
    var f = frameOf(e.target);
    if (f) { details.textContent = f.name + " \u2014 " + fmt(f.v) + " (" + pct(f.v) + "%)"; }
  });
  framesG.addEventListener("mouseout", function () { details.textContent = " "; });
  unzoomB.addEventListener("click", unzoom);
  searchB.addEventListener("click", function () { if (searching !== null) { resetSearch(); } else { promptSearch(); } });
  if (document.documentElement === svg) {
    window.addEventListener("keydown", function (e) {
      if ((e.ctrlKey || e.metaKey) && (e.key === "f" || e.key === "F")) { e.preventDefault(); promptSearch(); }
      else if (e.key === "Escape") { resetSearch(); unzoom(); }
    });
  }
  svg.bpfFlame = {
    search: search, resetSearch: resetSearch, unzoom: unzoom, format: fmt,
    zoomTo: function (i) { zoom(frames[i]); },
    frames: function () { return frames.length; },
    zoomed: function () { return zoomed ? frames.indexOf(zoomed) : -1; }
  };
})();
"""
