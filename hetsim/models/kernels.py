"""GPU kernels each costed op launches in eager PyTorch, as the validate decoder runs a step.

hetsim costs one op per module (``layer_ops``: norm1, q_proj, ..., residual2); eager PyTorch
launches one kernel per aten op that computes (views, slices and a ``.to`` that changes nothing
launch none), so one costed op stands for one or several kernels. The counts follow
``validate/torch_model.py`` (``TorchDecoder``) line by line; ``tests/test_kernels.py`` dispatches
that decoder on the CPU and checks every count against the aten ops that write memory.

    norm1, norm2, final_norm  1   F.layer_norm / F.rms_norm (torch_model.py:193-196; one fused
                                  kernel on CUDA: ``_fused_rms_norm`` since torch 2.9)
    q_proj, k_proj            1 (+5 with rotary embedding: neg, cat, two muls, add; :196-205, :249)
    v_proj                    1   x @ w, or addmm with the bias in it (:208-209)
    attention                 3   the K and V cache writes (two copy_) and SDPA (:276-283)
    out_proj, fc2, down_proj  1 (+1 where a bias is added after the matmul: :255-256, :266-267)
    gate_proj, up_proj, fc1   1
    act                       1 (ReLU), 2 gated (SiLU and the gate x up multiply; :259-263)
    residual1, residual2      1
    embedding                 1   the gather (+1 adding learned positions; :212-219)
    lm_head                   4   the matmul, the fp32 cast, max, the vocabulary offset (:293-299)

Measured on an H200 (``validate/results/h200/step_profile.json``, torch 2.11, cu130): a
Llama-2-7B decode step launched 1030 kernels at batch 1 and 998 at batch 32, where these counts
give 838 (26 per layer, 6 outside). The libraries add kernels of their own that no aten op shows:
32 more at batch 1 than at 32 (one per layer: flash-attention's split-KV combine kernel, which it
runs when batch x heads leaves SMs idle) and 5 per layer at both (consistent with split-K
reductions of the five 4096-wide GEMMs; inferred from the totals, not traced). ``LIBRARY_KERNELS``
is not added here: which GEMMs split is cuBLAS's heuristic per shape and GPU.
"""

from __future__ import annotations

from hetsim.models.spec import ModelSpec, Op, op_with

# Ops whose kernel count does not depend on the model's options.
_FIXED = {
    "norm1": 1,
    "norm2": 1,
    "final_norm": 1,
    "v_proj": 1,
    "attention": 3,
    "gate_proj": 1,
    "up_proj": 1,
    "fc1": 1,
    "residual1": 1,
    "residual2": 1,
    "lm_head": 4,
}
ROTARY_KERNELS = 5  # neg, cat, x * cos, rot * sin, add (torch_model.py:196-205)


def eager_kernels(spec: ModelSpec, name: str) -> int:
    """Kernels the costed op ``name`` of ``spec`` launches in the validate decoder on a GPU."""
    kernels = _count(spec, name)
    if kernels is None:
        raise ValueError(f"{spec.name}: no kernel count for op {name!r} (validate's decoder does not run it)")
    return kernels


def op_kernels(spec: ModelSpec, ops: tuple[Op, ...] | list[Op]) -> int:
    """Kernels ``ops`` of ``spec`` launch, back to back."""
    return sum(eager_kernels(spec, o.name) for o in ops)


def counted(spec: ModelSpec, ops: tuple[Op, ...]) -> tuple[Op, ...]:
    """``ops`` with their kernel counts; ops the validate decoder does not run (MoE routing, MLA)
    keep one kernel each."""
    out = []
    for o in ops:
        kernels = _count(spec, o.name)
        # an op that has its count already is kept (most launch one kernel, the default): a rebuild
        # (``op_with``) per op of every layer shape a search meets
        out.append(o if kernels is None or kernels == o.kernels else op_with(o, kernels=kernels))
    return tuple(out)


def _count(spec: ModelSpec, name: str) -> int | None:
    """``eager_kernels``' count, None for an op the validate decoder does not run."""
    if name in _FIXED:
        return _FIXED[name]
    if name in ("q_proj", "k_proj"):
        return 1 + (ROTARY_KERNELS if spec.family != "opt" else 0)
    if name in ("out_proj", "fc2", "down_proj"):
        return 1 + (1 if spec.linear_bias else 0)
    if name == "act":
        return 2 if spec.gated_mlp else 1
    if name == "embedding":
        return 1 + (1 if spec.learned_positions else 0)
    return None
