"""Copy the subset of Vidur's profiling tables that hetsim ships (``hardware_profiles/measured/vidur``).

Vidur (microsoft/vidur, MIT License, ``data/profiling/``) measures one decoder layer's ops on real
GPUs. hetsim keeps the A100, H100 and A40 per-op tables, the intra-node NCCL all-reduce tables and
the A40 pairwise-NVLink send/recv table (inside one node), with the median column only (the
statistic ``hetsim calibrate --from-profiles`` fits to):

    python tools/vidur_subset.py VIDUR_PROFILING_DIR [OUT_DIR]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd

from hetsim.textfiles import open_whole

GPUS = ("a100", "h100", "a40")
NETWORKS = ("a100_dgx", "h100_dgx")
SEND_RECV = ("a40_pairwise_nvlink",)  # no all-reduce table for A40: the bridge's point-to-point line


def _trim(df: pd.DataFrame) -> pd.DataFrame:
    keep = [
        c
        for c in df.columns
        if c.endswith(".median") or not (c.startswith("time_stats") or c.startswith("Unnamed") or c == "rank")
    ]
    return df[keep]


def main(src: Path, out: Path) -> None:
    for gpu in GPUS:
        for f in sorted((src / "compute" / gpu).glob("*/*/mlp.csv")):
            dst = out / f.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open_whole(dst, "w", newline="") as fh:
                _trim(pd.read_csv(f)).to_csv(fh, index=False)
    for net in NETWORKS:
        f = src / "network" / net / "all_reduce.csv"
        df = _trim(pd.read_csv(f))
        df = df[df.devices_per_node == df.num_workers]  # inside one node (NVLink / NVSwitch)
        dst = out / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open_whole(dst, "w", newline="") as fh:
            df.to_csv(fh, index=False)
    for net in SEND_RECV:
        f = src / "network" / net / "send_recv.csv"
        df = _trim(pd.read_csv(f))
        df = df[df.devices_per_node == df.num_workers]  # both ranks in one node
        dst = out / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open_whole(dst, "w", newline="") as fh:
            df.to_csv(fh, index=False)
    partial = src / "attention-partial"  # a hand-transcribed part of Vidur's attention.csv, if present
    if partial.is_dir():
        shutil.copytree(partial, out / "attention-partial", dirs_exist_ok=True)
    shutil.copy(src / "LICENSE", out / "LICENSE")


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1]
    main(
        Path(sys.argv[1]),
        Path(sys.argv[2]) if len(sys.argv) > 2 else here / "hardware_profiles/measured/vidur",
    )
