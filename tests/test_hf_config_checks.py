"""config.json fields that change what hetsim costs: each is read, or refused with one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hetsim.errors import InputError
from hetsim.models.hf_config import spec_from_hf_dict
from hetsim.models.layer_ops import step_ops
from hetsim.models.spec import FLEXGEN_INT4, FP16, INT4, INT8
from hetsim.models.weights import decoder_weight_bytes, embedding_bytes, weight_bytes

DATA = Path(__file__).parent / "data" / "hf-configs"


def _config(folder: str, **changes: object) -> dict:
    cfg = json.loads((DATA / folder / "config.json").read_text())
    cfg.update(changes)
    return cfg


def test_deepseek_with_zero_routed_experts_is_refused():
    # transformers builds a DeepseekV3MoE whenever n_routed_experts is not None: with 0 experts its gate
    # has no rows, which is no model; null is the dense one.
    with pytest.raises(InputError) as ei:
        spec_from_hf_dict(_config("DeepSeek-V2-Lite", n_routed_experts=0))
    assert ei.value.field == "n_routed_experts" and ">= 1" in ei.value.message
    dense = spec_from_hf_dict(_config("DeepSeek-V2-Lite", n_routed_experts=None))
    assert dense.num_experts == 1 and dense.dense_layers == 0


@pytest.mark.parametrize(
    ("folder", "key"),
    [
        ("Llama-2-7B", "num_key_value_heads"),
        ("Gemma-2-9B", "num_key_value_heads"),
        ("Falcon-7B", "num_kv_heads"),
    ],
)
def test_kv_heads_that_do_not_divide_the_heads_are_refused_by_their_key(folder, key):
    changes: dict[str, object] = {key: 3}
    if folder == "Falcon-7B":
        changes["new_decoder_architecture"] = True
    with pytest.raises(InputError) as ei:
        spec_from_hf_dict(_config(folder, **changes))
    assert ei.value.field == key and "does not divide num_attention_heads" in ei.value.message


# quantization_config as transformers writes it (4.46.3, src/transformers/utils/quantization_config.py:
# GPTQConfig, AwqConfig, BitsAndBytesConfig; DeepSeek-V3's published config.json for fp8).
GPTQ = {"bits": 4, "group_size": 128, "damp_percent": 0.01, "desc_act": False, "sym": True,
        "true_sequential": True, "quant_method": "gptq"}  # fmt: skip
AWQ = {"quant_method": "awq", "zero_point": True, "group_size": 128, "bits": 4, "version": "gemm"}


@pytest.mark.parametrize(
    ("quant", "weights"),
    [(GPTQ, "int4"), ({**GPTQ, "bits": 8}, "int8"), (AWQ, "int4"), ({"quant_method": "awq"}, "int4")],
)
def test_gptq_and_awq_checkpoints_are_their_weight_dtype(quant, weights):
    spec = spec_from_hf_dict(_config("Llama-2-7B", quantization_config=quant))
    assert spec.quantized == weights and spec.dtype == "fp16"
    assert spec_from_hf_dict(_config("Llama-2-7B")).quantized == ""


def test_a_gptq_or_awq_checkpoint_keeps_its_token_table_and_lm_head_at_its_own_precision():
    """GPTQ and AWQ quantise the decoder layers' linear modules only (optimum's GPTQ quantiser replaces
    the layers under the blocks; transformers' AWQ quantiser leaves out the output embedding): the
    tables of a Llama-2-7B GPTQ checkpoint are 2 x 32000 x 4096 fp16, ~0.39 GB more than int4's."""
    plain = spec_from_hf_dict(_config("Llama-2-7B"))
    table = plain.vocab * plain.hidden
    for quant, dt in ((GPTQ, INT4), ({**GPTQ, "bits": 8}, INT8), (AWQ, INT4)):
        q = spec_from_hf_dict(_config("Llama-2-7B", quantization_config=quant))
        gap = 2 * table * (FP16.bytes_per_element - dt.bytes_per_element)
        assert weight_bytes(q, dt) - weight_bytes(plain, dt) == pytest.approx(gap)
        assert decoder_weight_bytes(q, dt) == decoder_weight_bytes(plain, dt)
        # the ops read what the sizing holds: the head's matmul reads fp16, dequantises nothing
        (head,) = (o for o in step_ops(q, "decode", 1, 1, 16, dt) if o.name == "lm_head")
        assert head.weight_bytes == 2 * table and head.dequant_ops == 0
    assert weight_bytes(plain, INT4) - weight_bytes(plain, FP16) < -9e9  # hetsim's own int4: tables too
    assert embedding_bytes(plain, INT4) == table * INT4.bytes_per_element
    q = spec_from_hf_dict(_config("Llama-2-7B", quantization_config=GPTQ))
    assert embedding_bytes(q, FLEXGEN_INT4) == embedding_bytes(plain, FLEXGEN_INT4)  # FlexGen's own format


BNB = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
FP8 = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


@pytest.mark.parametrize(
    ("quant", "field"),
    [
        (BNB, "quantization_config.quant_method"),
        (FP8, "quantization_config.quant_method"),
        ({"bits": 4}, "quantization_config.quant_method"),
        ({**GPTQ, "bits": 3}, "quantization_config.bits"),
        ({**GPTQ, "bits": True}, "quantization_config.bits"),
        ({**GPTQ, "bits": None}, "quantization_config.bits"),
        ({**GPTQ, "bits": [4]}, "quantization_config.bits"),
        ({**GPTQ, "bits": {"4": 4}}, "quantization_config.bits"),
        ({**GPTQ, "group_size": -1}, "quantization_config.group_size"),
        ({**AWQ, "group_size": 64}, "quantization_config.group_size"),
        ({**AWQ, "bits": 8}, "quantization_config.bits"),  # AutoAWQ's kernels are 4-bit only
        ("gptq", "quantization_config"),
    ],
)
def test_a_quantization_hetsim_does_not_model_is_refused_saying_what_to_pass(quant, field):
    with pytest.raises(InputError) as ei:
        spec_from_hf_dict(_config("Llama-2-7B", quantization_config=quant), source="q/config.json")
    assert ei.value.source == "q/config.json" and ei.value.field == field
    assert field == "quantization_config" or "--dtype" in ei.value.message


def _checkpoint(tmp_path: Path, name: str, **changes: object) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_config("Llama-2-7B", **changes)))
    return str(folder)


_RUN = [
    "--hw",
    "mixed-lab",
    "--strategies",
    "gpu-only",
    "--batch",
    "1",
    "--prompt-len",
    "16",
    "--gen-len",
    "2",
]


def test_a_gptq_checkpoint_is_costed_at_its_weights_and_says_so(tmp_path, capsys):
    """A GPTQ 4-bit checkpoint was costed as fp16 (3.5 GB of weights as 13.5): now as --dtype int4 on
    the same shape but for its token table and LM head, which it keeps at 16 bits, and the output
    names the precision."""
    from hetsim.cli.commands import main

    quantized = _checkpoint(tmp_path, "q", quantization_config=GPTQ)
    plain = _checkpoint(tmp_path, "p")
    assert main(["compare", "--model", quantized, *_RUN, "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(["compare", "--model", plain, "--dtype", "int4", *_RUN, "--format", "json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert got["workload"] == want["workload"] and got["workload"]["weight_dtype"] == "int4"
    (g,), (w,) = got["results"], want["results"]
    assert g["plan"] == w["plan"] and g["lossy"] == w["lossy"] == "int4 weights"
    table = 32000 * 4096 * (FP16.bytes_per_element - INT4.bytes_per_element)  # ~0.194 GB each
    assert sum(g["peak_mem_bytes"].values()) - sum(w["peak_mem_bytes"].values()) == pytest.approx(2 * table)
    assert w["tpot_s"] < g["tpot_s"] < 1.05 * w["tpot_s"]  # the 16-bit head: 194 MB more read per token
    assert main(["compare", "--model", quantized, *_RUN]) == 0
    assert "weights int4 (lossy, the checkpoint's)" in capsys.readouterr().out


def test_another_dtype_for_a_quantised_checkpoint_is_refused(tmp_path, capsys):
    from hetsim.cli.commands import main

    quantized = _checkpoint(tmp_path, "q", quantization_config=GPTQ)
    assert main(["compare", "--model", quantized, *_RUN, "--dtype", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: --dtype: {quantized}:")
    assert "quantization_config" in err


def test_a_sweep_point_runs_a_quantised_checkpoint_at_its_weights(tmp_path):
    from hetsim.sweep.runner import run_point

    quantized = _checkpoint(tmp_path, "q", quantization_config=GPTQ)
    config = {"rig": "mixed-lab", "model": quantized, "strategy": "gpu-only", "batch": 1, "prompt_len": 16,
              "gen_len": 2, "objective": "latency", "search": True, "point_id": "p"}  # fmt: skip
    row = run_point(config)
    assert row["feasible"] and "int4" in row["lossy"] and not row["error"]
    row = run_point({**config, "dtype": "fp16"})
    assert not row["feasible"] and "quantization_config" in row["error"]


def test_validate_refuses_a_quantised_checkpoint(tmp_path):
    from validate.cli_impl import _spec

    with pytest.raises(InputError) as ei:
        _spec(_checkpoint(tmp_path, "q", quantization_config=GPTQ), None, None)
    assert ei.value.field == "--model" and "quantization_config" in ei.value.message


def test_a_plan_file_asking_another_dtype_of_a_quantised_checkpoint_names_its_field(tmp_path, capsys):
    """The plan file's key, not --dtype (a flag the user never gave)."""
    from hetsim.cli.commands import main

    quantized = _checkpoint(tmp_path, "q", quantization_config=GPTQ)
    plan = tmp_path / "plan.json"
    run = ["--strategy" if a == "--strategies" else a for a in _RUN]
    assert main(["plan", "--model", quantized, *run, "--out", str(plan)]) == 0
    capsys.readouterr()
    plan.write_text(plan.read_text().replace('"int4"', '"fp16"'))
    assert main(["simulate", "--plan", str(plan)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {plan}: workload.weight_dtype: {quantized}: its weights are int4")
    assert "--dtype" not in err and err.count("\n") == 0


def test_a_strategy_that_cannot_run_a_checkpoints_own_weights_says_they_are_the_checkpoints(tmp_path, capsys):
    """No --dtype was given: the reason named a flag the user never typed."""
    from hetsim.cli.commands import main

    quantized = _checkpoint(tmp_path, "q", quantization_config=GPTQ)
    run = [a if a != "gpu-only" else "accelerate" for a in _RUN]
    assert main(["compare", "--model", quantized, *run, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["reason"] == (
        "not applicable: the checkpoint's int4 weights (config.json quantization_config) are not a weight "
        "precision it runs (offers: fp16)"
    )
    plain = _checkpoint(tmp_path, "p")
    assert main(["compare", "--model", plain, *run, "--dtype", "int4", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["reason"] == "not applicable: --dtype int4 is not a weight precision it runs (offers: fp16)"


def test_a_gptqmodel_checkpoint_with_a_quantised_lm_head_costs_it_at_its_bits():
    """GPTQModel writes ``lm_head: true`` when it quantised the head too: it was read as 16-bit
    (Llama-2-7B: 32000 x 4096 at 2 bytes, ~0.19 GB more than int4's, and every decode step read it)."""
    plain = spec_from_hf_dict(_config("Llama-2-7B", quantization_config=GPTQ))
    for quant, dt in (({**GPTQ, "lm_head": True}, INT4), ({**GPTQ, "bits": 8, "lm_head": True}, INT8)):
        q = spec_from_hf_dict(_config("Llama-2-7B", quantization_config=quant))
        assert q.quantized_head and not plain.quantized_head
        head = q.vocab * q.hidden
        gap = head * (FP16.bytes_per_element - dt.bytes_per_element)
        plain_dt = spec_from_hf_dict(_config("Llama-2-7B", quantization_config={**quant, "lm_head": False}))
        assert weight_bytes(plain_dt, dt) - weight_bytes(q, dt) == pytest.approx(gap)
        assert embedding_bytes(q, dt) == embedding_bytes(plain_dt, dt)  # the token table stays 16-bit
        (op,) = (o for o in step_ops(q, "decode", 1, 1, 16, dt) if o.name == "lm_head")
        assert op.weight_bytes == pytest.approx(head * dt.bytes_per_element) and op.dequant_ops > 0


@pytest.mark.parametrize(
    ("folder", "quant", "field", "words"),
    [
        ("Llama-2-7B", {**GPTQ, "lm_head": "yes"}, "quantization_config.lm_head", "expected true or false"),
        ("Llama-2-7B", {**GPTQ, "lm_head": 1}, "quantization_config.lm_head", "expected true or false"),
        ("Gemma-2-9B", {**GPTQ, "lm_head": True}, "quantization_config.lm_head", "tied to the token table"),
        ("Llama-2-7B", {**GPTQ, "lm_head": True, "modules_to_not_convert": ["lm_head"]},
         "quantization_config.lm_head", "keeps lm_head at 16 bits"),
        ("Llama-2-7B", {**AWQ, "modules_to_not_convert": ["q_proj"]},
         "quantization_config.modules_to_not_convert", "keeping 'q_proj' at 16 bits is not modelled"),
        ("Llama-2-7B", {**AWQ, "modules_to_not_convert": ["lm_head", "visual"]},
         "quantization_config.modules_to_not_convert", "keeping 'visual' at 16 bits"),
        ("Llama-2-7B", {**AWQ, "modules_to_not_convert": "gate"},
         "quantization_config.modules_to_not_convert", "expected a list of module names"),
        ("Llama-2-7B", {**AWQ, "modules_to_not_convert": [3]},
         "quantization_config.modules_to_not_convert", "expected a list of module names"),
    ],
)  # fmt: skip
def test_quantised_modules_hetsim_cannot_cost_are_refused_naming_the_field(folder, quant, field, words):
    """AWQ's modules_to_not_convert kept modules at 16 bits that hetsim costed at int4, silently."""
    with pytest.raises(InputError) as ei:
        spec_from_hf_dict(_config(folder, quantization_config=quant), source="q/config.json")
    assert ei.value.source == "q/config.json" and ei.value.field == field and words in ei.value.message


@pytest.mark.parametrize("keep", [None, [], ["lm_head"], ["lm_head", "embed_tokens"], ["gate"]])
def test_modules_to_not_convert_that_stay_16_bit_anyway_change_nothing(keep):
    q = spec_from_hf_dict(_config("Llama-2-7B", quantization_config={**AWQ, "modules_to_not_convert": keep}))
    assert q == spec_from_hf_dict(_config("Llama-2-7B", quantization_config=AWQ))


def test_an_awq_moe_checkpoint_that_keeps_its_router_costs_it_at_16_bits():
    """AutoAWQ leaves Mixtral's router (``gate``) unquantised and says so in modules_to_not_convert: it was
    costed at int4 (8 x 4096 per layer: 1.5 MB less over 32 layers than the 16-bit router it is)."""
    plain = spec_from_hf_dict(_config("Mixtral-8x7B", quantization_config=AWQ))
    kept = spec_from_hf_dict(
        _config("Mixtral-8x7B", quantization_config={**AWQ, "modules_to_not_convert": ["gate"]})
    )
    assert kept.router_16bit and not plain.router_16bit
    router = kept.num_experts * kept.hidden
    gap = kept.layers * router * (FP16.bytes_per_element - INT4.bytes_per_element)
    assert weight_bytes(kept, INT4) - weight_bytes(plain, INT4) == pytest.approx(gap)
    for spec, want in ((kept, FP16), (plain, INT4)):
        (op,) = (o for o in step_ops(spec, "decode", 1, 1, 16, INT4) if o.name == "router" and o.layer == 0)
        assert op.weight_bytes == pytest.approx(router * want.bytes_per_element)
        assert (op.dequant_ops == 0) == (want is FP16)


def test_flexgen_is_not_applicable_to_a_gptq_or_awq_checkpoint(tmp_path, capsys):
    """FlexGen reads 16-bit weights and packs them into its own group-64 4-bit format; it cannot load a
    GPTQ/AWQ checkpoint, which was costed as if --compress-weight had packed it. Now an infeasible row
    saying why (compare), a one-line no-plan (plan), not an error; an fp16 checkpoint at --dtype int4
    still runs."""
    from hetsim.cli.commands import main

    run = ["--hw", "flexgen-t4", "--batch", "4", "--prompt-len", "16", "--gen-len", "2"]
    why = "not applicable: FlexGen cannot load a GPTQ/AWQ int4 checkpoint (config.json quantization_config)"
    for quant in (GPTQ, AWQ):
        quantized = _checkpoint(tmp_path, quant["quant_method"], quantization_config=quant)
        assert (
            main(["compare", "--model", quantized, "--strategies", "flexgen", *run, "--format", "json"]) == 0
        )
        (row,) = json.loads(capsys.readouterr().out)["results"]
        assert not row["feasible"] and row["strategy"] == "flexgen" and row["reason"].startswith(why)
        plan = [
            "plan",
            "--model",
            quantized,
            "--strategy",
            "flexgen",
            *run,
            "--out",
            str(tmp_path / "p.json"),
        ]
        assert main(plan) == 1
        err = capsys.readouterr().err.strip()
        assert why in err and err.count("\n") == 0
    plain = _checkpoint(tmp_path, "p")
    assert (
        main(
            [
                "compare",
                "--model",
                plain,
                "--dtype",
                "int4",
                "--strategies",
                "flexgen",
                *run,
                "--format",
                "json",
            ]
        )
        == 0
    )
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["feasible"] and row["lossy"].startswith("4-bit weights")


def test_a_flexgen_plan_file_on_a_gptq_or_awq_checkpoint_is_refused(tmp_path, capsys):
    """``simulate --plan`` runs a plan file without the search's applicability check: a FlexGen plan
    written for an fp16 checkpoint (--dtype int4, so --compress-weight) and pointed at a GPTQ/AWQ one
    was costed in FlexGen's own group-64 format, as ``compare`` no longer does; now the plan file's
    model is refused with the same reason."""
    from hetsim.cli.commands import main

    run = ["--hw", "flexgen-t4", "--batch", "4", "--prompt-len", "16", "--gen-len", "2"]
    plain = _checkpoint(tmp_path, "p")
    written = tmp_path / "plan.json"
    assert (
        main(
            [
                "plan",
                "--model",
                plain,
                "--strategy",
                "flexgen",
                "--dtype",
                "int4",
                *run,
                "--out",
                str(written),
            ]
        )
        == 0
    )
    capsys.readouterr()
    for quant in (GPTQ, AWQ):
        quantized = _checkpoint(tmp_path, quant["quant_method"], quantization_config=quant)
        doc = json.loads(written.read_text())
        doc["model"] = quantized
        plan = tmp_path / f"{quant['quant_method']}.json"
        plan.write_text(json.dumps(doc))
        assert main(["simulate", "--plan", str(plan), "--format", "json"]) == 2  # bad input
        err = capsys.readouterr().err.strip()
        why = "strategy: not applicable: FlexGen cannot load a GPTQ/AWQ int4 checkpoint"
        assert err.startswith(f"error: {plan}: {why}"), err
        assert err.count("\n") == 0
    assert main(["simulate", "--plan", str(written), "--format", "json"]) == 0


@pytest.mark.parametrize(("torch_dtype", "width"), [("float16", 2), ("bfloat16", 2), ("float32", 4)])
def test_an_awq_router_kept_apart_is_stored_at_the_checkpoints_dtype(torch_dtype, width):
    """AutoAWQ (0.2.9) quantises a model held at the dtype it loaded it in, the router left out, and saves
    that dtype as torch_dtype: an fp32 checkpoint's router is 32-bit, as its tables. Its memory counted
    it at 16 bits (2 MiB less over Mixtral's 32 layers) while its matmul read it at 32."""
    cfg = {"torch_dtype": torch_dtype, "quantization_config": {**AWQ, "modules_to_not_convert": ["gate"]}}
    kept = spec_from_hf_dict(_config("Mixtral-8x7B", **cfg))
    plain = spec_from_hf_dict(_config("Mixtral-8x7B", **{**cfg, "quantization_config": AWQ}))
    router = kept.num_experts * kept.hidden
    gap = kept.layers * router * (width - INT4.bytes_per_element)
    assert weight_bytes(kept, INT4) - weight_bytes(plain, INT4) == pytest.approx(gap)
    (op,) = (o for o in step_ops(kept, "decode", 1, 1, 16, INT4) if o.name == "router" and o.layer == 0)
    assert op.weight_bytes == router * width  # what it reads is what it holds
