"""The model inside hetsim: architecture shapes, dtypes, and the ops of one forward step.

``ModelSpec`` is built from the registry (``hetsim.models.registry``) or from a Hugging Face
``config.json`` (``hetsim.models.hf_config``). ``hetsim.models.layer_ops`` turns it into ops with
FLOPs and bytes for a given phase, batch, sequence length and KV length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Literal

Family = Literal[
    "opt",
    "llama",
    "qwen2",
    "mistral",
    "mixtral",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
    "gemma2",
    "gemma3",
    "phi3",
    "falcon",
    "gpt_neox",
]
Phase = Literal["prefill", "decode"]


@dataclass(frozen=True)
class DType:
    """Storage format of a tensor. ``bytes_per_element`` includes group-wise scale/zero overhead.

    ``compute`` is the dtype the math runs in. A weight-only format (``dequant_ops`` > 0) stores
    weights narrow and computes in the activations' dtype: each stored weight is turned back into a
    16-bit value inside the matmul kernel at ``dequant_ops`` ALU instructions per weight
    (``hetsim.models.layer_ops`` counts them, ``hetsim.costs.op_cost`` times them).
    """

    name: str
    bits: int
    group_size: int = 0  # 0 = no groups
    group_overhead_bytes: float = 0.0  # bytes of scale + zero per group
    compute: str = ""
    dequant_ops: float = 0.0  # ALU instructions per weight to dequantise it (0 = not weight-only)

    @property
    def bytes_per_element(self) -> float:
        per = self.bits / 8.0
        if self.group_size:
            per += self.group_overhead_bytes / self.group_size
        return per

    @property
    def compute_dtype(self) -> str:
        return self.compute or self.name

    @property
    def weight_only(self) -> bool:
        return self.dequant_ops > 0


FP32 = DType("fp32", 32)
FP16 = DType("fp16", 16)
BF16 = DType("bf16", 16)
# Weight-only int8 and int4 (``--dtype int8`` / ``int4``), group-wise as GPTQ (Frantar et al., ICLR 2023,
# arXiv:2210.17323) and AWQ (Lin et al., MLSys 2024, arXiv:2306.00978) store them: groups of 128 weights
# along the input dimension (both papers' and AutoGPTQ/AutoAWQ's default group size), each with an fp16
# scale and a zero point packed at the weight's width (AutoGPTQ/AutoAWQ ``scales`` fp16, ``qzeros``
# packed int32): int8 1 + 3/128 = 1.023 B per weight, int4 0.5 + 2.5/128 = 0.520 B. The matmul runs in
# fp16 after dequantising in registers (AWQ's GEMM, exllama, Marlin): per weight, int4 needs about 1.5
# instructions (one lop3 unpack-and-convert, one half2 subtract of the zero and one half2 multiply by the
# scale per pair of weights: FasterTransformer's and Marlin's fast int4 -> fp16 conversion), int8 about
# 1 (a byte-permute conversion and one half2 fused multiply-add per pair); counted, grade assumed.
INT8 = DType("int8", 8, group_size=128, group_overhead_bytes=3.0, compute="fp16", dequant_ops=1.0)
INT4 = DType("int4", 4, group_size=128, group_overhead_bytes=2.5, compute="fp16", dequant_ops=1.5)
# FlexGen's own 4-bit compression (flex_opt.py ``CompressionConfig(num_bits=4, group_size=64,
# group_dim=...)``): asymmetric min-max, group 64, an fp16 (scale, min) pair per group: 0.5625 B/elem.
# FlexGen dequantises in separate torch ops before an fp16 GEMM (``hetsim.strategies.flexgen_ops``),
# not inside the matmul, so its matmuls carry no fused dequantisation.
FLEXGEN_INT4 = DType("int4", 4, group_size=64, group_overhead_bytes=4.0, compute="fp16")

# llama.cpp's Q4_K_M GGUF mix: Q4_K blocks (4.5 bits per weight: 256 4-bit weights with 6-bit sub-block
# scales and two fp16 super-block scales) with some tensors in Q6_K (6.56 bits), about 4.8 bits per
# weight on average (DeepSeek-V3 Q4_K_M: ~404 GB for 671B parameters; KTransformers' tutorial). Stored as
# 4 bits plus 25.6 bytes per 256 weights. Lossy: only ever the user's choice. On a CPU llama.cpp's own
# kernels unpack each weight and multiply it with 8-bit-quantised activations: the compute dtype names
# their measured cost (efficiency.yaml cpu.kernel_cycles.q4_k_m); on a GPU, which has no such entry, it
# computes in fp16 after dequantising (ComputeDevice.flops falls back to fp16).
Q4_K_M = DType("q4_k_m", 4, group_size=256, group_overhead_bytes=25.6, compute="q4_k_m")

DTYPES: dict[str, DType] = {d.name: d for d in (FP32, FP16, BF16, INT8, INT4, Q4_K_M)}
LOSSY_DTYPES = frozenset({"int8", "int4", "q4_k_m"})


def unknown_dtype(name: object) -> str | None:
    """Why ``name`` is no dtype of ``DTYPES`` (None: it is one): the one message of every dtype check
    (flags, plan files, sweep axes and plan knobs); a long value is cut to 40 characters."""
    if isinstance(name, str) and name in DTYPES:
        return None
    return f"unknown dtype {name!r:.40}; known: {', '.join(DTYPES)}"


def narrowed(checkpoint: str, dtype: str) -> bool:
    """Whether running a ``checkpoint``-precision model in ``dtype`` drops precision (fp32 -> 16-bit:
    rounding the checkpoint's weights, which changes outputs; fp16 <-> bf16 are peers, not narrower)."""
    return DTYPES[dtype].bits < DTYPES[checkpoint].bits and dtype not in LOSSY_DTYPES


class OpKind(StrEnum):
    MATMUL = "matmul"
    ATTENTION = "attention"
    ELEMENTWISE = "elementwise"  # norms, activations, residual adds, rotary
    EMBEDDING = "embedding"  # a gather: reads only the rows it needs


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # MLP inner size (per expert for MoE)
    vocab: int
    max_position: int
    gated_mlp: bool  # SwiGLU (gate, up, down) vs two-matrix MLP (fc1, fc2)
    qkv_bias: bool
    linear_bias: bool  # bias on output projection and MLP (OPT yes, llama no)
    learned_positions: int  # rows of a learned position table (OPT: max_position + 2); 0 for rotary
    tied_embeddings: bool
    num_experts: int = 1
    experts_per_token: int = 1
    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    # Fields below describe the families past llama/OPT; their defaults are a plain llama/OPT layer.
    layer_norms: int = 2  # hidden-size norms per layer: 1 (Falcon-7B), 2, 4 (Gemma-2 sandwich norms)
    qk_norm: bool = False  # an RMSNorm of head_dim over each q and k head (Qwen3, Gemma-3)
    shared_intermediate: int = 0  # inner size of the always-on shared expert(s) of an MoE layer
    shared_expert_gate: bool = False  # Qwen2-MoE: a sigmoid gate Linear(hidden, 1) on the shared expert
    dense_layers: int = 0  # the first layers have a dense MLP, not experts (DeepSeek first_k_dense_replace)
    dense_intermediate: int = 0  # the inner size of those dense MLPs
    # Multi-head latent attention (DeepSeek-V2/V3, arXiv:2405.04434); kv_lora_rank 0 = ordinary attention.
    # head_dim is then the q/k head (no-rope part + rope_head_dim) and v_head_dim the value head.
    q_lora_rank: int = 0  # 0 = q projected directly from the hidden state
    kv_lora_rank: int = 0
    rope_head_dim: int = 0
    v_head_dim: int = 0
    # Sliding-window attention (Mistral-7B v0.1, Phi-3, Gemma-2/3): a sliding layer attends to and caches
    # only the last ``sliding_window`` tokens. ``global_every`` n > 0: every n-th layer (i % n == n - 1)
    # is global, the rest slide (Gemma-2: 2, Gemma-3: 6); 0: every layer slides. sliding_window 0 = none.
    sliding_window: int = 0
    global_every: int = 0
    embed_dim: int = 0  # token-table width when it differs from hidden (OPT-350m: project_in/out)
    final_norm: bool = True  # post-norm OPT (opt-350m) has no final LayerNorm
    # The checkpoint's precision (config.json ``torch_dtype``): what the weights are stored in, so what a
    # plan that keeps full precision runs. fp16 when the config does not say.
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    # A quantised checkpoint's weights (config.json ``quantization_config``: GPTQ at 4 or 8 bits, AWQ at 4,
    # in groups of 128, hetsim's ``int4``/``int8``); "" = weights at ``dtype``. Its weights exist only
    # at that precision, so every run costs them so (``hf_config.weight_dtype_for``).
    quantized: Literal["", "int4", "int8"] = ""
    # Its LM head quantised too (GPTQModel's ``lm_head: true``); otherwise the head stays at ``dtype``.
    quantized_head: bool = False
    # Its MoE router left unconverted (AWQ's ``modules_to_not_convert: [gate]``): at the checkpoint's
    # ``dtype``, as its tables (``weights.router_dtype``; the name is older than fp32 checkpoints here).
    router_16bit: bool = False

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def kv_groups(self) -> int:
        """Parts the KV cache splits into over tensor-parallel ranks: the KV heads, or 1 for MLA, whose
        one latent every head reads (each rank keeps all of it, as vLLM and SGLang do)."""
        return 1 if self.is_mla else self.kv_heads

    @property
    def token_dim(self) -> int:
        """Width of the token embedding table and of the LM head's input."""
        return self.embed_dim or self.hidden

    def layer_is_sliding(self, layer: int) -> bool:
        n = self.global_every
        return self.sliding_window > 0 and not (n and layer % n == n - 1)

    @property
    def sliding_share(self) -> float:
        """The share of layers that slide (0 without a window)."""
        if not self.sliding_window:
            return 0.0
        n = self.global_every
        return 1.0 - (self.layers // n) / self.layers if n else 1.0

    def kv_tokens(self, tokens: float, sliding: bool | None = None) -> float:
        """Tokens of KV a layer holds (and attends to) at a context of ``tokens``: all of them in a global
        layer, the window's in a sliding one; ``sliding=None`` is the mean over the model's layers (what
        a typical layer stands for, so that times its layer count it is the model's total)."""
        if not self.sliding_window or sliding is False:
            return tokens
        windowed = min(tokens, float(self.sliding_window))
        if sliding:
            return windowed
        s = self.sliding_share
        return (1.0 - s) * tokens + s * windowed

    def layer_is_moe(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` routes to experts (DeepSeek's first layers are dense)."""
        return self.is_moe and layer >= self.dense_layers


@dataclass(frozen=True)
class WeightTensor:
    """One parameter tensor of a decoder layer, in the implementation's order.

    ``module`` groups tensors into linear modules (q_proj, fc1, ...) as HeteGen splits them;
    ``block`` is "attention" or "mlp", the scheduling layers FlexGen uses.
    """

    name: str
    module: str
    block: Literal["attention", "mlp"]
    shape: tuple[int, ...]
    is_matrix: bool  # 2-D weights get compressed/quantised; biases and norms do not (``vector_bytes``)
    # A matrix a quantised checkpoint left unconverted (AWQ's ``modules_to_not_convert: [gate]``): stored
    # at this dtype (``weights.router_dtype``), whatever the layers' ("" = the layers').
    stored: str = ""

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Op:
    """One op of one step, for the whole batch on one device (before any parallel split).

    Bytes are what the op must read or write in the device's memory; FLOPs count a
    multiply-add as 2. ``module`` names the linear module for matmuls (q_proj, fc1, ...).
    """

    name: str
    kind: OpKind
    layer: int  # -1 = input embedding, model.layers = final norm + LM head
    flops: float
    weight_bytes: float
    act_in_bytes: float
    act_out_bytes: float
    kv_read_bytes: float = 0.0
    kv_write_bytes: float = 0.0
    module: str = ""
    compute_dtype: str = "fp16"
    # Matmuls: rows of the activation (tokens per weight copy) and bytes of one weight row (output
    # features x bytes per element); prefill attention: query rows per sequence (seq_len). Short
    # rows stream weights below peak bandwidth and few rows leave GEMM and attention kernels below
    # peak FLOP/s (Efficiency's half-performance lengths).
    rows: float = 0.0
    weight_row_bytes: float = 0.0
    # ALU instructions that dequantise narrow weights (or a narrow KV cache) inside the kernel, on the
    # device's vector units beside the FLOPs (``DType.dequant_ops``; 0 for 16/32-bit operands).
    dequant_ops: float = 0.0
    # GPU kernels the op launches in eager PyTorch (hetsim.models.kernels; 1 where not counted): the
    # host issues each one, which paces a step of small ops (hetsim.costs.op_cost).
    kernels: int = 1

    @property
    def mem_bytes(self) -> float:
        activations = self.act_in_bytes + self.act_out_bytes
        return self.weight_bytes + activations + self.kv_read_bytes + self.kv_write_bytes


_OP_FIELDS = frozenset(f.name for f in fields(Op))


def op_with(op: Op, **changes: object) -> Op:
    """``dataclasses.replace(op, **changes)`` by copying the fields: Op has no ``__post_init__``, no
    slots and no init=False field, so the frozen ``__init__`` that ``replace`` re-runs (~7 us, ~1.2 us
    this way) only sets them again. A search makes thousands (tensor-parallel shares, relabelled
    layers, kernel counts, HeteGen's split shares). A subclass (its own type, perhaps a
    ``__post_init__``) goes through ``replace`` itself."""
    if type(op) is not Op:
        return dataclasses.replace(op, **changes)  # type: ignore[arg-type]
    if not changes.keys() <= _OP_FIELDS:
        raise TypeError(f"Op has no field {sorted(changes.keys() - _OP_FIELDS)}")
    new = object.__new__(Op)
    new.__dict__.update(op.__dict__)
    new.__dict__.update(changes)
    return new
