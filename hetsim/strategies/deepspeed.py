"""DeepSpeed ZeRO-Inference (ZeRO-3 ``offload_param`` to CPU) on one GPU, as DeepSpeed 0.8 runs it.

Every parameter lives in host memory and is fetched to the GPU by module hooks as the forward pass
reaches its module, then released; the KV cache and activations stay on the GPU, so the batch is
bounded by GPU memory, and the schedule is row by row: a pass generates all tokens of its batch, and
every weight crosses PCIe again for every token of every pass (FlexGen, arXiv 2303.06865; bench_hf.py).

What DeepSpeed 0.8.0's code does per fetch (microsoft/DeepSpeed v0.8.0, MIT; runtime/zero/):

- Tensors under ``stage3_param_persistence_threshold`` (1e5 elements by default, config.py:195-197) are
  marked persistent (parameter_offload.py:316-334) and, once fetched, never released: biases and
  norms stay on the GPU; only the matrices and tables cross PCIe each forward.
- One fetch is ``param.ds_tensor.to(cuda)`` (a blocking copy from the host partition, pinned when
  ``offload_param.pin_memory`` is set) followed by an all-gather into a separate GPU buffer, even at
  world size 1 (partition_parameters.py:836-853): the gathered buffer is a second allocation, so the
  all-gather reads and writes every fetched byte once on the GPU. Several tensors prefetched in one
  call take the coalesced path (:855-880), which ``torch.cat``s the copies into a flat buffer and
  ``torch.cat``s each parameter out of it again on wait (:525): two GPU copies per byte.
- Every module's pre-forward hook (parameter_offload.py:466-478, on every module HF calls: the
  layer, its attention, norms and activation too) waits for its own tensors, then prefetches the next
  ``stage3_prefetch_bucket_size`` elements (5e7, config.py:187-189; at least one tensor) while
  fewer than ``stage3_max_live_parameters`` (1e9, config.py:215-217) are fetched and unreleased
  (partitioned_param_coordinator.py:318-349). HF's OPT layer (transformers 4.26.1) calls 11 modules
  (the layer, 2 LayerNorms, the attention, q, k, v, out, fc1, the ReLU module, fc2) and fetches 6
  matrices, so the lookahead fills that cap: ~2 GB of fp16 weights in flight, whatever the model.
- The host copies run on a side stream (coordinator :398) and block the host; a module's wait makes
  that stream wait for its own all-gather only (:265-273), which ran beside the copies after it,
  so with a lookahead of two or more the gathers hide behind the next copies and the host copy
  chain is the step; compute runs on the default stream, after its own tensors are gathered.
- Prefetch follows a trace recorded during the first forward (``reset_step`` at the end of every
  no-grad forward, parameter_offload.py:302-306); the first forward of a process fetches each module's
  own tensors in its hook (``prefetch=False``). Its copies still run beside compute: the side stream
  waits for the previous gather (:265-273), but the compute stream's wait is GPU-side (``wait_stream``,
  :280) and a release only ``record_stream``s the buffer (partition_parameters.py:231-239), so the host
  never waits for compute; each copy follows the previous copy and its gather. A steady run is
  modelled (that forward is a warm-up's: +5 ms per pass on OPT-30B at batch 4, prompt 512, on the T4,
  whose compute-bound prefill hides the copies either way).
- A tied LM head is released after the token lookup (``stage3_max_reuse_distance`` 1e9 elements,
  coordinator :444-453) and fetched again for the head when more elements than that lie between.

With ``offload_param.device: nvme`` (ZeRO-Infinity; the only way a model larger than host memory runs,
OPT-175B's 350 GB on the 208 GB T4 VM) every fetched tensor of at least ``MIN_AIO_BYTES`` (1 MiB,
swap_tensor/utils.py:13; partitioned_param_swapper.py:99, :131-136) lives on the disk
(partition_parameters.py:1086-1097) and is read by libaio into one of ``buffer_count`` pinned swap
buffers (5 of ``buffer_size`` elements, offload_config.py:31-34; allocated pinned at
partitioned_param_swapper.py:109-114) before its ``.to(cuda)``; a tensor must fit one buffer (:353), so
a user raises ``buffer_size`` to the largest tensor (OPT-175B's token table, 618e6 elements): 5 such
buffers are the host's footprint; a buffer is freed when its parameter is released after its module
ran (partition_parameters.py:1073-1077). The disk and the link take turns: tensors on the disk are
never all-gather-prefetched (coordinator :329-332), so nothing is in flight when
``__prefetch_nvme_param_partitions`` (:351-352, :458-481) issues its asynchronous reads, and its
``2 * numel_in_flight`` bound lets one read ahead; the next hook waits for it (synchronize_reads,
partition_parameters.py:993-996), copies it with a blocking ``.to(cuda)`` (:846), and only then issues
the next read. A disk-bound step is the fetched bytes over the disk's read rate plus over the link's.

Host-side time per hook (Python, the sync after each blocking copy, while the link idles) has no
measurement here and is not charged; docs/offloading-baselines.md states its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Any

from hetsim.costs.pinned import pinned_bytes
from hetsim.hardware.rig import Rig
from hetsim.models.memory import hf_eager_workspace, kv_cache_bytes
from hetsim.models.sharding import embed_ops, head_ops, layer_blocks
from hetsim.models.spec import ModelSpec, Op, OpKind
from hetsim.models.weights import layer_leaf_modules
from hetsim.sim.memory import OutOfMemory, check_budget
from hetsim.strategies import plan_io as pc
from hetsim.strategies.base import Footprint, Strategy, register
from hetsim.workload import Workload, steps


@dataclass(frozen=True)
class ZeroInferencePlan:
    gpu: str
    cpu: str
    batch_per_pass: int
    # offload_param.pin_memory: DeepSpeed's default is false (offload_config.py:43); the ZeRO-3
    # offload config that transformers' DeepSpeed integration documents sets it true (assumed). FlexGen's
    # baseline script takes it from --pin-memory, 0 by default (recalled, not checked): false is 2.3x
    # slower on OPT-30B (docs/offloading-baselines.md, session 21); the default plan turns it off where
    # the weights fit host memory but their pinned blocks (``host_bytes``) do not
    pinned: bool = True
    # prefetch along the recorded trace; False: each module fetches its own, as the first forward runs
    prefetch: bool = True
    gpu_mem_budget: float | None = None
    # offload_param.device: "cpu" (host memory) or "nvme" (the fetched tensors on ``disk``, read
    # through pinned swap buffers); the default plan takes nvme only when the weights exceed host memory
    offload: str = "cpu"
    disk: str = ""


# DeepSpeed 0.8.0's ZeRO-3 defaults (runtime/zero/config.py), assumed: FlexGen's benchmark config for
# this baseline (benchmark/hf_ds) is not in its PyPI release.
PERSISTENCE_THRESHOLD = 100_000  # elements: smaller tensors stay on the GPU once fetched
PREFETCH_BUCKET = 50_000_000  # elements prefetched after each module's fetch (at least one tensor)
MAX_REUSE_DISTANCE = 1_000_000_000  # elements: a tensor needed again within this many is kept
MAX_LIVE = 1_000_000_000  # stage3_max_live_parameters: prefetch stops at this many fetched elements
WEIGHT_BYTES = 2.0  # the fp16 checkpoint, as the baseline runs it
MIN_AIO_BYTES = 1024**2  # nvme: smaller tensors stay in host memory (swap_tensor/utils.py:13)
SWAP_BUFFERS = 5  # offload_param.buffer_count (offload_config.py:31)
SWAP_BUFFER_ELEMENTS = (
    100_000_000  # offload_param.buffer_size (offload_config.py:34), raised to the largest tensor
)
OFFLOADS = ("cpu", "nvme")


@dataclass(frozen=True)
class Fetches:
    """What one forward fetches, in elements: the tensors of each leaf module that has any to fetch,
    in the order the forward reaches them, the scheduled block each leaf belongs to (0 the
    embeddings, 1..L the decoder layers, L + 1 the LM head), and what stays on the GPU."""

    leaves: tuple[tuple[int, ...], ...]
    block: tuple[int, ...]  # per leaf
    blocks: int
    persistent: int  # tensors under the persistence threshold, fetched once and kept
    kept: int = 0  # a tied token table used again within the reuse distance: live all forward

    @lru_cache(maxsize=8)  # noqa: B019 - ``fetches`` keeps one per model: every run's schedule asks
    def block_bytes(self, least: int = 0) -> tuple[float, ...]:
        """Bytes fetched per block, counting only tensors of at least ``least`` bytes."""
        out = [0.0] * self.blocks
        for b, leaf in zip(self.block, self.leaves, strict=True):
            out[b] += sum(n for n in leaf if n * WEIGHT_BYTES >= least) * WEIGHT_BYTES
        return tuple(out)

    def _walk(self, prefetch: bool) -> tuple[list[tuple[int, list[tuple[int, int]]]], int]:
        return self._prefetching if prefetch else self._one_by_one

    @cached_property  # the search asks for a footprint per candidate batch: walk once per model
    def _prefetching(self) -> tuple[list[tuple[int, list[tuple[int, int]]]], int]:
        return self._walk_calls(True)

    @cached_property
    def _one_by_one(self) -> tuple[list[tuple[int, list[tuple[int, int]]]], int]:
        return self._walk_calls(False)

    def _walk_calls(self, prefetch: bool) -> tuple[list[tuple[int, list[tuple[int, int]]]], int]:
        """The fetch calls in issue order, (leaf issuing it, [(leaf needing it, elements)]), and the
        most elements live at once (PartitionedParameterCoordinator.fetch_sub_module): a leaf fetches
        its tensors not yet requested; every module's pre-forward hook then requests the next
        ``PREFETCH_BUCKET`` elements (at least one tensor) while fewer than ``MAX_LIVE`` are fetched
        and unreleased. HF's layers call more hooked modules than they have tensors to fetch (the
        layer, its attention, norms and activation: 11 modules for OPT's 6 fetched matrices), so the
        lookahead grows to ``MAX_LIVE`` within a few layers; it is taken as refilled to that cap after
        every leaf. A leaf's tensors are released after it runs (a kept tied table is not). A call's
        host copy lands in a GPU tensor beside the gathered buffer until the all-gather (or the
        coalesced path's cat) is done: one extra copy of the call at its issue."""
        flat = [(m, n) for m, leaf in enumerate(self.leaves) for n in leaf]
        calls: list[tuple[int, list[tuple[int, int]]]] = []
        # a kept tied table stays fetched all forward and counts against the cap (the coordinator's
        # __n_available_params falls only when a tensor is released)
        kept = 0 if self.kept and self.leaves and self.leaves[0] == (self.kept,) else -1
        i, live, peak = 0, 0, 0
        for m, leaf in enumerate(self.leaves):
            own_end = i
            while own_end < len(flat) and flat[own_end][0] <= m:
                own_end += 1
            if own_end > i:  # the leaf's own tensors, not prefetched before
                call = flat[i:own_end]
                calls.append((m, call))
                i = own_end
                live += sum(n for _, n in call)
                peak = max(peak, live + sum(n for _, n in call))
            while prefetch and i < len(flat) and live < MAX_LIVE:
                room = min(MAX_LIVE - live, PREFETCH_BUCKET)
                j, total = i, 0
                while j < len(flat) and total < room:
                    total += flat[j][1]
                    j += 1
                calls.append((m, flat[i:j]))
                i = j
                live += total
                peak = max(peak, live + total)
            peak = max(peak, live)
            if m != kept:
                live -= sum(leaf)  # released after the leaf runs
        return calls, peak

    @lru_cache(maxsize=4)  # noqa: B019 - as ``block_bytes``
    def gather_bytes(self, prefetch: bool) -> tuple[float, ...]:
        """GPU bytes the all-gathers copy per block: once per byte for a lone tensor, twice (cat in,
        cat out) for a coalesced call."""
        out = [0.0] * self.blocks
        for _, tensors in self._walk(prefetch)[0]:
            copies = 1 if len(tensors) == 1 else 2
            for m, n in tensors:
                out[self.block[m]] += copies * n * WEIGHT_BYTES
        return tuple(out)

    def peak_bytes(self, prefetch: bool) -> float:
        """Fetched-weight bytes live on the GPU at the worst moment (``_walk``, a tied table kept for
        its reuse included), with the persistent tensors (a table under the threshold among them)."""
        return (self._walk(prefetch)[1] + self.persistent) * WEIGHT_BYTES


def _tensors(model: ModelSpec) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Every parameter tensor of ``model`` in elements, by leaf module, by block (0 the embeddings:
    tokens, positions, project_in; 1..L the decoder layers; L + 1 the head: final norm, project_out,
    lm_head), in HF's module order; absent ones 0. The lm_head is the token table's size, tied or not."""
    table = model.vocab * model.token_dim
    project = model.hidden * model.embed_dim if model.embed_dim else 0
    final_norm = (model.hidden,) * (2 if model.norm == "layernorm" else 1) if model.final_norm else ()
    layers = (
        tuple(tuple(t.numel for t in leaf) for leaf in layer_leaf_modules(model, model.layer_is_moe(i)))
        for i in range(model.layers)
    )
    embed = ((table,), (model.learned_positions * model.hidden,), (project,))  # tokens, positions, project_in
    head = (final_norm, (project,), (table,))  # final norm, project_out, lm_head
    return embed, *layers, head


@lru_cache(maxsize=64)
def fetches(model: ModelSpec) -> Fetches:
    """ZeRO-3's fetches of one forward of ``model`` in HF's module order (an MoE layer's experts all
    counted, as if every expert ran)."""
    embed, *layers, head = _tensors(model)
    table = embed[0][0]
    between = sum(sum(map(sum, block)) for block in (embed[1:], *layers, head[:2]))
    refetch = not model.tied_embeddings or between >= MAX_REUSE_DISTANCE
    head = (*head[:2], (table if refetch else 0,))  # a tied table kept: no second fetch
    leaves, block, persistent = [], [], 0
    for b, group in enumerate((embed, *layers, head)):
        for leaf in group:
            fetched = tuple(n for n in leaf if n >= PERSISTENCE_THRESHOLD)
            persistent += sum(leaf) - sum(fetched)
            if fetched:
                leaves.append(fetched)
                block.append(b)
    return Fetches(tuple(leaves), tuple(block), model.layers + 2, persistent, 0 if refetch else table)


@lru_cache(maxsize=64)
def partitions(model: ModelSpec) -> tuple[int, ...]:
    """Elements of each parameter tensor of ``model``, a tied table once: ZeRO-3 gives every parameter
    a CPU partition of its own (partition_parameters.py:1096-1106; one rank holds the whole tensor)."""
    tensors = [n for block in _tensors(model) for leaf in block for n in leaf]
    return tuple(n for n in tensors[: -1 if model.tied_embeddings else None] if n)


@lru_cache(maxsize=64)  # every footprint asks: ~200 times a free-batch search, 723 tensors (llama2-70b)
def host_bytes(model: ModelSpec, pinned: bool, nvme: bool) -> float:
    """Host memory the CPU partitions take: each partition is a ``torch.empty`` on the CPU, then
    ``.pin_memory()`` when ``offload_param.pin_memory`` (partition_parameters.py:1099-1106), which torch's
    caching host allocator serves in a power-of-two block (``pinned_bytes``): OPT-30B's 59.9 GB of fp16
    weights take 78.4 GB pinned. With nvme, tensors of at least MIN_AIO_BYTES live on the disk instead
    (partitioned_param_swapper.py:131-136)."""
    kept = [n * WEIGHT_BYTES for n in partitions(model)]
    if nvme:
        kept = [b for b in kept if b < MIN_AIO_BYTES]
    return sum(pinned_bytes(b) for b in kept) if pinned else sum(kept)


def swapped_bytes(model: ModelSpec) -> tuple[float, float]:
    """With nvme offload: (bytes on the disk, the pinned swap buffers' bytes). Every fetched tensor of
    at least MIN_AIO_BYTES (1 MiB) is swappable (partitioned_param_swapper.py:131-136), each stored once
    (the tied table's second fetch reads the same file); the buffers hold the largest of them, in one
    pinned ``torch.empty`` of ``buffer_count`` buffers (:109-113), a power-of-two block (``pinned_bytes``)."""
    f = fetches(model)
    stored = sum(f.block_bytes(MIN_AIO_BYTES))
    table = model.vocab * model.token_dim * WEIGHT_BYTES
    if model.tied_embeddings and not f.kept and table >= MIN_AIO_BYTES:  # refetched: one file on the disk
        stored -= table
    largest = max((n for leaf in f.leaves for n in leaf), default=0)
    return stored, pinned_bytes(SWAP_BUFFERS * max(SWAP_BUFFER_ELEMENTS, largest + 1) * WEIGHT_BYTES)


def gather_op(nbytes: float, layer: int) -> Op:
    """The all-gather's GPU copy of fetched weights into their gathered buffers (read + write)."""
    return Op("allgather_copy", OpKind.ELEMENTWISE, layer, 0.0, 0.0, nbytes, nbytes)


@register
class ZeroInference(Strategy):
    name = "deepspeed"
    search_weight = 2  # ~0.04 s on the headline compare
    summary = "DeepSpeed ZeRO-Inference: weights in host memory fetched per module, gathered, prefetched"
    plan_type = ZeroInferencePlan

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        if not rig.gpus():
            return "the rig has no GPU"
        return None

    def check_plan(self, plan: ZeroInferencePlan, rig: Rig, model: ModelSpec, workload: Workload) -> None:
        pc.device_of_kind(rig, plan.gpu, "gpu", "gpu")
        pc.device_of_kind(rig, plan.cpu, "cpu", "cpu")
        # a pass of more than the batch sized the KV cache for sequences that do not exist
        pc.in_range(plan.batch_per_pass, 1, workload.batch, "batch_per_pass")
        pc.optional_budget(plan.gpu_mem_budget)
        if plan.offload not in OFFLOADS:
            raise pc.problem("offload", f"{plan.offload!r} is not one of {', '.join(OFFLOADS)}")
        if plan.offload == "nvme" and not plan.disk:
            raise pc.problem("disk", "offload nvme needs a disk")
        if plan.disk:
            pc.device_of_kind(rig, plan.disk, "disk", "disk")

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> ZeroInferencePlan:
        gpu = max(rig.gpus(), key=lambda d: (d.mem_bytes, d.name)).name
        cpu = rig.host_cpu(gpu)
        plan = ZeroInferencePlan(gpu, cpu, workload.batch)
        disks = rig.disks_of(rig.devices[gpu].node)
        mem = rig.devices[cpu].mem_bytes
        if disks and host_bytes(model, False, False) > mem:
            # what a user configures when the weights do not fit host memory (ZeRO-Infinity)
            plan = replace(plan, offload="nvme", disk=disks[0].name)
        elif host_bytes(model, True, False) > mem:
            # the weights fit but not their power-of-two pinned blocks (cudaHostAlloc fails at init):
            # pin_memory off, DeepSpeed's own default, keeps them in host memory
            plan = replace(plan, pinned=False)
        best = self.largest_batch(plan, rig, model, workload)
        return replace(plan, batch_per_pass=max(1, min(workload.batch, best)))

    def candidates(self, rig: Rig, model: ModelSpec, workload: Workload) -> Iterator[ZeroInferencePlan]:
        """The largest pass that fits: more sequences share every weight fetch."""
        plan = self.default_plan(rig, model, workload)
        if self.largest_batch(plan, rig, model, workload) >= 1:
            yield plan

    def largest_batch(self, plan: ZeroInferencePlan, rig: Rig, model: ModelSpec, workload: Workload) -> int:
        lo, hi = 0, workload.batch
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(replace(plan, batch_per_pass=mid), rig, model, workload):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def fits(self, plan: ZeroInferencePlan, rig: Rig, model: ModelSpec, workload: Workload) -> bool:
        try:
            fp = self.footprint(plan, rig, model, workload)
        except OutOfMemory:
            return False
        capacity = rig.capacities()
        return all(sum(tags.values()) <= capacity[d] for d, tags in fp.items())

    def pass_batch(self, plan: Any) -> int | None:
        return plan.batch_per_pass

    def footprint(self, plan: ZeroInferencePlan, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        b = plan.batch_per_pass
        gpu = {
            # fetched tensors in flight and in use, and the persistent small ones (Fetches.peak_bytes)
            "weight_buffers": fetches(model).peak_bytes(plan.prefetch),
            "kv_cache": kv_cache_bytes(model, b, workload.context_len, model.layers),
            # HF transformers' forward runs under ZeRO's hooks: its own peak (hf_eager_workspace)
            "activations": hf_eager_workspace(model, b, workload.prompt_len, workload.context_len),
        }
        check_budget(plan.gpu, "gpu_mem_budget", gpu, plan.gpu_mem_budget, rig.devices[plan.gpu].mem_bytes)
        nvme = plan.offload == "nvme"
        weights = host_bytes(model, plan.pinned, nvme)
        if not nvme:
            return {plan.gpu: gpu, plan.cpu: {"weights": weights}}
        swapped, buffers = swapped_bytes(model)
        return {
            plan.gpu: gpu,
            plan.cpu: {"weights": weights, "swap_buffers": buffers},
            plan.disk: {"weights": swapped},
        }

    def devices(self, plan: ZeroInferencePlan) -> list[str]:
        return [plan.gpu, plan.cpu, plan.disk] if plan.offload == "nvme" else [plan.gpu, plan.cpu]

    def schedule(self, plan: ZeroInferencePlan, rig: Rig, model: ModelSpec, workload: Workload):
        f = fetches(model)
        copied = f.block_bytes()
        swapped = f.block_bytes(MIN_AIO_BYTES)
        gathers = [gather_op(n, i - 1) if n else None for i, n in enumerate(f.gather_bytes(plan.prefetch))]
        last = len(copied) - 1
        passes = math.ceil(workload.batch / plan.batch_per_pass)

        def block_ops(i: int, b: int, step):
            if i == 0:
                return embed_ops(model, b, step.seq_len)
            if i == last:
                return head_ops(model, step.phase, b, step.seq_len)
            return layer_blocks(model, step.phase, b, step.seq_len, step.kv_len).whole

        def gather(engine, i: int, landed: float) -> float:
            """The all-gather's GPU copy once the host copy lands; the block's compute waits for it."""
            op = gathers[i]
            return landed if op is None else engine.book_compute(plan.gpu, op, after=landed)

        nvme = plan.offload == "nvme"

        def copy(engine, i: int, after: float = 0.0) -> float:
            if nvme and swapped[i]:
                # libaio read into a pinned swap buffer, issued once the host's blocking copy of the
                # tensor before it returned (one read ahead, see the module docstring); the host waits
                # for it (synchronize_reads) before the copy from that pinned buffer
                read = engine.book_transfer(plan.disk, plan.cpu, swapped[i], label="swap_in", after=after)
                return engine.book_transfer(
                    plan.cpu, plan.gpu, copied[i], label="fetch_params", after=max(after, read)
                )
            return engine.book_transfer(
                plan.cpu, plan.gpu, copied[i], pinned=plan.pinned, label="fetch_params", after=after
            )

        def gathered(engine, i: int, landed: float) -> float:
            """When block i's all-gather, on its own stream, ends: the side stream waits for it."""
            op = gathers[i]
            return landed if op is None else landed + engine.cost_of(plan.gpu, op).time_s

        def run(engine):
            remaining = workload.batch
            for _ in range(passes):
                b = min(plan.batch_per_pass, remaining)
                remaining -= b
                for step in steps(workload):
                    landed = copy(engine, 0)
                    ready = gather(engine, 0, landed)
                    for i in range(last + 1):
                        # prefetch: the host blocks on each copy and issues the next one without
                        # waiting for the gathers (another stream) or compute; at most two blocks
                        # ahead of compute, as the live-parameter cap holds it (Fetches._walk).
                        # No trace yet: each module's hook fetches its own tensors on the side stream
                        # after that stream waited for the previous gather; the host never waits for
                        # compute (wait_stream is GPU-side, release only record_streams), so copies
                        # still run beside compute, each after the previous copy and its gather
                        issue = landed if plan.prefetch else gathered(engine, i, landed)
                        ahead = copy(engine, i + 1, after=issue) if i < last else 0.0
                        yield engine.wait(ready)
                        done = engine.book_compute(plan.gpu, block_ops(i, b, step))
                        if i == last:
                            ready = done
                        else:
                            landed = ahead
                            ready = gather(engine, i + 1, landed)
                    yield engine.wait(ready)
                    engine.token_done(b)

        return run
