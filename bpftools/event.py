"""Typed event records: a dataclass with a ``TYPE`` name that round-trips through a recording's JSON."""
from typing import Any, Dict

from .analyses.records import JsonRecord


class JsonEvent(JsonRecord):
    """Mixin for a dataclass event: ``to_json`` adds ``"type": TYPE`` to the fields (``from_json`` as
    :class:`JsonRecord`'s)."""

    TYPE = ""

    def to_json(self) -> Dict[str, Any]:
        out = JsonRecord.to_json(self)
        out["type"] = self.TYPE
        return out
