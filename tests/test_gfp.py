"""Tests for analyses/gfp.py: gfp mask layouts per kernel generation."""
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpftools.analyses.gfp import (GENERATIONS, UNKNOWN, decode_gfp, encode_gfp,
                                   generation_for_release, generation_for_unnamed_mask)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "dmesg"


@pytest.mark.parametrize("value, names", [
    (0x20, ["GFP_ATOMIC"]),                       # A01: GFP_ATOMIC is __GFP_HIGH on 3.10
    (0x8020, ["GFP_ATOMIC", "__GFP_ZERO"]),       # A03 (RHEL 7 runc#1725)
    (0xd0, ["GFP_KERNEL"]),
    (0x50, ["GFP_NOFS"]),
    (0x10, ["GFP_NOIO"]),
    (0x200d0, ["GFP_USER"]),
    (0x280da, ["GFP_HIGHUSER_MOVABLE", "__GFP_ZERO"]),  # classic RHEL 7 OOM mask
    (0x80d0, ["GFP_KERNEL", "__GFP_ZERO"]),
    (0x1000200, ["__GFP_NOWARN", "__GFP_WRITE"]),
    (0x4000000, ["0x4000000"]),                   # beyond __GFP_BITS_SHIFT 25
    (0, []),
])
def test_decode_3_10(value, names):
    assert decode_gfp(value, "3.10") == names


@pytest.mark.parametrize("value, names", [
    (0x2080020, ["GFP_ATOMIC"]),                  # A02 (k8s#82534)
    (0x2088020, ["GFP_ATOMIC", "__GFP_ZERO"]),    # A02
    (0x24000c0, ["GFP_KERNEL"]),
    (0x26000c0, ["GFP_KERNEL", "__GFP_NOTRACK"]),
    (0x25000c0, ["GFP_KERNEL_ACCOUNT"]),
    (0x20, ["__GFP_HIGH"]),                       # not GFP_ATOMIC any more
])
def test_decode_4_4(value, names):
    assert decode_gfp(value, "4.4") == names


@pytest.mark.parametrize("value, names", [
    (0xdc0, ["GFP_KERNEL", "__GFP_ZERO"]),        # A05, printed by 5.4 itself
    (0xcc0, ["GFP_KERNEL"]),
    (0x400cc0, ["GFP_KERNEL_ACCOUNT"]),
    (0x100cca, ["GFP_HIGHUSER_MOVABLE"]),
    (0xa20, ["GFP_ATOMIC"]),
    (0xc00, ["GFP_NOIO"]),
    (0x800, ["GFP_NOWAIT"]),
    (0x2800, ["GFP_NOWAIT", "__GFP_NOWARN"]),
    (0x1000cc0, ["GFP_KERNEL", "0x1000000"]),     # config-dependent bit left as hex
])
def test_decode_modern(value, names):
    assert decode_gfp(value, "modern") == names


def test_same_value_differs_between_generations():
    assert decode_gfp(0x20, "3.10") == ["GFP_ATOMIC"]
    assert decode_gfp(0x20, "4.4") == ["__GFP_HIGH"]
    assert decode_gfp(0x20, "modern") == ["__GFP_HIGH"]
    assert decode_gfp(0x100, "3.10") == ["__GFP_COLD"]
    assert decode_gfp(0x100, "modern") == ["__GFP_ZERO"]


def test_decode_rejects_bad_input():
    with pytest.raises(ValueError):
        decode_gfp(-1, "3.10")
    with pytest.raises(ValueError):
        decode_gfp(0x20, "2.6")
    with pytest.raises(ValueError):
        decode_gfp(0x20, UNKNOWN)


def test_encode():
    assert encode_gfp(["GFP_KERNEL", "__GFP_ZERO"], "modern") == 0xdc0
    assert encode_gfp(["GFP_ATOMIC", "0x4000000"], "3.10") == 0x4000020
    with pytest.raises(ValueError):
        encode_gfp(["__GFP_WAIT"], "modern")
    with pytest.raises(ValueError):
        encode_gfp([], "5.x")


@given(st.sampled_from(GENERATIONS), st.integers(min_value=0, max_value=2 ** 32 - 1))
def test_decode_is_lossless(generation, value):
    names = decode_gfp(value, generation)
    assert encode_gfp(names, generation) == value
    assert len(names) == len(set(names))
    assert sum(1 for name in names if name.startswith("0x")) <= 1


@pytest.mark.parametrize("release, generation", [
    ("3.10.0-957.el7.x86_64", "3.10"),
    ("3.10.0-1127.el7.x86_64", "3.10"),
    ("3.16.0-0.bpo.4-amd64", "3.10"),
    ("4.3.6", "3.10"),
    ("4.4.0-161-generic", "4.4"),
    ("4.9.0-8-amd64", "4.4"),
    ("4.14.0", UNKNOWN),
    ("5.3.18", UNKNOWN),
    ("5.4.0-29-generic", "modern"),
    ("6.1.0-18-amd64", "modern"),
    ("6.18.2-fc", "modern"),
    ("2.6.32-754.el6.x86_64", UNKNOWN),
    ("", UNKNOWN),
    ("linux", UNKNOWN),
    (None, UNKNOWN),
])
def test_generation_for_release(release, generation):
    assert generation_for_release(release) == generation


def test_generation_for_unnamed_mask():
    assert generation_for_unnamed_mask(0x20) == "3.10"
    assert generation_for_unnamed_mask(0x8020) == "3.10"
    assert generation_for_unnamed_mask(0x1000000) == "3.10"  # __GFP_WRITE, highest 3.10 bit
    assert generation_for_unnamed_mask(0x2080020) == "4.4"
    assert generation_for_unnamed_mask(0x2088020) == "4.4"


def test_names_printed_by_a_5_4_kernel_match_the_modern_table():
    """A05 comes from 5.4.0-29-generic, which printed the names itself."""
    expected = CORPUS / "EXPECTED.json"
    if not expected.exists():
        pytest.skip("corpus not found at %s (CI keeps it in ../shared next to the clone)" % CORPUS)
    facts = json.loads(expected.read_text(encoding="utf-8"))["files"]["A05_docker-for-linux_1001.log"]
    printed = facts["gfp"][0]  # "0xdc0(GFP_KERNEL|__GFP_ZERO)"
    value, names = printed.rstrip(")").split("(")
    assert decode_gfp(int(value, 16), "modern") == names.split("|")
