"""Serving percentiles of Llama-2-7B/70B on A100/H100: hetsim against a reference whose batch
steps are composed from measured kernels and NCCL, on figures not used in fitting (issue 14's
Done-when, docs/measured-gpus.md).

There is no measured serving trace here. The issue's peer (Vidur, MLSys 2024) is a simulator
driven by measured kernel tables, so the reference is the same kind of thing: the **same scheduler**
(``hetsim.serving.serve.serve_plan``: one replica, one TP stage, continuous batching, prefill
first, the same buckets, ``max_batch``) on the **same requests** (seeded Poisson arrivals), with
every iteration's step time composed as Vidur composes it:

    step = embedding + LM head + layers x (attention
           + sum of the layer's measured kernel medians at the step's token count  (Vidur's mlp.csv)
           + 2 measured NCCL all-reduce medians of the step's hidden states)      (all_reduce.csv)

- kernels: per kernel, the median at each measured token count, linear in tokens between them;
  above the largest measured count (4096), in proportion to tokens (compute-bound GEMMs).
- all-reduce: log-log between the **odd-indexed** measured sizes (as in ``validate.endtoend``).
- attention, embedding and LM head: the predicted device's own model on **both** sides. Only a
  partial A100 Llama-2-7B attention table exists, and the mlp tables have no LM head. These
  shared terms dilute the differences, and the docs say so.
- scheduling, sampling and other CPU overheads: on neither side (hetsim does not model them).

The prediction is ``serve_plan`` on a rig whose GPU carries constants fitted on the same GPU's
kernels of **other** models (as in ``validate.endtoend``) and whose NVLink carries the
**even-indexed** all-reduce sizes: their medians (``Link.allreduce_table``) and the line fitted to
them. Nothing is fitted to serving.

    python -m validate.serving [--full] [PROFILES_DIR]     # --full: one row per figure
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hetsim.costs.collectives import allreduce_time
from hetsim.costs.lockstep import ring_allreduce_fit
from hetsim.costs.op_cost import block_cost
from hetsim.hardware.rig import Rig
from hetsim.models import get_model
from hetsim.models.memory import hidden_bytes
from hetsim.models.sharding import layer_blocks
from hetsim.models.spec import ModelSpec, OpKind
from hetsim.serving.batching import ReplicaServer
from hetsim.serving.metrics import ServeResult
from hetsim.serving.serve import serve_plan
from hetsim.serving.workload import poisson_requests
from hetsim.strategies.hexgen import HexGenPlan, Replica
from hetsim.strategies.pipeline import Stage
from hetsim.strategies.pipeline_costs import step_time
from validate.endtoend import GPUS
from validate.gpu_profile import base_rig, load_rig_doc
from validate.holdout import TABLES, assumed_efficiency, catalogue_gpu, is_big
from validate.kernel_fit import (
    Errors,
    LineFit,
    Table,
    allreduce_tables,
    fit_allreduce,
    fit_kernels,
    with_efficiency,
)
from validate.profiles import CollectiveSample, KernelSample, read_allreduce, read_kernels

# (Vidur model folder, registry name, label, TP degrees, rates in requests/s). TP 1 of 70B does not
# fit in 80 GB. 5 req/s is the load; 7B on one GPU saturates near 15, 70B at TP 4 near 5.
MODELS = (
    ("meta-llama/Llama-2-7b-hf", "llama2-7b", "7B", (1, 4), (5.0, 10.0, 15.0)),
    ("meta-llama/Llama-2-70b-hf", "llama2-70b", "70B", (4, 8), (2.0, 3.5, 5.0)),
)
REQUESTS = 200
SEED = 0
PROMPT, OUTPUT = 512, 128  # tokens per request
MAX_BATCH = 32
METRICS = ("TTFT", "TPOT", "latency")
PERCENTILES = (50, 90, 99)


# ---- the reference: measured kernels and NCCL ------------------------------------------------------
@dataclass(frozen=True)
class MeasuredLayer:
    """One decoder layer outside attention from measured medians (Vidur's composition: each kernel
    of ``mlp.csv`` once, two all-reduces at TP > 1)."""

    curves: tuple[tuple[np.ndarray, np.ndarray], ...]  # per kernel: tokens ascending, seconds
    allreduce: tuple[np.ndarray, np.ndarray] | None  # log bytes, log seconds (odd-indexed sizes)
    hidden: int

    @classmethod
    def of(
        cls, kernels: Sequence[KernelSample], coll: Sequence[CollectiveSample], tp: int, hidden: int
    ) -> MeasuredLayer:
        by_op: dict[str, dict[int, list[float]]] = {}
        for k in kernels:
            if k.tp == tp:
                by_op.setdefault(k.op, {}).setdefault(k.tokens, []).append(k.seconds)
        curves = []
        for op in sorted(by_op):
            ts = sorted(by_op[op])
            curves.append((np.array(ts, float), np.array([np.median(by_op[op][t]) for t in ts])))
        ar = None
        if tp > 1:
            sub = sorted((c for c in coll if c.ranks == tp), key=lambda c: c.nbytes)[1::2]
            ar = (np.log([c.nbytes for c in sub]), np.log([c.seconds for c in sub]))
        return cls(tuple(curves), ar, hidden)

    def kernels_s(self, tokens: int) -> float:
        t = 0.0
        for x, y in self.curves:
            t += float(np.interp(tokens, x, y)) if tokens <= x[-1] else float(y[-1]) * tokens / x[-1]
        return t

    def allreduce_s(self, tokens: int) -> float:
        if self.allreduce is None:
            return 0.0
        x, y = self.allreduce
        return float(np.exp(np.interp(np.log(tokens * self.hidden * 2.0), x, y)))

    def seconds(self, tokens: int) -> float:
        return self.kernels_s(tokens) + 2 * self.allreduce_s(tokens)


def predicted_linear_s(rig: Rig, devices: tuple[str, ...], model: ModelSpec, phase, batch, seq, kv) -> float:
    """What the predicted rig pays per layer for the part the tables measure: the layer's fused
    kernels outside attention (``block_cost``) and its two all-reduces."""
    dev = rig.devices[devices[0]]
    blocks = layer_blocks(model, phase, batch, seq, kv, len(devices))
    t = sum(
        block_cost(dev, tuple(o for o in b if o.kind != OpKind.ATTENTION)).time_s
        for b in (blocks.attention, blocks.mlp)
    )
    if len(devices) > 1:
        fit = ring_allreduce_fit(rig, devices)
        assert fit is not None, "the predicted rig carries an all-reduce line for every TP degree"
        t += 2 * allreduce_time(len(devices), hidden_bytes(model, batch, seq), 0.0, 1.0, fit).time_s
    return t


def reference_step(
    rig: Rig, stage: Stage, model: ModelSpec, layer: MeasuredLayer
) -> Callable[[str, int, int, int], float]:
    """Step time of (phase, batch, seq, kv): the predicted step with its linear layers and
    all-reduces replaced by the measured ones (attention, embedding and head stay shared)."""

    @functools.cache
    def step(phase: str, batch: int, seq: int, kv: int) -> float:
        shared = step_time(rig, (stage,), model, phase, batch, seq, kv)  # type: ignore[arg-type]
        own = predicted_linear_s(rig, stage.devices, model, phase, batch, seq, kv)
        return shared + stage.layers * (layer.seconds(batch * seq) - own)

    return step


@dataclass
class ReferenceServer(ReplicaServer):
    """hetsim's batch loop, each iteration timed by ``step_s`` instead of the engine's op costs."""

    step_s: Callable[[str, int, int, int], float] | None = None

    def _step(self, engine, phase, batch: int, seq: int, kv: int):
        assert self.step_s is not None
        yield engine.env.timeout(self.step_s(phase, batch, seq, kv))


# ---- the prediction: constants fitted on other models, lines on other sizes -----------------------
def predicted_rig(
    gpu: str,
    kernels: Sequence[KernelSample],
    model_dir: str,
    lines: dict[int, LineFit],
    tables: dict[int, Table] | None = None,
) -> Rig:
    base = catalogue_gpu(gpu)
    train = [k for k in kernels if (not is_big(k.model) if is_big(model_dir) else k.model != model_dir)]
    eff = fit_kernels(base, train).efficiency(base.efficiency)
    rig = load_rig_doc(base_rig(gpu))
    devices = {n: with_efficiency(d, eff) if d.kind == "gpu" else d for n, d in rig.devices.items()}
    ar = {r: (f.latency_s, f.bandwidth) for r, f in lines.items()}
    tab = tables or {}
    links = {
        n: dataclasses.replace(x, allreduce=ar, allreduce_table=tab) if x.kind == "nvlink" else x
        for n, x in rig.links.items()
    }
    return dataclasses.replace(rig, devices=devices, links=links)


@dataclass(frozen=True)
class Figure:
    gpu: str
    model: str
    tp: int
    rate: float
    metric: str  # TTFT | TPOT | latency
    percentile: int
    predicted_s: float
    reference_s: float
    before_s: float  # the catalogue GPU (assumed efficiencies, 13 kernels a layer, ring over NVLink)


def percentiles(res: ServeResult) -> dict[tuple[str, int], float]:
    if not res.feasible:
        raise ValueError(f"serving run infeasible: {res.reason}")
    done = res.finished
    if len(done) != len(res.records):
        raise ValueError(f"{len(res.records) - len(done)} requests unfinished")
    values = {
        "TTFT": [r.ttft_s for r in done],
        "TPOT": [r.tpot_s for r in done],
        "latency": [r.latency_s for r in done],
    }
    return {(m, p): float(np.percentile(values[m], p)) for m in METRICS for p in PERCENTILES}


def figures(root: Path = TABLES, models: Sequence = MODELS) -> list[Figure]:
    out = []
    for gpu, folder, node, gpu_label in GPUS:
        kernels = read_kernels(root, folder)
        coll = read_allreduce(root, node)
        lines, train = {}, []
        for ranks in sorted({c.ranks for c in coll}):
            sub = sorted((c for c in coll if c.ranks == ranks), key=lambda c: c.nbytes)
            lines[ranks] = fit_allreduce(sub[::2])[ranks]
            train += sub[::2]
        tables = allreduce_tables(train)
        for model_dir, name, label, tps, rates in models:
            spec = get_model(name)
            rig = predicted_rig(gpu, kernels, model_dir, lines, tables)
            catalogue = load_rig_doc(base_rig(gpu))
            catalogue = dataclasses.replace(
                catalogue,
                devices={
                    n: with_efficiency(d, assumed_efficiency()) if d.kind == "gpu" else d
                    for n, d in catalogue.devices.items()
                },
            )
            test = [k for k in kernels if k.model == model_dir]
            for tp in tps:
                stage = Stage(tuple(f"n0.gpu{i}" for i in range(tp)), spec.layers)
                plan = HexGenPlan((Replica((stage,)),), max_batch=MAX_BATCH)
                layer = MeasuredLayer.of(test, coll, tp, spec.hidden)
                ref_server = functools.partial(
                    ReferenceServer, step_s=reference_step(rig, stage, spec, layer)
                )
                for rate in rates:
                    reqs = poisson_requests(
                        rate, n=REQUESTS, seed=SEED, prompt_lens=(PROMPT,), output_lens=(OUTPUT,)
                    )
                    pred = percentiles(serve_plan(plan, rig, spec, reqs))
                    ref = percentiles(serve_plan(plan, rig, spec, reqs, server=ref_server))
                    before = percentiles(serve_plan(plan, catalogue, spec, reqs))
                    for m, p in pred:
                        fig = Figure(gpu_label, label, tp, rate, m, p, pred[m, p], ref[m, p], before[m, p])
                        out.append(fig)
    return out


def _summary(name: str, figs: Sequence[Figure]) -> str:
    ref = np.array([f.reference_s for f in figs])
    b = Errors.of(np.array([f.before_s for f in figs]), ref)
    e = Errors.of(np.array([f.predicted_s for f in figs]), ref)
    return (
        f"{name}: {e.count} figures, median error {100 * b.median:.1f}% -> {100 * e.median:.1f}%, "
        f"within 15% {100 * b.within_15:.1f}% -> {100 * e.within_15:.1f}%, "
        f"p90 {100 * b.p90:.1f}% -> {100 * e.p90:.1f}% (catalogue -> held out)"
    )


def markdown(figs: Sequence[Figure], full: bool = False) -> str:
    """One row per run (errors of p50/p90/p99 of each metric), or with ``full`` one row per figure."""
    if full:
        lines = [
            "| GPU | model | TP | req/s | figure | hetsim (held out) | measured-kernel reference | error |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for f in figs:
            lines.append(
                f"| {f.gpu} | {f.model} | {f.tp} | {f.rate:g} | p{f.percentile} {f.metric} | "
                f"{1e3 * f.predicted_s:.1f} ms | {1e3 * f.reference_s:.1f} ms | "
                f"{100 * (f.predicted_s / f.reference_s - 1):+.1f}% |"
            )
    else:
        lines = [
            "| GPU | model | TP | req/s | p90 TTFT: hetsim | reference | error p50 / p90 / p99: TTFT "
            "| TPOT | latency |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        runs: dict[tuple, dict[tuple[str, int], Figure]] = {}
        for f in figs:
            runs.setdefault((f.gpu, f.model, f.tp, f.rate), {})[f.metric, f.percentile] = f
        for (gpu, model, tp, rate), by in runs.items():
            p90 = by["TTFT", 90]
            errs = [
                " / ".join(
                    f"{100 * (by[m, p].predicted_s / by[m, p].reference_s - 1):+.0f}%" for p in PERCENTILES
                )
                for m in METRICS
            ]
            lines.append(
                f"| {gpu} | {model} | {tp} | {rate:g} | {1e3 * p90.predicted_s:.1f} ms | "
                f"{1e3 * p90.reference_s:.1f} ms | " + " | ".join(errs) + " |"
            )
    lines.append("")
    for rate in sorted({f.rate for f in figs}):
        lines += [_summary(f"{rate:g} req/s", [f for f in figs if f.rate == rate]), ""]
    return "\n".join([*lines, _summary("all", figs)])


def main(argv: Sequence[str] = (), write: Callable[[str], object] = sys.stdout.write) -> None:
    args = [a for a in argv if a != "--full"]
    write(markdown(figures(Path(args[0]) if args else TABLES), full="--full" in argv) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
