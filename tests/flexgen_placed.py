"""FlexGen's LP timed at a plan's own placement beside the engine's run of that plan (the check the LP
tests make), and the seeded random plans that fit a rig which several of them draw."""

from __future__ import annotations

import random
from collections.abc import Callable

from hetsim.hardware.loader import load_rig
from hetsim.hardware.rig import Rig
from hetsim.models import get_model
from hetsim.models.spec import ModelSpec
from hetsim.planner.flexgen_lp import Flags, LpSolution, released_time_per_seq
from hetsim.sim.run import fits, simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.workload import Workload

Draw = Callable[[random.Random, str], tuple[str, FlexGenPlan, Workload]]


def _datasheet_gb(dram: float) -> float:
    return round(dram / 2**30) * 1e9  # the catalogue's binary DRAM back to the datasheet's number, as SI


def datasheet_gpus(rig: Rig) -> Rig:
    """``rig`` with each GPU's datasheet "GB" read as 10^9 bytes (no ECC, driver keep or runtime reserve):
    the capacity the LP and copy tests' operating points were chosen at before session 22; what they
    check (LP against engine, copies, pruning) does not depend on it."""
    from dataclasses import replace

    from hetsim.hardware.catalog import load_catalog

    cat = load_catalog()
    whole = {
        n: replace(d, mem_bytes=_datasheet_gb(cat.resolve("gpus", d.model).spec.dram.si), reserved_bytes=0.0)
        for n, d in rig.devices.items()
        if d.kind == "gpu"
    }
    return replace(rig, devices={**rig.devices, **whole})


def placed_lp(
    plan: FlexGenPlan, rig: Rig, model: ModelSpec, wl: Workload, flags: Flags | None = None
) -> float:
    """The LP's seconds for the whole workload at ``plan``'s placement: a solution of the plan's shape,
    whose own fractions are not read (``flags``: the LP's; default the plan's attention, uncompressed)."""
    flags = flags or Flags(plan.cpu_attention, False)
    sol = LpSolution(plan.gpu_batch_size, plan.num_gpu_batches, flags, {}, 1.0, 1.0)
    return released_time_per_seq(sol, plan, rig, model, wl, endpoints(rig), None) * wl.batch


def lp_vs_engine(
    plan: FlexGenPlan,
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    flags: Flags | None = None,
    exact: bool = False,
) -> float:
    """``placed_lp`` over the engine's time for the plan, minus one."""
    engine = simulate(get_strategy("flexgen"), plan, rig, model, wl, exact=exact).e2e_s
    return placed_lp(plan, rig, model, wl, flags) / engine - 1


def fitting_plans(rig_name: str, seed: int, n: int, draw: Draw) -> tuple[Rig, list]:
    """The rig and ``n`` seeded random plans that fit it, each (model name, plan, workload) as ``draw``
    makes it from the generator and the rig's first GPU (a draw that does not fit is drawn again)."""
    rng = random.Random(seed)
    rig = load_rig(rig_name)
    gpu = endpoints(rig)[0]
    out = []
    while len(out) < n:
        model, plan, wl = draw(rng, gpu)
        if fits(get_strategy("flexgen"), plan, rig, get_model(model), wl):
            out.append((model, plan, wl))
    return rig, out
