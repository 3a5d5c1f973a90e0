"""Errors that carry enough context to print one clear line for the user.

Anything raised at the boundary (files, flags) is an ``InputError``: the CLI prints
``error: <file>: <field>: <message>`` and exits with code 2, never a traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad user input: a file, a field in it, or a flag."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.message = message
        self.source = source
        self.field = field
        # the caller's argument whose value gave the file or name (``api.problem``'s "model" or "hw"),
        # for the CLI to name its flag where two flags give the same path; not part of the line
        self.argument: str | None = None
        super().__init__(self.line())

    def line(self) -> str:
        parts = [p for p in (self.source, self.field) if p]
        return ": ".join([*parts, self.message])
