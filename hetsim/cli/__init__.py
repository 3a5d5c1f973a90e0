"""The ``hetsim`` command line (typer + rich): flags in, tables and JSON out, one-line errors.

``app`` is the typer application, ``main`` runs it with hetsim's error handling; the console script
is ``hetsim.cli.entry:run``. The commands live in ``app`` (compare, plan, simulate, model, hw),
``serve`` and ``sweep``; ``validate.cli`` adds calibrate and validate when the package has it.
``app`` and ``main`` are imported on first use: the console script installs its signal handlers
before the ~0.25 s of imports behind them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hetsim.cli.commands import app, main

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hetsim.cli import commands

        return getattr(commands, name)
    raise AttributeError(f"module 'hetsim.cli' has no attribute {name!r}")
