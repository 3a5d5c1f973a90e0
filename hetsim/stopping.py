"""Work that turns a stopped run into what it keeps (``keeping``), told to whoever times the stop.

The CLI's ``Stop`` (hetsim.cli.stop) ends hetsim's process if a command is not gone a few seconds
after Ctrl-C or SIGTERM, in case its unwinding hangs. Building and printing what a stopped serve or
compare keeps is unwinding too, and on a busy machine can outlast that clock: the process would end
mid-print (a JSON document cut short). Code below the CLI (serving, api) cannot import it, so it
marks that work here; the ``Stop`` listens. A second signal still ends the process at once.

Standard library only; nothing here runs unless a signal stopped a command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Called with True as kept work begins, False as it ends (nested blocks call each time).
_LISTENERS: list[Callable[[bool], None]] = []


def listen(listener: Callable[[bool], None]) -> Callable[[], None]:
    """Tell ``listener`` of every ``keeping`` block until the returned function is called."""
    _LISTENERS.append(listener)
    return lambda: _LISTENERS.remove(listener) if listener in _LISTENERS else None


@contextmanager
def keeping() -> Iterator[None]:
    """A block that builds or writes what a stopped run keeps: not cut short by the stop's clock."""
    for listener in list(_LISTENERS):
        listener(True)
    try:
        yield
    finally:
        for listener in list(_LISTENERS):
            listener(False)
