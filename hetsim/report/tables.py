"""Tables (rich) and JSON-able dicts for the CLI. Nothing here prints; the CLI decides where to."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hetsim.hardware.rig import Rig
from hetsim.models import FP16, ModelSpec, kv_bytes_per_token, param_count, weight_bytes
from hetsim.sim.result import Result
from hetsim.units import fmt_bytes, fmt_time
from hetsim.workload import Workload

if TYPE_CHECKING:
    from rich.table import Table

DASH = "-"


# ---- number formatting ----------------------------------------------------------------------
def _table(**kwargs: Any) -> Table:
    """A rich table; rich (~0.03 s to import) is loaded by the first table, not by JSON output."""
    from rich.table import Table

    return Table(**kwargs)


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def fmt_flops(x: float) -> str:
    for unit, scale in (("PFLOPS", 1e15), ("TFLOPS", 1e12), ("GFLOPS", 1e9)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} FLOPS"


def fmt_bw(x: float) -> str:
    return f"{fmt_bytes(x)}/s"


def fmt_rate(x: float | None) -> str:
    """Tokens per second, e.g. '1,234.5'."""
    if not _finite(x):
        return DASH
    assert x is not None
    return f"{x:,.1f}" if x < 1e5 else f"{x:,.0f}"


def fmt_money(x: float | None) -> str:
    """Dollars; zero or missing (no price in the profile) shows as '-'."""
    if not _finite(x) or not x:
        return DASH
    assert x is not None
    return f"${x:,.2f}" if x >= 0.01 else f"${x:.2g}"


def _t(x: float | None) -> str:
    return fmt_time(x) if _finite(x) else DASH  # type: ignore[arg-type]


def fmt_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


# ---- models ---------------------------------------------------------------------------------
def model_dict(spec: ModelSpec) -> dict[str, Any]:
    """``hetsim model show --format json``: shapes and fp16 sizes."""
    return {
        "name": spec.name,
        "family": spec.family,
        "params": param_count(spec),
        "layers": spec.layers,
        "hidden": spec.hidden,
        "heads": spec.heads,
        "kv_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "intermediate": spec.intermediate,
        "vocab": spec.vocab,
        "max_position": spec.max_position,
        "experts": spec.num_experts,
        "experts_per_token": spec.experts_per_token,
        "checkpoint_dtype": spec.dtype,
        **({"checkpoint_weights": spec.quantized} if spec.quantized else {}),  # quantization_config's
        **({"checkpoint_lm_head": spec.quantized} if spec.quantized_head else {}),  # GPTQModel's lm_head
        "bytes_per_param": FP16.bytes_per_element,
        "weight_bytes_fp16": weight_bytes(spec, FP16),
        "kv_bytes_per_token_fp16": kv_bytes_per_token(spec, FP16),
    }


def models_table(specs: Iterable[ModelSpec]) -> Table:
    t = _table(title="Models")
    for col in ("name", "family", "params", "layers", "hidden", "heads/kv", "weights fp16", "KV/token fp16"):
        t.add_column(col, justify="left" if col in ("name", "family") else "right")
    for s in specs:
        d = model_dict(s)
        t.add_row(
            d["name"],
            d["family"] + (f" (MoE {s.num_experts}x)" if s.is_moe else ""),
            fmt_count(d["params"]),
            str(s.layers),
            str(s.hidden),
            f"{s.heads}/{s.kv_heads}",
            fmt_bytes(d["weight_bytes_fp16"]),
            fmt_bytes(d["kv_bytes_per_token_fp16"]),
        )
    return t


def model_table(spec: ModelSpec) -> Table:
    d = model_dict(spec)
    t = _table(title=f"Model {spec.name}", show_header=False)
    t.add_column("field")
    t.add_column("value", justify="right")
    human = {
        "params": f"{fmt_count(d['params'])} ({d['params']:,})",
        "weight_bytes_fp16": fmt_bytes(d["weight_bytes_fp16"]),
        "kv_bytes_per_token_fp16": fmt_bytes(d["kv_bytes_per_token_fp16"]),
    }
    for k, v in d.items():
        t.add_row(k, human.get(k, str(v)))
    return t


# ---- hardware -------------------------------------------------------------------------------
def rigs_table(rows: Sequence[tuple[str, Rig | str]]) -> Table:
    """(name, rig or error line) pairs."""
    t = _table(title="Rigs (hardware_profiles/rigs)")
    for col in ("name", "nodes", "GPUs", "CPU sockets", "$/h", "weakest grade"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for name, rig in rows:
        if isinstance(rig, str):
            t.add_row(name, f"[red]{rig}[/red]", "", "", "", "")
            continue
        gpus = [d.model for d in rig.devices.values() if d.kind == "gpu"]
        kinds = ", ".join(f"{gpus.count(m)}x {m}" for m in dict.fromkeys(gpus)) or "none"
        t.add_row(
            name,
            str(len(rig.nodes)),
            kinds,
            str(sum(1 for d in rig.devices.values() if d.kind == "cpu")),
            fmt_money(rig.price_per_hour) if rig.price_per_hour else DASH,
            rig.weakest_grade().name.lower(),
        )
    return t


def rig_tables(rig: Rig, summary: dict[str, Any]) -> list[Table]:
    """Devices, disks and links of a rig; ``summary`` is ``rig_to_dict(rig)``."""
    price = f"{fmt_money(rig.price_per_hour)}/h" if rig.price_per_hour else "no price given"
    dev = _table(title=f"Rig {rig.name}: devices ({price}; weakest grade {summary['weakest_grade']})")
    # a GPU's memory is what a framework can allocate, the CUDA context's reserve already taken off
    for col in ("name", "model", "kind", "memory", "reserved", "bandwidth", "peak fp16", "$/h", "grade"):
        dev.add_column(col, justify="left" if col in ("name", "model", "kind", "grade") else "right")
    for d in summary["devices"]:
        peak = d["peak_flops"].get("fp16") or d["peak_flops"].get("bf16")
        dev.add_row(
            d["name"],
            d["model"],
            d["kind"],
            fmt_bytes(d["mem_bytes"]),
            fmt_bytes(d["reserved_bytes"]) if d.get("reserved_bytes") else DASH,
            fmt_bw(d["mem_bw"]),
            fmt_flops(peak) if peak else DASH,
            fmt_money(d["price_per_hour"]) if d["price_per_hour"] else DASH,
            d["weakest_grade"],
        )
    tables = [dev]
    if summary["disks"]:
        disks = _table(title="disks")
        for col in ("name", "model", "capacity", "read", "write", "grade"):
            disks.add_column(col, justify="left" if col in ("name", "model", "grade") else "right")
        for d in summary["disks"]:
            disks.add_row(
                d["name"],
                d["model"],
                fmt_bytes(d["capacity_bytes"]),
                fmt_bw(d["read_bw"]),
                fmt_bw(d["write_bw"]),
                d["weakest_grade"],
            )
        tables.append(disks)
    links = _table(title="links (bandwidth per direction)")
    for col in ("name", "kind", "endpoints", "bandwidth", "latency", "grade"):
        links.add_column(col, justify="right" if col in ("bandwidth", "latency") else "left")
    for lk in summary["links"]:
        links.add_row(
            lk["name"],
            lk["kind"],
            f"{lk['a']} <-> {lk['b']}",
            _link_bw(lk),
            _t(lk["latency_s"]),
            lk["weakest_grade"],
        )
    tables.append(links)
    return tables


def _link_bw(lk: dict[str, Any]) -> str:
    """A link's rate; one with its own a -> b rates (a GPU's host link: to the host) shows them."""
    out = fmt_bw(lk["bw"])
    if "to_b_bw" in lk or "to_b_pageable_bw" in lk:
        out += f" ({fmt_bw(lk.get('to_b_bw', lk['bw']))} to {lk['b']}"
        if "to_b_pageable_bw" in lk:
            out += f", {fmt_bw(lk['to_b_pageable_bw'])} pageable"
        out += ")"
    return out


# ---- results --------------------------------------------------------------------------------
def compare_document(
    model: str, hardware: str, workload: Workload, results: Sequence[Result], free_batch: bool = False
) -> dict[str, Any]:
    """The ``--format json`` object of docs/architecture.md; with a free batch the workload's batch
    is null and each result carries the batch its search chose."""
    wl = workload.to_dict()
    if free_batch:
        wl["batch"] = None
    return {
        "model": model,
        "hardware": hardware,
        "workload": wl,
        "results": [r.to_dict() for r in results],
    }


def fmt_peak(peak_mem_bytes: Mapping[str, float]) -> str:
    """The largest peak of a device's memory, and the device."""
    if not peak_mem_bytes:
        return DASH
    dev, nbytes = max(peak_mem_bytes.items(), key=lambda kv: (kv[1], kv[0]))
    return f"{fmt_bytes(nbytes)} ({dev})"


def results_table(results: Sequence[Result], title: str = "Strategies, best first") -> Table:
    t = _table(title=title)
    cols = (
        *("strategy", "ok", "batch", "TTFT", "TPOT", "e2e", "tok/s", "$/Mtok", "bottleneck"),
        "peak mem (max)",
    )
    for col in cols:
        left = col in ("strategy", "ok", "bottleneck", "peak mem (max)")
        width = max((len(r.strategy) for r in results), default=8) if col == "strategy" else None
        t.add_column(col, justify="left" if left else "right", no_wrap=col == "strategy", min_width=width)
    t.add_column("reason / grade", overflow="fold")
    for i, r in enumerate(results, 1):
        if not r.feasible:
            t.add_row(r.strategy, "[red]no[/red]", *[DASH] * 8, r.reason or "infeasible")
            continue
        t.add_row(
            f"[bold]{r.strategy}[/bold]" if i == 1 else r.strategy,
            "[green]yes[/green]",
            str(r.batch) if r.batch else DASH,
            _t(r.ttft_s),
            _t(r.tpot_s),
            _t(r.e2e_s),
            fmt_rate(r.throughput_tok_s),
            fmt_money(r.cost_usd_per_mtok),
            r.bottleneck or DASH,
            fmt_peak(r.peak_mem_bytes),
            f"{r.weakest_grade}; [yellow]lossy: {r.lossy}[/yellow]" if r.lossy else r.weakest_grade,
        )
    return t


def plan_summary_table(doc: dict[str, Any], result: Result) -> Table:
    """The chosen plan: where it came from and its parameters."""
    t = _table(title=f"Plan: {doc['strategy']} ({doc['objective']})", show_header=False)
    t.add_column("field")
    t.add_column("value", overflow="fold")
    w = doc["workload"]
    t.add_row("model", doc["model"])
    t.add_row("hardware", doc["hardware"])
    t.add_row("workload", f"batch {w['batch']}, prompt {w['prompt_len']}, gen {w['gen_len']}")
    for k, v in doc["params"].items():
        t.add_row(f"params.{k}", str(v))
    t.add_row("lossy", doc.get("lossy") or "no (lossless)")
    t.add_row("e2e / tok/s", f"{_t(result.e2e_s)} / {fmt_rate(result.throughput_tok_s)}")
    return t
