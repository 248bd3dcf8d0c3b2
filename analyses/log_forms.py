"""The kernel log message forms bpftools reads, one table for every kernel from 3.10 to 6.18.

Each :class:`Form` is one printk format string as the kernel source has it, the regex that reads
it (after the line's prefixes are gone, see :mod:`.log_paste`), the kernel versions that print it
and the commit that introduced or changed it, and one real example: a line of a log of the corpus
(``tests/corpus`` in the repository, or ``shared`` for the corpus kept next to it). The analyser
(:mod:`.kernel_log`) matches lines with these patterns only, so a form missing here is a form it
does not see.

Names are bounded in the patterns (a cache name, a comm) or kept to one token between literals (a
device name): an unbounded ``.+`` is quadratic on crafted lines.
"""
import re
from collections import OrderedDict
from typing import Dict, Optional, Pattern, Tuple

from dataclasses import dataclass

SLUB, NETDEV_WAIT, REF_TRACKER, HUNG_TASK, MEMCG_OOM = (
    "slub", "netdev_wait", "ref_tracker", "hung_task", "memcg_oom")

_GFP_NEW = r"gfp=(?P<gfp>0x[0-9a-fA-F]{1,16})(?:\((?P<flags>[^)]{0,512})\))?"


@dataclass(frozen=True)
class Form:
    """One message form: what prints it, since and until when, and where a real one was seen."""

    name: str
    signature: str            # SLUB, NETDEV_WAIT, REF_TRACKER, HUNG_TASK or MEMCG_OOM
    printk: str               # the format string, as in the kernel source
    pattern: Pattern          # matched with .search on the message text
    since: str                # first kernel release printing it
    until: Optional[str]      # last one, None if still printed (6.18)
    commit: str               # the commit that introduced or changed it: 12 hex digits and subject
                              # when checked against the kernel history, else what is known and why
    example: Tuple[str, str, int]  # (corpus, file, 1-based line) of a real example


FORMS = (
    # mm/slub.c slab_out_of_memory()
    Form("slub_header_3", SLUB,
         'SLUB: Unable to allocate memory on node %d (gfp=0x%x)',
         re.compile(r"SLUB: Unable to allocate memory on node (?P<node>-?\d{1,6})\s*"
                    r"\(gfp=(?P<gfp_old>0x[0-9a-fA-F]{1,16})\)"),
         "v2.6.32", "v4.5", '781b2ba6eb5f "SLUB: Out-of-memory diagnostics"',
         ("tests", "C02_moby_27576.log", 1)),
    Form("slub_header_4_6", SLUB,
         'SLUB: Unable to allocate memory on node %d, gfp=%#x(%pGg)',
         re.compile(r"SLUB: Unable to allocate memory on node (?P<node>-?\d{1,6}),\s*" + _GFP_NEW),
         "v4.6", "v6.11", '5b3810e5c6e1 "mm, sl[au]b: print gfp_flags as strings in slab_out_of_memory()"',
         ("tests", "C14_teamblackminer_112.log", 4)),
    Form("slub_header_6_12", SLUB,
         'SLUB: Unable to allocate memory on CPU %u (of node %d) on node %d, gfp=%#x(%pGg)',
         re.compile(r"SLUB: Unable to allocate memory on CPU (?P<cpu>\d{1,6}) \(of node (?P<cpu_node>-?\d{1,6})\) "
                    r"on node (?P<node>-?\d{1,6}),\s*" + _GFP_NEW),
         "v6.12", None, 'bf6b9e9ba086 "mm, slub: print CPU id (and its node) on slab OOM"',
         ("tests", "C01_tempesta_2494.log", 4)),
    # The cache name: "kmalloc-1024(1793:<cgroup>)" for per-memcg caches (until
    # v5.8: 9855609bde03 removed them), "kmalloc-cg-256" (v5.14, 494c1dfe855e), "kmalloc-rnd-05-64"
    # with CONFIG_RANDOM_KMALLOC_CACHES (v6.6, 3c6152940584 "Randomized slab caches for kmalloc()").
    Form("slub_cache", SLUB,
         '  cache: %s, object size: %u, buffer size: %u, default order: %u, min order: %u',
         re.compile(r"^cache: (?P<name>[^,]{1,512}), object size"),
         "v2.6.32", None, '781b2ba6eb5f "SLUB: Out-of-memory diagnostics"',
         ("tests", "C01_tempesta_2494.log", 6)),
    Form("slub_node", SLUB,
         '  node %d: slabs: %ld, objs: %ld, free: %ld',
         re.compile(r"^node (?P<node>-?\d{1,6}): slabs: \d{1,20}, objs: \d{1,20}, free: \d{1,20}"),
         "v2.6.32", None, '781b2ba6eb5f "SLUB: Out-of-memory diagnostics"',
         ("tests", "C03_runc_1857.log", 3)),
    # lib/ratelimit.c ___ratelimit() on slab_out_of_memory's own ratelimit state. Before it, the
    # report was gated by printk_ratelimit() in __slab_alloc, whose shared state prints
    # "__slab_alloc: N callbacks suppressed" for every caller's messages: not read as SLUB's.
    Form("slub_suppressed", SLUB,
         '%s: %d callbacks suppressed',
         re.compile(r"slab_out_of_memory: (?P<n>\d{1,10}) callbacks suppressed"),
         "v3.17", None, '"mm, slab: suppress out of memory warning unless debug is enabled" (David Rientjes, '
         'v2 on linux-mm 2014-05-07; in the -mm tree after v3.16-rc1, so v3.17 at the earliest; its hash is '
         'not checked here) gave slab_out_of_memory its ratelimit state',
         ("shared", "A05_docker-for-linux_1001.log", 1)),
    # net/core/dev.c netdev_wait_allrefs() (netdev_wait_allrefs_any() since v5.18)
    Form("netdev_wait", NETDEV_WAIT,
         'unregister_netdevice: waiting for %s to become free. Usage count = %d',
         re.compile(r"unregister_netdevice: waiting for (?P<dev>\S+) to become free\. "
                    r"Usage count = (?P<count>-?\d{1,10})"),
         "v2.6.12", None, '1da177e4c3f4 "Linux-2.6.12-rc2" (already in the first git tree)',
         ("tests", "C10_moby_18156.log", 1)),
    # lib/ref_tracker.c ref_tracker_dir_print(), called by netdev_wait_allrefs() with
    # CONFIG_NET_DEV_REFCNT_TRACKER (v5.17, 4d92b95ff2f9): one line per leaked reference, its
    # allocation stack (stack_depot_print) after it; no object name, no user count.
    Form("ref_tracker_leaked", REF_TRACKER,
         'leaked reference.\\n',
         re.compile(r"^leaked reference\.$"),
         "v5.17", "v6.4", '4e66934eaadc "lib: add reference counting tracking infrastructure"',
         ("tests", "C15_syzbot_881d65229ca4f9ae8c84.log", 2)),
    # Since v6.5 the same stacks are grouped with their user count ("lib/ref_tracker: compact
    # stacktraces before printing", Andrzej Hajda; its upstream hash is not checked here) and the
    # lines carry pr_fmt "ref_tracker: ".
    Form("ref_tracker_users", REF_TRACKER,
         '%s%s@%p has %d/%d users at\\n%s\\n',
         re.compile(r"^ref_tracker: (?P<object>[^\s@]{1,64}@\S{1,32}) has (?P<users>\d{1,10}/\d{1,10}) users at"),
         "v6.5", None, '4d92b95ff2f9 "net: add net device refcount tracker infrastructure" (v5.17)',
         ("shared", "B17_batman-adv-list_batadv-ref-tracker.log", 2)),
    # kernel/hung_task.c check_hung_task()
    Form("hung_task_header", HUNG_TASK,
         'INFO: task %s:%d blocked for more than %ld seconds.',
         re.compile(r"INFO: task (?P<task>.{1,64}?):(?P<pid>\d{1,10}) blocked for more than "
                    r"(?P<seconds>\d{1,12}) seconds"),
         "v2.6.25", None, '82a1fcb90287 "softlockup: automatically detect hung TASK_UNINTERRUPTIBLE tasks"',
         ("tests", "C06_coreos-bugs_118.log", 1)),
    # kernel/sched/core.c sched_show_task(): "%-15.15s %c" then [stack pointer (3.x)] free pid ppid flags
    Form("task_line_old", HUNG_TASK,
         '"%-15.15s %c" then (3.x: the saved pc) "%5lu %5d %6d 0x%08lx" (free stack, pid, ppid, flags)',
         re.compile(r"^(?P<task>\S.{0,14}?)\s+(?P<state>[RSDTtXZPIKWN])\s*(?:[0-9a-f]{8,16}\s+)?"
                    r"\d{1,10}\s+(?P<pid>\d{1,10})\s+\d{1,10}\s+0x[0-9a-f]{1,16}$"),
         "v2.6.12", "v5.8", '1da177e4c3f4 "Linux-2.6.12-rc2"',
         ("tests", "C05_moby_5618_sysrq.log", 4)),
    Form("task_line_5_9", HUNG_TASK,
         '"task:%-15.15s state:%c stack:%5lu pid:%5d ppid:%6d flags:0x%08lx" (6.x adds tgid:)',
         re.compile(r"^task:(?P<task>.{1,64}?)\s{1,64}state:(?P<state>\S)\s.*?\bpid:\s*(?P<pid>\d{1,10})"),
         "v5.9", None, 'cc172ff301d8 "sched/debug: Fix the alignment of the show-state debug output"',
         ("tests", "N10_aristanetworks-sonic_105.log", 9)),
    # kernel/workqueue.c print_worker_info()
    Form("workqueue", HUNG_TASK,
         '%sWorkqueue: %s %ps',
         re.compile(r"^Workqueue: (?P<workqueue>\S.{0,255}?)\s*$"),
         "v3.10", None, '"workqueue: include workqueue info when printing debug dump of a worker task" (Tejun Heo, '
         'v3.10; its hash is not checked here)',
         ("tests", "C06_coreos-bugs_118.log", 5)),
    # mm/oom_kill.c oom_kill_process() in a memory cgroup: not the kmem incident, read to say so.
    # Until v5.0 the "Killed process %d (%s) total-vm:..." line after it carries no scope (a global
    # OOM prints it too): the kill is counted on this line only.
    Form("memcg_oom_kill_old", MEMCG_OOM,
         '%s: Kill process %d (%s) score %u or sacrifice child',
         re.compile(r"Memory cgroup out of memory: Kill process (?P<pid>\d{1,10}) \((?P<comm>.{1,64}?)\)"),
         "v3.10", "v5.0", 'not traced: printed before v3.10; bbbe48029720 (v5.1) removed it',
         ("shared", "N01_k8s_83044.log", 6)),
    # __oom_kill_process() since v5.1: the kill line itself carries the scope. v5.4 appended
    # ", UID:%u" and " pgtables:%lukB oom_score_adj:%hd" (8ac3f8f "mm/oom_kill.c: add task UID to
    # info message on an oom kill", 70cb6d2 "mm/oom: add oom_score_adj and pgtables to Killed process
    # message": short hashes as a public OOM log parser cites them, not checked here); the pattern
    # stops before those fields.
    Form("memcg_oom_killed", MEMCG_OOM,
         '%s: Killed process %d (%s) total-vm:%lukB, anon-rss:%lukB, file-rss:%lukB, shmem-rss:%lukB',
         re.compile(r"Memory cgroup out of memory: Killed process (?P<pid>\d{1,10}) \((?P<comm>.{1,64}?)\) total-vm:"),
         "v5.1", None, 'bbbe48029720 "mm, oom: remove \'prefer children over parent\' heuristic"',
         ("tests", "N24_lkml_memcg-oom-5.2.log", 46)),
)

BY_NAME = OrderedDict((form.name, form) for form in FORMS)  # type: Dict[str, Form]


def pattern(name: str) -> Pattern:
    """The regex of the form NAME."""
    return BY_NAME[name].pattern


def of_signature(signature: str) -> Tuple[Form, ...]:
    """The forms of one signature, oldest first."""
    return tuple(form for form in FORMS if form.signature == signature)
