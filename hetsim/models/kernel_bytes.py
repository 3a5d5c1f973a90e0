"""DRAM bytes each costed op moves in eager PyTorch, as the validate decoder runs a step: the twin of
``hetsim.models.kernels`` (the kernels) for the bytes those kernels read and write.

hetsim counts one pass per op: a matmul reads its input and weights and writes its output; an
elementwise op reads its inputs and writes one output (``Op.mem_bytes``). The eager decoder
(``validate/torch_model.py``, ``TorchDecoder``) launches more kernels than that for some ops, each a
pass over DRAM of its own, and ``eager_bytes`` gives the op's bytes in two parts:

- ``main``: the kernel hetsim's roofline stands for (the GEMM, SDPA, the first elementwise kernel),
  run at max(compute, memory) as before;
- ``passes``: the other kernels, memory-bound elementwise passes run after (or before) it, one at a
  time on the stream, so their time adds to the main kernel's instead of hiding under its compute.

Per op, with ``out`` = the op's ``act_out_bytes`` (E elements of the activation dtype):

    q_proj, k_proj  rotary (6 kernels): neg of one half (reads E/2, writes E/2), cat (E, E), x * cos
                    (E, E), rot * sin (E, E), add (2E, E): passes = 10 out (torch_model.py:196-205, :249).
    attention       the K and V cache writes are two copy_ kernels (read the new k and v, write the
                    cache: 2 kv_write, :276-277); SDPA reads q and the cache up to the new tokens, the
                    new K and V read back from it, and writes the output: main = mem_bytes - kv_write
                    (hetsim's act_in already holds the new k and v once; :278-283).
    act (gated)     SiLU reads gate and writes s (main: 2 out = mem_bytes - out), then s * up reads two
                    and writes one: passes = 3 out (:259-263). ReLU is one kernel: no passes.
    out_proj, fc2,  a bias added after the matmul (2 kernels, OPT): reads the product, writes the
    down_proj       sum: passes = 2 out (the bias read is in the matmul's weight bytes; :255-256, :266-267).
    embedding       OPT's learned positions added after the gather (2 kernels): passes = 2 out (:212-219).
    lm_head         the fp32 cast of the logits (reads out, writes 2 out at 16 bit), max over the
                    vocabulary (reads the fp32 logits, writes 12 B a row), the vocabulary offset added to
                    the ids (8 B read, 8 written): passes = out (1 + 8 / act bytes) + 28 rows (:293-299).

Everything else is one kernel moving what hetsim counts (norms: F.rms_norm / F.layer_norm are one
fused kernel each, fp32 upcast in registers, not in DRAM). The split between kinds follows the op's
kernel count (``Op.kernels``): the extra kernels are what ``hetsim.models.kernels`` counted from the same
lines, so an op whose count has no extra kernel (OPT's q_proj, ReLU, a bias-free out_proj) keeps its bytes.

Left out, with their sizes:
- the cos and sin rows the two rotary multiplies read (seq x head_dim each, broadcast over batch and
  heads): 1 / (5 x batch x heads) of the rotary bytes, 2.5 % for Llama-3-8B's 8 KV heads at batch 1 (an
  op does not carry its sequence length);
- the fp32 statistics the fused norms write (4 B a row, 8 for LayerNorm): 0.02-0.05 % of a 4096-wide
  norm's bytes; SDPA's fp32 log-sum-exp (4 B per query row and head): 1.6 % of its output at head_dim 128;
- a decode step's new K and V, which hetsim's act_in and kv_read both count (b x 2 x kv_heads x
  head_dim x 2 B a layer, where SDPA reads them once, from the cache);
- the libraries' own kernels (split-K reductions; cuBLAS's copy of a bias into the output where its
  epilogue does not take it): no aten op shows them.
The validate decoder keeps its cache in the activations' dtype and ``passes`` assumes it (a narrower
cache's copies would read more than they write). ``tests/test_kernel_bytes.py`` dispatches the decoder
on the CPU and checks each layer's bytes, and those outside the layers, against the aten ops' tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from hetsim.models.spec import DTYPES, Op

ROTARY_PASSES = 10.0  # in units of the rotated tensor: neg 1, cat 2, two multiplies 2 each, add 3
GATED_ACT_PASSES = 3.0  # s * up: reads two, writes one
BIAS_PASSES = 2.0  # the product read back, the sum written
LOGIT_ROW_BYTES = 28.0  # max's fp32 value and int64 id (12 B written), the id offset (8 read, 8 written)


@dataclass(frozen=True)
class EagerBytes:
    main: float  # the kernel the op's roofline stands for
    passes: float  # the op's other kernels, memory-bound passes

    @property
    def total(self) -> float:
        return self.main + self.passes


def eager_bytes(op: Op) -> EagerBytes:
    """The DRAM bytes ``op``'s eager kernels move (module docstring); one pass for an op the validate
    decoder does not run or runs as one kernel."""
    mem, out = op.mem_bytes, op.act_out_bytes
    if op.name in ("q_proj", "k_proj") and op.kernels > 1:
        return EagerBytes(mem, ROTARY_PASSES * out)
    if op.name == "attention" and op.kernels == 3:
        return EagerBytes(mem - op.kv_write_bytes, 2.0 * op.kv_write_bytes)
    if op.name == "act" and op.kernels == 2:
        return EagerBytes(mem - out, GATED_ACT_PASSES * out)
    if op.name in ("out_proj", "fc2", "down_proj", "embedding") and op.kernels == 2:
        return EagerBytes(mem, BIAS_PASSES * out)
    if op.name == "lm_head" and op.kernels == 4:
        # the logits' dtype is the activations' (16 or 32 bit); a narrower compute dtype names the
        # weights' kernel (q4_k_m), whose logits are 16-bit
        act = max(2.0, DTYPES[op.compute_dtype].bytes_per_element) if op.compute_dtype in DTYPES else 2.0
        cast = out * (1.0 + 4.0 / act) if act < 4 else 0.0  # .float() of fp32 logits is no kernel
        return EagerBytes(mem, cast + out * 4.0 / act + LOGIT_ROW_BYTES * op.rows)
    return EagerBytes(mem, 0.0)
