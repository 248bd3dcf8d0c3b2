"""A bounded ring of recent events: the last MAX_EVENTS, none older than MAX_AGE seconds."""
import collections
from typing import Any, Deque, Dict, List, Tuple


class Ring(object):
    """Events in arrival order, each with its arrival sequence number and monotonic arrival time.

    >>> ring = Ring(max_events=2, max_age=60.0)
    >>> for seq, text in enumerate("abc"):
    ...     ring.add(seq, 0.0, {"e": text})
    >>> [e["e"] for _, e in ring.entries()]
    ['b', 'c']
    """

    def __init__(self, max_events: int, max_age: float) -> None:
        self.max_age = max_age
        self._items = collections.deque(maxlen=max_events)  # type: Deque[Tuple[int, float, Dict[str, Any]]]
        self.dropped = 0         # events pushed out by newer ones (count or age)

    def add(self, seq: int, now: float, event: Dict[str, Any]) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append((seq, now, event))

    def expire(self, now: float) -> None:
        """Drop the events older than MAX_AGE seconds at NOW."""
        while self._items and now - self._items[0][1] > self.max_age:
            self._items.popleft()
            self.dropped += 1

    def entries(self) -> List[Tuple[int, Dict[str, Any]]]:
        """(sequence number, event) of what the ring holds, oldest first."""
        return [(seq, event) for seq, _, event in self._items]

    def __len__(self) -> int:
        return len(self._items)
