"""Record the kernels FlexGen's released 4-bit KV compression runs on the GPU, with their tensors.

    .venv/bin/pip download flexgen==0.1.8 --no-deps -d /tmp/fg && unzip -q -o /tmp/fg/*.whl -d /tmp/fg/x
    .venv/bin/pip install attrs && PYTHONPATH=/tmp/fg/x .venv/bin/python tools/flexgen_compression_ops.py

FlexGen (https://github.com/FMInference/FlexGen, Apache-2.0) is run, not copied: the wheel's
``TorchCompressedDevice.compress`` and ``decompress`` (compression.py) quantise and dequantise one KV
tensor of shape (s, b * n_head, head_dim) in ``--compress-cache``'s format (4 bits, groups of 64
along head_dim, group_dim 2), as mha / mha_gen call them on the GPU. The tensors are on torch's
``meta`` device: no data, every aten op dispatched as on a device that is not the CPU (compress
upcasts a CPU fp16 tensor to fp32 first; on the GPU it does not), and decompress takes its GPU branch
(an fp16 buffer, not the CPU's fp32 workspace). A ``TorchDispatchMode`` records each op that launches
a kernel (views, slices, ``empty`` and ``split`` launch none) with its tensor arguments and results:
shape, dtype and element count. Writes tests/data/flexgen-compression-ops-0.1.8.json, which
tests/test_flexgen_compression_ops.py holds hetsim's kernel tables (``hetsim.strategies.flexgen_ops``)
against, op by op.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# OPT-30B's KV tensor of one GPU batch of 8 sequences at 512 tokens: (s, b * n_head, head_dim)
SHAPE = (512, 8 * 56, 128)
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "flexgen-compression-ops-0.1.8.json"
NO_KERNEL = {"view", "_unsafe_view", "slice", "empty", "split", "detach", "alias", "select", "expand"}


def _tensors(tree) -> list[dict]:
    leaves, _ = tree_flatten(tree)
    return [
        {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "numel": t.numel()}
        for t in leaves
        if isinstance(t, torch.Tensor)
    ]


class Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[dict] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL:
            self.ops.append({"op": str(func), "inputs": _tensors((args, kwargs)), "outputs": _tensors(out)})
        return out


def record() -> dict:
    from flexgen import pytorch_backend as pb
    from flexgen.compression import CompressionConfig, TorchCompressedDevice

    pb.fix_recursive_import()
    gpu = SimpleNamespace(device_type=pb.DeviceType.CUDA, dev=torch.device("meta"))  # decompress's GPU branch
    dev = TorchCompressedDevice(gpu)
    config = CompressionConfig(num_bits=4, group_size=64, group_dim=2, symmetric=False)
    x = torch.empty(SHAPE, dtype=torch.float16, device="meta")
    out = {"flexgen": "0.1.8", "torch": torch.__version__, "shape": list(SHAPE), "elements": x.numel()}
    with Recorder() as rec:
        packed = dev.compress(x, config)
    out["compress"] = rec.ops
    with Recorder() as rec:
        dev.decompress(packed)
    out["decompress"] = rec.ops
    return out


def main() -> None:
    try:
        data = record()
    except ImportError as exc:
        print(
            f"flexgen_compression_ops.py: flexgen not importable ({exc}); see the usage line", file=sys.stderr
        )
        raise SystemExit(2) from None
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT}: {len(data['compress'])} compress ops, {len(data['decompress'])} decompress ops")


if __name__ == "__main__":
    main()
