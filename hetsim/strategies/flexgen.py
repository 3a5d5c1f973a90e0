"""FlexGen (Sheng et al., arXiv 2303.06865): offloading with the zig-zag block schedule on one GPU.

A block of bls = gbs x nb sequences walks down each column (scheduling layer j) over its nb GPU
batches before moving right, so every weight load is shared by bls sequences. The released runtime
(flex_opt.py: generation_loop_overlap_multi_batch) runs, for each (token i, layer j, batch k):
load layer j+1's weights (only when k == 0), load batch k+1's KV cache and hidden state, store
batch k-1's, compute batch k, then a full barrier. CPU attention (--cpu-cache-compute) runs in the
issuing thread, so it blocks the loop; the gather of the CPU-resident KV into the fp32 workspace does
too (its disk share is read by the copy threads, waited for at the barrier), and so does
``pin_memory()`` of every unpinned CPU tensor bound for the GPU (the KV cache is never pinned) before
its DMA. Disk copies go through the copy threads' pinned relay, one hop after the other
(pytorch_backend.py: general_copy, copy_worker_func).
See FlexGen, arXiv 2303.06865; the policy is in flexgen_policy.py, the LP in
hetsim/planner/flexgen_lp.py.
"""

from __future__ import annotations

import math

from hetsim.costs.op_cost import OpCost
from hetsim.errors import InputError
from hetsim.hardware.rig import NoRouteError, Rig
from hetsim.models.spec import FLEXGEN_INT4 as INT4  # FlexGen's group-64 4-bit format
from hetsim.models.spec import ModelSpec
from hetsim.sim.engine import Engine
from hetsim.sim.memory import OutOfMemory, check_budget
from hetsim.strategies import plan_io as pc
from hetsim.strategies.base import Footprint, Strategy, register
from hetsim.strategies.flexgen_ops import (
    KV_CONVERT,
    PACKED_RELAY,
    PLAIN_RELAY,
    SubStepOps,
    host_copy_op,
    kv_gather_op,
    layer_kind,
    packed_unrelay_cost,
    substep_ops,
)
from hetsim.strategies.flexgen_policy import (
    FlexGenPlan,
    copy_parts,
    fractions,
    kv_token_bytes,
    layer_disk_copies,
    layer_disk_packed,
    layer_weight_split,
    memory_plan,
    packed_parts,
    shape_of,
    validate,
)
from hetsim.workload import MAX_WORK, WHY_MAX, Step, Workload, steps


def endpoints(rig: Rig, gpu: str = "") -> tuple[str, str, str]:
    """(gpu, its host CPU, a disk on that node or ""); the rig's first GPU unless named."""
    gpu = gpu or rig.gpus()[0].name
    node = rig.devices[gpu].node
    disks = rig.disks_of(node)
    return gpu, rig.host_cpu(gpu), disks[0].name if disks else ""


def _cannot_load(model: ModelSpec) -> str | None:
    """Why FlexGen cannot load ``model``'s checkpoint, or None. Its weights are fp16 .npy files per
    tensor (flex_opt.py: init_weight_list), packed into its own group-64 4-bit format by
    --compress-weight (compression.py): no GPTQ/AWQ qweight tensors."""
    if model.quantized:
        return (
            f"FlexGen cannot load a GPTQ/AWQ {model.quantized} checkpoint (config.json "
            "quantization_config): it reads 16-bit weights and compresses them itself"
        )
    return None


# a block (gpu_batch_size x num_gpu_batches) is a batch: 10**30 of either ran to an out-of-memory reason
# quoting 10**25 TB
_MOST = MAX_WORK["batch"]
_BLOCK = f"a block of gpu_batch_size x num_gpu_batches holds at most {_MOST} sequences: {WHY_MAX['batch']}"
_RANGES = {"gpu_batch_size": (1, _MOST, WHY_MAX["batch"]), "num_gpu_batches": (1, _MOST, _BLOCK)}


@register
class FlexGen(Strategy):
    name = "flexgen"
    # ~300 LPs, the best few confirmed in the engine, and the final run of a block of ~2000 sequences:
    # the costliest of a compare (mixed-lab llama2-70b: ~2.4 CPU s of ~5.8)
    search_weight = 20
    summary = "FlexGen: weights/KV/activations over GPU, CPU and disk, zig-zag block schedule, LP policy"
    plan_type = FlexGenPlan
    # its group-64 4-bit compression (Sheng et al. §5) as --dtype int4 / --kv-dtype int4 (lossy)
    weight_dtypes = ("fp16", "int4")
    kv_dtypes = ("fp16", "int4")

    def applicable(self, rig: Rig, model: ModelSpec, workload: Workload) -> str | None:
        if not rig.gpus():
            return "the rig has no GPU"
        if not rig.nodes[rig.gpus()[0].node].cpus:
            return "the GPU has no host CPU"
        return _cannot_load(model)

    knob_ranges = _RANGES

    def check_plan(self, plan: FlexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> None:
        if plan.gpu:
            pc.device_of_kind(rig, plan.gpu, "gpu", "gpu")
        pc.at_least(plan.gpu_batch_size, 1, "gpu_batch_size")
        pc.at_least(plan.num_gpu_batches, 1, "num_gpu_batches")
        pc.in_ranges(plan, self.knob_ranges)
        # the block is a batch too: at most the largest, rounded up to whole GPU batches (the default
        # plan's ceil(batch / gpu_batch_size) GPU batches stay inside)
        most = math.ceil(_MOST / plan.gpu_batch_size)
        pc.in_range(plan.num_gpu_batches, 1, most, "num_gpu_batches", _BLOCK)
        for name in ("wg", "wc", "cg", "cc", "hg", "hc"):
            pc.in_range(getattr(plan, name), 0.0, 100.0, name)
        try:
            validate(plan)
        except InputError as exc:
            raise pc.problem(exc.field or "wg", exc.message) from None
        pc.optional_budget(plan.gpu_mem_budget)

    def pass_batch(self, plan: FlexGenPlan) -> int | None:
        # one block per generate() call (flex_opt.py:855), the calls one after another (``run``)
        return plan.block_size

    def default_plan(self, rig: Rig, model: ModelSpec, workload: Workload) -> FlexGenPlan:
        """The benchmark's OPT-30B policy shape (bench_suite.py), batch-sized to the workload."""
        gbs = min(workload.batch, 48)
        return FlexGenPlan(
            gpu_batch_size=gbs,
            num_gpu_batches=math.ceil(workload.batch / gbs),
            gpu=endpoints(rig)[0],
            compress_weight=workload.weight_dtype == "int4",
            compress_cache=workload.kv_dtype == "int4",
        )

    # ---- memory -------------------------------------------------------------------------------
    def footprint(self, plan: FlexGenPlan, rig: Rig, model: ModelSpec, workload: Workload) -> Footprint:
        validate(plan)
        gpu, cpu, disk = endpoints(rig, plan.gpu)
        f = fractions(model, plan)
        uses_disk = f.w_disk > 0 or f.cd > 0 or f.hd > 0
        if uses_disk and not disk:
            raise OutOfMemory(gpu, "disk share (the rig has no disk)", 1.0, 0.0, 0.0)
        mem = memory_plan(model, shape_of(plan, workload), f)
        check_budget(gpu, "gpu_mem_budget", mem["gpu"], plan.gpu_mem_budget, rig.devices[gpu].mem_bytes)
        out = {gpu: mem["gpu"], cpu: mem["cpu"]}
        if disk:
            out[disk] = mem["disk"]
        return {d: {t: b for t, b in tags.items() if b > 0} for d, tags in out.items()}

    def devices(self, plan: FlexGenPlan) -> list[str]:
        return [plan.gpu] if plan.gpu else []

    def lossy(self, plan: FlexGenPlan, model: ModelSpec | None = None) -> str:
        """FlexGen's group-wise 4-bit compression changes the model's outputs; so does its fp16 run of
        an fp32 checkpoint."""
        parts = [
            f"4-bit {what} (group {INT4.group_size})"
            for what, on in (("weights", plan.compress_weight), ("KV cache", plan.compress_cache))
            if on
        ]
        return "; ".join(parts + self._narrowing(plan, model))

    # ---- schedule -----------------------------------------------------------------------------
    def schedule(self, plan: FlexGenPlan, rig: Rig, model: ModelSpec, workload: Workload):
        validate(plan)
        return _Runner(plan, rig, model, workload).run

    def run_floors(
        self, plan: FlexGenPlan, rig: Rig, model: ModelSpec, workload: Workload
    ) -> tuple[float, float] | None:
        """``_Runner.floors``: the released loop's positions at their issuing thread's chain (None
        where a copy has no route, e.g. a disk share on a rig without a disk: ``simulate`` makes
        that run an infeasible result, which no floor need bound)."""
        validate(plan)
        try:
            return _Runner(plan, rig, model, workload).floors(Engine(rig))
        except NoRouteError:
            return None


class _Booked:
    """The engine as ``block_released``'s copies see it: ``transfer`` books the copy and returns the
    time its event would fire (``Engine.transfer_time``), for ``Engine.until`` to join."""

    __slots__ = ("at", "e", "hops")

    def __init__(self, e):
        self.e = e
        self.at: float | None = None  # issue the copies as at this later time (a compute's end)
        # a disk load's second hop (src, dst, bytes, label, the read's end, a packed part's conversion
        # before it or None): issued by its copy thread when the read lands, so booked after the
        # position's other copies (``book_hops``)
        self.hops: list[tuple[str, str, float, str, float, OpCost | None]] = []

    def book_hops(self) -> list:
        """Book the deferred hops in the order their reads land (a packed part's after its conversion,
        ``_via_host``); the times they end."""
        out = []
        for src, dst, n, label, at, unrelay in sorted(self.hops, key=lambda h: h[4]):
            if unrelay is not None:
                at = self.e.book_beside(src, unrelay, label="relay_to_uint8", after=at)
            out.append(self.e.transfer_time(src, dst, n, label=label, at=at, pinned=unrelay is None))
        self.hops.clear()
        return out

    def transfer(
        self,
        src: str,
        dst: str,
        nbytes: float,
        *,
        pinned: bool = True,
        label: str = "copy",
        host_extra: float = 0.0,
    ):
        return self.e.transfer_time(
            src, dst, nbytes, pinned=pinned, label=label, at=self.at, host_extra=host_extra
        )

    def compute(self, device: str, ops, *, label: str | None = None):
        return self.e.compute_time(device, ops, label=label, at=self.at)

    def chain(self, steps) -> list:
        """Run a generator of serial steps (``_gather``, ``_relay``, ``compute``) as the issuing thread
        would: each step issued at the time the one before it ends; ``at`` is then the chain's end.
        Returns what the generator returns: copies it left in flight (``_relay``'s DMA)."""
        it = iter(steps)
        step = it.__next__  # bound once: a chain is a few steps, run ~10^4 times a confirmation
        while True:
            try:
                self.at = step()
            except StopIteration as stop:
                return list(stop.value or [])

    def run(self, steps) -> None:
        """``chain`` of steps that leave nothing in flight (``compute``): a plain loop, each step
        issued at the time the one before it ends (~40,000 a confirmation with CPU attention)."""
        for self.at in steps:
            pass


class _Runner:
    """The zig-zag block schedule of one plan; ``run`` is the SimPy process."""

    # block_released books the hidden-state copies itself when none is on disk; False: through
    # ``store_hidden`` and ``load_hidden`` (the tests hold the two the same, booking for booking)
    hidden_direct = True

    def __init__(self, plan: FlexGenPlan, rig: Rig, model: ModelSpec, workload: Workload):
        self.plan, self.model, self.workload = plan, model, workload
        self.gpu, self.cpu, self.disk = endpoints(rig, plan.gpu)
        self.h2d, self.d2h = rig.route(self.cpu, self.gpu), rig.route(self.gpu, self.cpu)
        self.split = layer_weight_split(model, plan)
        self.disk_copies = layer_disk_copies(model, plan)  # each layer's disk tensors, in order
        self.disk_packed = layer_disk_packed(model, plan)  # ... which are 4-bit packed data
        self.f = fractions(model, plan)
        self.nl = len(self.split)
        self.kinds = [layer_kind(model, j) for j in range(self.nl)]
        self.cpu_att = plan.uses_cpu_attention
        self.kv_tok = kv_token_bytes(model, plan.compress_cache)
        self.kv_parts = copy_parts(plan.compress_cache)  # a cache tensor's copies, in order
        self.kv_packed = packed_parts(plan.compress_cache)  # ... which are 4-bit packed data
        self.off_kv = self.f.cc + self.f.cd
        # a compressed cache read where it lives (by GPU attention on the GPU, CPU attention on the CPU)
        # is decompressed whole, its allocated slots; elsewhere load_cache copies kv_len of them
        home = plan.compress_cache and plan.kv_home == ("c" if self.cpu_att else "g")
        self.home_slots = workload.kv_slots if home else 0  # a sample's: the whole run's (Workload.head)
        # compressed CPU attention reading a cache it must copy first (on the GPU or the disk)
        self.kv_remote = self.f.cg + self.f.cd if self.cpu_att and plan.compress_cache else 0.0
        self.steps = list(steps(workload))
        # Per-runner memos of what every position recomputes alike (the same objects and floats as
        # computed afresh): without them, each look-up hashes the model through lru_cache.
        self._ops: dict[tuple, SubStepOps] = {}
        self._copy_s: dict[tuple, float] = {}
        self._gather_ops: dict[tuple, object] = {}
        self._unrelays: dict[float, OpCost] = {}
        self.cpu_device = rig.devices[self.cpu]
        self.read_bps = rig.copy_bw(self.disk, self.cpu) if self.disk else None  # feeds the relay
        # packed parts read from disk are converted by the copy threads on the host's cores
        # (``_via_host``), which the issuing thread's CPU work takes too (``Engine.share_cores``)
        self.converts = any(any(p) for p in self.disk_packed) or (self.f.cd > 0 and any(self.kv_packed))

    # ---- the pieces of a sub-step; each returns the events it issued ----------------------------
    def load_weight(self, e, j: int, sync=None) -> tuple[list, object | None]:
        """Events on copy streams, and (unpinned weights, ``--pin-weight 0``) the host relay that
        blocks the issuing thread (issued on ``sync`` as for ``load_cache``)."""
        _, c, d = self.split[j % self.nl]
        ev = []
        relay = None
        if c > 0 and self.plan.pin_weight:
            ev.append(e.transfer(self.cpu, self.gpu, c, label="load_weight"))
        elif c > 0:
            relay = self._relay(sync or e, c, "load_weight")
        if d > 0:  # tensor by tensor: each read, then its hop beside the next one's read
            packed = self.disk_packed[j % self.nl]
            for nbytes, pk in zip(self.disk_copies[j % self.nl], packed, strict=True):
                ev.append(self._via_host(e, self.disk, self.gpu, nbytes, "load_weight_disk", pk))
        return ev, relay

    def _via_host(self, e, src: str, dst: str, nbytes: float, label: str, packed: bool = False):
        """A disk <-> GPU copy as FlexGen's copy threads make it (pytorch_backend.py: copy_worker_func):
        the whole tensor through a pinned host relay, the disk hop first, then the PCIe hop (or the
        reverse), so the PCIe lane is held only for its own hop. Returns the second hop's event/time.

        ``packed``: a 4-bit tensor's packed data (uint8) bound for the GPU. The relay is an fp16 view
        (``cpu_buf[:size].view(shape)``, pytorch_backend.py:882, :899-902), so
        ``tmp_cpu_buf.copy_(src_data)`` converts the bytes to fp16 as the read lands (``PACKED_RELAY``
        bytes of host DRAM per byte beside it), and the blocking ``dst_data.copy_(tmp_cpu_buf)`` into
        the uint8 GPU tensor is a cross-dtype copy, which PyTorch converts on the CPU when blocking
        (aten/src/ATen/native/cuda/Copy.cu, copy_kernel_cuda: ``conversion_device = non_blocking ?
        kCUDA : kCPU``) into a new pageable uint8 tensor (``packed_unrelay_op``, the copy thread's
        own work on host DRAM, no compute stream held), then copies from pageable memory: the hop at
        the pageable rate. fp16 data read from disk is a memcpy from the memmap's pages into the
        relay (``PLAIN_RELAY`` bytes of host DRAM per byte beside the read)."""
        unrelay = self._unrelay(nbytes) if packed and src == self.disk else None
        # the relay's own host DRAM beside a disk read: a conversion (packed data) or a memcpy (fp16)
        extra = PACKED_RELAY if unrelay is not None else PLAIN_RELAY if src == self.disk else 0.0
        if isinstance(e, _Booked):
            first = e.transfer(src, self.cpu, nbytes, label=label, host_extra=extra)
            if src == self.disk:  # the PCIe hop once the read lands, after the copies issued before
                e.hops.append((self.cpu, dst, nbytes, label, first, unrelay))
                return first
            return e.e.transfer_time(self.cpu, dst, nbytes, label=label, at=first)
        first = e.book_transfer(src, self.cpu, nbytes, label=label, host_extra=extra)
        if unrelay is not None:
            first = e.book_beside(self.cpu, unrelay, label="relay_to_uint8", after=first)
        return e.transfer(self.cpu, dst, nbytes, label=label, after=first, pinned=unrelay is None)

    def _unrelay(self, nbytes: float) -> OpCost:
        """A packed part's conversion into its pageable temporary (``packed_unrelay_cost``), memoised."""
        cost = self._unrelays.get(nbytes)
        if cost is None:
            cost = self._unrelays[nbytes] = packed_unrelay_cost(self.cpu_device, nbytes, self.read_bps)
        return cost

    def _relay(self, e, nbytes: float, label: str):
        """general_copy of an unpinned CPU tensor to the GPU (pytorch_backend.py): ``pin_memory()``
        copies it to a pinned buffer in the issuing thread, then ``copy_(non_blocking=True)`` DMAs it
        at the pinned rate. Returns the DMA, left in flight."""
        yield e.compute(self.cpu, host_copy_op(nbytes), label="pin_memory")
        return [e.transfer(self.cpu, self.gpu, nbytes, label=label)]

    def _hidden_bytes(self, step: Step, j: int, gbs: int, store: bool) -> float:
        if (j == 0 and not store) or (j == self.nl - 1 and store):
            return 0.0  # token ids: a few bytes
        return gbs * step.seq_len * self.model.hidden * 2.0

    def _hidden_copy_s(self, step: Step, j: int, gbs: int, store: bool) -> float:
        """Seconds of a hidden-state copy to or from the CPU by itself (pinned; latency + bytes / rate)."""
        key = (step.seq_len, j, gbs, store)
        s = self._copy_s.get(key)
        if s is None:
            nbytes = self._hidden_bytes(step, j, gbs, store) * self.f.hc
            s = self._copy_s[key] = (self.d2h if store else self.h2d).time(nbytes)
        return s

    def load_hidden(self, e, step: Step, j: int, gbs: int) -> list:
        nbytes = self._hidden_bytes(step, j, gbs, store=False)
        ev = []
        if nbytes and self.f.hc:
            ev.append(e.transfer(self.cpu, self.gpu, nbytes * self.f.hc, label="load_hidden"))
        if nbytes and self.f.hd:
            ev.append(self._via_host(e, self.disk, self.gpu, nbytes * self.f.hd, "load_hidden"))
        return ev

    def store_hidden(self, e, step: Step, j: int, gbs: int) -> list:
        nbytes = self._hidden_bytes(step, j, gbs, store=True)
        ev = []
        if nbytes and self.f.hc:
            ev.append(e.transfer(self.gpu, self.cpu, nbytes * self.f.hc, label="store_hidden"))
        if nbytes and self.f.hd:
            ev.append(self._via_host(e, self.gpu, self.disk, nbytes * self.f.hd, "store_hidden"))
        return ev

    def load_cache(self, e, step: Step, j: int, gbs: int, sync=None) -> tuple[list, object | None]:
        """Events on copy streams, and (CPU attention) the blocking gather into the fp32 workspace
        (issued on ``sync``, the engine, when ``e`` books copies as times: see ``_Booked``)."""
        if (
            self.kinds[j] != "attention"
            or step.phase == "prefill"
            or (self.off_kv <= 0 and not self.kv_remote)
        ):
            return [], None
        ev = []
        if self.cpu_att and self.plan.compress_cache:
            # path 0 to the CPU's compressed device (flex_opt.py:345-347): a cache at home on the CPU is
            # not copied (smart_copy, pytorch_backend.py:142-145); on the GPU or the disk, its kv_len
            # slots are copied into new pinned host tensors (TorchDevice.allocate), each part by a
            # general_copy of its own (``copy_parts``): a DMA on the load stream, or the copy threads'
            # read of the disk file straight into them (:896-906, no relay for a CPU destination)
            half = gbs * step.kv_len * self.kv_tok / 2
            for _ in ("k", "v"):
                for part in self.kv_parts:
                    for src, share in ((self.gpu, self.f.cg), (self.disk, self.f.cd)):
                        if share > 0:
                            ev.append(e.transfer(src, self.cpu, half * part * share, label="load_cache"))
            return ev, None
        if self.cpu_att:  # path 1: the prompt_len + i - 1 cached tokens into the workspace
            tokens = step.kv_len - 1
            return ev, self._gather(sync or e, gbs, tokens, gbs * tokens * self.kv_tok)
        # path 0 copies prompt_len + i = kv_len token slots, the new token's own slot included
        # (flex_opt.py: SelfAttention.load_cache), which mha_gen then overwrites
        nbytes = gbs * step.kv_len * self.kv_tok
        if self.off_kv > 0:  # the KV cache on the CPU is never pinned: the host relay
            return ev, self._mixed_load(sync or e, nbytes)
        return ev, None

    def _mixed_load(self, e, nbytes: float):
        """general_copy of K, then of V (SelfAttention.load_cache path 0, flex_opt.py:359-367, one
        smart_copy each), from a cache on the CPU and perhaps the disk (segments in [GPU, CPU, disk]
        order, pytorch_backend.py:813-826): each tensor's CPU segment pinned in the issuing thread
        and DMA'd (``_relay``, :843-849), then its disk segment put on the copy threads' queue
        (:831-833), which read it into their pinned relay and copy it over the link when it lands
        (copy_worker_func, :896-902). So V's CPU half is pinned while K's DMA runs, and K's read
        starts when K's half is pinned, V's when V's is. A 4-bit cache's tensor is two general_copy
        calls, its data then its scales (compression.py:214-215, ``copy_parts``): four (pin,
        DMA) pairs a load. Returns the copies left in flight."""
        late = []
        half = nbytes / 2
        for _ in ("k", "v"):
            for part, packed in zip(self.kv_parts, self.kv_packed, strict=True):
                if self.f.cc > 0:
                    late += yield from self._relay(e, half * part * self.f.cc, "load_cache")
                if self.f.cd > 0:
                    nd = half * part * self.f.cd
                    late.append(self._via_host(e, self.disk, self.gpu, nd, "load_cache_disk", packed))
        return late

    def _gather(self, e, gbs: int, tokens: int, nbytes: float):
        """general_copy of K, then of V, into the fp32 workspace (flex_opt.py:374-398). The cache is
        a mixed tensor split [GPU, CPU, disk] (TorchMixedDevice), copied segment by segment: the CPU
        segment by ``copy_`` in the issuing thread (fp16 to fp32, synchronous), the disk segment put
        on the copy threads' queue (pytorch_backend.py:831-833: ``submit_copy``), where a thread reads
        the memmap and converts it into the workspace (:878-906, no CUDA side: a plain ``copy_``).
        So K's disk read starts when K's CPU segment is converted, V's after V's, and the thread goes
        on; ``sync()`` (flex_opt.py:793-795, ``copy_queue.join()``) at the end of the position waits
        for them. The copy thread's ``copy_`` reads the pages back as they land in the page cache and
        writes them as fp32 (``KV_CONVERT`` bytes of host DRAM per byte read), so each read books
        its conversion on the socket's DRAM beside it, which CPU work issued later shares.
        Returns the disk reads, left in flight."""
        late = []
        for op in self._gather_ops_of(gbs, tokens):
            if self.f.cc > 0:
                yield e.compute(self.cpu, op, label="kv_gather")
            if self.f.cd > 0:
                late.append(
                    e.transfer(
                        self.disk,
                        self.cpu,
                        nbytes * self.f.cd / 2,
                        label="load_cache_disk",
                        host_extra=KV_CONVERT,
                    )
                )
        return late

    def _gather_ops_of(self, gbs: int, tokens: int) -> tuple:
        """``_gather``'s CPU ops: K's then V's conversion, or with no disk share one op over the
        whole CPU share (K and V back to back)."""
        key = (gbs, tokens)
        ops = self._gather_ops.get(key)
        if ops is None:
            share = self.f.cc / 2 if self.f.cd > 0 else self.off_kv
            op = kv_gather_op(self.model, gbs, tokens, share)
            ops = self._gather_ops[key] = (op, op) if self.f.cd > 0 else (op,)
        return ops

    def store_cache(self, e, step: Step, j: int, gbs: int) -> list:
        if self.kinds[j] != "attention" or self.off_kv <= 0:
            return []
        nbytes = gbs * step.seq_len * self.kv_tok
        ev = []
        if step.phase == "decode" and self.cpu_att and not self.plan.compress_cache:
            # The new K and V already went to the CPU with q; only the disk share moves on (with
            # --compress-cache their 4-bit copies, made on the GPU, are stored as GPU attention's are).
            if self.f.cd > 0:
                ev.append(e.transfer(self.cpu, self.disk, nbytes * self.f.cd, label="store_cache_disk"))
            return ev
        if self.f.cc > 0:
            # general_copy into the unpinned cache: a prefill's slab (many tokens) goes through the copy
            # threads' pinned relay (the rig's pageable device-to-host rate was fitted on it); a decode
            # token's K and V (shape[0] == 1) is a direct, driver-staged copy_, charged at the link's
            # device-to-host rate (no rate measured for it; a staged copy is never faster)
            direct = step.phase == "decode"
            ev.append(e.transfer(self.gpu, self.cpu, nbytes * self.f.cc, pinned=direct, label="store_cache"))
        if self.f.cd > 0:
            ev.append(self._via_host(e, self.gpu, self.disk, nbytes * self.f.cd, "store_cache_disk"))
        return ev

    def ops(self, step: Step, j: int, gbs: int) -> SubStepOps:
        kind = self.kinds[j]
        key = (kind, step.phase, step.seq_len, step.kv_len, gbs)
        o = self._ops.get(key)
        if o is None:
            o = self._ops[key] = self._substep_ops(kind, step, gbs)
        return o

    def _substep_ops(self, kind: str, step: Step, gbs: int) -> SubStepOps:
        p = self.plan
        return substep_ops(
            self.model,
            kind,
            step.phase,
            gbs,
            step.seq_len,
            step.kv_len,
            self.cpu_att,
            self.off_kv,
            p.compress_weight,
            p.compress_cache,
            self.home_slots,
        )

    def compute(self, e, step: Step, j: int, gbs: int):
        """Compute one batch; a generator because CPU attention blocks the issuing thread."""
        o = self.ops(step, j, gbs)
        if not o.cpu:
            yield e.compute(self.gpu, o.gpu_pre, label=self.kinds[j])
            return
        yield from self.cpu_attention(e, o)

    def cpu_attention(self, e, o: SubStepOps):
        """``compute``'s steps of one batch with CPU attention, from its ops (``block_released`` has
        them at hand)."""
        yield e.compute(self.gpu, o.gpu_pre, label="attention_gpu")
        # q.float().cpu() and the k/v copy_ into the workspace: direct, driver-staged copies to
        # pageable memory, not the copy threads' relay (see store_cache)
        yield e.transfer(self.gpu, self.cpu, o.to_cpu_bytes, label="qkv_to_cpu")
        yield e.compute(self.cpu, o.cpu, label="cpu_attention")
        yield e.transfer(self.cpu, self.gpu, o.to_gpu_bytes, pinned=False, label="attn_to_gpu")
        yield e.compute(self.gpu, o.gpu_post, label="attention_out")

    def compute_async(self, e, step: Step, j: int, gbs: int) -> list:
        """The same work issued at once, without dependencies (the paper's perfect overlap)."""
        o = self.ops(step, j, gbs)
        ev = [e.compute(self.gpu, o.gpu_pre + o.gpu_post, label=self.kinds[j])]
        if o.cpu:
            ev.append(e.transfer(self.gpu, self.cpu, o.to_cpu_bytes, label="qkv_to_cpu"))
            ev.append(e.compute(self.cpu, o.cpu, label="cpu_attention"))
            ev.append(e.transfer(self.cpu, self.gpu, o.to_gpu_bytes, pinned=False, label="attn_to_gpu"))
        return ev

    # ---- the loops ------------------------------------------------------------------------------
    def run(self, e):
        if self.converts:
            e.share_cores(self.cpu)
        remaining = self.workload.batch
        while remaining > 0:
            seqs = min(self.plan.block_size, remaining)
            remaining -= seqs
            if not self.plan.overlap:
                yield from self.block_serial(e, seqs)
            elif self.plan.overlap_mode == "paper-ideal":
                yield from self.block_ideal(e, seqs)
            else:
                yield from self.block_released(e, seqs)

    def _tokens(self, e, j: int, k: int, seqs: int) -> None:
        if j == self.nl - 1:
            gbs = self.plan.gpu_batch_size
            e.token_done(max(0, min(gbs, seqs - k * gbs)))

    def block_released(self, e, seqs: int):
        """The released runtime's loop. Its copies are waited on only together, at the end of each
        position, so they are booked without SimPy events (``_Booked``) and joined by one event at
        the time the last would have fired: the same bookings and clock, far fewer events."""
        gbs = self.plan.gpu_batch_size
        t = _Booked(e)
        compute_time = e.compute_time
        ev0, w0 = self.load_weight(t, 0, e)  # prologue
        if w0 is not None:  # unpinned weights: the relay, issued on the engine itself (events)
            late = yield from w0
            if late:
                yield e.all_of(late)
        yield e.wait_until(ev0 + t.book_hops())
        # Per (step, layer): what every position of it reads, from the same helpers (memoised there),
        # looked up once here instead of at each of the ~10^4 positions a run.
        nl, nb = self.nl, self.plan.num_gpu_batches
        copy_s, hidden = self._hidden_copy_s, self._hidden_bytes
        direct = self.hidden_direct and not self.f.hd  # else by their helpers (a disk share)
        hc = self.f.hc if direct else 0.0
        cells = [
            (
                step,
                j,
                copy_s(step, j, gbs, store=True),
                copy_s(step, j, gbs, store=False),
                self.ops(step, j, gbs),
                hidden(step, j, gbs, True) * hc,
                hidden(step, j, gbs, False) * hc,
            )
            for step in self.steps
            for j in range(nl)
        ]
        pos = [cell for cell in cells for _ in range(nb)]
        # Loads for position 0 happen before the loop (the runtime's warm-up).
        first = pos[0]
        ev0, g0 = self.load_cache(t, first[0], first[1], gbs, e)
        ev0 += self.load_hidden(t, first[0], first[1], gbs)
        if g0 is not None:
            late = yield from g0  # events: issued on the engine itself
            if late:
                yield e.all_of(late)
        yield e.wait_until(ev0 + t.book_hops())
        last = len(pos) - 1
        load_weight, load_cache, load_hidden = self.load_weight, self.load_cache, self.load_hidden
        store_cache, store_hidden, chain = self.store_cache, self.store_hidden, t.chain
        transfer, gpu, cpu, kinds = t.transfer, self.gpu, self.cpu, self.kinds
        cpu_attention = self.cpu_attention
        k = nb - 1
        for p, (_, j, _, _, o, _, _) in enumerate(pos):
            k = 0 if k == nb - 1 else k + 1  # the GPU batch: positions run k = 0 .. nb - 1 per layer
            ev = []
            relay = None
            if k == 0 and p + nb <= last:
                wev, relay = load_weight(t, j + 1)
                ev += wev
            gather = None
            if p < last:
                nstep, nj, _, load_s, _, _, load_b = pos[p + 1]
                cev, gather = load_cache(t, nstep, nj, gbs)
                ev += cev
            if p > 0:
                pstep, pj, store_s, _, _, store_b, _ = pos[p - 1]
            # The issuing thread's serial work (the gather, the kernels and CPU attention) booked
            # as a chain, each piece as issued when the one before it ends; one event joins it all
            # (the loop would wait on each in turn).
            t.at = None
            if relay is not None:  # synchronous CPU copies in the issuing thread
                ev += chain(relay)
            if gather is not None:
                ev += chain(gather)
            launched = t.at
            # store_hidden(k - 1) and load_hidden(k + 1) are plain copy_ calls on the default stream
            # (flex_opt.py: TorchTensor.move, outside any stream context), issued after the cache
            # load: compute_layer(k)'s kernels queue behind them on that stream. They wait for their
            # own bytes only (assumed: the GPU's copy engines serve the other streams' copies side by
            # side, not first in, first out behind the cache's DMA as the engine's lane books them).
            if not direct:
                if p > 0:
                    ev += store_hidden(t, pstep, pj, gbs)
                if p < last:
                    ev += load_hidden(t, nstep, nj, gbs)
            else:  # ``store_hidden``, ``load_hidden`` with no disk share: their one copy each
                if p > 0 and store_b:
                    ev.append(transfer(gpu, cpu, store_b, label="store_hidden"))
                if p < last and load_b:
                    ev.append(transfer(cpu, gpu, load_b, label="load_hidden"))
            own = store_s if p > 0 else 0.0
            own += load_s if p < last else 0.0
            if own:
                t.at = (e.env.now if launched is None else launched) + own
            if o.cpu:
                t.run(cpu_attention(t, o))
            else:  # ``compute``'s one step, without a generator to chain
                t.at = compute_time(gpu, o.gpu_pre, label=kinds[j], at=t.at)
            ev.append(t.at)
            if p > 0:
                # store_cache(k - 1) follows compute_layer(k) in the thread: at once when the GPU's
                # kernels were only launched, after it when CPU attention held the thread
                if not o.cpu:
                    t.at = launched
                ev += store_cache(t, pstep, pj, gbs)
            t.at = None
            if t.hops:
                ev += t.book_hops()
            if ev:
                yield e.wait_until(ev)
            if j == nl - 1:
                self._tokens(e, j, k, seqs)
        # Epilogue: the last batch's outputs.
        step, j, *_ = pos[last]
        yield e.wait_until(self.store_cache(t, step, j, gbs) + self.store_hidden(t, step, j, gbs))

    def floors(self, e: Engine) -> tuple[float, float] | None:
        """Lower bounds of (TTFT, makespan - TTFT) of ``run`` in ``e`` (a fresh engine on the rig),
        for the released loop over one block (the workload's batch; None otherwise).

        Each position waits for everything it issued before the next begins, so the run lasts at
        least the sum of its positions, the prefill's ones before the first token (the last of them
        makes it) and the decode's after. A position lasts at least its issuing thread's chain:
        the next position's CPU gather, its own hidden copies' seconds (``own`` in
        ``block_released``), then its kernels (with CPU attention: the GPU part, q/k/v to the CPU,
        the CPU attention, its output back, the GPU part after), each at its ``Engine`` floor (its
        time alone); a cell's first position also lasts at least the next layer's weight loads
        (``_weight_floor``). The KV loads and stores and the relays are left out (at least
        nothing)."""
        plan = self.plan
        if not plan.overlap or plan.overlap_mode != "released" or self.workload.batch != plan.block_size:
            return None
        gbs, nb, gpu, cpu = plan.gpu_batch_size, plan.num_gpu_batches, self.gpu, self.cpu
        kernels: dict[int, float] = {}  # id(SubStepOps) -> its chain's floor (the ops live in self._ops)

        def chain(o: SubStepOps) -> float:
            if not o.cpu:
                return e.compute_floor(gpu, o.gpu_pre)
            return (
                e.compute_floor(gpu, o.gpu_pre)
                + e.transfer_floor(gpu, cpu, o.to_cpu_bytes)
                + e.compute_floor(cpu, o.cpu)
                + e.transfer_floor(cpu, gpu, o.to_gpu_bytes, pinned=False)
                + e.compute_floor(gpu, o.gpu_post)
            )

        def gather(step: Step, j: int) -> float:
            """The CPU gather ``load_cache`` issues for this cell, in the position before it."""
            if not (
                self.cpu_att
                and not self.plan.compress_cache
                and self.f.cc > 0
                and self.kinds[j] == "attention"
            ):
                return 0.0
            if step.phase == "prefill" or self.off_kv <= 0:
                return 0.0
            return sum(e.compute_floor(cpu, op) for op in self._gather_ops_of(gbs, step.kv_len - 1))

        # per cell (step, layer): prefill?, its chain, and as a neighbour: its gather and hidden load
        # (issued in the position before it), its hidden store (in the position after it)
        cells = []
        for step in self.steps:
            for j in range(self.nl):
                o = self.ops(step, j, gbs)
                c = kernels.get(id(o))
                if c is None:
                    c = kernels[id(o)] = chain(o)
                before = gather(step, j) + self._hidden_copy_s(step, j, gbs, store=False)
                after = self._hidden_copy_s(step, j, gbs, store=True)
                cells.append((step.phase == "prefill", c, before, after))
        weights = [self._weight_floor(e, j) for j in range(self.nl)]
        sums = [0.0, 0.0]  # decode, prefill
        last = len(cells) - 1
        for i, (prefill, c, before, after) in enumerate(cells):
            # positions k = 0 .. nb - 1 of the cell: the next position is this cell's but for the
            # last (the next cell's first, if any), the previous one this cell's but for the first
            # (the previous cell's last); the first also loads the next layer's weights
            ahead = cells[i + 1][2] if i < last else 0.0
            behind = cells[i - 1][3] if i > 0 else 0.0
            first = c + behind + (before if nb > 1 else ahead)
            if i < last:
                first = max(first, weights[(i + 1) % self.nl])
            sums[prefill] += first + ((nb - 1) * (c + after) + (nb - 2) * before + ahead if nb > 1 else 0.0)
        return sums[1], sums[0]

    def _weight_floor(self, e: Engine, j: int) -> float:
        """The least seconds ``load_weight`` of layer ``j`` holds its position. Its disk share moves
        tensor by tensor, each read then its hop, in whatever order the lanes take them: the link
        carries the CPU share and every hop one after the other, at least one hop follows the last
        read, and the first hop waits for a read."""
        _, c, d = self.split[j % self.nl]
        link = e.transfer_floor(self.cpu, self.gpu, c)
        if d <= 0:
            return link
        hops = [e.transfer_floor(self.cpu, self.gpu, n) for n in self.disk_copies[j % self.nl]]
        reads = [e.transfer_floor(self.disk, self.cpu, n) for n in self.disk_copies[j % self.nl]]
        return max(link + sum(hops), sum(reads) + min(hops), min(reads) + sum(hops))

    def block_ideal(self, e, seqs: int):
        gbs, nb = self.plan.gpu_batch_size, self.plan.num_gpu_batches
        yield e.all_of(self._issue(e, *self.load_weight(e, 0)))
        for si, step in enumerate(self.steps):
            for j in range(self.nl):
                last_layer = si == len(self.steps) - 1 and j == self.nl - 1
                ev = [] if last_layer else self._issue(e, *self.load_weight(e, j + 1))
                for _k in range(nb):
                    ev += self._issue(e, *self.load_cache(e, step, j, gbs))
                    ev += self.load_hidden(e, step, j, gbs)
                    ev += self.compute_async(e, step, j, gbs)
                    ev += self.store_cache(e, step, j, gbs)
                    ev += self.store_hidden(e, step, j, gbs)
                yield e.all_of(ev)
                for k in range(nb):
                    self._tokens(e, j, k, seqs)

    @staticmethod
    def _issue(e, ev: list, serial) -> list:
        """``ev`` plus, with perfect overlap, the serial host work as its own process that ends when
        the copies it leaves in flight do."""

        def joined():
            late = yield from serial
            if late:
                yield e.all_of(late)

        return ev if serial is None else [*ev, e.env.process(joined())]

    def block_serial(self, e, seqs: int):
        gbs, nb = self.plan.gpu_batch_size, self.plan.num_gpu_batches
        for step in self.steps:
            for j in range(self.nl):
                wev, relay = self.load_weight(e, j)
                if relay is not None:
                    wev += yield from relay
                yield e.all_of(wev)
                for k in range(nb):
                    cev, gather = self.load_cache(e, step, j, gbs)
                    if gather is not None:
                        cev += yield from gather
                    yield e.all_of(cev + self.load_hidden(e, step, j, gbs))
                    yield from self.compute(e, step, j, gbs)
                    yield e.all_of(self.store_cache(e, step, j, gbs) + self.store_hidden(e, step, j, gbs))
                    self._tokens(e, j, k, seqs)
