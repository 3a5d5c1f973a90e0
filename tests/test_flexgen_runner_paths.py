"""FlexGen's released loop books some copies by shortcuts (``block_released``'s hidden-state copies,
``_Booked.transfer``); each must book exactly what the general path books, to the bit."""

from __future__ import annotations

import math

import pytest

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.sim.engine import Engine
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import _Booked, _Runner
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.workload import Workload

PLANS = [  # (wg, wc, cg, cc, hg, hc): GPU and CPU attention, hidden states on the CPU or the GPU, disk
    (FlexGenPlan(8, 2, 0, 100, 100, 0, 0, 100, cpu_attention=False, gpu="n0.gpu0"), "opt-6.7b"),
    (FlexGenPlan(8, 3, 20, 60, 0, 80, 0, 100, cpu_attention=False, gpu="n0.gpu0"), "opt-6.7b"),
    (FlexGenPlan(16, 2, 30, 50, 0, 70, 0, 100, cpu_attention=True, gpu="n0.gpu0"), "opt-6.7b"),
    (FlexGenPlan(8, 2, 40, 60, 0, 100, 100, 0, cpu_attention=True, gpu="n0.gpu0"), "opt-6.7b"),
    (FlexGenPlan(4, 2, 0, 100, 0, 100, 0, 100, cpu_attention=False, gpu="n0.gpu0"), "llama2-7b"),
]


def _same(a, b) -> None:
    assert (a.e2e_s, a.ttft_s, a.tasks, a.utilization) == (b.e2e_s, b.ttft_s, b.tasks, b.utilization)
    assert a.peak_mem_bytes == b.peak_mem_bytes and a.bottleneck == b.bottleneck


@pytest.mark.parametrize(("plan", "name"), PLANS)
def test_hidden_copies_booked_directly_as_their_helpers_book_them(monkeypatch, plan, name):
    rig, model = load_rig("flexgen-t4"), get_model(name)
    wl = Workload(plan.block_size, 64, 4)
    flexgen = get_strategy("flexgen")
    direct = simulate(flexgen, plan, rig, model, wl, exact=True)
    assert direct.feasible
    monkeypatch.setattr(_Runner, "hidden_direct", False)
    _same(direct, simulate(flexgen, plan, rig, model, wl, exact=True))


def test_the_helpers_path_is_taken_when_told(monkeypatch):
    """The comparison above means something only if the switch reaches the loop."""
    plan, name = PLANS[0]
    calls = []
    store = _Runner.store_hidden

    def counted(self, *args):
        calls.append(1)
        return store(self, *args)

    monkeypatch.setattr(_Runner, "store_hidden", counted)
    wl = Workload(plan.block_size, 64, 4)
    simulate(get_strategy("flexgen"), plan, load_rig("flexgen-t4"), get_model(name), wl, exact=True)
    direct = len(calls)
    monkeypatch.setattr(_Runner, "hidden_direct", False)
    simulate(get_strategy("flexgen"), plan, load_rig("flexgen-t4"), get_model(name), wl, exact=True)
    assert direct == 1 and len(calls) > 100  # the epilogue's, then every position's


def test_booked_transfer_is_engine_transfer_time_to_the_bit():
    """``_Booked.transfer`` books as ``Engine.transfer_time`` does, its ``at`` and every option passed
    on: the same end times and lane states for copies issued now or at a later time, pinned or not,
    with a host-side extra."""
    rig = load_rig("flexgen-t4")
    a, b = Engine(rig), Engine(rig)
    booked = _Booked(a)
    gpu, cpu, disk = "n0.gpu0", rig.host_cpu("n0.gpu0"), rig.disks_of(rig.devices["n0.gpu0"].node)[0].name
    at = None
    for i in range(60):
        src, dst = [(cpu, gpu), (gpu, cpu), (disk, cpu), (cpu, disk)][i % 4]
        n = 1e6 * (1 + i % 7) / 3
        kw = {"pinned": i % 3 != 0, "label": "x", "host_extra": 0.5 if i % 5 == 0 else 0.0}
        booked.at = at
        got = booked.transfer(src, dst, n, **kw)
        want = b.transfer_time(src, dst, n, at=at, **kw)
        assert got == want and not math.isnan(got)
        at = None if i % 2 else got * (1 + 1e-3 * (i % 3)) + 1e-7
    assert [(x.free_at, x.busy_s) for x in a.lanes.values()] == [
        (x.free_at, x.busy_s) for x in b.lanes.values()
    ]
    assert a.tasks == b.tasks and a.bytes_transferred == b.bytes_transferred
