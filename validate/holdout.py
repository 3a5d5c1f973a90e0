"""Held-out error of measured GPU profiles: fit on some models or GPUs, test on the others.

A figure is one decoder layer's time outside attention and the all-reduce (norms, QKV, rope,
output projection, residual adds, MLP) at one token count and TP degree, as hetsim costs it for a
step (``layer_blocks`` without the attention op, through ``block_cost``), against the sum of the
measured kernels of that layer. ``before`` is the catalogue GPU (datasheet peaks x assumed
efficiencies, one kernel per op); ``after`` is the GPU with constants fitted on the training
split only (fused kernels).

    python -m validate.holdout [PROFILES_DIR]     # prints the markdown table in docs/measured-gpus.md
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hetsim.costs.collectives import allreduce_time
from hetsim.costs.op_cost import block_cost
from hetsim.hardware.types import ComputeDevice, Efficiency
from hetsim.models import get_model
from hetsim.models.sharding import layer_blocks
from hetsim.models.spec import OpKind
from validate.gpu_profile import base_rig, load_rig_doc
from validate.kernel_fit import Errors, fit_kernels, with_efficiency
from validate.profiles import KernelSample, read_allreduce, read_attention, read_kernels

TABLES = Path(__file__).resolve().parents[1] / "hardware_profiles" / "measured" / "vidur"
REGISTRY = {  # Vidur model folder -> hetsim registry name (models hetsim can run a step for)
    "meta-llama/Llama-2-7b-hf": "llama2-7b",
    "meta-llama/Llama-2-70b-hf": "llama2-70b",
    "meta-llama/Meta-Llama-3-8B": "llama3-8b",
    "meta-llama/Meta-Llama-3-70B": "llama3-70b",
    "Qwen/Qwen-72B": "qwen-72b",
}
BIG = ("Llama-2-70b-hf", "Meta-Llama-3-70B", "Qwen-72B")


def is_big(model: str) -> bool:
    return model.split("/")[-1] in BIG


def catalogue_gpu(gpu: str, assumed: bool = True) -> ComputeDevice:
    """The catalogue GPU; with ``assumed`` its efficiency is the class defaults of efficiency.yaml
    (assumed, one kernel per op: the "before" of every table here), not the fitted constants its
    catalogue file may carry."""
    dev = load_rig_doc(base_rig(gpu)).devices["n0.gpu0"]
    return dataclasses.replace(dev, efficiency=assumed_efficiency()) if assumed else dev


def assumed_efficiency() -> Efficiency:
    from hetsim.hardware.loader import catalog

    spec = catalog().efficiency.gpu  # type: ignore[union-attr]  # loaded with the catalogue
    return Efficiency(
        compute={k: v.si for k, v in spec.compute.items()}, memory=spec.memory.si, overhead_s=spec.overhead.si
    )


def layer_figures(
    device: ComputeDevice, samples: Sequence[KernelSample]
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int]]]:
    """Per (model, TP, tokens) with a registry model: hetsim's layer time and the measured sum (a
    kernel measured more than once at one token count, as Vidur's tables repeat 2048 and 4096
    tokens, counts once at its median)."""
    times: dict[tuple[str, int, int], dict[str, list[float]]] = {}
    for s in samples:
        if s.model in REGISTRY:
            times.setdefault((s.model, s.tp, s.tokens), {}).setdefault(s.op, []).append(s.seconds)
    meas = {k: sum(float(np.median(v)) for v in ops.values()) for k, ops in times.items()}
    keys = sorted(meas)
    pred = []
    for model, tp, tokens in keys:
        blocks = layer_blocks(get_model(REGISTRY[model]), "prefill", 1, tokens, tokens, tp)
        t = 0.0
        for block in (blocks.attention, blocks.mlp):
            t += block_cost(device, tuple(o for o in block if o.kind != OpKind.ATTENTION)).time_s
        pred.append(t)
    return np.array(pred), np.array([meas[k] for k in keys]), keys


DECODE_TOKENS = 128  # at most this many tokens per step: decode batches (launches and weight streaming)


@dataclass(frozen=True)
class Row:
    split: str
    fitted_on: str
    tested_on: str
    regime: str
    before: Errors
    after: Errors


def split_row(
    name: str,
    gpu_fit: str,
    gpu_test: str,
    fit_samples: Sequence[KernelSample],
    test_samples: Sequence[KernelSample],
    fitted_on: str,
    tested_on: str,
) -> list[Row]:
    fit = fit_kernels(catalogue_gpu(gpu_fit), fit_samples)
    test_dev = catalogue_gpu(gpu_test)
    after_dev = with_efficiency(test_dev, fit.efficiency(test_dev.efficiency))
    p0, m0, keys = layer_figures(test_dev, test_samples)
    p1, m1, _ = layer_figures(after_dev, test_samples)
    small = np.array([k[2] <= DECODE_TOKENS for k in keys])
    return [
        Row(name, fitted_on, tested_on, regime, Errors.of(p0[mask], m0[mask]), Errors.of(p1[mask], m1[mask]))
        for regime, mask in ((f"<= {DECODE_TOKENS} tokens", small), (f"> {DECODE_TOKENS} tokens", ~small))
    ]


def rows(root: Path = TABLES) -> list[Row]:
    a100, h100 = read_kernels(root, "a100"), read_kernels(root, "h100")
    small = "phi-2, Llama-2-7B, Llama-3-8B, InternLM-20B, CodeLlama-34B"
    out = []
    for gpu, name, ks in (("a100-80g", "A100", a100), ("h100-sxm", "H100", h100)):
        out.extend(
            split_row(
                f"models ({name})",
                gpu,
                gpu,
                [s for s in ks if not is_big(s.model)],
                [s for s in ks if is_big(s.model)],
                f"{name}: {small}" if name == "A100" else f"{name}: {small.replace('Llama-3-8B, ', '')}",
                f"{name}: 70B/72B",
            )
        )
    out.extend(split_row("GPUs", "a100-80g", "h100-sxm", a100, h100, "A100: all models", "H100: all models"))
    return out


@dataclass(frozen=True)
class CollectiveRow:
    node: str
    ranks: int
    sizes: str  # which held-out sizes
    before: Errors  # the catalogue NVLink (datasheet bandwidth, assumed latency) in the ring formula
    after: Errors  # the fitted line
    table: Errors  # the measured medians of the training sizes inside their range, else the line


SMALL_MESSAGE = 2 * 2**20  # bytes: decode all-reduces (hidden states of up to ~128 tokens)


def collective_rows(root: Path = TABLES) -> list[CollectiveRow]:
    """All-reduce lines fitted on every other message size, tested on the sizes in between."""
    from hetsim.costs.lockstep import ring_alpha_beta
    from validate.kernel_fit import allreduce_tables, fit_allreduce, measured, predict_allreduce

    out = []
    for node, gpu in (("a100_dgx", "a100-80g"), ("h100_dgx", "h100-sxm")):
        rig = load_rig_doc(base_rig(gpu))
        coll = read_allreduce(root, node)
        for ranks in sorted({c.ranks for c in coll}):
            sub = sorted((c for c in coll if c.ranks == ranks), key=lambda c: c.nbytes)
            fits = fit_allreduce(sub[::2])
            test = sub[1::2]
            alpha, beta = ring_alpha_beta(rig, [f"n0.gpu{i}" for i in range(ranks)])
            ring = np.array([allreduce_time(ranks, c.nbytes, alpha, beta).time_s for c in test])
            meas = measured(test)
            line = predict_allreduce(fits, test)
            table = predict_allreduce(fits, test, allreduce_tables(sub[::2]))
            small = np.array([c.nbytes <= SMALL_MESSAGE for c in test])
            for sizes, m in (("all", np.ones_like(small)), ("<= 2 MiB", small)):
                errs = (Errors.of(p[m], meas[m]) for p in (ring, line, table))
                out.append(CollectiveRow(node, ranks, sizes, *errs))
    return out


@dataclass(frozen=True)
class AttentionRow:
    kind: str
    fitted_on: str
    tested_on: str
    before: Errors  # catalogue GPU
    after: Errors


def attention_rows(root: Path = TABLES) -> list[AttentionRow]:
    """A100 Llama-2-7B attention (a partial table): prefill constants fitted on fresh prompts,
    tested on chunked prefills (a cached context before the chunk); decode is not fitted (it
    reads the KV cache at the fitted ``memory``)."""
    from validate.kernel_fit import fit_attention, measured, predict

    att = read_attention(root, "a100")
    base = catalogue_gpu("a100-80g")
    kfit = fit_kernels(base, read_kernels(root, "a100"))
    dev = with_efficiency(base, kfit.efficiency(base.efficiency))
    fresh = [a for a in att if a.phase == "prefill" and a.kv_len == a.seq_len]
    chunked = [a for a in att if a.phase == "prefill" and a.kv_len > a.seq_len]
    decode = [a for a in att if a.phase == "decode"]
    afit = fit_attention(dev, fresh)
    after = with_efficiency(dev, afit.efficiency(dev.efficiency))
    out = []
    for kind, fitted_on, test in (
        ("prefill", f"{len(fresh)} fresh prompts (480-2112 tokens)", chunked),
        ("decode", "not fitted (KV bytes at the fitted memory efficiency)", decode),
    ):
        m = measured(test)
        tested = f"{len(test)} {kind} rows" + (" with a cached context" if kind == "prefill" else "")
        before, now = Errors.of(predict(base, test), m), Errors.of(predict(after, test), m)
        out.append(AttentionRow(kind, fitted_on, tested, before, now))
    return out


@dataclass(frozen=True)
class TransferRow:
    """A GPU never fitted to, costed three ways: catalogue constants one kernel per op (as the
    catalogue runs it), catalogue constants with fused kernels, and the transfer rule (fused)."""

    gpu: str
    regime: str
    catalogue: Errors
    catalogue_fused: Errors
    rule: Errors


def transfer_rows(root: Path = TABLES, held_out: str = "a40") -> list[TransferRow]:
    """The datasheet transfer rule (``validate.transfer``) fitted on A100 and H100 kernels, tested
    on every measured layer of ``held_out`` (its compute folder name; also its catalogue name)."""
    from validate.transfer import fit_rule, own_fit

    rule = fit_rule([own_fit("a100-80g", root), own_fit("h100-sxm", root)])
    test = read_kernels(root, held_out)
    base = catalogue_gpu(held_out)
    fused = with_efficiency(base, dataclasses.replace(base.efficiency, fused_kernels=True))
    ruled = with_efficiency(base, rule.constants(base).efficiency(base.efficiency))
    preds = [layer_figures(d, test) for d in (base, fused, ruled)]
    meas, keys = preds[0][1], preds[0][2]
    small = np.array([k[2] <= DECODE_TOKENS for k in keys])
    return [
        TransferRow(held_out, regime, *(Errors.of(p[mask], meas[mask]) for p, _, _ in preds))
        for regime, mask in ((f"<= {DECODE_TOKENS} tokens", small), (f"> {DECODE_TOKENS} tokens", ~small))
    ]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _error_cells(errs: tuple[Errors, ...]) -> str:
    """Table cells: each error set's median, then each one's share within 15%."""
    return " | ".join([_pct(e.median) for e in errs] + [_pct(e.within_15) for e in errs])


def transfer_markdown(trows: list[TransferRow]) -> str:
    lines = [
        "| held-out GPU | step size | figures | median error: catalogue | catalogue, fused | rule "
        "| within 15%: catalogue | catalogue, fused | rule |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in trows:
        errs = (t.catalogue, t.catalogue_fused, t.rule)
        lines.append(f"| {t.gpu} | {t.regime} | {t.rule.count} | {_error_cells(errs)} |")
    return "\n".join(lines)


def markdown(krows: list[Row], crows: list[CollectiveRow], arows: list[AttentionRow] = ()) -> str:
    lines = [
        "| split | fitted on | tested on (held out) | step size | figures | median error before | after | "
        "within 15% before | after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in krows:
        lines.append(
            f"| {r.split} | {r.fitted_on} | {r.tested_on} | {r.regime} | {r.after.count} | "
            f"{_pct(r.before.median)} | {_pct(r.after.median)} | {_pct(r.before.within_15)} | "
            f"{_pct(r.after.within_15)} |"
        )
    lines += [
        "",
        "| NCCL all-reduce | ranks | sizes | held out | median error: ring | line | table "
        "| within 15%: ring | line | table |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in crows:
        errs = (c.before, c.after, c.table)
        lines.append(f"| {c.node} | {c.ranks} | {c.sizes} | {c.after.count} | {_error_cells(errs)} |")
    if arows:
        lines += [
            "",
            "| A100 Llama-2-7B attention | fitted on | tested on (held out) | median error before | after "
            "| within 15% before | after |",
            "|---|---|---|---|---|---|---|",
        ]
        for a in arows:
            lines.append(
                f"| {a.kind} | {a.fitted_on} | {a.tested_on} | {_pct(a.before.median)} | "
                f"{_pct(a.after.median)} | {_pct(a.before.within_15)} | {_pct(a.after.within_15)} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] = (), write: Callable[[str], object] = sys.stdout.write) -> None:
    root = Path(argv[0]) if argv else TABLES
    write(markdown(rows(root), collective_rows(root), attention_rows(root)) + "\n\n")
    write(transfer_markdown(transfer_rows(root)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
