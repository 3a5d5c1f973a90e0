"""hetsim's FlexGen 4-bit kernel tables against the ops the released code runs, op by op.

tests/data/flexgen-compression-ops-0.1.8.json is tools/flexgen_compression_ops.py's record of
FlexGen 0.1.8's ``TorchCompressedDevice.compress`` and ``decompress`` (compression.py) on one KV
tensor as mha / mha_gen run them on the GPU: every kernel-launching aten op with its tensors. Each
op's bytes are counted from those tensors (each input read once, each output written once; a
``copy_``'s destination, its first argument, is written, not read) per fp16 element of the KV tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hetsim.strategies.flexgen_ops import COMPRESS_KERNELS, DECOMPRESS_KERNELS

DATA = Path(__file__).parent / "data" / "flexgen-compression-ops-0.1.8.json"
ITEMSIZE = {"float16": 2, "uint8": 1, "int64": 8, "float32": 4}


def _bytes(tensors: list[dict]) -> float:
    return sum(t["numel"] * ITEMSIZE[t["dtype"]] for t in tensors)


def traffic(op: dict, elements: int) -> tuple[float, float]:
    """(read, written) bytes per fp16 element of the KV tensor."""
    inputs = op["inputs"][1:] if op["op"].startswith("aten.copy_") else op["inputs"]
    return _bytes(inputs) / elements, _bytes(op["outputs"]) / elements


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(DATA.read_text())


@pytest.mark.parametrize(
    ("call", "table"), [("compress", COMPRESS_KERNELS), ("decompress", DECOMPRESS_KERNELS)]
)
def test_each_kernel_moves_what_flexgen_s_op_moves(recorded, call, table):
    """Thirteen kernels a compress, six a decompress, in the code's order, each reading and writing
    the bytes hetsim charges it (the group scales, mins and int64 indices included)."""
    ops = recorded[call]
    assert len(ops) == len(table)
    for op, (name, read, write) in zip(ops, table, strict=True):
        got = traffic(op, recorded["elements"])
        assert got == pytest.approx((read, write), rel=1e-9), (name, op["op"])


def test_decompress_is_13_bytes_an_element(recorded):
    """0.5625 B read and 2 B written were it one fused kernel; FlexGen's six move 13 B (plus scales)."""
    total = sum(sum(traffic(op, recorded["elements"])) for op in recorded["decompress"])
    assert total == pytest.approx(13.0 + 2 * 2 / 64)
