"""Real runs of the offloading strategies on one GPU and its host: HeteGen's split linear layers.

``HeteGenRun`` executes a ``HeteGenPlan`` as the paper describes it: modules of the first
``resident[kind]`` layers live on the GPU; every other linear module is split by output columns,
the GPU share (``alpha``) copied asynchronously from pinned host memory on a side stream and
multiplied on the GPU, while a CPU thread multiplies the rest with the host copy; the halves are
joined on the GPU. ``device="cpu"`` runs the same code paths with the "GPU" on the host (no
streams, no copies), which is how the tests check the arithmetic on machines without CUDA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from validate.torch_model import LayerWeights, TorchDecoder

# LayerWeights field of each linear module kind (weight, bias)
MODULE_FIELDS = {
    "q_proj": ("wq", "bq"), "k_proj": ("wk", "bk"), "v_proj": ("wv", "bv"), "out_proj": ("wo", None),
    "gate_proj": ("w1", None), "up_proj": ("w3", None), "down_proj": ("w2", None),
    "fc1": ("w1", "b1"), "fc2": ("w2", None),
}  # fmt: skip
LM_HEAD = "lm_head"


@dataclasses.dataclass
class _Split:
    """One module's weight cut at ``cols`` output columns: the GPU share in pinned host memory
    (copied every use) and the CPU share in plain host memory."""

    cols: int
    gpu_src: torch.Tensor
    cpu_part: torch.Tensor
    bias: torch.Tensor | None  # full bias, on the device


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
        parts = []
        if sp.cols < w.shape[1]:  # the CPU share, on a host thread, overlapping the GPU share
            x_host = x.to("cpu")
            cpu = self.pool.submit(torch.matmul, x_host, sp.cpu_part)
        if sp.cols > 0:
            if self.cuda:
                assert self.copy_stream is not None
                with torch.cuda.stream(self.copy_stream):
                    w_dev = sp.gpu_src.to(self.dev, non_blocking=True)
                torch.cuda.current_stream().wait_stream(self.copy_stream)
            else:
                w_dev = sp.gpu_src
            parts.append(x @ w_dev)
        if sp.cols < w.shape[1]:
            parts.append(cpu.result().to(self.dev, non_blocking=self.cuda))
        y = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
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
    dev = torch.device(device)
    dec.embed = dec.embed.to(dev)
    if dec.pos is not None:
        dec.pos = dec.pos.to(dev)
    dec.final_norm = dec.final_norm.to(dev)
    if dec.final_norm_b is not None:
        dec.final_norm_b = dec.final_norm_b.to(dev)

    def norms_to_device(lw: LayerWeights) -> LayerWeights:
        moved = {f: getattr(lw, f).to(dev) for f in ("norm1", "norm2", "bo", "b2", "norm1_b", "norm2_b")
                 if getattr(lw, f) is not None}  # fmt: skip
        return dataclasses.replace(lw, **moved)

    dec.layers = [norms_to_device(lw) for lw in dec.layers]
    alpha = {"prefill": dict(plan.get("alpha_prefill", {})), "decode": dict(plan.get("alpha_decode", {}))}
    return HeteGenRun(dec, dict(plan.get("resident", {})), alpha, device=device)
