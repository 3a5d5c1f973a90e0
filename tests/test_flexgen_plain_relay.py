"""fp16 data read from disk for the GPU goes through the copy threads' pinned fp16 relay
(pytorch_backend.py:899-901): ``tmp_cpu_buf.copy_(src_data)`` is a memcpy from the memmap's pages into
the relay, 1 B read back and 1 B written per byte beside the read's own page-cache write
(``PLAIN_RELAY``; memory-bound: validate.packed_hop's fp16 memcpy into pinned memory ran at 59 GB/s
on the H200 host's 16 threads). Its host DRAM used to be left out."""

from __future__ import annotations

import random

import pytest
from flexgen_placed import datasheet_gpus, fitting_plans, lp_vs_engine, placed_lp
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.flexgen_lp import Flags
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
    err = placed_lp(plan, rig, m, wl, Flags(False, False)) / r.e2e_s - 1
    assert -0.02 < err < 0.004, err


def _kv_split_plans(seed: int, n: int):
    """``n`` seeded GPU-attention plans that fit hexgen-homogeneous (16 GB/s disk, 113 GB/s of host
    DRAM: the relay's 48 GB/s beside a KV read is felt there), the KV split between the CPU and the
    disk, 16-bit weights on the GPU and the CPU: Llama-2-7B/13B, OPT-6.7B, gbs 4-64, nb 1-6."""

    def draw(rng: random.Random, gpu: str) -> tuple[str, FlexGenPlan, Workload]:
        model = rng.choice(["llama2-7b", "llama2-13b", "opt-6.7b"])
        gbs, nb = rng.choice([4, 8, 16, 32, 64]), rng.randint(1, 6)
        wg = rng.randrange(0, 95, 5)
        cc = rng.randrange(5, 100, 5)
        wl = Workload(gbs * nb, rng.choice([256, 512, 1024]), rng.choice([8, 16, 32]))
        return model, FlexGenPlan(gbs, nb, wg, 100 - wg, 0, cc, 100, 0, cpu_attention=False, gpu=gpu), wl

    return fitting_plans("hexgen-homogeneous", seed, n, draw)


def test_a_kv_reads_relay_slows_the_next_halfs_pin_and_the_lp_follows():
    """hexgen-homogeneous Llama-2-70B 96 x 32, the weights on the CPU, the KV 0/53/47 (the 13 compare
    cases' case 10): K's disk share is read from when K's CPU half is pinned, beside V's pin, and its
    page-cache write and the relay's memcpy (3 B per byte at 16 GB/s) take host DRAM from it, so V's
    pin ends later and V's DMA after it ends the load. The engine books it (47.818 tok/s); the LP at
    the plan's placement now does too (``_kv_load``): -1.25 % -> +0.12 %. At the A100s' datasheet 40 GB
    (the plan's GPU working set is over their usable 39.46 GB)."""
    rig = datasheet_gpus(load_rig("hexgen-homogeneous"))
    plan = FlexGenPlan(96, 32, 0, 100, 0, 53, 100, 0, cpu_attention=False, gpu=endpoints(rig)[0])
    wl = Workload(96 * 32, 512, 32)
    err = lp_vs_engine(plan, rig, get_model("llama2-70b"), wl)
    assert -0.005 < err < 0.003, err


def test_lp_follows_the_engine_with_the_kv_split_between_cpu_and_disk_on_random_plans():
    """Seeded random plans (``_kv_split_plans``): the LP's time at the plan's placement within 0.8 %
    under the engine's and 0.3 % above (measured -0.66..-0.01 %). Without the K read's DRAM term
    beside V's pin -1.76..-0.09 % (OPT-6.7B 16 x 3 20/80, the KV 0/55/45, 1024 + 32: -1.76 -> -0.01 %;
    8 x 3 15/85, 0/55/45, 1024 + 8: -1.19 -> -0.10 %; the other 14 the same)."""
    rig, plans = _kv_split_plans(20, 16)
    errors = [lp_vs_engine(plan, rig, get_model(model), wl) for model, plan, wl in plans]
    assert min(errors) > -0.008 and max(errors) < 0.003, errors


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.floats(0.0, 10.0), st.floats(0.0, 0.99)), max_size=3),
    st.floats(0.0, 10.0),
    st.floats(0.0, 10.0),
    st.floats(0.0, 5.0),
)
def test_work_slowed_by_copies_ends_no_sooner_and_no_later_than_its_bounds(flows, t, work, more):
    """``_slowed_end`` (V's pin beside K's DMA and read; the thread beside the weight copies): the work
    ends no sooner than alone, no later than at the slowest rate throughout, later with more work, and
    as alone once the copies have ended."""
    from hetsim.planner.flexgen_lp import _slowed_end

    flows = tuple(sorted(flows))
    end = _slowed_end(flows, t, work)
    last = max((s for s, _ in flows), default=0.0)
    assert t + work - 1e-9 <= end <= max(t, last) + work + 1e-9
    slowest = 1.0 - sum(d for _, d in flows)
    if slowest > 0.0:
        assert end <= t + work / slowest + 1e-9
    assert _slowed_end(flows, t, work + more) >= end - 1e-9
    assert _slowed_end(flows, max(t, last), work) == pytest.approx(max(t, last) + work)
