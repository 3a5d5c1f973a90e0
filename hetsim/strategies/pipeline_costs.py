"""Uncontended times of a pipeline, for planners and dispatchers that must not run the engine.

``layer_time`` is exactly the duration the engine's ``lockstep`` books for one decoder layer of a
tensor-parallel group ([attention, all-reduce, mlp, all-reduce]) on an idle rig: it uses the same
op costs (``hetsim.costs.op_cost``) and the same lockstep formula (``hetsim.costs.lockstep``).
"""

from __future__ import annotations

from hetsim.costs.collectives import allreduce_time
from hetsim.costs.lockstep import lockstep_duration, ring_allreduce_fit, ring_alpha_beta, straggler_share
from hetsim.costs.op_cost import block_cost, combine
from hetsim.hardware.rig import ReadLog, Rig, reading, replay
from hetsim.models.memory import hidden_bytes
from hetsim.models.sharding import embed_ops, head_ops, layer_blocks
from hetsim.models.spec import ModelSpec, Op, Phase
from hetsim.strategies.pipeline import Stage


def layer_time(
    rig: Rig,
    devices: tuple[str, ...],
    model: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
) -> float:
    """Seconds one decoder layer takes on a TP group (the engine's ``lockstep`` duration), cached."""
    entry = _RIG_CACHES.get(id(rig))
    if entry is None or entry[0] is not rig:
        if len(_RIG_CACHES) > 16:
            _RIG_CACHES.clear()
        entry = _RIG_CACHES[id(rig)] = (rig, {})
    key = (devices, model, phase, batch, seq_len, kv_len, weight_dtype, kv_dtype)
    hit = entry[1].get(key)
    if hit is None:
        with reading() as log:
            hit = entry[1][key] = (_layer_time(rig, *key), log)
    else:  # what working it out read of the rig, told again (a sweep's remembered answers)
        replay(hit[1])
    return hit[0]


# Rigs are not hashable; cache per rig object (the entry keeps the rig alive so ids are not reused):
# each time with what computing it read of the rig (``hardware.rig.reading``).
_RIG_CACHES: dict[int, tuple[Rig, dict[tuple, tuple[float, ReadLog]]]] = {}


def _layer_time(rig, devices, model, phase, batch, seq_len, kv_len, weight_dtype, kv_dtype) -> float:
    tp = len(devices)
    blocks = layer_blocks(model, phase, batch, seq_len, kv_len, tp, weight_dtype, kv_dtype)
    if tp == 1:  # the engine books one device's blocks as one run (``combine``: the host issues across them)
        dev = rig.devices[devices[0]]
        return combine([block_cost(dev, blocks.attention), block_cost(dev, blocks.mlp)]).time_s
    busy = 0.0
    for block in (blocks.attention, blocks.mlp):
        busy += ops_time(rig, devices, block)
    alpha, beta = ring_alpha_beta(rig, devices)
    fit = ring_allreduce_fit(rig, devices)
    comm = 2 * allreduce_time(tp, hidden_bytes(model, batch, seq_len), alpha, beta, fit).time_s
    return lockstep_duration(busy, comm, straggler_share(rig, devices))


def ops_time(rig: Rig, devices: tuple[str, ...], ops: tuple[Op, ...]) -> float:
    """Ops run back to back on every device of a group: the slowest device's time."""
    return max(block_cost(rig.devices[d], ops).time_s for d in devices)


def step_time(
    rig: Rig,
    stages: tuple[Stage, ...],
    model: ModelSpec,
    phase: Phase,
    batch: int,
    seq_len: int,
    kv_len: int,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
) -> float:
    """One forward step of a batch through a whole pipeline, uncontended (sum over stages + hops)."""
    total = 0.0
    last = len(stages) - 1
    for i, st in enumerate(stages):
        total += st.layers * layer_time(
            rig, st.devices, model, phase, batch, seq_len, kv_len, weight_dtype, kv_dtype
        )
        if i == 0:
            total += ops_time(rig, st.devices, embed_ops(model, batch, seq_len, weight_dtype))
        if i == last:
            total += ops_time(
                rig, st.devices, head_ops(model, phase, batch, seq_len, len(st.devices), weight_dtype)
            )
        else:
            route = rig.route(st.devices[0], stages[i + 1].devices[0])
            total += route.time(hidden_bytes(model, batch, seq_len))
    return total


def request_latency(
    rig: Rig, stages: tuple[Stage, ...], model: ModelSpec, prompt_len: int, output_len: int, **dt
) -> float:
    """A single request alone on a pipeline: prefill, then ``output_len - 1`` decode steps."""
    t = step_time(rig, stages, model, "prefill", 1, prompt_len, prompt_len, **dt)
    for i in range(1, output_len):
        t += step_time(rig, stages, model, "decode", 1, 1, prompt_len + i, **dt)
    return t
