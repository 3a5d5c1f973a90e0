"""Shared fixtures: a tiny hand-built rig whose numbers make closed forms easy."""

from __future__ import annotations

import signal

import pytest

from hetsim.hardware.rig import Rig
from hetsim.hardware.types import ComputeDevice, Disk, Efficiency, Link, Node

EFF = Efficiency(compute={"matmul": 1.0}, memory=1.0, overhead_s=0.0)


def tiny_rig() -> Rig:
    """One node: a CPU socket (100 GB/s DRAM), a GPU (1 TB/s, 100 TFLOPS) on a 10 GB/s PCIe
    link, a disk (2 GB/s read, 1 GB/s write); a second node's GPU over a 1 GB/s network."""
    cpu = ComputeDevice(
        "n0.cpu0", "cpu", "cpu", "n0", 100e9, 100e9, {"fp32": 1e12, "fp16": 2e12}, EFF, cores=8
    )
    gpu = ComputeDevice("n0.gpu0", "gpu", "gpu", "n0", 16e9, 1e12, {"fp16": 100e12}, EFF, price_per_hour=1.0)
    gpu1 = ComputeDevice("n1.gpu0", "gpu", "gpu", "n1", 16e9, 1e12, {"fp16": 100e12}, EFF, price_per_hour=1.0)
    disk = Disk("n0.disk0", "nvme", "n0", 1e12, 2e9, 1e9)
    links = {
        "n0.pcie0": Link("n0.pcie0", "pcie", "n0.cpu0", "n0.gpu0", 10e9, 0.0, 5e9),
        "n0.nvme0": Link("n0.nvme0", "pcie", "n0.cpu0", "n0.disk0", 8e9, 0.0, 8e9),
        "n0.nic": Link("n0.nic", "ethernet", "n0.gpu0", "net", 1e9, 1e-3, 1e9),
        "n1.nic": Link("n1.nic", "ethernet", "n1.gpu0", "net", 1e9, 1e-3, 1e9),
    }
    nodes = {
        "n0": Node("n0", "r0", 100e9, ("n0.cpu0",), ("n0.gpu0",), ("n0.disk0",)),
        "n1": Node("n1", "r0", 0.0, (), ("n1.gpu0",), ()),
    }
    devices = {d.name: d for d in (cpu, gpu, gpu1)}
    return Rig("tiny", "<test>", nodes, devices, {"n0.disk0": disk}, links)


@pytest.fixture
def rig() -> Rig:
    return tiny_rig()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker past its last test ignores SIGINT: execnet sends the worker one itself when
    its teardown (pytest_unconfigure's full collections of the suite's heap) runs over 5 s under
    load, and it landed in hypothesis's gc callback ("KeyboardInterrupt ignored in gc_callback", a
    PytestUnraisableExceptionWarning after the last test; no hetsim signal involved).
    execnet still ends a worker stuck 10 s more (``os._exit``)."""
    if hasattr(session.config, "workerinput"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
