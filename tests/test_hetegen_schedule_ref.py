"""HeteGen's schedule, whose layer loop resolves each linear piece once per step and makes labels
only when tracing: its numbers at three plans, recorded at 94e08e9 where the loop ran event for event
as the plain loop it replaced (a ``linear`` generator per module, labels always made; fa75adc); its
trace's labels; and a tracer changes no number."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.sim.engine import Engine
from hetsim.strategies.hetegen import HeteGen, HeteGenPlan, module_counts
from hetsim.workload import Workload

_RIG = load_rig("hetegen-a10")
_MODEL = get_model("opt-6.7b")
_KINDS = sorted(module_counts(_MODEL))


def _outcome(engine: Engine, schedule) -> tuple:
    makespan = engine.run(schedule)
    lanes = sorted((k, v.free_at, v.busy_s, v.memory_bound_s) for k, v in engine.lanes.items())
    drams = sorted((k, t.bytes_moved) for k, t in engine.host_memory.items())
    counts = (engine.tasks, engine.bytes_transferred, engine.last_end)
    return makespan, engine.token_times, engine.token_streams, lanes, drams, counts


# (resident layers, prefill alphas, decode alphas, split barrier s, CPU dtype, batch) -> (makespan s,
# token times, engine tasks, bytes transferred); OPT-6.7B on the A10 rig, 24 + 3 tokens
POINTS = [
    (  # every module split, a GPU share of 0.5 in prefill and 0.25 in decode
        ({}, dict.fromkeys(_KINDS, 0.5), dict.fromkeys(_KINDS, 0.25), 0.0, "fp16", 1),
        (0.7031720580571008, [0.2840397420847734, 0.4936053539376074, 0.7031720580571008],
         3384, 13392720256.0),
    ),
    (  # half the layers resident, the rest all on the CPU in prefill and all on the GPU in decode, a
        # barrier after each split, fp32 on the CPU
        ({**dict.fromkeys(_KINDS, 16), "lm_head": 1}, dict.fromkeys(_KINDS, 0.0), dict.fromkeys(_KINDS, 1.0),
         2e-5, "fp32", 3),
        (0.9385239149893425, [0.35788684344831195, 0.6482037408188284, 0.9385239149893425],
         1740, 13057769472.0),
    ),
    (  # q, k, v resident; every other linear on the CPU
        ({"q_proj": 32, "k_proj": 32, "v_proj": 32}, dict.fromkeys(_KINDS, 0.0), dict.fromkeys(_KINDS, 0.0),
         0.0, "fp16", 3),
        (0.8539414083416252, [0.5209812664081817, 0.6874596989749047, 0.8539414083416252],
         1650, 246984384.0),
    ),
]  # fmt: skip


def _run(resident, prefill, decode, sync_s, cpu_dtype, batch, trace=False):
    plan = HeteGenPlan(
        "n0.gpu0", "n0.cpu0", 20e9, resident, prefill, decode, "fp16", sync_s, cpu_dtype=cpu_dtype
    )
    engine = Engine(_RIG, trace=trace)
    return engine, _outcome(engine, HeteGen().schedule(plan, _RIG, _MODEL, Workload(batch, 24, 3)))


@pytest.mark.parametrize(("args", "want"), POINTS)
def test_the_schedule_at_three_plans(args, want):
    _, got = _run(*args)
    makespan, times, tasks, nbytes = want
    batch = args[-1]
    assert got[0] == pytest.approx(makespan, rel=1e-12)
    assert got[1] == [(pytest.approx(t, rel=1e-12), batch) for t in times]
    assert (got[5][0], got[5][1]) == (tasks, pytest.approx(nbytes, rel=1e-12))


def test_a_traced_run_labels_each_piece():
    engine, _ = _run(*POINTS[1][0], trace=True)
    labels = {ev["name"] for ev in engine.tracer.to_json()["traceEvents"] if ev.get("ph") == "X"}
    pieces = {
        f"{k} {part}" for k in _KINDS if k != "lm_head" for part in ("resident", "w", "gpu", "x", "cpu")
    }
    assert labels == {*pieces, "lm_head resident", "embedding", "hidden", "gpu ops", "final norm", "y",
                      "split barrier"}  # fmt: skip


fraction = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))


@settings(max_examples=25, deadline=None)
@given(
    resident=st.fixed_dictionaries({k: st.integers(0, module_counts(_MODEL)[k]) for k in _KINDS}),
    prefill=st.fixed_dictionaries({k: fraction for k in _KINDS}),
    decode=st.fixed_dictionaries({k: fraction for k in _KINDS}),
    sync_s=st.sampled_from([0.0, 2e-5]),
    cpu_dtype=st.sampled_from(["fp16", "fp32"]),
    batch=st.sampled_from([1, 3]),
)
def test_a_tracer_changes_no_number(resident, prefill, decode, sync_s, cpu_dtype, batch):
    """Labels are made only when tracing: a traced run's numbers are an untraced one's."""
    args = (resident, prefill, decode, sync_s, cpu_dtype, batch)
    assert _run(*args, trace=True)[1] == _run(*args)[1]
