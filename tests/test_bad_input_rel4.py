"""Session 21's bad-input fixes: each case here ran a wrong value silently, named the wrong thing or left
the CLI with a traceback before its fix."""

from __future__ import annotations

import json

import pytest

SMALL = ["--batch", "1", "--prompt-len", "16", "--gen-len", "2"]


def _plan_file(tmp_path, strategy: str, model: str, hw: str, **params: object) -> str:
    """``strategy``'s default plan of ``model`` on ``hw`` as a plan file, ``params`` edited in."""
    from hetsim import api
    from hetsim.strategies.base import get_strategy

    p = api.problem(model, hw, 1, 16, 2)
    s = get_strategy(strategy)
    doc = api.plan_document(p, s, s.default_plan(p.rig, p.model, p.workload), "throughput")
    doc["params"].update(params)
    f = tmp_path / f"{strategy}.json"
    f.write_text(json.dumps(doc))
    return str(f)


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
    tmp_path, capsys, guarded, tier, g, c, field
):
    """The release puts activations (and a compressed cache) on the tier whose percent ``== 100`` and
    raises for a split; its --percent takes whole percents. hetsim read a share within 1e-9 of 100 as
    whole while the engine copied the others' sliver (hc=1e-300 ran a CPU copy of 1e-302 of the
    hidden states)."""
    params = {f"{tier}g": g, f"{tier}c": c}
    if tier == "c":
        params["compress_cache"] = True
    f = _plan_file(tmp_path, "flexgen", "opt-6.7b", "flexgen-t4", **params)
    what = "activations" if tier == "h" else "a compressed KV cache"
    why = (
        f"{what} must sit whole on one tier, {tier}g and {tier}c each 0 or 100 (the runtime cannot "
        f"split them), got {g!r} and {c!r}"
    )
    assert guarded(["simulate", "--plan", f]) == (2, f"error: {f}: params.{field}: {why}\n")


@pytest.mark.parametrize(("hg", "hc"), [(100.0, 0.0), (0.0, 100.0), (0.0, 0.0), (100, 0)])
def test_whole_activations_run_and_continuous_slivers_are_splits(tmp_path, capsys, guarded, hg, hc):
    from hetsim.strategies.flexgen_policy import FlexGenPlan, validate, whole_tier

    f = _plan_file(tmp_path, "flexgen", "opt-6.7b", "flexgen-t4", hg=hg, hc=hc)
    assert guarded(["simulate", "--plan", f, "--format", "json"])[0] == 0
    validate(FlexGenPlan(hg=0.0, hc=1e-300, placement="continuous"))  # the LP's ideal splits anything
    assert FlexGenPlan(cg=0.0, cc=1e-300).kv_home == "" and FlexGenPlan(cg=0.0, cc=0.0).kv_home == "d"
    assert whole_tier(100, 0) == "g" and whole_tier(0.0, 100.0) == "c" and whole_tier(50.0, 50.0) == ""
