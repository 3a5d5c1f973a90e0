"""Measure the bytes Hugging Face ``transformers``' OPT forward allocates at its peak, as torch runs it.

    .venv/bin/pip install 'transformers>=4.51' && .venv/bin/python tools/hf_opt_peak.py
    # the HF of FlexGen's 2023 baselines (legacy tuple KV cache), beside the venv's own:
    .venv/bin/pip install --target /tmp/tf426 --no-deps transformers==4.26.1 huggingface_hub==0.13.4 \
        tokenizers==0.13.3 regex requests urllib3 idna charset_normalizer certifi tqdm pyyaml packaging \
        filelock numpy && PYTHONPATH=/tmp/tf426 .venv/bin/python tools/hf_opt_peak.py

Writes tests/data/hf-opt-peak-<transformers version>.csv: for small OPT configs (fp16, eager attention,
the only kernel 2023's HF had) with 1 and 2 layers, at several (batch, prompt or KV length, hidden,
heads, ffn, vocab), the peak bytes held live above the weights during one prefill forward (every
prompt position's logits, as ``OPTForCausalLM`` returns them) and during one decode step given the
prefill's cache.

How: a ``TorchDispatchMode`` sees every aten op; each new storage an op returns is counted live until
its Python storage object is collected (torch keeps one Python object per storage, so the finalizer
runs exactly when the allocation is freed). Weights are not counted; the cache passed in is counted
as freed when transformers drops it. This is what the model holds -- what a CUDA caching allocator
must serve -- without CPU kernels' private temporaries. One CPU-only copy is discounted: softmax of
fp16 to fp32 on CUDA reads the fp16 input directly (ATen SoftMax.cpp, ``half_to_float``); on CPU it
first makes an fp32 copy. Columns: ``kv_bytes`` is the cache the call adds (prefill: all of it;
decode: one token's); ``workspace_bytes = peak - kv_bytes`` is what ``hetsim.models.memory``'s
``hf_prefill_workspace`` / ``hf_decode_workspace`` predict; ``<moment>_bytes`` is the peak at each
moment (the softmax, the cache concatenation, fc1's ReLU, the LM head, anything else) less kv_bytes.
"""

from __future__ import annotations

import csv
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import OPTConfig, OPTForCausalLM

from hetsim.textfiles import open_whole

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


class LiveBytes(TorchDispatchMode):
    """Bytes of storages created inside the mode and still alive; their running peak."""

    def __init__(self, weights: set[int], inputs: list[torch.Tensor]):
        super().__init__()
        self.known = set(weights)  # storages that existed before: views of them allocate nothing
        self.live = 0
        self.peak = 0
        self.region = "embed"  # set by module hooks: embed, attention, mlp, logits
        self.moments: dict[str, int] = {}  # peak live bytes seen in each region (kv_update: the cache cat)
        self.upcast: tuple[int, int] | None = None
        for t in inputs:  # the cache passed in: HF replaces each layer's tensors by a longer copy
            st = t.untyped_storage()
            if st.data_ptr() not in self.known:
                self.known.add(st.data_ptr())
                weakref.finalize(st, self._free, st.data_ptr(), st.nbytes())

    def _free(self, ptr: int, nbytes: int) -> None:
        self.known.discard(ptr)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                ptr, nbytes = st.data_ptr(), st.nbytes()
                if nbytes and ptr not in self.known:
                    self.known.add(ptr)
                    self.live += nbytes
                    weakref.finalize(st, self._free, ptr, nbytes)
        live = self.live
        # softmax(x_fp16, dtype=float32): CUDA's kernel reads the fp16 input and writes fp32
        # (ATen SoftMax.cpp, half_to_float); CPU first makes an fp32 copy of the input. Discount it.
        if (
            func is torch.ops.aten._to_copy.default
            and args[0].dtype == torch.float16
            and out.dtype == torch.float32
        ):
            self.upcast = (out.untyped_storage().data_ptr(), out.untyped_storage().nbytes())
        elif func is torch.ops.aten._softmax.default and self.upcast:
            if args[0].untyped_storage().data_ptr() == self.upcast[0]:
                live -= self.upcast[1]
            self.upcast = None
        moment = {  # the op at which each region's peak falls; the rest of a region holds less
            ("attention", "cat"): "kv_update",
            ("attention", "_to_copy"): "attention",  # the fp16 copy of the fp32 probabilities
            ("attention", "_softmax"): "attention",
            ("mlp", "relu"): "mlp",  # fc1's output and its ReLU
            ("logits", "mm"): "logits",
        }.get((self.region, func.__name__.split(".")[0]), "other")
        self.moments[moment] = max(self.moments.get(moment, 0), live)
        self.peak = max(self.peak, live)
        return out

    def hook(self, module: torch.nn.Module, region: str) -> None:
        def enter(*_):
            self.region = region

        module.register_forward_pre_hook(enter)


def _storages(*objs) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in _tensors(*objs)}


def _tensors(*objs) -> list[torch.Tensor]:
    return [t for obj in objs for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def _cache_tensors(cache) -> list[torch.Tensor]:
    if hasattr(cache, "layers"):
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [cache[i][j] for i in range(len(cache)) for j in (0, 1)]


def _model(hidden: int, heads: int, vocab: int, layers: int, ffn: int) -> OPTForCausalLM:
    cfg = OPTConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        ffn_dim=ffn,
        word_embed_proj_dim=hidden,
        num_hidden_layers=layers,
        vocab_size=vocab,
        max_position_embeddings=2048,
        dropout=0.0,
        attention_dropout=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return OPTForCausalLM(cfg).to(torch.float16).eval()


def _cache_bytes(cache) -> int:
    return sum(t.nbytes for t in _cache_tensors(cache))


def count_forward(
    model, ids: torch.Tensor, phase: str, prefill_mask: bool, hook: Callable[[LiveBytes], None] | None = None
) -> tuple[LiveBytes, int]:
    """One ``phase`` forward of ``model`` on ``ids`` under ``LiveBytes``: the mode (its peak and moments)
    and the KV bytes the step adds. Decode runs ``ids`` as the cache first, then one more token;
    ``prefill_mask`` passes the prefill an attention mask, as ``generate`` does; ``hook`` marks moments."""
    batch, tokens = ids.shape
    before = 0
    if phase == "prefill":
        args = {"input_ids": ids, "use_cache": True}
        if prefill_mask:
            args["attention_mask"] = torch.ones(batch, tokens, dtype=torch.long)
    else:
        cache = model(input_ids=ids, use_cache=True).past_key_values
        mask = torch.ones(batch, tokens + 1, dtype=torch.long)
        args = {"input_ids": ids[:, -1:], "attention_mask": mask, "past_key_values": cache, "use_cache": True}
        before = _cache_bytes(cache)
    weights = _storages(list(model.parameters()), list(model.buffers()))
    held = _tensors(ids, args.get("attention_mask"))
    if phase == "decode":
        held += _cache_tensors(cache)
    mode = LiveBytes(weights, held)
    del held
    if hook is not None:
        hook(mode)
    with mode:
        out = model(**args)
    return mode, _cache_bytes(out.past_key_values) - before


@torch.no_grad()
def measure(
    batch: int, tokens: int, hidden: int, heads: int, vocab: int, layers: int, phase: str, ffn: int = 0
) -> dict:
    """``tokens`` is the prompt length (prefill) or the KV length before the step (decode)."""
    ffn = ffn or 4 * hidden  # OPT's ffn_dim is 4 x hidden at every size; other values separate the terms
    model = _model(hidden, heads, vocab, layers, ffn)
    ids = torch.randint(0, vocab, (batch, tokens))

    def hook_moments(mode: LiveBytes) -> None:
        for layer in model.model.decoder.layers:
            mode.hook(layer.self_attn, "attention")
            mode.hook(layer.self_attn_layer_norm, "attention")
            mode.hook(layer.final_layer_norm, "mlp")
        mode.hook(model.model.decoder.final_layer_norm, "logits")

    mode, kv = count_forward(model, ids, phase, prefill_mask=False, hook=hook_moments)
    return {
        "phase": phase,
        "batch": batch,
        "tokens": tokens,
        "hidden": hidden,
        "heads": heads,
        "ffn": ffn,
        "vocab": vocab,
        "layers": layers,
        "peak_bytes": mode.peak,
        "kv_bytes": kv,
        "workspace_bytes": mode.peak - kv,
        **{f"{m}_bytes": mode.moments.get(m, kv) - kv for m in MOMENTS},
    }


MOMENTS = ("attention", "kv_update", "mlp", "logits", "other")


# (batch, tokens, hidden, heads, vocab, ffn): a grid that moves each term on its own (fit), then
# shapes no term was fitted on (held out: the last four).
SHAPES = [
    (1, 64, 256, 4, 1000, 0),
    (2, 64, 256, 4, 1000, 0),
    (4, 64, 256, 4, 1000, 0),
    (2, 128, 256, 4, 1000, 0),
    (2, 256, 256, 4, 1000, 0),
    (2, 128, 512, 4, 1000, 0),
    (2, 128, 256, 8, 1000, 0),
    (2, 128, 256, 16, 1000, 0),
    (2, 128, 256, 4, 4000, 0),
    (2, 128, 256, 4, 8000, 0),
    (2, 128, 256, 4, 1000, 512),
    (2, 128, 256, 4, 1000, 1536),
    (1, 200, 256, 4, 1000, 2048),
    (3, 96, 384, 6, 2000, 0),
    (4, 192, 320, 10, 3000, 0),
    (1, 320, 512, 8, 5000, 0),
    (5, 48, 640, 20, 6000, 0),
]


def write_rows(rows: list[dict], stem: str, tool: str) -> None:
    """tests/data/<stem>-<transformers version>.csv, headed by the tool and the versions it ran."""
    out = DATA / f"{stem}-{transformers.__version__}.csv"
    with open_whole(out, "w", newline="") as f:
        f.write(f"# {tool}; transformers {transformers.__version__}, torch {torch.__version__}\n")
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out} ({len(rows)} rows)", file=sys.stderr)


def main() -> int:
    rows = [
        measure(b, s, h, n, v, layers, phase, f)
        for phase in ("prefill", "decode")
        for b, s, h, n, v, f in SHAPES
        for layers in (1, 2)
    ]
    write_rows(rows, "hf-opt-peak", "tools/hf_opt_peak.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
