"""Command-line pieces every bpftools command shares: click context settings and value checks."""
from typing import Optional

import click

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def positive(ctx: click.Context, param: click.Parameter, value: Optional[float]) -> Optional[float]:
    """click callback: a number > 0."""
    if value is not None and value <= 0:
        raise click.BadParameter("must be > 0")
    return value
