"""The one table of tools: each tool's command, its recording renderer, its plan in words and its incident report.

The CLI adds the commands from it; ``bpftools report`` finds a recording's renderer and report here
(a live run with ``--report`` is handed the same function by its tool). Adding a tool is its module
under ``bpftools/tools/`` plus one entry in :data:`TOOLS`.
"""
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, Optional

from dataclasses import dataclass

from .errors import BadInput
from .exports import now_iso
from .tools import iojitter, kmemsnoop, mempoolwait, netdevwait, refleak, slabfail, watch, writeslow

Renderer = Callable[[Any, Any], None]                                  # (recording: its events read once, console)
ReportBuilder = Callable[[Dict[str, Any], Iterable[Dict[str, Any]], str], Any]  # (header, events read once, generated)


@dataclass(frozen=True)
class Tool:
    """One tool: the click command (its name is the tool's), how `bpftools report` shows a recording
    of it, and (tools with exports) the incident report built from a recording. Both read the events
    once, as a stream of any length, in bounded memory."""

    command: Any
    render_recording: Renderer
    outline: Callable[[Any], Any]       # (kernel.target.Target) -> capture.Outline: the default plan there
    incident_report: Optional[ReportBuilder] = None

    @property
    def name(self) -> str:
        return self.command.name


TOOLS = OrderedDict((t.name, t) for t in (
    Tool(kmemsnoop.command, kmemsnoop.render_recording, kmemsnoop.outline, kmemsnoop.incident_report),
    Tool(slabfail.command, slabfail.render_recording, slabfail.outline),
    Tool(mempoolwait.command, mempoolwait.render_recording, mempoolwait.outline),
    Tool(writeslow.command, writeslow.render_recording, writeslow.outline),
    Tool(iojitter.command, iojitter.render_recording, iojitter.outline, iojitter.incident_report),
    Tool(netdevwait.command, netdevwait.render_recording, netdevwait.outline, netdevwait.incident_report),
    Tool(refleak.command, refleak.render_recording, refleak.outline, refleak.incident_report),
    Tool(*watch.tool_parts(iojitter=iojitter, kmemsnoop=kmemsnoop, netdevwait=netdevwait)),
))


def tool_named(name: Any) -> Optional[Tool]:
    """The tool called NAME (as a recording's header says it), or None for anything else."""
    return TOOLS.get(name) if isinstance(name, str) else None


def build_report(header: Dict[str, Any], events: Iterable[Dict[str, Any]], generated: Optional[str] = None) -> Any:
    """The IncidentReport of a recording made by any tool that has one; EVENTS (a list, or a stream of any
    length) are read once."""
    tool = tool_named(header.get("tool"))
    if tool is None or tool.incident_report is None:
        raise BadInput("no report exporter for recordings of %r" % str(header.get("tool", "")))
    return tool.incident_report(header, events, generated or now_iso())
