"""The ``hetsim`` process: the console script (``hetsim = hetsim.cli.entry:run``) and
``python -m hetsim.cli``. ``main`` handles signals while a command runs (``hetsim.cli.stop``); this
covers the process around it, so Ctrl-C never prints a traceback: during the start-up imports
(~0.25 s, before ``main``) SIGINT/SIGTERM end it with one line and 128 + the signal (inside ``main``
before its ``Stop`` has its handlers in, ``main`` says the command's line, naming the signal this
raise names); after ``main`` returned (the command's output complete, flushed here) they end it at
once, silently.
"""

from __future__ import annotations

import gc
import signal
import sys
from typing import NoReturn

from hetsim.cli.collecting import CLI_GC_THRESHOLD

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run() -> NoReturn:
    got: list[int] = []

    def early(signum: int, frame: object) -> None:  # main's Stop replaces it while a command runs
        got.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)  # named: ``main`` says which stopped it

    for sig in SIGNALS:
        signal.signal(sig, early)
    started = False
    code = 0
    gc.set_threshold(CLI_GC_THRESHOLD, *gc.get_threshold()[1:])  # the process's own: never restored
    try:
        from hetsim.cli.commands import exit_process, main

        started = True
        code = main(process=True)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except KeyboardInterrupt:  # before main's Stop, or after it (the output was complete)
        signum = got[-1] if got else signal.SIGINT
        if not started:
            sys.stderr.write(f"interrupted by {signal.Signals(signum).name}: hetsim stopped while starting\n")
        code = 128 + signum
    finally:  # from here (the interpreter's exit) a signal ends the process at once, quietly
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
    if not started:
        sys.exit(code)
    exit_process(code)
