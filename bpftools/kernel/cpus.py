"""CPU lists of this machine: the possible CPUs (per-cpu counters have a slot each) and the online ones."""
from typing import List

POSSIBLE = "/sys/devices/system/cpu/possible"
ONLINE = "/sys/devices/system/cpu/online"


def parse_cpu_list(text: str) -> List[int]:
    """``0-3,5`` -> [0, 1, 2, 3, 5]."""
    cpus = []  # type: List[int]
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def slots(text: str) -> int:
    """How many per-cpu slots a cpu list spans: its highest CPU + 1 ("0-3,8" -> 9)."""
    return max(parse_cpu_list(text) or [0]) + 1


def read_cpu_list(path: str = POSSIBLE) -> List[int]:
    """CPU numbers from a kernel cpu list file; [0] when it cannot be read."""
    try:
        with open(path) as f:
            return parse_cpu_list(f.read())
    except OSError:
        return [0]


def possible_slots() -> int:
    """Per-cpu slots of this machine (highest possible CPU + 1)."""
    return max(read_cpu_list(POSSIBLE)) + 1


def online_cpus() -> List[int]:
    """The online CPUs (what a per-CPU watch must cover)."""
    return read_cpu_list(ONLINE)
