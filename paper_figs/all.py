"""Run every paper figure script present and write a summary of hetsim against published points.

    .venv/bin/python paper_figs/all.py [OUT_DIR]      # default paper_figs/out/

Runs paper_figs/<paper>.py OUT_DIR for each script present (flexgen, hetegen, hexgen, cputp; any
other *.py here except this one), keeps each script's output in OUT_DIR/<paper>.log, then reads
the CSVs the scripts wrote and writes OUT_DIR/summary.csv with columns
paper, setting, metric, published, hetsim, rel_error.

A script's CSV contributes rows when it has ``published`` and ``hetsim`` columns (optionally
``paper``, ``setting``, ``metric``), or pairs ``published_<unit>`` / ``hetsim_<unit>`` (the setting is
then the row's other text columns). CSVs in other shapes are listed as not summarised.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import time
from pathlib import Path

from hetsim.textfiles import open_whole, write_text_atomic

HERE = Path(__file__).resolve().parent
ORDER = ("flexgen", "hetegen", "hexgen", "cputp")
FIELDS = ("paper", "setting", "metric", "published", "hetsim", "rel_error")


def scripts() -> list[Path]:
    found = {p.stem: p for p in HERE.glob("*.py") if p.stem not in ("all", "__init__", "cli_args")}
    return [found[n] for n in ORDER if n in found] + [found[n] for n in sorted(found) if n not in ORDER]


def _num(x: str | None) -> float | None:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def summarise_csv(paper: str, path: Path) -> list[dict] | None:
    """Summary rows of one CSV, or None when it has no published/hetsim columns."""
    with path.open(newline="") as f:
        data = list(csv.DictReader(f))
    if not data:
        return []
    cols = list(data[0])
    pairs: list[tuple[str, str, str]] = []  # (published col, hetsim col, metric)
    if "published" in cols and "hetsim" in cols:
        pairs.append(("published", "hetsim", ""))
    for c in cols:
        if c.startswith("published_") and f"hetsim_{c[10:]}" in cols:
            pairs.append((c, f"hetsim_{c[10:]}", c[10:]))
    if not pairs:
        return None
    used = {c for p in pairs for c in p[:2]} | {"rel_error", "paper", "setting", "metric"}
    out = []
    for row in data:
        for pub_col, het_col, metric in pairs:
            pub, het = _num(row.get(pub_col)), _num(row.get(het_col))
            if pub is None:
                continue
            setting = row.get("setting") or ", ".join(
                v
                for k, v in row.items()
                if k not in used and v and _num(v) is None and v not in ("True", "False")
            )
            out.append(
                {
                    "paper": row.get("paper") or paper,
                    "setting": setting,
                    "metric": row.get("metric") or metric or pub_col,
                    "published": pub,
                    "hetsim": het if het is not None else "",
                    "rel_error": (het - pub) / pub if het is not None and pub else "",
                }
            )
    return out


def main(out_dir: str = "paper_figs/out") -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: list[dict] = []
    failed: list[str] = []
    for script in scripts():
        paper = script.stem
        start = time.time()
        print(f"== {paper} ({script.name})", flush=True)
        proc = subprocess.run(
            [sys.executable, str(script), str(out)], capture_output=True, text=True, check=False
        )
        write_text_atomic(out / f"{paper}.log", proc.stdout + proc.stderr)
        print(proc.stdout.rstrip())
        took = time.time() - start
        if proc.returncode:
            failed.append(paper)
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"   FAILED (exit {proc.returncode}) after {took:.0f} s: {tail}")
            continue
        print(f"   done in {took:.0f} s")
        for csv_path in sorted(out.glob(f"{paper}*.csv")):
            if csv_path.stat().st_mtime < start:
                continue  # not written by this run
            rows = summarise_csv(paper, csv_path)
            if rows is None:
                print(f"   {csv_path.name}: no published/hetsim columns, not summarised")
            else:
                summary.extend(rows)
    with open_whole(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(summary)
    print(f"\nsummary ({len(summary)} published points) -> {out / 'summary.csv'}")
    for r in summary:
        err = f"{r['rel_error'] * 100:+.1f} %" if r["rel_error"] != "" else "n/a"
        print(f"  {r['paper']:8s} {r['setting'][:48]:48s} {r['metric']:24s} {err}")
    if failed:
        print(f"failed scripts: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    from cli_args import out_dir_arg

    sys.exit(main(out_dir_arg(sys.argv[1:], "paper_figs/out", __doc__)))
