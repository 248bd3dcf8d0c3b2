"""Dataclass records that round-trip through a recording's JSON."""
from typing import Any, Dict, Type, TypeVar

from dataclasses import asdict

T = TypeVar("T", bound="JsonRecord")


class JsonRecord(object):
    """Mixin for a dataclass: ``to_json`` is its fields; ``from_json`` ignores unknown keys and takes
    missing ones as None, so recordings from other versions still load."""

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls: Type[T], obj: Dict[str, Any]) -> T:
        return cls(**dict((k, obj.get(k)) for k in cls.__dataclass_fields__))  # type: ignore
