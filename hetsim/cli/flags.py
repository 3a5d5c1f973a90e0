"""Flags that only matter with another: given alone they did nothing and said nothing.

``needs(ctx, "--slo-ref", "--slo-scale", slo_scale is not None)``: a flag the user typed (not its
default; typer's click records where each value came from) whose partner is absent is one ``InputError``
naming both (exit 2), as ``--drop-late needs --slo or --slo-scale`` already was.
"""

from __future__ import annotations

import typer

from hetsim.errors import InputError


def given(ctx: typer.Context, flag: str) -> bool:
    """Whether ``flag`` ("--slo-ref", or an argument's name) was on the command line."""
    name = next((p.name for p in ctx.command.params if flag in p.opts or flag.lower() == p.name), None)
    if name is None:  # a misspelt flag here would make its check never fire, silently
        raise ValueError(f"{ctx.command.name} has no flag {flag}")
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", None) == "COMMANDLINE"  # typer carries its own click's enum


def needs(ctx: typer.Context, flag: str, other: str, present: bool) -> None:
    """``flag`` given without ``other`` (``present``: whether ``other`` is in effect): refused."""
    if given(ctx, flag) and not present:
        raise InputError(f"{flag} needs {other} (alone it does nothing)", field=flag)


def not_with(ctx: typer.Context, flag: str, other: str, present: bool) -> None:
    """``flag`` given where ``other`` makes it moot: refused."""
    if given(ctx, flag) and present:
        raise InputError(f"{flag} does nothing with {other}: drop one", field=flag)
