"""Which strategies run on a rig without GPUs, and the reason each one that cannot gives."""

from __future__ import annotations

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.strategies.base import all_strategies
from hetsim.workload import Workload


def test_a_rig_without_gpus_runs_cpu_tp_alone_and_each_other_strategy_says_why():
    """Five GPU strategies ask one rule (``base.no_gpu``); DeepSpeed's and FlexGen's own wording
    ('no GPU', singular) stands, as the 13 compare cases' case 5 shows it."""
    rig, model, wl = load_rig("cputp-4x8575c"), get_model("llama2-7b"), Workload(1, 16, 2)
    gpus = "the rig has no GPUs"
    assert {s.name: s.applicable(rig, model, wl) for s in all_strategies()} == {
        "accelerate": gpus,
        "cpu-tp": None,
        "deepspeed": "the rig has no GPU",
        "flexgen": "the rig has no GPU",
        "gpu-only": gpus,
        "hetegen": "needs a GPU and a CPU socket in the same node",
        "hexgen": gpus,
        "moe-offload": gpus,
        "layer-offload": gpus,
    }
