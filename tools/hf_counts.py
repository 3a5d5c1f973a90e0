"""Regenerate tests/data/hf-configs/counts.json: an independent count of each test config's parameters
and KV cache, from Hugging Face ``transformers`` on the meta device (no weights, no memory).

    .venv/bin/pip install transformers && .venv/bin/python tools/hf_counts.py

Parameters: ``sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())``.
KV: the elements the model's own cache holds per token per layer after a 3-token forward pass of a
2-layer copy of the config. For MLA (DeepSeek) transformers caches the decompressed per-head K and V;
hetsim counts the compressed latent that serving engines cache (see hetsim.models.weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from hetsim.textfiles import write_text_atomic

ROOT = Path(__file__).resolve().parents[1] / "tests" / "data" / "hf-configs"


def _config(folder: Path, layers: int | None = None):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("auto_map", None)
    c = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    if layers is not None:
        c.num_hidden_layers = layers
        if getattr(c, "first_k_dense_replace", 0):
            c.first_k_dense_replace = min(c.first_k_dense_replace, 1)
    return c


def count(folder: Path) -> dict[str, float]:
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(_config(folder)).parameters())
        small = _config(folder, layers=2)
        m = AutoModelForCausalLM.from_config(small, dtype=torch.bfloat16)
        out = m(input_ids=torch.zeros((1, 3), dtype=torch.long), use_cache=True)
        kv = sum(la.keys.numel() + la.values.numel() for la in out.past_key_values.layers)
    return {"params": params, "kv_elems_per_token_layer": kv / 3 / 2}


def count_synthetic() -> None:
    """Fill in ``params`` of each small config in synthetic.json (family code paths the real ones miss)."""
    path = ROOT / "synthetic.json"
    doc = json.loads(path.read_text())
    for entry in doc["configs"].values():
        cfg = dict(entry["config"])
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
        entry["params"] = sum(p.numel() for p in m.parameters())
    doc["transformers_version"] = transformers.__version__
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")


def main() -> None:
    count_synthetic()
    counts = {"transformers_version": transformers.__version__, "models": {}}
    for folder in sorted(p for p in ROOT.iterdir() if p.is_dir()):
        try:
            counts["models"][folder.name] = count(folder)
        except Exception as e:  # a config transformers cannot build is recorded as such
            counts["models"][folder.name] = {"error": f"{type(e).__name__}: {e}"[:200]}
    write_text_atomic(ROOT / "counts.json", json.dumps(counts, indent=2) + "\n")


if __name__ == "__main__":
    main()
