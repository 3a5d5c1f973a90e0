"""Where the headline compare's wall goes: each process's CPU and the timeline of its forks, imports and
search jobs, for runs of

    hetsim compare --model llama2-70b --hw mixed-lab --prompt-len 512 --gen-len 32 --format json

    .venv/bin/python benchmarks/compare_timeline.py [--repeats 5] [--base DIR] [--no-record] [--label TEXT]

Each run is a fresh process (bytecode cached under a temporary ``PYTHONPYCACHEPREFIX``, as from a user's
second run) started through a small wrapper that replaces four functions of ``hetsim.workers`` (standard
library only, imported by the CLI before anything heavy, so the timeline is the CLI's own) with ones that
stamp (pid, wall s since launch, the process's CPU s) on the way: the parent's early fork, each worker's
start and the end of its imports, the first job handed out (the problem is read), each job's start and
end (the worker's CPU then), and a pool forked late. The package is not changed.

With both cores busy from the early fork on, wall ~ (S + C) / 2, S the parent's CPU before that fork (a
core idle meanwhile) and C the whole tree's CPU (user + system, ``os.times``' waited-for children): the
table shows both, so a change can be judged by the CPU it saves or the idle core it fills, which the
machine's load moves far less than the wall. ``--base DIR`` (a checkout of the base) alternates with
this tree's runs; ``--show`` prints each run's timeline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import append, min_median

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["compare", "--model", "llama2-70b", "--hw", "mixed-lab", "--prompt-len", "512", "--gen-len", "32",
        "--format", "json"]  # fmt: skip

# The wrapper: the stamps go to $TIMELINE_FILE, one JSON list a line (pid, wall, cpu, what). A job's
# function is wrapped by one defined here (``__main__``), which a forked worker finds as it is.
WRAPPER = r"""
import json, os, sys, time
T0 = float(os.environ["TIMELINE_T0"])
OUT = os.environ["TIMELINE_FILE"]

def stamp(what):
    with open(OUT, "a") as f:
        f.write(json.dumps([os.getpid(), time.time() - T0, time.process_time(), what]) + "\n")

stamp("parent start")
from hetsim import workers
_start, _early, _pool, _scatter = workers._start, workers.early, workers.pool, workers.scatter
_in_early = []

def start(modules):
    stamp("worker start")
    _start(modules)
    stamp("worker imported")

def early(n, modules):
    stamp("early fork")
    _in_early.append(1)
    return _early(n, modules)

def pool(n, modules=()):
    if not _in_early:
        stamp("late fork")
    _in_early.clear()
    return _pool(n, modules)

def traced(fn, names, *args):
    stamp("job " + ",".join(names))
    out = fn(names, *args)
    stamp("done " + ",".join(names))
    return out

def scatter(pools, calls, *args, **kwargs):
    stamp("jobs out")
    out = _scatter(pools, [(traced, (fn, *a)) for fn, a in calls], *args, **kwargs)
    stamp("jobs back")
    return out

workers._start, workers.early, workers.pool, workers.scatter = start, early, pool, scatter
sys.argv = ["hetsim", *sys.argv[1:]]
from hetsim.cli.entry import run
run()
"""


def one_run(tree: Path, env: dict[str, str], log: Path) -> dict:
    """One traced run: wall, the stamps and stdout."""
    log.unlink(missing_ok=True)
    env = {**env, "TIMELINE_FILE": str(log), "TIMELINE_T0": repr(time.time())}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *ARGS],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{tree}: exit {proc.returncode}: {err.decode()[-500:]}")
    stamps = [json.loads(line) for line in log.read_text().splitlines()]
    return {"wall": wall, "stamps": sorted(stamps, key=lambda s: s[1]), "stdout": out}


def summary(run: dict, cpu: float) -> dict[str, float]:
    """The run's numbers: S (the parent's CPU at the early fork), the problem read (wall), each
    worker's CPU at its last job's end, the model's (S + C) / 2."""
    st = run["stamps"]
    parent = st[0][0]
    first = {what: (t, c) for pid, t, c, what in reversed(st) if pid == parent}
    s = first.get("early fork", (0.0, 0.0))[1]
    workers: dict[int, float] = {}
    for pid, _, c, what in st:
        if pid != parent and what.startswith("done "):
            workers[pid] = c
    return {
        "wall": run["wall"],
        "cpu": cpu,
        "S": s,
        "fork_wall": first.get("early fork", (float("nan"), 0))[0],
        "jobs_out": first.get("jobs out", (float("nan"), 0))[0],
        "workers_cpu": sum(workers.values()),
        "model": (s + cpu) / 2,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--base", type=Path, help="a checkout of the base, run alternating with this tree")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results.md")
    ap.add_argument("--label", default="", help="what was measured, added to the title")
    ap.add_argument("--show", action="store_true", help="print each run's timeline")
    args = ap.parse_args()
    trees = {"": ROOT} if args.base is None else {"base": args.base.resolve(), "branch": ROOT}
    rows: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    outputs = set()
    with tempfile.TemporaryDirectory() as tmp:
        envs = {}
        for t, path in trees.items():
            env = {
                **os.environ,
                "PYTHONPATH": str(path),
                "PYTHONPYCACHEPREFIX": str(Path(tmp) / (t or "tree")),
            }
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            envs[t] = env
            one_run(path, env, Path(tmp) / "log")  # untimed: writes the bytecode
        for _ in range(args.repeats):
            for t, path in trees.items():
                before = os.times()
                run = one_run(path, envs[t], Path(tmp) / "log")
                after = os.times()
                cpu = sum(after[k] - before[k] for k in (2, 3))  # children's user and system
                rows[t].append(summary(run, cpu))
                outputs.add(run["stdout"])
                if args.show:
                    print(f"--- {t or 'tree'}: wall {run['wall']:.3f} s, CPU {cpu:.3f} s")
                    for pid, w, c, what in run["stamps"]:
                        print(f"{pid:>8} {w:7.3f} {c:7.3f}  {what}")
    lines = [
        f"| headline compare, gen 32, bytecode cached ({args.repeats} alternating runs): min / median | "
        "wall s | CPU s (C) | parent CPU at the early fork (S) | early fork, wall s | jobs out, wall s | "
        "workers' CPU at their last job | (S + C) / 2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, rs in rows.items():
        cells = [min_median([r[k] for r in rs], "{:.3f}") for k in
                 ("wall", "cpu", "S", "fork_wall", "jobs_out", "workers_cpu", "model")]  # fmt: skip
        lines.append(f"| {t or 'this tree'} | " + " | ".join(cells) + " |")
    same = "all runs printed the same bytes" if len(outputs) == 1 else "RUNS PRINTED DIFFERENT BYTES"
    spread = statistics.median(r["wall"] - r["model"] for rs in rows.values() for r in rs)
    note = f"{same}; wall less (S + C) / 2, median: {spread:+.3f} s (the idle core and the load)."
    title = " ".join(filter(None, ["`compare_timeline.py`", args.label]))
    append(title, "\n".join(lines), note, write=not args.no_record)


if __name__ == "__main__":
    main()
