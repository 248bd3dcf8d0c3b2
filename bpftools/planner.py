"""``bpftools plan``: what each tool would attach on a kernel, which fallbacks it takes and why, without
loading anything; for this node, or for another kernel described by files (a CentOS 7 node's kallsyms
read from a laptop). The plans come from the tools' own planners through bpftools.kernel.target."""
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import click

from .errors import BadInput, MissingKernelFeature
from .kernel.hostroot import host_path
from .kernel.kconfig import parse_config
from .kernel.target import CONFIG, FACTS, KALLSYMS, Described, Running, Target, describe, read_text
from .options import CONTEXT
from .outfiles import Directory
from .registry import TOOLS


def plan_all(target: Target, names: List[str]) -> List[Dict[str, Any]]:
    """Each named tool's outline on TARGET; a tool that cannot run there says why."""
    out = []
    for name in names:
        try:
            entry = TOOLS[name].outline(target).to_json()
        except MissingKernelFeature as err:
            entry = {"mode": "cannot run", "attaches": [], "notes": [str(err)], "off": []}
        entry["tool"] = name
        out.append(entry)
    return out


def load_target(kernel_dir: Optional[str], kallsyms: Optional[str], release: Optional[str],
                config: Optional[str]) -> Target:
    """The kernel asked about: a described one (--kernel, or --kallsyms with --release), else this node."""
    if kernel_dir and (kallsyms or release or config):
        raise BadInput("--kernel DIR already holds kallsyms, config and facts: give it alone")
    if kernel_dir:
        return Described.from_dir(kernel_dir)
    if kallsyms or release or config:
        if not (kallsyms and release):
            raise BadInput("a kernel described by files needs both --kallsyms FILE and --release RELEASE")
        config_values = parse_config(read_text(config)) if config else None
        return Described(release, read_text(kallsyms).splitlines(), config_values)
    return Running()


def save_kernel(path: str) -> List[str]:
    """Plan every tool on this node, then write what the plans read to PATH (a --kernel directory)."""
    target = Running()
    plan_all(target, list(TOOLS))
    lines, facts = describe(target)
    files = [(KALLSYMS, "\n".join(lines) + "\n"), (FACTS, json.dumps(facts, indent=1, sort_keys=True) + "\n")]
    config = host_path("/boot/config-%s" % target.release)
    if os.path.exists(config):
        files.append((CONFIG, read_text(config)))
    with Directory(path, create=True) as out:
        return [out.write_text(name, text) for name, text in files]


def render(target: Target, plans: List[Dict[str, Any]]) -> str:
    """The plans as text: per tool its mode, attach points, notes and what is off."""
    out = ["kernel %s (%s)" % (target.release, "this node" if target.live else "described")]
    out += ["  assumed: %s" % a for a in target.assumptions]
    for p in plans:
        out.append("")
        out.append("%s: %s" % (p["tool"], p["mode"]))
        out += ["  attach %s" % a for a in p["attaches"]]
        out += ["  why: %s" % n for n in p["notes"]]
        out += ["  off: %s" % o for o in p["off"]]
    return "\n".join(out)


@click.command("plan", context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools plan                          # every tool on this node (root), nothing loaded
  bpftools plan refleak kmemsnoop        # two tools
  bpftools plan --save-kernel node-a     # describe this node for planning elsewhere
  bpftools plan --kernel node-a          # every tool on that node's kernel
  bpftools plan writeslow --release 3.10.0-957.el7.x86_64 --kallsyms System.map --config config-3.10.0-957.el7.x86_64
""")
@click.argument("tools", metavar="[TOOL]...", nargs=-1)
@click.option("--kernel", "kernel_dir", metavar="DIR", help="A kernel described by --save-kernel on its node.")
@click.option("--kallsyms", metavar="FILE", help="That kernel's /proc/kallsyms (or System.map).")
@click.option("--release", metavar="RELEASE", help="That kernel's release (uname -r).")
@click.option("--config", metavar="FILE", help="That kernel's build config (/boot/config-RELEASE).")
@click.option("--save-kernel", metavar="DIR", help="Write this node's description to DIR (for --kernel) and exit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def command(tools: Tuple[str, ...], kernel_dir: Optional[str], kallsyms: Optional[str], release: Optional[str],
            config: Optional[str], save_kernel: Optional[str], as_json: bool) -> None:
    """What each tool would attach on a kernel, its fallbacks and why: nothing is loaded."""
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        raise BadInput("no tool named %s: choose from %s" % (", ".join(unknown), ", ".join(TOOLS)))
    if save_kernel:
        for path in save_kernel_files(save_kernel, kernel_dir, kallsyms, release, config):
            click.echo("wrote %s" % path, err=True)
        return
    target = load_target(kernel_dir, kallsyms, release, config)
    plans = plan_all(target, list(tools) or list(TOOLS))
    if as_json:
        click.echo(json.dumps({"kernel_release": target.release, "described": not target.live,
                               "assumed": target.assumptions, "plans": plans}, indent=1, sort_keys=True))
    else:
        click.echo(render(target, plans))


def save_kernel_files(path: str, *described: Optional[str]) -> List[str]:
    """--save-kernel: this node only."""
    if any(described):
        raise BadInput("--save-kernel describes this node: give it without --kernel/--kallsyms/--release/--config")
    return save_kernel(path)
