"""Session 22's bad-input fixes: each case here ran a value its file never gave, or named the wrong
thing, before its fix."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hetsim.strategies.base import get_strategy

# one (model, rig) each strategy applies to
WHERE = {
    "accelerate": ("opt-6.7b", "flexgen-t4"),
    "cpu-tp": ("llama2-7b", "cputp-4x8575c"),
    "deepspeed": ("opt-6.7b", "flexgen-t4"),
    "flexgen": ("opt-6.7b", "flexgen-t4"),
    "gpu-only": ("llama2-7b", "mixed-lab"),
    "hetegen": ("opt-6.7b", "hetegen-a10"),
    "hexgen": ("llama2-7b", "hexgen-homogeneous"),
    "layer-offload": ("llama2-7b", "ktransformers-1s"),
    "moe-offload": ("mixtral-8x7b", "ktransformers-1s"),
}
FIELDS = [(name, f.name) for name in sorted(WHERE) for f in dataclasses.fields(get_strategy(name).plan_type)]


def test_every_strategy_is_covered():
    from hetsim.strategies.base import all_strategies

    assert sorted(s.name for s in all_strategies()) == sorted(WHERE)


@pytest.mark.parametrize(("strategy", "field"), FIELDS)
def test_a_plan_missing_a_parameter_is_refused_naming_it(plan_file, capsys, guarded, strategy, field):
    """A plan file's params without one of the strategy's fields ran on the dataclass's default (a
    hand-written FlexGen plan without ``wg`` ran 20 % of the weights on the GPU, one without ``cpu_attention``
    attended on the CPU); ``plan --out`` writes every field, so one left out is refused, named."""
    f = Path(plan_file(strategy, *WHERE[strategy]))
    doc = json.loads(f.read_text())
    del doc["params"][field]
    f.write_text(json.dumps(doc))
    code, err = guarded(["simulate", "--plan", str(f)])
    assert code == 2
    assert err == (
        f"error: {f}: params.{field}: missing; a plan gives every parameter, as `hetsim plan --out` "
        f"writes them (missing: {field}); one from an older hetsim may predate the parameter: write it "
        "again with `hetsim plan --out`\n"
    )


@pytest.mark.parametrize("strategy", sorted(WHERE))
def test_a_written_plan_runs(plan_file, capsys, guarded, strategy):
    """Every field there (as ``plan --out`` writes it): the plan runs."""
    f = plan_file(strategy, *WHERE[strategy])
    assert guarded(["simulate", "--plan", f, "--format", "json"]) == (0, "")


NOT_OPT = "is not a module of opt-6.7b (its modules: q_proj, k_proj, v_proj, out_proj, fc1, fc2, lm_head)"


@pytest.mark.parametrize(
    ("edit", "field", "why"),
    [
        # a module kind the model lacks: in an alpha map it ran silently, in resident it said only
        # "params: unknown name 'gate_proj'"
        ({"alpha_decode": {"gate_proj": 0.5}}, "alpha_decode.gate_proj", NOT_OPT),
        ({"alpha_prefill": {"gate_proj": 0.5}}, "alpha_prefill.gate_proj", NOT_OPT),
        ({"resident": {"gate_proj": 1}}, "resident.gate_proj", NOT_OPT),
        # a split module without its CPU share ran at share 0: every byte streamed to the GPU
        ({"resident": {}, "alpha_decode": {"fc1": None}}, "alpha_decode.fc1",
         "missing: fc1 is split (not resident in 32 of 32 layers); give its CPU share, 0 to 1"),
        ({"resident": {"lm_head": 0}, "alpha_prefill": {"lm_head": None}}, "alpha_prefill.lm_head",
         "missing: lm_head is split (not resident in 1 of 1 layers); give its CPU share, 0 to 1"),
    ],
)  # fmt: skip
def test_hetegen_module_maps_name_the_models_modules(plan_file, capsys, guarded, edit, field, why):
    f = Path(plan_file("hetegen", *WHERE["hetegen"]))
    doc = json.loads(f.read_text())
    params = doc["params"]
    for name, entries in edit.items():
        if not entries:
            params[name] = {}
        for kind, value in entries.items():
            if value is None:
                del params[name][kind]
            else:
                params[name][kind] = value
    f.write_text(json.dumps(doc))
    assert guarded(["simulate", "--plan", str(f)]) == (2, f"error: {f}: params.{field}: {why}\n")


def test_hetegen_a_resident_module_needs_no_share(plan_file, capsys, guarded):
    """Resident in every layer, a module is never split: its share may be left out (the run is the same)."""
    f = Path(plan_file("hetegen", *WHERE["hetegen"]))
    doc = json.loads(f.read_text())
    doc["params"]["resident"] = {"fc1": 32}
    full = guarded(["simulate", "--plan", str(f), "--format", "json"])
    for phase in ("alpha_prefill", "alpha_decode"):
        del doc["params"][phase]["fc1"]
    f.write_text(json.dumps(doc))
    assert guarded(["simulate", "--plan", str(f), "--format", "json"]) == full


@pytest.mark.parametrize(
    ("hw", "replicas", "field", "why"),
    [
        ("hexgen-homogeneous", [[(["n0.gpu0"], 32)], [(["n0.gpu0"], 32)]], "replicas[1].stages[0].devices",
         "'n0.gpu0' is used twice"),
        ("hexgen-homogeneous", [[(["n0.gpu0"], 16), (["n0.gpu0"], 16)]], "replicas[0].stages[1].devices",
         "'n0.gpu0' is used twice"),
        ("mixed-lab", [[(["n0.gpu0", "n0.gpu1"], 32)]], "replicas[0].stages[0].devices",
         "a tensor-parallel group must be GPUs of one type"),
    ],
)  # fmt: skip
def test_hexgen_plan_checks_name_the_file(plan_file, capsys, guarded, hw, replicas, field, why):
    """HexGen's plan had two checks: the file's (one machine per TP group) and the footprint's (each GPU
    once, one GPU type per group), whose line named no file and another path (``replicas.1.stages.0``)."""
    f = Path(plan_file("hexgen", "llama2-7b", hw))
    doc = json.loads(f.read_text())
    doc["params"]["replicas"] = [
        {"stages": [{"devices": devices, "layers": layers} for devices, layers in rep]} for rep in replicas
    ]
    f.write_text(json.dumps(doc))
    assert guarded(["simulate", "--plan", str(f)]) == (2, f"error: {f}: params.{field}: {why}\n")


@pytest.mark.parametrize(
    ("strategy", "hw", "edit", "field", "allowed"),
    [
        ("gpu-only", "mixed-lab", lambda p: p["stages"][0].update(micro_batches=2), "stages[0].micro_batches",
         "devices, layers"),
        ("hexgen", "hexgen-homogeneous", lambda p: p["replicas"][0]["stages"][0].update(layer=32),
         "replicas[0].stages[0].layer", "devices, layers"),
        ("hexgen", "hexgen-homogeneous", lambda p: p["replicas"][0].update(max_batch=4),
         "replicas[0].max_batch", "stages"),
    ],
)  # fmt: skip
def test_an_unknown_key_inside_a_plan_is_refused(
    plan_file, capsys, guarded, strategy, hw, edit, field, allowed
):
    """A key no field names inside a stage or a replica was dropped (pydantic ignores them): a
    ``micro_batches`` put in a stage ran one micro-batch; now refused as one at params' top is."""
    f = Path(plan_file(strategy, "llama2-7b", hw))
    doc = json.loads(f.read_text())
    edit(doc["params"])
    f.write_text(json.dumps(doc))
    assert guarded(["simulate", "--plan", str(f)]) == (
        2,
        f"error: {f}: params.{field}: unknown key (allowed: {allowed})\n",
    )


THREE = ["n0.gpu0", "n0.gpu1", "n0.gpu2"]


@pytest.mark.parametrize(
    ("strategy", "hw", "edit", "field"),
    [
        ("gpu-only", "hexgen-homogeneous", lambda p: p["stages"][0].update(devices=THREE),
         "stages[0].devices"),
        ("hexgen", "hexgen-homogeneous", lambda p: p["replicas"][0]["stages"][0].update(devices=THREE),
         "replicas[0].stages[0].devices"),
        ("cpu-tp", "cputp-4x8575c", lambda p: p.update(ranks=["n0.cpu0", "n1.cpu0", "n2.cpu0"]), "ranks"),
    ],
)  # fmt: skip
def test_a_tensor_parallel_group_splits_the_heads_evenly(
    plan_file, capsys, guarded, strategy, hw, edit, field
):
    """The searches try only degrees that divide the heads (``tp_degrees``, cpu-tp's candidates); a plan
    file's 3 ranks of llama2-7b's 32 heads ran, each costed at a third of every matrix."""
    f = Path(plan_file(strategy, "llama2-7b", hw))
    doc = json.loads(f.read_text())
    edit(doc["params"])
    f.write_text(json.dumps(doc))
    why = "3 ranks do not split llama2-7b's 32 attention heads evenly"
    assert guarded(["simulate", "--plan", str(f)]) == (2, f"error: {f}: params.{field}: {why}\n")


@pytest.mark.parametrize("folder", ["Llama-2-7B", "llama2-7b", "DeepSeek-V3"])
def test_a_model_folder_named_like_a_builtin_model_is_read(tmp_path, capsys, folder):
    """``--model ./Llama-2-7B`` (a download, its config.json edited to 2 layers) ran the catalogue's
    llama2-7b, 32 layers, the folder never read: its last part matched a built-in name."""
    from hetsim.cli import main

    src = Path(__file__).parent / "data" / "hf-configs" / "Llama-2-7B" / "config.json"
    config = {**json.loads(src.read_text()), "num_hidden_layers": 2}
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "config.json").write_text(json.dumps(config))
    assert main(["model", "show", str(tmp_path / folder), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["layers"] == 2


def test_a_hub_id_with_no_folder_is_still_the_builtin_model():
    from hetsim.models.registry import get_model

    assert get_model("meta-llama/Llama-2-7b-hf") is get_model("llama2-7b")


SMALL = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]


def test_a_trace_over_the_plan_file_is_refused(plan_file, capsys, guarded):
    """``simulate --plan p.json --trace p.json`` wrote the trace over the plan (the user's only copy)."""
    f = plan_file("flexgen", *WHERE["flexgen"])
    before = Path(f).read_bytes()
    for args in (["--trace", f], [f"--trace={f}"]):
        why = "is the file --plan reads: writing it would overwrite that input; give another path"
        assert guarded(["simulate", "--plan", f, *args]) == (2, f"error: --trace {f}: {why}\n")
    assert Path(f).read_bytes() == before


def test_an_output_over_the_rig_or_the_model_is_refused(tmp_path, capsys, guarded):
    root = Path(__file__).parents[1]
    rig = tmp_path / "rig.yaml"
    rig.write_bytes((root / "hardware_profiles/rigs/flexgen-t4.yaml").read_bytes())
    model = tmp_path / "opt"
    model.mkdir()
    (model / "config.json").write_bytes((root / "tests/data/hf-configs/OPT-350m/config.json").read_bytes())
    why = "writing it would overwrite that input; give another path"
    plan = [
        "plan",
        "--model",
        "opt-6.7b",
        "--hw",
        str(rig),
        "--strategy",
        "flexgen",
        *SMALL,
        "--out",
        str(rig),
    ]
    assert guarded(plan) == (2, f"error: --out {rig}: is the file --hw reads: {why}\n")
    config = model / "config.json"
    compare = ["compare", "--model", str(model), "--hw", "flexgen-t4", "--strategies", "flexgen", *SMALL]
    assert guarded([*compare, "--trace", str(config)]) == (
        2,
        f"error: --trace {config}: is the file --model reads: {why}\n",
    )
    assert rig.read_bytes() == (root / "hardware_profiles/rigs/flexgen-t4.yaml").read_bytes()


def test_an_existing_trace_is_still_overwritten(plan_file, capsys, guarded, tmp_path):
    f, trace = plan_file("flexgen", *WHERE["flexgen"]), tmp_path / "t.json"
    trace.write_text("old")
    assert guarded(["simulate", "--plan", f, "--trace", str(trace)])[0] == 0
    assert json.loads(trace.read_text())["traceEvents"]


def test_a_plans_missing_rig_names_its_path(plan_file, capsys, guarded, tmp_path, monkeypatch):
    """A plan written with ``--hw hardware_profiles/rigs/x.yaml`` keeps that relative path; simulated
    from another folder it said only "hardware: rig file not found", naming neither path nor folder."""
    f = Path(plan_file("flexgen", *WHERE["flexgen"]))
    doc = json.loads(f.read_text())
    f.write_text(json.dumps({**doc, "hardware": "rigs/t4.yaml"}))
    monkeypatch.chdir(tmp_path)
    assert guarded(["simulate", "--plan", str(f)]) == (
        2,
        f"error: {f}: hardware: rig file not found: rigs/t4.yaml, from the current folder {tmp_path}\n",
    )


HEAD = "arrival_s,prompt_len,output_len"


@pytest.mark.parametrize(
    ("text", "line", "field", "why"),
    [
        (f"{HEAD}\n\n0,10,10\n\nx,1,1\n", 5, "arrival_s", "not a time in [0, 1e+09] s: 'x'"),
        (f'{HEAD}\n"0\n",10,10\n0,x,1\n', 4, "prompt_len", "not a positive integer: 'x'"),
        (f"{HEAD}\r\n0,10,10\r\n0,10,-1\r\n", 3, "output_len", "not a positive integer: '-1'"),
    ],
)  # fmt: skip
def test_a_trace_row_is_named_by_its_line_in_the_file(tmp_path, capsys, guarded, text, line, field, why):
    """The CSV reader skips blank lines (and a quoted value may span two): the line named was the row's
    count plus one (line 3 for the fifth line)."""
    trace = tmp_path / "trace.csv"
    trace.write_text(text, newline="")
    args = ["serve", "--model", "llama2-7b", "--hw", "hexgen-homogeneous", "--requests", str(trace)]
    assert guarded(args) == (2, f"error: {trace}: {field}: line {line}: {why}\n")


@pytest.mark.parametrize("strategy", ["hexgen", "deepspeed"])
def test_validate_names_the_plans_strategy_it_does_not_run(plan_file, capsys, guarded, tmp_path, strategy):
    """``validate --plan hexgen.json`` said "--strategy: unknown strategy 'hexgen'": a flag not given,
    about a strategy hetsim knows; the plan file's field names it now."""
    pytest.importorskip("torch")  # the validate extra (README command 2 installs dev only)
    f = plan_file(strategy, *WHERE[strategy])
    hw = str(Path(__file__).parents[1] / "hardware_profiles/rigs/flexgen-t4.yaml")
    runs = "cpu-tp, gpu-only, accelerate, hetegen, flexgen"
    assert guarded(["validate", "--hw", hw, "--plan", f, "--out", str(tmp_path / "v")]) == (
        2,
        f"error: {f}: strategy: validate runs {runs} plans, not {strategy!r}\n",
    )
    flags = [
        "validate",
        "--hw",
        hw,
        "--model",
        "opt-6.7b",
        "--strategy",
        strategy,
        "--out",
        str(tmp_path / "v"),
    ]
    assert guarded(flags) == (2, f"error: --strategy: validate runs {runs} plans, not {strategy!r}\n")
    assert not (tmp_path / "v").exists()


def test_a_sweeps_model_or_rig_file_names_its_own_field(tmp_path, capsys, guarded):
    """A sweep's model whose config.json is bad said "grids[0].model[0]: expected an integer, got 'x'"
    (neither the file nor its field); a malformed rig passed the spec check and failed every point it
    ran (exit 0, "1 failed"). Both are now the named file's own line, before any point runs."""
    root = Path(__file__).parents[1]
    model = tmp_path / "m"
    model.mkdir()
    config = json.loads((root / "tests/data/hf-configs/Llama-2-7B/config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_size": "x"}))
    rig = tmp_path / "rig.yaml"
    rig.write_text((root / "hardware_profiles/rigs/flexgen-t4.yaml").read_text().replace("208 GB", "208 GBX"))
    spec, out = tmp_path / "s.yaml", tmp_path / "out"
    base = "name: a\nbase: {rig: flexgen-t4, batch: 1, prompt_len: 16, gen_len: 2}\ngrids:\n"
    spec.write_text(f"{base}  - {{model: ['{model}'], strategy: [flexgen]}}\n")
    code, err = guarded(["sweep", str(spec), "--out", str(out), "--no-plots"])
    assert (code, err) == (2, f"error: {model / 'config.json'}: hidden_size: expected an integer, got 'x'\n")
    spec.write_text(f"{base}  - {{model: [opt-6.7b], strategy: [flexgen], rig: [flexgen-t4, '{rig}']}}\n")
    code, err = guarded(["sweep", str(spec), "--out", str(out), "--no-plots"])
    assert code == 2 and err.startswith(f"error: {rig}: nodes[0].host_memory: unknown size unit 'GBX'")
    assert not out.exists()


def test_an_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys, guarded, monkeypatch):
    """``calibrate --out DIR`` measured (a minute and a half with --quick, far longer without), then
    failed to write and lost the measurements; ``validate --out FILE`` ran its plan first, ``plan
    --out DIR`` searched first. Now each is refused before any work, with the line its write gave."""
    import validate.calibrate as cal

    def measured(**kwargs: object) -> None:
        raise AssertionError("measured before the output was checked")

    monkeypatch.setattr(cal, "measure", measured)
    a_file = tmp_path / "f.yaml"
    a_file.write_text("x")
    under = a_file / "x.yaml"
    assert guarded(["calibrate", "--quick", "--out", str(tmp_path)]) == (
        2,
        f"error: --out {tmp_path}: Is a directory\n",
    )
    assert guarded(["calibrate", "--quick", "--out", str(under)]) == (
        2,
        f"error: --out {under}: Not a directory\n",
    )
    hw = str(Path(__file__).parents[1] / "hardware_profiles/rigs/flexgen-t4.yaml")
    args = ["validate", "--hw", hw, "--model", "opt-6.7b", "--strategy", "cpu-tp", "--ranks", "1"]
    assert guarded([*args, "--out", str(a_file)]) == (2, f"error: --out {a_file}: is a file, not a folder\n")
    monkeypatch.setattr("hetsim.api.compare", measured)
    plan = ["plan", "--model", "opt-6.7b", "--hw", "flexgen-t4", "--strategy", "all", *SMALL]
    assert guarded([*plan, "--out", str(tmp_path)]) == (2, f"error: --out {tmp_path}: Is a directory\n")


@pytest.mark.parametrize("ref", ["cputp-4x8575c", "flexgen-t4"])
def test_a_reference_rig_that_cannot_serve_the_model_is_refused(capsys, guarded, ref):
    """``serve --slo-scale 2 --slo-ref cputp-4x8575c`` (no GPUs) ended in a ValueError traceback from the
    reference plan's search, exit 1; llama2-70b's on one 16 GB T4 likewise."""
    args = ["serve", "--model", "llama2-70b", "--hw", "hexgen-homogeneous", "--rate", "1", "--duration", "5"]
    why = f"the model does not fit on the reference rig {ref}: --slo-scale needs one that can serve it"
    assert guarded([*args, "--slo-scale", "2", "--slo-ref", ref]) == (2, f"error: --slo-ref: {why}\n")


def test_searches_and_the_plan_check_keep_one_heads_rule():
    """Falcon-7B's 71 heads split over no group of 2-4: cpu-tp's search offers one socket only, and a
    plan file's check refuses every degree the search skips (one rule: ``sharding.splits_heads``)."""
    from hetsim.errors import InputError
    from hetsim.hardware import load_rig
    from hetsim.models.registry import get_model
    from hetsim.models.sharding import splits_heads, tp_degrees
    from hetsim.strategies import plan_io
    from hetsim.workload import Workload

    falcon = get_model(str(Path(__file__).parent / "data/hf-configs/Falcon-7B"))
    assert falcon.heads == 71 and tp_degrees(falcon, 8) == [1]
    rig, strategy = load_rig("cputp-4x8575c"), get_strategy("cpu-tp")
    assert {len(p.ranks) for p in strategy.candidates(rig, falcon, Workload(1, 128, 8))} == {1}
    for ranks in range(1, 9):
        if splits_heads(falcon, ranks):
            plan_io.heads_split(falcon, ranks, "ranks")
        else:
            with pytest.raises(InputError, match="do not split Falcon-7B's 71 attention heads"):
                plan_io.heads_split(falcon, ranks, "ranks")


def test_cpu_tps_default_plan_is_one_its_plan_check_takes():
    """``compare --no-search`` ran cpu-tp's default plan on every socket: Falcon-7B's 71 heads over 4
    sockets, costed at 71/4 heads a rank, a plan a plan file may not give (``heads_split``)."""
    from hetsim.hardware import load_rig
    from hetsim.models.registry import get_model
    from hetsim.workload import Workload

    rig, strategy, w = load_rig("cputp-4x8575c"), get_strategy("cpu-tp"), Workload(1, 128, 8)
    falcon = get_model(str(Path(__file__).parent / "data/hf-configs/Falcon-7B"))
    plan = strategy.default_plan(rig, falcon, w)
    assert plan.ranks == ("n0.cpu0",)
    strategy.check_plan(plan, rig, falcon, w)
    assert len(strategy.default_plan(rig, get_model("llama2-7b"), w).ranks) == 4  # 32 heads: every socket
