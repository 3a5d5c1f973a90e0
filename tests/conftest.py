"""Shared fixtures: a tiny hand-built rig whose numbers make closed forms easy; a script run in its
own process and signalled once it says it got far enough (``signalled``); the CLI's ``main`` run
in-process under an alarm (``guarded``); a strategy's default plan as a plan file, fields edited
in (``plan_file``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

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


@pytest.fixture(scope="module")
def lab():
    """Llama-2-70B on the mixed-lab rig (README's headline problem), for the planner's tests."""
    from hetsim.api import problem

    return problem("llama2-70b", "mixed-lab")


@pytest.fixture(scope="module")
def a10():
    """OPT-30B on HeteGen's A10 rig, for the planner's tests."""
    from hetsim.api import problem

    return problem("opt-30b", "hetegen-a10")


@pytest.fixture
def rig() -> Rig:
    return tiny_rig()


PlanFile = Callable[..., str]


@pytest.fixture
def plan_file(tmp_path) -> PlanFile:
    """``make(strategy, model, hw, **params)``: ``strategy``'s default plan of ``model`` on ``hw`` (batch
    1, prompt 16, 2 tokens) as a plan file (``plan --out``'s document) in ``tmp_path``, ``params``
    edited in; its path."""

    def make(strategy: str, model: str, hw: str, **params: object) -> str:
        import json

        from hetsim import api
        from hetsim.strategies.base import get_strategy

        p = api.problem(model, hw, 1, 16, 2)
        s = get_strategy(strategy)
        doc = api.plan_document(p, s, s.default_plan(p.rig, p.model, p.workload), "throughput")
        doc["params"].update(params)
        f = tmp_path / f"{strategy}.json"
        f.write_text(json.dumps(doc))
        return str(f)

    return make


class Hang(Exception):
    """A ``guarded`` command still running at its alarm: a hang is a bug, not a slow case."""


Guarded = Callable[..., tuple[int, str]]


@pytest.fixture
def guarded(capsys: pytest.CaptureFixture[str]) -> Guarded:
    """``run(args, hang_s=60)``: the CLI's ``main(args)`` in this process, (exit code, stderr); one
    still running after ``hang_s`` raises ``Hang`` (SIGALRM) instead of holding the suite."""
    from hetsim.cli import main

    def run(args: list[str], hang_s: int = 60) -> tuple[int, str]:
        def hang(signum: int, frame: object) -> None:
            raise Hang(args)

        old = signal.signal(signal.SIGALRM, hang)
        signal.alarm(hang_s)
        try:
            code = main(args)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        return code, capsys.readouterr().err

    return run


# Seconds a signalled script has, first to print its progress line, then to exit after the signal.
KILL_TIMEOUT_S = 120

Signalled = Callable[..., tuple[int, str, str]]


@pytest.fixture
def signalled() -> Iterator[Signalled]:
    """``run(script, args, ready, sig)``: ``python -c script *args`` in its own session; once its
    first stderr line is ``ready``, ``sig`` (a name: "SIGINT") goes to its process group, as from a
    terminal; ``run(script, args)``: a script that signals itself, only waited for. Returns (exit
    code, stdout, stderr after the ready line). A script that never says ``ready`` or never exits
    within ``KILL_TIMEOUT_S`` is killed and the test fails."""
    procs: list[subprocess.Popen[str]] = []

    def kill(proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    def run(script: str, args: list[str], ready: str | None = None, sig: str = "") -> tuple[int, str, str]:
        proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        procs.append(proc)
        if ready is not None:
            signal_when_ready(proc, ready, sig)
        try:
            out, err = proc.communicate(timeout=KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill(proc)
            proc.communicate()
            pytest.fail(f"did not exit within {KILL_TIMEOUT_S} s of the signal")
        return proc.returncode, out, err

    def signal_when_ready(proc: subprocess.Popen[str], ready: str, sig: str) -> None:
        guard = threading.Timer(KILL_TIMEOUT_S, kill, (proc,))  # readline has no timeout of its own
        guard.start()
        try:
            first = proc.stderr.readline() if proc.stderr else ""
        finally:
            guard.cancel()
        if first != ready:  # ended (a traceback follows) or said something else: the rest, then fail
            kill(proc)
            pytest.fail(f"expected {ready!r} first on stderr, got {first!r}" + proc.communicate()[1])
        os.killpg(proc.pid, getattr(signal, sig))

    yield run
    for proc in procs:  # a failed assertion leaves none running
        kill(proc)
        proc.communicate()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker past its last test ignores SIGINT: execnet sends the worker one itself when
    its teardown (pytest_unconfigure's full collections of the suite's heap) runs over 5 s under
    load, and it landed in hypothesis's gc callback ("KeyboardInterrupt ignored in gc_callback", a
    PytestUnraisableExceptionWarning after the last test; no hetsim signal involved).
    execnet still ends a worker stuck 10 s more (``os._exit``)."""
    if hasattr(session.config, "workerinput"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
