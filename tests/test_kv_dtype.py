"""--kv-dtype: the KV cache precision flows from the CLI into each strategy's plans (issue 15)."""

from __future__ import annotations

import json

import pytest

from hetsim import api
from hetsim.cli.commands import main
from hetsim.errors import InputError
from hetsim.models.memory import kv_cache_bytes
from hetsim.planner.search import largest_batch
from hetsim.strategies.base import get_strategy

FAST = ["--prompt-len", "64", "--gen-len", "2"]


@pytest.mark.parametrize("name", ["gpu-only", "hexgen", "layer-offload", "cpu-tp"])
def test_int8_kv_halves_the_kv_bytes_of_fp16(name):
    s = get_strategy(name)
    fp16 = api.problem("llama2-7b", "mixed-lab", 4, 256, 16)
    int8 = api.problem("llama2-7b", "mixed-lab", 4, 256, 16, kv_dtype="int8")
    p16 = s.default_plan(fp16.rig, fp16.model, fp16.workload)
    p8 = s.default_plan(int8.rig, int8.model, int8.workload)
    assert (p16.kv_dtype, p8.kv_dtype) == ("fp16", "int8")

    def kv(p, plan):
        return sum(t.get("kv_cache", 0.0) for t in s.footprint(plan, p.rig, p.model, p.workload).values())

    assert kv(int8, p8) == pytest.approx(kv(fp16, p16) / 2)
    assert kv_cache_bytes(fp16.model, 4, 272, 1, "int8") == kv_cache_bytes(fp16.model, 4, 272, 1) / 2


def test_int8_kv_lets_a_larger_batch_and_context_fit():
    s = get_strategy("gpu-only")
    fp16 = api.problem("llama2-7b", "flexgen-t4", 1, 2048, 32)
    int8 = api.problem("llama2-7b", "flexgen-t4", 1, 2048, 32, kv_dtype="int8")
    b16 = largest_batch(s, fp16.rig, fp16.model, fp16.workload)
    b8 = largest_batch(s, int8.rig, int8.model, int8.workload)
    assert b8 > b16 >= 1
    # a context that does not fit the T4 with a 16-bit KV cache fits with an 8-bit one
    tight = dict(batch=b16 + 1, prompt_len=2048, gen_len=32)
    r16 = api.best_result(s, api.problem("llama2-7b", "flexgen-t4", **tight), "latency", search=False)
    r8 = api.best_result(
        s, api.problem("llama2-7b", "flexgen-t4", **tight, kv_dtype="int8"), "latency", search=False
    )
    assert not r16.feasible and r8.feasible
    assert "int8 KV cache" in r8.lossy


def test_a_strategy_without_the_kv_precision_is_not_applicable():
    p = api.problem("llama2-7b", "flexgen-t4", 1, 64, 2, kv_dtype="int8")
    r = api.best_result(get_strategy("flexgen"), p, "latency")
    assert not r.feasible and "--kv-dtype int8 is not a KV precision it runs" in r.reason
    # fp16 is what FlexGen runs: asking for it changes nothing
    p = api.problem("llama2-7b", "flexgen-t4", 1, 64, 2, kv_dtype="fp16")
    assert api.best_result(get_strategy("flexgen"), p, "latency").feasible


def test_no_flag_leaves_the_workload_as_it_was():
    p = api.problem("llama2-7b", "mixed-lab", 1, 64, 2)
    assert "kv_dtype" not in p.workload.to_dict()
    with pytest.raises(InputError) as ei:
        api.problem("llama2-7b", "mixed-lab", kv_dtype="int3")
    assert ei.value.field == "--kv-dtype"


def test_every_output_shows_a_lossy_kv_cache(capsys, tmp_path):
    args = ["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--kv-dtype", "int8", "--batch", "2",
            "--strategies", "gpu-only,flexgen", *FAST]  # fmt: skip
    assert main(args) == 0
    assert "KV cache int8 (lossy, as asked with --kv-dtype)" in capsys.readouterr().out
    assert main([*args, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["workload"]["kv_dtype"] == "int8"
    rows = {r["strategy"]: r for r in doc["results"]}
    assert rows["gpu-only"]["plan"]["kv_dtype"] == "int8" and "int8 KV cache" in rows["gpu-only"]["lossy"]
    assert not rows["flexgen"]["feasible"]
    assert main([*args, "--format", "csv"]) == 0
    assert "int8 KV cache" in capsys.readouterr().out
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", "llama2-7b", "--hw", "mixed-lab", "--kv-dtype", "int8", "--batch", "2",
                 "--strategy", "gpu-only", *FAST, "--out", str(out), "--format", "json"]) == 0  # fmt: skip
    planned = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert saved == planned
    assert saved["workload"]["kv_dtype"] == "int8" and saved["params"]["kv_dtype"] == "int8"
    assert "int8 KV cache" in saved["lossy"]


def test_a_plan_file_with_an_int8_kv_cache_resimulates_identically(capsys, tmp_path):
    out = tmp_path / "plan.json"
    base = ["--model", "llama2-7b", "--hw", "mixed-lab", "--kv-dtype", "int8", "--batch", "3", *FAST]
    assert main(["plan", *base, "--strategy", "hexgen", "--out", str(out), "--format", "json"]) == 0
    capsys.readouterr()
    assert main(["compare", *base, "--strategies", "hexgen", "--format", "json"]) == 0
    compared = json.loads(capsys.readouterr().out)["results"][0]
    assert main(["simulate", "--plan", str(out), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["workload"]["kv_dtype"] == "int8"
    assert doc["results"][0] == compared


def test_unknown_kv_dtype_is_one_line_exit_2(capsys):
    rc = main(["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--kv-dtype", "int9"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "--kv-dtype" in err and "int9" in err


# ---- serve and sweep ---------------------------------------------------------------------------
SERVE = ["serve", "--model", "llama2-7b", "--hw", "mixed-lab", "--rate", "2", "--num-requests", "8"]


def test_serve_runs_the_kv_precision_asked_for(capsys):
    assert main([*SERVE, "--format", "json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "kv_dtype" not in plain["plan"] and "lossy" not in plain  # no flag: the document as before
    assert main([*SERVE, "--kv-dtype", "int8", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"]["kv_dtype"] == "int8" and doc["plan"]["weight_dtype"] == "fp16"
    assert "int8 KV cache" in doc["lossy"]
    assert main([*SERVE, "--kv-dtype", "int8"]) == 0
    assert "KV cache int8 (lossy" in capsys.readouterr().out


def test_serve_refuses_a_precision_hexgen_does_not_run(capsys):
    assert main([*SERVE, "--dtype", "q4_k_m"]) == 1
    assert "hexgen not applicable: --dtype q4_k_m is not a weight precision" in capsys.readouterr().err
    assert main([*SERVE, "--kv-dtype", "int9"]) == 2
    err = capsys.readouterr().err
    assert "--kv-dtype" in err and "Traceback" not in err and err.strip().count("\n") == 0


def test_sweep_precision_axes(tmp_path):
    from hetsim.sweep.api import run_sweep
    from hetsim.sweep.grid import expand
    from hetsim.sweep.spec import load_spec

    spec = tmp_path / "kv.yaml"
    spec.write_text(
        "name: kv\nbase: {model: llama2-7b, rig: flexgen-t4, prompt_len: 2048, gen_len: 2, batch: 2}\n"
        "search: false\ngrids:\n  - {strategy: [gpu-only, flexgen], kv_dtype: [fp16, int8]}\n"
        "  - {strategy: [gpu-only]}\n"
    )
    points = expand(load_spec(spec))
    assert sum("kv_dtype" not in p for p in points) == 1  # unset: not part of the point
    df = run_sweep(spec, tmp_path / "out", workers=1, progress=False, plots=False).results
    row = {(r.strategy, r.kv_dtype if isinstance(r.kv_dtype, str) else None): r for r in df.itertuples()}
    assert not row[("gpu-only", "fp16")].feasible and row[("gpu-only", "int8")].feasible
    assert "int8 KV cache" in row[("gpu-only", "int8")].lossy
    assert "--kv-dtype int8" in row[("flexgen", "int8")].reason
    assert row[("gpu-only", None)].e2e_s is not None and not row[("gpu-only", None)].feasible
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrids: [{model: [llama2-7b], rig: [mixed-lab], dtype: [fp7]}]\n")
    with pytest.raises(InputError) as ei:
        load_spec(bad)
    assert ei.value.field == "grids[0].dtype[0]"


def test_a_plan_file_whose_params_contradict_its_asked_precision_is_refused(capsys, tmp_path):
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", "llama2-7b", "--hw", "mixed-lab", "--kv-dtype", "int8", "--dtype", "fp16",
                 "--strategy", "gpu-only", "--batch", "2", *FAST, "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    assert (doc["workload"]["weight_dtype"], doc["workload"]["kv_dtype"]) == ("fp16", "int8")
    doc["params"]["kv_dtype"] = "fp16"
    out.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["simulate", "--plan", str(out)]) == 2
    err = capsys.readouterr().err
    assert "params.kv_dtype" in err and "Traceback" not in err
