"""Host memory that a pinned (page-locked) allocation takes under torch's caching host allocator.

torch serves ``torch.empty(..., pin_memory=True)`` and ``Tensor.pin_memory()`` from its caching host
allocator, which rounds every request up to the next power of two ("Round up the allocation to the
nearest power of two to improve reuse. These power of two sizes are also used to index into the free
list": torch 2.13.0's ATen/core/CachingHostAllocator.h:300-309, ``CachingHostAllocatorImpl::
allocate``'s ``roundSize``, ``c10::llvm::PowerOf2Ceil(size)``; it stops only above
``pinned_max_round_threshold``, c10/core/AllocatorConfig.h:361, which defaults to SIZE_MAX). The torch
release FlexGen's runs used is not stated (the wheel asks for torch >= 1.12); the oldest it allows
rounds the same way: torch 1.12.1's libtorch_cuda.so (PyPI's cp310 manylinux1 wheel), disassembled,
computes the size it passes to ``cudaHostAlloc`` in ``at::cuda::CUDAHostAllocatorWrapper::allocate``
(0xea46ab-0xea46f8) as size - 1, or-ed with itself shifted right by 1, 2, 4, 8, 16 and 32, plus 1:
``llvm::PowerOf2Ceil`` inlined (aten/src/ATen/cuda/CachingHostAllocator.cpp then); torch 1.13.1's
(current when FlexGen's paper appeared, PyPI's cp310 manylinux1 wheel) does the same in
libtorch_cuda_cpp.so (0x1559e0-0x155a36), and both serve ``Tensor.pin_memory()`` (``_pin_memory_cuda``)
from ``getCachingHostAllocator()``. The releases checked all round (those between 1.13 and 2.13 are not
checked): no version property needed.
Freed blocks stay cached for reuse by a request of the same size class, never given back while the
process runs.

FlexGen 0.1.8 pins each CPU-resident weight tensor separately (``--pin-weight 1``, flex_opt.py:
init_weight_list -> pytorch_backend.py:184-190 ``allocate(pin_memory=...)``), the copy threads'
relays (:882) and CPU hidden states (``allocate`` with ``pin_memory=None`` on the CPU), and pins
an unpinned tensor bound for the GPU with ``pin_memory()`` (:849).
"""

from __future__ import annotations

import math


def pinned_bytes(nbytes: float) -> float:
    """Host bytes one pinned allocation of ``nbytes`` takes: the next power of two (0 for none)."""
    if nbytes <= 0:
        return 0.0
    return float(1 << (math.ceil(nbytes) - 1).bit_length())
