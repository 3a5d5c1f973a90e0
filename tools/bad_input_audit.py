"""A hostile user's audit of every command against bad input (session 15): flags with 0, negative,
NaN, infinite, 1e308, empty, wrong-unit and huge values; rig YAML with fields dropped, mistyped,
duplicated, unknown devices, zero rates, links to nowhere, empty, binary, a directory, a named pipe;
Hugging Face config.json with every number spoilt; every field of every strategy's plan JSON edited,
another model, rig or strategy's plan; trace CSV; sweep YAML; routing profiles; calibrate and
validate flags (5,422 cases, ~10-15 min at -n 2 on two cores; not in the test suite: its regressions
are in tests/test_bad_input_audit.py and beside the tests of what they broke).

Each case runs ``hetsim.cli.main`` in-process and must end with 0, 1 (no result: one line) or 2 (bad
input: one line ``error: ...`` naming the offending file or flag, and the field where the case spoils
one), never a traceback, an exception out of ``main`` or a hang (an alarm), and never quote an absurd
size (a million TB or more: ``ABSURD``), as an infeasible row's reason did for a plan's 10**30 GPU
batch (session 24, which also added the GPU ``memory``-beside-its-rule rigs, every plan field at
2**62, and the sweep's hardware knobs).
A test whose cases break that errors at teardown listing them; ``HETSIM_AUDIT_LOG=DIR`` also writes
every case (arguments, exit code, stderr) to ``DIR/audit-<worker>.jsonl``, to read the exit-0 cases
for silently wrong numbers (how the plan and trace findings were found).

    .venv/bin/python -m pytest tools/bad_input_audit.py -n 2 -p no:cacheprovider
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

import hetsim.textfiles
from hetsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]
VALUES = ["0", "-1", "nan", "inf", "-inf", "1e308", "1e400", "", "x", "1.5", "99999999999", "-0", "1e-300",
          "0x10", " 1", "1 GB", "-1 GB", "0 GB", "nan GB", "1e308 GB"]  # fmt: skip
HANG_S = 90
# a size fmt_bytes writes with seven or more digits of TB: an exabyte or more, past any part (a reason
# that quotes one read a hostile number as a plan's, session 24: "kv_cache needs 3.7e25 TB")
ABSURD = re.compile(r"\d{7,}(\.\d+)? TB")


def _small(cmd: str, model: str, hw: str, *rest: str) -> list[str]:
    """``cmd`` (compare, plan) of ``model`` on ``hw`` with the small workload, then ``rest``."""
    return [cmd, "--model", model, "--hw", hw, *SMALL, *rest]


class _Hang(Exception):
    pass


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str, str, str]:
    def hang(signum: int, frame: object) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_S)
    try:
        code: int | str = main(args)
    except _Hang:
        code = "HANG"
    except BaseException as e:  # what the audit looks for: anything out of main
        code = f"RAISED {type(e).__name__}: {e}"[:300]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    out, err = capsys.readouterr()
    return code, out, err


Audit = Callable[..., None]


@pytest.fixture
def audit(capsys: pytest.CaptureFixture[str]) -> Iterator[Audit]:
    """``audit(case, args, *names)``: run one case; exit 2's line must name each of ``names`` (the file
    or flag, the field); the test errors at teardown listing every broken case."""
    broken: list[str] = []
    log = os.environ.get("HETSIM_AUDIT_LOG")

    def check(case: str, args: list[str], *names: str) -> None:
        code, out, err = _run(args, capsys)
        lines = err.strip().splitlines()
        one_line = len(lines) == 1 and lines[0].startswith("error: ")
        unnamed = [n for n in names if n not in err]
        bad = code not in (0, 1, 2) or "Traceback" in err or (code in (1, 2) and not one_line)
        bad = bad or (code == 2 and bool(unnamed))
        if code == 2 and unnamed:
            err = f"(does not name {', '.join(map(repr, unnamed))}) {err}"
        if (absurd := ABSURD.search(out + err)) is not None:
            bad, err = True, f"(quotes {absurd.group(0)}) {err}"
        if bad:
            broken.append(f"{case}: {code}: {err[-300:]}")
        if log:
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            with open(Path(log) / f"audit-{worker}.jsonl", "a") as f:
                row = {
                    "case": case,
                    "args": args,
                    "code": code,
                    "bad": bad,
                    "err": err[-600:],
                    "out": out[:300],
                }
                f.write(json.dumps(row) + "\n")

    yield check
    if broken:
        pytest.fail(f"{len(broken)} cases broke the standard:\n" + "\n".join(broken), pytrace=False)


# the strategies whose plans (one each, llama2-7b or mixtral-8x7b on mixed-lab) are edited
PLANNED = ["gpu-only", "flexgen", "hexgen", "hetegen", "accelerate", "moe-offload", "cpu-tp", "layer-offload",
           "deepspeed"]  # fmt: skip


@pytest.fixture(scope="session")
def plan_text(tmp_path_factory):
    d = tmp_path_factory.mktemp("p")
    texts = {}
    for s in PLANNED:
        model = "mixtral-8x7b" if s == "moe-offload" else "llama2-7b"
        out = d / f"{s}.json"
        c = main(_small("plan", model, "mixed-lab", "--strategy", s, "--out", str(out), "--format", "json"))
        if c == 0:
            texts[s] = out.read_text()
    return texts


# each command's cheap line, to which a case adds its flag (the fuzz pass over every option reads it too)
BASES = yaml.safe_load((ROOT / "tests/data/cli-bases.yaml").read_text())
FLAGCASES = []
COMMON = [
    "--batch",
    "--prompt-len",
    "--gen-len",
    "--objective",
    "--gpu-mem-budget",
    "--dtype",
    "--kv-dtype",
    "--format",
    "--routing-profile",
    "--trace",
]
for fl in [*COMMON, "--strategies"]:
    for v in VALUES:
        FLAGCASES.append(("compare", fl, v))
for fl in [
    "--batch",
    "--prompt-len",
    "--gen-len",
    "--gpu-mem-budget",
    "--out",
    "--strategy",
    "--dtype",
    "--kv-dtype",
]:
    for v in VALUES:
        FLAGCASES.append(("plan", fl, v))
for fl in [
    "--rate",
    "--duration",
    "--num-requests",
    "--slo",
    "--slo-scale",
    "--slo-ref",
    "--target",
    "--max-batch",
    "--seed",
    "--dispatch",
    "--mode",
    "--dtype",
    "--kv-dtype",
    "--requests",
]:
    for v in VALUES:
        FLAGCASES.append(("serve", fl, v))
for fl in ["--workers", "--dask", "--out"]:
    for v in VALUES:
        FLAGCASES.append(("sweep", fl, v))
for fl in ["--trace", "--format"]:
    for v in VALUES:
        FLAGCASES.append(("simulate", fl, v))


@pytest.mark.parametrize("cmd,flag,value", FLAGCASES)
def test_flag(cmd, flag, value, tmp_path, audit, monkeypatch, plan_text):
    monkeypatch.chdir(tmp_path)
    if cmd in ("compare", "serve"):
        args = list(BASES[cmd])
    elif cmd == "plan":
        args = [*BASES["plan"], "--out", str(tmp_path / "p.json")]
    elif cmd == "sweep":
        spec = tmp_path / "s.yaml"
        spec.write_text(yaml.safe_dump(SWEEP))
        args = ["sweep", str(spec), "--no-plots", "--workers", "1", "--out", str(tmp_path / "o")]
    else:
        p = tmp_path / "plan.json"
        p.write_text(plan_text["gpu-only"])
        args = [str(p) if a == "PLAN" else a for a in BASES["simulate"]]
    partner = {"--slo-ref": ["--slo-scale", "2"], "--target": ["--max-rate", "--slo", "5"]}.get(flag, [])
    args = [*args, *(partner if cmd == "serve" else []), flag, value]
    audit(f"flag {cmd} {flag}={value!r}", args, flag)


RIG = (ROOT / "hardware_profiles/rigs/mixed-lab.yaml").read_text()
RIGDOC = yaml.safe_load(RIG)


def rig_variants():
    v = {}
    v["empty"] = b""
    v["binary"] = bytes(range(256))
    v["list"] = b"- a\n- b\n"
    v["scalar"] = b"42\n"
    v["null"] = b"null\n"
    v["no-nodes"] = yaml.safe_dump({"name": "x"}).encode()
    v["nodes-empty"] = yaml.safe_dump({"name": "x", "nodes": []}).encode()
    v["nodes-dict"] = yaml.safe_dump({"name": "x", "nodes": {"a": 1}}).encode()

    def mut(name, f):
        d = copy.deepcopy(RIGDOC)
        f(d)
        v[name] = yaml.safe_dump(d).encode()

    mut("no-name", lambda d: d.pop("name"))
    mut("name-int", lambda d: d.update(name=5))
    mut("name-empty", lambda d: d.update(name=""))
    mut("gpu-unknown", lambda d: d["nodes"][0]["gpus"].__setitem__(0, "h900"))
    mut("gpu-model-unknown", lambda d: d["nodes"][0]["gpus"][0].update(model="h900"))
    mut("cpu-unknown", lambda d: d["nodes"][0].update(cpus=["xeon-9999"]))
    mut("cpus-empty", lambda d: d["nodes"][0].update(cpus=[]))
    mut("gpus-empty", lambda d: [n.update(gpus=[]) for n in d["nodes"]])
    mut("gpus-none", lambda d: [n.pop("gpus") for n in d["nodes"]])
    mut("socket-9", lambda d: d["nodes"][0]["gpus"][0].update(socket=9))
    mut("socket-neg", lambda d: d["nodes"][0]["gpus"][0].update(socket=-1))
    mut("socket-str", lambda d: d["nodes"][0]["gpus"][0].update(socket="a"))
    mut("count-0", lambda d: d["nodes"][1]["gpus"][0].update(count=0))
    mut("count-neg", lambda d: d["nodes"][1]["gpus"][0].update(count=-2))
    mut("count-huge", lambda d: d["nodes"][1]["gpus"][0].update(count=10**9))
    mut("count-float", lambda d: d["nodes"][1]["gpus"][0].update(count=1.5))
    mut("count-nan", lambda d: d["nodes"][1]["gpus"][0].update(count=float("nan")))
    mut("disk-unknown", lambda d: d["nodes"][0].update(disks=["floppy"]))
    mut("nic-unknown", lambda d: d["nodes"][0].update(nic="carrier-pigeon"))
    mut("nic-none", lambda d: [n.pop("nic") for n in d["nodes"]])
    mut("nic-one", lambda d: d["nodes"][0].pop("nic"))
    mut("upi-unknown", lambda d: d["nodes"][0].update(upi={"link": "upi-99", "count": 4}))
    mut("upi-count-0", lambda d: d["nodes"][0].update(upi={"link": "upi-16gt", "count": 0}))
    mut("upi-count-neg", lambda d: d["nodes"][0].update(upi={"link": "upi-16gt", "count": -4}))

    def sourced(value: object) -> dict[str, object]:
        return {"value": value, "source": "x", "grade": "assumed"}

    # one quantity spoilt: case -> (where, field, value)
    quantities = {
        "hostmem-0": ("node", "host_memory", "0 GB"),
        "hostmem-unit": ("node", "host_memory", "1024 GB/s"),
        "hostmem-seconds": ("node", "host_memory", "5 s"),
        "hostmem-huge": ("node", "host_memory", "1e30 GB"),
        "price-neg": ("node", "price_per_hour", -1),
        "price-nan": ("node", "price_per_hour", ".nan"),
        "price-inf": ("node", "price_per_hour", float("inf")),
        "price-huge": ("node", "price_per_hour", 1e300),
        "membw-0": ("gpu", "memory_bandwidth", "0 GB/s"),
        "membw-unit": ("gpu", "memory_bandwidth", "1935 GB"),
        "membw-tiny": ("gpu", "memory_bandwidth", "1e-300 GB/s"),
        "gpu-mem-tiny": ("gpu", "memory", "1 B"),
        "gpu-reserve-all": ("gpu", "runtime_reserved", "80 GiB"),
        "host-link-bw-0": ("host_link", "bandwidth", "0 GB/s"),
        "host-link-lat-neg": ("host_link", "latency", "-1 us"),
        "host-link-lat-huge": ("host_link", "latency", "1e300 s"),
        "disk-bw-0": ("disk", "read_bandwidth", "0 GB/s"),
        "disk-cap-0": ("disk", "capacity", "0 GB"),
        "peak-flops-dtype": ("gpu", "peak_flops", {"fp99": sourced(1)}),
        "eff-kind": ("gpu", "efficiency", {"compute": {"nope": sourced(0.5)}}),
        "eff-gt1": ("gpu", "efficiency", {"memory": sourced(1.5)}),
    }
    for name, (where, key, value) in quantities.items():
        x = value if isinstance(value, dict) else sourced(value)
        if where == "node":
            mut(name, lambda d, k=key, x=x: d["nodes"][0].update({k: x}))
        elif where == "gpu":
            mut(name, lambda d, k=key, x=x: d["nodes"][0]["gpus"][0].update({k: x}))
        elif where == "host_link":
            mut(
                name,
                lambda d, k=key, x=x: d["nodes"][0]["gpus"][0].update(host_link={"link": "pcie4-x16", k: x}),
            )
        else:
            mut(name, lambda d, k=key, x=x: d["nodes"][0].update(disks=[{"model": "nvme-pcie4", k: x}]))
    # a measured memory beside the rule it replaces (the rule's fields were read and silently unused)
    for key, value in (("ecc_share", 0.5), ("driver_share", 0.1), ("dram", "48 GiB")):
        mut(
            f"gpu-memory-and-{key}",
            lambda d, k=key, x=value: d["nodes"][0]["gpus"][0].update(
                memory=sourced("40 GB"), **{k: sourced(x)}
            ),
        )
    mut("hostmem-plain", lambda d: d["nodes"][0].update(host_memory=1024))
    mut("hostmem-nosource", lambda d: d["nodes"][0].update(host_memory={"value": "1 GB", "grade": "assumed"}))
    mut(
        "hostmem-badgrade",
        lambda d: d["nodes"][0].update(host_memory={"value": "1 GB", "source": "x", "grade": "vibes"}),
    )
    mut("unknown-field", lambda d: d["nodes"][0].update(colour="red"))
    mut("unknown-top", lambda d: d.update(colour="red"))
    mut("gpu-unknown-field", lambda d: d["nodes"][0]["gpus"][0].update(colour="red"))
    mut("region-int", lambda d: d["nodes"][0].update(region=3))
    mut("region-two", lambda d: d["nodes"][1].update(region="other"))
    mut(
        "region-two-net",
        lambda d: (d["nodes"][1].update(region="other"), d.update(network={"lab": "ethernet-100g"})),
    )
    mut("network-unknown-region", lambda d: d.update(network={"mars": "ethernet-100g"}))
    mut("network-list", lambda d: d.update(network=["a"]))
    mut("nodes-many", lambda d: d.update(nodes=d["nodes"] * 5000))
    mut("host-link-unknown", lambda d: d["nodes"][0]["gpus"][0].update(host_link={"link": "pcie9"}))
    mut("nvlink-unknown", lambda d: d["nodes"][1]["gpus"][0].update(nvlink="nvlink9"))
    mut("nvlink-int", lambda d: d["nodes"][1]["gpus"][0].update(nvlink=3))
    mut("peak-flops-empty", lambda d: d["nodes"][0]["gpus"][0].update(peak_flops={}))
    mut(
        "eff-kernel-tables",
        lambda d: d["nodes"][0]["gpus"][0].update(efficiency={"kernel_tables": "../../../../etc"}),
    )
    mut(
        "eff-kernel-tables-missing",
        lambda d: d["nodes"][0]["gpus"][0].update(efficiency={"kernel_tables": "nowhere"}),
    )
    mut(
        "allreduce-table-missing",
        lambda d: d["nodes"][0].update(nic={"link": "ethernet-100g", "allreduce_table": "nowhere.csv"}),
    )
    mut("dup-gpu-node", lambda d: d["nodes"][0]["gpus"].append(d["nodes"][0]["gpus"][0]))
    v["dup-key"] = (RIG + "name: again\n").encode()
    v["tab-indent"] = RIG.replace("  - region", "\t- region").encode()
    # a billion-laughs document: 9**8 list items by aliases (the safe loader builds them by reference)
    bomb, prev = ["a: &a [x,x,x,x,x,x,x,x,x]"], "a"
    for name in "bcdefg":
        bomb.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    v["anchor-bomb"] = (
        "\n".join([*bomb, "h: [" + ",".join(["*g"] * 9) + "]", "name: x", "nodes: []"]) + "\n"
    ).encode()
    v["python-tag"] = b"name: !!python/object/apply:os.system ['true']\nnodes: []\n"
    v["deep"] = ("a: " + "[" * 5000 + "]" * 5000 + "\n").encode()
    v["huge-int"] = RIG.replace("count: 2", "count: " + "9" * 5000).encode()
    return v


RIGV = rig_variants()
# the field a rig variant spoils, by the first word of its name (the rest spoil the whole file)
RIG_FIELDS = {"name": ["name"], "gpu": ["gpus"], "cpu": ["cpus"], "cpus": ["cpus"], "gpus": ["gpus"],
              "socket": ["socket"], "count": ["count"], "disk": ["disks"], "nic": ["nic"], "upi": ["upi"],
              "hostmem": ["host_memory"], "no-name": ["name"], "no-nodes": ["nodes"],
              "nodes": ["nodes"]}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RIGV))
@pytest.mark.parametrize("cmd", ["hw", "compare"])
def test_rig(name, cmd, tmp_path, audit, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "rig.yaml"
    f.write_bytes(RIGV[name])
    args = (
        ["hw", "show", str(f)]
        if cmd == "hw"
        else _small("compare", "llama2-7b", str(f), "--strategies", "gpu-only,flexgen,hexgen")
    )
    audit(f"rig {cmd} {name}", args, str(f), *RIG_FIELDS.get(name, RIG_FIELDS.get(name.split("-")[0], ())))


@pytest.mark.parametrize("args_kind", ["dir", "missing", "devnull", "devzero", "fifo"])
def test_rig_paths(args_kind, tmp_path, audit, monkeypatch):
    monkeypatch.setattr(hetsim.textfiles, "FIFO_WAIT_S", 0.2)  # a pipe with no writer: 10 s each else
    if args_kind == "dir":
        p = tmp_path / "d.yaml"
        p.mkdir()
    elif args_kind == "missing":
        p = tmp_path / "m.yaml"
    elif args_kind == "devnull":
        p = Path("/dev/null")
    elif args_kind == "devzero":  # endless: read until memory ran out before MAX_TEXT_BYTES
        p = Path("/dev/zero")
    else:
        p = tmp_path / "f.yaml"
        os.mkfifo(p)
    for args in (
        ["hw", "show", str(p)],
        ["model", "show", str(p)],
        ["simulate", "--plan", str(p)],
        ["serve", "--model", "llama2-7b", "--hw", "mixed-lab", "--requests", str(p)],
        ["sweep", str(p), "--no-plots"],
        _small(
            "compare", "mixtral-8x7b", "mixed-lab", "--strategies", "moe-offload", "--routing-profile", str(p)
        ),
    ):
        audit(f"path {args_kind} {args[0]}", args, str(p))


CFG = json.loads((ROOT / "tests/data/hf-configs/Llama-2-7B/config.json").read_text())
MOE = json.loads((ROOT / "tests/data/hf-configs/Mixtral-8x7B/config.json").read_text())
DS = json.loads((ROOT / "tests/data/hf-configs/DeepSeek-V2-Lite/config.json").read_text())
QW = json.loads((ROOT / "tests/data/hf-configs/Qwen3-30B-A3B/config.json").read_text())
_GPTQ = {"quant_method": "gptq", "bits": 4}


def cfg_variants():
    v = {}
    for base_name, base in (("llama", CFG), ("moe", MOE), ("ds", DS), ("qwmoe", QW)):
        keys = [k for k in base if isinstance(base[k], (int, float)) and not isinstance(base[k], bool)]
        for k in keys:
            for val in (0, -1, 3, 10**12, 1.5, "x", None, True, 1e308):
                d = dict(base)
                d[k] = val
                v[f"{base_name} {k}={val!r}"] = d
            d = dict(base)
            d.pop(k)
            v[f"{base_name} no {k}"] = d
    for val in ("bogus", None, 3, "", "float8", "int4"):
        d = dict(CFG)
        d["torch_dtype"] = val
        v[f"llama torch_dtype={val!r}"] = d
    for val in ("bogus", None, 3, "", "gpt2", "bert"):
        d = dict(CFG)
        d["model_type"] = val
        v[f"llama model_type={val!r}"] = d
    # one key spoilt: case -> (config, key, value)
    for name, (base, key, val) in {
        "llama head_dim=100": (CFG, "head_dim", 100),
        "llama hidden 4095": (CFG, "hidden_size", 4095),
        "llama kv 5": (CFG, "num_key_value_heads", 5),
        "llama kv 64": (CFG, "num_key_value_heads", 64),
        "llama sw 0": (CFG, "sliding_window", 0),
        "llama sw -5": (CFG, "sliding_window", -5),
        "llama sw x": (CFG, "sliding_window", "x"),
        "llama layer_types short": (CFG, "layer_types", ["full_attention"]),
        "llama layer_types str": (CFG, "layer_types", "x"),
        "llama quant bits 3": (CFG, "quantization_config", {"bits": 3}),
        "llama quant str": (CFG, "quantization_config", "x"),
        "llama quant gptq": (CFG, "quantization_config", {**_GPTQ, "group_size": 128}),
        "llama quant gptq g-1": (CFG, "quantization_config", {**_GPTQ, "group_size": -1}),
        "llama quant awq 8.5": (CFG, "quantization_config", {"quant_method": "awq", "bits": 8.5}),
        "llama quant bnb": (CFG, "quantization_config", {"quant_method": "bitsandbytes", "bits": 4}),
        "llama quant fp8": (CFG, "quantization_config", {"quant_method": "fp8", "fmt": "e4m3"}),
        "llama rope 0": (CFG, "rope_scaling", {"type": "linear", "factor": 0}),
        "moe topk > experts": (MOE, "num_experts_per_tok", 9),
        "ds first_k huge": (DS, "first_k_dense_replace", 10**6),
        "ds moe freq 0": (DS, "moe_layer_freq", 0),
        "qw mlp_only 999": (QW, "mlp_only_layers", [999]),
        "qw mlp_only str": (QW, "mlp_only_layers", "x"),
        "qw sparse step 0": (QW, "decoder_sparse_step", 0),
    }.items():
        v[name] = {**base, key: val}
    v["list"] = [1, 2]
    v["text_config bad"] = {"model_type": "gemma3", "text_config": {"hidden_size": 0}}
    return v


CFGV = cfg_variants()
# "llama hidden_size=0", "moe no num_local_experts": the key spoilt
_SPOILT = ("llama", "moe", "ds", "qwmoe")
CFG_FIELDS = {n: [n.split()[-1].split("=")[0]] for n in CFGV
              if n.split()[0] in _SPOILT and ("=" in n or n.split()[1] == "no")}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CFGV))
def test_config(name, tmp_path, audit, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "config.json"
    f.write_text(json.dumps(CFGV[name]))
    for args in (
        ["model", "show", str(f)],
        _small(
            "compare",
            str(f),
            "mixed-lab",
            "--strategies",
            "gpu-only,flexgen,moe-offload,hexgen",
            "--format",
            "json",
        ),
    ):
        audit(f"config {args[0]} {name}", args, str(f), *CFG_FIELDS.get(name, ()))


EDIT_VALUES = [0, -1, None, "x", 1e308, 10**30, 2**62, 1.5, True, [], {}]


@pytest.mark.parametrize("strategy", PLANNED)
def test_plan_edits(strategy, plan_text, tmp_path, audit):
    if strategy not in plan_text:
        pytest.skip("no plan")
    doc = json.loads(plan_text[strategy])
    paths = []

    def walk(d, pre=()):
        if pre:
            paths.append(pre)
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, (*pre, k))
        elif isinstance(d, list):
            for i, v in enumerate(d):
                walk(v, (*pre, i))

    walk(doc)
    f = tmp_path / "p.json"
    for path in paths:
        for val in [*EDIT_VALUES, "__del__"]:
            d = copy.deepcopy(doc)
            parent = d
            for k in path[:-1]:
                parent = parent[k]
            if val == "__del__":
                if isinstance(parent, dict):
                    del parent[path[-1]]
                else:
                    continue
            else:
                parent[path[-1]] = val
            f.write_text(json.dumps(d))
            args = ["simulate", "--plan", str(f), "--format", "json"]
            keys = [k for k in path if isinstance(k, str)]  # the top-level key and the last named one
            audit(
                f"plan {strategy} {'.'.join(map(str, path))}={val!r}",
                args,
                str(f),
                *dict.fromkeys([keys[0], keys[-1]]),
            )
    # other model / other strategy's plan / other rig
    for key, val in (
        ("model", "llama2-70b"),
        ("model", "mixtral-8x7b"),
        ("model", "opt-30b"),
        ("hardware", "flexgen-t4"),
        ("hardware", "cputp-4x8575c"),
    ):
        d = copy.deepcopy(doc)
        d[key] = val
        f.write_text(json.dumps(d))
        args = ["simulate", "--plan", str(f), "--format", "json"]
        audit(f"plan {strategy} {key}={val}", args, str(f))
    for other in plan_text:
        if other == strategy:
            continue
        d = copy.deepcopy(doc)
        d["strategy"] = other
        f.write_text(json.dumps(d))
        args = ["simulate", "--plan", str(f), "--format", "json"]
        audit(f"plan {strategy} strategy={other}", args, str(f))


TRACES = {
    "no-header": "0.0,16,2\n",
    "header-only": "arrival_s,prompt_len,output_len\n",
    "extra-col": "arrival_s,prompt_len,output_len,x\n0,16,2,5\n",
    "short-row": "arrival_s,prompt_len,output_len\n0,16\n",
    "long-row": "arrival_s,prompt_len,output_len\n0,16,2,9,9\n",
    "unsorted": "arrival_s,prompt_len,output_len\n5,16,2\n0,16,2\n",
    "neg-arrival": "arrival_s,prompt_len,output_len\n-5,16,2\n",
    "nan-arrival": "arrival_s,prompt_len,output_len\nnan,16,2\n",
    "inf-arrival": "arrival_s,prompt_len,output_len\ninf,16,2\n",
    "huge-arrival": "arrival_s,prompt_len,output_len\n1e308,16,2\n",
    "zero-prompt": "arrival_s,prompt_len,output_len\n0,0,2\n",
    "zero-out": "arrival_s,prompt_len,output_len\n0,16,0\n",
    "float-prompt": "arrival_s,prompt_len,output_len\n0,16.5,2\n",
    "huge-prompt": "arrival_s,prompt_len,output_len\n0,99999999999,2\n",
    "huge-out": "arrival_s,prompt_len,output_len\n0,16,99999999999\n",
    "ctx-over": "arrival_s,prompt_len,output_len\n0,4090,100\n",
    "bigint": "arrival_s,prompt_len,output_len\n0," + "9" * 5000 + ",2\n",
    "bom": "\ufeffarrival_s,prompt_len,output_len\n0,16,2\n",
    "crlf": "arrival_s,prompt_len,output_len\r\n0,16,2\r\n",
    "quoted": 'arrival_s,prompt_len,output_len\n"0","16","2"\n',
    "spaces": "arrival_s, prompt_len, output_len\n0, 16, 2\n",
    "dup-col": "arrival_s,prompt_len,output_len,prompt_len\n0,16,2,5\n",
    "nul": "arrival_s,prompt_len,output_len\n0,16\x00,2\n",
    "semicolon": "arrival_s;prompt_len;output_len\n0;16;2\n",
    "many-same-time": "arrival_s,prompt_len,output_len\n" + "0,16,2\n" * 2000,
}


@pytest.mark.parametrize("name", sorted(TRACES))
def test_trace(name, tmp_path, audit):
    f = tmp_path / "t.csv"
    f.write_text(TRACES[name])
    for extra in ([], ["--mode", "hexgen"], ["--max-rate", "--slo", "5"]):
        args = [*(str(f) if a == "TRACE" else a for a in BASES["serve trace"]), *extra]
        audit(f"trace {name} {extra}", args, str(f))


SWEEP = yaml.safe_load((ROOT / "tests/data/audit-sweep.yaml").read_text())  # one point, as the regressions


def sweep_variants():
    v = {}
    for key in (
        "prompt_len",
        "gen_len",
        "batch",
        "model",
        "rig",
        "strategy",
        "objective",
        "dtype",
        "kv_dtype",
        "gpu_mem_budget",
        "timeout_s",
        "name",
        # the hardware knobs (session 24: cpu_sockets 10**30 raised, pcie took an ethernet link)
        "gpu_mem_gb",
        "net_gbps",
        "cpu_sockets",
        "pcie",
        "net_link",
        "bw_scale",
    ):
        for val in (0, -1, None, "x", 1e308, 10**30, 2**62, 1.5, True, [], {}, float("nan"), float("inf")):
            d = copy.deepcopy(SWEEP)
            if key in ("timeout_s", "name"):
                d[key] = val
            else:
                d["base"][key] = val
            v[f"{key}={val!r}"] = d
    for key, val in (("pcie", "ethernet-100g"), ("net_link", "pcie4-x16"), ("bw_scale", {"pcie": 1e-300})):
        d = copy.deepcopy(SWEEP)
        d["base"][key] = val
        v[f"{key}={val!r}"] = d
    d = copy.deepcopy(SWEEP)
    d["grids"] = []
    v["grids-empty"] = d
    d = copy.deepcopy(SWEEP)
    d["grids"] = [{"strategy": []}]
    v["grid-axis-empty"] = d
    d = copy.deepcopy(SWEEP)
    d["grids"] = [{"batch": list(range(1, 2000)), "gen_len": list(range(1, 2000))}]
    v["grid-huge"] = d
    d = copy.deepcopy(SWEEP)
    d["grids"] = [{"colour": ["red"]}]
    v["grid-unknown-axis"] = d
    d = copy.deepcopy(SWEEP)
    d["grids"] = "x"
    v["grids-str"] = d
    d = copy.deepcopy(SWEEP)
    d["plots"] = [{"kind": "nope"}]
    v["plot-kind"] = d
    d = copy.deepcopy(SWEEP)
    d["plots"] = [{"kind": "heatmap", "x": "nope", "y": "strategy"}]
    v["plot-axis"] = d
    d = copy.deepcopy(SWEEP)
    d["plots"] = [{"kind": "line", "name": "../../../x", "x": "batch", "metric": "e2e_s"}]
    v["plot-name-path"] = d
    d = copy.deepcopy(SWEEP)
    d["plots"] = [{"kind": "line", "name": "p", "x": "batch", "metric": "nope"}]
    v["plot-metric"] = d
    d = copy.deepcopy(SWEEP)
    d["name"] = "../../escape"
    v["name-path"] = d
    d = copy.deepcopy(SWEEP)
    d["name"] = "a/b"
    v["name-slash"] = d
    return v


SWV = sweep_variants()


@pytest.mark.parametrize("name", sorted(SWV))
def test_sweep(name, tmp_path, audit, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(SWV[name]))
    args = ["sweep", str(f), "--workers", "1", "--out", str(tmp_path / "o")]
    key = name.split("=")[0] if "=" in name else None
    audit(f"sweep {name}", args, str(f), *([key] if key else []))


ROUTING = {
    "empty": "",
    "list": "- 1\n",
    "layers-empty": "layers: []\n",
    "neg": "layers: [[-1, 1, 1, 1, 1, 1, 1, 1]]\n",
    "nan": "layers: [[.nan, 1, 1, 1, 1, 1, 1, 1]]\n",
    "zero": "layers: [[0, 0, 0, 0, 0, 0, 0, 0]]\n",
    "short": "layers: [[1, 1]]\n",
    "inf": "layers: [[.inf, 1, 1, 1, 1, 1, 1, 1]]\n",
    "str": "layers: [[a, 1, 1, 1, 1, 1, 1, 1]]\n",
    "many-layers": "layers: " + json.dumps([[1] * 8] * 999) + "\n",
    "huge": "layers: [[1e308, 1e308, 1, 1, 1, 1, 1, 1]]\n",
}


@pytest.mark.parametrize("name", sorted(ROUTING))
def test_routing(name, tmp_path, audit):
    f = tmp_path / "r.yaml"
    f.write_text(ROUTING[name])
    routed = ["--strategies", "moe-offload", "--routing-profile", str(f), "--format", "json"]
    args = _small("compare", "mixtral-8x7b", "mixed-lab", *routed)
    audit(f"routing {name}", args, str(f))


CAL = []
REPORT = str(ROOT / "validate/results/2core-run1/cpu-llama2-7b.json")  # a validate report for --fit
for fl in ["--threads", "--ranks", "--device", "--gpu", "--out", "--profile", "--from-profiles"]:
    for v in ["0", "-1", "nan", "99999999999", "", "x"]:
        CAL.append(("calibrate", fl, v))
for fl in [
    "--ranks",
    "--layers",
    "--hidden",
    "--batch",
    "--prompt-len",
    "--gen-len",
    "--dtype",
    "--threads",
    "--repeats",
    "--rounds",
    "--strategy",
    "--model",
    "--stem",
    "--out",
]:
    for v in ["0", "-1", "nan", "99999999999", "", "x"]:
        CAL.append(("validate", fl, v))


@pytest.mark.parametrize("cmd,flag,value", CAL)
def test_calval(cmd, flag, value, tmp_path, audit, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if cmd == "calibrate":  # each flag where it matters: --gpu with tables, --profile with --fit
        mode = {"--gpu": ["--from-profiles", str(ROOT / "hardware_profiles/measured/vidur")],
                "--from-profiles": ["--gpu", "a100-80g"],
                "--profile": ["--fit", REPORT]}  # fmt: skip
        args = ["calibrate", *mode.get(flag, ["--quick"]), "--out", str(tmp_path / "c.yaml"), flag, value]
    else:
        args = [
            "validate",
            "--hw",
            str(ROOT / "hardware_profiles/rigs/cputp-4x8575c.yaml"),
            "--model",
            "llama2-7b",  # opt-125m (no such model) made every validate case an unknown --model
            "--layers",
            "1",
            "--hidden",
            "64",
            "--gen-len",
            "2",
            "--prompt-len",
            "4",
            "--ranks",
            "1",
            "--repeats",
            "1",
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "v"),
            flag,
            value,
        ]
    audit(f"{cmd} {flag}={value!r}", args, flag)
