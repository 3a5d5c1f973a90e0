"""Real runs of the offloading strategies on one GPU and its host: HeteGen and FlexGen.

``HeteGenRun`` executes a ``HeteGenPlan`` as the paper describes it: modules of the first
``resident[kind]`` layers live on the GPU; every other linear module is split by output columns,
the GPU share (``alpha``) copied asynchronously from pinned host memory on a side stream and
multiplied on the GPU, while a CPU thread multiplies the rest with the host copy; the halves are
joined on the GPU. The activations travel through pinned staging buffers (``Staging``), as
HeteGen's parameter manager moves data through pinned buffers, so the runner times the algorithm,
not pageable copies. ``FlexGenRun`` runs FlexGen's zig-zag block schedule (see its docstring).
``device="cpu"`` runs the same code paths with the "GPU" on the host (no
streams, no copies), which is how the tests check the arithmetic on machines without CUDA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from validate.torch_model import TorchDecoder

# LayerWeights field of each linear module kind (weight, bias)
MODULE_FIELDS = {
    "q_proj": ("wq", "bq"), "k_proj": ("wk", "bk"), "v_proj": ("wv", "bv"), "out_proj": ("wo", None),
    "gate_proj": ("w1", None), "up_proj": ("w3", None), "down_proj": ("w2", None),
    "fc1": ("w1", "b1"), "fc2": ("w2", None),
}  # fmt: skip
LM_HEAD = "lm_head"
# LayerWeights field of each tensor hetsim names (hetsim.models.weights.layer_weight_tensors)
LAYER_FIELDS = {
    "q_proj.weight": "wq", "q_proj.bias": "bq", "k_proj.weight": "wk", "k_proj.bias": "bk",
    "v_proj.weight": "wv", "v_proj.bias": "bv", "out_proj.weight": "wo", "out_proj.bias": "bo",
    "norm1.weight": "norm1", "norm1.bias": "norm1_b", "norm2.weight": "norm2", "norm2.bias": "norm2_b",
    "fc1.weight": "w1", "fc1.bias": "b1", "fc2.weight": "w2", "fc2.bias": "b2",
    "gate_proj.weight": "w1", "up_proj.weight": "w3", "down_proj.weight": "w2",
}  # fmt: skip


@dataclasses.dataclass
class _Split:
    """One module's weight cut at ``cols`` output columns: the GPU share in pinned host memory
    (copied every use) and the CPU share in plain host memory."""

    cols: int
    gpu_src: torch.Tensor
    cpu_part: torch.Tensor
    bias: torch.Tensor | None  # full bias, on the device


class Staging:
    """Pinned host buffers for the activations' trips, one per (role, shape, dtype), reused by every
    module of that shape. Reuse is safe without more synchronisation: a module's pool thread writes
    its output buffer only after an event recorded on the GPU's stream behind every copy queued
    before (``split_matmul``), and a module returns only once its CPU share has read its input.
    Unpinned on a CPU "GPU" (the tests), where the same code runs without streams."""

    def __init__(self, pin: bool):
        self.pin = pin
        self.buffers: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def get(self, role: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        key = (role, tuple(shape), dtype)
        buf = self.buffers.get(key)
        if buf is None:
            # a normal tensor even where the caller runs in inference mode: that mode is the thread's,
            # and the pool thread, outside it, may not write an inference tensor in place
            with torch.inference_mode(False):
                buf = self.buffers[key] = torch.empty(shape, dtype=dtype, pin_memory=self.pin)
        return buf


def _cpu_share(x_host: torch.Tensor, w: torch.Tensor, out: torch.Tensor, ready: Any) -> torch.Tensor:
    """The CPU share on the pool thread: it waits for the activation's copy alone (``ready``, a CUDA
    event), not for the GPU's whole queue, then multiplies into the pinned output buffer."""
    if ready is not None:
        ready.synchronize()
    return torch.matmul(x_host, w, out=out)


def split_matmul(
    x: torch.Tensor,
    sp: _Split,
    pool: ThreadPoolExecutor,
    dev: torch.device,
    copy_stream: Any = None,
    staging: Staging | None = None,
) -> torch.Tensor:
    """``x @ w`` of one split module as HeteGen runs it (no bias): the CPU share on a host thread,
    overlapping the GPU share's pinned copy (on ``copy_stream``) and its GEMM; joined by ``cat``.

    The module starts when the kernels producing ``x`` end (HeteGen's barrier between modules, and
    where hetsim starts a split); from there both paths run at once, as HeteGen's runtime overlaps
    CPU compute, the pinned H2D copy and GPU compute (arXiv 2403.01164). Issued in this order, none
    of it blocking the host:
    1. an event where ``x`` is ready; the GPU share's weight copy on ``copy_stream``, behind it;
    2. ``x``'s copy into a pinned buffer on the current stream and an event behind that; the CPU
       share goes to ``pool``, whose thread waits on that event alone;
    3. the GPU share's GEMM on the current stream once its weights have landed;
    4. when the CPU share is done, its output goes back from its pinned buffer (async) and the
       halves are concatenated.
    The host thread blocks only on the CPU share. ``staging`` holds the pinned buffers (one
    ``Staging`` per runner: pinning memory per call costs more than the copies).
    ``validate.split_parts`` times each of these on a GPU host."""
    cuda = dev.type == "cuda"
    staging = staging if staging is not None else Staging(pin=cuda)
    w_dev = sp.gpu_src
    # dev's own stream, not the current device's: on cuda:1 the events would otherwise mark device 0's
    current = torch.cuda.current_stream(dev) if cuda else None
    if sp.cols > 0 and cuda:  # 1. the weights' copy, from the module's start: no cross-module prefetch
        assert copy_stream is not None
        start = torch.cuda.Event()
        start.record(current)
        copy_stream.wait_event(start)
        with torch.cuda.stream(copy_stream):
            w_dev = sp.gpu_src.to(dev, non_blocking=True)
    cpu_cols = sp.cpu_part.shape[-1]
    if cpu_cols > 0:  # 2. the activation to pinned memory, then the CPU share on the pool thread
        x_host = staging.get("x", tuple(x.shape), x.dtype)
        x_host.copy_(x, non_blocking=cuda)
        ready = torch.cuda.Event() if cuda else None
        if ready is not None:
            ready.record(current)
        y_host = staging.get("y", (*x.shape[:-1], cpu_cols), x.dtype)
        cpu = pool.submit(_cpu_share, x_host, sp.cpu_part, y_host, ready)
    parts = []
    if sp.cols > 0:  # 3. the GPU share's GEMM, behind its weights
        if cuda:
            current.wait_stream(copy_stream)
            # the buffer was allocated on the copy stream: keep it from the next module's copy
            # until this stream's GEMM has read it
            w_dev.record_stream(current)
        parts.append(x @ w_dev)
    if cpu_cols > 0:  # 4. the CPU share's output back, async from pinned memory; a copy either way,
        # so the staging buffer is free for the next module
        y = cpu.result()
        parts.append(y.to(dev, non_blocking=True) if cuda else y.clone())
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


class HeteGenRun:
    """A decoder whose linear modules run as a HeteGen plan prescribes (see the module docstring)."""

    def __init__(
        self,
        decoder: TorchDecoder,
        resident: Mapping[str, int],
        alpha: Mapping[str, Mapping[str, float]],  # phase -> module kind -> GPU share
        device: str = "cuda",
    ):
        self.dec, self.dev = decoder, torch.device(device)
        self.cuda = self.dev.type == "cuda"
        self.copy_stream = torch.cuda.Stream() if self.cuda else None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hetegen-cpu")
        self.staging = Staging(pin=self.cuda)
        self.phase = "prefill"
        self.resident: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.splits: dict[tuple[str, int, str], _Split] = {}
        for i, lw in enumerate(decoder.layers):
            for kind, (wf, bf) in MODULE_FIELDS.items():
                gated_kind = kind in ("gate_proj", "up_proj", "down_proj")
                if gated_kind != decoder.spec.gated_mlp and kind not in (
                    "q_proj",
                    "k_proj",
                    "v_proj",
                    "out_proj",
                ):
                    continue  # the other MLP family's modules
                w = getattr(lw, wf)
                b = getattr(lw, bf) if bf else None
                self._place(i, kind, w, b, resident.get(kind, 0) > i, alpha)
        self._place(decoder.spec.layers, LM_HEAD, decoder.lm_head, None, resident.get(LM_HEAD, 0) > 0, alpha)

    def _place(self, layer: int, kind: str, w: torch.Tensor, b, resident: bool, alpha) -> None:
        bias = b.to(self.dev) if b is not None else None
        if resident:
            self.resident[(layer, kind)] = (w.to(self.dev), bias)
            return
        for phase, shares in alpha.items():
            cols = round(float(shares.get(kind, 0.0)) * w.shape[1])
            src = w[:, :cols].contiguous()
            self.splits[(phase, layer, kind)] = _Split(
                cols=cols,
                gpu_src=src.pin_memory() if self.cuda else src,
                cpu_part=w[:, cols:].contiguous(),
                bias=bias,
            )

    def linear(self, layer: int, kind: str, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
        own = self.resident.get((layer, kind))
        if own is not None:
            y = x @ own[0]
            return y + own[1] if own[1] is not None else y
        sp = self.splits[(self.phase, layer, kind)]
        y = split_matmul(x, sp, self.pool, self.dev, self.copy_stream, self.staging)
        return y + sp.bias if sp.bias is not None else y

    # the three methods generate_timed uses
    def reset(self, batch: int, context: int) -> None:
        self.dec.reset(batch, context)

    def weight_bytes(self) -> int:
        return self.dec.weight_bytes()

    def step(self, ids, start, allreduce=None, gather=None, fetch=None, linear=None) -> torch.Tensor:
        self.phase = "prefill" if start == 0 else "decode"
        return self.dec.step(ids, start, linear=self.linear)


def hetegen_decoder(
    spec, plan: Mapping[str, Any], *, dtype: torch.dtype, device: str = "cuda", seed: int = 0
) -> HeteGenRun:
    """Weights on the host; embedding, norms and KV cache on ``device``; linears as ``plan`` says
    (a ``HeteGenPlan`` as a dict: resident, alpha_prefill, alpha_decode)."""
    dec = TorchDecoder(spec, dtype=dtype, device=device, weight_device="cpu", seed=seed)
    dec.shared_to(device, lm_head=False)  # the LM head is placed like the other linears
    norms = ("norm1", "norm2", "bo", "b2", "norm1_b", "norm2_b")
    dec.layers = [lw.map(lambda t: t.to(device), only=norms) for lw in dec.layers]
    alpha = {"prefill": dict(plan.get("alpha_prefill", {})), "decode": dict(plan.get("alpha_decode", {}))}
    return HeteGenRun(dec, dict(plan.get("resident", {})), alpha, device=device)


class FlexGenRun:
    """FlexGen's zig-zag block schedule for real: a block of ``num_gpu_batches`` GPU batches goes
    through the model layer by layer (every GPU batch finishes layer j before any starts j + 1), so
    each offloaded layer's weights are copied to the GPU once per block, the next layer's copy
    overlapping this layer's compute on a side stream. The KV cache lives in pinned host memory
    unless the plan keeps it all on the GPU; with ``cpu_attention`` decode attention runs on the
    CPU over the host cache in fp32 (FlexGen's mha_gen), otherwise the cache is copied to the GPU.

    Placement is FlexGen's, tensor by tensor (``flexgen_policy.scheduling_layer_tiers``: the released
    midpoint rule per scheduling layer, the embedding and the output layer included): a host tensor is
    copied to the GPU each time its layer runs. Whole layers by ``wg`` (what this runner did before)
    moved 19.3 of the 24.1 GB a step of the release moves for OPT-13B at wg 25 / wc 75. A disk tier is
    not run.
    """

    def __init__(self, decoder: TorchDecoder, plan: Mapping[str, Any], device: str = "cuda"):
        if 100.0 - float(plan.get("wg", 0)) - float(plan.get("wc", 0)) > 1e-6:
            raise ValueError("the disk tier of a FlexGen plan is not run by validate")
        self.dec, self.dev = decoder, torch.device(device)
        self.cuda = self.dev.type == "cuda"
        self.gbs, self.nb = int(plan["gpu_batch_size"]), int(plan["num_gpu_batches"])
        self.cpu_attention = bool(plan.get("cpu_attention", True))
        self.kv_on_host = float(plan.get("cg", 0.0)) < 100.0
        self.overlap = bool(plan.get("overlap", True))
        pin = bool(plan.get("pin_weight", True)) and self.cuda
        self.host_fields: tuple[str, ...] = ()  # every decoder layer's tensors left on the host
        self.host_shared: dict[str, torch.Tensor] = {}  # embedding / output tensors on the host
        self._place(plan, pin)  # on the host (tests) a bookkeeping only: nothing moves
        self.copy_stream = torch.cuda.Stream() if self.cuda else None

    def _place(self, plan: Mapping[str, Any], pin: bool) -> None:
        from hetsim.models.weights import layer_weight_tensors
        from hetsim.strategies.base import get_strategy
        from hetsim.strategies.flexgen_policy import scheduling_layer_tiers

        dec = self.dec
        tiers = scheduling_layer_tiers(dec.spec, get_strategy("flexgen").plan_from_dict(dict(plan)))
        if any(t == 2 for layer in tiers for t in layer):
            raise ValueError("the disk tier of a FlexGen plan is not run by validate")
        names = [t.name for t in layer_weight_tensors(dec.spec)]
        layer_tiers = dict(zip(names, tiers[1] + tiers[2], strict=True))
        fields = {LAYER_FIELDS[name]: tier for name, tier in layer_tiers.items()}
        on_gpu = tuple(f for f, tier in fields.items() if tier == 0)
        self.host_fields = tuple(f for f, tier in fields.items() if tier == 1)
        host = (lambda t: t.pin_memory()) if pin else (lambda t: t)
        moved = []
        for lw in dec.layers:
            if on_gpu:
                lw = lw.map(lambda t: t.to(self.dev), only=on_gpu)
            if self.host_fields:
                lw = lw.map(host, only=self.host_fields)
            moved.append(lw)
        dec.layers = moved
        embed = ("embed", "pos") if dec.pos is not None else ("embed",)
        output = (
            ("final_norm", "final_norm_b", "lm_head")
            if dec.final_norm_b is not None
            else ("final_norm", "lm_head")
        )
        for names_, layer in ((embed, tiers[0]), (output, tiers[-1])):
            for name, tier in zip(names_, layer, strict=True):
                t = getattr(dec, name)
                if tier == 0:
                    setattr(dec, name, t.to(self.dev))
                else:  # copied in each step, as the release's load_weight copies its layer
                    self.host_shared[name] = host(t.contiguous())

    def _fetch_async(self, i: int):
        """Issue layer i's copy to the GPU; returns (weights, event to wait on)."""
        lw = self.dec.layers[i]
        if not self.host_fields or not self.cuda:
            return lw, None
        assert self.copy_stream is not None
        current = torch.cuda.current_stream()
        with torch.cuda.stream(self.copy_stream):
            on_gpu = lw.map(lambda t: t.to(self.dev, non_blocking=True), only=self.host_fields)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        # Allocated on the copy stream, read on this one: freed when the loop moves on, a block the
        # copy two layers later could overwrite while this stream's queued kernels still read it
        # (the host runs ahead where no CPU attention blocks it). As split_matmul's GPU share.
        for name in self.host_fields:
            t = getattr(on_gpu, name)
            if t is not None:
                t.record_stream(current)
        return on_gpu, done

    def _fetch_shared(self, names: tuple[str, ...]) -> None:
        """Copy the embedding's or the output layer's host tensors to the GPU for this step."""
        todo = [n for n in names if n in self.host_shared]
        if not todo or not self.cuda:
            return
        assert self.copy_stream is not None
        current = torch.cuda.current_stream()
        with torch.cuda.stream(self.copy_stream):
            for name in todo:
                setattr(self.dec, name, self.host_shared[name].to(self.dev, non_blocking=True))
        current.wait_stream(self.copy_stream)
        for name in todo:  # read on this stream (see _fetch_async)
            getattr(self.dec, name).record_stream(current)

    def _attend_cpu(self, i: int, q, k, v, rows: slice, start: int):
        dec = self.dec
        assert dec.k_cache is not None and dec.v_cache is not None
        end = start + q.shape[2]
        dec.k_cache[i, rows, :, start:end] = k.to("cpu", dec.k_cache.dtype)
        dec.v_cache[i, rows, :, start:end] = v.to("cpu", dec.v_cache.dtype)
        keys = dec.k_cache[i, rows, :, :end].float()
        vals = dec.v_cache[i, rows, :, :end].float()
        out = torch.nn.functional.scaled_dot_product_attention(
            q.to("cpu", torch.float32), keys, vals, is_causal=q.shape[2] > 1 and start == 0,
            enable_gqa=dec.kv_heads != dec.heads,
        )  # fmt: skip
        return out.to(q.device, q.dtype)

    # the three methods generate_timed uses
    def reset(self, batch: int, context: int) -> None:
        if batch != self.gbs * self.nb:
            raise ValueError(f"batch {batch} is not the plan's block ({self.gbs} x {self.nb})")
        self.dec.reset(batch, context)
        if self.kv_on_host:
            assert self.dec.k_cache is not None and self.dec.v_cache is not None
            host = (lambda t: t.cpu().pin_memory()) if self.cuda else (lambda t: t.cpu())
            self.dec.k_cache, self.dec.v_cache = host(self.dec.k_cache), host(self.dec.v_cache)

    def weight_bytes(self) -> int:
        return self.dec.weight_bytes()

    def step(self, ids, start, allreduce=None, gather=None, fetch=None, linear=None) -> torch.Tensor:
        dec, g = self.dec, self.gbs
        self._fetch_shared(("embed", "pos"))
        xs = [dec.embed_tokens(ids[k * g : (k + 1) * g], start) for k in range(self.nb)]
        decode = ids.shape[1] == 1 and start > 0
        attend = self._attend_cpu if self.kv_on_host and self.cpu_attention and decode else None
        pending = self._fetch_async(0)
        for i in range(len(dec.layers)):
            lw, done = pending
            if done is not None:
                torch.cuda.current_stream().wait_event(done)
            if i + 1 < len(dec.layers):  # the next layer's copy overlaps this layer's compute
                pending = self._fetch_async(i + 1)
                if not self.overlap and pending[1] is not None:
                    torch.cuda.current_stream().wait_event(pending[1])
            for k in range(self.nb):
                rows = slice(k * g, (k + 1) * g)
                xs[k] = dec.layer(i, lw, xs[k], g, start, rows=rows, attend=attend)
        self._fetch_shared(("final_norm", "final_norm_b", "lm_head"))
        return torch.cat([dec.next_token(x, g) for x in xs])


def flexgen_decoder(
    spec, plan: Mapping[str, Any], *, dtype: torch.dtype, device: str = "cuda", seed: int = 0
) -> FlexGenRun:
    """Weights on the host (then placed as ``plan`` says); embedding, head and activations on the
    device; the KV cache where the plan keeps it."""
    dec = TorchDecoder(spec, dtype=dtype, device=device, weight_device="cpu", seed=seed)
    return FlexGenRun(dec, plan, device=device)
