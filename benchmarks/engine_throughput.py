"""Simulated tasks per second: the engine alone, and bare SimPy for scale.

A task is one compute, transfer or collective booked on the engine. The workload mixes GPU ops,
CPU ops that book DRAM, and PCIe copies, like an offloading schedule does.
"""

from __future__ import annotations

import platform
import time

import simpy

from hetsim.hardware.loader import load_rig
from hetsim.models.spec import Op, OpKind
from hetsim.sim.engine import Engine

N = 200_000


def bare_simpy_timeouts(n: int) -> float:
    env = simpy.Environment()

    def proc(env):
        for _ in range(n):
            yield env.timeout(1e-6)

    env.process(proc(env))
    t0 = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t0)


def engine_tasks(n: int) -> float:
    rig = load_rig("mixed-lab")
    engine = Engine(rig)
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

    t0 = time.perf_counter()
    engine.run(schedule)
    return engine.tasks / (time.perf_counter() - t0)


if __name__ == "__main__":
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    print(f"bare SimPy timeouts/s: {bare_simpy_timeouts(N):,.0f}")
    print(f"engine tasks/s (GPU op + CPU op with DRAM booking + PCIe copy, joined): {engine_tasks(N):,.0f}")
