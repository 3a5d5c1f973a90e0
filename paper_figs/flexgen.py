"""FlexGen Tab. 2 beside hetsim: OPT-6.7B/30B/175B on flexgen-t4, prompts 512 and 1024, gen 32.

Usage: python paper_figs/flexgen.py [OUT_DIR]   (default paper_figs/out/)

Every column of the table hetsim can run, two ways:

- "policy": the paper's own benchmark policy given as a plan (FlexGen, arXiv 2303.06865;
  FMInference/FlexGen benchmark/flexgen/bench_suite.py) and the baselines at the paper's batch;
  known here for OPT-30B at prompt 512 only;
- "search": what `hetsim compare --objective throughput` picks with no batch given: FlexGen's
  policy search over (gbs, nb) and placement (4-bit only with --allow-compression), the baselines
  at the largest batch one pass holds.

Writes flexgen.csv and flexgen.png and prints the relative error at every published point
(paper_figs/paper_points.csv: OPT-30B, prompt 512; the other cells print hetsim alone).
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hetsim import api
from hetsim.sim.run import simulate
from hetsim.strategies.base import all_strategies, get_strategy
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.textfiles import open_whole, savefig_whole
from hetsim.workload import Workload

RIG = "flexgen-t4"
GEN = 32
PUBLISHED = {  # arXiv 2303.06865 Tab. 2, OPT-30B, prompt 512 (paper_points.csv)
    ("opt-30b", 512, "FlexGen"): 7.32,
    ("opt-30b", 512, "FlexGen 4-bit"): 8.38,
    ("opt-30b", 512, "Accelerate"): 0.62,
    ("opt-30b", 512, "DeepSpeed"): 0.60,
}
POLICIES = {  # the benchmark's OPT-30B, prompt 512 policies and baseline batches
    ("opt-30b", 512): {
        "FlexGen": FlexGenPlan(48, 3, 20, 80, 0, 100, 0, 100, cpu_attention=True, gpu="n0.gpu0"),
        "FlexGen 4-bit": FlexGenPlan(
            64, 8, 0, 100, 0, 100, 0, 100, cpu_attention=False, compress_cache=True, gpu="n0.gpu0"
        ),
        "Accelerate": 8,  # with every decoder layer offloaded (accelerate_benchmark_plan)
        "DeepSpeed": 4,
    }
}
STRATEGY = {
    "FlexGen": "flexgen",
    "FlexGen 4-bit": "flexgen",
    "Accelerate": "accelerate",
    "DeepSpeed": "deepspeed",
}
MODELS = ("opt-6.7b", "opt-30b", "opt-175b")
PROMPTS = (512, 1024)


def accelerate_benchmark_plan(plan):
    """The baseline's device map in FlexGen's benchmark (benchmark/hf_ds/hf_opt.py, --cpu-offload):
    GPU memory capped for weights (max_memory) so that the embeddings and the LM head stay on the GPU
    and every decoder layer is offloaded to the CPU, copied in by Accelerate's hooks each time it runs
    (accelerate 0.16.0 hooks.py:259-268: AlignDevicesHook.pre_forward, one blocking copy per tensor)."""
    return replace(plan, gpu_layers=0, cpu_layers=plan.gpu_layers + plan.cpu_layers)


def _policy_row(p: api.Problem, system: str, policy) -> tuple[float, int]:
    s = get_strategy(STRATEGY[system])
    if isinstance(policy, FlexGenPlan):
        batch = policy.block_size
        plan = policy
    else:
        batch = policy
        plan = s.default_plan(p.rig, p.model, Workload(batch, p.workload.prompt_len, GEN))
        if system == "Accelerate":
            plan = accelerate_benchmark_plan(plan)
    r = simulate(s, plan, p.rig, p.model, Workload(batch, p.workload.prompt_len, GEN))
    return (r.throughput_tok_s if r.feasible else math.nan), batch


def _search_row(p: api.Problem, system: str) -> tuple[float, int, str]:
    lossy = system == "FlexGen 4-bit"
    r = api.best_result(get_strategy(STRATEGY[system]), p, "throughput", allow_lossy=lossy)
    if not r.feasible:
        return math.nan, 0, r.reason
    if lossy and not r.lossy:
        return math.nan, r.batch or 0, "the search kept the lossless plan"
    return r.throughput_tok_s, r.batch or 0, r.lossy


def rows_for(model: str, prompt: int) -> list[dict]:
    p = api.problem(model, RIG, batch=None, prompt_len=prompt, gen_len=GEN)
    names = {s.name for s in all_strategies()}
    out = []
    for system, strategy in STRATEGY.items():
        if strategy not in names:
            continue
        pub = PUBLISHED.get((model, prompt, system))
        policy = POLICIES.get((model, prompt), {}).get(system)
        if policy is not None:
            value, batch = _policy_row(p, system, policy)
            out.append(_row(model, prompt, system, "policy", batch, value, pub, ""))
        value, batch, note = _search_row(p, system)
        out.append(_row(model, prompt, system, "search", batch, value, pub, note))
    return out


def _row(model, prompt, system, how, batch, value, pub, note) -> dict:
    return {
        "model": model,
        "prompt_len": prompt,
        "system": system,
        "how": how,
        "batch": batch,
        "hetsim_tok_s": value,
        "published_tok_s": pub,
        "rel_error": (value - pub) / pub if pub and math.isfinite(value) else math.nan,
        "note": note,
    }


def main(out_dir: str = "paper_figs/out/") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for m in MODELS for s in PROMPTS for r in rows_for(m, s)]
    for r in rows:
        head = (
            f"{r['model']:9s} s={r['prompt_len']:<5d} {r['system']:13s} {r['how']:6s} batch {r['batch']:<5d}"
        )
        if r["published_tok_s"]:
            print(f"{head} hetsim {r['hetsim_tok_s']:7.2f}  published {r['published_tok_s']:6.2f}  "
                  f"error {r['rel_error']:+.0%}")  # fmt: skip
        else:
            print(f"{head} hetsim {r['hetsim_tok_s']:7.3g}  (no published point) {r['note']}")
    with open_whole(out / "flexgen.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fig, axes = plt.subplots(len(PROMPTS), len(MODELS), figsize=(4 * len(MODELS), 3.2 * len(PROMPTS)))
    for (i, s), (j, m) in ((a, b) for a in enumerate(PROMPTS) for b in enumerate(MODELS)):
        ax = axes[i][j]
        sub = [r for r in rows if r["model"] == m and r["prompt_len"] == s]
        labels = [f"{r['system']}\n({r['how']})" for r in sub]
        xs = range(len(sub))
        ax.bar([x - 0.2 for x in xs], [r["hetsim_tok_s"] if math.isfinite(r["hetsim_tok_s"]) else 0
                                       for r in sub], 0.4, label="hetsim")  # fmt: skip
        pubs = [r["published_tok_s"] or 0 for r in sub]
        if any(pubs):
            ax.bar([x + 0.2 for x in xs], pubs, 0.4, label="paper (Tab. 2)")
        ax.set_xticks(list(xs), labels, rotation=40, ha="right", fontsize=6)
        ax.set_yscale("log")
        ax.set_title(f"{m}, T4, s={s} n={GEN}", fontsize=9)
        ax.set_ylabel("tok/s", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    savefig_whole(fig, out / "flexgen.png", dpi=120)
    print(f"wrote {out / 'flexgen.csv'} and {out / 'flexgen.png'}")


if __name__ == "__main__":
    from cli_args import out_dir_arg

    main(out_dir_arg(sys.argv[1:], "paper_figs/out/", __doc__))
