"""FlexGen's LP against the engine with weights on disk: the released runtime puts a disk tensor on
the copy threads (general_copy's ``submit_copy``, pytorch_backend.py:831-833), which read it into
their pinned relay and copy it over the link when it lands (copy_worker_func, :896-902). The LP
charges the link the hop after the position's other copies, and the first sub-step at least the
read then the hop (``_Slot.wr``) and, with KV on disk too, the weights' read, then the KV's, then
V's hop on the disk lane (``_Slot.dw0``). Before, it put the read on the link at the disk's rate
in series with the CPU share's DMA, without the hop: -11.5..+2.5 % (GPU attention) and
-11..+8 % (CPU attention) on seeded random plans."""

from __future__ import annotations

import random

import pytest
from flexgen_placed import fitting_plans, lp_vs_engine, placed_lp

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.flexgen_lp import Flags
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.workload import Workload


def _random_plans(seed: int, n: int, cpu_attention: bool):
    """``n`` plans that fit flexgen-t4, each with some of the weights on disk: OPT-6.7B/13B/30B, gbs
    2-32, nb 1-6, the KV anywhere, prompts 256-1024."""

    def draw(rng: random.Random, gpu: str) -> tuple[str, FlexGenPlan, Workload]:
        model = rng.choice(["opt-6.7b", "opt-13b", "opt-30b"])
        gbs, nb = rng.choice([2, 4, 8, 16, 32]), rng.randint(1, 6)
        wg = rng.randrange(0, 90, 5)
        wc = rng.randrange(0, 100 - wg - 4, 5)
        cg = rng.choice([0, rng.randrange(0, 101, 5), 100])
        cc = rng.randrange(0, 101 - cg, 5)
        wl = Workload(gbs * nb, rng.choice([256, 512, 1024]), rng.choice([8, 16, 32]))
        return model, FlexGenPlan(gbs, nb, wg, wc, cg, cc, 100, 0, cpu_attention=cpu_attention, gpu=gpu), wl

    return fitting_plans("flexgen-t4", seed, n, draw)


@pytest.mark.parametrize(("cpu_attention", "n"), [(False, 24), (True, 12)])
def test_lp_follows_the_engine_with_weights_on_disk_on_random_plans(cpu_attention, n):
    """Seeded random plans with 5-100 % of the weights on disk: the LP's time at the plan's
    placement within 2.5 % below the engine's and at most 0.3 % above (measured -0.54..+0.00 % GPU
    attention, -2.25..-0.02 % CPU; -1.8..+0.2 % and -1.8..+0.0 % with a layer's disk share one copy
    in the engine and the LP). The lowest, OPT-6.7B 8 x 1 70/25/5, the KV 40/50/10, 256 + 32, was
    -1.59 % while the LP charged the weight DMA's whole host-DRAM delay to a short CPU attention
    (``_beside``): the thread's copy back to the GPU waits on the link for that DMA, left out of
    the LP (at the plan's placement it brings this plan to -1.0 %, but it tipped the fixed-batch
    search's ranking on OPT-6.7B 1024 + 32, batch 16: left for a later change)."""
    rig, plans = _random_plans(16 + cpu_attention, n, cpu_attention)
    errors = [lp_vs_engine(plan, rig, get_model(model), wl) for model, plan, wl in plans]
    assert min(errors) > -0.025 and max(errors) < 0.003, errors


@pytest.mark.parametrize(("model", "wg", "wc"), [("opt-6.7b", 40, 30), ("opt-30b", 10, 60)])
def test_lp_follows_the_engine_with_weights_on_disk_and_gpu_attention(model, wg, wc):
    """8 x 2, 512 + 32, the KV on the GPU: within 1 % (was -9.5 % and +4.5 %: the read on the link
    in series with the DMA, no hop)."""
    rig = load_rig("flexgen-t4")
    plan = FlexGenPlan(8, 2, wg, wc, 100, 0, 100, 0, cpu_attention=False, gpu=endpoints(rig)[0])
    err = lp_vs_engine(plan, rig, get_model(model), Workload(16, 512, 32))
    assert abs(err) < 0.01, err


def test_lp_carries_the_disk_copies_latency():
    """OPT-6.7B 4 x 2, 87 % of the weights on the GPU, the KV 94/0/6 %, 512 + 32: each decode load
    reads K's and V's 1 MB disk shares (0.5 ms each at 2 GB/s) and hops V's over the link, each copy
    with its route's latency (100 us from the disk, 10 us over PCIe, ``Route.latency_s``): the LP
    charges them on the disk bounds (``flexgen_lp._latency``): within 1.5 % (was -5.5 %, -0.9 % now)."""
    rig = load_rig("flexgen-t4")
    plan = FlexGenPlan(4, 2, 87, 13, 94, 0, 100, 0, cpu_attention=False, gpu=endpoints(rig)[0])
    err = lp_vs_engine(plan, rig, get_model("opt-6.7b"), Workload(8, 512, 32))
    assert abs(err) < 0.015, err


@pytest.mark.parametrize(
    ("rig_name", "model", "gbs", "nb", "wg", "wc", "prompt", "tok_s"),
    [
        ("flexgen-t4", "opt-30b", 32, 4, 0, 50, 512, 6.0123),
        ("mixed-lab", "opt-13b", 16, 4, 20, 30, 1024, 18.7943),
    ],
)
def test_lp_follows_4bit_weights_packed_data_hops_from_disk(rig_name, model, gbs, nb, wg, wc, prompt, tok_s):
    """4-bit weights partly on disk, the KV on the CPU, gen 32: each matrix's packed data hops at the
    link's pageable rate (flexgen.py: ``_via_host``), 6.3328 -> 6.1560 and 19.8162 -> 18.8768 tok/s; the
    LP's weight hop per byte follows (``_wd_per_byte``), within 0.3 % under the engine (-0.04, -0.15 %).
    Session 17, each packed part converted before its hop (``packed_unrelay_cost``): 6.0114 and 18.7943
    tok/s; the LP's relay chain converts too (``_weight_relay``): -0.04, -0.15 % (without, -1.5, -0.4 %).
    Session 18, fast-forward's bend (``run._kinked``): 6.0114 -> 6.0123 (every step's run: 6.0122)."""
    rig = load_rig(rig_name)
    ends = endpoints(rig)
    m = get_model(model)
    plan = FlexGenPlan(
        gbs, nb, wg, wc, 0, 100, 100, 0, cpu_attention=False, compress_weight=True, gpu=ends[0]
    )
    wl = Workload(gbs * nb, prompt, 32)
    r = simulate(get_strategy("flexgen"), plan, rig, m, wl)
    assert r.throughput_tok_s == pytest.approx(tok_s, rel=1e-4)
    err = placed_lp(plan, rig, m, wl, Flags(False, False, "", True)) / r.e2e_s - 1
    assert -0.003 < err < 0.002, err


@pytest.mark.parametrize(
    ("rig_name", "model", "gbs", "nb", "wg", "wc", "prompt"),
    [("mixed-lab", "llama2-7b", 16, 2, 20, 0, 256), ("flexgen-t4", "opt-13b", 8, 1, 20, 30, 512)],
)
def test_lp_holds_the_weight_hops_after_cpu_attention_over_a_4bit_home_cache(
    rig_name, model, gbs, nb, wg, wc, prompt
):
    """CPU attention over a 4-bit cache at home on the CPU, 4-bit weights partly on disk, gen 32: the next
    layer's disk copies hop once the thread's copy back is through (flexgen.py: the hops booked after the
    position's compute), so the sub-step lasts the thread then the hops beyond its last kernels, as on
    the uncompressed CPU attention path. At the packed data's pageable rate these hops outlast them: the
    LP within 0.3 % under the engine (-0.20, -0.05 %; without the term -4.58, -0.53 %)."""
    rig = load_rig(rig_name)
    ends = endpoints(rig)
    m = get_model(model)
    plan = FlexGenPlan(
        gbs,
        nb,
        wg,
        wc,
        0,
        100,
        100,
        0,
        cpu_attention=True,
        compress_cache=True,
        compress_weight=True,
        gpu=ends[0],
    )
    wl = Workload(gbs * nb, prompt, 32)
    err = lp_vs_engine(plan, rig, m, wl, Flags(True, True, "c", True))
    assert -0.003 < err < 0.002, err
