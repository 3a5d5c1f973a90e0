"""Where a HexGen replica's time goes, per generated token (decode, batch 1, context 96): the
stages' compute, their tensor-parallel all-reduces, and the pipeline hops between stages (latency
and bytes), from the same functions the engine books (``hetsim.strategies.pipeline_costs``).

Usage: python benchmarks/hexgen_breakdown.py
Plans: the 16 x A100 reference, the CP-SAT serving plan and the GA plan on the 58-GPU rig at
4 req/s, deadline 5x (as in hexgen_ga_vs_cpsat.py).
"""

from __future__ import annotations

from hetsim.costs.collectives import allreduce_time
from hetsim.costs.lockstep import ring_allreduce_fit, ring_alpha_beta
from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.models.memory import hidden_bytes
from hetsim.models.sharding import layer_blocks
from hetsim.planner.hexgen_cpsat import reference_plan, search_serving
from hetsim.planner.hexgen_ga import search_ga
from hetsim.serving.serve import Reference, deadlines_for
from hetsim.serving.workload import poisson_requests
from hetsim.strategies.pipeline_costs import layer_time, ops_time

CTX = 96


def breakdown(rig, model, rep) -> dict[str, float]:
    out = {"compute": 0.0, "tp_allreduce": 0.0, "hop_latency": 0.0, "hop_bytes": 0.0, "total": 0.0}
    for i, st in enumerate(rep.stages):
        tp = len(st.devices)
        blocks = layer_blocks(model, "decode", 1, 1, CTX, tp, "fp16", "fp16")
        busy = sum(ops_time(rig, st.devices, b) for b in (blocks.attention, blocks.mlp))
        comm = 0.0
        if tp > 1:
            alpha, beta = ring_alpha_beta(rig, st.devices)
            fit = ring_allreduce_fit(rig, st.devices)
            comm = 2 * allreduce_time(tp, hidden_bytes(model, 1, 1), alpha, beta, fit).time_s
        out["compute"] += st.layers * busy
        out["tp_allreduce"] += st.layers * comm
        out["total"] += st.layers * layer_time(rig, st.devices, model, "decode", 1, 1, CTX)
        if i + 1 < len(rep.stages):
            route = rig.route(st.devices[0], rep.stages[i + 1].devices[0])
            out["hop_latency"] += route.latency_s
            out["hop_bytes"] += hidden_bytes(model, 1, 1) / route.bw
    out["total"] += out["hop_latency"] + out["hop_bytes"]
    return out


def show(name, rig, model, plan) -> None:
    for k, rep in enumerate(plan.replicas):
        b = breakdown(rig, model, rep)
        shape = " > ".join(
            f"{s.devices[0].split('.')[0]}:{rig.devices[s.devices[0]].model} tp{len(s.devices)}x{s.layers}"
            for s in rep.stages
        )
        ms = {key: 1e3 * v for key, v in b.items()}
        print(
            f"| {name} {k} | {shape} | {ms['total']:.1f} | {ms['compute']:.1f} | {ms['tp_allreduce']:.1f} "
            f"| {ms['hop_latency']:.2f} | {ms['hop_bytes']:.3f} |"
        )


def main() -> int:
    model, full, homog = (
        get_model("llama2-70b"),
        load_rig("hexgen-full-budget"),
        load_rig("hexgen-homogeneous"),
    )
    ref_plan = reference_plan(homog, model, 1)
    ref = Reference.build(homog, model, ref_plan)
    reqs = poisson_requests(4.0, n=100, seed=0)
    dl = deadlines_for(reqs, slo_scale=5.0, reference=ref)
    cp = search_serving(full, model, reqs, dl, max_batch=1, mode="hexgen", drop_late=True)
    ga = search_ga(full, model, reqs, dl)
    head = (
        "| plan, replica | stages | ms/token | compute (incl. straggler wait) | TP all-reduce | hop latency |"
    )
    print(head + " hop bytes |")
    print("|---|---|---|---|---|---|---|")
    show("A100 reference", homog, model, ref_plan)
    show("CP-SAT", full, model, cp[0])
    show("GA", full, model, ga.plan)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
