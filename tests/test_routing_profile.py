"""Routing profiles (--routing-profile): per-layer expert frequencies set the distinct experts a batch
reads and which experts moe-offload keeps on the GPU; uniform stays the default."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim import api
from hetsim.cli.commands import main
from hetsim.models import get_model
from hetsim.models.layer_ops import distinct_experts, expected_distinct_experts
from hetsim.strategies.base import get_strategy
from hetsim.strategies.moe_offload import _layer_work
from hetsim.workload import read_routing_profile

QWEN = "qwen3-30b-a3b"  # 48 expert layers, 128 experts, top-8


def _write(tmp_path, doc, name="profile.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


@settings(max_examples=50, deadline=None)
@given(experts=st.integers(2, 256), k=st.integers(1, 8), tokens=st.integers(1, 4096))
def test_uniform_pick_probabilities_give_the_uniform_count(experts, k, tokens):
    k = min(k, experts)
    probs = (k / experts,) * experts
    assert distinct_experts(probs, tokens) == pytest.approx(expected_distinct_experts(experts, k, tokens))


@settings(max_examples=50, deadline=None)
@given(
    weights=st.lists(st.floats(0.0, 1.0), min_size=8, max_size=64).filter(lambda w: sum(w) > 0.1),
    tokens=st.integers(1, 512),
)
def test_distinct_experts_bounds(weights, tokens):
    # k = 1: the probabilities are the shares. One token hits one expert; more tokens never fewer,
    # never more than the experts with any share, nor more than the tokens.
    total = sum(weights)
    probs = tuple(w / total for w in weights)
    one = distinct_experts(probs, 1)
    assert one == pytest.approx(1.0)
    many = distinct_experts(probs, tokens)
    assert one - 1e-9 <= many <= min(tokens, sum(p > 0 for p in probs)) + 1e-9


def test_a_profile_of_k_experts_reads_only_them():
    # Every token picks the same 8 of 128: a batch of any size reads 8 experts (uniform: ~128 at 64).
    probs = (1.0,) * 8 + (0.0,) * 120
    assert distinct_experts(probs, 64) == pytest.approx(8.0)
    assert expected_distinct_experts(128, 8, 64) == pytest.approx(128 * (1 - (1 - 8 / 128) ** 64))


def test_uniform_file_equals_the_default(tmp_path):
    path = _write(tmp_path, {"layers": [[3] * 128]})
    for strategy in ("moe-offload", "layer-offload"):
        results = []
        for routing in (None, path):
            p = api.problem(QWEN, "ktransformers-1s", 8, 32, 3, routing_profile=routing)
            results.append(api.best_result(get_strategy(strategy), p, "latency"))
        assert results[0].tpot_s == pytest.approx(results[1].tpot_s, rel=1e-9), strategy
        assert results[0].ttft_s == pytest.approx(results[1].ttft_s, rel=1e-9), strategy


def test_skew_reads_fewer_experts_at_batch_b(tmp_path):
    # Half the picks on 16 experts: a batch of 16 tokens hits fewer distinct experts than uniformly.
    row = [1.0] * 16 + [16 / 112] * 112
    profile = read_routing_profile(_write(tmp_path, {"layers": [row]}))
    probs = profile.pick_probs(0, 8)
    assert sum(probs) == pytest.approx(8.0)
    skewed = distinct_experts(probs, 16)
    uniform = expected_distinct_experts(128, 8, 16)
    assert skewed < uniform
    m = get_model(QWEN)
    flat = _layer_work(m, "decode", 16, 1, 64, "bf16", "fp16", 1, True)
    work = _layer_work(m, "decode", 16, 1, 64, "bf16", "fp16", 1, True, 0, probs)
    by_name = {o.name: o for o in work.routed}
    for o in flat.routed:
        assert by_name[o.name].flops == o.flops  # every pick still computes
        assert by_name[o.name].weight_bytes == pytest.approx(o.weight_bytes * skewed / uniform)


def test_hot_experts_on_the_gpu_are_the_most_picked(tmp_path):
    # Experts 100..109 take 80 % of the picks; 10 experts on the GPU take exactly those.
    row = [0.2 / 118] * 128
    for e in range(100, 110):
        row[e] = 0.08
    probs = read_routing_profile(_write(tmp_path, {"layers": [row]})).pick_probs(0, 8)
    m = get_model(QWEN)
    flat = _layer_work(m, "decode", 1, 1, 64, "bf16", "fp16", 1, True, 10)
    work = _layer_work(m, "decode", 1, 1, 64, "bf16", "fp16", 1, True, 10, probs)
    cpu = {o.name: o for o in work.routed}
    full = _layer_work(m, "decode", 1, 1, 64, "bf16", "fp16", 1, True)
    gate = next(o for o in full.routed if o.name == "gate_proj")
    assert cpu["gate_proj"].flops == pytest.approx(0.2 * gate.flops)  # uniform: 118/128 of them
    flat_gate = next(o for o in flat.routed if o.name == "gate_proj")
    assert flat_gate.flops == pytest.approx(118 / 128 * gate.flops)
    gpu_gate = next(o for o in work.shared if o.name == "gate_proj")
    assert gpu_gate.flops == pytest.approx(0.8 * gate.flops)


def test_cli_routing_profile_shown_and_in_the_plan(tmp_path, capsys):
    row = [1.0 / (e + 10) ** 0.5 for e in range(128)]
    path = _write(tmp_path, {"description": "skewed", "layers": [row]})
    args = ["--model", QWEN, "--hw", "ktransformers-1s", "--prompt-len", "32", "--gen-len", "2",
            "--routing-profile", path]  # fmt: skip
    assert main(["compare", *args, "--strategies", "moe-offload"]) == 0
    assert "routing profile" in capsys.readouterr().out
    plan = tmp_path / "plan.json"
    assert main(["plan", *args, "--strategy", "moe-offload", "--out", str(plan)]) == 0
    capsys.readouterr()
    assert json.loads(plan.read_text())["workload"]["routing_profile"] == path
    assert main(["simulate", "--plan", str(plan), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["workload"]["routing_profile"] == path


@pytest.mark.parametrize(
    ("doc", "model", "field"),
    [
        ("layers: [[1, 2], oops", QWEN, "malformed YAML"),
        ({"rows": [[1] * 128]}, QWEN, "rows"),
        ({"layers": []}, QWEN, "layers"),
        ({"layers": [[1] * 128, [1] * 128]}, QWEN, "layers: has 2 rows"),
        ({"layers": [[1] * 127]}, QWEN, "layers[0]: has 127 experts"),
        ({"layers": [[1] * 127 + [-1]]}, QWEN, "layers[0][127]"),
        ({"layers": [[1] * 127 + [True]]}, QWEN, "layers[0][127]"),
        ({"layers": [[0] * 128]}, QWEN, "layers[0]: all counts are zero"),
        ({"layers": [[1000] + [1] * 127]}, QWEN, "layers[0]: expert 0 takes"),
        ({"layers": [[1] * 128]}, "llama2-7b", "routes to no experts"),
        # found reading the bad-input audit's exit-0 cases: shares of a sum past a float were each 0
        # (no expert ever picked, a result all the same); a 400-digit count's float() an OverflowError
        ({"layers": [[1e308, 1e308] + [1] * 126]}, QWEN, "layers[0]: the counts add up past"),
        ({"layers": [[10**308] * 2 + [1] * 126]}, QWEN, "layers[0]: the counts add up past"),
        ({"layers": [[10**400] + [1] * 127]}, QWEN, "layers[0][0]: must be a non-negative number"),
    ],
)
def test_bad_profile_one_line_exit_2(tmp_path, capsys, doc, model, field):
    path = _write(tmp_path, doc, "p.yaml")
    argv = ["compare", "--model", model, "--hw", "ktransformers-1s", "--routing-profile", path]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --routing-profile {path}") and field in err, err


def test_missing_profile_one_line(tmp_path, capsys):
    path = str(tmp_path / "nope.yaml")
    assert main(["compare", "--model", QWEN, "--hw", "ktransformers-1s", "--routing-profile", path]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --routing-profile {path}: no such file\n"


def test_skewed_profile_speeds_up_both_strategies_at_batch_b(tmp_path):
    # Half the picks on 16 experts: a decode batch of 16 reads fewer distinct experts on the CPU.
    path = _write(tmp_path, {"layers": [[1.0] * 16 + [16 / 112] * 112]})
    for strategy in ("moe-offload", "layer-offload"):
        tpot = []
        for routing in (None, path):
            p = api.problem(QWEN, "ktransformers-1s", 16, 32, 3, None, "q4_k_m", routing_profile=routing)
            tpot.append(api.best_result(get_strategy(strategy), p, "latency", search=False).tpot_s)
        assert tpot[1] < tpot[0], strategy
