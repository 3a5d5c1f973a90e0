"""A search's estimate of a plan extends its proxy (the first ``PROXY_GEN_LEN`` tokens) along the
proxy's own steady line (``head_end``): decode steps grow with the KV's length, and the start-up and
the last step (nothing left to prefetch) happen once; past ``FF_LONG_GEN_LEN`` tokens, where the
lanes' growth may bend the steps after the proxy (``bend_bound``), a tail sample (``tail_end``)
sees a lane that takes over later. Holding the proxy's mean step flat put
FlexGen's estimates up to 7.6 % fast (a KV cache split 95/4 GPU/CPU crosses PCIe each step: 5.2 %),
and a slower HexGen plan of six replicas 12.7 % fast, enough to rank it first."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hetsim.api import problem
from hetsim.hardware import load_rig
from hetsim.models import get_model
from hetsim.planner import ranking
from hetsim.planner.ranking import BEND_TOL, PROXY_GEN_LEN, SETTLE_GEN_LEN, estimate
from hetsim.planner.search import search
from hetsim.sim.run import (
    _round_time,
    _step_by_step,
    bend_bound,
    falling_end,
    head_end,
    settled,
    short_run,
    simulate,
    tail_end,
)
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.strategies.gpu_only import PipelinePlan
from hetsim.strategies.hexgen import HexGenPlan, Replica
from hetsim.strategies.pipeline import Stage
from hetsim.workload import Workload

FLEXGEN = get_strategy("flexgen")


def _stream(steps: list[float], ttft: float = 1.0, per_round: int = 4) -> list[tuple[float, int]]:
    """Token times of one stream: its first round at ``ttft``, then one round per step."""
    times, t = [(ttft, per_round)], ttft
    for d in steps:
        t += d
        times.append((t, per_round))
    return times


def test_the_head_is_extended_along_its_own_line():
    """Steps 2..n-2 on a line (0.5 s, +0.01 s a step), a slow first step (a pipeline's fill) and a
    short last one (nothing to prefetch): the head of 6 rounds gives the end of 40 exactly; a flat
    extrapolation of the head's mean step would not."""
    n, g = 40, PROXY_GEN_LEN

    def steps(k: int) -> list[float]:
        return [0.9] + [0.5 + 0.01 * i for i in range(2, k - 1)] + [0.3 + 0.01 * (k - 1)]

    full, head = _stream(steps(n)), _stream(steps(g))
    assert head_end({0: head}, g, n) == pytest.approx(full[-1][0], rel=1e-12)
    flat = head[0][0] + (head[-1][0] - head[0][0]) * (n - 1) / (g - 1)
    assert abs(flat / full[-1][0] - 1) > 0.05


def test_streams_end_with_the_slowest_and_a_step_never_shrinks_with_the_kv():
    """Two streams: the run ends with the one whose line ends last; steps that shrink in the head
    (a start-up settling) are held flat, not extended downwards."""
    n, g = 30, PROXY_GEN_LEN
    fast = _stream([0.4 + 0.001 * i for i in range(1, g)], ttft=1.0)
    slow = _stream([0.4 + 0.002 * i for i in range(1, g)], ttft=1.1)
    end = head_end({0: fast, 1: slow}, g, n)
    assert end == pytest.approx(head_end({1: slow}, g, n), rel=1e-12)
    assert end > head_end({0: fast}, g, n)
    shrinking = _stream([0.5 - 0.01 * i for i in range(1, g)])
    flat = _stream([0.49, 0.47, 0.47, 0.47, 0.47])  # a first step settling, then flat
    assert head_end({0: shrinking}, g, n) == pytest.approx(shrinking[-1][0] + (n - g) * 0.47, rel=1e-12)
    assert head_end({0: flat}, g, n) == pytest.approx(flat[-1][0] + (n - g) * 0.47, rel=1e-12)


def test_a_head_with_no_steady_window_goes_on_at_its_mean_step():
    """Steps that do not change evenly over the head's window (a repeating pattern, a pipeline's
    fill longer than the head): no line to extend; each stream goes on at its window's mean step
    (rounds 2..6, the last step included), its start-up once."""
    g, n = PROXY_GEN_LEN, 40
    pattern = _stream([2.0, 0.4, 0.9, 0.4, 0.9])  # a first step waiting on a prefill, then 0.4 / 0.9
    assert head_end({0: pattern}, g, n) == pytest.approx(pattern[-1][0] + (n - g) * 0.65, rel=1e-12)
    fill = _stream([0.5, 0.5, 0.6, 0.6, 0.6])
    assert head_end({0: fill}, g, n) == pytest.approx(fill[-1][0] + (n - g) * 0.575, rel=1e-12)
    assert head_end({0: _stream([0.5] * 3)}, g, n) is None  # fewer rounds than the head
    assert head_end({}, g, n) is None  # no stream made tokens: no end to extend (was 0.0)


RIGS = ["flexgen-t4", "hexgen-homogeneous", "hetegen-a10"]
STRAIGHT = 1e-6  # spread of the step-to-step change, of the mean step: rounding alone


def _straight(streams: dict[int, list[tuple[float, int]]], g: int, n: int) -> bool:
    """Whether each stream's steps from the head's window to the last but one grow evenly, to
    rounding: no lane takes over after the proxy."""
    for stream in streams.values():
        b = sum(c for _, c in stream) // n
        t = [_round_time(stream, b, r) for r in range(2, n)]
        steps = [y - x for x, y in pairwise(t)]
        changes = [y - x for x, y in pairwise(steps)]
        if max(changes) - min(changes) > STRAIGHT * sum(steps) / len(steps):
            return False
    return True


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(
    rig=st.sampled_from(RIGS),
    model=st.sampled_from(["opt-6.7b", "opt-13b"]),
    gbs=st.sampled_from([4, 8, 16, 32, 48]),
    nb=st.sampled_from([1, 2, 3]),
    w=st.sampled_from([(100, 0), (88, 12), (50, 50), (20, 80), (0, 80), (20, 12)]),
    c=st.sampled_from([(100, 0), (95, 4), (95, 0), (50, 50), (0, 100), (0, 5), (0, 0)]),
    cpu_attention=st.booleans(),
    compress=st.sampled_from([(False, False), (True, False), (False, True)]),
    prompt=st.sampled_from([128, 256, 512]),
    gen=st.sampled_from([24, 40, 64]),
)
def test_flexgen_plans_are_estimated_as_their_run(
    rig, model, gbs, nb, w, c, cpu_attention, compress, prompt, gen
):
    """Random FlexGen plans (KV on one tier or split, CPU attention or not, compressed or not) on
    three rigs: where the run's decode steps grow evenly after the proxy, the estimate is within
    0.1 % of the run, every step in the engine (94e08e9: up to 7.6 % fast; at gen 64 a 95/4 split is
    5.2 %, an end step ~8 % shorter than the rest 1.4 %). Where a lane takes over later (the steps
    bend up after the proxy) the estimate stays on the proxy's line up to FF_LONG_GEN_LEN tokens:
    test_a_bend_after_the_proxy."""
    if compress[1] and c not in ((100, 0), (0, 100), (0, 0)):
        c = (0, 100)  # a compressed cache sits whole on one tier (flexgen_policy.validate)
    p = problem(model, rig, None, 128, 32)
    plan = FlexGenPlan(gbs, nb, *w, *c, 100, 0, cpu_attention, *compress)
    wl = Workload(gbs * nb, prompt, gen)
    run, streams, _, _, _ = _step_by_step(FLEXGEN, plan, p.rig, p.model, wl)
    assume(run.feasible and _straight(streams, PROXY_GEN_LEN, gen))
    guess = estimate(FLEXGEN, plan, p.rig, p.model, wl)
    assert abs(guess.e2e_s / run.e2e_s - 1) < 1e-6


BENT = FlexGenPlan(8, 3, 88, 12, 50, 50, 100, 0, cpu_attention=False)  # its steps bend up at step 7


@pytest.mark.xfail(
    strict=True,
    reason="up to FF_LONG_GEN_LEN tokens the estimate extends the proxy's line alone: where a lane takes "
    "over after the proxy (here the CPU-resident half of the KV, growth 251 -> 309 us a step from step 7) "
    "it is fast by the bend, 1.8 % at gen 64 (4.917 s against the run's 5.007)",
)
def test_a_bend_after_the_proxy():
    p = problem("opt-6.7b", "hexgen-homogeneous", None, 128, 32)
    wl = Workload(24, 128, 64)
    run = simulate(FLEXGEN, BENT, p.rig, p.model, wl, exact=True)
    assert abs(estimate(FLEXGEN, BENT, p.rig, p.model, wl).e2e_s / run.e2e_s - 1) < 0.01


def test_a_bend_after_the_proxy_is_seen_in_a_long_run():
    """Past FF_LONG_GEN_LEN tokens, where the lanes' growth may bend the steps (``bend_bound``: 1.04 s
    of 10.71), a timing-only tail sample (``tail_end``) sees the bend: the plan at gen 128 is
    estimated as its run (the head alone: 3.7 % fast, 10.712 s against 11.126)."""
    p = problem("opt-6.7b", "hexgen-homogeneous", None, 128, 32)
    wl = Workload(24, 128, 128)
    run = simulate(FLEXGEN, BENT, p.rig, p.model, wl, exact=True)
    assert estimate(FLEXGEN, BENT, p.rig, p.model, wl).e2e_s == pytest.approx(run.e2e_s, rel=1e-6)


def _tail_samples(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the estimate's tail samples (each call of ``tail_end`` appends the generation length)."""
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(args[4].gen_len)
        return tail_end(*args, **kwargs)

    monkeypatch.setattr(ranking, "tail_end", counted)
    return calls


def test_the_tail_sample_is_taken_only_where_a_bend_may_matter(monkeypatch):
    """The tail sample costs a second proxy-sized run: at gen 128 the bending plan takes it; a plan
    all on the GPU (only the GPU's attention grows: its lanes' growth is the step's, bound 0) does not,
    and its estimate is the proxy's line, which is its run; nothing takes one at gen 64."""
    calls = _tail_samples(monkeypatch)
    p = problem("opt-6.7b", "hexgen-homogeneous", None, 128, 32)
    on_gpu = FlexGenPlan(8, 3, 100, 0, 100, 0, 100, 0, cpu_attention=False)
    for n in (64, 128):
        wl = Workload(24, 128, n)
        guess = estimate(FLEXGEN, on_gpu, p.rig, p.model, wl)
        run = simulate(FLEXGEN, on_gpu, p.rig, p.model, wl, exact=True)
        assert guess.e2e_s == pytest.approx(run.e2e_s, rel=1e-6)
        estimate(FLEXGEN, BENT, p.rig, p.model, wl)
    assert calls == [128]


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(
    rig=st.sampled_from(RIGS),
    gbs=st.sampled_from([4, 8, 16, 32]),
    nb=st.sampled_from([1, 2, 3]),
    w=st.sampled_from([(100, 0), (88, 12), (50, 50), (20, 80), (0, 80)]),
    c=st.sampled_from([(100, 0), (95, 4), (50, 50), (0, 100), (0, 5)]),
    cpu_attention=st.booleans(),
    prompt=st.sampled_from([128, 512]),
)
def test_the_bend_bound_holds_and_skipping_the_tail_costs_at_most_its_share(
    rig, gbs, nb, w, c, cpu_attention, prompt
):
    """Random FlexGen plans at gen 96: the run ends no later than the proxy's line plus
    ``bend_bound`` (a step is a chain of lanes' work, which grows no faster than all lanes'
    together), and the estimate is within ``BEND_TOL`` of the run where it takes no tail sample,
    within 0.3 % where it does (300 random plans, gen 24-128: at most 0.23 %)."""
    p = problem("opt-6.7b", rig, None, 128, 32)
    plan = FlexGenPlan(gbs, nb, *w, *c, 100, 0, cpu_attention)
    wl = Workload(gbs * nb, prompt, 96)
    run = simulate(FLEXGEN, plan, p.rig, p.model, wl, exact=True)
    r, streams, lanes = short_run(FLEXGEN, plan, p.rig, p.model, wl.head(PROXY_GEN_LEN))
    line = head_end(streams, PROXY_GEN_LEN, 96)
    assume(run.feasible and r.feasible and line is not None)
    bound = bend_bound(streams, lanes, PROXY_GEN_LEN, 96)
    assert run.e2e_s - line <= bound + 1e-9 * run.e2e_s
    error = abs(estimate(FLEXGEN, plan, p.rig, p.model, wl).e2e_s / run.e2e_s - 1)
    assert error <= (BEND_TOL if bound <= BEND_TOL * line else 3e-3) + 1e-9


def test_hexgen_replicas_of_different_speeds_are_estimated_as_their_run():
    """Llama-2-70B on hexgen-full-budget, 16 x (128 + 120): six TP-8 replicas, each one stream, end
    with the slowest. The proxy's mean step after the last replica's first token put them at 353.4
    tok/s (the run: 313.6) and the search picked them over two replicas (325.9); each stream's own
    line gives the run, and the search the faster plan."""
    strategy, rig, model = get_strategy("hexgen"), load_rig("hexgen-full-budget"), get_model("llama2-70b")
    wl = Workload(16, 128, 120)
    nodes = ("n4", "n5", "n2", "n0", "n1", "n8")  # a TP-8 replica of all 80 layers on each
    six = HexGenPlan(tuple(Replica((Stage(tuple(f"{n}.gpu{i}" for i in range(8)), 80),)) for n in nodes))
    picked = search(strategy, rig, model, wl, "throughput")
    for plan in (six, picked):
        run = simulate(strategy, plan, rig, model, wl, exact=True)
        assert estimate(strategy, plan, rig, model, wl).throughput_tok_s == pytest.approx(
            run.throughput_tok_s, rel=1e-6
        )
    assert simulate(strategy, picked, rig, model, wl).throughput_tok_s > 1.03 * (
        simulate(strategy, six, rig, model, wl).throughput_tok_s
    )


def test_the_bend_bound_takes_the_tail_where_the_head_has_no_line():
    """A stream whose window is not steady (steps 0.5, 0.5, 0.6: a fill) goes on flat at its mean
    step (``head_end``), so the growth its lanes read (+0.05 s a step) is not on its line: nothing
    bounds the bend, and the bound is inf (take the tail sample), where the window's steps' own
    growth (+0.05) cancelled the lanes' and said 0. Lanes growing as a steady stream's steps: 0."""
    g, n = PROXY_GEN_LEN, 3584

    def lanes_of(steps: list[float]) -> list[tuple[int, dict[str, float]]]:
        busy, out = 0.4, [(4, {"gpu": 0.4})]
        for d in steps:
            busy += d
            out.append((4, {"gpu": busy}))
        return out

    fill = [0.5, 0.5, 0.5, 0.6, 0.6]
    assert head_end({0: _stream(fill)}, g, n) == pytest.approx(_stream(fill)[-1][0] + (n - g) * 0.55)
    assert bend_bound({0: _stream(fill)}, lanes_of(fill), g, n) == float("inf")
    even = [0.5, 0.5, 0.55, 0.6, 0.65]
    assert bend_bound({0: _stream(even)}, lanes_of(even), g, n) == pytest.approx(0.0, abs=1e-9)


def test_only_a_short_run_keeps_its_lanes_by_token():
    """``bend_bound`` reads a short run's lanes by token event (``short_run``); a longer run run step
    by step (``--exact``, a trace, a fast-forward that found no steady window) keeps none: a dict of
    every lane at each token event is ~100 MB for 1024 tokens on 48 GPUs."""
    p = problem("opt-6.7b", "hexgen-homogeneous", None, 128, 32)
    short = _step_by_step(FLEXGEN, BENT, p.rig, p.model, Workload(24, 128, PROXY_GEN_LEN))
    long = _step_by_step(FLEXGEN, BENT, p.rig, p.model, Workload(24, 128, 64))
    assert sum(count for count, _ in short[4]) == 24 * PROXY_GEN_LEN
    assert long[0].feasible and long[4] == []


GPU_ONLY = get_strategy("gpu-only")


def _pipeline(rig: str, model: str, groups: list[tuple[str, ...]], layers: tuple[int, ...], mb: int):
    p = problem(model, rig, None, 128, 32)
    return p, PipelinePlan(tuple(Stage(g, n) for g, n in zip(groups, layers, strict=True)), mb)


@pytest.mark.parametrize(
    ("rig", "model", "groups", "layers", "wl"),
    [
        # A100 / 2 x A6000 / 4090: the first micro-batch's steps 0.82, 0.18, then 0.12 s from round 4
        (
            "mixed-lab",
            "llama2-70b",
            [("n0.gpu0",), ("n1.gpu0", "n1.gpu1"), ("n0.gpu1",)],
            (47, 20, 13),
            Workload(4, 128, 160),
        ),
        (
            "mixed-lab",
            "llama2-70b",
            [("n0.gpu0",), ("n1.gpu0", "n1.gpu1"), ("n0.gpu1",)],
            (47, 20, 13),
            Workload(4, 128, 32),
        ),
        # 8 stages, 4 micro-batches: a micro-batch's steps 65, 59, 53, then 47 ms from round 5
        (
            "h100-sxm-measured",
            "llama2-70b",
            [(f"n0.gpu{i}",) for i in range(8)],
            (10,) * 8,
            Workload(16, 512, 900),
        ),
    ],
)
def test_a_pipeline_still_settling_in_the_proxy_is_estimated_as_its_run(rig, model, groups, layers, wl):
    """A pipeline's micro-batches start bunched after the prefill and spread out over a few rounds;
    the proxy's window (rounds 2..5) still falls (or is uneven) there, and its line ran slow: the
    mixed-lab plan +11.1 % (21.518 s against the run's 19.372), the 8-stage one +11.7 % (48.472
    against 43.397), enough to rank either below a slower plan; at gen 32 the first +7.7 %. An
    unsettled proxy (``settled``) is extended from the fast-forward's 16-round head instead."""
    p, plan = _pipeline(rig, model, groups, layers, 2 if rig == "mixed-lab" else 4)
    r, streams, _ = short_run(GPU_ONLY, plan, p.rig, p.model, wl.head(PROXY_GEN_LEN))
    assert r.feasible and not settled(streams, PROXY_GEN_LEN)
    run = simulate(GPU_ONLY, plan, p.rig, p.model, wl, exact=True)
    assert estimate(GPU_ONLY, plan, p.rig, p.model, wl).e2e_s == pytest.approx(run.e2e_s, rel=1e-4)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    pattern=st.lists(st.floats(0.1, 1.0), min_size=2, max_size=6),
    growth=st.floats(0.0, 0.01),
    start=st.floats(0.0, 3.0),
    periods=st.integers(1, 200),
)
def test_a_head_repeating_a_pattern_is_extended_over_whole_periods(pattern, growth, start, periods):
    """Steps that repeat a pattern and grow with the KV (step i: ``pattern[i % p] + growth x i``
    after a start-up step of any length) have a line over whole periods (``_stream_line``): a head
    of 16 rounds gives the end exactly where the steps added after it are whole periods, and
    within the pattern's spread where not (the window's mean alone ran up to +13 %, a 4-stage
    pipeline of 4 micro-batches repeating 9, 22, 28, 30, 30 ms)."""
    g, p = SETTLE_GEN_LEN, len(pattern)
    spread = max(pattern) - min(pattern)
    assume(spread > 0.01)  # a pattern (a milder one is a line, within FF_STEADY_TOL)

    def steps(k: int) -> list[float]:
        return [start] + [pattern[i % p] + growth * i for i in range(2, k)]

    head = _stream(steps(g))
    period = settled({0: head}, g)
    assert period > 1 and p % period == 0
    for n in (g + periods * p, g + periods * p + 1):
        end = _stream(steps(n))[-1][0]
        off = 1e-9 * end if (n - g) % period == 0 else spread * p
        assert head_end({0: head}, g, n) == pytest.approx(end, abs=off)


def test_a_pipeline_repeating_a_pattern_is_estimated_as_its_run():
    """Four TP-2 stages of Llama-2-13B on H100s, 4 micro-batches of 8: after the prefill each
    micro-batch's steps repeat 8.8, 22.2, 28.2, 29.5, 29.5 ms (a period of 5 rounds, not a line):
    the proxy's window went on at its mean (+12.9 %, 7.315 s against the run's 6.482), a 16-round
    head's at its 8 steps' (+6.2 %, 6.881 s); over whole periods the estimate is the run's (+0.001 %)."""
    wl = Workload(32, 512, 256)
    p, plan = _pipeline(
        "h100-sxm-measured",
        "llama2-13b",
        [(f"n0.gpu{2 * i}", f"n0.gpu{2 * i + 1}") for i in range(4)],
        (15, 11, 8, 6),
        4,
    )
    _, streams, _ = short_run(GPU_ONLY, plan, p.rig, p.model, wl.head(SETTLE_GEN_LEN))
    assert settled(streams, SETTLE_GEN_LEN) == 5
    run = simulate(GPU_ONLY, plan, p.rig, p.model, wl, exact=True)
    assert estimate(GPU_ONLY, plan, p.rig, p.model, wl).e2e_s == pytest.approx(run.e2e_s, rel=1e-3)


_SETTLING = [
    # A100 / 2 x A6000 / 4090, 2 micro-batches: the proxy's mean step +7.7 % / +9.8 % slow at 32 / 64
    ("mixed-lab", "llama2-70b", [("n0.gpu0",), ("n1.gpu0", "n1.gpu1"), ("n0.gpu1",)], (47, 20, 13), 4, 128),
    # 8 stages, 4 micro-batches: +6.0 / +8.7 %
    ("h100-sxm-measured", "llama2-70b", [(f"n0.gpu{i}",) for i in range(8)], (10,) * 8, 16, 512),
]


@pytest.mark.parametrize("gen", [32, 64])
@pytest.mark.parametrize(("rig", "model", "groups", "layers", "batch", "prompt"), _SETTLING)
def test_a_pipeline_still_settling_in_a_short_run_is_estimated_from_its_proxy(
    rig, model, groups, layers, batch, prompt, gen, monkeypatch
):
    """Up to FF_LONG_GEN_LEN tokens a proxy still settling by a fall (``falling_end``) goes on at its
    last step, without the 16-round head (+15 % CPU on the gen-32 headline search): the window's
    mean ran the plans above +6.0 to +9.8 % slow; the last step is within 0.1 % of the run."""
    wl = Workload(batch, prompt, gen)
    p, plan = _pipeline(rig, model, groups, layers, 2 if rig == "mixed-lab" else 4)
    _, streams, _ = short_run(GPU_ONLY, plan, p.rig, p.model, wl.head(PROXY_GEN_LEN))
    assert not settled(streams, PROXY_GEN_LEN)
    run = simulate(GPU_ONLY, plan, p.rig, p.model, wl, exact=True)
    lengths = []
    real = ranking.short_run
    monkeypatch.setattr(
        ranking, "short_run", lambda s, pl, r, m, w: lengths.append(w.gen_len) or real(s, pl, r, m, w)
    )
    assert estimate(GPU_ONLY, plan, p.rig, p.model, wl).e2e_s == pytest.approx(run.e2e_s, rel=1e-3)
    assert lengths == [PROXY_GEN_LEN]


def test_a_head_settling_goes_on_at_its_last_step_only_where_it_falls_or_levels():
    """``falling_end``: steps falling to the pace (or rising to it, then level over the head's last
    three) go on at the window's last step, grown as a steady stream's line (here flat, 0.4 s);
    steps that rise and fall (a pattern) have no end there, nor has a head with no steady stream."""
    g, n = PROXY_GEN_LEN, 32
    flat = {9: _stream([3.0, 0.4, 0.4, 0.4, 0.4])}
    falling = [3.0, 0.8, 0.6, 0.5, 0.5]
    assert falling_end({0: _stream(falling)} | flat, g, n) == pytest.approx(
        1.0 + sum(falling) + (n - g) * 0.5
    )
    assert falling_end({0: _stream(falling)}, g, n) is None  # a fall can hide the KV's growth
    still = [3.0, 0.9, 0.8, 0.7, 0.6]  # still falling: the last window step, not the mean (0.75)
    assert falling_end({0: _stream(still)} | flat, g, n) == pytest.approx(1.0 + sum(still) + (n - g) * 0.7)
    level = [3.0, 0.3, 0.6, 0.6, 0.6]  # a micro-batch that ran ahead waits for the pace
    both = {0: _stream(falling), 1: _stream(level)} | flat
    assert falling_end(both, g, n) == pytest.approx(1.0 + sum(level) + (n - g) * 0.6)
    pattern = [3.0, 0.5, 0.2, 0.4, 0.5]  # falls, then rises: a pattern longer than the head shows
    assert falling_end({0: _stream(falling), 1: _stream(pattern)} | flat, g, n) is None
    assert falling_end({0: _stream([3.0, 0.5, 0.4, 0.4, 0.6])} | flat, g, n) is None  # rises at the end
    # a stream already steady (0.5 s, +0.01 s a step) goes on on its line, and a settling one at its
    # last step (0.6 s, step 4) grown as that line: its steps g-1..n-2 and the last, 0.745 s a step
    grows, settles = [3.0, 0.5, 0.51, 0.52, 0.53], [3.0, 0.9, 0.7, 0.6, 0.6]
    assert falling_end({0: _stream(grows)}, g, n) == pytest.approx(head_end({0: _stream(grows)}, g, n))
    expected = 1.0 + sum(settles) + (n - g) * (0.6 + 0.01 * ((n + g - 3) / 2 - 4 + 1))
    assert falling_end({0: _stream(grows), 1: _stream(settles)}, g, n) == pytest.approx(expected)


def test_a_settling_pipeline_with_no_steady_stream_is_not_estimated_fast():
    """2 stages of 8 micro-batches (llama3-8b on mixed-lab, batch 768, prompt 8): every stream still
    falls in the proxy's window, which hides the KV's growth (no stream steady to read it from); at
    its last step flat the estimate ran 1.15 % fast, which can rank it above a faster plan. The
    16-round head sees the growth."""
    p = problem("llama3-8b", "mixed-lab", None, 8, 64)
    plan = PipelinePlan((Stage(("n0.gpu0", "n0.gpu1"), 27), Stage(("n1.gpu0", "n1.gpu1"), 5)), 8)
    wl = Workload(768, 8, 64)
    _, streams, _ = short_run(GPU_ONLY, plan, p.rig, p.model, wl.head(PROXY_GEN_LEN))
    assert not settled(streams, PROXY_GEN_LEN)
    run = simulate(GPU_ONLY, plan, p.rig, p.model, wl, exact=True)
    assert estimate(GPU_ONLY, plan, p.rig, p.model, wl).e2e_s == pytest.approx(run.e2e_s, rel=1e-3)
