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
        super().__init__(self.line())

    def line(self) -> str:
        parts = [p for p in (self.source, self.field) if p]
        return ": ".join([*parts, self.message])
