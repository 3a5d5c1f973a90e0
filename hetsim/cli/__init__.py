"""The ``hetsim`` command line (typer + rich): flags in, tables and JSON out, one-line errors.

``app`` is the typer application (the console script ``hetsim = hetsim.cli:app``), ``main`` runs it
with hetsim's error handling. The commands live in ``app`` (compare, plan, simulate, model, hw),
``serve`` and ``sweep``; ``validate.cli`` adds calibrate and validate when the package has it.
"""

from hetsim.cli.commands import app, main

__all__ = ["app", "main"]
