"""FlexGen's LP against the engine with a 4-bit KV cache on disk or the CPU. A compressed tensor is two
general_copy calls, its data then its scales (FlexGen 0.1.8 compression.py:214-215), each put on
the copy threads (pytorch_backend.py:831-833), read, then hopped over the link when it lands
(:896-902). So V's data hop runs on the link while V's scales are read, and only the scales' hop
(1/9 of V's bytes) need follow the last read: the LP's disk bound charged V's whole hop after the
reads and came out above the engine's time (+2.6 %, +3.6 % below), no longer a lower bound. From
the CPU each part is pinned then DMA'd, four pairs a load: the LP's two (K's whole pin then both
DMAs) were above the engine too (+0.3 %, +0.5 % on mixed-lab)."""

from __future__ import annotations

import pytest
from flexgen_placed import lp_vs_engine

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.flexgen_lp import Flags
from hetsim.sim.run import fits, simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.workload import Workload


@pytest.mark.parametrize(
    ("model", "gbs", "nb", "wg", "wc"), [("opt-30b", 64, 4, 10, 60), ("opt-6.7b", 32, 4, 60, 40)]
)
def test_lp_stays_under_the_engine_with_a_4bit_kv_cache_on_disk(model, gbs, nb, wg, wc):
    """flexgen-t4, 512 + 32, the KV 4-bit and all on disk: the LP at the plan's placement at most
    0.2 % above the engine and within 2 % under it (-0.06 %, -0.19 % now with the packed data's
    pageable hop; +2.6 %, +3.6 % with V's whole hop after the reads)."""
    rig = load_rig("flexgen-t4")
    ends = endpoints(rig)
    m = get_model(model)
    plan = FlexGenPlan(gbs, nb, wg, wc, 0, 0, 100, 0, cpu_attention=False, compress_cache=True, gpu=ends[0])
    wl = Workload(gbs * nb, 512, 32)
    assert fits(get_strategy("flexgen"), plan, rig, m, wl)
    err = lp_vs_engine(plan, rig, m, wl, Flags(False, True, "d"))
    assert -0.02 < err < 0.002, err


def _lp_vs_engine(rig_name: str, model: str, plan: FlexGenPlan, wl: Workload, tier: str) -> float:
    rig = load_rig(rig_name)
    ends = endpoints(rig)
    m = get_model(model)
    plan = FlexGenPlan(**{**plan.__dict__, "gpu": ends[0]})
    assert fits(get_strategy("flexgen"), plan, rig, m, wl)
    return lp_vs_engine(plan, rig, m, wl, Flags(False, True, tier))


@pytest.mark.parametrize(
    ("model", "gbs", "nb", "prompt"), [("opt-13b", 32, 4, 1024), ("llama2-13b", 32, 4, 2048)]
)
def test_lp_stays_under_the_engine_with_a_4bit_kv_cache_on_the_cpu(model, gbs, nb, prompt):
    """mixed-lab, the weights on the GPU, the KV 4-bit on the CPU, gen 32: each cache tensor's data
    then scales pinned and DMA'd (four pairs a load). The LP at most 0.2 % above the engine and
    within 2 % under it (-0.3 %, -0.1 % now; +0.3 %, +0.5 % with two pairs)."""
    plan = FlexGenPlan(gbs, nb, 100, 0, 0, 100, 100, 0, cpu_attention=False, compress_cache=True)
    err = _lp_vs_engine("mixed-lab", model, plan, Workload(gbs * nb, prompt, 32), "c")
    assert -0.02 < err < 0.002, err


@pytest.mark.parametrize(
    ("rig_name", "model", "gbs", "nb", "wg", "wc", "prompt", "tok_s"),
    [
        ("flexgen-t4", "opt-30b", 64, 4, 10, 60, 512, 4.5181),
        ("flexgen-t4", "opt-6.7b", 32, 4, 60, 40, 512, 16.5775),
        ("mixed-lab", "opt-13b", 32, 4, 100, 0, 1024, 20.5265),
    ],
)
def test_a_4bit_caches_packed_data_hops_from_disk_at_the_pageable_rate(
    rig_name, model, gbs, nb, wg, wc, prompt, tok_s
):
    """The copy threads' relay is an fp16 view (pytorch_backend.py:882, :899-902): a 4-bit tensor's uint8 data
    is converted to fp16 into it, and the blocking copy into the uint8 GPU tensor converts back on the
    CPU into a pageable temporary (PyTorch's copy_kernel_cuda) and copies from there: its hop runs at
    the link's pageable rate, the scales' (fp16, no conversion) at the pinned one. The KV 4-bit on disk,
    512/1024 + 32: 4.8575 -> 4.6690, 18.3725 -> 17.3629, 24.9416 -> 21.5906 tok/s; the LP follows,
    within 0.3 % under the engine (was -0.5, -0.8 and -6.1 % on mixed-lab, the last failing this).
    Session 17: the conversion into the temporary is timed before the hop (``packed_unrelay_cost``,
    2.60 cycles per element over the host's cores): 4.5181, 16.5775, 20.5265 tok/s (-3.2, -4.5,
    -4.9 %); the LP -0.05, -0.19, -0.19 % (without its term -2.1, -3.0, -2.9 %)."""
    plan = FlexGenPlan(gbs, nb, wg, wc, 0, 0, 100, 0, cpu_attention=False, compress_cache=True)
    wl = Workload(gbs * nb, prompt, 32)
    err = _lp_vs_engine(rig_name, model, plan, wl, "d")
    assert -0.003 < err < 0.002, err
    rig = load_rig(rig_name)
    plan = FlexGenPlan(**{**plan.__dict__, "gpu": endpoints(rig)[0]})
    got = simulate(get_strategy("flexgen"), plan, rig, get_model(model), wl).throughput_tok_s
    assert got == pytest.approx(tok_s, rel=1e-4)


def test_lp_waits_for_the_first_read_before_the_hops_where_the_hops_are_slower():
    """hexgen-homogeneous (16 GB/s disk, 10 GB/s pageable hop), Llama-2-13B 16 x 4, the weights on the
    CPU, the KV 4-bit and all on disk, 512 + 16: a load's hops are slower than its reads, so it lasts at
    least K's data read and its conversion, then every hop (``_kv_load``'s disk bound): the LP went
    -5.1 % under the engine without it, -1.5 % with."""
    rig, m = load_rig("hexgen-homogeneous"), get_model("llama2-13b")
    ends = endpoints(rig)
    plan = FlexGenPlan(16, 4, 0, 100, 0, 0, 100, 0, cpu_attention=False, compress_cache=True, gpu=ends[0])
    wl = Workload(64, 512, 16)
    err = lp_vs_engine(plan, rig, m, wl, Flags(False, True, "d"))
    assert -0.02 < err < 0.002, err
