"""Simulated tasks per second: the engine alone, against bare SimPy timeouts in the same run.

A task is one compute, transfer or collective booked on the engine. The workload mixes GPU ops,
CPU ops that book DRAM, and PCIe copies, joined with ``all_of``, like an offloading schedule does.
Runs alternate (SimPy, engine, SimPy, ...); rates are per second of CPU time of this process (the
shared machine's load moves wall time far more) and of wall time. Target (issue 20): the engine at
least a third of bare SimPy's rate.

    .venv/bin/python benchmarks/engine_throughput.py [--repeats 5] [--no-record] [--label TEXT]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import simpy
from record import append

from hetsim.hardware.loader import load_rig
from hetsim.models.spec import Op, OpKind
from hetsim.sim.engine import Engine

N = 120_000


def _timed(run: Callable[[], int]) -> tuple[float, float]:
    """(tasks per CPU second, tasks per wall second) of ``run``, which returns its task count."""
    c0, t0 = time.process_time(), time.perf_counter()
    n = run()
    return n / (time.process_time() - c0), n / (time.perf_counter() - t0)


def bare_simpy_timeouts(n: int) -> tuple[float, float]:
    env = simpy.Environment()

    def proc(env):
        for _ in range(n):
            yield env.timeout(1e-6)

    env.process(proc(env))
    return _timed(lambda: env.run() or n)


def engine_tasks(n: int) -> tuple[float, float]:
    engine = Engine(load_rig("mixed-lab"))
    gpu_op = Op("mm", OpKind.MATMUL, 0, 1e9, 1e7, 1e5, 1e5)
    cpu_op = Op("gemv", OpKind.MATMUL, 0, 1e7, 1e7, 1e4, 1e4)

    def schedule(e):
        for _ in range(n // 3):
            yield e.all_of(
                [
                    e.compute("n0.gpu0", gpu_op),
                    e.compute("n0.cpu0", cpu_op),
                    e.transfer("n0.cpu0", "n0.gpu0", 1e6),
                ]
            )

    return _timed(lambda: engine.run(schedule) and engine.tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results.md")
    ap.add_argument("--label", default="", help="what was measured, added to the title (e.g. a commit)")
    args = ap.parse_args()
    bare, eng = [], []
    for _ in range(args.repeats):
        bare.append(bare_simpy_timeouts(N))
        eng.append(engine_tasks(N))

    def row(name: str, runs: list[tuple[float, float]]) -> str:
        cpu, wall = [r[0] for r in runs], [r[1] for r in runs]
        return (
            f"| {name} | {max(cpu):,.0f} / {statistics.median(cpu):,.0f} | "
            f"{max(wall):,.0f} / {statistics.median(wall):,.0f} |"
        )

    ratio = [e[0] / b[0] for b, e in zip(bare, eng, strict=True)]  # CPU rates, run by run
    table = "\n".join(
        [
            f"| {N:,} tasks, {args.repeats} alternating runs | per CPU s: best / median | "
            "per wall s: best / median |",
            "|---|---|---|",
            row("bare SimPy timeouts", bare),
            row("engine tasks (GPU op + CPU op booking DRAM + PCIe copy, `all_of`)", eng),
            f"| engine / bare SimPy (CPU rates, per pair of runs): best / median | "
            f"{max(ratio):.2f} / {statistics.median(ratio):.2f} | target >= 0.33 |",
        ]
    )
    append(" ".join(filter(None, ["`engine_throughput.py`", args.label])), table, write=not args.no_record)


if __name__ == "__main__":
    main()
