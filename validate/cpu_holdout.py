"""Held-out CPU decoders: does a profile fitted to microbenchmarks predict whole decoders it never saw?

The profile (``hetsim calibrate``) is fitted to parts only: GEMV/GEMM rates per dtype, a weight scan,
SDPA over prompt and KV lengths, a tiny decoder's per-op cost. No decoder below is used in any fit:
every row is held out. Each case is a llama-style ``config.json`` (``validate/shapes/holdout``) of its
own width, depth, head layout, vocabulary and precision (``torch_dtype``), at a batch and prompt length;
the repo's plain-torch decoder (``validate.torch_model``) runs it in this process with the profile's
thread count, and hetsim predicts the same run as the one-rank ``cpu-tp`` plan (what ``hetsim compare
--strategies cpu-tp`` runs on a one-CPU profile).

    python -m validate.cpu_holdout measure OUT.json [--threads 1] [--rounds 2]
    python -m validate.cpu_holdout table OUT.json BEFORE.yaml AFTER.yaml   # markdown, docs/cpu-calibration.md

Cases take turns over ``rounds`` so that load drifting on a shared machine hits them alike; the median
timed generation is kept (TPOT: the mean of its decode steps), as calibrate keeps the median pass. (The
fastest of each was tried: a 0.1 s microbenchmark pass finds a quiet moment on a busy machine far more
often than a 2 s generation does, so minima on both sides predicted every decoder ~30% fast.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hetsim.textfiles import write_text_atomic

SHAPES = Path(__file__).resolve().parent / "shapes" / "holdout"
GEN_LEN = 16
# (config file, batch, prompt length): widths 768..2560, depths 2..6, MHA and GQA, two vocabularies,
# fp32 and bf16, batch 1 and 8, prompts 128 and 1024.
CASES: tuple[tuple[str, int, int], ...] = (
    ("llama-h1280-l6.json", 1, 128),
    ("llama-h1280-l6.json", 8, 128),
    ("llama-h1280-l6-bf16.json", 1, 128),
    ("llama-h768-l4.json", 1, 1024),
    ("llama-h768-l4.json", 8, 128),
    ("llama-h768-l4-bf16.json", 8, 128),
    ("llama-h2560-l2.json", 1, 1024),
    ("llama-h2560-l2-bf16.json", 1, 1024),
)
DTYPE_OF = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _spec(name: str):
    from hetsim.models import get_model

    return dataclasses.replace(get_model(str(SHAPES / name)), name=Path(name).stem)


def measure(threads: int = 1, rounds: int = 2, repeats: int = 2, cases=CASES) -> dict[str, Any]:
    """Time every case in this process (``threads`` torch threads), cases taking turns."""
    import platform

    import torch

    from hetsim.workload import Workload
    from validate.calibrate import cpu_name
    from validate.runners import RunConfig, generate_timed, model_record
    from validate.torch_model import TorchDecoder

    torch.set_num_threads(threads)
    samples: dict[int, dict[str, list[float]]] = {i: {"ttft": [], "tpot": []} for i in range(len(cases))}
    for r in range(rounds):
        for i, (name, batch, prompt) in enumerate(cases):
            spec = _spec(name)
            print(f"round {r + 1}: {spec.name} {spec.dtype} batch {batch} prompt {prompt}", flush=True)
            cfg = RunConfig(model=model_record(spec), batch=batch, prompt_len=prompt, gen_len=GEN_LEN,
                            threads=threads, dtype=spec.dtype, repeats=repeats)  # fmt: skip
            dec = TorchDecoder(spec, dtype=getattr(torch, DTYPE_OF[spec.dtype]))
            m = generate_timed(dec, cfg)
            del dec
            samples[i]["ttft"] += m.prefill_s
            samples[i]["tpot"] += [statistics.fmean(d) for d in m.decode_s]
    out = []
    for i, (name, batch, prompt) in enumerate(cases):
        s = samples[i]
        out.append({
            "config": name, "dtype": _spec(name).dtype,
            "workload": Workload(batch, prompt, GEN_LEN).to_dict(),
            "ttft_s": statistics.median(s["ttft"]), "tpot_s": statistics.median(s["tpot"]),
            "ttft_samples": s["ttft"], "tpot_samples": s["tpot"],
        })  # fmt: skip
    env = {"cpu": cpu_name(), "host": platform.node(), "torch": torch.__version__, "threads": threads,
           "rounds": rounds, "repeats": repeats}  # fmt: skip
    return {"environment": env, "cases": out}


@dataclass(frozen=True)
class Row:
    case: str
    dtype: str
    batch: int
    prompt: int
    measured_ttft: float
    measured_tpot: float
    predicted: dict[str, tuple[float, float]]  # profile label -> (ttft, tpot)

    def error(self, label: str, metric: str) -> float:
        ttft, tpot = self.predicted[label]
        pred, meas = (ttft, self.measured_ttft) if metric == "ttft" else (tpot, self.measured_tpot)
        return pred / meas - 1.0


def rows(doc: dict[str, Any], profiles: dict[str, str | Path]) -> list[Row]:
    """Each measured case predicted on each profile (its first CPU entry, one rank)."""
    from hetsim.workload import Workload
    from validate.report import predict_cpu

    out = []
    for c in doc["cases"]:
        spec = _spec(c["config"])
        w = c["workload"]
        wl = Workload(w["batch"], w["prompt_len"], w["gen_len"])
        pred = {}
        for label, path in profiles.items():
            p = predict_cpu(str(path), spec, wl, 1, c["dtype"])
            pred[label] = (p["ttft_s"], p["tpot_s"])
        out.append(Row(spec.name, c["dtype"], wl.batch, wl.prompt_len, c["ttft_s"], c["tpot_s"], pred))
    return out


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}" if x < 10 else f"{x:.1f} s"


def markdown(table: list[Row], before: str = "before", after: str = "after") -> str:
    lines = [
        "| held-out decoder | dtype | batch | prompt | TPOT measured (ms) | predicted before | error | "
        "predicted after | error | TTFT measured (ms) | error before | error after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        tb, ta = r.predicted[before][1], r.predicted[after][1]
        lines.append(
            f"| {r.case} | {r.dtype} | {r.batch} | {r.prompt} | {_ms(r.measured_tpot)} | {_ms(tb)} | "
            f"{r.error(before, 'tpot'):+.0%} | {_ms(ta)} | {r.error(after, 'tpot'):+.0%} | "
            f"{_ms(r.measured_ttft)} | {r.error(before, 'ttft'):+.0%} | {r.error(after, 'ttft'):+.0%} |"
        )
    for label in (before, after):
        tp = [abs(r.error(label, "tpot")) for r in table]
        tt = [abs(r.error(label, "ttft")) for r in table]
        lines.append(
            f"\n{label}: TPOT median |error| {statistics.median(tp):.1%}, max {max(tp):.1%}, "
            f"{sum(e <= 0.15 for e in tp)}/{len(tp)} within 15%; TTFT median |error| "
            f"{statistics.median(tt):.1%}, max {max(tt):.1%}, "
            f"{sum(e <= 0.15 for e in tt)}/{len(tt)} within 15%"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m validate.cpu_holdout")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("out")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--rounds", type=int, default=2)
    t = sub.add_parser("table")
    t.add_argument("measured")
    t.add_argument("before")
    t.add_argument("after")
    a = ap.parse_args(argv)
    if a.cmd == "measure":
        doc = measure(a.threads, a.rounds)
        write_text_atomic(a.out, json.dumps(doc, indent=1))
        print(f"wrote {a.out}")
    else:
        doc = json.loads(Path(a.measured).read_text())
        sys.stdout.write(markdown(rows(doc, {"before": a.before, "after": a.after})) + "\n")


if __name__ == "__main__":
    main()
