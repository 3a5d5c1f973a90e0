"""A seeded fuzz pass over the fields of the files hetsim runs, past the parsing that
``test_cli_fuzz`` reaches: rig YAML run through ``compare`` (its numbers, units kept, and the
overrides a GPU entry may carry), every strategy's plan JSON run through ``simulate`` (each number
of its params and workload set to zero, negative, tiny, huge, NaN or infinite, a type swapped), and
trace CSV rows run through ``serve`` (values, columns, order and header spoilt).

Every case must end with 0 (a result: ``compare`` and ``simulate`` show an infeasible plan as a row)
or 2 with one ``error: `` line naming the file, never 1 (``serve``'s "no plan fits": none of these
spoilt files should reach it; a trace row past the model's context did, naming no file), a traceback,
an exception out of ``main`` or a hang. Seeded: the same cases every run (~11 s on one
core). ``HETSIM_FUZZ_CASES=N`` runs N per kind instead. Session 20 ran 300 per kind, every number
of every default plan at 19 values, and every trace cell at 20: no traceback or hang; the exit-0 cases
read for silently wrong numbers gave a plan file's ``gpu_mem_budget: 24`` (bytes: an out-of-memory
row) and a rig's ``host_memory: {value: 2}``, both now refused (tests/test_bad_input_rel3.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SEED = 20
CASES = {"rig": 30, "plan": 60, "trace": 24}
SMALL = ["--batch", "2", "--prompt-len", "16", "--gen-len", "3"]
NUMBERS = [
    0,
    -0.0,
    -1,
    1e-300,
    5e-324,
    1e-9,
    0.5,
    1.5,
    7,
    2**31,
    2**63,
    1e17,
    1e300,
    math.nan,
    math.inf,
    -math.inf,
]
OTHERS = [None, True, "x", "", [], {}, "1 GB"]
UNITS = ["0", "-1", "1e-300", "1e-9", "0.001", "1e17", "1e300", "nan", "inf", ""]
RIGS = ["hetegen-a10", "flexgen-t4", "mixed-lab", "cputp-4x8575c", "ktransformers-1s"]
# each strategy's default plan, of a model and rig it applies to
PLANS = [
    ("gpu-only", "llama2-7b", "mixed-lab"),
    ("accelerate", "opt-6.7b", "hetegen-a10"),
    ("deepspeed", "opt-6.7b", "hetegen-a10"),
    ("flexgen", "opt-6.7b", "flexgen-t4"),
    ("hetegen", "opt-6.7b", "hetegen-a10"),
    ("hexgen", "llama2-7b", "mixed-lab"),
    ("cpu-tp", "llama2-7b", "cputp-4x8575c"),
    ("moe-offload", "mixtral-8x7b", "ktransformers-1s"),
    ("layer-offload", "llama2-7b", "hetegen-a10"),
]
# serve's line with a --requests trace (TRACE: the file's path), as the bad-input audit runs it
SERVE_TRACE = yaml.safe_load((ROOT / "tests/data/cli-bases.yaml").read_text())["serve trace"]
TRACE_HEAD = ["arrival_s", "prompt_len", "output_len"]
TRACE_ROWS = [["0.0", "16", "2"], ["0.5", "32", "4"], ["1.0", "8", "3"], ["1.5", "24", "2"]]
TRACE_CELLS = ["", " ", "nan", "inf", "-inf", "-1", "0", "-0", "1e-300", "1e300", "x", "1.5", "2.0",
               "99999999999", "1e9", "0x10", "1_000", "٣", '"4"', "1e400"]  # fmt: skip


def _cases_of(kind: str) -> int:
    return int(os.environ.get("HETSIM_FUZZ_CASES", CASES[kind]))


def _leaves(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths of every scalar in ``doc`` (and of each list and mapping, to swap whole)."""
    out = [prefix] if prefix else []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out += _leaves(v, (*prefix, k))
    return out


def _set(doc: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        doc = doc[k]
    doc[path[-1]] = value


def _get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _bad_value(rng: random.Random, old: Any) -> Any:
    """A value of the same kind as ``old`` mostly (a number for a number, a unit kept), else any."""
    if isinstance(old, str) and " " in old and old.split(" ", 1)[0].replace(".", "").isdigit():
        return f"{rng.choice(UNITS)} {old.split(' ', 1)[1]}"  # "64 GB" -> "1e-300 GB"
    if isinstance(old, int | float) and not isinstance(old, bool) and rng.random() < 0.8:
        return rng.choice(NUMBERS)
    return rng.choice(NUMBERS + OTHERS)


def _mutated(rng: random.Random, doc: Any, at: list[tuple] | None = None) -> Any:
    doc = copy.deepcopy(doc)
    paths = at or _leaves(doc)
    for _ in range(rng.choice([1, 1, 2])):
        path = rng.choice(paths)
        with contextlib.suppress(TypeError, KeyError, IndexError):  # inside what the first change replaced
            _set(doc, path, _bad_value(rng, _get(doc, path)))
    return doc


def _rig_case(rng: random.Random, d: Path) -> list[str]:
    """A shipped rig, a number in it spoilt (or an override added to a GPU with one)."""
    name = rng.choice(RIGS)
    doc = yaml.safe_load((ROOT / "hardware_profiles" / "rigs" / f"{name}.yaml").read_text())
    numbers = [p for p in _leaves(doc) if isinstance(_get(doc, p), int | float) or p[-1:] == ("value",)]
    gpus = [(i, j) for i, n in enumerate(doc["nodes"]) for j, _ in enumerate(n.get("gpus", []))]
    if gpus and rng.random() < 0.5:  # an override on a GPU: the catalogue entry's own fields
        i, j = rng.choice(gpus)
        ref = doc["nodes"][i]["gpus"][j]
        ref = doc["nodes"][i]["gpus"][j] = ref if isinstance(ref, dict) else {"model": ref}
        field, unit = rng.choice([("memory", "GB"), ("memory_bandwidth", "GB/s"), ("price_per_hour", "")])
        ref[field] = {"value": f"{rng.choice(UNITS)} {unit}".strip(), "source": "fuzz", "grade": "assumed"}
    else:
        doc = _mutated(rng, doc, numbers)
    f = d / f"{name}.yaml"
    f.write_text(yaml.safe_dump(doc))
    strategies = ",".join(rng.sample([s for s, _, _ in PLANS], 3))
    return [
        "compare",
        "--model",
        "opt-6.7b",
        "--hw",
        str(f),
        *SMALL,
        "--no-search",
        "--strategies",
        strategies,
    ]


def _plan_case(rng: random.Random, d: Path, plans: dict[str, dict]) -> list[str]:
    """A strategy's plan file, a field of its params or workload spoilt."""
    doc = plans[rng.choice(sorted(plans))]
    paths = [p for p in _leaves(doc) if p[0] in ("params", "workload", "gpu_mem_budget")]
    f = d / "plan.json"
    f.write_text(json.dumps(_mutated(rng, doc, paths)))
    return ["simulate", "--plan", str(f), "--format", "json"]


def _trace_case(rng: random.Random, d: Path) -> list[str]:
    """A request trace with a cell, a row, the column order or the header spoilt."""
    head, rows = list(TRACE_HEAD), [list(r) for r in TRACE_ROWS]
    what = rng.choice(["cell", "cell", "cell", "row", "order", "header", "extra"])
    if what == "cell":
        rows[rng.randrange(len(rows))][rng.randrange(3)] = rng.choice(TRACE_CELLS)
    elif what == "row":
        rows.insert(rng.randrange(len(rows) + 1), rng.choice([[], [""], ["1"], ["1", "2", "3", "4"], [",,"]]))
    elif what == "order":
        rng.shuffle(rows)
    elif what == "header":
        head[rng.randrange(3)] = rng.choice(["", "arrival", "ARRIVAL_S", "prompt_len", " output_len"])
    else:
        head.append(rng.choice(["note", "arrival_s", ""]))
        for r in rows:
            r.append(rng.choice(["x", "", "1"]))
    f = d / "trace.csv"
    f.write_text("\n".join(",".join(r) for r in [head, *rows]) + "\n")
    return [str(f) if a == "TRACE" else a for a in SERVE_TRACE]


@pytest.fixture(scope="module")
def plans() -> dict[str, dict]:
    """Each strategy's default plan document (``plan --out``'s), built without a search."""
    from hetsim import api
    from hetsim.strategies.base import get_strategy

    docs = {}
    for name, model, hw in PLANS:
        p = api.problem(model, hw, 2, 16, 3)
        s = get_strategy(name)
        docs[name] = api.plan_document(p, s, s.default_plan(p.rig, p.model, p.workload), "throughput")
    return docs


@pytest.mark.parametrize("kind", sorted(CASES))
def test_spoilt_fields_give_a_result_or_one_line_naming_the_file(kind, tmp_path, monkeypatch, capsys, guarded,
                                                                 plans):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    rng = random.Random(f"{SEED}-{kind}")
    bad = []
    for i in range(_cases_of(kind)):
        d = tmp_path / str(i)
        d.mkdir()
        args = (
            _rig_case(rng, d)
            if kind == "rig"
            else _plan_case(rng, d, plans)
            if kind == "plan"
            else _trace_case(rng, d)
        )
        f = next(a for a in args if a.startswith(str(d)))
        try:
            code, err = guarded(args, 30)
        except BaseException as e:  # what the fuzz looks for: anything out of main, a hang
            bad.append((i, Path(f).read_text()[:2000], f"RAISED {type(e).__name__}: {e}"[:300]))
            continue
        lines = err.strip().splitlines()
        if code not in (0, 2) or "Traceback" in err or (code == 2 and len(lines) != 1):
            bad.append((i, Path(f).read_text()[:2000], code, err[-500:]))
        elif code == 2 and f not in lines[0]:
            bad.append((i, Path(f).read_text()[:2000], "names not the file", lines[0]))
    assert not bad, "\n\n".join(map(str, bad))
