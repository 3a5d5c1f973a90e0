"""Session 21's bad-input fixes: each case here ran a wrong value silently, named the wrong thing or left
the CLI with a traceback before its fix."""

from __future__ import annotations

import json

import pytest

SMALL = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]


# ---- FlexGen: a tier's sliver is a split --------------------------------------------------------------
@pytest.mark.parametrize(
    ("tier", "g", "c", "field"),
    [
        ("h", 0.0, 1e-300, "hc"),  # hd = 100 - 1e-300 == 100.0: passed as "whole on disk"
        ("h", 99.99999999999, 0.0, "hg"),  # ran a 7e-7-byte disk share, +3.9 ms
        ("h", 1e-300, 100.0, "hg"),
        ("h", 1e-10, 0.0, "hg"),
        ("c", 0.0, 1e-300, "cc"),  # compressed KV cache
        ("c", 100.0 - 1e-12, 0.0, "cg"),
    ],
)
def test_a_released_plans_sliver_of_activations_or_compressed_cache_is_a_split(
    plan_file, capsys, guarded, tier, g, c, field
):
    """The release puts activations (and a compressed cache) on the tier whose percent ``== 100`` and
    raises for a split; its --percent takes whole percents. hetsim read a share within 1e-9 of 100 as
    whole while the engine copied the others' sliver (hc=1e-300 ran a CPU copy of 1e-302 of the
    hidden states)."""
    params = {f"{tier}g": g, f"{tier}c": c}
    if tier == "c":
        params["compress_cache"] = True
    f = plan_file("flexgen", "opt-6.7b", "flexgen-t4", **params)
    what = "activations" if tier == "h" else "a compressed KV cache"
    why = (
        f"{what} must sit whole on one tier, {tier}g and {tier}c each 0 or 100 (the runtime cannot "
        f"split them), got {g!r} and {c!r}"
    )
    assert guarded(["simulate", "--plan", f]) == (2, f"error: {f}: params.{field}: {why}\n")


@pytest.mark.parametrize(("hg", "hc"), [(100.0, 0.0), (0.0, 100.0), (0.0, 0.0), (100, 0)])
def test_whole_activations_run_and_continuous_slivers_are_splits(plan_file, capsys, guarded, hg, hc):
    from hetsim.strategies.flexgen_policy import FlexGenPlan, validate, whole_tier

    f = plan_file("flexgen", "opt-6.7b", "flexgen-t4", hg=hg, hc=hc)
    assert guarded(["simulate", "--plan", f, "--format", "json"])[0] == 0
    validate(FlexGenPlan(hg=0.0, hc=1e-300, placement="continuous"))  # the LP's ideal splits anything
    assert FlexGenPlan(cg=0.0, cc=1e-300).kv_home == "" and FlexGenPlan(cg=0.0, cc=0.0).kv_home == "d"
    assert whole_tier(100, 0) == "g" and whole_tier(0.0, 100.0) == "c" and whole_tier(50.0, 50.0) == ""


# ---- trace CSV and quantities: ASCII decimal numbers only -----------------------------------------------
@pytest.mark.parametrize(
    ("row", "field", "cell"),
    [
        ("0,1_000,4", "prompt_len", "1_000"),  # int() read 1000
        ("0,٣,4", "prompt_len", "٣"),  # Arabic-Indic three: int() read 3
        ("0,16,４", "output_len", "４"),  # a fullwidth four
        ("0,16,+4", "output_len", "+4"),
        ("0,16,4.0", "output_len", "4.0"),
        ("1_0.5,16,4", "arrival_s", "1_0.5"),  # float() read 10.5
        ("٣,16,4", "arrival_s", "٣"),
        ("nan,16,4", "arrival_s", "nan"),
        ("infinity,16,4", "arrival_s", "infinity"),
    ],
)
def test_a_trace_cell_not_in_ascii_decimal_is_refused_naming_line_and_field(
    tmp_path, capsys, guarded, row, field, cell
):
    f = tmp_path / "t.csv"
    f.write_text(f"arrival_s,prompt_len,output_len\n0,16,4\n{row}\n", encoding="utf-8")
    got = guarded(["serve", "--model", "llama2-7b", "--hw", "hexgen-half-budget", "--requests", str(f)])
    what = "not a time in [0, 1e+09] s" if field == "arrival_s" else "not a positive integer"
    assert got == (2, f"error: {f}: {field}: line 3: {what}: {cell!r}\n")


def test_plain_trace_cells_are_read_as_before(tmp_path):
    from hetsim.serving.workload import read_trace

    f = tmp_path / "t.csv"
    f.write_text("arrival_s,prompt_len,output_len\n 0.5 , 016 ,4\n1e-3,8, 2\n.25,1,1\n")
    got = [(r.arrival_s, r.prompt_len, r.output_len) for r in read_trace(f)]
    assert got == [(1e-3, 8, 2), (0.25, 1, 1), (0.5, 16, 4)]


@pytest.mark.parametrize("value", ["٣ GB", "１6 GB", "٣"])
def test_a_quantity_in_other_scripts_digits_is_refused(value):
    """re's ``\\d`` matched any script's digit and float() read it: '٣ GB' was 3 GB."""
    from hetsim.units import UnitError, is_bare_number, parse_bytes

    with pytest.raises(UnitError, match="cannot parse quantity"):
        parse_bytes(value)
    assert not is_bare_number(value)


def test_a_quantity_with_a_no_break_space_is_still_read():
    from hetsim.units import is_bare_number, parse_bytes

    assert parse_bytes("16\xa0GB") == 16e9 and is_bare_number(" 64 ") and is_bare_number(2.5)
    assert not is_bare_number("64 GB") and not is_bare_number(True) and not is_bare_number("nan")


# ---- model show and --model: what is wrong, and which flag ---------------------------------------------
@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("{d}", "{d}: a folder with no config.json in it"),  # said '{d}/config.json: no such file'
        ("/", "/: a folder with no config.json in it"),
        ("{d}/sub", "{d}/sub/config.json: is a directory, not a file"),
        ("{d}/bad.json", "{d}/bad.json: malformed JSON: Expecting value at line 1 column 1"),
        ("{d}/nofield/config.json", "{d}/nofield/config.json: model_type: missing; supported: "),
        ("{d}/none", "model: unknown model '{d}/none'; no file or folder by that path either; known: "),
    ],
)
def test_model_show_says_what_is_wrong_with_its_argument(tmp_path, capsys, guarded, value, line):
    (tmp_path / "sub" / "config.json").mkdir(parents=True)
    (tmp_path / "nofield").mkdir()
    (tmp_path / "nofield" / "config.json").write_text('{"hidden_size": 64}')
    (tmp_path / "bad.json").write_text("not json\n")
    value, line = value.format(d=tmp_path), line.format(d=tmp_path)
    code, err = guarded(["model", "show", value])
    assert code == 2 and err.startswith(f"error: {line}") and err.count("\n") == 1, err


def test_the_same_folder_as_model_and_rig_names_the_flag_that_failed(tmp_path, capsys, guarded):
    """``--model / --hw /``: the rig's error ("is a directory, not a rig file") was put on --model,
    whose value was the same path."""
    d = str(tmp_path)
    assert guarded(["compare", "--model", d, "--hw", d, *SMALL]) == (
        2,
        f"error: --hw {d}: is a directory, not a rig file\n",
    )
    code, err = guarded(["compare", "--model", d, "--hw", "mixed-lab", *SMALL])
    assert (code, err) == (2, f"error: --model {d}: a folder with no config.json in it\n")


# ---- vectors follow the matrices' float format -----------------------------------------------------------
FP32_CONFIGS = ("Mistral-7B", "Gemma-2-9B", "OPT-350m")  # torch_dtype float32


@pytest.mark.parametrize("name", FP32_CONFIGS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_a_float_runs_weights_are_its_parameters_at_its_width(name, dtype):
    """Norms and biases took a fixed 2 B: an fp32 run of Mistral-7B counted 28,966,395,904 B of weights
    for 7,241,732,096 parameters (532,480 B short of 4 B each), its layers' ops read as much less."""
    from pathlib import Path

    from hetsim.models.hf_config import load_hf_config
    from hetsim.models.layer_ops import decoder_layer_ops
    from hetsim.models.spec import DTYPES
    from hetsim.models.weights import layer_param_count, layer_weight_bytes, param_count, weight_bytes

    spec = load_hf_config(Path(__file__).parent / "data" / "hf-configs" / name / "config.json")
    d = DTYPES[dtype]
    assert weight_bytes(spec, d) == param_count(spec) * d.bytes_per_element
    assert layer_weight_bytes(spec, d) == layer_param_count(spec) * d.bytes_per_element
    ops = decoder_layer_ops(spec, "decode", 1, 1, 16, d, DTYPES["fp16"], DTYPES["fp16"])
    assert sum(o.weight_bytes for o in ops) == layer_param_count(spec) * d.bytes_per_element


def test_vectors_beside_a_quantised_format_stay_16_bit():
    from hetsim.models.spec import DTYPES, FLEXGEN_INT4
    from hetsim.models.weights import vector_bytes

    assert [vector_bytes(DTYPES[n]) for n in ("fp32", "fp16", "bf16", "int8", "int4", "q4_k_m")] == [
        4.0, 2.0, 2.0, 2.0, 2.0, 2.0,
    ]  # fmt: skip
    assert vector_bytes(FLEXGEN_INT4) == 2.0


# ---- serve: HexGen's applicability is compare's rule, in compare's words ------------------------------
@pytest.mark.parametrize(
    ("hw", "flags", "why"),
    [
        # was "no feasible plan for llama2-7b on cputp-4x8575c", after building the requests
        ("cputp-4x8575c", [], "the rig has no GPUs"),
        # was "--dtype q4_k_m is not a weight precision hexgen runs (...)", serve's own wording
        ("mixed-lab", ["--dtype", "q4_k_m"],
         "--dtype q4_k_m is not a weight precision it runs (offers: fp16, bf16, fp32, int8, int4)"),
        ("mixed-lab", ["--kv-dtype", "q4_k_m"],
         "--kv-dtype q4_k_m is not a KV precision it runs (offers: fp16, bf16, fp32, int8)"),
    ],
)  # fmt: skip
def test_serve_says_why_hexgen_does_not_apply_as_compare_does(capsys, guarded, hw, flags, why):
    from hetsim import api
    from hetsim.strategies.base import get_strategy

    args = ["serve", "--model", "llama2-7b", "--hw", hw, "--rate", "1", "--num-requests", "4", *flags]
    assert guarded(args) == (1, f"error: hexgen not applicable: {why}\n")
    dt = dict(zip(flags[::2], flags[1::2], strict=True))
    p = api.problem("llama2-7b", hw, 1, 16, 2, None, dt.get("--dtype"), dt.get("--kv-dtype"))
    assert api.not_applicable(get_strategy("hexgen"), p) == f"not applicable: {why}"


# ---- HexGen's latency caps ------------------------------------------------------------------------------
TWO_A100 = """name: two-a100
nodes:
- cpus: [xeon-8480+]
  host_memory: {value: 512 GB, source: x, grade: assumed}
  gpus: [{model: a100-80g, count: 2}]
"""


def test_hexgen_finds_the_plan_of_a_rig_with_one_shape(tmp_path, capsys):
    """The outer solve's caps were latencies rounded to the ns, and a cap rounded down shut out its
    own shape (0.11959369134885606 s -> 0.119593691, past the solve's 1e-9 relative slack): llama2-13b
    on one node of two A100s (one shape, TP 2) had no HexGen plan, "no feasible plan found by the
    search", though that plan runs (0.1358 s)."""
    from hetsim import api
    from hetsim.planner.hexgen_cpsat import Demand, candidates

    rig = tmp_path / "two-a100.yaml"
    rig.write_text(TWO_A100)
    p = api.problem("llama2-13b", str(rig), 8, 64, 8)
    [found] = candidates(p.rig, p.model, Demand.offline(p.workload, p.model))
    assert [st.devices for r in found.plan.replicas for st in r.stages] == [("n0.gpu0", "n0.gpu1")]
    args = ["compare", "--model", "llama2-13b", "--hw", str(rig), "--batch", "8", "--prompt-len", "64"]
    from hetsim.cli import main

    code = main([*args, "--gen-len", "8", "--strategies", "hexgen", "--format", "json"])
    [row] = json.loads(capsys.readouterr().out)["results"]
    assert code == 0 and row["feasible"], row["reason"]


# ---- rig YAML: a link given twice ------------------------------------------------------------------------
TWO_REGIONS = """name: two-regions
nodes:
- {region: a, cpus: [xeon-8480+], host_memory: {value: 512 GB, source: x, grade: assumed},
   gpus: [{model: a100-80g, count: 2}], nic: ethernet-100g{nvlink}}
- {region: b, cpus: [xeon-8480+], host_memory: {value: 512 GB, source: x, grade: assumed},
   gpus: [{model: a100-80g, count: 2}], nic: ethernet-100g}
network: {wan: ethernet-10g, pairs: [{pairs}]}
"""


@pytest.mark.parametrize(
    ("pairs", "nvlink", "field", "why"),
    [
        # the later pair won silently (b-a at 100 GbE over a-b at 10 GbE: cpu-tp 0.98 -> 0.61 s)
        ("{between: [a, b], link: ethernet-10g}, {between: [b, a], link: ethernet-100g}", "",
         "network.pairs[1]", "regions 'b' and 'a' are joined already by network.pairs[0]"),
        ("{between: [a, a], link: ethernet-10g}", "",
         "network.pairs[0]", "joins region 'a' to itself: a pair names two regions"),
        # two links between the same GPUs
        ("", ", nvlink: {link: nvlink3, pairs: [[0, 1], [1, 0]]}",
         "nodes[0].nvlink.pairs[1]",
         "GPUs 1 and 0 are bridged already by pairs[0] (count: parallel bridges)"),
    ],
)  # fmt: skip
def test_a_rig_link_given_twice_is_refused(tmp_path, capsys, guarded, pairs, nvlink, field, why):
    rig = tmp_path / "r.yaml"
    rig.write_text(TWO_REGIONS.replace("{pairs}", pairs).replace("{nvlink}", nvlink))
    assert guarded(["hw", "show", str(rig)]) == (2, f"error: {rig}: {field}: {why}\n")


def test_a_rig_with_one_pair_and_one_bridge_loads(tmp_path):
    from hetsim.hardware import load_rig

    rig = tmp_path / "r.yaml"
    text = TWO_REGIONS.replace("{pairs}", "{between: [b, a], link: ethernet-100g}")
    rig.write_text(text.replace("{nvlink}", ", nvlink: {link: nvlink3, pairs: [[1, 0]]}"))
    links = load_rig(str(rig)).links
    assert {"wan.a-b", "n0.nvlink.gpu1-gpu0"} <= set(links)


# ---- sweep knobs: a rig file's physical bounds ------------------------------------------------------------
@pytest.mark.parametrize(
    ("knob", "value", "why"),
    [
        ("gpu_mem_gb", 1e300, "must be a finite quantity, got '1e+300 GB'"),  # said "must be at least 0.001"
        ("gpu_mem_gb", 2e9, "must be in [1e+06, 1e+18] (SI units; physical bounds), got '2000000000.0 GB'"),
        ("net_gbps", 1e30, "must be in [1e+06, 1e+16] (SI units; physical bounds), got '1e+30 Gb/s'"),  # ran
        ("net_gbps", 1e-30, "must be in [1e+06, 1e+16] (SI units; physical bounds), got '1e-30 Gb/s'"),
        ("bw_scale", {"warp": 2},  # scaled nothing, silently
         "unknown link kind 'warp' (known: pcie, nvlink, upi, ethernet, infiniband, rdma, wan, shm, sata, "
         "nvme)"),
    ],
)  # fmt: skip
def test_a_sweep_knob_past_a_rigs_bounds_is_refused(tmp_path, capsys, guarded, knob, value, why):
    import yaml

    base = {"batch": 1, "prompt_len": 16, "gen_len": 2, "model": "llama2-7b", "rig": "mixed-lab"}
    spec = tmp_path / "s.yaml"
    grid = {"strategy": ["gpu-only"], knob: [value]}
    spec.write_text(yaml.safe_dump({"name": "s", "base": base, "grids": [grid]}))
    got = guarded(["sweep", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert got == (2, f"error: {spec}: grids[0].{knob}[0]: {why}\n")
    assert not (tmp_path / "out").exists()
