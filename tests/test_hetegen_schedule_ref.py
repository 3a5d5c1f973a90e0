"""HeteGen's schedule, whose layer loop resolves each linear piece once per step and makes labels
only when tracing, runs as the plain loop it replaced (a ``linear`` generator per module, labels
always made): the same trace event for event when tracing, and the same numbers without a tracer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models.memory import hidden_bytes
from hetsim.models.registry import get_model
from hetsim.models.sharding import embed_ops, head_ops
from hetsim.models.spec import Op, OpKind
from hetsim.sim.engine import Engine
from hetsim.strategies.hetegen import (
    LM_HEAD,
    HeteGen,
    HeteGenPlan,
    cpu_side,
    layer_program,
    module_counts,
    share,
)
from hetsim.workload import Workload, steps

_RIG = load_rig("hetegen-a10")
_MODEL = get_model("opt-6.7b")
_KINDS = sorted(module_counts(_MODEL))


def _split_linear(engine, gpu: str, cpu: str, op: Op, alpha: float, sync_s: float, cpu_dtype: str):
    """``split_linear`` as it was (main at fa75adc): its labels always made, ``book_delay`` through
    ``_reserve`` and ``_record``."""
    gpu_end = cpu_end = engine.env.now
    if alpha > 0:
        w_end = engine.book_transfer(cpu, gpu, op.weight_bytes * alpha, pinned=True, label=f"{op.name} w")
        gpu_end = engine.book_compute(gpu, share(op, alpha), label=f"{op.name} gpu", after=w_end)
    if alpha < 1:
        x_end = engine.book_transfer(gpu, cpu, op.act_in_bytes, pinned=True, label=f"{op.name} x")
        part = share(op, 1.0 - alpha)
        if cpu_dtype != "fp16":
            part = cpu_side(part, cpu_dtype)
        c_end = engine.book_compute(cpu, part, label=f"{op.name} cpu", after=x_end)
        cpu_end = engine.book_transfer(
            cpu, gpu, op.act_out_bytes * (1.0 - alpha), pinned=True, label="y", after=c_end
        )
    if (ev := engine.advance(max(gpu_end, cpu_end))) is not None:
        yield ev
    if sync_s > 0:
        lane = engine.lanes[f"{gpu}:compute"]
        start = engine._reserve((lane,), sync_s)
        barrier = engine._record((lane,), start, start + sync_s, "split barrier", {})
        if (ev := engine.advance(barrier)) is not None:
            yield ev


def _reference(plan: HeteGenPlan, model, workload: Workload):
    """The schedule as it was before the inline loop (main at fa75adc), labels always made."""
    gpu, cpu, b, wd = plan.gpu, plan.cpu, workload.batch, plan.weight_dtype

    def linear(engine, layer: int, op: Op, alphas: Mapping[str, float]):
        if layer < plan.resident.get(op.module, 0):
            if (
                ev := engine.advance(engine.book_compute(gpu, op, label=f"{op.module} resident"))
            ) is not None:
                yield ev
        else:
            yield from _split_linear(
                engine, gpu, cpu, op, alphas.get(op.module, 0.0), plan.split_sync_s, plan.cpu_dtype
            )

    def run(engine):
        for step in steps(workload):
            alphas = plan.alpha_prefill if step.phase == "prefill" else plan.alpha_decode
            program = layer_program(model, step.phase, b, step.seq_len, step.kv_len, wd)
            yield engine.wait(
                engine.book_compute(cpu, embed_ops(model, b, step.seq_len, wd), label="embedding")
            )
            yield engine.wait(
                engine.book_transfer(cpu, gpu, hidden_bytes(model, b, step.seq_len), label="hidden")
            )
            for layer in range(model.layers):
                for on_gpu, ops in program:
                    if on_gpu:
                        if (ev := engine.advance(engine.book_compute(gpu, ops, label="gpu ops"))) is not None:
                            yield ev
                    else:
                        yield from linear(engine, layer, ops[0], alphas)
            head = head_ops(model, step.phase, b, step.seq_len, 1, wd)
            norm = tuple(o for o in head if o.kind != OpKind.MATMUL)
            if norm:
                yield engine.wait(engine.book_compute(gpu, norm, label="final norm"))
            head_mm = next(o for o in head if o.kind == OpKind.MATMUL)
            yield from linear(engine, 0, dataclasses.replace(head_mm, module=LM_HEAD), alphas)
            engine.token_done(b)

    return run


def _outcome(engine: Engine, schedule) -> tuple:
    makespan = engine.run(schedule)
    lanes = sorted((k, v.free_at, v.busy_s, v.memory_bound_s) for k, v in engine.lanes.items())
    drams = sorted((k, t.bytes_moved) for k, t in engine.host_memory.items())
    counts = (engine.tasks, engine.bytes_transferred, engine.last_end)
    return makespan, engine.token_times, engine.token_streams, lanes, drams, counts


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
def test_the_inline_schedule_is_the_reference_loop(resident, prefill, decode, sync_s, cpu_dtype, batch):
    plan = HeteGenPlan(
        "n0.gpu0", "n0.cpu0", 20e9, resident, prefill, decode, "fp16", sync_s, cpu_dtype=cpu_dtype
    )
    workload = Workload(batch=batch, prompt_len=24, gen_len=3)
    schedule = HeteGen().schedule(plan, _RIG, _MODEL, workload)
    traced, reference = Engine(_RIG, trace=True), Engine(_RIG, trace=True)
    got = _outcome(traced, schedule)
    assert got == _outcome(reference, _reference(plan, _MODEL, workload))
    assert traced.tracer.to_json() == reference.tracer.to_json()
    assert _outcome(Engine(_RIG), schedule) == got  # no tracer: no labels, the same numbers
