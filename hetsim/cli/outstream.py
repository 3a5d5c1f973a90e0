"""Standard output named in its write errors: ``hetsim compare > /dev/full`` said only "error: [Errno
28] No space left on device" (the OS error of a write to a stream carries no file name), naming
neither the output nor the file behind it."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

NAME = "standard output"


class _Named:
    """``stream`` whose write errors name it (``OSError.filename``): every other attribute is the
    stream's own (rich and click ask for ``isatty``, ``encoding``, ``buffer``)."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream, self._name = stream, name

    def _named(self, exc: OSError) -> OSError:
        return exc if exc.filename is not None else OSError(exc.errno, exc.strerror, self._name)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise self._named(exc) from None

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._named(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def named_stdout() -> Iterator[None]:
    """``sys.stdout`` naming itself in its write errors while the block runs, flushed at its end (a
    failure there is the block's: the output is short), then the stream it was."""
    stream = sys.stdout
    if stream is None:  # pythonw, or closed by the caller: nothing to name
        yield
        return
    sys.stdout = _Named(stream, NAME)  # type: ignore[assignment]
    try:
        yield
        sys.stdout.flush()
    finally:
        sys.stdout = stream
