"""KTransformers (kvcache-ai/ktransformers, doc/en/DeepseekR1_V3_tutorial.md, V0.2): DeepSeek-V3 on one
RTX 4090D and one Xeon Gold 6454S socket, prefill and decode tokens/s.

DeepSeek-V3 in llama.cpp's Q4_K_M (~4.8 bits per weight, lossy: asked for here with weight_dtype),
8 routed experts, prompt 500, batch 1, 32 generated tokens, on the ktransformers-1s rig. hetsim's
moe-offload (KTransformers-style) and layer-offload (llama.cpp-style) beside the published point:
prefill 54.21 tok/s, decode 8.73 tok/s. Nothing is tuned to it.

    .venv/bin/python paper_figs/ktransformers.py [OUT_DIR]      # default paper_figs/out/

Writes ktransformers.csv (paper, setting, metric, published, hetsim, rel_error, ...) and ktransformers.png.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from hetsim.api import best_result, problem
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.textfiles import open_whole, savefig_whole

RIG = "ktransformers-1s"
MODEL = "deepseek-v3"
PUBLISHED = {"prefill_tok_s": 54.21, "decode_tok_s": 8.73}  # KTransformers V0.2, 1 socket, 8 experts


def rows() -> list[dict]:
    p = problem(MODEL, RIG, batch=1, prompt_len=500, gen_len=32, weight_dtype="q4_k_m")
    out = []
    # moe-offload as published (KTransformers' default rule: every routed expert on the CPU, one socket:
    # the default plan), then the planner's searched plans of both strategies.
    for name, search in (("moe-offload", False), ("moe-offload", True), ("layer-offload", True)):
        r = best_result(get_strategy(name), p, "latency", search=search)
        got = {
            "prefill_tok_s": 500 / r.ttft_s if r.feasible else float("nan"),
            "decode_tok_s": 1 / r.tpot_s if r.feasible else float("nan"),
        }
        for metric, value in got.items():
            pub = PUBLISHED[metric] if not search else ""
            label = name if not search else f"{name}, searched"
            out.append(
                {
                    "paper": "KTransformers",
                    "setting": f"DeepSeek-V3 Q4_K_M, 4090D + 1 x Gold 6454S, prompt 500, batch 1, {label}",
                    "metric": metric,
                    "published": pub,
                    "hetsim": value,
                    "rel_error": (value - pub) / pub if pub != "" else "",
                    "strategy": label,
                    "bottleneck": r.bottleneck,
                    "reason": r.reason,
                }
            )
    return out


def decode_breakdown() -> dict[str, float]:
    """Milliseconds of one decode step of the published configuration (the default plan) by lane and
    task kind, from a Chrome trace of a two-token run: what the token time is made of."""
    p = problem(MODEL, RIG, batch=1, prompt_len=500, gen_len=2, weight_dtype="q4_k_m")
    strategy = get_strategy("moe-offload")
    plan = strategy.default_plan(p.rig, p.model, p.workload)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        simulate(strategy, plan, p.rig, p.model, p.workload, trace_path=str(path), exact=True)
        events = json.loads(path.read_text())["traceEvents"]
    lanes = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M"}
    spans = [e for e in events if e.get("ph") == "X"]
    start = max(e["ts"] for e in spans if e["name"].startswith("embedding"))  # the decode step's start
    out: dict[str, float] = defaultdict(float)
    end = start
    for e in spans:
        if e["ts"] >= start:
            kind = e["name"].split(" ", 1)[1] if e["name"].startswith("layer") else e["name"]
            kind = "to cpu" if kind.startswith("to ") else kind
            out[f"{lanes[e['tid']]} {kind}"] += e["dur"] / 1e3
            end = max(end, e["ts"] + e["dur"])
    out["token (wall)"] = (end - start) / 1e3
    return dict(sorted(out.items()))


def plot(data: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7, 3.8))
    for ax, metric in zip(axes, PUBLISHED, strict=True):
        names = ["published"] + [r["strategy"] for r in data if r["metric"] == metric]
        values = [PUBLISHED[metric]] + [r["hetsim"] for r in data if r["metric"] == metric]
        ax.bar(names, values, color=["k", "C0", "C2", "C1"])
        ax.set_title(metric.replace("_tok_s", " (tok/s)"))
        ax.tick_params(axis="x", labelsize=7, labelrotation=25)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("DeepSeek-V3 Q4_K_M, 4090D + Xeon Gold 6454S, prompt 500, batch 1", fontsize=9)
    fig.tight_layout()
    savefig_whole(fig, path, dpi=120)
    plt.close(fig)


def main(out_dir: str = "paper_figs/out") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = rows()
    with open_whole(out / "ktransformers.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    plot(data, out / "ktransformers.png")
    for r in data:
        line = f"  {r['strategy']:24s} {r['metric']:14s} hetsim {r['hetsim']:7.2f}"
        if r["published"] != "":
            line += f" vs published {r['published']:.2f} ({r['rel_error'] * 100:+.0f} %)"
        print(line)
    print("  one decode step of the published configuration (ms; the shared experts overlap the CPU's):")
    for what, ms in decode_breakdown().items():
        print(f"    {what:40s} {ms:7.2f}")
    print(f"wrote {out / 'ktransformers.csv'} and {out / 'ktransformers.png'}")


if __name__ == "__main__":
    from cli_args import out_dir_arg

    main(out_dir_arg(sys.argv[1:], "paper_figs/out", __doc__))
