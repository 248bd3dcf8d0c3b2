#!/usr/bin/env python3
"""Flame-graph rendering at scale: 100,000 distinct stacks through layout, the SVG and the speedscope export.

The stacks are synthetic and deterministic (a seed): random walks down a call tree with a few hundred
functions per level, 8 to 40 frames deep, weights from a long-tailed distribution, the shape of an
off-CPU profile of a busy node. Figures: seconds and stacks/s for ``bpftools.flamegraph.layout``,
``render_svg`` (layout included) and ``analyses.folded.to_speedscope``, the SVG's size, and how many frames
were drawn and left out (narrower than 0.1 px, or past the frame cap that keeps the SVG openable).

    .venv/bin/python bench/flamegraph_scale.py [--stacks 100000] [--json]
"""
import argparse
import json
import random
import sys
import time
from typing import Any, Dict, List, Tuple

import benchlib


def distinct_stacks(count: int, seed: int = 1) -> Dict[str, int]:
    """COUNT distinct folded stacks (root first) with integer weights."""
    rnd = random.Random(seed)
    folded = {}  # type: Dict[str, int]
    while len(folded) < count:
        depth = rnd.randint(8, 40)
        frames = ["comm-%d" % rnd.randint(0, 30)]
        for level in range(1, depth):
            # Narrow near the root (shared prefixes), wide near the leaves (distinct stacks).
            width = min(400, 2 + level * level)
            frames.append("func_l%d_%d" % (level, int(rnd.paretovariate(1.2)) % width))
        key = ";".join(frames)
        folded[key] = folded.get(key, 0) + int(rnd.paretovariate(1.1) * 1000)
    return folded


def _timed(fn: Any) -> Tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def run(stacks: int) -> Dict[str, Any]:
    """Time layout, SVG and speedscope on STACKS distinct stacks."""
    from bpftools.analyses.folded import to_speedscope
    from bpftools.flamegraph import layout, render_svg
    folded = distinct_stacks(stacks)
    lay, layout_s = _timed(lambda: layout(folded))
    svg, svg_s = _timed(lambda: render_svg(folded, "bench", unit="ns"))
    speedscope, speedscope_s = _timed(lambda: json.dumps(to_speedscope(folded, "bench", "ns")))
    return {
        "stacks": len(folded), "frames_in_stacks": sum(k.count(";") + 1 for k in folded),
        "layout_s": layout_s, "svg_s": svg_s, "speedscope_s": speedscope_s,
        "svg_stacks_per_s": len(folded) / svg_s, "layout_stacks_per_s": len(folded) / layout_s,
        "svg_mib": len(svg.encode("utf-8")) / 2.0 ** 20, "speedscope_mib": len(speedscope) / 2.0 ** 20,
        "frames_drawn": len(lay.frames), "frames_pruned": lay.pruned, "capped": lay.capped,
    }


def table(r: Dict[str, Any]) -> List[Tuple[str, str, str]]:
    """The rows of the README table."""
    n = "{:,}".format(r["stacks"])
    return [
        ("flame graph: layout of %s distinct stacks" % n, "%.1f s" % r["layout_s"],
         "{:,.0f} stacks/s".format(r["layout_stacks_per_s"])),
        ("flame graph: interactive SVG of %s distinct stacks" % n, "%.1f s" % r["svg_s"],
         "{:,.0f} stacks/s; {:.1f} MiB; {:,} frames drawn, {:,} left out{}".format(
             r["svg_stacks_per_s"], r["svg_mib"], r["frames_drawn"], r["frames_pruned"],
             " (frame cap reached)" if r["capped"] else "")),
        ("flame graph: speedscope export of %s stacks" % n, "%.1f s" % r["speedscope_s"], "%.1f MiB" % r["speedscope_mib"]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stacks", type=int, default=100000, help="distinct stacks (100000)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    if args.stacks < 1:
        parser.error("--stacks >= 1")
    result = run(args.stacks)
    benchlib.emit({"bench": "flamegraph_scale", "result": result, "table": table(result)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
