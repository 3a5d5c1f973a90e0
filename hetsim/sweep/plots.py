"""Figures from sweep results (matplotlib Agg; PNG and SVG of each).

- ``line``: a metric against one knob, one line per strategy;
- ``heatmap``: over two knobs, which strategy wins (by the objective), or a metric's value;
- ``pareto``: two metrics (e.g. latency against throughput or cost), every feasible point and the front.

Columns that a plot does not name are held at the spec's ``base`` value (or, for knobs the base
leaves unset, at the shipped hardware: rows where the knob is empty); ``where`` overrides that.
Other columns with several values become facets (one figure each).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hetsim.sweep.spec import CORE_AXES, HW_KNOBS, LOWER_IS_BETTER, PlotSpec, SweepSpec
from hetsim.textfiles import savefig_whole

SHIPPED = "shipped"
OBJECTIVE_METRIC = {"latency": "e2e_s", "throughput": "throughput_tok_s", "cost": "cost_usd_per_mtok"}
LABELS = {
    "ttft_s": "TTFT (s)",
    "tpot_s": "time per output token (s)",
    "e2e_s": "end-to-end latency (s)",
    "throughput_tok_s": "throughput (generated tok/s)",
    "cost_usd_per_mtok": "cost (USD per million tokens)",
    "gpu_mem_gb": "GPU memory budget (GB)",
    "pcie": "PCIe link",
    "cpu_sockets": "CPU sockets per node",
    "net_gbps": "network (Gbit/s per direction)",
}


def config_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c in CORE_AXES or c in HW_KNOBS or c.startswith("plan.")]


def _label(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return SHIPPED
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _order(values: list[Any]) -> list[Any]:
    """Shipped (null) first, then numbers ascending or strings alphabetically."""
    nulls = [v for v in values if v is None or (isinstance(v, float) and math.isnan(v))]
    rest = [v for v in values if v not in nulls]
    try:
        rest = sorted(set(rest))
    except TypeError:
        rest = sorted(set(rest), key=str)
    return ([None] if nulls else []) + rest


def _slice(
    df: pd.DataFrame, spec: SweepSpec, plot: PlotSpec, free: set[str]
) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """Hold the columns a plot does not name; return the rows, the facet columns and what was held.

    A held knob takes its ``where`` or ``base`` value if given; otherwise the value that keeps the
    most distinct settings of the plotted columns (ties: shipped hardware, then the smallest).
    Workload and model columns with several values become facets instead.
    """
    facets = list(plot.facet)
    held: dict[str, Any] = {}
    shown = sorted(c for c in free if c in df.columns)
    for col in config_columns(df):
        if col in free or col in facets or col == "search":
            continue
        values = df[col]
        if col in plot.where or col in spec.base:
            want = plot.where.get(col, spec.base.get(col))
            df = df[values.isna()] if want is None else df[values == want]
            held[col] = want
            continue
        if values.nunique(dropna=False) <= 1:
            continue
        if col in CORE_AXES:
            facets.append(col)
            continue
        best, best_n = None, -1
        for v in _order(list(values)):
            sub = df[values.isna()] if v is None else df[values == v]
            n = len(sub[shown].drop_duplicates()) if shown else len(sub)
            if n > best_n:
                best, best_n = v, n
        df = df[values.isna()] if best is None else df[values == best]
        held[col] = best
    return df, facets, held


def _groups(df: pd.DataFrame, facets: list[str]):
    if not facets:
        yield {}, df
        return
    for key, sub in df.groupby(facets, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(facets, key, strict=True)), sub


def _stem(plot: PlotSpec, facet: dict[str, Any]) -> str:
    base = plot.name or "-".join(x for x in (plot.kind, plot.x, plot.y or plot.metric) if x)
    tail = "_".join(f"{_label(v)}" for v in facet.values())
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", f"{base}__{tail}" if tail else base)


def _save(fig, folder: Path, stem: str) -> list[Path]:
    """PNG and SVG of ``fig``, cropped to one tight box.

    ``bbox_inches="tight"`` lays the whole figure out once per file only to measure it; the box the
    PNG's save measures (its Agg renderer at the PNG's dpi) is kept and handed to the SVG's save, so
    the figure is measured once, not twice (the PNG is the same bytes; the SVG's page can differ
    from a box measured for it by a fraction of a point of text metrics).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    boxes: list[Any] = []
    measure = fig.get_tightbbox

    def kept(*args: Any, **kwargs: Any) -> Any:
        boxes.append(measure(*args, **kwargs))
        return boxes[-1]

    fig.get_tightbbox = kept  # savefig asks the figure for its box: record the answer
    try:
        savefig_whole(fig, paths[0], dpi=120, bbox_inches="tight")
    finally:
        del fig.get_tightbbox
    pad = matplotlib.rcParams["savefig.pad_inches"]
    box = boxes[0].padded(pad) if len(boxes) == 1 else "tight"  # a matplotlib that measures otherwise
    # SVG element ids hash a salt that is random per process unless set: fixed, the same results
    # draw the same bytes (as the date left out of the metadata)
    with plt.rc_context({"svg.hashsalt": "hetsim"}):
        savefig_whole(fig, paths[1], bbox_inches=box, metadata={"Date": None})
    plt.close(fig)
    return paths


def _title(spec: SweepSpec, facet: dict[str, Any], held: dict[str, Any]) -> str:
    parts = [f"{k}={_label(v)}" for k, v in facet.items()]
    fixed = [f"{k}={_label(v)}" for k, v in held.items() if k in HW_KNOBS or k.startswith("plan.")]
    return " | ".join([spec.name, *parts]) + (f"\n({', '.join(fixed)})" if fixed else "")


def _palette(df: pd.DataFrame) -> dict[str, Any]:
    """One colour per strategy, the same in every figure of a sweep."""
    colors = [*plt.get_cmap("tab10").colors]
    names = sorted(set(df["strategy"].dropna()))
    return {**{n: colors[k % len(colors)] for k, n in enumerate(names)}, "none": (0.85, 0.85, 0.85)}


def winner(rows: pd.DataFrame, objective: str) -> str:
    metric = OBJECTIVE_METRIC[objective]
    ok = rows[rows["feasible"].fillna(False).astype(bool) & rows[metric].notna()]
    if not len(ok):
        return "none"
    ok = ok.sort_values([metric, "strategy"], ascending=[LOWER_IS_BETTER[metric], True])
    return str(ok.iloc[0]["strategy"])


def line(spec: SweepSpec, plot: PlotSpec, df: pd.DataFrame, folder: Path) -> list[Path]:
    df, facets, held = _slice(df, spec, plot, {plot.x, "strategy"})
    out: list[Path] = []
    for facet, sub in _groups(df, facets):
        xs = _order(list(sub[plot.x]))
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, g in sub.groupby("strategy", sort=True):
            ys = []
            for x in xs:
                hit = g[g[plot.x].isna()] if x is None else g[g[plot.x] == x]
                ok = hit[hit["feasible"].fillna(False).astype(bool)]
                ys.append(float(ok[plot.metric].iloc[0]) if len(ok) else np.nan)
            ax.plot(range(len(xs)), ys, marker="o", label=name)
        ax.set_xticks(range(len(xs)), [_label(x) for x in xs])
        ax.set_xlabel(LABELS.get(plot.x, plot.x))
        ax.set_ylabel(LABELS.get(plot.metric or "", plot.metric or ""))
        ax.set_title(_title(spec, facet, held), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out += _save(fig, folder, _stem(plot, facet))
    return out


def heatmap(spec: SweepSpec, plot: PlotSpec, df: pd.DataFrame, folder: Path) -> list[Path]:
    assert plot.y
    free = {plot.x, plot.y, "strategy"}
    df, facets, held = _slice(df, spec, plot, free)
    objective = plot.objective or spec.objective
    out: list[Path] = []
    for facet, sub in _groups(df, facets):
        xs, ys = _order(list(sub[plot.x])), _order(list(sub[plot.y]))
        cells: dict[tuple[int, int], Any] = {}
        for i, y in enumerate(ys):
            row = sub[(sub[plot.y].isna() if y is None else sub[plot.y] == y)]
            for j, x in enumerate(xs):
                hit = row[(row[plot.x].isna() if x is None else row[plot.x] == x)]
                if plot.metric:
                    ok = hit[hit["feasible"].fillna(False).astype(bool)][plot.metric].dropna()
                    best = ok.min() if LOWER_IS_BETTER[plot.metric] else ok.max()
                    cells[i, j] = float(best) if len(ok) else np.nan
                else:
                    cells[i, j] = winner(hit, objective)
        fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 2.5, 0.6 * len(ys) + 1.8))
        if plot.metric:
            grid = np.array([[cells[i, j] for j in range(len(xs))] for i in range(len(ys))], dtype=float)
            positive = grid[np.isfinite(grid) & (grid > 0)]
            norm = None
            if len(positive) and positive.max() / positive.min() > 20:
                norm = matplotlib.colors.LogNorm(positive.min(), positive.max())
            im = ax.imshow(grid, cmap="viridis_r" if LOWER_IS_BETTER[plot.metric] else "viridis",
                           norm=norm, aspect="auto")  # fmt: skip
            fig.colorbar(im, ax=ax, label=LABELS.get(plot.metric, plot.metric))
            for (i, j), v in cells.items():
                ax.text(j, i, "—" if not np.isfinite(v) else f"{v:.3g}", ha="center", va="center", fontsize=7,
                        color="white")  # fmt: skip
        else:
            palette = _palette(df)
            rgb = np.array([[palette[cells[i, j]] for j in range(len(xs))] for i in range(len(ys))])
            ax.imshow(rgb, aspect="auto")
            for (i, j), v in cells.items():
                ax.text(j, i, v, ha="center", va="center", fontsize=7)
            ax.set_title(f"winner by {objective}", fontsize=8, loc="right")
        ax.set_xticks(range(len(xs)), [_label(x) for x in xs], rotation=30, ha="right")
        ax.set_yticks(range(len(ys)), [_label(y) for y in ys])
        ax.set_xlabel(LABELS.get(plot.x, plot.x))
        ax.set_ylabel(LABELS.get(plot.y, plot.y))
        ax.set_title(_title(spec, facet, held), fontsize=9, loc="left")
        out += _save(fig, folder, _stem(plot, facet))
    return out


def pareto_front(points: list[tuple[float, float]], x_low: bool, y_low: bool) -> list[tuple[float, float]]:
    """Points not dominated by another (better or equal in both, better in one)."""
    sx, sy = (1 if x_low else -1), (1 if y_low else -1)
    ordered = sorted(points, key=lambda p: (sx * p[0], sy * p[1]))
    front, best = [], math.inf
    for x, y in ordered:
        if sy * y < best:
            front.append((x, y))
            best = sy * y
    return front


def pareto(spec: SweepSpec, plot: PlotSpec, df: pd.DataFrame, folder: Path) -> list[Path]:
    assert plot.y
    free = {c for c in config_columns(df) if c not in plot.facet and c not in plot.where}
    df, facets, held = _slice(df, spec, plot, free)  # a Pareto plot keeps every configuration
    out: list[Path] = []
    x_low, y_low = LOWER_IS_BETTER[plot.x], LOWER_IS_BETTER[plot.y]
    for facet, sub in _groups(df, facets):
        ok = sub[sub["feasible"].fillna(False).astype(bool)].dropna(subset=[plot.x, plot.y])
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, g in ok.groupby("strategy", sort=True):
            ax.scatter(g[plot.x], g[plot.y], s=18, alpha=0.75, label=name)
        front = pareto_front(list(zip(ok[plot.x], ok[plot.y], strict=True)), x_low, y_low)
        if front:
            fx, fy = zip(*front, strict=True)
            ax.step(fx, fy, where="post", color="black", lw=1, label="Pareto front")
        for axis, metric in (("x", plot.x), ("y", plot.y)):
            vals = ok[metric][ok[metric] > 0]
            if len(vals) and vals.max() / vals.min() > 50:
                getattr(ax, f"set_{axis}scale")("log")
        ax.set_xlabel(LABELS.get(plot.x, plot.x))
        ax.set_ylabel(LABELS.get(plot.y, plot.y))
        ax.set_title(_title(spec, facet, held), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out += _save(fig, folder, _stem(plot, facet))
    return out


DRAW = {"line": line, "heatmap": heatmap, "pareto": pareto}
# Rough drawing cost of a plot kind (a heatmap's figures are smaller), to hand the heavy ones out first.
_WEIGHT = {"pareto": 3, "line": 2, "heatmap": 1}


def draw_all(spec: SweepSpec, df: pd.DataFrame, folder: str | Path, workers: int = 1) -> list[Path]:
    """Draw every plot of the spec; returns the files in the spec's order. ``workers`` > 1 draws the
    plots in that many forked processes (each figure is drawn alone, so the files are the same bytes)."""
    folder = Path(folder)
    if not len(df):
        return []
    jobs = list(range(len(spec.plots)))
    if workers <= 1 or len(jobs) <= 1 or not _can_fork():
        return [path for k in jobs for path in _draw(spec, df, folder, k)]
    from concurrent.futures import wait

    from hetsim.sweep.runner import stoppable_pool

    heavy_first = sorted(jobs, key=lambda k: -_WEIGHT.get(spec.plots[k].kind, 1))
    # Ctrl-C: the workers ignore it (it reaches the whole group; they inherited the sweep's handler,
    # which raised in each), this process stops them, and a file being drawn is never written half
    with stoppable_pool(min(workers, len(jobs))) as (pool, deliver):
        futures = {k: pool.submit(_draw, spec, df, folder, k) for k in heavy_first}
        pending = set(futures.values())
        while pending:
            deliver()
            _, pending = wait(pending, timeout=0.05)
        deliver()
        return [path for k in jobs for path in futures[k].result()]


def _draw(spec: SweepSpec, df: pd.DataFrame, folder: Path, k: int) -> list[Path]:
    plot = spec.plots[k]
    return DRAW[plot.kind](spec, plot, df, folder)


def _can_fork() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()
