"""fp16 data read from disk for the GPU goes through the copy threads' pinned fp16 relay
(pytorch_backend.py:899-901): ``tmp_cpu_buf.copy_(src_data)`` is a memcpy from the memmap's pages into
the relay, 1 B read back and 1 B written per byte beside the read's own page-cache write
(``PLAIN_RELAY``; memory-bound: validate.packed_hop's fp16 memcpy into pinned memory ran at 59 GB/s
on the H200 host's 16 threads). Its host DRAM used to be left out."""

from __future__ import annotations

import pytest

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.flexgen_lp import Flags, LpSolution, released_time_per_seq
from hetsim.sim.engine import Engine
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_ops import PACKED_RELAY, PLAIN_RELAY
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.workload import Workload


def test_each_disk_read_books_its_relays_host_dram(monkeypatch):
    """OPT-6.7B, 4-bit weights half on disk, 8 x 1, 64 + 2: a tensor's packed data is converted into
    the relay (3 B per byte), its fp16 scales copied into it (2 B per byte); hidden states from
    disk too."""
    rig = load_rig("flexgen-t4")
    gpu, _, disk = endpoints(rig)
    seen: dict[str, set[float]] = {}
    book = Engine.book_transfer

    def spy(self, src, dst, nbytes, **kw):
        if src == disk:
            seen.setdefault(kw.get("label", ""), set()).add(kw.get("host_extra", 0.0))
        return book(self, src, dst, nbytes, **kw)

    monkeypatch.setattr(Engine, "book_transfer", spy)
    plan = FlexGenPlan(8, 1, 50, 0, 100, 0, 0, 0, cpu_attention=False, compress_weight=True, gpu=gpu)
    r = simulate(get_strategy("flexgen"), plan, rig, get_model("opt-6.7b"), Workload(8, 64, 2))
    assert r.feasible, r.reason
    assert PLAIN_RELAY == 2.0 and PACKED_RELAY == 3.0
    assert seen["load_weight_disk"] == {PLAIN_RELAY, PACKED_RELAY}
    assert seen["load_hidden"] == {PLAIN_RELAY}


def test_the_relays_memcpy_slows_cpu_work_beside_it_and_the_lp_follows():
    """mixed-lab OPT-6.7B 64 x 2, weights 40/0/60 fp16, the KV on the CPU, GPU attention, 512 + 32: the
    weights' reads take host DRAM from the KV's pin memcpy: 54.8835 -> 54.7735 tok/s (-0.20 %); the
    LP's read delay beside the thread (``_weight_slow``) follows: +0.55 % -> +0.35 % above the engine."""
    rig = load_rig("mixed-lab")
    ends = endpoints(rig)
    m = get_model("opt-6.7b")
    plan = FlexGenPlan(64, 2, 40, 0, 0, 100, 100, 0, cpu_attention=False, gpu=ends[0])
    wl = Workload(128, 512, 32)
    r = simulate(get_strategy("flexgen"), plan, rig, m, wl)
    assert r.throughput_tok_s == pytest.approx(54.7735, rel=1e-5)
    sol = LpSolution(64, 2, Flags(False, False), {}, 1.0, 1.0)
    err = released_time_per_seq(sol, plan, rig, m, wl, ends, None) * wl.batch / r.e2e_s - 1
    assert -0.02 < err < 0.004, err
