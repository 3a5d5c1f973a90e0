"""What test_kernels and test_kernel_bytes share: a tiny model of a registry model's shape, and one
step of validate's decoder on it run under a torch dispatch mode that counts what it dispatches."""

from __future__ import annotations

import dataclasses

from hetsim.models import get_model

CONTEXT = 16


def tiny(model: str, layers: int):
    """``model``'s kind (norms, activation, GQA or not) at a size a CPU steps in milliseconds."""
    spec = get_model(model)
    kv = 2 if spec.kv_heads != spec.heads else 4
    return dataclasses.replace(spec, layers=layers, hidden=64, heads=4, kv_heads=kv, head_dim=16,
                               intermediate=96, vocab=100)  # fmt: skip


def step_under(mode, spec, batch: int, seq: int, phase: str) -> None:
    """One step of validate's decoder in fp16 (as the GPU runs) under ``mode``: the prefill of ``seq``
    tokens, or the decode step after it."""
    import torch

    from validate.torch_model import TorchDecoder

    dec = TorchDecoder(spec, dtype=torch.float16)
    dec.reset(batch, CONTEXT)
    with torch.inference_mode():
        ids = torch.randint(0, spec.vocab, (batch, seq))
        if phase == "prefill":
            with mode:
                dec.step(ids, 0)
        else:
            tok = dec.step(ids, 0).view(-1, 1)
            with mode:
                dec.step(tok, seq)
