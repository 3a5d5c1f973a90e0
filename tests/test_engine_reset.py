"""``Engine.reset`` gives a fresh engine's state on the same rig, and HeteGen's ``measure_split``,
which resets one engine and runs each split module in it without a SimPy process, measures what a
fresh engine running the module as a process measures, to the bit."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.models.spec import Op, OpKind
from hetsim.sim.engine import Engine, _Environment
from hetsim.strategies import hetegen
from hetsim.strategies.hetegen import module_ops, split_linear

_RIG = load_rig("mixed-lab")
_OPS = tuple(Op(f"op{i}", OpKind.MATMUL, 0, 10.0**f, 10.0**b, 1e5, 1e5) for i, (f, b) in
             enumerate([(9, 7), (7, 7), (11, 8), (6, 4)]))  # fmt: skip
_DEVICES = ("n0.gpu0", "n0.cpu0", "n0.cpu1", "n1.gpu1")
# a task: compute (device, op) or a copy (src, dst, bytes), each issued after a clock step
task = st.one_of(
    st.tuples(st.just("compute"), st.sampled_from(_DEVICES), st.sampled_from(_OPS)),
    st.tuples(
        st.just("copy"), st.sampled_from(_DEVICES), st.sampled_from(_DEVICES), st.sampled_from([1e5, 3e8])
    ),
)
programs = st.lists(st.tuples(task, st.sampled_from([0.0, 1e-4, 3e-3])), max_size=12)


def _state(engine: Engine, program) -> tuple:
    def schedule(e):
        for (kind, *args), tick in program:
            end = e.book_compute(*args) if kind == "compute" else e.book_transfer(*args)
            yield e.env.timeout(tick)
            if kind == "compute":
                yield e.wait(max(end, e.env.now))
            e.token_done()

    makespan = engine.run(schedule)
    lanes = sorted((k, v.free_at, v.busy_s, v.memory_bound_s) for k, v in engine.lanes.items() if v.busy_s)
    dram = sorted(
        (k, t.bytes_moved, tuple(t._times), tuple(t._booked)) for k, t in engine.host_memory.items()
    )
    counts = (engine.tasks, engine.last_end, engine.bytes_transferred)
    tokens = (engine.token_times, engine.token_streams)
    return makespan, counts, tokens, lanes, dram, engine.utilization(makespan), engine.memory.peaks()


@settings(max_examples=150, deadline=None)
@given(first=programs, second=programs)
def test_a_reset_engine_runs_as_a_fresh_one(first, second):
    used = Engine(_RIG)
    _state(used, first)
    used.alloc("n0.gpu0", 1e9, "weights")
    used.reset()
    assert _state(used, second) == _state(Engine(_RIG), second)


_MODEL = get_model("llama2-13b")


@settings(max_examples=150, deadline=None)
@given(
    batch=st.sampled_from([1, 4, 64]),
    kind=st.sampled_from(sorted(module_ops(_MODEL, "decode", 1, 1))),
    alpha=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
    sync_s=st.sampled_from([0.0, 2e-5]),
    cpu=st.sampled_from(["n0.cpu0", "n0.cpu1"]),
    cpu_dtype=st.sampled_from(["fp16", "fp32"]),
)
def test_a_split_measured_in_the_reused_engine_is_the_fresh_measurement(
    batch, kind, alpha, sync_s, cpu, cpu_dtype
):
    op = module_ops(_MODEL, "decode", batch, 1)[kind]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(hetegen, "_split_setting", lambda rig, gpu, cpu: None)  # nothing remembered
        reused = hetegen.measure_split(_RIG, "n0.gpu0", cpu, op, alpha, sync_s, cpu_dtype)
    ends = {"cpu": 0.0, "gpu": 0.0}
    total = Engine(_RIG).run(lambda e: split_linear(e, "n0.gpu0", cpu, op, alpha, sync_s, ends, cpu_dtype))
    assert reused == (total, ends["cpu"], ends["gpu"])


def test_without_the_skip_a_split_runs_as_a_process(monkeypatch):
    op = module_ops(_MODEL, "decode", 4, 1)["q_proj"]
    monkeypatch.setattr(hetegen, "_split_setting", lambda rig, gpu, cpu: None)
    fast = hetegen.measure_split(_RIG, "n0.gpu0", "n0.cpu0", op, 0.37, 2e-5)
    monkeypatch.setattr(_Environment, "skip_events", False)
    assert hetegen.measure_split(_RIG, "n0.gpu0", "n0.cpu0", op, 0.37, 2e-5) == fast


@settings(max_examples=100, deadline=None)
@given(
    batch=st.sampled_from([1, 4, 64]),
    kind=st.sampled_from(sorted(module_ops(_MODEL, "decode", 1, 1))),
    fraction=st.floats(0.0, 1.0),
)
def test_a_share_is_the_op_replaced(batch, kind, fraction):
    op = module_ops(_MODEL, "prefill", batch, 16)[kind]
    made = hetegen._share(op, fraction)
    want = dataclasses.replace(
        op,
        flops=op.flops * fraction,
        weight_bytes=op.weight_bytes * fraction,
        act_out_bytes=op.act_out_bytes * fraction,
        weight_row_bytes=op.weight_row_bytes * fraction,
        dequant_ops=op.dequant_ops * fraction,
    )
    assert made == want and hash(made) == hash(want) and repr(made) == repr(want)
    assert made.__dict__ == want.__dict__ and type(made) is Op
