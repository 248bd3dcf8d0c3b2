"""Command-line pieces every bpftools command shares: click context settings and the value types.

Every float option and argument takes a :class:`FiniteFloat` (NaN and infinity pass a ``> 0`` check,
so they are refused first); every file or directory a command writes takes :data:`PATH`.
"""
import math
from typing import Any, Optional

import click

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


class FiniteFloat(click.ParamType):
    """A finite number (not NaN, not infinity), at least MINIMUM, or above it when EXCLUSIVE.

    >>> FiniteFloat(0, exclusive=True).convert("2.5", None, None)
    2.5
    """

    name = "float"

    def __init__(self, minimum: Optional[float] = None, exclusive: bool = False) -> None:
        self.minimum = minimum
        self.exclusive = exclusive

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail("%r is not a number" % (value,), param, ctx)
        if not math.isfinite(number):
            self.fail("%r is not a finite number" % (value,), param, ctx)
        if self.minimum is not None and (number < self.minimum or self.exclusive and number == self.minimum):
            self.fail("must be %s %g" % (">" if self.exclusive else ">=", self.minimum), param, ctx)
        return number

    def __repr__(self) -> str:
        return "FiniteFloat(%r, exclusive=%r)" % (self.minimum, self.exclusive)


FINITE = FiniteFloat()                           # any finite number (the command checks its range)
POSITIVE = FiniteFloat(0, exclusive=True)        # durations, intervals: > 0
NON_NEGATIVE = FiniteFloat(0)                    # thresholds: >= 0


class NonEmptyPath(click.ParamType):
    """A file or directory name that is not empty (``--report ''`` would otherwise be ignored)."""

    name = "path"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> str:
        if not value:
            self.fail("an empty name: give a file or directory", param, ctx)
        return str(value)


PATH = NonEmptyPath()
