"""No plan fills a GPU past what a framework can allocate there: the memory the driver reports less what
the CUDA context and cuBLAS hold before the first tensor (``runtime_reserved``). The usable size is read
here from the rig file and the catalogue, not from the loaded device, so a strategy or loader that took
the datasheet capacity again would fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hetsim import api
from hetsim.errors import InputError
from hetsim.hardware.catalog import load_catalog, profiles_dir
from hetsim.hardware.schema import Bytes, GpuSpec
from hetsim.strategies.base import get_strategy

_H200_BENCH = Path(__file__).parents[1] / "validate/results/h200/final/gpu.microbench.json"
RIGS = ("flexgen-t4", "hetegen-a10", "a40-measured", "h100-sxm-measured", "ktransformers-1s")
STRATEGIES = ("flexgen", "hetegen", "deepspeed", "accelerate", "layer-offload", "gpu-only")
MODELS = ("opt-6.7b", "opt-30b", "llama2-13b")


def _seen(spec: GpuSpec) -> float:
    """The total a framework sees on a catalogue card, from its DRAM, ECC and driver shares (written out
    here rather than read from the loader, so a loader that dropped a term would fail)."""
    if spec.memory is not None:
        return spec.memory.si
    ecc = spec.ecc_share.si if spec.ecc_share else 0.0
    driver = spec.driver_share.si if spec.driver_share else 0.0
    return spec.dram.si * (1 - ecc) * (1 - driver)


def _usable(rig: str) -> dict[str, float]:
    """Each GPU's memory less its runtime reserve, from the rig's own file over the catalogue."""
    doc = yaml.safe_load((profiles_dir() / "rigs" / f"{rig}.yaml").read_text())
    cat = load_catalog()
    out: dict[str, float] = {}
    n = 0
    for node in doc["nodes"]:
        for _ in range(node.get("count", 1)):
            given = [{"model": r} if isinstance(r, str) else r for r in node.get("gpus", [])]
            refs = [ref for ref in given for _ in range(ref.get("count", 1))]
            for j, ref in enumerate(refs):
                spec = cat.resolve("gpus", ref["model"]).spec
                memory = Bytes(**ref["memory"]).si if "memory" in ref else _seen(spec)
                held = ref.get("runtime_reserved")
                reserved = Bytes(**held).si if held else spec.runtime_reserved.si
                out[f"n{n}.gpu{j}"] = memory - reserved
            n += 1
    return out


def test_every_shipped_gpu_holds_back_a_sourced_runtime_reserve():
    cat = load_catalog()
    for name in cat.names("gpus"):
        spec = cat.resolve("gpus", name).spec
        assert spec.runtime_reserved is not None and spec.runtime_reserved.si > 0, name
        assert "calibrate" in spec.runtime_reserved.source, name  # says how to measure it


def test_the_gcp_t4_offers_its_ecc_total_less_the_runtime():
    """flexgen-t4: ECC on takes 1/16 of the 16 GiB (15360 MiB), the driver keeps 259 MiB of that (15101 MiB
    to torch), the runtime 0.5 GiB more."""
    assert _usable("flexgen-t4") == {"n0.gpu0": pytest.approx((15101 - 512) * 2**20, abs=1.0)}
    assert api.load_rig("flexgen-t4").devices["n0.gpu0"].mem_bytes == (15101 - 512) * 2**20  # whole bytes


# The total a framework sees, in MiB, from each card's datasheet by the rule (binary DRAM, less 1/16 where
# ECC is on, less the driver's 259/15360): the numbers, so a catalogue edit that moves one shows here.
SEEN_MIB = {
    "t4": 15101.0,  # 16 GiB GDDR6, ECC on
    "a10": 22651.5,  # 24 GiB GDDR6, ECC on
    "rtx-4090": 24161.6,  # 24 GiB GDDR6X, no ECC
    "rtx-a6000": 48323.2,  # 48 GiB GDDR6, ECC off (the workstation default)
    "a100-80g": 80538.7,  # five 16 GiB HBM2e stacks (side-band ECC takes nothing)
    "v100": 32215.5,  # four 8 GiB HBM2 stacks
    "h200": 141949.4,  # 141 GiB of six 24 GiB HBM3e stacks
}


@pytest.mark.parametrize("card", sorted(SEEN_MIB))
def test_a_card_offers_its_binary_dram_less_ecc_and_the_driver(card, tmp_path):
    rig = api.load_rig(str(_one_gpu(tmp_path, card)))
    gpu = rig.devices["n0.gpu0"]
    assert (gpu.mem_bytes + gpu.reserved_bytes) / 2**20 == pytest.approx(SEEN_MIB[card], abs=0.05)
    assert gpu.provenance["mem_bytes"].source.startswith("derived: dram")


# hetsim calibrate on an H200 (validate/results/h200/final/gpu.microbench.json, cuda.memory_bytes): torch
# total_memory. Held out of the rule's numbers (datasheets and the T4 figure alone); not of its form: a share
# of the card rather than a fixed keep was chosen after seeing both errors on this card.
H200_MEASURED = 150_109_880_320


def test_the_rule_meets_the_measured_h200_total_within_one_percent():
    """The rule's one check against a measured card: 148.85e9 derived vs 150.11e9 measured, -0.84 %
    (the rule's driver share, 1.69 %, is the T4's; the H200 measured 0.85 % of its 141 GiB kept). A
    fixed-size keep (259 MiB) would instead over-count it by +0.68 %."""
    spec = load_catalog().resolve("gpus", "h200").spec
    measured = int(json.loads(_H200_BENCH.read_text())["cuda"]["memory_bytes"])
    assert measured == H200_MEASURED
    derived = _seen(spec)
    assert derived == pytest.approx(measured, rel=0.01)
    assert derived < measured  # the rule errs towards refusing a plan, not towards one that cannot load


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rig=st.sampled_from(RIGS),
    strategy=st.sampled_from(STRATEGIES),
    model=st.sampled_from(MODELS),
    prompt=st.sampled_from((128, 512)),
)
@example(rig="flexgen-t4", strategy="flexgen", model="opt-30b", prompt=512)  # filled 15.81 of 16.0 GB
@example(rig="flexgen-t4", strategy="deepspeed", model="opt-30b", prompt=512)
@example(rig="flexgen-t4", strategy="hetegen", model="opt-30b", prompt=512)  # filled 15.92
@pytest.mark.slow
def test_no_plan_fills_a_gpu_past_its_usable_memory(rig, strategy, model, prompt):
    """Each strategy's chosen plan at the largest batch it finds (the GPU-filling case)."""
    p = api.problem(model, rig, batch=None, prompt_len=prompt, gen_len=8)
    r = api.best_result(get_strategy(strategy), p, "throughput")
    usable = _usable(rig)
    if r.feasible:
        for dev, peak in r.peak_mem_bytes.items():
            if dev in usable:
                assert peak <= usable[dev] * (1 + 1e-9), (dev, peak, usable[dev])


def _one_gpu(tmp_path: Path, gpu: str) -> Path:
    path = tmp_path / "one.yaml"
    path.write_text(
        "name: one\nnodes:\n  - cpus: [xeon-8480+]\n"
        f"    host_memory: {{value: 64 GB, source: test, grade: assumed}}\n    gpus: [{gpu}]\n"
    )
    return path


def test_a_measured_total_wins_over_the_derived_one(tmp_path):
    """hetsim calibrate writes the driver's total as ``memory``: no ECC or driver share comes off it again."""
    measured = "{model: h200, memory: {value: 139.80 GiB, source: calibrate, grade: measured}}"
    gpu = api.load_rig(str(_one_gpu(tmp_path, measured))).devices["n0.gpu0"]
    assert gpu.mem_bytes == 139.80 * 2**30 - 2**29
    assert gpu.provenance["mem_bytes"].source == "calibrate"


def test_a_share_past_a_half_is_refused_naming_the_field(tmp_path):
    """``ecc_share: 16`` (meant as 1/16) is one line naming the field, not a card with no memory."""
    bad = "{model: t4, ecc_share: {value: 16, source: s, grade: assumed}}"
    with pytest.raises(InputError, match=r"nodes\[0\]\.gpus\[0\]\.ecc_share.*0\.5"):
        api.load_rig(str(_one_gpu(tmp_path, bad)))
