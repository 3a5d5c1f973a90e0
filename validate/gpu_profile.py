"""``hetsim calibrate --from-profiles DIR --gpu NAME``: a measured GPU profile from kernel tables.

Reads Vidur-format tables (``validate.profiles``) for one GPU, fits hetsim's op-cost constants to
every measured kernel (``validate.kernel_fit``), and writes a rig YAML: one node of eight such
GPUs whose GPU entry carries the fitted efficiency (``kernels: fused``: the tables time fused
kernels). The NVLink is what the network folder says: ``<gpu>_dgx`` is an NVSwitch node, its
all-reduce lines fitted to the intra-node NCCL all-reduce; ``<gpu>_pairwise_nvlink`` is NVLink
bridges between GPU pairs (0-1, 2-3, ...), each bridge's latency and bandwidth fitted to the NCCL
send/recv between the two GPUs of a pair (larger TP groups cross PCIe). Every fitted number is
graded ``fitted`` with the files it came from; the peaks stay the catalogue's datasheet values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hetsim.errors import InputError
from hetsim.hardware import load_rig
from hetsim.hardware.loader import catalog
from hetsim.textfiles import write_text_atomic
from validate.kernel_fit import (
    Errors,
    fit_allreduce,
    fit_attention,
    fit_kernels,
    measured,
    predict,
    predict_allreduce,
    with_efficiency,
)
from validate.profiles import read_allreduce, read_attention, read_collective, read_kernels

# catalogue GPU -> (compute folder, network folder) in Vidur's layout; other names are used as is
VIDUR_NAMES = {
    "a100-80g": ("a100", "a100_dgx"),
    "h100-sxm": ("h100", "h100_dgx"),
    "a40": ("a40", "a40_pairwise_nvlink"),
}
PAIRWISE = "_pairwise_nvlink"  # a network folder of NVLink bridges between GPU pairs (no NVSwitch)
HOST_CPU = "xeon-8380"  # the kernel tables say nothing about the host; a catalogue CPU stands in
GPUS_PER_NODE = 8


def _q(value: Any, source: str, grade: str = "fitted") -> dict[str, Any]:
    return {"value": value, "source": source, "grade": grade}


def base_rig(
    gpu: str, efficiency: dict | None = None, nvlink: dict | None = None, pairwise: bool = False
) -> dict[str, Any]:
    """One node of ``GPUS_PER_NODE`` catalogue GPUs on NVSwitch (when the part has NVLink), or with
    NVLink bridges between GPU pairs (``pairwise``)."""
    spec = catalog().resolve("gpus", gpu)
    if spec is None:
        known = ", ".join(catalog().names("gpus"))
        raise InputError(f"unknown GPU {gpu!r} (known: {known})", field="--gpu")
    ref: dict[str, Any] = {"model": gpu, "count": GPUS_PER_NODE}
    if efficiency:
        ref["efficiency"] = efficiency
    node: dict[str, Any] = {
        "count": 1,
        "region": "lab",
        "cpus": [HOST_CPU, HOST_CPU],
        "host_memory": _q("1 TiB", "assumed: a DGX-class host (not part of the kernel tables)", "assumed"),
        "gpus": [ref],
    }
    link = spec.spec.nvlink
    if link:
        topology: dict[str, Any] = (
            {"pairs": [[i, i + 1] for i in range(0, GPUS_PER_NODE - 1, 2)]} if pairwise else {"switch": True}
        )
        node["nvlink"] = {"link": link, **topology, **(nvlink or {})}
    return {"name": f"{gpu}-measured", "description": "", "source": "", "nodes": [node]}


def build(root: Path, gpu: str, out: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(rig YAML document, fit report) for ``gpu`` from the tables under ``root``; with ``out``
    (where the rig will be written) the rig also points at the kernel tables, so measured GEMM
    shapes cost their interpolated measured times."""
    compute_dir, net_dir = VIDUR_NAMES.get(gpu, (gpu, f"{gpu}_dgx"))
    kernels = read_kernels(root, compute_dir)
    rig = load_rig_doc(base_rig(gpu))
    device = next(iter(d for d in rig.devices.values() if d.kind == "gpu"))
    fit = fit_kernels(device, kernels)
    models = ", ".join(sorted({k.model.split("/")[-1] for k in kernels}))
    tables = f"compute/{compute_dir}/<org>/<model>/mlp.csv ({models})"
    src = f"fitted (hetsim calibrate --from-profiles) to {len(kernels)} measured kernel medians in {tables}"
    eff = {
        "compute": {"matmul": _q(round(fit.matmul, 4), src)},
        "memory": _q(round(fit.memory, 4), src),
        "overhead": _q(f"{fit.overhead_s * 1e6:.3f} us", src),
        "matmul_half_rows": _q(round(fit.matmul_half_rows, 3), src),
        "stream_half_row": _q(
            f"{fit.stream_half_row_bytes if fit.stream_half_row_bytes >= 1 else 0:.0f} B", src
        ),
        "kernels": "fused",
        "memory_by_kind": {"elementwise": _q(round(fit.elementwise_memory, 4), src)},
    }
    if out is not None:
        folder = (root / "compute" / compute_dir).resolve()
        eff["kernel_tables"] = os.path.relpath(folder, out.resolve().parent)
    fitted = with_efficiency(device, fit.efficiency(device.efficiency))
    attention = read_attention(root, compute_dir)
    if any(a.phase == "prefill" for a in attention):
        af = fit_attention(fitted, attention)
        asrc = f"fitted (hetsim calibrate --from-profiles) to {af.samples} prefill attention medians in "
        asrc += ", ".join(sorted({a.source for a in attention}))
        eff["compute"]["attention"] = _q(round(af.attention, 4), asrc)
        eff["attention_half_rows"] = _q(round(af.attention_half_rows, 1), asrc)
        fitted = with_efficiency(fitted, af.efficiency(fitted.efficiency))
    report: dict[str, Any] = {
        "attention_samples": len(attention),
        "gpu": gpu,
        "kernels": {**fit.as_dict(), "samples": len(kernels)},
        "kernel_errors_in_sample": Errors.of(predict(fitted, kernels), measured(kernels)).__dict__,
    }
    nvlink = None
    net = root / "network" / net_dir / "all_reduce.csv" if net_dir else None
    if net is not None and net.is_file() and net_dir is not None:
        coll = read_allreduce(root, net_dir)
        fits = fit_allreduce(coll)
        nsrc = f"fitted (hetsim calibrate --from-profiles) to the NCCL all-reduce medians in {coll[0].source}"
        nvlink = {
            "allreduce": [
                {
                    "ranks": r,
                    "latency": _q(f"{f.latency_s * 1e6:.3f} us", f"{nsrc} ({f.samples} sizes at {r} ranks)"),
                    "bandwidth": _q(
                        f"{f.bandwidth / 1e9:.2f} GB/s", f"{nsrc} ({f.samples} sizes at {r} ranks)"
                    ),
                }
                for r, f in fits.items()
            ]
        }
        if out is not None:  # the medians themselves, used inside their size range
            nvlink["allreduce_table"] = os.path.relpath(net.resolve(), out.resolve().parent)
        report["allreduce"] = {
            r: {
                "latency_s": f.latency_s,
                "bandwidth": f.bandwidth,
                "errors": Errors.of(
                    predict_allreduce(fits, [c for c in coll if c.ranks == r]),
                    measured([c for c in coll if c.ranks == r]),
                ).__dict__,
            }
            for r, f in fits.items()
        }
    pairwise = bool(net_dir) and str(net_dir).endswith(PAIRWISE)
    p2p = root / "network" / str(net_dir) / "send_recv.csv"
    if pairwise and p2p.is_file():
        nvlink, report["bridge"] = _bridge(root, str(net_dir))
    doc = base_rig(gpu, eff, nvlink, pairwise=pairwise)
    where = "NVLink bridges between GPU pairs" if pairwise else "NVSwitch"
    doc["description"] = f"{GPUS_PER_NODE} x {gpu} on {where}, op costs fitted to measured kernels"
    doc["source"] = f"hetsim calibrate --from-profiles --gpu {gpu}: Vidur-format kernel tables {tables}"
    return doc, report


def _bridge(root: Path, net_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An NVLink bridge's latency and bandwidth: a line fitted to the NCCL send/recv between the two
    GPUs of a bridged pair (``Link.latency_s + bytes / Link.bw`` is what a transfer over it costs)."""
    p2p = [c for c in read_collective(root, net_dir, "send_recv") if c.ranks == 2]
    if not p2p:
        raise InputError("no send/recv rows between two GPUs of one node", source=f"network/{net_dir}")
    line = fit_allreduce(p2p)[2]  # the same latency + bytes / bandwidth line, fitted on log time
    src = "fitted (hetsim calibrate --from-profiles) to "
    src += f"{line.samples} NCCL send/recv medians in {p2p[0].source}"
    doc = {
        "latency": _q(f"{line.latency_s * 1e6:.3f} us", src),
        "bandwidth": _q(f"{line.bandwidth / 1e9:.2f} GB/s", src),
    }
    pred = np.array([line.latency_s + c.nbytes / line.bandwidth for c in p2p])
    errors = Errors.of(pred, measured(p2p)).__dict__
    return doc, {"latency_s": line.latency_s, "bandwidth": line.bandwidth, "errors": errors}


def load_rig_doc(doc: dict[str, Any]):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rig.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return load_rig(path)


HEADER = """# Measured GPU profile: op costs fitted to measured kernel times (hetsim calibrate
# --from-profiles).
# Kernel tables: Vidur (microsoft/vidur, MIT License, data/profiling/), measured on the named GPU.
# Peaks are the catalogue's datasheet values; the fitted constants are hetsim's Efficiency (see
# docs/measured-gpus.md). The host CPU and memory are placeholders: the tables do not describe them.
"""


def write(doc: dict[str, Any], out: Path) -> None:
    write_text_atomic(out, HEADER + yaml.safe_dump(doc, sort_keys=False, width=200))
    load_rig(out)  # the profile must load
