"""The house's layers, checked from the source: every import points down, no import loop, and only the
CLI and the registry import the tools.

Layers, top to bottom (README, "Layout"): the CLI; the registry; the tools (command faces); the wings
(one per incident, and doctor/repro); the shared capture, live-run and export layers; kernel facts;
the pure analyses; the base (errors, the probes' C, the version). A module may import its own layer
or any below it.
"""
import ast
import collections
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = [
    ("cli", {"cli", "planner"}),
    ("registry", {"registry"}),
    ("tools", {"tools"}),
    ("wings", {"iostall", "refleak", "repro", "doctor", "npd", "kmem_audit", "runtimes", "watch"}),
    ("shared", {"live", "capture", "kstacks", "exports", "outfiles", "render", "html_report", "flamegraph", "recording",
                "event", "options", "signals", "pointers"}),
    ("kernel", {"kernel"}),
    ("analyses", {"analyses"}),
    ("base", {"", "errors", "probes"}),
]
TOOL_IMPORTERS = {"bpftools.cli", "bpftools.registry"}
SEPARATE_WINGS = ("bpftools.iostall", "bpftools.refleak")


def _module_of(path):
    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if parts[0] in ("analyses", "probes"):      # installed as bpftools.analyses / bpftools.probes
        parts = ["bpftools"] + parts
    package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if package else parts), package


def _sources():
    for top in ("bpftools", "analyses", "probes"):
        for base, _, files in os.walk(os.path.join(ROOT, top)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.join(base, name)


def import_graph():
    """module -> {(imported bpftools module or name, line)}; relative imports resolved."""
    graph = collections.defaultdict(set)
    for path in _sources():
        module, package = _module_of(path)
        here = module.split(".") if package else module.split(".")[:-1]
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1]) if node.level else ""
                target = ".".join(p for p in (base, node.module or "") if p)
                # "from PKG import NAME": NAME may be a module of PKG (resolved by _as_module)
                names = [target + "." + a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name == "bpftools" or name.startswith("bpftools."):
                    graph[module].add((name, node.lineno))
    return graph


def _known_modules():
    return {_module_of(p)[0] for p in _sources()}


def _as_module(name, known):
    """The module NAME is (``a.b.func`` -> ``a.b``)."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def layer_of(module):
    part = module.split(".")[1] if module.count(".") else ""
    for rank, (_, members) in enumerate(LAYERS):
        if part in members:
            return rank
    raise AssertionError("%s is in no layer: add it to LAYERS (and the README's Layout)" % module)


def _edges():
    known = _known_modules()
    for module, targets in sorted(import_graph().items()):
        for name, line in sorted(targets):
            target = _as_module(name, known)
            if target != module:
                yield module, target, line


def test_every_module_has_a_layer():
    for module in sorted(_known_modules()):
        layer_of(module)


def test_imports_point_down():
    upward = ["%s:%d imports %s (%s above %s)" % (m, line, t, LAYERS[layer_of(t)][0], LAYERS[layer_of(m)][0])
              for m, t, line in _edges() if layer_of(t) < layer_of(m)]
    assert upward == []


def test_no_import_loop():
    graph = collections.defaultdict(set)
    for module, target, _ in _edges():
        graph[module].add(target)
    state = {}   # module -> 1 visiting, 2 done
    loops = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                loops.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert loops == []


def test_only_the_cli_and_the_registry_import_the_tools():
    importers = sorted("%s:%d" % (m, line) for m, t, line in _edges()
                       if t.startswith("bpftools.tools") and not m.startswith("bpftools.tools")
                       and m not in TOOL_IMPORTERS)
    assert importers == []


def test_tools_never_import_each_other():
    """What two tools share lives below them (bcc's rule): a tool module imports no other tool."""
    pairs = sorted("%s:%d imports %s" % (m, line, t) for m, t, line in _edges()
                   if m.startswith("bpftools.tools.") and t.startswith("bpftools.tools"))
    assert pairs == []


@pytest.mark.parametrize("wing", SEPARATE_WINGS)
def test_the_incident_wings_stay_apart(wing):
    others = [w for w in SEPARATE_WINGS if w != wing]
    crossing = sorted("%s:%d imports %s" % (m, line, t) for m, t, line in _edges()
                      if m.startswith(wing) and any(t.startswith(o) for o in others))
    assert crossing == []


def test_imports_sit_at_module_top_unless_lazy_on_purpose():
    """In-function imports are for heavy or optional packages only, each with a comment saying why."""
    lazy = []
    for path in _sources():
        source = open(path, encoding="utf-8").read()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        text = " ".join(lines[max(0, inner.lineno - 4):inner.lineno])   # the line and 3 above
                        if "lazy:" not in text:
                            lazy.append("%s:%d" % (os.path.relpath(path, ROOT), inner.lineno))
    assert lazy == []


def test_the_checks_see_a_loop_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above are not vacuous: a planted loop and upward import are found."""
    pkg = tmp_path / "bpftools"
    (pkg / "kernel").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "kernel" / "__init__.py").write_text("")
    (pkg / "kernel" / "a.py").write_text("from ..live import x\n")
    (pkg / "live.py").write_text("from .kernel.a import y\n")
    monkeypatch.setitem(globals(), "ROOT", str(tmp_path))
    edges = sorted((m, t) for m, t, _ in _edges())
    assert edges == [("bpftools.kernel.a", "bpftools.live"), ("bpftools.live", "bpftools.kernel.a")]
    with pytest.raises(AssertionError):
        test_imports_point_down()
    with pytest.raises(AssertionError):
        test_no_import_loop()
