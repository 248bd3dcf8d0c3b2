"""SVG flame graphs: exact geometry, colours by kind, pruning, escaping of hostile frames, speed."""
import os
import random
import re
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from bpftools.analyses.folded import ANNOTATION, KERNEL, SEPARATOR, USER, fold
from bpftools.flamegraph import (HIGHLIGHT, MAX_FRAMES, MIN_WIDTH_PX, fit_label, frame_colour, layout, render_svg)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import flamegraph_scale  # noqa: E402   (the bench's stack generator)

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg):
    """The SVG as an element tree; encoding strictly proves there is nothing unencodable in it."""
    return ET.fromstring(svg.encode("utf-8"))


def frames(root):
    """{name: (class, x, y, width, fill, title, label)} of the drawn frames."""
    out = {}
    for g in root.iter(SVG + "g"):
        if "f" not in g.get("class", "").split():
            continue
        title = g.find(SVG + "title").text
        rect = g.find(SVG + "rect")
        out[title.split("\n")[0]] = (g.get("class"), rect.get("x"), rect.get("y"), rect.get("width"),
                                     rect.get("fill"), title, g.find(SVG + "text").text or "")
    return out


def rgb(fill):
    return tuple(int(c) for c in re.match(r"rgb\((\d+),(\d+),(\d+)\)$", fill).groups())


def test_layout_of_a_tiny_input_is_exact():
    lay = layout({"a;b": 3, "a;c": 1}, width=1200)
    assert [(f.name, f.depth, f.start, f.value) for f in lay.frames] == [
        ("all", 0, 0, 4), ("b", 2, 0, 3), ("c", 2, 3, 1), ("a", 1, 0, 4)]
    assert (lay.total, lay.stacks, lay.pruned, lay.max_depth, lay.scale) == (4, 2, 0, 2, 295.0)


def test_svg_geometry_titles_and_labels_for_a_tiny_input():
    root = parse(render_svg({"a;b": 3, "a;c": 1}, "tiny"))
    assert root.get("width") == "1200" and root.get("height") == "142"
    assert (root.get("data-total"), root.get("data-pruned"), root.get("data-unit")) == ("4", "0", "samples")
    got = frames(root)
    assert sorted(got) == ["a", "all", "b", "c"]
    # name: (x, y, width)
    assert dict((n, got[n][1:4]) for n in got) == {
        "all": ("10.00", "92", "1180.00"),
        "a": ("10.00", "76", "1180.00"),
        "b": ("10.00", "60", "885.00"),
        "c": ("895.00", "60", "295.00"),
    }
    assert got["b"][5] == "b\n3 samples, 75.00%"
    assert got["c"][5] == "c\n1 samples, 25.00%"
    assert got["all"][5] == "all\n4 samples, 100.00%"
    assert got["c"][6] == "c"
    assert root.find(SVG + "text[@class='subtitle']").text == "4 samples in 2 stacks"
    assert root.find(SVG + "text[@class='title']").text == "tiny"


def test_time_weights_are_human_readable():
    root = parse(render_svg({"kworker;mempool_alloc;[mempool wait 5.00s]": 5 * 10 ** 9,
                             "kworker;bvec_alloc": 2500 * 10 ** 6}, "waits", unit="ns"))
    got = frames(root)
    assert got["[mempool wait 5.00s]"][5] == "[mempool wait 5.00s]\n5.00 s, 66.67%"
    assert got["kworker"][5] == "kworker\n7.50 s, 100.00%"
    assert root.find(SVG + "text[@class='subtitle']").text == "7.50 s in 2 stacks"


def test_count_name_labels_plain_counts():
    got = frames(parse(render_svg({"dev_hold;rt_bind_exception": 3}, "refs", unit="refs",
                                  count_name="held references")))
    assert got["dev_hold"][5] == "dev_hold\n3 held references, 100.00%"


def test_colours_and_classes_by_frame_kind():
    folded = {"bash;main;-;entry_SYSCALL_64;[slab fail biovec-64]": 4,
              "[pid 1234 kworker/u8:2];kthread;worker_thread": 4}
    got = frames(parse(render_svg(folded, "kinds")))
    classes = dict((n, got[n][0]) for n in got)
    assert classes == {"all": "f r", "bash": "f u", "main": "f u", "-": "f s", "entry_SYSCALL_64": "f k",
                       "[slab fail biovec-64]": "f a", "[pid 1234 kworker/u8:2]": "f a", "kthread": "f k",
                       "worker_thread": "f k"}
    for name in ("entry_SYSCALL_64", "kthread", "worker_thread"):          # warm
        r, g, b = rgb(got[name][4])
        assert 205 <= r <= 255 and g <= 230 and b <= 55, name
    for name in ("bash", "main"):                                           # aqua / blue
        r, g, b = rgb(got[name][4])
        assert 50 <= r <= 110 and 165 <= g <= 220 and 165 <= b <= 220, name
    for name in ("[slab fail biovec-64]", "[pid 1234 kworker/u8:2]"):      # green
        r, g, b = rgb(got[name][4])
        assert 80 <= r <= 130 and 180 <= g <= 220 and 80 <= b <= 120, name
    assert got["-"][4] == "rgb(160,160,160)"
    assert HIGHLIGHT not in [v[4] for v in got.values()]


def test_kernel_suffix_convention_colours_unmarked_frames_as_user():
    got = frames(parse(render_svg({"java;Main.run_[j];libc_write;sys_write_[k]": 1}, "suffix")))
    assert [got[n][0] for n in ("java", "Main.run_[j]", "libc_write", "sys_write_[k]")] == [
        "f u", "f u", "f u", "f k"]


def test_frame_colour_is_stable_per_name():
    assert frame_colour("vfs_write", KERNEL) == frame_colour("vfs_write", KERNEL)
    assert frame_colour("vfs_write", KERNEL) != frame_colour("vfs_read", KERNEL)
    assert frame_colour("x", USER) != frame_colour("x", ANNOTATION)
    assert frame_colour("-", SEPARATOR) == "rgb(160,160,160)"


def test_frames_narrower_than_a_tenth_of_a_pixel_are_pruned_and_counted():
    folded = {"big": 10 ** 6}
    folded.update(("small;f%04d" % i, 1) for i in range(1000))
    root = parse(render_svg(folded, "wide"))
    assert sorted(frames(root)) == ["all", "big", "small"]
    assert root.get("data-pruned") == "1000"
    assert root.find(SVG + "text[@class='subtitle']").text == (
        "1,001,000 samples in 1,001 stacks; 1,000 frames not drawn (narrower than 0.1 px; see the .folded export)")


def test_frame_cap_keeps_the_widest_and_their_parents():
    lay = layout({"a;b": 4, "a;c": 2, "d": 1}, max_frames=3)
    assert [(f.name, f.value) for f in lay.frames] == [("all", 7), ("b", 4), ("a", 6)]
    assert (lay.pruned, lay.capped) == (2, True)
    lay = layout({"x;y;z": 5}, max_frames=3)          # equal widths: the shallower stay
    assert [f.name for f in lay.frames] == ["all", "y", "x"]
    assert lay.pruned == 1


def test_fit_label():
    assert fit_label("mempool_alloc", 500) == "mempool_alloc"
    assert fit_label("mempool_alloc", 50) == "mempo.."        # 7 chars of 7.08 px fit in 50 px
    assert fit_label("mempool_alloc", 20) == ""


HOSTILE = ["<script>alert(1)</script>", "\"quotes' & <b>", "]]>", "</script>", "repl\ufffd", "byte\udcff",
           "lone\ud800", "ctl\x01", "x</title><script>alert(2)</script>"]


def test_hostile_frames_and_title_are_escaped_and_well_formed():
    folded = fold([(["[pid 1 %s]" % HOSTILE[0]] + HOSTILE[i:i + 3], i + 1) for i in range(len(HOSTILE))])
    svg = render_svg(folded, "</script><script>alert(3)</script>]]>\udcfe", unit="ns", count_name="\"><x>")
    root = parse(svg)
    scripts = list(root.iter(SVG + "script"))
    assert len(scripts) == 1 and "alert" not in scripts[0].text
    assert "<script>alert" not in svg and "</title><script>" not in svg
    names = set(frames(root))
    assert {"[pid 1 <script>alert(1)</script>]", "<script>alert(1)</script>", "\"quotes' & <b>", "]]>",
            "</script>", "repl\ufffd", "byte\\xff", "lone\ufffd", "ctl\\x01",
            "x</title><script>alert(2)</script>"} <= names
    assert root.find(SVG + "text[@class='title']").text == "</script><script>alert(3)</script>]]>\\xfe"
    assert root.get("data-count-name") == "\"><x>"


def test_hostile_count_name_is_escaped_in_every_tooltip():
    root = parse(render_svg({"a;b": 2}, "t", unit="refs", count_name="</title><script>alert(5)</script>"))
    assert frames(root)["b"][5] == "b\n2 </title><script>alert(5)</script>, 100.00%"
    assert len(list(root.iter(SVG + "script"))) == 1


def test_unsanitised_dict_keys_are_cleaned_when_rendering():
    got = frames(parse(render_svg({"a\udcff;;b\nc": 1}, "raw")))
    assert sorted(got) == ["[unknown]", "a\\xff", "all", "b\\x0ac"]


def test_empty_input_renders_an_empty_graph():
    root = parse(render_svg({}, "nothing"))
    assert sorted(frames(root)) == ["all"]
    assert root.find(SVG + "text[@class='subtitle']").text == "0 samples in 0 stacks"


def synthetic_stacks(n, seed=1):
    """n distinct kernel-like stacks with heavy-tailed frame choice and weights in ns."""
    rng = random.Random(seed)
    vocab = ["func_%d" % i for i in range(3000)]
    folded = {}
    while len(folded) < n:
        depth = rng.randint(5, 30)
        stack = ["[pid %d comm]" % rng.randint(0, 20)] + [vocab[min(int(rng.expovariate(0.02)), 2999)]
                                                          for _ in range(depth)]
        folded[";".join(stack)] = rng.randint(1, 10 ** 7)
    return folded


def test_100k_distinct_stacks_render_quickly_and_well_formed():
    folded = synthetic_stacks(100000)
    start = time.time()
    svg = render_svg(folded, "100k stacks", unit="ns")
    elapsed = time.time() - start
    root = parse(svg)
    drawn = sum(1 for g in root.iter(SVG + "g") if g.get("class", "").startswith("f "))
    pruned = int(root.get("data-pruned"))
    assert elapsed < 10, "rendering 100k stacks took %.1f s" % elapsed
    assert 1 < drawn <= MAX_FRAMES and pruned > 0
    assert drawn == len(layout(folded).frames)
    assert "{:,} frames not drawn".format(pruned) in root.find(SVG + "text[@class='subtitle']").text


@pytest.mark.parametrize("width", [300, 1200, 1900])
def test_children_lie_within_their_parent(width):
    lay = layout(synthetic_stacks(300, seed=width), width=width)
    spans = {}
    for f in lay.frames:
        spans.setdefault(f.depth, []).append((f.start, f.start + f.value))
    for f in lay.frames:
        if f.depth:
            assert any(s <= f.start and f.start + f.value <= e for s, e in spans[f.depth - 1])


@pytest.mark.parametrize("count", [300, 5000])
def test_layout_draws_exactly_the_frames_wide_enough_and_cuts_the_rest_where_they_start(count):
    """Against a brute force over every prefix of every stack: the frames drawn are the prefixes at least
    MIN_WIDTH_PX wide, at the place the sorted stacks put them; ``pruned`` counts the narrow ones whose
    parent is drawn (the layout never looks under them)."""
    folded = flamegraph_scale.distinct_stacks(count, seed=count)
    lay = layout(folded)
    stacks = sorted((key.split(";"), value) for key, value in folded.items())
    widths, starts, now = {}, {}, 0
    for frames, value in stacks:
        for depth in range(1, len(frames) + 1):
            prefix = tuple(frames[:depth])
            starts.setdefault(prefix, now)
            widths[prefix] = widths.get(prefix, 0) + value
        now += value
    min_value = MIN_WIDTH_PX / lay.scale
    drawn = sorted((len(p), p[-1], starts[p], w) for p, w in widths.items() if w >= min_value)
    assert sorted((f.depth, f.name, f.start, f.value) for f in lay.frames[1:]) == drawn
    assert lay.pruned == sum(1 for p, w in widths.items()
                             if w < min_value and (len(p) == 1 or widths[p[:-1]] >= min_value))
    assert len(drawn) > 0 and (len(drawn) < len(widths)) == (count == 5000)     # 300 stacks: all wide enough
