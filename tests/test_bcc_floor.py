"""The declared bcc floor: every bcc call of the project exists in bcc 0.9.0, or is feature-detected.

Facts below were read in bcc's own history (iovisor/bcc tags v0.6.0 .. v0.14.0: src/python/bcc/
__init__.py, table.py, utils.py and src/cc/export/helpers.h at each tag). Why 0.9.0: it is the first
release with ``PerfEventArray.event()`` (decoding a perf record from the program's own C struct),
which every live tool uses, and with ``attach_kretprobe(maxactive=)``. The last EL7 build of bcc is
0.10.0; CentOS 7.6 ships 0.6.0, with which no live tool can decode its events (doctor, report and
repro need no bcc at all).
"""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOR = (0, 9, 0)

# Python API: method or attribute -> first release that has it; "name:keyword" for keywords.
PYTHON_API = {
    "attach_kprobe": (0, 6, 0), "attach_kprobe:event": (0, 6, 0), "attach_kprobe:event_off": (0, 6, 0),
    "attach_kprobe:fn_name": (0, 6, 0),
    "attach_kretprobe": (0, 6, 0), "attach_kretprobe:event": (0, 6, 0), "attach_kretprobe:fn_name": (0, 6, 0),
    "attach_kretprobe:maxactive": (0, 9, 0),
    "detach_kprobe_event": (0, 6, 0), "detach_tracepoint": (0, 6, 0), "load_func": (0, 6, 0),
    "get_table": (0, 6, 0), "cleanup": (0, 6, 0), "ksym": (0, 6, 0), "ksym:show_offset": (0, 6, 0),
    "perf_buffer_poll": (0, 6, 0), "perf_buffer_poll:timeout": (0, 6, 0),
    "open_perf_buffer": (0, 6, 0), "open_perf_buffer:page_cnt": (0, 6, 0), "open_perf_buffer:lost_cb": (0, 6, 0),
    "walk": (0, 6, 0), "values": (0, 6, 0), "Leaf": (0, 6, 0), "get_online_cpus": (0, 6, 0),
    "event": (0, 9, 0),                 # PerfEventArray.event(data)
    "support_kfunc": (0, 14, 0),        # BPF.support_kfunc() and KFUNC_PROBE
    "BPF": (0, 6, 0), "BPF:src_file": (0, 6, 0), "BPF:cflags": (0, 6, 0), "BPF:text": (0, 6, 0),
}
# Calls on these receivers are bcc calls (the names the project gives bcc objects).
RECEIVERS = {"bpf", "b", "perf", "self.bpf", "bcc", "bcc.BPF", "bcc.utils", "_bcc().utils", "table", "bpf[]",
             "self.bpf[]"}
# Uses newer than the floor, allowed only where they are feature-detected: (file, function, name).
DETECTED = {("bpftools/capture.py", "try_fentry_attach", "support_kfunc")}

# C side: macros and helpers of bcc's helpers.h -> first release that declares them.
C_API = {
    "BPF_HASH": (0, 6, 0), "BPF_ARRAY": (0, 6, 0), "BPF_PERCPU_ARRAY": (0, 6, 0), "BPF_TABLE": (0, 6, 0),
    "BPF_PERF_OUTPUT": (0, 6, 0), "BPF_STACK_TRACE": (0, 6, 0), "TRACEPOINT_PROBE": (0, 6, 0),
    "bpf_probe_read": (0, 6, 0), "bpf_probe_read_str": (0, 6, 0), "bpf_ktime_get_ns": (0, 6, 0),
    "bpf_get_current_pid_tgid": (0, 6, 0), "bpf_get_current_comm": (0, 6, 0), "bpf_get_smp_processor_id": (0, 6, 0),
    "bpf_get_current_cgroup_id": (0, 7, 0), "bpf_jiffies64": (0, 14, 0), "KFUNC_PROBE": (0, 14, 0),
    "bpf_probe_read_kernel": (0, 13, 0), "lookup_or_try_init": (0, 13, 0), "ringbuf_output": (0, 16, 0),
}
C_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def _receiver(node):
    if isinstance(node, ast.Subscript):          # bpf["events"].open_perf_buffer(...)
        return _receiver(node.value) + "[]"
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        parts.append(node.func.id + "()")
    return ".".join(reversed(parts))


def python_uses(path, source=None):
    """(function, name) of every bcc call in a Python file: ``name`` and ``name:keyword``."""
    source = source if source is not None else open(path, encoding="utf-8").read()
    uses = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                attr = child.func.attr
                if _receiver(child.func.value) in RECEIVERS and attr in PYTHON_API:
                    uses.append((function, attr))
                    uses.extend((function, "%s:%s" % (attr, kw.arg)) for kw in child.keywords if kw.arg)
            elif isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and child.func.id == "getattr":
                args = child.args
                if len(args) >= 2 and isinstance(args[1], ast.Constant) and args[1].value in PYTHON_API:
                    uses.append((function, args[1].value))
            visit(child, inner)

    visit(ast.parse(source), None)
    return uses


def c_uses(source):
    """(name, guards) of every bcc macro/helper used in C SOURCE; guards: the #if conditions around it."""
    uses, stack = [], []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#if"):
            stack.append(stripped)
        elif stripped.startswith("#endif") and stack:
            stack.pop()
        elif stripped.startswith("#else") and stack:
            stack[-1] = "!" + stack[-1]
        elif not stripped.startswith(("#", "*", "/*", "//")):
            for name in C_CALL.findall(line):
                if name in C_API:
                    uses.append((name, tuple(stack)))
            for name in re.findall(r"\.([a-z_]+)\(", line):
                if name in C_API:
                    uses.append((name, tuple(stack)))
    return uses


def _sources(ext):
    for base, _, files in os.walk(os.path.join(ROOT, "bpftools")):
        for name in files:
            if name.endswith(ext):
                yield os.path.join(base, name)


def test_python_bcc_calls_exist_in_the_floor_release():
    newer = []
    for path in _sources(".py"):
        rel = os.path.relpath(path, ROOT)
        for function, name in python_uses(path):
            if PYTHON_API[name] > FLOOR and (rel, function, name.split(":")[0]) not in DETECTED:
                newer.append("%s:%s uses %s (bcc %s)" % (rel, function, name, ".".join(map(str, PYTHON_API[name]))))
    assert newer == []


def test_the_project_makes_the_bcc_calls_the_facts_cover():
    """Not vacuous: the scan finds the calls the capture layer is built on."""
    found = set(name for path in _sources(".py") for _, name in python_uses(path))
    assert {"event", "open_perf_buffer:lost_cb", "attach_kprobe", "attach_kretprobe", "perf_buffer_poll:timeout",
            "load_func", "support_kfunc", "walk", "ksym:show_offset", "BPF:src_file"} <= found


def test_maxactive_is_passed_only_where_this_bcc_takes_it():
    """attach_kretprobe(maxactive=) is 0.9.0+: capture.try_attach passes it through a signature check."""
    source = open(os.path.join(ROOT, "bpftools", "capture.py"), encoding="utf-8").read()
    assert '"maxactive" in inspect.signature(bpf.attach_kretprobe).parameters' in source
    assert not any(name == "attach_kretprobe:maxactive" for path in _sources(".py") for _, name in python_uses(path))


@pytest.mark.parametrize("probe", sorted(n for n in os.listdir(os.path.join(ROOT, "probes")) if n.endswith((".c", ".h"))))
def test_c_uses_exist_in_the_floor_release_or_are_guarded(probe):
    with open(os.path.join(ROOT, "probes", probe)) as f:
        uses = c_uses(f.read())
    newer = ["%s (bcc %s) outside #ifdef" % (n, ".".join(map(str, C_API[n]))) for n, guards in uses
             if C_API[n] > FLOOR and not guards]
    assert newer == []


def test_the_checks_flag_newer_uses():
    py = python_uses("x.py", "def f(bpf):\n    bpf.attach_kretprobe(event=b'x', fn_name=b'y', maxactive=8)\n")
    assert ("f", "attach_kretprobe:maxactive") in py
    c = c_uses("int f(void *ctx) {\n  u64 j = bpf_jiffies64();\n#ifdef HAVE_X\n  u64 k = bpf_jiffies64();\n#endif\n}\n")
    assert c == [("bpf_jiffies64", ()), ("bpf_jiffies64", ("#ifdef HAVE_X",))]
