"""Typed event records: a dataclass with a ``TYPE`` name that round-trips through a recording's JSON."""
from typing import Any, Dict, Type, TypeVar

from dataclasses import asdict

T = TypeVar("T", bound="JsonEvent")


class JsonEvent(object):
    """Mixin for a dataclass event: ``to_json`` adds ``"type": TYPE``; ``from_json`` ignores unknown keys
    and takes missing ones as None, so recordings from other versions still load."""

    TYPE = ""

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["type"] = self.TYPE
        return out

    @classmethod
    def from_json(cls: Type[T], obj: Dict[str, Any]) -> T:
        return cls(**dict((k, obj.get(k)) for k in cls.__dataclass_fields__))  # type: ignore
