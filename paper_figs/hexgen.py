"""HexGen (arXiv 2311.11514) beside hetsim: Llama-2-70B served on the full-budget heterogeneous rig,
the half-budget rig and the homogeneous 16 x A100-40G rig (same hourly price as the full budget).

Usage: python paper_figs/hexgen.py [OUT_DIR] [--requests N] [--mode hexgen]
(default paper_figs/out/, N = 200; ``--mode hexgen``: HexGen's runtime instead, see ``runtime_main``)
Writes hexgen_vs_rate.csv, hexgen_vs_deadline.csv, hexgen_max_rate.csv and hexgen.png, and prints
hetsim's "x lower deadline" and "x higher rate" beside the paper's 2.3x and 4x
(paper_figs/paper_points.csv). Deadlines are scale x the single-request latency of the same
request on the homogeneous A100 rig, as in the paper. Per operating point every planner candidate
of a rig is run in the engine and the best kept (HexGen re-plans for the workload it is given);
max rates are read off a geometric rate grid (steps of 2^(1/4), about 19 %).
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hetsim.models import get_model
from hetsim.planner.hexgen_study import best_attainment, best_min_scale, make_reference, make_study
from hetsim.serving.serve import serve_plan
from hetsim.serving.workload import poisson_requests
from hetsim.textfiles import open_whole, savefig_whole

PAPER = {"deadline_x": 2.3, "rate_x": 4.0}  # paper_points.csv: HexGen full budget vs homogeneous
RIGS = {
    "homogeneous (16x A100, $65.54/h)": ("hexgen-homogeneous", False),
    "hetero full budget ($65.04/h)": ("hexgen-full-budget", False),
    "hetero full budget, symmetric TPxPP": ("hexgen-full-budget", True),
    "hetero half budget ($29.6/h)": ("hexgen-half-budget", False),
}
HOMO, FULL = "homogeneous (16x A100, $65.54/h)", "hetero full budget ($65.04/h)"
SYM = "hetero full budget, symmetric TPxPP"
PAPER_ASYM = {"deadline_x": 1.8, "rate_x": 2.0}  # HexGen, arXiv 2311.11514: asymmetric vs symmetric HexGen
RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
SCALES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0)
DEADLINE_RATES = (1.0, 4.0, 8.0)  # fixed rates of the deadline curves
RATE_SCALES = (2.0, 3.0, 5.0)  # fixed deadline scales of the rate curves and max-rate read-out
TARGETS = (0.99, 0.9)
SEED = 0


# HexGen's runtime (--mode hexgen): one length setting at a time, as the paper's figures
LENGTHS = (32, 64, 128)  # input = output length per setting (HexGen, arXiv 2311.11514)
RT_RIGS = {HOMO: "hexgen-homogeneous", FULL: "hexgen-full-budget"}
RT_RATES = tuple(2 ** (i / 2) for i in range(-4, 13))  # 0.25 .. 64 req/s, steps of 41 %
RT_SCALES = (2.0, 5.0, 10.0)  # deadline scales of the rate curves and the max-rate read-out
RT_DEADLINE_RATES = (1.0, 4.0)
RT_CURVE_SCALES = (1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def _best(study, reqs, deadlines) -> float:
    """HexGen re-plans per operating point: the best candidate, each served with drop-late."""
    best = 0.0
    for plan in study.plans:
        res = serve_plan(
            plan, study.rig, study.model, reqs, mode="hexgen", deadlines=deadlines, drop_late=True
        )
        if res.feasible:
            best = max(best, res.attainment(deadlines))
    return best


def runtime_main(out_dir: Path, n: int) -> int:
    """Attainment under HexGen's runtime: static batch 1, requests dropped when they would miss
    (``serve_plan(mode="hexgen", drop_late=True)``), planner candidates with batch 1. Per length
    setting, the max rate at equal attainment on each rig (walking up ``RT_RATES``) and the ratio
    full-budget / homogeneous; the paper's "up to" is the maximum over settings and scales."""
    model = get_model("llama2-70b")
    t0 = time.perf_counter()
    ref = make_reference("hexgen-homogeneous", model, max_batch=1)
    studies = {label: make_study(rig, model, max_batch=1, max_candidates=3) for label, rig in RT_RIGS.items()}
    rate_rows, deadline_rows, max_rows, lines = [], [], [], []
    ratios: dict[tuple[int, float, float], float] = {}
    for length in LENGTHS:

        def stream(rate: float, length: int = length):
            reqs = poisson_requests(rate, n=n, seed=SEED, prompt_lens=(length,), output_lens=(length,))
            return reqs, ref.latencies(reqs)

        for rate in RT_DEADLINE_RATES:
            reqs, ref_lat = stream(rate)
            for label, st in studies.items():
                for scale in RT_CURVE_SCALES:
                    deadline_rows.append((length, label, rate, scale, _best(st, reqs, scale * ref_lat)))
        for scale in RT_SCALES:
            found = {}
            for label, st in studies.items():
                last = {t: 0.0 for t in TARGETS}  # highest rate below which every grid rate met t
                ok = dict.fromkeys(TARGETS, True)
                for rate in RT_RATES:  # attainment falls with rate: stop at the first miss of every target
                    reqs, ref_lat = stream(rate)
                    att = _best(st, reqs, scale * ref_lat)
                    rate_rows.append((length, label, scale, rate, att))
                    for t in TARGETS:
                        ok[t] = ok[t] and att >= t
                        if ok[t]:
                            last[t] = rate
                    if att < min(TARGETS):
                        break
                found[label] = last
            for t in TARGETS:
                homo, full = found[HOMO][t], found[FULL][t]
                ratio = full / homo if homo > 0 else float("inf")
                ratios[length, scale, t] = ratio
                max_rows.append((length, scale, t, homo, full, ratio))
                lines.append(
                    f"lengths {length}, deadline {scale:g}x, attainment {t:.0%}: max rate homogeneous "
                    f"{homo:.3g}, hetero full {full:.3g} req/s -> {ratio:.2f}x"
                )
    with open_whole(out_dir / "hexgen_runtime_vs_rate.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["length", "setting", "deadline_scale", "rate_req_s", "slo_attainment"])
        w.writerows(rate_rows)
    with open_whole(out_dir / "hexgen_runtime_vs_deadline.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["length", "setting", "rate_req_s", "deadline_scale", "slo_attainment"])
        w.writerows(deadline_rows)
    with open_whole(out_dir / "hexgen_runtime_max_rate.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["length", "deadline_scale", "target", "homogeneous_req_s", "full_req_s", "ratio"])
        w.writerows(max_rows)
    fig, axes = plt.subplots(2, len(LENGTHS), figsize=(15, 8))
    for j, length in enumerate(LENGTHS):
        ax = axes[0, j]
        for label in studies:
            for scale in RT_SCALES:
                pts = sorted((r, a) for ln, lb, s, r, a in rate_rows if (ln, lb, s) == (length, label, scale))
                style = "-" if label == FULL else "--"
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=f"{label}, {scale:g}x"
                )
        ax.set_xscale("log")
        ax.set(title=f"in/out {length} tokens", xlabel="rate (req/s)", ylabel="SLO attainment")
        ax = axes[1, j]
        for label in studies:
            for rate in RT_DEADLINE_RATES:
                pts = sorted(
                    (s, a) for ln, lb, r, s, a in deadline_rows if (ln, lb, r) == (length, label, rate)
                )
                style = "-" if label == FULL else "--"
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=f"{label}, {rate:g}/s"
                )
        ax.set(
            title=f"in/out {length} tokens", xlabel="deadline scale (x A100 latency)", ylabel="SLO attainment"
        )
    axes[0, 0].legend(fontsize=6)
    axes[1, 0].legend(fontsize=6)
    fig.suptitle("hetsim, HexGen's runtime (static batch 1, drop-late): Llama-2-70B, full budget vs 16x A100")
    fig.tight_layout()
    savefig_whole(fig, out_dir / "hexgen_runtime.png", dpi=110)
    print("\n".join(lines))
    finite = [v for v in ratios.values() if v != float("inf")]
    print(
        f"hetsim (HexGen runtime): up to {max(finite, default=float('nan')):.2f}x higher rate "
        f"(paper: up to {PAPER['rate_x']}x)"
    )
    print(
        f"wrote {out_dir}/hexgen_runtime*.csv and .png in {time.perf_counter() - t0:.0f} s "
        f"({n} requests per run)"
    )
    return 0


def main(argv: list[str]) -> int:
    n = 200
    if "--requests" in argv:
        i = argv.index("--requests")
        n = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    runtime = "--mode" in argv and argv[argv.index("--mode") + 1] == "hexgen"
    if "--mode" in argv:
        i = argv.index("--mode")
        argv = argv[:i] + argv[i + 2 :]
    out_dir = Path(argv[0]) if argv else Path(__file__).parent / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    if runtime:
        return runtime_main(out_dir, n)
    model = get_model("llama2-70b")
    t0 = time.perf_counter()
    ref = make_reference("hexgen-homogeneous", model)
    studies = {
        label: make_study(rig, model, symmetric=sym, max_candidates=6) for label, (rig, sym) in RIGS.items()
    }

    # every candidate of every rig runs once per rate of a geometric grid (same seeded requests,
    # time-scaled); attainment at any deadline scale comes from those runs
    grid = sorted({*RATES, *DEADLINE_RATES, *(2 ** (i / 4) for i in range(-8, 21))})
    runs = {}
    for rate in grid:
        reqs = poisson_requests(rate, n=n, seed=SEED)
        ref_lat = ref.latencies(reqs)
        for label, st in studies.items():
            runs[label, rate] = (st.run_all(reqs), ref_lat)
    rate_rows = [
        (label, scale, rate, best_attainment(runs[label, rate][0], scale * runs[label, rate][1]))
        for label in studies
        for scale in RATE_SCALES
        for rate in RATES
    ]
    deadline_rows = [
        (label, rate, scale, best_attainment(runs[label, rate][0], scale * runs[label, rate][1]))
        for label in studies
        for rate in DEADLINE_RATES
        for scale in SCALES
    ]

    # headline ratios
    lines = []
    deadline_x, asym_d, asym_r = {}, {}, {}
    for target in TARGETS:
        for rate in DEADLINE_RATES:
            s = {label: best_min_scale(runs[label, rate][0], ref, target) for label in studies}
            deadline_x[target, rate] = s[HOMO] / s[FULL]
            asym_d[target, rate] = s[SYM] / s[FULL]
            lines.append(
                f"attainment {target:.0%} at {rate:g} req/s: tightest deadline scale "
                + ", ".join(f"{k.split(' (')[0]} {v:.2f}" for k, v in s.items())
                + f" -> homogeneous/hetero-full = {deadline_x[target, rate]:.2f}x"
            )
    max_rows, rate_x = [], {}
    for target in TARGETS:
        for scale in RATE_SCALES:
            r = {}
            for label in studies:  # highest grid rate below which every grid rate meets the target
                best = 0.0
                for rate in grid:
                    res, ref_lat = runs[label, rate]
                    if best_attainment(res, scale * ref_lat) < target:
                        break
                    best = rate
                r[label] = best
                max_rows.append((label, target, scale, best))
            rate_x[target, scale] = r[FULL] / r[HOMO] if r[HOMO] > 0 else float("inf")
            asym_r[target, scale] = r[FULL] / r[SYM] if r[SYM] > 0 else float("inf")
            lines.append(
                f"attainment {target:.0%} at deadline {scale:g}x: max rate "
                + ", ".join(f"{k.split(' (')[0]} {v:.2f}" for k, v in r.items())
                + f" -> hetero-full/homogeneous = {rate_x[target, scale]:.2f}x"
            )

    with open_whole(out_dir / "hexgen_vs_rate.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "deadline_scale", "rate_req_s", "slo_attainment"])
        w.writerows(rate_rows)
    with open_whole(out_dir / "hexgen_vs_deadline.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "rate_req_s", "deadline_scale", "slo_attainment"])
        w.writerows(deadline_rows)
    with open_whole(out_dir / "hexgen_max_rate.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "target_attainment", "deadline_scale", "max_rate_req_s"])
        w.writerows(max_rows)

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for j, scale in enumerate(RATE_SCALES):
        ax = axes[0, j]
        for label in studies:
            pts = sorted((r, a) for lb, s, r, a in rate_rows if lb == label and s == scale)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        ax.set(title=f"deadline {scale:g}x A100 latency", xlabel="rate (req/s)", ylabel="SLO attainment")
    for j, rate in enumerate(DEADLINE_RATES):
        ax = axes[1, j]
        for label in studies:
            pts = sorted((s, a) for lb, r, s, a in deadline_rows if lb == label and r == rate)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set(
            title=f"rate {rate:g} req/s", xlabel="deadline scale (x A100 latency)", ylabel="SLO attainment"
        )
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("hetsim: Llama-2-70B serving, HexGen rigs (Poisson, lengths 32/64/128)")
    fig.tight_layout()
    savefig_whole(fig, out_dir / "hexgen.png", dpi=110)

    print("\n".join(lines))
    best_d = max(deadline_x.values())
    best_r = max(rate_x.values())
    print(f"hetsim: up to {best_d:.2f}x lower deadline (paper: up to {PAPER['deadline_x']}x)")
    print(f"hetsim: up to {best_r:.2f}x higher rate (paper: up to {PAPER['rate_x']}x)")
    print(
        f"asymmetric vs symmetric (full budget): up to {max(asym_d.values()):.2f}x lower deadline "
        f"(paper: up to {PAPER_ASYM['deadline_x']}x), up to {max(asym_r.values()):.2f}x higher rate "
        f"(paper: up to {PAPER_ASYM['rate_x']}x)"
    )
    with open_whole(out_dir / "hexgen_points.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["paper", "setting", "metric", "published", "hetsim"])
        full = "Llama-2-70B, full-budget heterogeneous vs 16 x A100 at equal price"
        writer.writerow(["HexGen", full, "latency_deadline_reduction_max", PAPER["deadline_x"], best_d])
        writer.writerow(["HexGen", full, "request_rate_increase_max", PAPER["rate_x"], best_r])
        asym = "Llama-2-70B, asymmetric vs symmetric TP x PP on the full budget"
        writer.writerow(
            ["HexGen", asym, "latency_deadline_reduction_max", PAPER_ASYM["deadline_x"], max(asym_d.values())]
        )
        writer.writerow(
            ["HexGen", asym, "request_rate_increase_max", PAPER_ASYM["rate_x"], max(asym_r.values())]
        )
    took = time.perf_counter() - t0
    print(f"wrote {out_dir}/hexgen*.csv and hexgen.png in {took:.0f} s ({n} requests per run)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
