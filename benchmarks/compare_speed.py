"""Wall time of the headline command, as a user runs it (a fresh process, imports included):

    hetsim compare --model llama2-70b --hw hardware_profiles/rigs/mixed-lab.yaml \
        --prompt-len 512 --gen-len 128

Also times the in-process API call (no interpreter start-up) and counts the engine tasks it ran.
Target (issue 3): under 3 s on the 2-core development machine.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "compare",
    "--model",
    "llama2-70b",
    "--hw",
    str(ROOT / "hardware_profiles/rigs/mixed-lab.yaml"),
    "--prompt-len",
    "512",
    "--gen-len",
    "128",
    "--format",
    "json",
]


def time_cli(repeats: int = 3) -> list[float]:
    exe = shutil.which("hetsim") or str(Path(sys.executable).with_name("hetsim"))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([exe, *ARGS], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def time_api() -> tuple[float, int]:
    from hetsim.api import compare, problem

    t0 = time.perf_counter()
    results = compare(problem("llama2-70b", "mixed-lab", 1, 512, 128))
    return time.perf_counter() - t0, sum(r.tasks for r in results)


if __name__ == "__main__":
    cli = time_cli()
    api_s, tasks = time_api()
    print(f"hetsim compare (CLI, fresh process): median {statistics.median(cli):.2f} s over {len(cli)} runs")
    print(f"compare via the API: {api_s:.2f} s; final confirmation runs booked {tasks} engine tasks")
