"""Measured GPU profiles: kernel tables in Vidur's format (microsoft/vidur, MIT; shipped subset in
hardware_profiles/measured/vidur), the fused kernel graph, and ``hetsim calibrate --from-profiles``."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from hetsim.cli import main
from hetsim.costs.collectives import allreduce_time
from hetsim.costs.lockstep import ring_allreduce_fit
from hetsim.costs.op_cost import block_cost
from hetsim.hardware import load_rig
from hetsim.models import get_model
from hetsim.models.memory import hidden_bytes
from hetsim.models.sharding import layer_blocks
from hetsim.strategies.pipeline_costs import layer_time

pytest.importorskip("scipy")  # the fits (hetsim[validate])

ROOT = Path(__file__).resolve().parents[1]
L7 = get_model("llama2-7b")
TABLES = ROOT / "hardware_profiles" / "measured" / "vidur"


def test_shipped_measured_rigs_load_fitted_and_fused():
    for name in ("a100-80g-measured", "h100-sxm-measured", "a40-measured"):
        rig = load_rig(name)
        gpus = [d for d in rig.devices.values() if d.kind == "gpu"]
        assert len(gpus) == 8
        eff = gpus[0].efficiency
        assert eff.fused_kernels and 0 < eff.memory_by_kind["elementwise"] <= 1 and 0 < eff.memory <= 1
        assert gpus[0].provenance["efficiency.overhead_s"].grade.name.lower() == "fitted"
        assert 1e-6 < eff.overhead_s < 10e-6


def _small_tables(tmp_path: Path) -> Path:
    """The Llama-2-7B A100 table and the DGX A100 all-reduce, as a user's own profiles folder."""
    dst = tmp_path / "profiles"
    shutil.copytree(TABLES / "compute/a100/meta-llama", dst / "compute/a100/meta-llama")
    shutil.rmtree(dst / "compute/a100/meta-llama/Meta-Llama-3-70B")
    shutil.rmtree(dst / "compute/a100/meta-llama/Meta-Llama-3-8B")
    shutil.rmtree(dst / "compute/a100/meta-llama/Llama-2-70b-hf")
    shutil.copytree(TABLES / "network/a100_dgx", dst / "network/a100_dgx")
    return dst


def test_calibrate_from_profiles_writes_a_fitted_rig(capsys, tmp_path):
    out = tmp_path / "a100.yaml"
    code = main(
        ["calibrate", "--from-profiles", str(_small_tables(tmp_path)), "--gpu", "a100-80g", "--out", str(out)]
    )
    assert code in (0, None), capsys.readouterr()
    doc = yaml.safe_load(out.read_text())
    node = doc["nodes"][0]
    eff = node["gpus"][0]["efficiency"]
    assert eff["kernels"] == "fused"
    for q in (eff["compute"]["matmul"], eff["memory"], eff["overhead"], eff["memory_by_kind"]["elementwise"]):
        assert q["grade"] == "fitted" and "Llama-2-7b-hf" in q["source"]
    lines = node["nvlink"]["allreduce"]
    assert [p["ranks"] for p in lines] == [2, 4, 8]
    assert all(
        p["latency"]["grade"] == "fitted" and "all_reduce.csv" in p["latency"]["source"] for p in lines
    )
    rig = load_rig(out)
    dev = rig.devices["n0.gpu0"]
    assert 0.5 < dev.efficiency.compute["matmul"] <= 1 and 0.5 < dev.efficiency.memory <= 1
    fit = ring_allreduce_fit(rig, ["n0.gpu0", "n0.gpu1", "n0.gpu2", "n0.gpu3"])
    assert fit is not None and 5e-6 < fit[0] < 100e-6  # NCCL: tens of us, not a 1 us hop


def test_a40_rig_has_bridged_pairs_at_the_measured_send_recv_line():
    """Vidur's A40 node is pairwise NVLink (no NVSwitch): the rig bridges GPU pairs, each bridge at
    the line fitted to the NCCL send/recv between the two GPUs of a pair."""
    rig = load_rig("a40-measured")
    assert not any("nvswitch" in n for n in rig.links)
    bridges = sorted(n for n in rig.links if ".nvlink." in n)
    assert bridges == [f"n0.nvlink.gpu{a}-gpu{a + 1}" for a in (0, 2, 4, 6)]
    link = rig.links[bridges[0]]
    assert link.provenance["bw"].grade.name.lower() == "fitted"
    assert "a40_pairwise_nvlink/send_recv.csv" in link.provenance["latency_s"].source
    # the measured pair moves ~8 GB/s (128 MiB in ~17 ms), far below the bridge's 56 GB/s datasheet
    assert 5e9 < link.bw < 12e9 and 1e-6 < link.latency_s < 10e-6
    assert not link.allreduce  # no A40 all-reduce table: a TP pair pays the ring over the bridge


def test_measured_allreduce_is_what_a_tp_group_pays():
    """A TP layer on the measured rig pays two all-reduces at the measured medians for its world
    size (log-log between the measured sizes around the message), the fitted line outside them."""
    rig, model = load_rig("a100-80g-measured"), get_model("llama2-70b")
    group = tuple(f"n0.gpu{i}" for i in range(4))
    fit = ring_allreduce_fit(rig, group)
    assert fit is not None and fit[:2] == rig.links["n0.nvlink.gpu0"].allreduce[4]
    xs, ys = rig.links["n0.nvlink.gpu0"].allreduce_table[4]
    assert fit.log_bytes is xs and len(xs) > 900
    prov = rig.links["n0.nvlink.gpu0"].provenance["allreduce.4.table"]
    assert prov.grade.name == "MEASURED" and "a100_dgx/all_reduce.csv" in prov.source
    blocks = layer_blocks(model, "decode", 1, 1, 512, 4)
    busy = sum(
        max(block_cost(rig.devices[d], b).time_s for d in group) for b in (blocks.attention, blocks.mlp)
    )
    nbytes = hidden_bytes(model, 1, 1)
    i = int(np.searchsorted(xs, np.log(nbytes)))
    w = (np.log(nbytes) - xs[i - 1]) / (xs[i] - xs[i - 1])
    measured = np.exp(ys[i - 1] + w * (ys[i] - ys[i - 1]))
    comm = 2 * measured
    assert layer_time(rig, group, model, "decode", 1, 1, 512) == pytest.approx(busy + comm, rel=1e-9)
    # beyond the largest measured size: the line
    big = float(np.exp(xs[-1])) * 4
    assert allreduce_time(4, big, 0.0, 1.0, fit).time_s == pytest.approx(fit.latency_s + big / fit.bandwidth)
    # catalogue rigs have no measured line: the ring formula as before
    assert ring_allreduce_fit(load_rig("hexgen-homogeneous"), ("n0.gpu0", "n0.gpu1")) is None


def _rig_with_table(tmp_path: Path, table: str) -> Path:
    doc = yaml.safe_load((ROOT / "hardware_profiles" / "rigs" / "a100-80g-measured.yaml").read_text())
    doc["nodes"][0]["gpus"][0]["efficiency"].pop("kernel_tables", None)
    doc["nodes"][0]["nvlink"]["allreduce_table"] = table
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_allreduce_table_bad_input_is_one_line(capsys, tmp_path):
    """A missing or malformed all-reduce table: one error naming the rig and the field, exit 2."""
    for name, text in (("missing.csv", None), ("bad.csv", "num_workers,size\n2,4\n"),
                       ("nan.csv", "num_workers,size,time_stats.all_reduce.median\n2,4,x\n")):  # fmt: skip
        if text is not None:
            (tmp_path / name).write_text(text)
        rig = _rig_with_table(tmp_path, name)
        code = main(["hw", "show", str(rig)])
        err = capsys.readouterr().err
        assert code == 2 and "nvlink.allreduce_table" in err and "rig.yaml" in err, err
        assert len(err.strip().splitlines()) == 1


def test_allreduce_table_only_at_world_sizes_with_a_line(tmp_path):
    """Ranks measured without a fitted line are not used (the line covers sizes outside the table);
    a rig whose links carry different tables falls back to the line."""
    csv = tmp_path / "ar.csv"
    csv.write_text(
        "num_workers,size,time_stats.all_reduce.median\n"
        "4,1000,0.020\n4,1000,0.040\n4,100000,0.050\n16,1000,0.1\n16,100000,0.2\n"
    )
    rig = load_rig(_rig_with_table(tmp_path, "ar.csv"))
    link = rig.links["n0.nvlink.gpu0"]
    assert set(link.allreduce_table) == {4}
    xs, ys = link.allreduce_table[4]
    assert np.exp(xs) == pytest.approx([2000.0, 200000.0]) and np.exp(ys) == pytest.approx([30e-6, 50e-6])
    group = tuple(f"n0.gpu{i}" for i in range(4))
    fit = ring_allreduce_fit(rig, group)
    assert allreduce_time(4, 2000.0, 0.0, 1.0, fit).time_s == pytest.approx(30e-6)
    mid = float(np.sqrt(2000.0 * 200000.0))
    assert allreduce_time(4, mid, 0.0, 1.0, fit).time_s == pytest.approx(np.sqrt(30e-6 * 50e-6))
    other = dataclasses.replace(rig.links["n0.nvlink.gpu1"], allreduce_table={4: ((1.0, 2.0), (-10.0, -9.0))})
    mixed = dataclasses.replace(rig, links={**rig.links, "n0.nvlink.gpu1": other})
    assert ring_allreduce_fit(mixed, group).log_bytes == ()


def test_calibrate_from_profiles_bad_input(capsys, tmp_path):
    code = main(["calibrate", "--from-profiles", str(tmp_path / "none"), "--gpu", "a100-80g"])
    assert code == 2 and "error:" in capsys.readouterr().err
    code = main(["calibrate", "--from-profiles", str(_small_tables(tmp_path)), "--gpu", "no-such-gpu",
                 "--out", str(tmp_path / "x.yaml")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no-such-gpu" in err
    bad = tmp_path / "bad" / "compute" / "a100" / "org" / "m"
    bad.mkdir(parents=True)
    (bad / "mlp.csv").write_text("num_tokens,x\n1,2\n")
    code = main(["calibrate", "--from-profiles", str(tmp_path / "bad"), "--gpu", "a100-80g",
                 "--out", str(tmp_path / "y.yaml")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "missing columns" in err and "Traceback" not in err


# ---- held out: docs/measured-gpus.md ------------------------------------------------------------
@pytest.fixture(scope="module")
def holdout_rows():
    from validate.holdout import rows

    return {(r.split, r.regime.startswith("<=")): r for r in rows()}


@pytest.mark.parametrize(
    ("split", "decode", "median", "within"),
    [
        ("models (A100)", True, 0.06, 0.88),  # docs: 4.9 %, 92.5 %
        ("models (A100)", False, 0.04, 0.95),  # 3.0 %, 99.1 %
        ("models (H100)", True, 0.04, 0.93),  # 2.8 %, 98.0 %
        ("models (H100)", False, 0.06, 0.85),  # 4.3 %, 89.3 %
        ("GPUs", True, 0.09, 0.93),  # 6.8 %, 99.6 %
        ("GPUs", False, 0.09, 0.78),  # 7.1 %, 83.1 %
    ],
)
def test_held_out_layer_error_does_not_regress(holdout_rows, split, decode, median, within):
    """Constants fitted on the training split predict the held-out layers (70B/72B, or H100) within
    the documented error; at decode sizes they beat the catalogue's assumed constants."""
    r = holdout_rows[split, decode]
    assert r.after.median <= median and r.after.within_15 >= within, r
    if decode:
        assert r.after.median < r.before.median


def test_fitted_constants_cost_the_fused_kernels_they_were_fitted_to():
    """The tables time fused kernels (QKV, gate+up, add+norm): a device with fitted constants must
    cost a layer as those kernels, not as 13 separate ops each paying the fitted overhead."""
    from validate.holdout import catalogue_gpu
    from validate.kernel_fit import KernelFit, with_efficiency

    base = catalogue_gpu("h100-sxm")
    fit = KernelFit(0.77, 200.0, 0.91, 0.0, 2.7e-6, 0.62, samples=0)
    dev = with_efficiency(base, fit.efficiency(base.efficiency))
    assert dev.efficiency.fused_kernels
    ops = layer_blocks(get_model("llama2-70b"), "decode", 1, 1, 512, 8).attention
    ops = tuple(o for o in ops if o.kind.value != "attention")
    unfused = with_efficiency(dev, dataclasses.replace(dev.efficiency, fused_kernels=False))
    assert block_cost(dev, ops).overhead_s == pytest.approx(3 * 2.7e-6)  # add+norm, qkv, out
    assert block_cost(unfused, ops).overhead_s == pytest.approx(6 * 2.7e-6)


def test_held_out_attention():
    """Prefill attention fitted on fresh prompts predicts chunked prefills; decode stays close."""
    from validate.holdout import attention_rows

    prefill, decode = attention_rows()
    assert prefill.after.median <= 0.18 and prefill.before.median > 0.4  # docs: 14.4 % (53.5 % before)
    assert decode.after.median <= 0.10  # docs: 7.7 %


def test_decode_attention_is_not_slowed_by_the_prefill_half_length():
    from hetsim.models.layer_ops import attention_op
    from hetsim.models.spec import FP16

    assert attention_op(L7, "decode", 8, 1, 512, FP16, FP16).rows == 0.0
    assert attention_op(L7, "prefill", 1, 512, 512, FP16, FP16).rows == 512.0
    dev = load_rig("a100-80g-measured").devices["n0.gpu0"]
    assert dev.efficiency.attention_half_rows > 0
    assert dev.provenance["efficiency.attention_half_rows"].grade.name.lower() == "fitted"


def test_held_out_allreduce_sizes():
    from validate.holdout import collective_rows

    """Lines fitted on the even-indexed sizes, and the even-indexed medians interpolated (a measured
    rig's ``allreduce_table``), tested on the odd-indexed sizes (docs: table 0.3-1.1 % median over
    all sizes, line 1.9-10.4 %; at <= 2 MiB 2.2-22.4 %, line 7.6-34.9 %)."""
    for c in collective_rows():
        if c.sizes == "all":
            assert c.after.median <= 0.12 and c.after.median < c.before.median, c
            assert c.table.median <= 0.015 and c.table.within_15 >= 0.85, c
        assert c.table.median < c.after.median, c


def test_measured_gemms_cost_their_interpolated_measured_time():
    """Inside the measured token range a measured GEMM shape costs the table's median (interpolated
    between measured token counts); outside it, or for shapes not measured, the fitted roofline."""
    from hetsim.costs.op_cost import op_cost
    from hetsim.models.fusion import fuse

    dev = load_rig("a100-80g-measured").devices["n0.gpu0"]
    roofline = dataclasses.replace(dev, efficiency=dataclasses.replace(dev.efficiency, kernel_tables=""))

    def qkv(model, tokens):
        return fuse(layer_blocks(get_model(model), "prefill", 1, tokens, tokens, 1).attention)[1]

    assert op_cost(dev, qkv("llama2-7b", 512)).time_s == pytest.approx(0.234e-3)  # mlp.csv, 512 tokens
    mid = op_cost(dev, qkv("llama2-7b", 516)).time_s  # between the 512 and 520 rows: on the line
    assert 0.2e-3 < mid < 0.3e-3
    for op in (qkv("llama2-7b", 8192), qkv("opt-13b", 512)):  # beyond the tables / not measured
        assert op_cost(dev, op).time_s == op_cost(roofline, op).time_s


def test_missing_kernel_tables_folder_is_an_input_error(tmp_path):
    from hetsim.errors import InputError

    doc = yaml.safe_load((ROOT / "hardware_profiles/rigs/a100-80g-measured.yaml").read_text())
    doc["nodes"][0]["gpus"][0]["efficiency"]["kernel_tables"] = "nowhere"
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="kernel tables folder not found"):
        load_rig(path)


def test_transfer_rule_scales_half_rows_with_the_ridge_point():
    from validate.holdout import catalogue_gpu
    from validate.kernel_fit import KernelFit
    from validate.transfer import fit_rule, ridge

    a100, h100, t4 = (catalogue_gpu(g) for g in ("a100-80g", "h100-sxm", "t4"))
    fits = [
        (a100, KernelFit(0.7, 0.5 * ridge(a100), 0.8, 0.0, 3e-6, 0.5, 0)),
        (h100, KernelFit(0.8, 0.7 * ridge(h100), 0.9, 0.0, 5e-6, 0.7, 0)),
    ]
    rule = fit_rule(fits)
    got = rule.constants(t4)
    assert got.matmul_half_rows == pytest.approx(0.6 * ridge(t4))
    assert (got.matmul, got.memory, got.overhead_s) == pytest.approx((0.75, 0.85, 4e-6))
    assert rule.fitted_on == ("a100-80g", "h100-sxm")


def test_transfer_rule_on_held_out_a40():
    """Fitted on A100 and H100 kernels only, the datasheet rule predicts A40 layers better than the
    catalogue's assumed constants (docs: decode 8.6 % -> 5.6 % median, 72.4 % -> 94.3 % within 15 %;
    larger steps 9.3 % -> 7.2 %, 87.7 % -> 92.0 %)."""
    from validate.holdout import transfer_rows

    decode, big = transfer_rows()
    assert decode.rule.median <= 0.07 and decode.rule.within_15 >= 0.9
    assert big.rule.median <= 0.09 and big.rule.within_15 >= 0.88
    for r in (decode, big):
        assert r.rule.median < r.catalogue.median and r.rule.within_15 > r.catalogue.within_15


def test_layer_figures_count_a_repeated_measurement_once():
    """Vidur's tables repeat 2048 and 4096 tokens; a layer there is one layer, not two."""
    from validate.holdout import catalogue_gpu, layer_figures
    from validate.profiles import read_kernels

    ks = [k for k in read_kernels(TABLES, "a100") if k.model == "meta-llama/Llama-2-7b-hf" and k.tp == 1]
    _, meas, keys = layer_figures(catalogue_gpu("a100-80g"), [k for k in ks if k.tokens in (1024, 2048)])
    per_token = dict(zip([k[2] for k in keys], meas / np.array([k[2] for k in keys]), strict=True))
    assert per_token[2048] == pytest.approx(per_token[1024], rel=0.25)


def test_end_to_end_steps_held_out():
    """Done-when of issue 14 (docs/measured-gpus.md): Llama-2-7B/70B steps on A100/H100 at TP 1/4/8,
    constants fitted on other models only; median 4.1 %, 83.3 % within 15 % (13.9 %, 52.1 % before;
    5.3 %, 87.5 % with the all-reduce line alone)."""
    from validate.endtoend import figures
    from validate.kernel_fit import Errors

    figs = figures()
    meas = np.array([f.measured_s for f in figs])
    before = Errors.of(np.array([f.before_s for f in figs]), meas)
    after = Errors.of(np.array([f.after_s for f in figs]), meas)
    line = Errors.of(np.array([f.line_s for f in figs]), meas)
    assert len(figs) == 48
    assert after.median <= 0.05 and after.within_15 >= 0.80
    assert line.median <= 0.07 and line.within_15 >= 0.85
    assert after.median < before.median and after.within_15 > before.within_15


def test_transfer_blocks_load_as_a_rig_override():
    """``python -m validate.transfer`` prints, per catalogue GPU, an efficiency entry a rig may carry:
    the rule for GPUs without tables, their own fit for A100-80G, H100 SXM and A40."""
    from validate.gpu_profile import base_rig, load_rig_doc
    from validate.transfer import catalogue_blocks, ridge

    blocks = catalogue_blocks(TABLES)
    assert {"t4", "a10", "rtx-a6000", "a40", "a100-80g"} <= set(blocks)
    dev = load_rig_doc(base_rig("t4", blocks["t4"])).devices["n0.gpu0"]
    eff = dev.efficiency
    assert eff.fused_kernels and dev.provenance["efficiency.memory"].grade.name.lower() == "fitted"
    assert eff.matmul_half_rows == pytest.approx(0.566 * ridge(dev), rel=0.01)
    assert "a40" in blocks["a40"]["memory"]["source"] and "transfer rule" in blocks["t4"]["memory"]["source"]
