"""Samples of a run (``Workload.sample``: a search's proxy, a fast-forward's head, middle and tail)
stand for it: the KV cache allocated as the run allocates it, and the run itself (``whole``) read
back from any of them, so a strategy that plans by the whole run (HexGen's split) plans each sample
as its run."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hetsim.errors import InputError
from hetsim.hardware import load_rig
from hetsim.models import get_model
from hetsim.planner.hexgen_cpsat import search
from hetsim.sim.run import FF_SAMPLE, fast_forward, simulate
from hetsim.strategies.base import get_strategy
from hetsim.workload import Workload

HEXGEN = get_strategy("hexgen")


@st.composite
def samples(draw):
    """A run, and a sample of it (or a sample of a sample: a proxy's own fast-forward)."""
    run = Workload(draw(st.integers(1, 64)), draw(st.integers(1, 4096)), draw(st.integers(2, 4096)))
    out = run
    for _ in range(draw(st.integers(1, 2))):
        g = draw(st.integers(1, out.gen_len))
        out = out.sample(draw(st.integers(0, out.gen_len - g)), g)
    return run, out


@given(samples())
def test_a_sample_stands_for_its_run(pair):
    run, sample = pair
    assert sample.whole == run
    assert sample.kv_slots == run.kv_slots
    assert sample.batch == run.batch
    # its tokens lie inside the run's
    assert run.prompt_len <= sample.prompt_len
    assert sample.context_len <= run.context_len


@given(st.integers(1, 512), st.integers(2, 512), st.data())
def test_samples_compose(prompt, gen, data):
    """A sample of a sample is the run's sample at the summed start (the head of a tail is the tail)."""
    run = Workload(4, prompt, gen)
    a = data.draw(st.integers(0, gen - 1))
    g = data.draw(st.integers(1, gen - a))
    b = data.draw(st.integers(0, g - 1))
    g2 = data.draw(st.integers(1, g - b))
    assert run.sample(a, g).sample(b, g2) == run.sample(a + b, g2)
    assert run.head(g) == run.sample(0, g)


@pytest.mark.parametrize("start, g", [(32, 1), (40, 1), (-1, 4), (30, 4)])
def test_a_sample_past_its_runs_tokens_is_refused(start, g):
    """A sample whose tokens run past the run's: at ``start == gen_len`` the allocation fell to 0 (the
    sample's own), so it passed the checks and ``whole`` gave another run (gen 33 for a run of 32)."""
    with pytest.raises(InputError, match="sample_start"):
        Workload(8, 64, 32).sample(start, g)


def test_a_sample_starts_inside_the_prompt_it_grew():
    with pytest.raises(InputError, match="sample_start"):
        Workload(8, 64, 32, alloc_gen_len=40, sample_start=64)


@cache
def full_budget_1536():
    rig, model = load_rig("hexgen-full-budget"), get_model("llama2-70b")
    wl = Workload(1536, 512, 256)
    return rig, model, wl, search(rig, model, wl)


def test_every_sample_of_a_hexgen_run_splits_the_batch_as_the_run():
    """llama2-70b on hexgen-full-budget, 1536 x (512 + 256): what a replica holds is sized with its
    prefill's workspace; the fast-forward's tail sample (its prompt grown to 512 + 240) split the
    batch [300, 462, 462, 312] against the run's [350, 417, 416, 353], so its steps were not the
    run's and the fast-forward gave up (the run went step by step: 0.72 s against 0.16 s)."""
    rig, model, wl, plan = full_budget_1536()
    split = HEXGEN.batch_split(plan, rig, model, wl)
    g, n = FF_SAMPLE, wl.gen_len
    for start in (0, (n - g) // 2, n - g):
        assert HEXGEN.batch_split(plan, rig, model, wl.sample(start, g)) == split, start
    ff = fast_forward(HEXGEN, plan, rig, model, wl, g)
    assert ff is not None
    exact = simulate(HEXGEN, plan, rig, model, wl, exact=True)
    assert ff.throughput_tok_s == pytest.approx(exact.throughput_tok_s, rel=1e-9)
    assert ff.e2e_s == pytest.approx(exact.e2e_s, rel=1e-9)
