"""Stopping a command on SIGINT/SIGTERM: one line, exit 128 + the signal, its forked workers killed.

``main`` (hetsim.cli.commands) holds a ``Stop`` while a command runs; the sweep installs its own
handler on top (it keeps finished points and says so). A command that keeps something when
stopped (compare's finished strategies, plan's written ``--out``) says what with ``keep``.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from typing import Any

from hetsim import stopping

# Seconds a command stopped by a signal has to unwind (its workers are killed first: ~0.1 s) before
# the process ends without it; ending early only skips ``finally`` blocks of a command keeping nothing.
STOP_GRACE_S = 5.0
# Seconds past the grace period that building and printing what a stopped command keeps (its
# ``stopping.keeping`` blocks) may still take: a print blocked on a full pipe nobody reads would
# hold the process for ever. At the cap the process ends as at the grace period's end (its line,
# saying the output was cut short; 128 + the signal): stdout may end mid-document then.
KEEP_CAP_S = 60.0


class Stop:
    """SIGINT/SIGTERM while a command runs: the first unwinds it (``KeyboardInterrupt``, so ``finally``
    blocks run) after killing this process's forked workers (they hold no results; killed, not asked:
    one inside a solver would answer only when the solve returns). A second one, or ``STOP_GRACE_S``
    without the command gone, ends the process at once, in case the unwinding hangs or the raise was
    lost: only in hetsim's own process (``process``); in a caller's, each signal raises again. A
    forked worker that gets the signal itself (Ctrl-C reaches the whole process group) leaves at
    once, silently. A command that keeps partial results (``sweep``) installs its own
    handler and prints its own line; ``signum`` stays None then."""

    def __init__(self, command: str, process: bool = True) -> None:
        self.command = command
        # ``process``: the process is the command's own (the console script), so leaving it is
        # ours to do; in a caller's process (a script, a notebook calling ``main``) a second signal
        # raises again and nothing ends the process
        self.process = process
        self.signum: int | None = None
        self.pid = os.getpid()
        self.armed = False
        self.old: dict[int, Any] = {}
        self.timer: threading.Timer | None = None
        self.lost = False
        self.old_hook = sys.unraisablehook
        self.spare: frozenset[int] = frozenset()  # the children there before: not the command's
        # The line is said once: the grace timer's ``_leave`` can fire while the main flow, unstuck
        # by the timer's own kill of the workers, is saying it too (seen under CI load).
        self.said = False
        self.saying = threading.Lock()
        self.leaving = False
        self.kept: str | None = None  # what the command keeps if stopped now (``keep``); None: nothing
        self.entered = False  # the handlers were put in (a signal before went to the caller's)
        self.late: int | None = None  # a signal after the command's output (``__exit__``): noted only
        # ``stopping.keeping`` blocks under way (building or printing what a stopped command keeps):
        # the grace clock waits for them, then starts again (``due``: it ran out meanwhile)
        self.keeps = 0
        self.due = False
        self.cap: threading.Timer | None = None  # ``KEEP_CAP_S``, from a wait for them to its end
        self.clock = threading.Lock()
        self.unlisten = lambda: None

    def __enter__(self) -> Stop:
        _RUNNING.append(self)
        self.spare = frozenset(_children())
        self.armed = True  # before the handlers: a signal the moment they are in stops the command
        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            self.old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            self.old_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        self.unlisten = stopping.listen(self._keeping)
        self.entered = True  # after: one before this may have met the caller's handler (``main`` names it)
        return self

    def __exit__(self, *exc: object) -> None:
        # From here a signal is only noted (``late``): the command's output is complete. The handlers
        # stay until ``restore`` (``main``'s end), so one now still gives 128 + its number, silently.
        self.armed = False
        if self in _RUNNING:
            _RUNNING.remove(self)
        self._cancel_clocks()

    def _cancel_clocks(self) -> None:
        for timer in (self.timer, self.cap):
            if timer is not None:
                timer.cancel()

    def restore(self) -> None:
        """Put back the handlers (and the unraisable hook) that were there before ``__enter__``; in a
        caller's process, a signal noted after the command's output (``late``) then goes to the
        caller's handler, as it would a moment later (hetsim's own process exits 128 + it instead)."""
        self.armed = False
        if self in _RUNNING:  # entered, and stopped before its ``with`` block began
            _RUNNING.remove(self)
        self._cancel_clocks()  # the command is gone: no need to end it
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        if self.old:
            sys.unraisablehook = self.old_hook
        self.old = {}
        self.unlisten()
        late, self.late = self.late, None
        if late is not None and not self.process:
            signal.raise_signal(late)

    def _unraisable(self, unraisable: Any) -> None:
        """The raise landed where Python can only print it (an at-fork hook while compare's pool
        forks: "Exception ignored in ..." and a traceback, and compare searched on): deliver it again,
        in the main flow."""
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.signum is not None and self.armed:
            self.lost = True
            self._redeliver()
        else:
            self.old_hook(unraisable)

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self.pid:
            os._exit(128 + signum)  # a forked worker: nothing of its own to keep or say
        if not self.armed or self.leaving:  # leaving: ``_leave`` ends the process, its line first
            self.late = self.late or (None if self.leaving else signum)
            return
        if self.signum is not None and self.lost:  # the first one's raise, delivered again
            if _inside(frame, Stop._unraisable):  # still in the hook: raised here, it is printed
                self._redeliver()
                return
            self.lost = False
            kill_children(self.spare)  # a worker forked since the first kill (the hook ran at a fork)
            raise KeyboardInterrupt(signal.Signals(self.signum).name)
        if self.signum is not None and self.process:  # a second one: the unwinding is stuck, so leave now
            self._leave()
        self.signum = self.signum or signum
        kill_children(self.spare)
        # The raise below can be lost (``_unraisable`` delivers it again; a command's own
        # ``except BaseException`` could still swallow it): one not gone within the grace period is
        # ended at once.
        if self.process and self.timer is None:
            self._start_clock()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def _start_clock(self) -> None:
        self.timer = threading.Timer(STOP_GRACE_S, self._timed_out)
        self.timer.daemon = True
        self.timer.start()

    def _timed_out(self) -> None:
        with self.clock:  # held to the end: a ``keeping`` block beginning now waits for the exit
            if self.keeps > 0:
                self.due = True  # its end starts the clock again
                if self.cap is None:  # but not for ever
                    self.cap = threading.Timer(KEEP_CAP_S, self._capped)
                    self.cap.args = (self.cap,)  # one cancelled as it fired is not the next wait's
                    self.cap.daemon = True
                    self.cap.start()
                return
            self._leave()

    def _capped(self, cap: threading.Timer) -> None:
        """What is kept still not built or printed ``KEEP_CAP_S`` past the grace period: end now."""
        with self.clock:
            if not self.armed or cap is not self.cap:  # the wait ended as it fired (``_keeping``)
                return
            cut = f"cut short: still printing it {KEEP_CAP_S:g} s past the grace period"
            self.kept = f"{self.kept}; {cut}" if self.kept else f"what it keeps was {cut}"
            self._leave()

    def _keeping(self, on: bool) -> None:
        """``stopping.keeping``'s listener: the grace clock waits while what is kept is built or printed."""
        with self.clock:
            self.keeps += 1 if on else -1
            if self.keeps == 0 and self.cap is not None:
                # the cap is per wait: one print blocked on a pipe. Kept running, it cut a later block
                # short by however long this one took, its line still saying "60 s past the grace period"
                self.cap.cancel()
                self.cap = None
            if self.keeps == 0 and self.due and self.armed:
                self.due = False
                self._start_clock()

    def _redeliver(self) -> None:
        """The signal again, from another thread (it waits for nothing, so this one moves on first);
        not once the command is over (``main`` then says the line: a late one would raise anywhere)."""
        _thread.start_new_thread(self._again, ())

    def _again(self) -> None:
        if self.armed:
            _thread.interrupt_main(self.signum or signal.SIGINT)

    def _leave(self) -> None:
        # set first: a third signal landing in ``say`` would otherwise wait for the lock it holds
        self.leaving = True
        kill_children(self.spare)
        self.say()
        os._exit(128 + (self.signum or signal.SIGINT))

    def say(self) -> None:
        """Write ``line`` to stderr unless it was written (from the main flow or the grace timer)."""
        with self.saying:
            if not self.said:
                sys.stderr.write(self.line())
                sys.stderr.flush()
                self.said = True

    def line(self) -> str:
        """What stopped and what was kept (``keep``; by default nothing: these commands write their
        output at the end)."""
        name = signal.Signals(self.signum or signal.SIGINT).name
        kept = self.kept or "it keeps no partial results"
        return f"interrupted by {name}: {self.command} stopped ({kept})\n"


_RUNNING: list[Stop] = []  # the Stop of the command running (main's), innermost last


def keep(what: str) -> None:
    """What the running command keeps if a signal stops it from now on (written, or printed while
    it unwinds), for its interrupted line; nothing when no ``Stop`` is held (a direct call)."""
    if _RUNNING:
        _RUNNING[-1].kept = what


def stopping_signal() -> str:
    """The name of the signal stopping the running command ("SIGINT": a bare ``KeyboardInterrupt``)."""
    signum = _RUNNING[-1].signum if _RUNNING else None
    return signal.Signals(signum or signal.SIGINT).name


def signal_of(exc: KeyboardInterrupt) -> int:
    """The signal a ``KeyboardInterrupt`` stands for: the one named in it (``Stop``'s handler and the
    console script's raise it naming the signal), else SIGINT (Python's own Ctrl-C handler)."""
    name = exc.args[0] if exc.args else None
    return (
        int(getattr(signal, name))
        if isinstance(name, str) and name in ("SIGINT", "SIGTERM")
        else signal.SIGINT
    )


def _inside(frame: Any, function: Any) -> bool:
    while frame is not None:
        if frame.f_code is function.__code__:
            return True
        frame = frame.f_back
    return False


def _children() -> set[int]:
    """This process's children: those the kernel lists (Linux), else those multiprocessing knows of."""
    pids: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
    except OSError:
        mp = sys.modules.get("multiprocessing")
        pids.update(c.pid for c in mp.active_children() if c.pid) if mp else None
    return pids


def kill_children(spare: frozenset[int] = frozenset()) -> None:
    """SIGKILL this process's children (a stopped command's search workers) but those in ``spare``:
    the children the process had before the command (a caller of ``main`` may have its own)."""
    for pid in _children() - spare:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows has no SIGKILL
