"""CPU tensor parallelism across Xeon sockets and nodes, as xFasterTransformer runs it.

One rank per socket. Weights split Megatron-style (heads, MLP inner dimension, vocabulary);
the embedding table is replicated; two all-reduces per decoder layer (after the output
projection and after the MLP down projection) of batch x tokens x hidden activations, in fp32
when the weights are 16-bit (xFT's default); greedy token selection with an all-gather of
(id, value) pairs per rank instead of gathering logits. See xFT, arXiv 2407.00029.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from hetsim.hardware.rig import Rig
from hetsim.models.memory import (
    embed_bytes,
    head_bytes,
    kv_cache_bytes,
    layer_bytes,
    rank_activation_workspace,
)
from hetsim.models.sharding import embed_ops, head_ops, layer_blocks, splits_heads
from hetsim.models.spec import ModelSpec
from hetsim.strategies import plan_io as pc
from hetsim.strategies.base import Footprint, Strategy, register
from hetsim.workload import Workload, steps

ALLREDUCE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
TOKEN_PAIR_BYTES = 8  # greedy search: (token id, logit) as two fp32 per sequence per rank


@dataclass(frozen=True)
class CpuTpPlan:
    ranks: tuple[str, ...]  # CPU sockets, one rank each, in ring order
    weight_dtype: str = "bf16"
    kv_dtype: str = "fp16"
    allreduce_dtype: str = "fp32"
    act_dtype: str = "fp16"  # activations, norms and attention (validate's fp32 runs use fp32)
    # xFT's hybrid dtypes (e.g. bf16_fp16: bf16 prefill on AMX, fp16 decode) keep two full copies.
    weight_copies: int = 1


# xFasterTransformer's hybrid dtypes (src/models/hybrid_model.h) keep two complete models, one per
# dtype of the pair; no xFT dtype keeps more (10**30 copies ran to a reason quoting 10**27 TB).
MAX_WEIGHT_COPIES = 2
WHY_COPIES = "xFasterTransformer keeps at most two: one per dtype of a hybrid such as bf16_fp16"
_RANGES = {"weight_copies": (1, MAX_WEIGHT_COPIES, WHY_COPIES)}


def _layouts(rig: Rig, degree: int) -> list[tuple[str, ...]]:
    """Candidate rank layouts of ``degree`` sockets: packed into as few nodes as possible, or spread."""
    by_node = [list(n.cpus) for n in rig.nodes.values() if n.cpus]
    packed = tuple(c for cpus in by_node for c in cpus)[:degree]
    spread: list[str] = []
    depth = max((len(c) for c in by_node), default=0)
    for i in range(depth):
        spread.extend(cpus[i] for cpus in by_node if i < len(cpus))
    layouts = [packed, tuple(spread[:degree])]
    return list(dict.fromkeys(layouts))  # de-duplicate, keep order


@register
class CpuTensorParallel(Strategy):
    name = "cpu-tp"
    search_weight = 2  # ~0.07 s on the headline compare
    summary = "tensor parallelism over Xeon sockets and nodes (xFasterTransformer)"
    plan_type = CpuTpPlan
    knob_ranges = _RANGES
    weight_dtypes = ("bf16", "fp16", "fp32")  # xFT runs these (AMX bf16; fp16 and fp32 on AVX-512)
    kv_dtypes = ("fp16", "bf16", "fp32", "int8")  # xFT's KV cache types (int8: lossy)

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        if not rig.cpus():
            return "the rig has no CPU sockets"
        return None

    def check_plan(self, plan: CpuTpPlan, rig: Rig, model: ModelSpec, workload: Workload) -> None:
        if not plan.ranks:
            raise pc.problem("ranks", "needs at least one CPU socket")
        if len(set(plan.ranks)) != len(plan.ranks):
            raise pc.problem("ranks", "names a socket twice")
        for j, r in enumerate(plan.ranks):
            pc.device_of_kind(rig, r, "cpu", f"ranks[{j}]")
        pc.heads_split(model, len(plan.ranks), "ranks")
        pc.at_least(plan.weight_copies, 1, "weight_copies")
        pc.in_ranges(plan, self.knob_ranges)
        for name in ("weight_dtype", "kv_dtype", "allreduce_dtype", "act_dtype"):
            pc.known_dtype(getattr(plan, name), name)

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> CpuTpPlan:
        """Every socket that splits the model's heads (the most sockets that do: a plan file of more is
        refused, ``check_plan``); weights in bf16 (AMX) unless the user asks (``--dtype``) or the
        checkpoint is fp32, which then runs in fp32 throughout, as torch runs it on a CPU."""
        degree = max((d for d in range(1, len(rig.cpus()) + 1) if splits_heads(model, d)), default=0)
        ranks = _layouts(rig, degree)[0]
        if model.dtype == "fp32":
            wd = workload.weight_dtype or "fp32"
            kv = workload.kv_dtype or "fp32"
            return CpuTpPlan(ranks=ranks, weight_dtype=wd, kv_dtype=kv, act_dtype="fp32")
        return CpuTpPlan(
            ranks=ranks, weight_dtype=workload.weight_dtype or "bf16", kv_dtype=workload.kv_dtype or "fp16"
        )

    def candidates(self, rig: Rig, model: ModelSpec, workload: Workload) -> Iterator[CpuTpPlan]:
        """Every degree and layout that fits in memory."""
        base = self.default_plan(rig, model, workload)
        for degree in range(1, len(rig.cpus()) + 1):
            if not splits_heads(model, degree):
                continue
            for ranks in _layouts(rig, degree):
                plan = replace(base, ranks=ranks)
                if self.fits(plan, rig, model, workload):
                    yield plan

    def fits(self, plan: CpuTpPlan, rig: Rig, model: ModelSpec, workload: Workload) -> bool:
        fp = self.footprint(plan, rig, model, workload)
        return all(sum(tags.values()) <= rig.devices[d].mem_bytes for d, tags in fp.items())

    def footprint(self, plan: CpuTpPlan, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        p = len(plan.ranks)
        weights = plan.weight_copies * (
            model.layers * layer_bytes(model, plan.weight_dtype) + head_bytes(model, plan.weight_dtype)
        )
        kv_share = max(1.0 / p, 1.0 / model.kv_groups)
        kv = kv_cache_bytes(model, workload.batch, workload.context_len, model.layers, plan.kv_dtype)
        act = rank_activation_workspace(model, workload.batch, workload.prompt_len, p, "fp32")
        return {
            rank: {
                "weights": weights / p,
                "embedding": plan.weight_copies * embed_bytes(model, plan.weight_dtype),
                "kv_cache": kv * kv_share,
                "activations": act,
            }
            for rank in plan.ranks
        }

    def devices(self, plan: CpuTpPlan) -> list[str]:
        return list(plan.ranks)

    def schedule(self, plan: CpuTpPlan, rig: Rig, model: ModelSpec, workload: Workload):
        ranks = list(plan.ranks)
        p = len(ranks)
        b = workload.batch
        ar_elem = ALLREDUCE_BYTES[plan.allreduce_dtype]

        def run(engine):
            for step in steps(workload):
                wd, kd, ad = plan.weight_dtype, plan.kv_dtype, plan.act_dtype
                blocks = layer_blocks(model, step.phase, b, step.seq_len, step.kv_len, p, wd, kd, ad)
                message = float(b * step.seq_len * model.hidden * ar_elem)
                embed = embed_ops(model, b, step.seq_len, wd, ad)
                yield engine.lockstep(ranks, [embed], label="embedding")
                layer = [blocks.attention, message, blocks.mlp, message]
                yield engine.lockstep(ranks, layer, repeat=model.layers, label="decoder layers")
                head = head_ops(model, step.phase, b, step.seq_len, p, wd, ad)
                yield engine.lockstep(ranks, [head], label="lm_head")
                yield engine.allgather(ranks, TOKEN_PAIR_BYTES * b, label="top1-gather")
                engine.token_done(b)

        return run
