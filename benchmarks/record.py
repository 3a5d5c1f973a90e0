"""The one writer of ``benchmarks/results.md``: every benchmark appends its own table here, with
the date, the machine and its load, so the numbers in the docs are the ones a script printed.

Timings on the shared development machine move 2-3x with its load: scripts measure the baseline
in the same run (alternating with what they compare) and report the minimum and median of several
runs, wall time and CPU time (user + system, which the load moves less).
"""

from __future__ import annotations

import datetime
import fcntl  # POSIX, as ``resource``: the benchmarks run on Linux
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.md"


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()}-core {platform.machine()}, Python {platform.python_version()}, "
        f"load average {load:.1f}"
    )


def min_median(xs: Sequence[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(min(xs))} / {fmt.format(statistics.median(xs))}"


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: Sequence[str], **kwargs) -> tuple[float, float, bytes]:
    """(wall s, CPU s of the process and of the workers it waited for, stdout) of one fresh process."""
    cpu0, t0 = children_cpu_s(), time.perf_counter()
    proc = subprocess.run(list(cmd), capture_output=True, check=True, **kwargs)
    return time.perf_counter() - t0, children_cpu_s() - cpu0, proc.stdout


def append(title: str, table: str, note: str = "", *, write: bool = True) -> str:
    """Print the section and, unless ``write`` is off, append it to ``results.md``."""
    section = f"\n## {datetime.date.today().isoformat()}: {title} ({machine()})\n\n{table}\n"
    if note:
        section += f"\n{note}\n"
    print(section)
    if write:
        append_whole(RESULTS, section)
    return section


def append_whole(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` as one piece: benchmarks run at once (several engineers, one file)
    take turns under an exclusive ``flock``, so sections never interleave. On a local Linux disk one
    ``write`` with ``O_APPEND`` lands whole anyway (4 processes x 300 sections of 100 KB: none mixed);
    NFS does not promise that, nor Python one ``write`` per section."""
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.write(text)
        f.flush()
