"""Kernel struct members the BPF programs read, in one table: the ``-D OFF_*`` name each program
compiles with -> the (struct, member) alternatives, first found wins (struct names change: 6.1's
``struct mempool_s`` is ``struct mempool`` on 6.18).

Offsets come from the running kernel's BTF (:func:`offsets`); without BTF a program falls back to
this kernel's own headers where it can (each plan says which members allow that).
"""
from typing import Dict, Iterable, List, Tuple

from . import btf

Alternatives = List[Tuple[str, str]]

MEMBERS = {
    # the I/O-stall program (probes/iojitter.bpf.c)
    "OFF_CACHE_NAME": [("kmem_cache", "name")],
    "OFF_MEMPOOL_WAIT": [("mempool", "wait"), ("mempool_s", "wait")],
    "OFF_MEMPOOL_POOL_DATA": [("mempool", "pool_data"), ("mempool_s", "pool_data")],
    "OFF_MEMPOOL_ALLOC": [("mempool", "alloc"), ("mempool_s", "alloc")],
    "OFF_PAGE_MAPPING": [("page", "mapping")],
    "OFF_MAPPING_HOST": [("address_space", "host")],
    "OFF_INODE_INO": [("inode", "i_ino")],
    "OFF_INODE_SB": [("inode", "i_sb")],
    "OFF_SB_DEV": [("super_block", "s_dev")],
    "OFF_WBC_NR_TO_WRITE": [("writeback_control", "nr_to_write")],
    # kmemsnoop's mem_cgroup_write hook: the file written
    "OFF_OF_KN": [("kernfs_open_file", "kn")],
    "OFF_KN_NAME": [("kernfs_node", "name")],
    # the network device (netdevwait and refleak)
    "OFF_DEV_NAME": [("net_device", "name")],
    "OFF_DEV_IFINDEX": [("net_device", "ifindex")],
    "OFF_DEV_ND_NET": [("net_device", "nd_net")],
    "OFF_DEV_REG_STATE": [("net_device", "reg_state")],   # an 8-bit, byte-aligned field (5.10-6.18)
    # the reference count, one of: per-cpu counters (before v5.13 always; CONFIG_PCPU_DEV_REFCNT after)
    # or a refcount_t (v5.13+ without it; 919067cc845f)
    "OFF_DEV_PCPU_REFCNT": [("net_device", "pcpu_refcnt")],
    "OFF_DEV_REFCOUNT_T": [("net_device", "dev_refcnt")],
    "OFF_DEV_REFCNT_TRACKER": [("net_device", "refcnt_tracker")],
    "OFF_NET_NS": [("net", "ns")],
    "OFF_NS_INUM": [("ns_common", "inum")],
    # the netdevice notifier chain (netdevwait walks it): struct notifier_block, 3.10-6.18
    "OFF_NB_CALL": [("notifier_block", "notifier_call")],
    "OFF_NB_NEXT": [("notifier_block", "next")],
    "OFF_NB_PRIORITY": [("notifier_block", "priority")],
    # the per-namespace chain (v5.7+, a30c7b429f2d "net: introduce per-netns netdevice notifiers")
    "OFF_NET_NETDEV_CHAIN": [("net", "netdev_chain")],
    # what holds a device (refleak)
    "OFF_FNHE_RTH_INPUT": [("fib_nh_exception", "fnhe_rth_input")],
    "OFF_FNHE_RTH_OUTPUT": [("fib_nh_exception", "fnhe_rth_output")],
    "OFF_NEIGH_DEV": [("neighbour", "dev")],
    "OFF_DST_DEV": [("dst_entry", "dev")],
    "OFF_IN_DEV_DEV": [("in_device", "dev")],
    "OFF_INET6_DEV_DEV": [("inet6_dev", "dev")],
    "OFF_FIB_NH_COMMON": [("fib_nh", "nh_common")],
    "OFF_NHC_DEV": [("fib_nh_common", "nhc_dev")],
}
# probes/netdevwait.bpf.c names two of the same members otherwise (the -D names are part of its source)
MEMBERS["OFF_DEV_NET"] = MEMBERS["OFF_DEV_ND_NET"]
MEMBERS["OFF_DEV_REFCNT"] = MEMBERS["OFF_DEV_REFCOUNT_T"]


def members(names: Iterable[str]) -> Dict[str, Alternatives]:
    """The table's rows for NAMES."""
    return dict((n, MEMBERS[n]) for n in names)


def offsets(names: Iterable[str], path: str = btf.VMLINUX) -> Dict[str, int]:
    """``{name: byte offset}`` of the NAMES found in the BTF at PATH ({} without readable BTF)."""
    return btf.offsets(members(names), path)
