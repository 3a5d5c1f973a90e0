"""FlexGen's LP: its optimum matches exhaustive enumeration of the same cost model on a grid."""

from __future__ import annotations

import itertools

import pytest
from flexgen_placed import datasheet_gpus, placed_lp

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.planner.flexgen_lp import Flags, cost_at, cost_model, solve_lp, to_plan
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_policy import fractions
from hetsim.workload import Workload

STEP = 40  # grid of 2.5 %


def _grid_min(cm) -> float:
    best = float("inf")
    grid = [i / STEP for i in range(STEP + 1)]
    for wg, wc, cg, cc, hg in itertools.product(grid, grid, grid, grid, (0.0, 1.0)):
        if wg + wc > 1 + 1e-9 or cg + cc > 1 + 1e-9:
            continue
        x = {"wg": wg, "wc": wc, "wd": max(0.0, 1 - wg - wc), "cg": cg, "cc": cc, "cd": max(0.0, 1 - cg - cc)}
        x.update(hg=hg, hc=1 - hg, hd=0.0)
        t = cost_at(cm, x)
        if t is not None and t < best:
            best = t
    return best


@pytest.mark.parametrize(
    ("gbs", "nb", "cpu_attention", "budget"),
    [(8, 2, True, 6e9), (4, 4, False, 5e9), (16, 2, True, 9e9)],
)
def test_lp_optimum_equals_grid_enumeration(gbs, nb, cpu_attention, budget):
    """Small instances where GPU memory binds (a GPU budget on OPT-6.7B, no disk): no grid point
    beats the LP, the grid's best comes within its resolution of it, and the LP's value is the
    cost model's value at the LP's own point."""
    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    wl = Workload(gbs * nb, 256, 8)
    gpu, cpu, _ = endpoints(rig)
    ends = (gpu, cpu, "")
    flags = Flags(cpu_attention, False)
    lp = solve_lp(rig, model, wl, gbs, nb, flags, ends, budget)
    assert lp is not None
    assert 0.0 < lp.x["wg"] < 1.0  # memory binds: the answer is not trivial
    cm = cost_model(rig, model, wl, gbs, nb, flags, ends, budget)
    grid = _grid_min(cm)
    assert lp.block_time_s <= grid * (1 + 1e-7)
    assert grid <= lp.block_time_s * 1.02
    at_lp = cost_at(cm, {k: min(max(v, 0.0), 1.0) for k, v in lp.x.items()})
    assert at_lp == pytest.approx(lp.block_time_s, rel=1e-5)


def test_plan_from_lp_never_puts_more_weight_on_gpu_than_the_lp():
    """The released per-tensor rule is a step function: the plan's percent is lowered to fit."""
    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    wl = Workload(144, 512, 32)
    ends = endpoints(rig)
    sol = solve_lp(rig, model, wl, 48, 3, Flags(True, False), ends)
    assert sol is not None
    plan = to_plan(sol, model, ends[0], None)
    f = fractions(model, plan)
    assert f.w_gpu <= sol.x["wg"] * (f.w_gpu + f.w_cpu + f.w_disk) * (1 + 1e-6)
    assert plan.hg + plan.hc == 100.0


def test_free_search_finds_the_best_of_an_enumerated_policy_grid():
    """FlexGen's policy space on a small case (OPT-6.7B, prompt 512, gen 8, flexgen-t4): every plan on
    a grid of GPU batch, batches per block and weight/KV/activation placements (all-GPU included) is
    run in the engine; the free-batch search must match the best. Ranking the LP optima by their
    continuous time picked gbs 24 with activations on the CPU (15.4 tok/s); the best on the grid is
    gbs 8 with every KV byte and activation on the GPU (17.55)."""
    from hetsim.planner.flexgen_lp import search_free
    from hetsim.sim.run import fits, simulate
    from hetsim.strategies.base import get_strategy
    from hetsim.strategies.flexgen_policy import FlexGenPlan

    rig, model, s = load_rig("flexgen-t4"), get_model("opt-6.7b"), get_strategy("flexgen")
    best = 0.0
    for gbs, nb, wg, cg, hg, cpu in itertools.product(
        (4, 8, 16, 32), (1, 2), (50, 80, 100), (50, 100), (0, 100), (False, True)
    ):
        if cpu and cg == 100:
            continue  # CPU attention with no KV on the CPU is the GPU-attention plan
        plan = FlexGenPlan(
            gbs, nb, wg, 100 - wg, cg, 100 - cg, hg, 100 - hg, cpu_attention=cpu, gpu="n0.gpu0"
        )
        wl = Workload(gbs * nb, 512, 8)
        if fits(s, plan, rig, model, wl):
            best = max(best, simulate(s, plan, rig, model, wl).throughput_tok_s)
    found = search_free(rig, model, Workload(1, 512, 8), "throughput")
    assert found is not None
    plan, batch = found
    got = simulate(s, plan, rig, model, Workload(batch, 512, 8)).throughput_tok_s
    assert best > 0 and got >= best * (1 - 1e-3)


def test_cpu_attention_disk_terms_take_the_cpu_disk_route():
    """With CPU attention the disk share of the KV is read into the CPU workspace and the new K/V goes
    from the CPU to the disk (the engine's _gather and store_cache): the LP charges those at the
    CPU<->disk rates, not the GPU<->disk ones (here made 1 B/s so that using them would show)."""
    from dataclasses import replace

    from hetsim.planner.flexgen_lp import _slots, links
    from hetsim.strategies.flexgen_policy import kv_token_bytes

    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    ends = endpoints(rig)
    _, cpu, disk = ends
    lk = links(rig, *ends)
    d = rig.disks[disk]
    assert lk.d2c == min(rig.route(disk, cpu).bw, d.read_bw)
    assert lk.c2d == min(rig.route(cpu, disk).bw, d.write_bw)
    slow = replace(lk, d2g=1.0, g2d=1.0)
    wl = Workload(96, 512, 32)
    slots = _slots(rig, model, wl, 48, 2, Flags(True, False), slow, ends)
    (_, att), (_, mlp) = slots[len(slots) // 2 : len(slots) // 2 + 2]  # decode's first two
    tok = kv_token_bytes(model, False)
    kv_mean = 512 + 16
    # store_cache(k - 1) runs in the next position: the attention slot writes one of its two
    # batches' new K/V, the MLP slot the other
    assert att.dwrite["cd"] == pytest.approx(48 * tok / lk.c2d) == mlp.dwrite["cd"]
    # batch k + 1's read is issued in position k: one of the two in the attention slot, the next
    # layer's first batch's in the MLP slot
    read = 48 * (kv_mean - 1) * tok / lk.d2c
    assert att.dread["cd"] == pytest.approx(read) and mlp.dread["cd"] == pytest.approx(read)
    # ... by the copy threads, beside the issuing thread (flexgen.py: _Runner._gather): a bound of
    # its own (K's half of the gather, then both reads), not part of the thread's work, which keeps
    # only the host DRAM the reads and their fp32 conversion take (13 % of the read's time; under 5 %
    # for the reads alone, before the conversion was charged)
    assert att.kr0["cd"] == pytest.approx(read)
    assert 0.05 * read < att.p0["cd"] - att.p["cd"] < 0.15 * read and att.p0["cd"] < 0.5 * read


@pytest.mark.parametrize(
    ("gbs", "nb", "cg", "cc"), [(32, 2, 0, 0), (32, 2, 0, 50), (24, 8, 4, 84), (96, 1, 2, 94)]
)
def test_lp_follows_the_engine_with_cpu_attention_and_kv_on_disk(gbs, nb, cg, cc):
    """OPT-30B, 512 + 8 on flexgen-t4, CPU attention with 100, 50, 12 and 4 % of the KV on disk (24 x 8
    had 8 %, which no longer fits host memory since pinned weights are rounded as torch pins them): the
    LP's time at the runtime's placement is within 2 % of the engine's (-1.5..+0.4 %). The engine
    now reads the disk share on the copy threads beside the thread (32 x 2 with all of the KV on
    disk: 305.1 -> 282.6 s; half: 223.0 -> 204.9 s); the LP's bounds for those reads move with it
    (it was -0.6..+1.9 % against the serial read)."""
    from hetsim.planner.flexgen_lp import released_time_per_seq
    from hetsim.sim.run import simulate
    from hetsim.strategies.base import get_strategy
    from hetsim.strategies.flexgen_policy import FlexGenPlan

    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    ends = endpoints(rig)
    wl = Workload(gbs * nb, 512, 8)
    plan = FlexGenPlan(gbs, nb, 0, 100, cg, cc, 100, 0, cpu_attention=True, gpu=ends[0])
    sol = solve_lp(rig, model, wl, gbs, nb, Flags(True, False), ends)
    lp = released_time_per_seq(sol, plan, rig, model, wl, ends, None) * wl.batch
    engine = simulate(get_strategy("flexgen"), plan, rig, model, wl).e2e_s
    assert lp == pytest.approx(engine, rel=0.02)


@pytest.mark.parametrize(
    ("gbs", "nb", "cpu_attention"),
    [(128, 1, True), (64, 2, True), (48, 3, False), (48, 4, False), (96, 1, True), (32, 2, False)],
)
def test_lp_block_time_follows_the_engine_on_the_paper_rig(gbs, nb, cpu_attention):
    """OPT-30B, 512 + 32 on flexgen-t4: the LP's time at the placement the runtime makes is within 4 %
    of the engine's run of that plan (CPU attention at 64 x 2: at 64 x 3 the optimum's KV, whole
    percents, no longer fits host memory since pinned weights are rounded as torch pins them; GPU
    attention at 48 x 3: 64 x 3's optimum, placed, overfills memory once both the measured GPU working
    set and the pinned rounding are counted). Two
    terms follow the released loop as the engine runs it: a
    batch's KV store is issued in the next position (store_cache(k - 1) after compute_layer(k),
    flex_opt.py) and that position's barrier waits for it, so a one-batch prefill's store (1.76 s a
    layer through the copy threads) runs under the MLP, not after the attention (was +5.6 %); a
    GPU-attention decode's unpinned KV is pinned by a host memcpy before its DMA, one after the other
    (was -11 % to -12 %)."""
    from dataclasses import replace

    from hetsim.planner.flexgen_lp import released_time_per_seq
    from hetsim.sim.run import simulate
    from hetsim.strategies.base import get_strategy

    rig, model = datasheet_gpus(load_rig("flexgen-t4")), get_model("opt-30b")  # 128 x 1 fits 16 GB
    ends = endpoints(rig)
    wl = replace(Workload(1, 512, 32), batch=gbs * nb)
    sol = solve_lp(rig, model, wl, gbs, nb, Flags(cpu_attention, False), ends)
    plan = to_plan(sol, model, ends[0], None)
    lp = released_time_per_seq(sol, plan, rig, model, wl, ends, None) * wl.batch
    engine = simulate(get_strategy("flexgen"), plan, rig, model, wl).e2e_s
    # CPU attention within 0.4 % since its gather and host-DRAM share follow the engine (were -2.7 %)
    assert lp == pytest.approx(engine, rel=0.005 if cpu_attention else 0.04)


@pytest.mark.parametrize(("model", "prompt"), [("opt-30b", 512), ("opt-30b", 1024), ("opt-6.7b", 512)])
def test_flexgen_search_is_not_slower_with_a_faster_link(model, prompt):
    """The free-batch search on flexgen-t4 with PCIe 1.25x and 1.5x as fast: never slower than at
    1x, to within 0.5 % (the engine confirms the LP's best few; near-equal plans can swap). Before
    the LP followed the engine's KV-store overlap and memcpy-then-DMA loads, OPT-30B at 512 went
    8.39 -> 8.10 tok/s at 1.25x: the LP ranked GPU-attention plans 12 % too fast."""
    from dataclasses import replace as dc_replace

    from hetsim import api
    from hetsim.strategies.base import get_strategy
    from hetsim.sweep.grid import apply_hardware

    p = api.problem(model, "flexgen-t4", batch=None, prompt_len=prompt, gen_len=32)
    rates = []
    for factor in (1.0, 1.25, 1.5):
        q = dc_replace(p, rig=apply_hardware(p.rig, {"bw_scale": {"pcie": factor}}))
        rates.append(api.best_result(get_strategy("flexgen"), q, "throughput").throughput_tok_s)
    assert rates[1] >= rates[0] * 0.995 and rates[2] >= rates[1] * 0.995, rates


def _search_candidates(model: str, prompt: int, gpu_gb: float, n: int, keep=None):
    """The first ``n`` distinct plans (those ``keep`` keeps), in the LP's order, that the free search
    could confirm on flexgen-t4 with the GPU capped at ``gpu_gb``: (LP time at the runtime's
    placement, engine time)."""
    from dataclasses import replace

    from hetsim import api
    from hetsim.planner.flexgen_lp import lp_candidates_free, released_time_per_seq
    from hetsim.sim.run import fits, simulate
    from hetsim.strategies.base import get_strategy

    s = get_strategy("flexgen")
    p = api.problem(
        model, "flexgen-t4", batch=None, prompt_len=prompt, gen_len=32, gpu_mem_budget=gpu_gb * 1e9
    )
    ends = endpoints(p.rig)
    sols, _ = lp_candidates_free(p.rig, p.model, p.workload, ends)
    out, seen = [], set()
    for sol in sols:
        plan = to_plan(sol, p.model, ends[0], None)
        wl = replace(p.workload, batch=plan.block_size)
        if plan in seen or not fits(s, plan, p.rig, p.model, wl) or (keep and not keep(plan)):
            continue
        seen.add(plan)
        t = released_time_per_seq(sol, plan, p.rig, p.model, wl, ends, None)
        if t is not None:
            out.append((t * wl.batch, simulate(s, plan, p.rig, p.model, wl).e2e_s))
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize(("model", "prompt"), [("opt-30b", 512), ("opt-30b", 1024)])
def test_lp_follows_the_engine_on_the_search_candidates(model, prompt):
    """OPT-30B on flexgen-t4 at 12 GB of GPU memory: on the first 8 plans the free search could
    confirm (all with attention on the CPU) the LP's time is within 1 % of the engine's. Before the
    LP issued CPU attention's KV gather a position ahead (load_cache(k + 1) before compute_layer(k),
    flex_opt.py) and charged the weight DMA's share of host DRAM (the engine's first-come timeline)
    it was -8.6..+2.6 % at 512: one-batch plans too slow, multi-batch ones too fast, so the engine
    never saw the best plan at 12 GB (below). Since the GPU working set is the runtime's measured peak
    (two prefill score matrices) a GPU-attention plan is among the first 8 at 1024 (-1.2 %, within the
    4 % the LP keeps for GPU attention above); kept out here."""
    rows = _search_candidates(model, prompt, 12, 8, keep=lambda plan: plan.cpu_attention)
    assert len(rows) == 8
    errors = [lp / engine - 1 for lp, engine in rows]
    assert max(abs(e) for e in errors) < 0.01, errors


@pytest.mark.parametrize("model", ["opt-30b", "opt-6.7b"])
def test_flexgen_search_is_not_slower_with_more_gpu_memory(model):
    """OPT-30B and OPT-6.7B, 512 + 32 on flexgen-t4, own search (no flags), GPU capped at 8..16 GB:
    every GB more is never slower than the best below it, to within 0.5 % (near-equal plans can
    swap). Before (session 8's finding) OPT-30B at 12 GB gave 8.20 tok/s against 11 GB's 8.44: the
    LP misranked a one-batch plan the engine runs 3 % faster below the three it confirmed."""
    from hetsim import api
    from hetsim.strategies.base import get_strategy

    best = 0.0
    for gb in range(8, 17):
        p = api.problem(model, "flexgen-t4", batch=None, prompt_len=512, gen_len=32, gpu_mem_budget=gb * 1e9)
        rate = api.best_result(get_strategy("flexgen"), p, "throughput").throughput_tok_s
        assert rate >= best * 0.995, (gb, rate, best)
        best = max(best, rate)


@pytest.mark.parametrize(("prompt", "gb"), [(512, 13), (512, 14), (1024, 14)])
def test_flexgen_search_beats_weights_off_gpu_with_the_most_kv_that_fits(prompt, gb):
    """OPT-6.7B on flexgen-t4, GPU capped at 13-14 GB, own search: at least as fast as gbs 64 (32 at
    1024) with CPU attention, every weight on the CPU and as much KV on the GPU as fits. The LP's
    optimum there puts 4-6 % of the weights on the GPU, spread evenly over the layers; the released
    midpoint rule places no whole tensor at that percent, so the plan ran with the LP's smaller KV
    share and nothing on the GPU instead: 33.77 tok/s at 512 / 14 GB against 34.36 for the plan
    below, until the search re-solved the LP with the weights pinned where the runtime puts them."""
    from hetsim import api
    from hetsim.sim.run import fits, simulate
    from hetsim.strategies.base import get_strategy
    from hetsim.strategies.flexgen_policy import FlexGenPlan

    s = get_strategy("flexgen")
    p = api.problem(
        "opt-6.7b", "flexgen-t4", batch=None, prompt_len=prompt, gen_len=32, gpu_mem_budget=gb * 1e9
    )
    gbs = 64 if prompt == 512 else 32
    wl = Workload(gbs, prompt, 32)
    ref = 0.0
    for cg in range(30, 70):
        plan = FlexGenPlan(
            gbs, 1, 0, 100, cg, 100 - cg, 100, 0, cpu_attention=True, gpu="n0.gpu0", gpu_mem_budget=gb * 1e9
        )
        if fits(s, plan, p.rig, p.model, wl):
            ref = max(ref, simulate(s, plan, p.rig, p.model, wl).throughput_tok_s)
    got = api.best_result(s, p, "throughput").throughput_tok_s
    assert ref > 0 and got >= ref * (1 - 1e-3), (got, ref)


@pytest.mark.parametrize("prompt", [512, 1024])
def test_lp_follows_the_engine_with_most_weights_on_the_gpu(prompt):
    """OPT-6.7B on flexgen-t4 (all 16 GB): on the first 10 plans the free search could confirm, most
    with 53-92 % of the weight bytes on the GPU, the LP's time at the runtime's placement within 3 % of
    the engine's. Before, the LP charged the embedding and output layers' weights as all off the
    GPU (the released init_weight_list places them by the same percentages as every layer,
    flex_opt.py) and spread the fractions evenly over each layer's bytes where whole tensors give
    an attention block, an MLP block and the tables each their own share: -3.0..+14.5 % at 512.
    Plans with KV on disk are in (they were left out while the LP charged the disk share's read in
    series on the load stream: +7.5..+12 %; see the test below)."""
    rows = _search_candidates("opt-6.7b", prompt, 16, 10)
    assert len(rows) == 10
    errors = [lp / engine - 1 for lp, engine in rows]
    assert max(abs(e) for e in errors) < 0.03, errors


@pytest.mark.parametrize(
    ("model", "gbs", "nb", "wg", "cg", "cc"),
    [
        ("opt-6.7b", 8, 1, 87, 97, 0),
        ("opt-6.7b", 16, 2, 60, 30, 40),
        ("opt-6.7b", 32, 2, 60, 0, 50),
        ("opt-6.7b", 16, 4, 50, 0, 80),
        ("opt-30b", 16, 4, 0, 0, 50),
    ],
)
def test_lp_follows_the_engine_with_gpu_attention_and_kv_on_disk(model, gbs, nb, wg, cg, cc):
    """512 + 32 on flexgen-t4, attention on the GPU, 3..50 % of the KV on disk, no weights on disk:
    the LP's time at the plan's placement within 2.5 % of the engine's (was +12.0, +6.5, -3.6,
    +8.3 and +7.8 %). The released runtime puts a mixed cache's disk segment on the copy threads
    (general_copy, pytorch_backend.py:831-833), which read it on the disk beside the issuing thread
    and the weight DMA and copy it over the link when it lands (copy_worker_func, :896-902): the LP
    had the read in series on the load stream (at the disk's rate, beside the weights' DMA), and
    the engine read all of it at the position's start, before the CPU segment was pinned, with its
    link hop booked ahead of the copies issued before the read landed."""
    from hetsim.sim.run import simulate
    from hetsim.strategies.base import get_strategy
    from hetsim.strategies.flexgen_policy import FlexGenPlan

    rig, m = datasheet_gpus(load_rig("flexgen-t4")), get_model(model)  # the plans fit 16 GB
    ends = endpoints(rig)
    plan = FlexGenPlan(gbs, nb, wg, 100 - wg, cg, cc, 100, 0, cpu_attention=False, gpu=ends[0])
    wl = Workload(gbs * nb, 512, 32)
    lp = placed_lp(plan, rig, m, wl)
    engine = simulate(get_strategy("flexgen"), plan, rig, m, wl).e2e_s
    assert lp == pytest.approx(engine, rel=0.025)


def test_lp_ties_go_to_the_faster_tier():
    """Llama-2-7B on hexgen-homogeneous, gbs 64, GPU attention: every weight and KV byte fits on the
    GPU, and a sliver of the weights off it costs no time (its load hides under compute). Without
    the tie-break GLOP returned 99.9 % of the weights on the GPU, which whole tensors realise as
    87 %: the search's best FlexGen plan there fell from 663 to 617 tok/s."""
    from hetsim import api

    p = api.problem("llama2-7b", "hexgen-homogeneous", batch=None, prompt_len=512, gen_len=32)
    sol = solve_lp(p.rig, p.model, Workload(64, 512, 32), 64, 1, Flags(False, False), endpoints(p.rig))
    assert sol is not None
    assert sol.x["wg"] == pytest.approx(1.0, abs=1e-9) and sol.x["cg"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    ("rig", "model", "gbs", "nb", "cpu_attention"),
    [
        ("hexgen-homogeneous", "llama2-7b", 64, 1, False),
        ("flexgen-t4", "opt-6.7b", 4, 1, False),
        ("flexgen-t4", "opt-6.7b", 32, 2, True),
        ("flexgen-t4", "opt-30b", 48, 3, True),
        ("mixed-lab", "llama2-70b", 16, 4, False),
    ],
)
def test_the_tie_break_only_orders_equal_times(monkeypatch, rig, model, gbs, nb, cpu_attention):
    """The LP's optimum with the tie-break costs, without it, what the optimum without it costs (to
    within the tie-break's own size, 6e-6 of the compute): it chooses among equal times only."""
    from hetsim.planner import flexgen_lp

    r, m = load_rig(rig), get_model(model)
    wl, ends, fl = Workload(gbs * nb, 512, 32), endpoints(r), Flags(cpu_attention, False)
    cm = cost_model(r, m, wl, gbs, nb, fl, ends)
    with_tie = solve_lp(r, m, wl, gbs, nb, fl, ends)
    monkeypatch.setattr(flexgen_lp, "TIE_BREAK", 0.0)
    bare = cost_model(r, m, wl, gbs, nb, fl, ends)
    without = solve_lp(r, m, wl, gbs, nb, fl, ends)
    assert with_tie is not None and without is not None
    compute = sum(k * cm.layers * s.p.get("const", 0.0) for k, s in cm.slots)
    x = {k: min(max(v, 0.0), 1.0) for k, v in with_tie.x.items()}
    assert cost_at(bare, x) <= without.block_time_s + 6e-6 * compute + 1e-9


@pytest.mark.parametrize(("gbs", "wg", "cg"), [(24, 75, 44), (32, 71, 39), (16, 57, 61)])
def test_a_one_batch_gpu_attention_kv_load_runs_in_the_mlp_position(gbs, wg, cg):
    """OPT-6.7B, 512 + 32 on flexgen-t4, one GPU batch, attention on the GPU over a KV cache partly on
    the CPU: the LP's time at the plan's placement within 7.5 % of the engine's (was +9.6, +7.6 and
    +11.1 %). With one batch load_cache(k + 1) is the next layer's (flex_opt.py:1049), issued in the
    MLP's position beside the next attention's weights and before the MLP's kernels (its host
    memcpy holds the thread); the LP had it in the attention's own slot. What is left (+4.7 ..
    +7.0 %) is the first sub-step's w + c: the memcpy runs beside the weight DMA in the engine
    (docs/offloading-baselines.md, "Left")."""
    from hetsim.sim.run import simulate
    from hetsim.strategies.base import get_strategy
    from hetsim.strategies.flexgen_policy import FlexGenPlan

    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    ends = endpoints(rig)
    plan = FlexGenPlan(gbs, 1, wg, 100 - wg, cg, 100 - cg, 100, 0, cpu_attention=False, gpu=ends[0])
    wl = Workload(gbs, 512, 32)
    lp = placed_lp(plan, rig, model, wl)
    engine = simulate(get_strategy("flexgen"), plan, rig, model, wl).e2e_s
    assert lp == pytest.approx(engine, rel=0.075)


def test_cpu_attention_rounding_keeps_a_plan_whose_cpu_memory_is_full():
    """OPT-30B 1024 + 32 on flexgen-t4 with 227 GB of host memory (19 GB more, about what its pinned
    weights' rounding takes), CPU attention, a block of 96: KV fractions that fill host memory,
    1.20/97.90/0.90 % (and 1.0 % of the weights on disk). Rounding the disk share to the nearest
    percent drops it (1/99/0), which no longer fits in host memory, so the candidate would be
    dropped; the remainder rule (1/97/2) fits. The fractions are the LP's for 48 x 2 until the GPU
    working set became the runtime's measured peak (two prefill score matrices: 48 x 2 needs 17.7 GB
    of the T4's 16 then), here at 24 x 4, the same block, which the GPU holds. (Before the footprint
    took the copy threads' 8 GiB of relays and one CPU-attention workspace pair, the case was
    OPT-30B 512 + 32, 96 x 2: 3/96/1 over, 3/95/2 kept.)"""
    from dataclasses import replace

    from hetsim.planner.flexgen_lp import LpSolution, _confirmable
    from hetsim.sim.run import fits
    from hetsim.strategies.base import get_strategy

    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    ends = endpoints(rig)
    rig = replace(rig, devices={**rig.devices, ends[1]: replace(rig.devices[ends[1]], mem_bytes=227e9)})
    wl = Workload(96, 1024, 32)
    x = {"wg": 0.0, "wc": 0.98975, "wd": 0.01025, "cg": 0.01200, "cc": 0.97899, "cd": 0.00902}
    sol = LpSolution(24, 4, Flags(True, False), {**x, "hg": 1.0, "hc": 0.0, "hd": 0.0}, 730.3, 7.607)
    nearest = to_plan(sol, model, ends[0], None)
    assert (nearest.cg, nearest.cc) == (1, 99)
    assert not fits(get_strategy("flexgen"), nearest, rig, model, wl)
    plans = _confirmable([sol], model, ends, None, lambda _p: wl, rig)
    assert [(p.gpu_batch_size, p.num_gpu_batches, p.cg, p.cc) for p in plans] == [(24, 4, 1, 97)]
    assert fits(get_strategy("flexgen"), plans[0], rig, model, wl)


def test_cpu_attention_disk_share_of_a_percent_or_more_rounds_to_the_nearest_percent():
    """OPT-30B 512 + 32 on flexgen-t4, CPU attention, 80 x 2: the LP puts 1.08 % of the KV on disk.
    ``to_plan`` gives the disk its nearest percent, 1 (KV 2/97/1), and the CPU the rest; the
    remainder rule (``nearest_disk=False``) gives it what rounding the others down leaves, 2
    (2/96/2). (The case was 96 x 2, 1.03 % on disk, until the GPU working set became the runtime's
    measured peak, two prefill score matrices: the LP then keeps no KV on the GPU there.)"""
    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    ends = endpoints(rig)
    sol = solve_lp(rig, model, Workload(160, 512, 32), 80, 2, Flags(True, False), ends)
    assert sol.x["cd"] == pytest.approx(0.0108, abs=5e-4)
    nearest = to_plan(sol, model, ends[0], None)
    remainder = to_plan(sol, model, ends[0], None, nearest_disk=False)
    assert (nearest.cg, nearest.cc) == (2, 97)
    assert (remainder.cg, remainder.cc) == (2, 96)


def test_gpu_attention_disk_share_rounds_to_the_nearest_percent_too():
    """llama2-70b on hexgen-homogeneous, 512 + 32, GPU attention 96 x 32: the LP's optimum puts the KV
    0.09/52.99/46.92 % on GPU/CPU/disk. Flooring the CPU's share and giving the disk the rest (0/52/48)
    ran 48.14 tok/s against 48.35 at 0/53/47, and the LP's own time at the placement agrees (0.6646 vs
    0.6608 s a sequence): the remainder of two floors went to the slowest tier. The disk's nearest
    percent, as for CPU attention, gives 0/53/47 (review of s15-16c: the branch's smaller GPU working
    set let the optimum put 0.07 % more on the GPU, and the floor took a percent from the CPU)."""
    x = {
        "wg": 0.0,
        "wc": 1.0,
        "wd": 0.0,
        "cg": 0.0009,
        "cc": 0.5299,
        "cd": 0.4692,
        "hg": 1.0,
        "hc": 0.0,
        "hd": 0.0,
    }
    from hetsim.planner.flexgen_lp import LpSolution

    sol = LpSolution(96, 32, Flags(False, False), x, 2029.0, 0.6605)
    plan = to_plan(sol, get_model("llama2-70b"), "n0.gpu0", None)
    assert (plan.cg, plan.cc, plan.cd) == (0, 53, 47)
    remainder = to_plan(sol, get_model("llama2-70b"), "n0.gpu0", None, nearest_disk=False)
    assert (remainder.cg, remainder.cc, remainder.cd) == (0, 52, 48)


def test_the_cut_off_keeps_the_optimums_ranking_when_a_placed_time_is_below_its_optimum():
    """_confirmable stops reading optima past 15 % of the best placed time; a placed time can be
    below its own optimum (the placed cost model is not the LP's: llama2-13b on mixed-lab, 128+64,
    a repinned plan's 2 % below), so that cut-off must not drop the optima the optimum's ranking confirms (the
    best 3 within 15 % of the best optimum). Real candidates, their LP times set so: the first's
    optimum 2 % over its placed time, the next two 14 % over the first (past 1.02 / 1.15 of it)."""
    from dataclasses import replace

    from hetsim.planner.flexgen_lp import _confirmable, lp_candidates_free, released_time_per_seq

    rig, model = load_rig("flexgen-t4"), get_model("opt-6.7b")
    ends = endpoints(rig)
    wl = Workload(1, 256, 16)
    sols = lp_candidates_free(rig, model, wl, ends)[0]
    plans, picked = [], []
    for sol in sols:
        plan = to_plan(sol, model, ends[0], None)
        if plan not in plans:
            plans.append(plan)
            picked.append(sol)
    first, second, third = picked[:3]
    block = replace(wl, batch=first.gbs * first.nb)
    placed = released_time_per_seq(first, plans[0], rig, model, block, ends, None)
    top = placed * 1.02
    fake = [
        replace(first, time_per_seq_s=top, block_time_s=first.block_time_s * top / first.time_per_seq_s),
        *(
            replace(s, time_per_seq_s=top * 1.14, block_time_s=s.block_time_s * top * 1.14 / s.time_per_seq_s)
            for s in (second, third)
        ),
    ]
    out = _confirmable(fake, model, ends, None, lambda p: replace(wl, batch=p.block_size), rig)
    assert plans[1] in out and plans[2] in out, out


@pytest.mark.parametrize("cc", [47, 0])
def test_lp_follows_the_engine_with_the_disk_kv_conversion(cc):
    """llama2-70b, 128 x 16 + 512 + 3 on hexgen-homogeneous (16 GB/s disk, 113 GB/s of host DRAM),
    CPU attention with 53 % / all of the KV on disk: the copy threads' fp16 -> fp32 conversion
    (pytorch_backend.py:904, ``KV_CONVERT``) shares host DRAM with the thread's CPU work in the
    engine and, through ``overlap_delay`` at the read's rate times 1 + KV_CONVERT, in the LP: within
    0.5 % (-0.00 % / -0.02 %; with the LP at the read's rate alone, -1.13 % at 47)."""
    from hetsim.planner.flexgen_lp import released_time_per_seq
    from hetsim.sim.run import simulate
    from hetsim.strategies.base import get_strategy
    from hetsim.strategies.flexgen_policy import FlexGenPlan

    rig, model = load_rig("hexgen-homogeneous"), get_model("llama2-70b")
    ends = endpoints(rig)
    wl = Workload(128 * 16, 512, 3)
    plan = FlexGenPlan(128, 16, 0, 100, 0, cc, 100, 0, cpu_attention=True, gpu=ends[0])
    sol = solve_lp(rig, model, wl, 128, 16, Flags(True, False), ends)
    lp = released_time_per_seq(sol, plan, rig, model, wl, ends, None) * wl.batch
    engine = simulate(get_strategy("flexgen"), plan, rig, model, wl).e2e_s
    assert lp == pytest.approx(engine, rel=0.005)


def test_the_lps_disk_rates_are_the_engines_copies(rig):
    """``links``' four disk rates and the engine's copies read one rule (``Rig.copy_bw``): the tiny
    rig's 8 GB/s NVMe link capped by its disk's 2 GB/s reads and 1 GB/s writes; the PCIe link's own
    10 GB/s pinned and 5 GB/s pageable where no disk is at either end."""
    from hetsim.planner.flexgen_lp import links
    from hetsim.sim.engine import Engine

    got = links(rig, "n0.gpu0", "n0.cpu0", "n0.disk0")
    assert (got.d2g, got.g2d, got.d2c, got.c2d, got.pin, got.page) == (2e9, 1e9, 2e9, 1e9, 10e9, 5e9)
    engine = Engine(rig)
    for src, dst, rate in [("n0.disk0", "n0.gpu0", got.d2g), ("n0.gpu0", "n0.disk0", got.g2d),
                           ("n0.disk0", "n0.cpu0", got.d2c), ("n0.cpu0", "n0.disk0", got.c2d)]:  # fmt: skip
        assert engine._path(src, dst, True).rate == rate == rig.copy_bw(src, dst)
    assert engine._path("n0.cpu0", "n0.gpu0", False).rate == rig.copy_bw("n0.cpu0", "n0.gpu0", False) == 5e9
