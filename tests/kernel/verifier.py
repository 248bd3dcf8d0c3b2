"""How big each BPF program of a probe is, and how much work it gives the verifier.

bcc compiles a probe; each of its functions' bytecode (``BPF.dump_func``, map fds already in place) is
loaded once more through bpf(BPF_PROG_LOAD) with ``log_level`` BPF_LOG_STATS (5.2+), whose log ends
with the verifier's "processed N insns". The pre-5.2 verifier (CentOS 7's 3.10 backport among them)
allowed 4,096 instructions per program (BPF_MAXINSNS) and 131,072 processed instructions
(BPF_COMPLEXITY_LIMIT_INSNS before commit c04c0d2b968a, v5.2).
"""
import ctypes
import re
import struct
from typing import Any, Dict, List

SYS_BPF = 321                 # x86-64
BPF_PROG_LOAD = 5
BPF_LOG_STATS = 4
PROG_TYPES = {"kprobe": 2, "tracepoint": 5, "perf_event": 7}
MAX_INSNS_PRE_5_2 = 4096
MAX_PROCESSED_PRE_5_2 = 131072
_FUNCTION = re.compile(r"^int\s+([a-z_][a-z0-9_]*)\s*\(\s*struct\s+(pt_regs|bpf_perf_event_data)\b", re.M)
_TRACEPOINT = re.compile(r"^TRACEPOINT_PROBE\(\s*(\w+)\s*,\s*(\w+)\s*\)", re.M)
_PROCESSED = re.compile(r"processed (\d+) insns")


def functions(source: str) -> Dict[str, str]:
    """bcc function name -> program type, for every program the source can define."""
    out = dict((name, "perf_event" if ctx == "bpf_perf_event_data" else "kprobe")
               for name, ctx in _FUNCTION.findall(source))
    out.update(("tracepoint__%s__%s" % tp, "tracepoint") for tp in _TRACEPOINT.findall(source))
    return out


def verify(insns: bytes, prog_type: str) -> Dict[str, Any]:
    """Load INSNS once (then close it): {"ok", "processed", "error"}."""
    libc = ctypes.CDLL(None, use_errno=True)
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQII", attr, 0, PROG_TYPES[prog_type], len(insns) // 8, ctypes.addressof(code),
                     ctypes.addressof(license_), BPF_LOG_STATS, len(log), ctypes.addressof(log), 0, 0)
    fd = libc.syscall(SYS_BPF, BPF_PROG_LOAD, attr, len(attr))
    err = ctypes.get_errno()
    text = log.value.decode("utf-8", "replace")
    if fd >= 0:
        libc.close(fd)
    found = _PROCESSED.findall(text)
    return {"ok": fd >= 0, "processed": int(found[-1]) if found else None,
            "error": None if fd >= 0 else "errno %d: %s" % (err, text.strip().splitlines()[-1:] or "")}


def successors(insns: bytes, i: int) -> List[int]:
    """Where instruction I can go next (the control-flow graph the verifier's check_cfg walks)."""
    code, _regs, off, _imm = struct.unpack_from("<BBhi", insns, 8 * i)
    if code == 0x18:                                  # BPF_LD | BPF_IMM | BPF_DW: two slots
        return [i + 2]
    if code & 0x07 in (0x05, 0x06):                   # BPF_JMP, BPF_JMP32
        op = code & 0xF0
        if op == 0x90:                                # exit
            return []
        if op == 0x80:                                # helper call
            return [i + 1]
        if op == 0x00 and code & 0x07 == 0x05:        # ja
            return [i + 1 + off]
        return [i + 1, i + 1 + off]
    return [i + 1]


def back_edges(insns: bytes) -> int:
    """Edges that close a cycle in the control-flow graph (a loop the compiler did not unroll): the
    verifier before 5.3 refuses them ("back-edge from insn X to Y"). Backward jumps into code already
    left are not loops and are not counted, as in check_cfg."""
    n, count = len(insns) // 8, 0
    state = [0] * n                                    # 0 new, 1 on the DFS path, 2 done
    stack = [(0, iter(successors(insns, 0)))] if n else []
    if n:
        state[0] = 1
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            state[node] = 2
            stack.pop()
        elif 0 <= nxt < n:
            if state[nxt] == 1:
                count += 1
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(successors(insns, nxt))))
    return count


def measure(bpf: Any, source: str) -> List[Dict[str, Any]]:
    """Every function of SOURCE that this compilation of it holds: name, type, instructions, processed."""
    rows = []
    for name, prog_type in sorted(functions(source).items()):
        try:
            insns = bpf.dump_func(name.encode())
        except Exception:       # not compiled under these flags (bcc raises plain Exception)
            continue
        row = {"function": name, "type": prog_type, "insns": len(insns) // 8, "back_edges": back_edges(insns)}
        row.update(verify(insns, prog_type))
        rows.append(row)
    return rows
