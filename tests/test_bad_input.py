"""Bad input at the boundary: one InputError naming file and field (exit 2 from the CLI), never a
traceback, a hang or a silently wrong number (issue 19)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hetsim.cli.commands import main
from hetsim.errors import InputError
from hetsim.hardware import load_rig
from hetsim.textfiles import parse_yaml

RIG = """\
name: tiny
nodes:
  - cpus: [xeon-8480+]
    host_memory: {value: 64 GB, source: test, grade: assumed}
    gpus: [t4, l4]
"""


def _rig_error(tmp_path: Path, text: str) -> InputError:
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_rig(path)
    assert info.value.source == str(path)
    return info.value


def _gpu_override(key: str, value: str) -> str:
    return RIG.replace(
        "gpus: [t4, l4]", f"gpus: [t4, {{model: l4, {key}: {{value: {value}, source: x, grade: assumed}}}}]"
    )


@pytest.mark.parametrize("key", ["memory", "memory_bandwidth"])
@pytest.mark.parametrize("value", ["0", "0 GB", ".inf", "inf", ".nan", "-1", "1e400", "1e-400"])
def test_gpu_quantities_finite_and_positive(tmp_path, key, value):
    err = _rig_error(tmp_path, _gpu_override(key, value))
    assert err.field == f"nodes[0].gpus[1].{key}"


def test_peak_flops_zero_refused(tmp_path):
    text = RIG.replace(
        "gpus: [t4, l4]", "gpus: [{model: l4, peak_flops: {fp16: {value: 0, source: x, grade: assumed}}}]"
    )
    err = _rig_error(tmp_path, text)
    assert err.field == "nodes[0].gpus[0].peak_flops.fp16"


def test_efficiency_zero_refused(tmp_path):
    text = RIG.replace(
        "gpus: [t4, l4]",
        "gpus: [{model: l4, efficiency: {compute: {matmul: {value: 0, source: x, grade: assumed}}}}]",
    )
    err = _rig_error(tmp_path, text)
    assert "efficiency" in err.field and "fraction" in err.message


def test_link_bandwidth_zero_refused(tmp_path):
    text = RIG.replace(
        "gpus: [t4, l4]",
        "gpus: [{model: l4, host_link: {link: pcie4-x16,"
        " bandwidth: {value: 0 GB/s, source: x, grade: assumed}}}]",
    )
    err = _rig_error(tmp_path, text)
    assert err.field.startswith("nodes[0].gpus[0].host_link")


def test_zero_latency_and_price_allowed(tmp_path):
    path = tmp_path / "rig.yaml"
    path.write_text(
        RIG.replace(
            "gpus: [t4, l4]",
            "gpus: [{model: l4, price_per_hour: {value: 0, source: x, grade: assumed},"
            " host_link: {link: pcie4-x16, latency: {value: 0 us, source: x, grade: assumed}}}]",
        )
    )
    rig = load_rig(path)
    assert rig.devices["n0.gpu0"].price_per_hour == 0.0
    assert rig.links["n0.pcie.gpu0"].latency_s == 0.0


@pytest.mark.parametrize("value", ["9" * 400, "-" + "9" * 400])
def test_a_quantity_past_a_float_is_refused(tmp_path, value):
    """An int past a float's range (YAML reads 400 digits as an int): float() raised OverflowError,
    a traceback, where 1e400 (inf) was already refused as not finite."""
    err = _rig_error(tmp_path, RIG.replace("{value: 64 GB,", "{value: " + value + ","))
    assert err.field == "nodes[0].host_memory" and "finite" in err.message
    assert len(err.message) < 120


def test_host_memory_true_refused(tmp_path):
    err = _rig_error(tmp_path, RIG.replace("{value: 64 GB,", "{value: true,"))
    assert err.field == "nodes[0].host_memory.value"


# pydantic's lax mode read these as another value (now textfiles.validate_strictly, as plans are)
A100S = "gpus: [a100-80g, a100-80g]\n    nvlink: {link: nvlink3, "
MEASURED = "{value: 1 us, source: x, grade: assumed}"
LAX_RIG = [
    ("gpus: [t4, l4]", A100S + "switch: 1}", "nodes[0].nvlink.switch"),
    ("gpus: [t4, l4]", A100S + "pairs: [[0, true]]}", "nodes[0].nvlink.pairs[0][1]"),
    ("name: tiny", "name: tiny\ndescription: 2024-01-01", "description"),  # a YAML date, not text (guard)
    # an override is read against the catalogue's schema: a count given as text
    ("gpus: [t4, l4]", "gpus: [t4, l4]\n    nic: {link: ethernet-25g, allreduce: [{ranks: '2', latency: "
     + MEASURED + ", bandwidth: " + MEASURED.replace("1 us", "1 GB/s") + "}]}",
     "nodes[0].nic.allreduce[0].ranks"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "field"), LAX_RIG)
def test_rig_values_of_another_type_are_refused(tmp_path, old, new, field):
    err = _rig_error(tmp_path, RIG.replace(old, new))
    assert err.field is not None and err.field.endswith(field), err


@pytest.mark.parametrize("kind", ["rig", "sweep"])
def test_nested_yaml_aliases_are_counted_not_expanded(tmp_path, capsys, kind):
    """A few lines of aliases nested nine deep hold 9**8 values: reading them strictly as JSON took
    44 s and 6.8 GB (lax pydantic stopped at the first unknown key; strict reading dumps it all)."""
    lines, prev = ["a: &a [x,x,x,x,x,x,x,x,x]"], "a"
    for name in "bcdefgh":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    path = tmp_path / "bomb.yaml"
    path.write_text(
        "\n".join([*lines, "name: x", "grids: [{batch: [1]}]" if kind == "sweep" else "nodes: []"])
    )
    args = ["hw", "show", str(path)] if kind == "rig" else ["sweep", str(path), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "values once its aliases are expanded" in err, err


def test_the_strict_rig_loads(tmp_path):
    path = tmp_path / "rig.yaml"
    path.write_text(RIG.replace("gpus: [t4, l4]", A100S + "switch: true, pairs: [[0, 1]]}"))
    assert load_rig(path).name == "tiny"


def test_cores_inf_refused(tmp_path):
    text = RIG.replace(
        "cpus: [xeon-8480+]", "cpus: [{model: xeon-8480+, cores: {value: .inf, source: x, grade: assumed}}]"
    )
    err = _rig_error(tmp_path, text)
    assert err.field == "nodes[0].cpus[0].cores"


def test_unknown_network_link_refused_even_with_one_region(tmp_path):
    err = _rig_error(tmp_path, RIG + "network: {wan: warp-drive}\n")
    assert err.field == "network.wan" and "warp-drive" in err.message


def test_unknown_upi_refused_on_one_socket(tmp_path):
    err = _rig_error(tmp_path, RIG.replace("    gpus: [t4, l4]", "    gpus: [t4, l4]\n    upi: upi-99gt"))
    assert err.field == "nodes[0].upi"


def test_duplicate_yaml_key_refused(tmp_path):
    err = _rig_error(tmp_path, RIG + "name: other\n")
    assert "duplicate key 'name'" in err.message


def test_exponent_float_is_a_number():
    assert parse_yaml("a: 1e-9\nb: 2E+3\nc: 12\nd: 1.5\ne: '1e-9'\n", "x") == {
        "a": 1e-9,
        "b": 2000.0,
        "c": 12,
        "d": 1.5,
        "e": "1e-9",
    }


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00binary\x00", "name: caf\xe9\n".encode("latin-1")])
@pytest.mark.parametrize("kind", ["rig", "plan", "config", "trace", "sweep"])
def test_not_utf8_one_line(tmp_path, capsys, payload, kind):
    bad = (
        tmp_path
        / {"rig": "r.yaml", "plan": "p.json", "config": "config.json", "trace": "t.csv", "sweep": "s.yaml"}[
            kind
        ]
    )
    bad.write_bytes(payload)
    argv = {
        "rig": ["hw", "show", str(bad)],
        "plan": ["simulate", "--plan", str(bad)],
        "config": ["model", "show", str(bad)],
        "trace": ["serve", "--model", "llama2-7b", "--hw", "mixed-lab", "--requests", str(bad)],
        "sweep": ["sweep", str(bad), "--out", str(tmp_path / "o")],
    }[kind]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "UTF-8" in err


def test_hw_show_json_is_finite(capsys):
    assert main(["hw", "show", "mixed-lab", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    nums = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, float):
            nums.append(x)

    walk(doc)
    assert nums and all(math.isfinite(v) for v in nums)


# ---- plans from files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """One searched plan document per strategy (opt-13b on mixed-lab), as written by `plan --out`."""
    folder = tmp_path_factory.mktemp("plans")
    docs = {}
    for s in ("gpu-only", "accelerate", "deepspeed", "flexgen", "hetegen", "hexgen", "cpu-tp"):
        path = folder / f"{s}.json"
        assert (
            main(
                [
                    "plan",
                    "--model",
                    "opt-13b",
                    "--hw",
                    "mixed-lab",
                    "--strategy",
                    s,
                    "--batch",
                    "1",
                    "--out",
                    str(path),
                ]
            )
            == 0
        )
        docs[s] = json.loads(path.read_text())
    return docs


def _set(doc, dotted, value):
    *parents, last = dotted.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


TAMPERED = [
    ("gpu-only", "params.stages.0.layers", 8, "params.stages"),
    ("gpu-only", "params.stages.0.layers", 0, "params.stages"),
    ("gpu-only", "params.stages", [], "params.stages"),
    ("gpu-only", "params.micro_batches", 0, "params.micro_batches"),
    ("accelerate", "params.gpu_layers", 99, "params.gpu_layers"),
    ("accelerate", "params.cpu_layers", -3, "params.cpu_layers"),
    ("accelerate", "params.batch_per_pass", 0, "params.batch_per_pass"),
    ("deepspeed", "params.batch_per_pass", 0, "params.batch_per_pass"),
    ("deepspeed", "params.gpu_mem_budget", -1.0, "params.gpu_mem_budget"),
    ("deepspeed", "params.offload", "tape", "params.offload"),
    ("deepspeed", "params.offload", "nvme", "params.disk"),  # nvme without a disk
    ("deepspeed", "params.disk", "n0.gpu0", "params.disk"),
    ("cpu-tp", "params.weight_copies", 0, "params.weight_copies"),
    ("cpu-tp", "params.ranks", [], "params.ranks"),
    ("cpu-tp", "params.weight_dtype", "fp7", "params.weight_dtype"),
    ("hetegen", "params.alpha_decode.fc1", 1.5, "params.alpha_decode.fc1"),
    ("hetegen", "params.alpha_prefill.fc1", -0.5, "params.alpha_prefill.fc1"),
    ("flexgen", "params.wg", float("nan"), "params.wg"),
    ("flexgen", "params.wc", 101.0, "params.wc"),
    ("flexgen", "params.gpu_batch_size", 0, "params.gpu_batch_size"),
    ("hexgen", "params.replicas", [], "params.replicas"),
    ("hexgen", "params.max_batch", 0, "params.max_batch"),
    ("gpu-only", "params", {}, "params"),
    ("flexgen", "params", {}, "params"),
    ("gpu-only", "strategy", "flexgen", "params."),  # a gpu-only plan under flexgen's name
    ("hexgen", "workload.batch", 0, "batch"),
    ("gpu-only", "hetsim_plan", 99, "hetsim_plan"),
    ("gpu-only", "objective", "speed", "objective"),
    ("gpu-only", "gpu_mem_budget", -5, "gpu_mem_budget"),
    ("gpu-only", "params.stages.0.devices.0", "n0.cpu0", "params.stages[0].devices[0]"),
    ("hexgen", "params.replicas.0.stages.0.devices", ["n0.gpu0", "n1.gpu0"], "params.replicas[0].stages[0]"),
    ("accelerate", "params.gpu", "n0.cpu0", "params.gpu"),
    ("deepspeed", "params.cpu", "n0.gpu0", "params.cpu"),
    ("cpu-tp", "params.ranks.0", "n0.gpu0", "params.ranks[0]"),
    ("hexgen", "workload.batch", 2**40, "batch"),
    # found reading the audit's exit-0 cases: a pass larger than the batch sized the KV cache for sequences
    # that do not exist (peak memory 13.5 -> 14.7 GB at 64, silently); 1e308 s of sync overflowed the engine
    ("accelerate", "params.batch_per_pass", 2, "params.batch_per_pass: must be in [1, 1]"),
    ("deepspeed", "params.batch_per_pass", 64, "params.batch_per_pass: must be in [1, 1]"),
    ("hetegen", "params.split_sync_s", 1e308, "params.split_sync_s: must be in [0, 1]"),
]


@pytest.mark.parametrize(("strategy", "path", "value", "field"), TAMPERED)
def test_tampered_plan_refused(tmp_path, capsys, plans, strategy, path, value, field):
    doc = json.loads(json.dumps(plans[strategy]))
    _set(doc, path, value)
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps(doc))  # NaN is written as NaN, which Python's json reads back
    assert main(["simulate", "--plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: ") and field in err, err


# pydantic's lax mode read these as another value: true as 1, "3" as 3, 1 as true (one place now:
# plan_io.validate_strictly, for every plan model and the plan document)
LAX = [
    ("gpu-only", "params.micro_batches", True, "params.micro_batches"),
    ("gpu-only", "params.stages.0.layers", "40", "params.stages[0].layers"),
    ("hexgen", "params.max_batch", True, "params.max_batch"),
    ("hexgen", "params.symmetric", 1, "params.symmetric"),
    ("flexgen", "params.wg", "100", "params.wg"),
    ("flexgen", "params.cpu_attention", "false", "params.cpu_attention"),
    ("flexgen", "params.gpu_batch_size", True, "params.gpu_batch_size"),
    ("accelerate", "params.pinned", 0, "params.pinned"),
    ("deepspeed", "params.batch_per_pass", "1", "params.batch_per_pass"),
    ("cpu-tp", "params.weight_copies", True, "params.weight_copies"),
    ("hetegen", "params.gpu_mem_budget", True, "params.gpu_mem_budget"),
    ("hexgen", "workload.batch", True, "workload.batch"),
    ("gpu-only", "workload.gen_len", "32", "workload.gen_len"),
    ("gpu-only", "gpu_mem_budget", "24e9", "gpu_mem_budget"),
    ("gpu-only", "hetsim_plan", True, "hetsim_plan: Input should be 1, not true"),  # Literal[1] took it
]


# the field named in full (the audit's check that each line names its field): Workload's own check
# said "batch", an unknown rig named no field; 1e308 where a count goes stays a float (refused), not a
# 309-digit integer that overflowed later (a regression of the strict reading, caught by the audit)
NAMED = [
    ("gpu-only", "workload.batch", 0, "workload.batch: must be a positive integer"),
    ("hexgen", "workload.gen_len", 10**7, "workload.gen_len: must be <="),
    ("gpu-only", "hardware", "no-such-rig", "hardware: unknown rig"),
    ("flexgen", "params.gpu_batch_size", 1e308, "params.gpu_batch_size: Input should be a valid integer"),
    ("accelerate", "params.batch_per_pass", 1e300, "params.batch_per_pass"),
]


@pytest.mark.parametrize(("strategy", "path", "value", "field"), NAMED)
def test_a_plan_error_names_the_field_in_full(tmp_path, capsys, plans, strategy, path, value, field):
    test_tampered_plan_refused(tmp_path, capsys, plans, strategy, path, value, field)


@pytest.mark.parametrize(("strategy", "path", "value", "field"), LAX)
def test_plan_values_of_another_json_type_are_refused(tmp_path, capsys, plans, strategy, path, value, field):
    test_tampered_plan_refused(tmp_path, capsys, plans, strategy, path, value, field)


@pytest.mark.parametrize(
    ("strategy", "path"),
    [("gpu-only", "params.micro_batches"), ("hexgen", "workload.batch"), ("flexgen", "params.wg")],
)
def test_a_whole_float_is_the_integer_it_names(tmp_path, capsys, plans, strategy, path):
    """2.0 where an integer goes (or 100.0 where a float goes) runs as 2: JSON does not tell them
    apart, and numpy or JavaScript write every number so. The same bytes out."""
    outs = []
    for as_float in (False, True):
        doc = json.loads(json.dumps(plans[strategy]))
        node = doc
        for key in path.split(".")[:-1]:
            node = node[key]
        value = node[path.split(".")[-1]]
        node[path.split(".")[-1]] = float(value) if as_float else int(value)
        f = tmp_path / f"plan-{as_float}.json"
        f.write_text(json.dumps(doc))
        assert main(["simulate", "--plan", str(f), "--format", "json"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_an_error_inside_a_file_a_plan_names_is_that_files(tmp_path, capsys, plans):
    """A rig or config.json the plan points to is read as itself: its own errors name it and their
    field (they named the plan file, with the rig's field); one it lacks names the plan's key."""
    rig = tmp_path / "rig.yaml"
    rig.write_text(RIG.replace("64 GB", "64 GBX"))
    config = tmp_path / "config.json"
    config.write_text('{"hidden_size": 8}')
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: a\nname: b\nnodes: []\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken" / "config.json"
    broken.write_text('{"hidden_size": 8,')
    cases = [
        ("hardware", str(rig), f"error: {rig}: nodes[0].host_memory: "),
        ("model", str(config), f"error: {config}: model_type: "),
        ("model", str(tmp_path / "none.json"), "plan.json: model: no such file"),
        # the whole file's errors (its line numbers) named the plan file too
        ("hardware", str(dup), f"error: {dup}: malformed YAML at line 2, column 1: duplicate key 'name'"),
        ("model", str(broken), f"error: {broken}: malformed JSON"),
        ("model", str(tmp_path / "empty"), "plan.json: model: a folder with no config.json in it"),
    ]
    for key, value, line in cases:
        doc = json.loads(json.dumps(plans["gpu-only"]))
        doc[key] = value
        bad = tmp_path / "plan.json"
        bad.write_text(json.dumps(doc))
        assert main(["simulate", "--plan", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and line in err, err


def test_untampered_plans_simulate(tmp_path, capsys, plans):
    for s, doc in plans.items():
        path = tmp_path / f"{s}.json"
        path.write_text(json.dumps(doc))
        assert main(["simulate", "--plan", str(path), "--format", "json"]) == 0, s
    capsys.readouterr()


# ---- infeasible as a result ----------------------------------------------------------------------
NO_ROUTE = """\
name: noroute
nodes:
  - count: 2
    cpus: [xeon-8480+]
    host_memory: {value: 256 GB, source: test, grade: assumed}
    gpus: [{model: a100-80g, count: 2}]
"""

T4_X40 = """\
name: t4x40
nodes:
  - count: 40
    cpus: [xeon-8480+]
    host_memory: {value: 64 GB, source: test, grade: assumed}
    gpus: [t4]
    nic: ethernet-10g
"""


def test_unconnected_nodes_hexgen_search_is_a_result(tmp_path, capsys):
    rig = tmp_path / "noroute.yaml"
    rig.write_text(NO_ROUTE)
    assert main(["compare", "--model", "llama2-13b", "--hw", str(rig), "--strategies", "hexgen",
                 "--format", "json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    (res,) = doc["results"]
    assert res["feasible"]  # one machine per replica: no route between machines is needed


def test_unconnected_nodes_serve_is_a_result(tmp_path, capsys):
    rig = tmp_path / "noroute.yaml"
    rig.write_text(NO_ROUTE)
    rc = main(["serve", "--model", "llama2-7b", "--hw", str(rig), "--rate", "1", "--num-requests", "10",
               "--format", "json"])  # fmt: skip
    out = capsys.readouterr()
    assert rc in (0, 1) and "Traceback" not in out.err
    if rc == 1:
        assert out.err.count("\n") == 1 and out.err.startswith("error: ")


def test_more_gpus_than_layers_default_plan(tmp_path, capsys):
    rig = tmp_path / "t4x40.yaml"
    rig.write_text(T4_X40)
    assert main(["compare", "--model", "llama2-7b", "--hw", str(rig), "--strategies", "hexgen",
                 "--no-search", "--format", "json"]) == 0  # fmt: skip
    (res,) = json.loads(capsys.readouterr().out)["results"]
    assert res["feasible"]
    stages = [s for r in res["plan"]["replicas"] for s in r["stages"]]
    assert len(stages) <= 32 and all(s["layers"] >= 1 for s in stages)


def test_context_beyond_model_limit_is_infeasible(capsys):
    # llama2-7b has 4096 positions
    rc = main(["plan", "--model", "llama2-7b", "--hw", "mixed-lab", "--strategy", "gpu-only",
               "--prompt-len", "4000", "--gen-len", "200"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "exceeds llama2-7b's maximum of 4096 positions" in err


# ---- flags ---------------------------------------------------------------------------------------
SERVE = ["serve", "--model", "llama2-7b", "--hw", "mixed-lab"]


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        ([*SERVE, "--rate", "inf"], "--rate"),
        ([*SERVE, "--rate", "nan"], "--rate"),
        ([*SERVE, "--rate", "1", "--seed", "-1"], "--seed"),
        ([*SERVE, "--rate", "1e9", "--duration", "1e9"], "--rate"),  # no duration fits 1e9 requests/s
        ([*SERVE, "--rate", "1", "--duration", "1e9"], "--duration"),
        ([*SERVE, "--rate", "1", "--num-requests", "100000000"], "--num-requests"),
        ([*SERVE, "--rate", "1", "--max-batch", str(2**62)], "--max-batch"),
        (["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--batch", str(2**63 - 1)], "batch"),
        (["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--gen-len", str(2**40)], "--gen-len"),
        (
            ["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--gpu-mem-budget", "1e400 GB"],
            "--gpu-mem-budget",
        ),
    ],
)
def test_absurd_flags_one_line(capsys, argv, field):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and field in err, err


def test_absurd_layer_count_config(tmp_path, capsys):
    cfg = {
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
        "vocab_size": 100, "max_position_embeddings": 128,
    }  # fmt: skip
    cfg["num_hidden_layers"] = 10**9
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert main(["model", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_hidden_layers" in err and "10000" in err


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("nodes:\n  - cpus", "nodes:\n  - count: 1000000000\n    cpus", "nodes[0].count"),
        ("nodes:\n  - cpus", "nodes:\n  - count: true\n    cpus", "nodes[0].count"),
        ("gpus: [t4, l4]", "gpus: [{model: t4, count: 100000}]", "nodes[0].gpus[0].count"),
    ],
)
def test_rig_size_bounded(tmp_path, old, new, field):
    err = _rig_error(tmp_path, RIG.replace(old, new))
    assert err.field == field


def test_total_nodes_bounded(tmp_path):
    node = RIG.split("nodes:\n", 1)[1].replace("  - cpus", "  - count: 600\n    cpus")
    err = _rig_error(tmp_path, RIG.split("nodes:\n", 1)[0] + "nodes:\n" + node + node)
    assert "1200 nodes; at most 1024" in err.message


def test_tiny_rates_refused(tmp_path):
    """A rate under the engine's floor (1 B/s counts as saturated) once looped past its timeline."""
    text = RIG.replace(
        "gpus: [t4, l4]",
        "gpus: [{model: t4, host_link: {link: pcie3-x16,"
        " bandwidth: {value: 1e-9, source: a, grade: assumed}}}]",
    )
    err = _rig_error(tmp_path, text)
    assert err.field == "nodes[0].gpus[0].host_link.bandwidth" and "1e+06" in err.message


def test_trace_arrivals_bounded(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_len,output_len\n1e308,10,10\n")
    assert main(["serve", "--model", "llama2-7b", "--hw", "mixed-lab", "--requests", str(trace)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "arrival_s" in err


def test_expert_count_bounded(tmp_path, capsys):
    cfg = {
        "model_type": "mixtral",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
        "num_local_experts": 10**8,
        "num_experts_per_tok": 2,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert main(["model", "show", str(path)]) == 2
    assert "num_local_experts" in capsys.readouterr().err


_PARENT: list[int] = []  # the test process's pid, for the module-level (picklable) stand-in below


def _dies_in_a_worker(names, ask):
    """compare's worker job, except that the worker process running cpu-tp dies as if killed."""
    import os

    from hetsim import api

    if os.getpid() != _PARENT[0] and "cpu-tp" in names:
        os._exit(137)
    return [ask.best(api.get_strategy(n)) for n in names]


def test_a_killed_search_worker_falls_back_to_searching_in_process(monkeypatch):
    """A worker of compare's process pool dying (killed for memory, say) is not a traceback: the
    strategies are searched again in the parent, with the same results as one process."""
    import os

    from hetsim import api

    _PARENT[:] = [os.getpid()]
    monkeypatch.setattr(api, "_best_by_names", _dies_in_a_worker)
    p = api.problem("llama2-7b", "mixed-lab", 1, 64, 2)
    pooled = api.compare(p, ["cpu-tp", "gpu-only"], workers=2)
    alone = api.compare(p, ["cpu-tp", "gpu-only"], workers=1)
    assert [r.to_dict() for r in pooled] == [r.to_dict() for r in alone]
    assert all(r.feasible for r in pooled)


def test_a_byte_order_mark_is_not_part_of_a_files_text(tmp_path):
    """Excel's "CSV UTF-8" and Windows editors start a file with a byte-order mark: a trace's first
    column was read as "\\ufeffarrival_s" ("missing column arrival_s"), a JSON file refused."""
    from hetsim.serving.workload import read_trace
    from hetsim.textfiles import parse_json, read_text

    trace = tmp_path / "t.csv"
    trace.write_bytes(b"\xef\xbb\xbfarrival_s,prompt_len,output_len\n0.5,16,4\n")
    [request] = read_trace(trace)
    assert (request.arrival_s, request.prompt_len, request.output_len) == (0.5, 16, 4)
    doc = tmp_path / "c.json"
    doc.write_bytes(b'\xef\xbb\xbf{"hidden_size": 8}')
    assert parse_json(read_text(doc), str(doc)) == {"hidden_size": 8}
    doc.write_bytes("\ufeff".encode() + b"x\xff")  # still refused where the rest is not UTF-8
    with pytest.raises(InputError, match="not a UTF-8 text file"):
        read_text(doc)
