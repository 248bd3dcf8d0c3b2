"""Symbolised kernel stacks: which function a frame is, whether a stack holds one, what blocked it.

Frames are names as the capture layer resolves them (``mempool_alloc_noprof``, ``ext4_writepages``,
maybe with ``+0x1a/0x80`` offsets, `` [module]`` or compiler clone suffixes), innermost first, the
order ``bpf_get_stackid`` gives. Matching uses the *wanted* name, the way kernel-facts.md names
functions: ``mempool_alloc`` matches ``mempool_alloc_noprof`` (6.10+) and ``mempool_alloc.isra.0``.

>>> frames = ["__schedule", "schedule", "io_schedule_timeout", "mempool_alloc_noprof", "bvec_alloc"]
>>> holds(frames, "mempool_alloc"), caller_of(frames, "mempool_alloc"), blocking_frame(frames)
(True, 'bvec_alloc', 'mempool_alloc_noprof')
"""
import functools
import re
from typing import List, Optional, Sequence

MEMPOOL_ALLOC = "mempool_alloc"

# Offsets "+0x1a/0x80", a trailing " [module]", clone suffixes ".isra.0", ".constprop.2", ".part.1",
# ".cold" (possibly chained); then "_noprof" (allocators since v6.10, commit 7bd230a26648).
_OFFSET = re.compile(r"\+0x[0-9a-fA-F]+(?:/0x[0-9a-fA-F]+)?$")
_MODULE = re.compile(r"\s+\[[^\]]+\]$")
_CLONE = re.compile(r"(?:\.(?:isra|constprop|part|cold)(?:\.\d+)?)+$")
_NOPROF = "_noprof"

# Frames of the scheduler itself, never the reason a task sleeps: skipped by blocking_frame.
SCHEDULER_FRAMES = frozenset([
    "__sched_text_start",   # the label at the start of the scheduler's text: symbolisers may print it
    "__schedule", "schedule", "schedule_timeout", "io_schedule", "io_schedule_timeout",
    "schedule_preempt_disabled", "schedule_hrtimeout_range", "schedule_hrtimeout_range_clock",
    "__cond_resched", "preempt_schedule_common", "bit_wait_io", "bit_wait", "out_of_line_wait_on_bit",
    "__wait_on_bit", "__wait_on_bit_lock", "finish_task_switch", "__switch_to", "__switch_to_asm",
    "do_wait_for_common", "__wait_for_common", "wait_for_completion", "wait_for_completion_io",
    "wait_for_completion_killable", "wait_for_completion_state",
])


@functools.lru_cache(maxsize=1 << 16)      # frames repeat: a stream of any length names few functions
def base_name(frame: str) -> str:
    """The function a frame names, without offset, module, clone suffix or ``_noprof``.

    >>> base_name("mempool_alloc_noprof+0x5a/0x190 [kernel]")
    'mempool_alloc'
    """
    name = _MODULE.sub("", frame.strip())
    name = _OFFSET.sub("", name)
    name = _CLONE.sub("", name)
    if name.endswith(_NOPROF):
        name = name[:-len(_NOPROF)]
    return name


def index_of(frames: Sequence[str], wanted: str) -> Optional[int]:
    """Index of the innermost frame that is WANTED (by :func:`base_name`), or None."""
    for i, frame in enumerate(frames):
        if base_name(frame) == wanted:
            return i
    return None


def holds(frames: Optional[Sequence[str]], wanted: str) -> bool:
    """True when the stack has a frame of function WANTED."""
    return bool(frames) and index_of(frames or (), wanted) is not None


def caller_of(frames: Sequence[str], wanted: str) -> Optional[str]:
    """The function that called WANTED (the first frame above it that is not WANTED again), or None."""
    i = index_of(frames, wanted)
    if i is None:
        return None
    for frame in frames[i + 1:]:
        name = base_name(frame)
        if name != wanted:
            return name
    return None


def blocking_frame(frames: Optional[Sequence[str]]) -> Optional[str]:
    """The innermost frame that is not the scheduler's own: what the task was waiting in."""
    for frame in frames or ():
        if base_name(frame) not in SCHEDULER_FRAMES:
            return frame
    return None


def root_first(frames: Optional[Sequence[str]]) -> List[str]:
    """The frames outermost first, as folded stacks and flame graphs want them."""
    return list(reversed(list(frames or ())))
