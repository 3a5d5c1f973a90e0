"""Measure the bytes FlexGen 0.1.8's released layer functions hold live at their peak, per device.

    .venv/bin/pip download flexgen==0.1.8 --no-deps -d /tmp/fg && unzip -q -o /tmp/fg/*.whl -d /tmp/fg/x
    .venv/bin/pip install attrs && PYTHONPATH=/tmp/fg/x .venv/bin/python tools/flexgen_peak.py

FlexGen (https://github.com/FMInference/FlexGen, Apache-2.0) is run, not copied: this tool imports the
wheel's ``flexgen.pytorch_backend.TorchDevice`` and calls its methods as ``flex_opt.py`` does (the
layer's input donated, weights and the KV cache it reads already resident): ``opt_input_embed``
(:236-262), ``mha`` (prefill, :298-360), ``mha_gen`` (decode, :362-480) with attention on the GPU
and with ``--cpu-cache-compute`` (the cache in the fp32 CPU workspace), ``mlp`` (:569-583) and
``opt_output_embed`` (:264-285); each once more with ``--compress-weight`` (kinds ``*_cw``: the
matrices 4-bit on the GPU, the wheel's ``TorchCompressedDevice`` decompressing them in the call).
Writes tests/data/flexgen-peak-0.1.8.csv.

How: the method of tools/hf_opt_peak.py. A ``TorchDispatchMode`` sees every aten op; each new storage
an op returns is counted live until its Python storage object is collected. Everything runs on the
CPU, each storage tagged with the device the runtime would put it on: an op's output is on the GPU
when any input is (factory ops: the GPU, the compute device of every layer), ``.cpu()`` and
``.cuda()`` are copies to the other device, and ``Tensor.is_cuda`` reads the tag, so ``mha_gen``
takes the branch it takes on a real GPU. Columns: the peak live bytes on each device
(``gpu_peak_bytes`` / ``cpu_peak_bytes``, counting the layer's input, not weights, the KV cache read
or the attention mask, which the runtime holds across layers). CPU kernels' private temporaries are
not seen (they are not storages); FlexGen's fp16 softmax is ``aten._softmax`` without an fp32 copy,
so hf_opt_peak's upcast discount has nothing to discount here.
"""

from __future__ import annotations

import csv
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import torch
from flexgen import pytorch_backend as pb
from flexgen.compression import CompressionConfig, TorchCompressedDevice
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
GPU, CPU = "gpu", "cpu"


class DeviceLiveBytes(TorchDispatchMode):
    """Live bytes of storages created inside the mode, per (tagged) device, and their running peaks."""

    def __init__(self) -> None:
        super().__init__()
        self.tag: dict[int, str] = {}  # storage pointer -> device, for every storage the mode knows
        self.live = {GPU: 0, CPU: 0}
        self.peak = {GPU: 0, CPU: 0}
        self.force: str | None = None  # the device of the next op's outputs (a .cpu() or .cuda() copy)

    def resident(self, t: torch.Tensor, device: str) -> torch.Tensor:
        """A tensor that exists before the call (weights, cache, mask): tagged, not counted."""
        self.tag[t.untyped_storage().data_ptr()] = device
        return t

    def counted(self, t: torch.Tensor, device: str) -> torch.Tensor:
        """A tensor that exists before the call and is freed inside it (the donated input): counted."""
        st = t.untyped_storage()
        self.tag[st.data_ptr()] = device
        self.live[device] += st.nbytes()
        self.peak[device] = max(self.peak[device], self.live[device])
        weakref.finalize(st, self._free, st.data_ptr(), st.nbytes(), device)
        return t

    def device_of(self, t: torch.Tensor) -> str:
        return self.tag.get(t.untyped_storage().data_ptr(), GPU)

    def _free(self, ptr: int, nbytes: int, device: str) -> None:
        self.tag.pop(ptr, None)
        self.live[device] -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # a wrapped Python number (torch.where's -1e4) is a 0-dim tensor made here: it has no device
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.dim()]
        device = self.force or (GPU if not ins or any(self.device_of(t) == GPU for t in ins) else CPU)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                ptr, nbytes = st.data_ptr(), st.nbytes()
                if nbytes and ptr not in self.tag:
                    self.tag[ptr] = device
                    self.live[device] += nbytes
                    weakref.finalize(st, self._free, ptr, nbytes, device)
        for d in (GPU, CPU):
            self.peak[d] = max(self.peak[d], self.live[d])
        return out


_COMPRESS = TorchCompressedDevice.compress


def _patch(mode: DeviceLiveBytes) -> None:
    """``is_cuda``, ``.cuda()`` and ``.cpu()`` as on a machine with a GPU, by the mode's tags."""

    def copy_to(device: str):
        def move(self, *_, **__):
            if mode.device_of(self) == device:
                return self
            mode.force = device
            try:
                return self.clone()
            finally:
                mode.force = None

        return move

    # compress upcasts an fp16 tensor to fp32 when ``tensor.device.type == "cpu"`` (compression.py:
    # 95-96), which on a GPU it is not: a GPU-tagged tensor is compressed as it comes
    compress = _COMPRESS

    def compress_as_on_its_device(self, tensor, comp_config):
        if mode.device_of(tensor) == CPU:
            return compress(self, tensor, comp_config)
        upcast, torch.Tensor.float = torch.Tensor.float, lambda t: t
        try:
            return compress(self, tensor, comp_config)
        finally:
            torch.Tensor.float = upcast

    TorchCompressedDevice.compress = compress_as_on_its_device
    torch.Tensor.is_cuda = property(lambda self: mode.device_of(self) == GPU)
    torch.Tensor.cuda = copy_to(GPU)
    torch.Tensor.cpu = copy_to(CPU)


def _tensor(t: torch.Tensor, dev: pb.TorchDevice) -> pb.TorchTensor:
    return pb.TorchTensor.create_from_torch(t, dev)


KINDS = ("input_embed", "mha", "mha_gen_gpu", "mha_gen_cpu", "mlp", "output_embed")
# --compress-weight: every matrix 4-bit, group 64 along dim 0 (flex_opt.py:1204-1205), decompressed to
# fp16 on the GPU by the layer function itself before it computes (compression.py:146-201)
WEIGHT_4BIT = CompressionConfig(num_bits=4, group_size=64, group_dim=0, symmetric=False)
# --compress-cache: K and V 4-bit, group 64 along head_dim (flex_opt.py:1207-1208); kinds ``*_cc``: mha
# compresses the prefill's K and V before returning them (pytorch_backend.py:358-360), mha_gen gets the
# cache as load_cache leaves it with compression on (path 0: a compressed copy on the GPU, flex_opt.py:
# 345-369), decompresses it to fp16 in the call (:403-406) and compresses the new K and V (:458-464)
CACHE_4BIT = CompressionConfig(num_bits=4, group_size=64, group_dim=2, symmetric=False)


@torch.no_grad()
def measure(
    kind: str,
    batch: int,
    tokens: int,
    hidden: int,
    heads: int,
    ffn: int,
    vocab: int,
    compress_weight: bool = False,
    compress_cache: bool = False,
) -> dict:
    """One call of ``kind`` at ``batch``; ``tokens`` is the prompt length (prefill: mha) or the KV
    length including the new token (decode: mha_gen); the embeddings and the MLP run on ``tokens``
    positions (prefill; 1 is decode). ``compress_weight``: the matrices 4-bit on the GPU;
    ``compress_cache``: the KV cache 4-bit (on the GPU, or with ``mha_gen_cpu`` on the CPU, decompressed
    into the host's fp32 workspace: ``workspace_bytes``, made before the call). ``kv_out_bytes``: the
    bytes of the K and V an attention call returns (what waits in cache_write_buf for its store)."""
    pb.fix_recursive_import()
    dev = pb.TorchDevice("cpu")  # stands for the GPU: every layer's compute device (flex_opt.py)
    dev.device_type = pb.DeviceType.CUDA  # decompress's GPU branch (its CPU one uses a workspace)
    torch.manual_seed(0)
    mode = DeviceLiveBytes()
    _patch(mode)
    f16 = torch.float16

    def w(*shape: int) -> pb.TorchTensor:
        t = torch.randn(*shape, dtype=f16) * 0.02
        if not (compress_weight and len(shape) >= 2):  # vectors stay fp16 (flex_opt.py:104-106)
            return _tensor(mode.resident(t, GPU), dev)
        packed = dev.compressed_device.compress(t, WEIGHT_4BIT)
        for part in packed.data[:2]:
            mode.resident(part.data, GPU)
        return packed

    b, s, h = batch, tokens, hidden
    workspace = 0  # host bytes of the CPU attention's workspace (allocated before the call, not counted)
    q_len = 1 if kind.startswith("mha_gen") else s
    mask_device = CPU if kind == "mha_gen_cpu" else GPU
    mask = _tensor(mode.resident(torch.ones(b, s, dtype=torch.bool), mask_device), dev)
    donate = [True] + [False] * 13
    if kind == "input_embed":
        ids = _tensor(mode.counted(torch.randint(0, vocab, (b, s), dtype=torch.int32), GPU), dev)
        args = (ids, mask, w(vocab, h), w(s + 2, h), 1, donate)
        call = dev.opt_input_embed
    else:
        x = _tensor(mode.counted(torch.randn(b, q_len, h, dtype=f16), GPU), dev)
        if kind == "mlp":
            args = (x, w(ffn, h), w(ffn), w(h, ffn), w(h), w(h), w(h), donate)
            call = dev.mlp
        elif kind == "output_embed":
            args = (x, w(h), w(h), w(vocab, h), donate, False, 1.0)
            call = dev.opt_output_embed
        else:
            attn = tuple(w(*shape) for shape in [(h, h), (h,)] * 4 + [(h,), (h,)])
            cc = (compress_cache, CACHE_4BIT if compress_cache else None)
            if kind == "mha":
                args = (x, mask, *attn, heads, donate, *cc)
                call = dev.mha
            else:  # the cache as load_cache leaves it: on the GPU (fp16) or in the CPU workspace (fp32)
                dtype, device = (f16, GPU) if kind == "mha_gen_gpu" else (torch.float32, CPU)
                shape = (s, b * heads, h // heads)
                if compress_cache and kind == "mha_gen_cpu":
                    # --cpu-cache-compute: load_cache's path 0 to the CPU's compressed device leaves the
                    # home cache itself (smart_copy, pytorch_backend.py:142-145), and mha_gen decompresses
                    # it into the CPU's fp32 workspace, made once by init_attention_compute_workspace
                    # (compression.py:61-82, 175-180); the cache's s slots are all the home holds
                    host = pb.TorchDevice("cpu")
                    cfg = SimpleNamespace(n_head=heads, input_dim=h)
                    task = SimpleNamespace(prompt_len=s, gen_len=1)
                    policy = SimpleNamespace(gpu_batch_size=b, comp_cache_config=CACHE_4BIT)
                    host.compressed_device.init_attention_compute_workspace(cfg, task, policy)
                    for t in host.compressed_device.data_decompress_workspace:
                        workspace += mode.resident(t, CPU).untyped_storage().nbytes()
                    k, v = (
                        host.compressed_device.compress(torch.randn(shape, dtype=f16), CACHE_4BIT)
                        for _ in "kv"
                    )
                    for part in (*k.data[:2], *v.data[:2]):
                        mode.resident(part.data, CPU)
                elif compress_cache:  # as the GPU's compressed device stores it: data and scales
                    k, v = (
                        dev.compressed_device.compress(torch.randn(shape, dtype=f16), CACHE_4BIT)
                        for _ in "kv"
                    )
                    for part in (*k.data[:2], *v.data[:2]):
                        mode.resident(part.data, GPU)
                else:
                    k, v = (
                        _tensor(mode.resident(torch.randn(shape, dtype=dtype), device), dev) for _ in "kv"
                    )
                args = (x, mask, *attn, heads, k, v, donate, 1.0, *cc)
                call = dev.mha_gen
        del x
    with mode:
        out = call(*args)
    kv_out = sum(_nbytes(t) for t in out[1:]) if kind.startswith("mha") else 0
    del out
    return {
        "kind": kind + ("_cw" if compress_weight else "") + ("_cc" if compress_cache else ""),
        "batch": batch,
        "tokens": tokens,
        "hidden": hidden,
        "heads": heads,
        "ffn": ffn,
        "vocab": vocab,
        "gpu_peak_bytes": mode.peak[GPU],
        "cpu_peak_bytes": mode.peak[CPU],
        "kv_out_bytes": kv_out,
        "workspace_bytes": workspace,
    }


def _nbytes(t: pb.TorchTensor) -> int:
    """Storage bytes of a returned K or V: fp16, or 4-bit data and fp16 scales (compression.py:84-144)."""
    parts = t.data[:2] if isinstance(t.data, tuple) else (t,)
    return sum(p.data.untyped_storage().nbytes() for p in parts)


# (batch, tokens, hidden, heads, ffn, vocab): a grid that moves each term on its own (fit), then shapes
# no term was fitted on (held out: the last four).
SHAPES = [
    (1, 64, 256, 4, 1024, 1000),
    (2, 64, 256, 4, 1024, 1000),
    (4, 64, 256, 4, 1024, 1000),
    (2, 128, 256, 4, 1024, 1000),
    (2, 256, 256, 4, 1024, 1000),
    (2, 128, 512, 4, 1024, 1000),
    (2, 128, 256, 8, 1024, 1000),
    (2, 128, 256, 16, 1024, 1000),
    (2, 128, 256, 4, 512, 1000),
    (2, 128, 256, 4, 1536, 1000),
    (2, 128, 256, 4, 1024, 4000),
    (2, 128, 256, 4, 1024, 8000),
    (3, 96, 384, 6, 1536, 2000),
    (4, 192, 320, 10, 1280, 3000),
    (1, 320, 512, 8, 2048, 5000),
    (5, 48, 640, 20, 2560, 6000),
]
HELD_OUT = 4


def main() -> int:
    rows = [measure(kind, *shape) for kind in KINDS for shape in SHAPES]
    for shape in SHAPES:  # the decode step's MLP and embeddings: one position
        b, _, *rest = shape
        rows += [measure(kind, b, 1, *rest) for kind in ("input_embed", "mlp", "output_embed")]
    rows += [measure(kind, *shape, compress_weight=True) for kind in KINDS for shape in SHAPES]
    rows += [
        measure(kind, *shape, compress_cache=True)
        for kind in ("mha", "mha_gen_gpu", "mha_gen_cpu")
        for shape in SHAPES
    ]
    out = DATA / "flexgen-peak-0.1.8.csv"
    with out.open("w", newline="") as f:
        f.write(f"# tools/flexgen_peak.py; FlexGen 0.1.8 (Apache-2.0), torch {torch.__version__}\n")
        wr = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        wr.writeheader()
        wr.writerows(rows)
    print(f"wrote {out} ({len(rows)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
