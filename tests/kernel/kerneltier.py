"""Helpers shared by the kernel tier's tests and its conftest (importable as ``kerneltier``)."""
import os
import platform
import re
import subprocess
from typing import Dict, List, Optional

import pytest

KPROBE_EVENTS = ("/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events")
KPROBES_LIST = "/sys/kernel/debug/kprobes/list"


def required() -> bool:
    """True inside the lab VMs: a missing capability is a failure, not a skip."""
    return os.environ.get("BPFTOOLS_REQUIRE_KERNEL") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it when the kernel tier is required."""
    if required():
        pytest.fail("kernel tier required (BPFTOOLS_REQUIRE_KERNEL=1) but %s" % reason, pytrace=False)
    pytest.skip(reason)


def missing_kernel_features() -> Optional[str]:
    """Why this machine cannot run the kernel tier, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if not any(os.path.exists(p) for p in KPROBE_EVENTS):
        return "no kprobes here (no kprobe_events in tracefs); run it in the lab VMs: python3 lab/run.py SUITE"
    return None


def kprobes_listed() -> List[str]:
    """The ``symbol+0xOFFSET`` of every kprobe registered now (debugfs kprobes/list: bcc's perf
    kprobes are there too)."""
    with open(KPROBES_LIST) as f:
        return [line.split()[2] for line in f if len(line.split()) >= 3]


def kernel_config() -> Dict[str, str]:
    """CONFIG_* values of the running kernel from /boot/config-RELEASE (the lab images ship it)."""
    path = "/boot/config-%s" % platform.release()
    config = {}  # type: Dict[str, str]
    with open(path) as f:
        for line in f:
            if line.startswith("CONFIG_") and "=" in line:
                key, value = line.rstrip("\n").split("=", 1)
                config[key] = value
    return config


def modprobe(module: str) -> None:
    subprocess.check_call(["modprobe", module])


def keep_for_host(path: str, name: str) -> Optional[str]:
    """In a lab VM, copy PATH to $BPFTOOLS_LAB_OUT/<kernel release>/NAME: lab/run.py brings it back to the
    host (``--out``). Elsewhere nothing happens (None)."""
    out = os.environ.get("BPFTOOLS_LAB_OUT")
    if not out:
        return None
    target = os.path.join(out, platform.release(), name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(path, "rb") as src, open(target, "wb") as dst:
        dst.write(src.read())
    return target


def kernel_version() -> tuple:
    """(major, minor) of the running kernel."""
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
