"""Time of one op on one device: a roofline plus a fixed launch overhead, or paced by the host's issue.

    compute_s = FLOPs / (peak FLOP/s[dtype] x efficiency.compute[op kind])
    memory_s  = bytes / (peak memory bandwidth x efficiency.memory)
    time_s    = overhead_s + max(compute_s, memory_s)

Matmuls may scale both efficiencies by half-performance lengths (Hockney): few rows leave a GEMM
below peak FLOP/s, short weight rows stream below peak bandwidth (``Efficiency.matmul_*``), with a
curve per compute dtype where calibration measured one (``Efficiency.matmul_by_dtype``).

A CPU matmul whose compute dtype has a measured kernel (llama.cpp's k-quants: unpacking every weight
costs far more than the int8 dot product after it) computes at

    compute rate = 2 FLOP x cores x clock / cycles per MAC(tokens per weight row)

with the cycles measured on one CPU (``validate/kquant.py``) and carried to another by its cores and
clock: the same AVX2 instruction stream at the same work per cycle (``Efficiency.kernel_cycles``).

Weight-only int8/int4 matmuls (and attention over an int8/int4 KV cache) dequantise inside the
kernel: ``op.dequant_ops`` lane instructions on the vector units at their peak rate
(``ComputeDevice.vector_ops``), added to the compute time. Decode stays bound by the narrower bytes;
prefill, compute-bound, pays the dequantisation on top of the fp16 GEMM.

A device whose profile measured the host's time issuing one kernel (``Efficiency.kernel_issue_s``,
eager PyTorch on a GPU) has no per-op overhead: the host issues an op's kernels (``Op.kernels``)
ahead of the device on one stream, each kernel starting when both the device is free and the host
has issued it, so ops run back to back take

    time_s = max(sum of kernels x kernel_issue_s, sum of device times)     (``paced``)

the period of the two-cursor schedule (op j starts at max(device free, host done issuing it)) of a run
repeated back to back, as a step repeats its layers: the host keeps ahead over a period. One run
alone may take up to one period's issue plus device time more (host-paced ops before device-paced
ones cannot overlap them). A device whose issue time is unknown keeps ``overhead_s`` per op.

Such a device runs eager PyTorch, and an op's kernels beyond the one its roofline stands for (rotary
embedding after q_proj, SiLU's multiply, a bias added after a matmul: ``hetsim.models.kernel_bytes``)
are memory-bound passes of their own, run one after another on the stream:

    device time = max(compute_s, main kernel's bytes / memory rate) + pass bytes / elementwise memory rate

A device without it keeps one pass per op (serving engines fuse these: ``hetsim.models.fusion``), and
so does one whose profile says its kernels are fused (``kernels: fused``). The switch is an assumption:
a measured issue time is calibrate's, from the validate decoder, which runs eager PyTorch.

The engine uses ``compute_s`` and ``memory_bytes`` separately on CPUs, where the memory traffic
competes with DMA for the socket's DRAM bandwidth; on GPUs it uses ``time_s`` as is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from hetsim.costs.kernel_tables import load_tables
from hetsim.hardware.types import ComputeDevice
from hetsim.models.fusion import fuse
from hetsim.models.kernel_bytes import eager_bytes
from hetsim.models.spec import Op, OpKind


@dataclass(frozen=True)
class OpCost:
    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    memory_bytes: float
    achieved_mem_bw: float  # bytes/s this op may draw from memory at most
    memory_bound_s: float = 0.0  # the part of time_s spent in ops whose memory term dominates
    issue_s: float = 0.0  # the host's time issuing the kernels (0: issue not modelled, overhead_s is)
    device_s: float = 0.0  # where issue_s > 0: the device's own time, which time_s = max(issue_s, this)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    @property
    def dram_pace(self) -> float:
        """Bytes per second this op's memory traffic draws at most: no faster than its own compute (a
        compute-bound op streams slower). The engine books it so on a DRAM timeline, and a planner's
        ``overlap_delay`` takes it as the later flow's cap."""
        streamed = self.memory_bytes / self.compute_s if self.compute_s > 0 else math.inf
        return streamed if streamed < self.achieved_mem_bw else self.achieved_mem_bw


# Fields of a device that no op cost reads: its memory size and the provenance of its numbers (a
# sweep's GPU memory knob changes both and no op's time).
_NOT_COST_FIELDS = ("mem_bytes", "provenance")


def cost_key(device: ComputeDevice) -> Hashable | None:
    """Everything ``op_cost`` and ``block_cost`` may read of ``device``: its ``twin_key`` with what names
    and places it (its name, its node). Devices with equal keys give every op the same cost. None as
    ``twin_key``."""
    twin = twin_key(device)
    return None if twin is None else (device.name, device.node, twin)


def twin_key(device: ComputeDevice) -> Hashable | None:
    """The fields op costs may read of ``device``, less what names and places it (its name, its node), as
    nested tuples of plain values: devices with equal keys (a rig's identical sockets or cards) give
    every op the same cost. None where a field holds a type this does not know (then treat the device
    as unlike any other)."""
    skip = (*_NOT_COST_FIELDS, "name", "node")
    key = _plain(tuple(getattr(device, f.name) for f in dataclasses.fields(device) if f.name not in skip))
    return None if _holds(key, _UNKNOWN) else key


_UNKNOWN = object()


def _plain(value: Any) -> Any:
    """``value`` as nested tuples (dataclasses by field, mappings sorted by key); ``_UNKNOWN`` inside
    for a value of any other type."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            *((f.name, _plain(getattr(value, f.name))) for f in dataclasses.fields(value)),
        )
    if isinstance(value, Mapping):
        return ("{}", *sorted((k, _plain(v)) for k, v in value.items()))
    if isinstance(value, (tuple, list)):
        return ("()", *(_plain(v) for v in value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return _UNKNOWN


def _holds(value: Any, item: object) -> bool:
    return value is item or (isinstance(value, tuple) and any(_holds(v, item) for v in value))


def op_cost(device: ComputeDevice, op: Op) -> OpCost:
    eff = device.efficiency
    if op.kind == OpKind.MATMUL:
        cycles = eff.cycles_per_mac(op.compute_dtype, op.rows) if device.cores and device.clock_hz else 0.0
        if cycles:
            flops_rate = 2.0 * device.cores * device.clock_hz / cycles
        else:
            flops_rate = device.flops(op.compute_dtype) * eff.matmul_compute(op.rows, op.compute_dtype)
        mem_rate = device.mem_bw * eff.matmul_memory(op.weight_row_bytes, op.compute_dtype)
    elif op.kind == OpKind.ATTENTION:
        flops_rate = device.flops(op.compute_dtype) * eff.attention_compute(op.rows)
        mem_rate = device.mem_bw * eff.memory_for(op.kind.value)
    else:
        flops_rate = device.flops(op.compute_dtype) * eff.compute_for(op.kind.value)
        mem_rate = device.mem_bw * eff.memory_for(op.kind.value)
    compute_s = op.flops / flops_rate if op.flops else 0.0
    if op.dequant_ops:
        compute_s += op.dequant_ops / device.vector_ops
    memory_s = op.mem_bytes / mem_rate if op.mem_bytes else 0.0
    measured = load_tables(eff.kernel_tables).seconds(op) if eff.kernel_tables else None
    if eff.kernel_issue_s > 0 or measured is not None:
        # a measured kernel's time, or the roofline's, paced by the host's issue where it is measured
        nbytes, pass_s = op.mem_bytes, 0.0
        if eff.kernel_issue_s > 0 and not eff.fused_kernels:  # eager PyTorch: other kernels, passes
            eager = eager_bytes(op)
            nbytes, memory_s = eager.total, eager.main / mem_rate if eager.main else 0.0
            pass_s = eager.passes / (device.mem_bw * eff.memory_for(OpKind.ELEMENTWISE.value))
        main = measured if measured is not None else max(compute_s, memory_s)
        run = main + pass_s
        issue = op.kernels * eff.kernel_issue_s
        return OpCost(
            time_s=paced(issue, run),
            compute_s=compute_s,
            memory_s=memory_s + pass_s,
            overhead_s=0.0,
            memory_bytes=nbytes,
            achieved_mem_bw=mem_rate,
            memory_bound_s=(main if memory_s > compute_s else 0.0) + pass_s,
            issue_s=issue,
            device_s=run if eff.kernel_issue_s > 0 else 0.0,
        )
    overhead = eff.overhead_for(op.compute_dtype)
    return OpCost(
        time_s=overhead + max(compute_s, memory_s),
        compute_s=compute_s,
        memory_s=memory_s,
        overhead_s=overhead,
        memory_bytes=op.mem_bytes,
        achieved_mem_bw=mem_rate,
        memory_bound_s=overhead + memory_s if memory_s > compute_s else 0.0,
    )


def paced(issue_s: float, device_s: float) -> float:
    """Work the host issues ahead of the device it runs on: the slower of the two paces it."""
    return issue_s if issue_s > device_s else device_s


def combine(costs: list[OpCost] | tuple[OpCost, ...]) -> OpCost:
    """Ops run back to back on one device, as one task.

    Uncontended, its time is the sum of the ops' times. ``compute_s`` becomes the busy time
    (sum of each op's max(compute, memory)) so that, on a CPU, the block's DRAM traffic is spread
    over it at its average rate and contention with DMA stretches it as it would stretch each op.
    """
    # One pass for the sums (each ``sum()``'s: from 0, in order; ``max(a, b)`` is ``b if b > a else
    # a``): a new block shape is combined for each engine that meets it, ~3,800 on the headline.
    busy = nbytes = time_s = memory_s = overhead_s = bound_s = 0
    issued = False
    for c in costs:
        a, b = c.compute_s, c.memory_s
        busy += b if b > a else a
        nbytes += c.memory_bytes
        time_s += c.time_s
        memory_s += b
        overhead_s += c.overhead_s
        bound_s += c.memory_bound_s
        if c.issue_s:
            issued = True
    issue = device = 0.0
    if issued:  # the host issues ahead over the whole run (module docstring)
        issue = sum(c.issue_s for c in costs)
        device = sum(c.device_s if c.issue_s else c.time_s for c in costs)
        time_s = paced(issue, device)
    return OpCost(
        time_s=time_s,
        compute_s=busy,
        memory_s=memory_s,
        overhead_s=overhead_s,
        memory_bytes=nbytes,
        achieved_mem_bw=nbytes / busy if busy > 0 else float("inf"),
        memory_bound_s=bound_s,
        issue_s=issue,
        device_s=device,
    )


def block_cost(
    device: ComputeDevice, ops: tuple[Op, ...], cost: Callable[[Op], OpCost] | None = None
) -> OpCost:
    """Ops run back to back on one device as one task, as the device's kernels run them: fused
    (``hetsim.models.fusion``) where its profile says the engine fuses, else one kernel per op.
    ``cost``: ``op_cost`` of ``device`` and an op, remembered by the caller (the engine's cache)."""
    if device.efficiency.fused_kernels:
        ops = fuse(tuple(ops))
    if cost is None:
        return combine([op_cost(device, o) for o in ops])
    return combine([cost(o) for o in ops])


def repeated(cost: OpCost, times: int) -> OpCost:
    """The same work ``times`` over, back to back (identical layers)."""
    return OpCost(
        time_s=cost.time_s * times,
        compute_s=cost.compute_s * times,
        memory_s=cost.memory_s * times,
        overhead_s=cost.overhead_s * times,
        memory_bytes=cost.memory_bytes * times,
        achieved_mem_bw=cost.achieved_mem_bw,
        memory_bound_s=cost.memory_bound_s * times,
        issue_s=cost.issue_s * times,
        device_s=cost.device_s * times,
    )
