"""Folded stacks: folding, sanitising, reading back, frame kinds, speedscope and weight formatting."""
import json
import random
from decimal import ROUND_HALF_UP, Decimal

import pytest

from bpftools.analyses.folded import (ANNOTATION, KERNEL, NO_STACK, SEPARATOR, SPEEDSCOPE_SCHEMA, USER,
                                      annotation, clean_text, fixed, fold, folded_lines, format_weight,
                                      frame_kinds, parse_folded, parse_folded_checked, sanitize_frame,
                                      sanitize_stack, to_speedscope, uses_kernel_suffix)


def test_fold_sums_equal_stacks_and_sorts_keys():
    folded = fold([(["kworker", "wb_workfn", "mempool_alloc"], 5), (["dockerd", "sys_write"], 2),
                   (("kworker", "wb_workfn", "mempool_alloc"), 7), (["kworker", "wb_workfn"], 1)])
    assert folded == {"dockerd;sys_write": 2, "kworker;wb_workfn": 1, "kworker;wb_workfn;mempool_alloc": 12}
    assert list(folded) == ["dockerd;sys_write", "kworker;wb_workfn", "kworker;wb_workfn;mempool_alloc"]


def test_fold_drops_zero_totals_and_names_empty_stacks():
    assert fold([(["a"], 0), ([], 3), (["b"], 0), (["b"], 2)]) == {NO_STACK: 3, "b": 2}


@pytest.mark.parametrize("weight,error", [(-1, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError)])
def test_fold_rejects_bad_weights(weight, error):
    with pytest.raises(error):
        fold([(["a"], weight)])


@pytest.mark.parametrize("raw,clean", [
    ("a;b", "a:b"),
    ("line\nbreak", "line\\x0abreak"),
    ("tab\there\r", "tab\\x09here\\x0d"),
    ("", "[unknown]"),
    ("surrogate\udcff", "surrogate\\xff"),          # a byte smuggled in by surrogateescape
    ("lone\ud800", "lone\ufffd"),
    ("kept\ufffd", "kept\ufffd"),
    ("nonchar\uffff", "nonchar\\uffff"),
    (b"comm\xff", "comm\\xff"),
    (b"ok", "ok"),
    ("<script>alert(1)</script>", "<script>alert(1)</script>"),   # escaping is the renderer's job
])
def test_sanitize_frame(raw, clean):
    assert sanitize_frame(raw) == clean


def test_fold_sanitises_frames():
    assert fold([(["a;b", "c\nd", "", b"e\xfe"], 1)]) == {"a:b;c\\x0ad;[unknown];e\\xfe": 1}


def test_clean_text_keeps_newlines_and_tabs_but_not_other_controls():
    assert clean_text("a\nb\tc\rd\x00e\x7f\udc80") == "a\nb\tc\rd\\x00e\\x7f\\x80"
    assert clean_text("plain") == "plain"


def test_sanitize_stack_repairs_empty_frames_only_when_needed():
    assert sanitize_stack("a;b;c") == "a;b;c"
    assert sanitize_stack(";a;;b;") == "[unknown];a;[unknown];b;[unknown]"
    assert sanitize_stack("a\x01;b") == "a\\x01;b"


def test_annotation():
    assert annotation("mempool wait 5.00s") == "[mempool wait 5.00s]"
    assert annotation("pid 1234 kworker/u8:2") == "[pid 1234 kworker/u8:2]"
    assert annotation("evil;frame\n") == "[evil:frame\\x0a]"


def test_folded_lines_are_sorted_stack_space_count():
    assert folded_lines({"b;c": 2, "a": 10, "a;b c": 3}) == ["a 10", "a;b c 3", "b;c 2"]
    assert folded_lines({}) == []


def test_parse_folded_reads_valid_lines_and_numbers_bad_ones():
    lines = [
        "a;b 3\n",         # 1
        "a;b 2",           # 2: summed with line 1
        "",                # 3: blank, ignored
        "garbage\n",       # 4: no count
        "a;c x",           # 5: count not a number
        "a;c -1",          # 6: negative
        " 5",              # 7: empty stack
        "a;d 1.5",         # 8: fractional
        "c\t4\r\n",        # 9: tab separator, CRLF
        "[mempool wait 5.00s];x y 7",   # 10: frames with spaces
        "   \n",           # 11: blank
        "e;f 2²",          # 12: not an ASCII digit
        ";g 1",            # 13: empty frame repaired
    ]
    folded, bad = parse_folded_checked(lines)
    assert folded == {"a;b": 5, "c": 4, "[mempool wait 5.00s];x y": 7, "[unknown];g": 1}
    assert bad == [4, 5, 6, 7, 8, 12]
    assert parse_folded(lines) == folded


def test_parse_folded_survives_surrogates_and_round_trips_fold():
    folded = fold([(["k\udcff", "x;y"], 4), (["[slab fail biovec-64]", "kmem_cache_alloc"], 9)])
    assert parse_folded(folded_lines(folded)) == folded
    assert parse_folded(["k\udcff;z 1"]) == {"k\\xff;z": 1}


def test_frame_kinds_bcc_delimiter_convention():
    # offcputime -d: comm;user frames;-;kernel frames
    assert frame_kinds(["bash", "main", "write", "-", "entry_SYSCALL_64", "vfs_write"]) == [
        USER, USER, USER, SEPARATOR, KERNEL, KERNEL]
    # offwaketime: target user;-;target kernel;--;waker kernel;-;waker user
    assert frame_kinds(["t", "tu", "-", "tk", "--", "wk", "-", "wu"]) == [
        USER, USER, SEPARATOR, KERNEL, SEPARATOR, KERNEL, SEPARATOR, USER]


def test_frame_kinds_suffix_convention_and_annotations():
    frames = ["java", "Main.run_[j]", "inl_[i]", "libc_write", "sys_write_[k]", "[unknown]", "[slab fail biovec-64]"]
    assert frame_kinds(frames, kernel_suffix=True) == [USER, USER, USER, USER, KERNEL, USER, ANNOTATION]
    # no convention: the default kind (our tools trace the kernel)
    assert frame_kinds(["[pid 1 kworker/0:1]", "kthread", "[unknown]"]) == [ANNOTATION, KERNEL, KERNEL]
    assert frame_kinds(["a", "b"], default=USER) == [USER, USER]


def test_uses_kernel_suffix():
    assert uses_kernel_suffix({"a;b_[k] ": 1}) is True
    assert uses_kernel_suffix({"a;b": 1, "c;[k]": 1}) is False


def test_to_speedscope_exact():
    doc = to_speedscope({"a;b;c": 3, "a;b": 1, "a;d": 2}, "slow writebacks", "ns")
    assert doc == {
        "$schema": SPEEDSCOPE_SCHEMA,
        "exporter": "bpftools",
        "name": "slow writebacks",
        "activeProfileIndex": 0,
        "shared": {"frames": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}]},
        "profiles": [{"type": "sampled", "name": "slow writebacks", "unit": "nanoseconds", "startValue": 0,
                      "endValue": 6, "samples": [[0, 1], [0, 1, 2], [0, 3]], "weights": [1, 3, 2]}],
    }
    json.dumps(doc)


@pytest.mark.parametrize("unit,speedscope_unit", [("ns", "nanoseconds"), ("us", "microseconds"),
                                                  ("bytes", "bytes"), ("samples", "none"), ("refs", "none")])
def test_speedscope_units(unit, speedscope_unit):
    assert to_speedscope({"a": 1}, "x", unit)["profiles"][0]["unit"] == speedscope_unit


def test_speedscope_schema_required_fields():
    """The fields https://www.speedscope.app/file-format-schema.json requires."""
    doc = to_speedscope({"x;y": 2}, "n", "samples")
    assert {"$schema", "profiles", "shared"} <= set(doc)
    assert {"endValue", "name", "samples", "startValue", "type", "unit", "weights"} <= set(doc["profiles"][0])
    assert all(set(f) == {"name"} for f in doc["shared"]["frames"])


@pytest.mark.parametrize("value,unit,count_name,expected", [
    (5 * 10 ** 9, "ns", "", "5.00 s"),
    (5004999999, "ns", "", "5.00 s"),
    (12500000, "ns", "", "12.50 ms"),
    (1500, "ns", "", "1.50 \u00b5s"),
    (800, "ns", "", "800 ns"),
    (0, "ns", "", "0 ns"),
    (2500, "us", "", "2.50 ms"),
    (3, "s", "", "3.00 s"),
    (1572864, "bytes", "", "1.50 MiB"),
    (1023, "bytes", "", "1023 B"),
    (1234567, "samples", "", "1,234,567 samples"),
    (3, "refs", "held references", "3 held references"),
])
def test_format_weight(value, unit, count_name, expected):
    assert format_weight(value, unit, count_name) == expected


def test_fixed_rounds_ties_up_like_javascript_tofixed():
    assert fixed(12.125, 2) == "12.13"      # exactly representable tie: JS gives 12.13, '%.2f' 12.12
    assert fixed(0.005, 2) == "0.01"        # the double is 0.00500000000000000010...: JS says 0.01
    assert fixed(1.005, 2) == "1.00"        # the double is 1.00499999999999989...: JS says 1.00
    assert fixed(100.0, 2) == "100.00"
    assert fixed(1 / 3.0 * 100, 2) == "33.33"


def test_fixed_takes_the_fast_path_only_where_it_gives_decimals_answer():
    """fixed() formats with %f except at exact ties: on durations, random reals, eighths (ties at two
    digits), negatives and zeros it gives what Decimal's ROUND_HALF_UP gives."""
    rnd = random.Random(7)
    values = ([rnd.randint(0, 10 ** 13) / 1e9 for _ in range(20000)] + [rnd.uniform(-1e6, 1e6) for _ in range(5000)]
              + [k / 8.0 for k in range(-2000, 2000)] + [k / 1000.0 for k in range(0, 20000, 7)]
              + [0.0, -0.0, 0.005, 0.015, 0.125, 2.5, -2.5, 1e20, 123456789.125])
    for digits in (0, 1, 2, 3, 6):
        quantum = Decimal(1).scaleb(-digits)
        wrong = [v for v in values if fixed(v, digits) != str(Decimal(v).quantize(quantum, rounding=ROUND_HALF_UP))]
        assert wrong == [], (digits, wrong[:5])
