"""Fixtures of the in-VM kernel tier (marker ``kernel``): real kprobes and fentry on real kernels.

These tests run inside the QEMU lab VMs (lab/run.py) on Debian's 5.10, 6.1 and 6.12 kernels. Anywhere
else they skip unless the kernel has kprobes (a ``kprobe_events`` file in tracefs) and we are root.
``BPFTOOLS_REQUIRE_KERNEL=1`` (set by lab/init.sh) turns those skips into failures, so a VM that
cannot probe fails loudly instead of passing empty.
"""
import os
import subprocess
import tempfile
from typing import Iterator, Set

import pytest

from injectors import wait_until
from kerneltier import missing_kernel_features, modprobe, skip_or_fail

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("kernel") is None:
        return
    reason = missing_kernel_features()
    if reason:
        skip_or_fail(reason)


@pytest.fixture(scope="session")
def kallsyms_text() -> Set[str]:
    """Names of the text symbols in /proc/kallsyms."""
    with open("/proc/kallsyms") as f:
        return set(parts[2] for parts in (line.split() for line in f) if len(parts) >= 3 and parts[1] in "tTW")


@pytest.fixture(scope="session")
def symbol_table():
    """bpftools' resolver over this kernel's kallsyms, blacklist and available_filter_functions."""
    from bpftools.kernel.symbols import SymbolTable
    return SymbolTable.from_system()


@pytest.fixture(scope="module")
def loop_device() -> Iterator[str]:
    """A fresh loop block device backed by a 16 MiB file on tmpfs (one per test module)."""
    if not os.path.exists("/dev/loop-control"):
        modprobe("loop")
    backing_dir = tempfile.mkdtemp(prefix="bpftools-loop-")
    backing = os.path.join(backing_dir, "disk.img")
    with open(backing, "wb") as f:
        f.truncate(16 << 20)
    dev = subprocess.check_output(["losetup", "--find", "--show", backing], universal_newlines=True).strip()
    try:
        yield dev
    finally:
        subprocess.call(["losetup", "-d", dev])
        os.remove(backing)
        os.rmdir(backing_dir)


@pytest.fixture(scope="module")
def ext4_mount(loop_device) -> Iterator[str]:
    """ext4 on the test module's loop device (backing file on tmpfs), mounted. Nothing else in the VM
    writes 256-vector bios: another filesystem's writeback would hand bvec elements back to the
    drained pool (bvec_free → mempool_free refills any pool below its reserve) and end the sleeps
    (measured on 5.10 with ext4-on-loop-on-ext4)."""
    for module in ("crc32c_generic", "ext4"):       # 5.10's ext4 needs crc32c_generic, unlisted
        subprocess.call(["modprobe", module], stderr=subprocess.DEVNULL)
    subprocess.check_call(["mkfs.ext4", "-q", "-F", "-O", "^metadata_csum", "-E",
                           "lazy_itable_init=0,lazy_journal_init=0", loop_device])   # no ext4lazyinit I/O later
    mnt = tempfile.mkdtemp(prefix="bpftools-slabfail-")
    subprocess.check_call(["mount", loop_device, mnt])
    try:
        yield mnt
    finally:
        wait_until(lambda: subprocess.call(["umount", mnt], stderr=subprocess.DEVNULL) == 0, 10)
        os.rmdir(mnt)
