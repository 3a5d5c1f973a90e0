"""The command line's contract on generated input, valid and broken (issue 19).

Every run of ``hetsim.cli.main`` (in process, so no traceback can hide) either

- exits 0 with a physical result: every time finite and >= 0, throughput finite and > 0 when
  feasible, peak memory within the device's capacity, JSON without NaN or infinity; or
- exits 1 (no feasible plan) or 2 (bad input) with exactly one ``error:`` line on stderr;

and never raises. Generated: rigs (numbers, booleans, strings, unknown link names, duplicate keys,
bytes that are not UTF-8), config.json files, tampered plan files and command-line flags.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hetsim.cli.commands import main
from hetsim.hardware import load_rig

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW_PROPS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ---- the contract ------------------------------------------------------------------------------
def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    event(f"{argv[0]} exit {rc}")  # the share of each outcome shows in --hypothesis-show-statistics
    return rc, out.out, out.err


def _one_error_line(err: str) -> None:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err


def _finite_json(text: str) -> Any:
    # the standard library reads NaN and Infinity; refuse them
    def bad(token: str) -> float:
        raise AssertionError(f"non-finite number {token} in the output")

    return json.loads(text, parse_constant=bad)


def _physical(result: dict[str, Any], capacity: dict[str, float]) -> None:
    for key in ("ttft_s", "tpot_s", "e2e_s", "throughput_tok_s", "cost_usd_per_mtok"):
        v = result.get(key)
        if v is not None:
            assert math.isfinite(v) and v >= 0, (key, v)
    if result["feasible"]:
        assert result["e2e_s"] > 0 and result["throughput_tok_s"] > 0
        for dev, peak in result["peak_mem_bytes"].items():
            assert 0 <= peak <= capacity[dev] * (1 + 1e-9), (dev, peak, capacity[dev])
    else:
        assert result["reason"]


def _check_compare(rc: int, out: str, err: str, rig: str) -> None:
    if rc == 0:
        doc = _finite_json(out)
        r = load_rig(rig)
        capacity = {
            **{d.name: d.mem_bytes for d in r.devices.values()},
            **{d.name: d.capacity_bytes for d in r.disks.values()},
        }
        for result in doc["results"]:
            _physical(result, capacity)
    else:
        assert rc in (1, 2), rc
        _one_error_line(err)


# ---- generated rigs ------------------------------------------------------------------------------
def _q(value: Any) -> dict[str, Any]:
    return {"value": value, "source": "generated", "grade": "assumed"}


NUMBERS = st.one_of(
    st.sampled_from([0, -1, 1, 1e-300, 1e300, float("inf"), float("nan"), True, False, None, "", "abc"]),
    st.sampled_from(["0 GB", "16 GB", "-4 GB", "inf GB", "1e-9", "12 GB/s", "65 TFLOPS", "30 us", "2.0 GHz"]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
)

# (path inside the rig's first node, the kind of value a valid one is)
FIELDS = [
    ("host_memory", "64 GB"),
    ("gpus.0.memory", "16 GB"),
    ("gpus.0.memory_bandwidth", "300 GB/s"),
    ("gpus.0.peak_flops.fp16", "65 TFLOPS"),
    ("gpus.0.price_per_hour", 0.5),
    ("gpus.0.efficiency.memory", 0.8),
    ("gpus.0.efficiency.compute.matmul", 0.7),
    ("gpus.0.efficiency.overhead", "10 us"),
    ("gpus.0.host_link.bandwidth", "12 GB/s"),
    ("gpus.0.host_link.latency", "10 us"),
    ("cpus.0.cores", 32),
    ("cpus.0.memory_bandwidth", "200 GB/s"),
    ("cpus.0.peak_flops.fp32", "2 TFLOPS"),
    ("nic.bandwidth", "10 Gb/s"),
    ("straggler_fraction", 0.05),
]


def _base_rig() -> dict[str, Any]:
    return {
        "name": "generated",
        "nodes": [
            {
                "count": 2,
                "cpus": [{"model": "xeon-8480+"}],
                "host_memory": _q("64 GB"),
                "gpus": [{"model": "t4", "host_link": {"link": "pcie3-x16"}}],
                "nic": {"link": "ethernet-10g"},
            }
        ],
    }


def _put(node: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
    node[keys[-1]] = value if keys[-1] in ("host_link",) else _q(value)


@st.composite
def rig_texts(draw: st.DrawFn) -> bytes:
    rig = _base_rig()
    node = rig["nodes"][0]
    for path, valid in draw(st.lists(st.sampled_from(FIELDS), min_size=0, max_size=2, unique=True)):
        _put(node, path, draw(_mostly(st.just(valid), NUMBERS)))
    if draw(st.booleans()):
        node["count"] = draw(st.sampled_from([0, 1, 3, 40, -2, True]))
    if draw(st.booleans()):
        rig["network"] = {"wan": draw(st.sampled_from(["wan", "warp-drive", 7]))}
    if draw(st.booleans()):
        node["nic"] = {"link": draw(st.sampled_from(["ethernet-10g", "no-such-nic", ""]))}
    text = json.dumps(rig, allow_nan=True).replace("NaN", ".nan").replace("-Infinity", "-.inf")
    text = text.replace("Infinity", ".inf")  # JSON is YAML flow style, with YAML's spellings
    # a duplicate key, or a Latin-1 byte that is not UTF-8
    return text.encode() + draw(st.sampled_from([b"", b"\nname: twice\n", b"\n# caf\xe9\n"]))


@PROPS
@given(data=rig_texts())
def test_generated_rigs_hw_show(tmp_path_factory, capsys, data):
    path = tmp_path_factory.mktemp("rig") / "rig.yaml"
    path.write_bytes(data)
    rc, out, err = _run(capsys, ["hw", "show", str(path), "--format", "json"])
    if rc == 0:
        doc = _finite_json(out)
        assert all(d["mem_bytes"] > 0 and d["mem_bw"] > 0 for d in doc["devices"])
        assert all(lk["bw"] > 0 and lk["latency_s"] >= 0 for lk in doc["links"])
    else:
        assert rc == 2
        _one_error_line(err)


@SLOW_PROPS
@given(data=rig_texts(), strategy=st.sampled_from(["gpu-only", "hexgen", "accelerate", "cpu-tp"]))
def test_generated_rigs_compare(tmp_path_factory, capsys, data, strategy):
    path = tmp_path_factory.mktemp("rig") / "rig.yaml"
    path.write_bytes(data)
    argv = [
        "compare",
        "--model",
        "llama2-7b",
        "--hw",
        str(path),
        "--strategies",
        strategy,
        "--no-search",
        "--prompt-len",
        "32",
        "--gen-len",
        "2",
        "--format",
        "json",
    ]
    rc, out, err = _run(capsys, argv)
    _check_compare(rc, out, err, str(path))


# ---- generated config.json ----------------------------------------------------------------------
INTS = st.one_of(
    st.integers(min_value=-3, max_value=300),
    st.sampled_from([0, 2**31, 10**9, 2**63, 1.5, 64.0, True, None, "64", [], {}]),
)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model_type": draw(st.sampled_from(["llama", "llama", "opt", "qwen2", "bert", 3])),
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
        "max_position_embeddings": 256,
        "ffn_dim": 128,
    }
    for key in draw(st.lists(st.sampled_from([*sorted(cfg)[1:], "num_key_value_heads"]), max_size=3)):
        cfg[key] = draw(INTS)
    return cfg


@PROPS
@given(cfg=configs())
def test_generated_configs(tmp_path_factory, capsys, cfg):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(cfg))
    rc, out, err = _run(capsys, ["model", "show", str(path), "--format", "json"])
    if rc != 0:
        assert rc == 2
        _one_error_line(err)
        return
    _finite_json(out)
    rc, out, err = _run(
        capsys,
        [
            "compare",
            "--model",
            str(path),
            "--hw",
            "mixed-lab",
            "--strategies",
            "gpu-only",
            "--no-search",
            "--prompt-len",
            "16",
            "--gen-len",
            "2",
            "--format",
            "json",
        ],
    )
    _check_compare(rc, out, err, "mixed-lab")


# ---- tampered plan files ------------------------------------------------------------------------
STRATEGIES = ("gpu-only", "accelerate", "deepspeed", "flexgen", "hetegen", "hexgen", "cpu-tp")


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("plans")
    docs = {}
    for s in STRATEGIES:
        path = folder / f"{s}.json"
        argv = [
            "plan",
            "--model",
            "opt-6.7b",
            "--hw",
            "mixed-lab",
            "--strategy",
            s,
            "--prompt-len",
            "64",
            "--gen-len",
            "4",
            "--out",
            str(path),
        ]
        assert main(argv) == 0
        docs[s] = json.loads(path.read_text())
    return docs


def _leaves(x: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(x, list):
        return [p for i, v in enumerate(x) for p in _leaves(v, (*path, i))] or [path]
    return [path]


LEAF_VALUES = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 10**6, 2**63, 0.5, 1.5, -0.5, 100.0, 101.0, float("nan"), float("inf")]),
    st.sampled_from([None, True, "", "n0.gpu0", "n9.gpu7", "fp7", [], {}]),
)


@PROPS
@given(data=st.data(), strategy=st.sampled_from(STRATEGIES))
def test_tampered_plans(tmp_path_factory, capsys, plans, data, strategy):
    doc = copy.deepcopy(plans[strategy])
    for _ in range(data.draw(st.integers(min_value=1, max_value=2))):
        path = data.draw(st.sampled_from(_leaves(doc)))
        if not path:
            break
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = data.draw(LEAF_VALUES)
    if data.draw(st.booleans()):  # another strategy's name over these parameters
        doc["strategy"] = data.draw(st.sampled_from(STRATEGIES))
    file = tmp_path_factory.mktemp("plan") / "plan.json"
    file.write_text(json.dumps(doc))
    rc, out, err = _run(capsys, ["simulate", "--plan", str(file), "--format", "json"])
    _check_compare(rc, out, err, "mixed-lab")


# ---- flags ---------------------------------------------------------------------------------------
def _mostly(valid: st.SearchStrategy[Any], broken: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid about 3 times in 4 (for fields of generated files)."""
    return st.one_of(valid, valid, valid, broken)


# flag -> (valid values, broken values); each run breaks at most one flag, so a third of the runs
# reach a result and the rest must name the flag they broke
COMPARE_FLAGS: dict[str, tuple[st.SearchStrategy[str], st.SearchStrategy[str]]] = {
    "--batch": (
        st.integers(1, 256).map(str),
        st.sampled_from(["0", "-5", "65537", str(2**63 - 1), "2**64", "x"]),
    ),
    "--prompt-len": (st.integers(1, 512).map(str), st.sampled_from(["0", "-1", str(2**20 + 1), str(2**62)])),
    "--gen-len": (st.integers(1, 8).map(str), st.sampled_from(["0", "-1", str(2**20 + 1), "1.5"])),
    "--gpu-mem-budget": (
        st.sampled_from(["6GB", "80 GB", "1 MB"]),  # 1 MB: the smallest taken (every plan infeasible)
        st.sampled_from(["0GB", "-1GB", "1e400 GB", "inf", "nan GB", "x", "1e-30 GB", "24"]),
    ),
    "--objective": (st.sampled_from(["latency", "throughput", "cost"]), st.sampled_from(["speed", ""])),
}
SERVE_FLAGS: dict[str, tuple[st.SearchStrategy[str], st.SearchStrategy[str]]] = {
    "--rate": (
        st.sampled_from(["1", "0.5", "4", "1e3"]),
        st.sampled_from(["0", "-1", "inf", "-inf", "nan", "1e-308", "x", ""]),
    ),
    "--num-requests": (st.sampled_from(["1", "5", "12"]), st.sampled_from(["0", "-3", str(10**7), "x"])),
    "--seed": (st.sampled_from(["0", "7", str(2**64)]), st.sampled_from(["-1", "x"])),
    "--max-batch": (st.sampled_from(["1", "8"]), st.sampled_from(["0", str(2**62)])),
    "--slo": (st.sampled_from(["1", "30"]), st.sampled_from(["0", "inf", "nan", "-2"])),
}


def _flags(data: st.DataObject, table: dict[str, tuple[Any, Any]]) -> tuple[list[str], str | None]:
    broken = data.draw(st.sampled_from([None, None, None, *table]), label="broken flag")
    argv = []
    for flag, (valid, bad) in table.items():
        argv += [flag, data.draw(bad if flag == broken else valid, label=flag)]
    return argv, broken


@SLOW_PROPS
@given(data=st.data(), strategy=st.sampled_from(["gpu-only", "hexgen", "cpu-tp"]))
def test_generated_compare_flags(capsys, data, strategy):
    flags, broken = _flags(data, COMPARE_FLAGS)
    argv = [
        "compare",
        "--model",
        "llama2-7b",
        "--hw",
        "mixed-lab",
        "--strategies",
        strategy,
        "--no-search",
        "--format",
        "json",
        *flags,
    ]
    rc, out, err = _run(capsys, argv)
    _check_compare(rc, out, err, "mixed-lab")
    if broken is not None:
        assert rc == 2 and (broken in err or broken.lstrip("-").replace("-", "_") in err), (broken, err)


@SLOW_PROPS
@given(data=st.data())
def test_generated_serve_flags(capsys, data):
    flags, broken = _flags(data, SERVE_FLAGS)
    argv = ["serve", "--model", "llama2-7b", "--hw", "hexgen-half-budget", "--format", "json", *flags]
    rc, out, err = _run(capsys, argv)
    if rc == 0:
        doc = _finite_json(out)
        for key in ("latency_s", "ttft_s", "tpot_s"):
            for v in (doc.get(key) or {}).values():
                assert v is None or (math.isfinite(v) and v >= 0)
    else:
        assert rc in (1, 2), rc
        _one_error_line(err)
    if broken is not None:
        assert rc == 2 and broken in err, (broken, err)


def test_contract_helpers_catch_non_finite():
    with pytest.raises(AssertionError):
        _finite_json('{"a": NaN}')
    with pytest.raises(AssertionError):
        _physical(
            {"feasible": True, "e2e_s": float("inf"), "throughput_tok_s": 1.0, "peak_mem_bytes": {}}, {}
        )
