"""xFasterTransformer CPU tensor parallelism (arXiv 2407.00029): Qwen-72B next-token latency vs ranks.

Qwen-72B on the cputp-4x8575c rig (four single-socket Xeon 8575C instances over eRDMA), batch 1,
prompt 512, 32 generated tokens (the repo's benchmark defaults, xFT, arXiv 2407.00029), bf16 weights. P = 1,
2 and 4 ranks use the first P sockets of the same rig through the cpu-tp plan's ``ranks``. The
paper publishes only P = 4 (140 ms); hetsim's value there and the relative error are printed.

    .venv/bin/python paper_figs/cputp.py [OUT_DIR]      # default paper_figs/out/

Writes cputp.csv (paper, setting, metric, published, hetsim, rel_error, ...) and cputp.png.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import replace
from pathlib import Path

from hetsim.api import problem
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.textfiles import open_whole, savefig_whole

RIG = "cputp-4x8575c"
MODEL = "qwen-72b"
RANKS = (1, 2, 4)
PUBLISHED_MS = {4: 140.0}  # paper_figs/paper_points.csv: CPU-TP xft_tp4_erdma, ms/token


def rows() -> list[dict]:
    p = problem(MODEL, RIG, batch=1, prompt_len=512, gen_len=32)
    strategy = get_strategy("cpu-tp")
    base = strategy.default_plan(p.rig, p.model, p.workload)
    out = []
    for n in RANKS:
        plan = replace(base, ranks=base.ranks[:n])
        r = simulate(strategy, plan, p.rig, p.model, p.workload)
        tpot_ms = r.tpot_s * 1e3 if r.feasible else float("nan")
        pub = PUBLISHED_MS.get(n)
        out.append(
            {
                "paper": "CPU-TP",
                "setting": f"Qwen-72B, {n} x Xeon 8575C ranks, batch 1",
                "metric": "next_token_latency_ms",
                "published": pub if pub is not None else "",
                "hetsim": tpot_ms,
                "rel_error": (tpot_ms - pub) / pub if pub is not None else "",
                "ranks": n,
                "feasible": r.feasible,
                "reason": r.reason,
                "bottleneck": r.bottleneck,
                "ttft_s": r.ttft_s,
            }
        )
    return out


def plot(data: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    xs = [r["ranks"] for r in data]
    ax.plot(xs, [r["hetsim"] for r in data], "o-", label="hetsim cpu-tp")
    for n, ms in PUBLISHED_MS.items():
        ax.plot([n], [ms], "k*", markersize=13, label="paper (arXiv 2407.00029)")
    ax.set_xticks(xs)
    ax.set_xlabel("ranks P (one Xeon 8575C socket each)")
    ax.set_ylabel("next-token latency (ms)")
    ax.set_title("Qwen-72B, batch 1, 512 + 32, bf16")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    savefig_whole(fig, path, dpi=120)
    plt.close(fig)


def main(out_dir: str = "paper_figs/out") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = rows()
    with open_whole(out / "cputp.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    plot(data, out / "cputp.png")
    print(f"{MODEL} on {RIG}, batch 1, prompt 512, gen 32 (next-token latency):")
    for r in data:
        line = f"  P={r['ranks']}: hetsim {r['hetsim']:.1f} ms ({r['bottleneck'] or r['reason']})"
        if r["published"] != "":
            line += f" vs published {r['published']:.0f} ms ({r['rel_error'] * 100:+.1f} %)"
        print(line)
    print(f"wrote {out / 'cputp.csv'} and {out / 'cputp.png'}")


if __name__ == "__main__":
    from cli_args import out_dir_arg

    main(out_dir_arg(sys.argv[1:], "paper_figs/out", __doc__))
