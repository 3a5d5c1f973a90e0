"""A batch ladder's rungs ask ``offline_candidates`` again at nearby batches: inside ``remembering``
the layer caps, shapes and outer solves of a share already laid out are not solved again."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware import load_rig
from hetsim.models import get_model
from hetsim.planner import hexgen_cpsat
from hetsim.planner.ranking import remembering
from hetsim.sim.run import remembering_runs
from hetsim.strategies import hexgen
from hetsim.strategies.base import get_strategy
from hetsim.sweep.grid import apply_hardware
from hetsim.workload import Workload

HEXGEN = get_strategy("hexgen")


def test_a_rung_near_one_already_searched_reuses_its_outer_solves(monkeypatch):
    rig, model = load_rig("hexgen-full-budget"), get_model("llama2-70b")
    calls, real = [], hexgen_cpsat.outer_cpsat
    monkeypatch.setattr(hexgen_cpsat, "outer_cpsat", lambda *a: calls.append(a[2]) or real(*a))
    with remembering():
        first = hexgen_cpsat.offline_candidates(rig, model, Workload(120, 512, 32))
        solved = len(calls)
        again = hexgen_cpsat.offline_candidates(rig, model, Workload(120, 512, 32))
    assert solved > 0
    assert len(calls) == solved  # the same rung asked again: every outer solve remembered
    assert [c.plan for c in again] == [c.plan for c in first]


def _counting_step_time(monkeypatch) -> list[tuple]:
    """Replica speeds computed by ``step_time``: (stages, context) of each."""
    calls, real = [], hexgen.step_time

    def counted(rig, stages, model, phase, batch, seq_len, kv_len, *dt):
        calls.append((stages, kv_len))
        return real(rig, stages, model, phase, batch, seq_len, kv_len, *dt)

    monkeypatch.setattr(hexgen, "step_time", counted)
    return calls


def test_each_replica_speed_is_computed_once_per_search(monkeypatch):
    """The offline search splits the batch of every plan it lays out and every run it estimates
    (footprint, schedule) splits it again, on the same replicas, at every rung: inside
    ``remembering_runs`` each replica's speed is computed once (case 4 at its 13 rungs: 1324 -> 82),
    at the whole run's context: the estimates' shorter proxy splits the batch as its run
    (``Workload.whole``)."""
    rig, model = load_rig("hexgen-full-budget"), get_model("llama2-70b")
    calls = _counting_step_time(monkeypatch)
    with remembering_runs(), remembering():
        plans = [hexgen_cpsat.search(rig, model, Workload(b, 512, 32)) for b in (96, 120)]
    assert all(p is not None for p in plans)
    assert len(calls) > 0
    assert len(calls) == len(set(calls))  # no replica's speed at one context computed twice
    assert len(calls) == len({stages for stages, _ in calls})  # not again at the proxy's context
    assert {kv for _, kv in calls} == {512 + 32}


def test_a_remembered_split_is_the_split_and_none_outlives_its_block(monkeypatch):
    rig, model, wl = load_rig("hexgen-full-budget"), get_model("llama2-70b"), Workload(120, 512, 32)
    plan = HEXGEN.default_plan(rig, model, wl)
    plain = HEXGEN.batch_split(plan, rig, model, wl)
    calls = _counting_step_time(monkeypatch)
    with remembering_runs():
        assert HEXGEN.batch_split(plan, rig, model, wl) == plain
        assert HEXGEN.batch_split(plan, rig, model, wl) == plain
    assert len(calls) == len(plan.replicas)
    HEXGEN.batch_split(plan, rig, model, wl)  # outside the block: computed again
    assert len(calls) == 2 * len(plan.replicas)
    other = Workload(120, 1024, 32)  # another context: another speed, not the remembered one
    with remembering_runs():
        HEXGEN.batch_split(plan, rig, model, wl)
        HEXGEN.batch_split(plan, rig, model, other)
    assert len(calls) == 4 * len(plan.replicas)


SLOW_NET = apply_hardware(load_rig("hexgen-full-budget"), {"net_gbps": 1})
DTYPES = [("fp16", "fp16"), ("int4", "fp16"), ("int8", "int4")]


@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 256),
            st.integers(1, 2048),
            st.integers(1, 512),
            st.sampled_from(DTYPES),
        ),
        min_size=2,
        max_size=6,
    )
)
def test_speeds_asked_in_one_block_are_each_the_plain_speed(asks):
    """Workloads of any lengths and plans of any precisions, each on the rig and on one with a slower
    network, asked one after another in one block: each replica's speed, and so each split, is the one
    computed alone (never another context's, precision's or rig's)."""
    rig, model = load_rig("hexgen-full-budget"), get_model("llama2-70b")
    plan = HEXGEN.default_plan(rig, model, Workload(8, 512, 32))

    def ask(a):
        batch, prompt, gen, (wd, kv) = a
        wl, p = Workload(batch, prompt, gen), replace(plan, weight_dtype=wd, kv_dtype=kv)
        return [
            (
                [hexgen.replica_speed(on, model, r, wl, p) for r in p.replicas],
                HEXGEN.batch_split(p, on, model, wl),
            )
            for on in (rig, SLOW_NET)
        ]

    plain = [ask(a) for a in asks]
    with remembering_runs():
        assert [ask(a) for a in asks] == plain
