"""Whole steps of Llama-2-7B and Llama-2-70B on A100 and H100: hetsim against measured kernels and
NCCL, on figures not used in fitting (the Done-when table of issue 14, docs/measured-gpus.md).

A figure is one step's time over all decoder layers outside attention (which only a partial A100
Llama-2-7B table measures) and the LM head: per layer the fused kernels (norms, QKV, rope, output
projection, residual add, MLP) and, with TP > 1, two all-reduces of the step's hidden states.

- measured: the sum of the layer's measured kernel medians at that token count and TP degree
  (Vidur's ``mlp.csv``), plus two NCCL all-reduce medians at that message size (interpolated, log-log,
  between the odd-indexed measured sizes), times the layer count.
- before: the catalogue GPU (assumed efficiencies, one kernel per op) and the ring formula over the
  catalogue NVLink.
- after: constants fitted on the same GPU's kernels of **other** models only (for Llama-2-7B every
  model but Llama-2-7B; for Llama-2-70B the models below 70B), fused kernels, and the all-reduce
  from the even-indexed message sizes only: their medians inside their range (log-log, as a
  measured rig's ``allreduce_table``), else the line fitted to them. ``line`` is the same with the
  line alone. The kernel tables themselves are not used.

    python -m validate.endtoend [PROFILES_DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hetsim.costs.collectives import Fit, allreduce_time
from hetsim.costs.lockstep import ring_alpha_beta
from hetsim.models import get_model
from validate.gpu_profile import base_rig, load_rig_doc
from validate.holdout import TABLES, catalogue_gpu, is_big, layer_figures
from validate.kernel_fit import Errors, allreduce_tables, fit_allreduce, fit_kernels, with_efficiency
from validate.profiles import CollectiveSample, read_allreduce, read_kernels

GPUS = (("a100-80g", "a100", "a100_dgx", "A100-80G"), ("h100-sxm", "h100", "h100_dgx", "H100 SXM"))
MODELS = (("meta-llama/Llama-2-7b-hf", "llama2-7b", "7B"), ("meta-llama/Llama-2-70b-hf", "llama2-70b", "70B"))
STEPS = (
    ("TTFT, prompt 512", 512),
    ("TTFT, prompt 2048", 2048),
    ("TPOT, batch 1", 1),
    ("decode step, batch 32", 32),
)
TPS = (1, 4, 8)


@dataclass(frozen=True)
class Figure:
    gpu: str
    model: str
    step: str
    tp: int
    before_s: float
    after_s: float
    measured_s: float
    line_s: float  # "after" with the all-reduce line alone (no measured table)


def _measured_allreduce(test: Sequence[CollectiveSample], nbytes: float) -> float:
    x = np.log([c.nbytes for c in test])
    y = np.log([c.seconds for c in test])
    return float(np.exp(np.interp(np.log(nbytes), x, y)))


def figures(root: Path = TABLES) -> list[Figure]:
    out = []
    for gpu, folder, node, gpu_label in GPUS:
        kernels = read_kernels(root, folder)
        base = catalogue_gpu(gpu)
        coll = read_allreduce(root, node)
        rig = load_rig_doc(base_rig(gpu))
        for model_dir, name, label in MODELS:
            spec = get_model(name)
            train = [
                k for k in kernels if (not is_big(k.model) if is_big(model_dir) else k.model != model_dir)
            ]
            fit = fit_kernels(base, train)
            after = with_efficiency(base, fit.efficiency(base.efficiency))
            wanted = {(t, n) for _, n in STEPS for t in TPS}
            test = [k for k in kernels if k.model == model_dir and (k.tp, k.tokens) in wanted]
            p0, meas, keys = layer_figures(base, test)
            p1, _, _ = layer_figures(after, test)
            by_key = {k[1:]: (a, b, m) for k, a, b, m in zip(keys, p0, p1, meas, strict=True)}
            for step, tokens in STEPS:
                for tp in TPS:
                    before_l, after_l, meas_l = by_key[tp, tokens]
                    line_l = after_l
                    if tp > 1:
                        nbytes = tokens * spec.hidden * 2.0
                        sub = sorted((c for c in coll if c.ranks == tp), key=lambda c: c.nbytes)
                        line = fit_allreduce(sub[::2])[tp]
                        lat, bw = line.latency_s, line.bandwidth
                        table = Fit(lat, bw, *allreduce_tables(sub[::2])[tp])
                        alpha, beta = ring_alpha_beta(rig, [f"n0.gpu{i}" for i in range(tp)])
                        before_l += 2 * allreduce_time(tp, nbytes, alpha, beta).time_s
                        after_l += 2 * allreduce_time(tp, nbytes, 0.0, 1.0, table).time_s
                        line_l += 2 * allreduce_time(tp, nbytes, 0.0, 1.0, (lat, bw)).time_s
                        meas_l += 2 * _measured_allreduce(sub[1::2], nbytes)
                    n = spec.layers
                    out.append(
                        Figure(gpu_label, label, step, tp, n * before_l, n * after_l, n * meas_l, n * line_l)
                    )
    return out


def markdown(figs: Sequence[Figure]) -> str:
    lines = [
        "| GPU | model | step | TP | hetsim before (catalogue) | hetsim after (held out) "
        "| measured kernels + NCCL | error before | after: all-reduce line | after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figs:
        lines.append(
            f"| {f.gpu} | {f.model} | {f.step} | {f.tp} | {1e3 * f.before_s:.2f} ms | "
            f"{1e3 * f.after_s:.2f} ms | {1e3 * f.measured_s:.2f} ms | "
            f"{100 * (f.before_s / f.measured_s - 1):+.1f}% | "
            f"{100 * (f.line_s / f.measured_s - 1):+.1f}% | "
            f"{100 * (f.after_s / f.measured_s - 1):+.1f}% |"
        )
    meas = np.array([f.measured_s for f in figs])
    for name, pred in (
        ("before", [f.before_s for f in figs]),
        ("after, all-reduce line", [f.line_s for f in figs]),
        ("after", [f.after_s for f in figs]),
    ):
        e = Errors.of(np.array(pred), meas)
        lines.append("")
        lines.append(
            f"{name}: {e.count} figures, median error {100 * e.median:.1f}%, "
            f"{100 * e.within_15:.1f}% within 15%, p90 {100 * e.p90:.1f}%"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] = (), write: Callable[[str], object] = sys.stdout.write) -> None:
    write(markdown(figures(Path(argv[0]) if argv else TABLES)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
