"""Measure the bytes HF transformers' eager Llama and Mistral forwards allocate at their peak.

    .venv/bin/pip install --target /tmp/tf435 --no-deps transformers==4.35.2 huggingface_hub==0.17.3 \
        tokenizers==0.14.1 safetensors regex requests urllib3 idna charset_normalizer certifi tqdm \
        pyyaml packaging filelock fsspec typing_extensions
    PYTHONPATH=/tmp/tf435 .venv/bin/python tools/hf_gated_peak.py

transformers 4.35.2 (Nov 2023) is the last release with the legacy tuple KV cache and eager attention
by default for these families, the HF a 2023 offloading baseline runs them with. Counting as
tools/hf_opt_peak.py does (its ``LiveBytes``: every storage an aten op returns, live until torch frees
it; weights and the cache passed in are not counted; CUDA's fp16->fp32 softmax needs no fp32 input
copy, so the CPU one is discounted). Writes tests/data/hf-gated-peak-<version>.csv: per family
(llama: MHA, GQA and MQA; mistral: GQA and MQA), shape and phase, ``workspace_bytes`` = peak less the
KV cache the call adds, what ``hetsim.models.memory.hf_eager_workspace`` predicts. Nothing is fitted to
these rows: they check the formula's gated-MLP, repeated-KV, MQA-copy and fp32-logits terms, which
come from reading the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_opt_peak import count_forward, write_rows

FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}


def _model(family: str, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int, layers: int):
    config_cls, model_cls = FAMILIES[family]
    cfg = config_cls(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    if family == "mistral":
        cfg.sliding_window = 4096  # wider than every shape here: the window never slices
    torch.manual_seed(0)
    return model_cls(cfg).to(torch.float16).eval()


@torch.no_grad()
def measure(shape: tuple, layers: int, phase: str) -> dict:
    family, batch, tokens, hidden, heads, kv_heads, ffn, vocab = shape
    model = _model(family, hidden, heads, kv_heads, ffn, vocab, layers)
    ids = torch.randint(0, vocab, (batch, tokens))
    # as generate() calls the prefill: with a mask, which 4.35.2 expands to a b x 1 x s x s tensor
    # (without one the causal mask is a broadcast view of a single s x s)
    mode, kv = count_forward(model, ids, phase, prefill_mask=True)
    return {
        "family": family,
        "phase": phase,
        "batch": batch,
        "tokens": tokens,
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv_heads,
        "ffn": ffn,
        "vocab": vocab,
        "layers": layers,
        "peak_bytes": mode.peak,
        "kv_bytes": kv,
        "workspace_bytes": mode.peak - kv,
    }


# (family, batch, tokens, hidden, heads, kv_heads, ffn, vocab): MHA, GQA and MQA, MLP-, attention- and
# logits-dominated shapes; the last three MQA at batch > 1, where matmul copies the repeated K and V
SHAPES = [
    ("llama", 2, 64, 256, 4, 4, 688, 1000),
    ("llama", 2, 64, 256, 8, 2, 688, 1000),
    ("llama", 1, 128, 256, 8, 1, 2048, 1000),
    ("llama", 3, 96, 384, 6, 2, 1024, 8000),
    ("llama", 2, 256, 256, 16, 4, 512, 1000),
    ("mistral", 2, 64, 256, 8, 2, 896, 1000),
    ("mistral", 1, 200, 512, 8, 4, 1792, 3000),
    ("mistral", 4, 48, 320, 10, 5, 640, 6000),
    ("llama", 2, 96, 256, 8, 1, 688, 1000),
    ("llama", 4, 48, 384, 6, 1, 1024, 2000),
    ("mistral", 3, 128, 256, 16, 1, 512, 1000),
]


def main() -> int:
    rows = [
        measure(shape, layers, phase)
        for phase in ("prefill", "decode")
        for shape in SHAPES
        for layers in (1, 2)
    ]
    write_rows(rows, "hf-gated-peak", "tools/hf_gated_peak.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
