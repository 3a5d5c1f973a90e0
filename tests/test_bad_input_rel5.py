"""Session 21's rel5 bad-input fixes: each case here ran a wrong value silently before its fix."""

from __future__ import annotations

import pytest

BASE = {"batch": 1, "prompt_len": 16, "gen_len": 2, "model": "llama2-7b", "rig": "mixed-lab"}
PCIE = "takes link 'n0.pcie.gpu0' of rig 'mixed-lab' past a rig file's bounds: bandwidth"
BOUNDS = "must be in [1e+06, 1e+16] (SI units; physical bounds), got"


def _sweep(tmp_path, base, grid):
    import yaml

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "base": {**BASE, **base}, "grids": [grid]}))
    return spec


# ---- sweep bw_scale: a scaled link is held to a rig file's bounds ------------------------------------------
@pytest.mark.parametrize(
    ("base", "grid", "field", "why"),
    [
        ({}, {"bw_scale": [{"pcie": 0.5}, {"pcie": 1e300}]}, "grids[0].bw_scale[1]",
         f"pcie x 1e+300 {PCIE} must be a finite quantity, got inf"),  # ran links of infinite bandwidth
        ({}, {"bw_scale": [{"pcie": 1e-300}]}, "grids[0].bw_scale[0]",
         f"pcie x 1e-300 {PCIE} {BOUNDS} {25.2e9 * 1e-300!r}"),  # ran a 2.5e-290 B/s link
        ({"bw_scale": {"pcie": 1e7}}, {"batch": [1]}, "base.bw_scale",
         f"pcie x 10000000.0 {PCIE} {BOUNDS} {25.2e9 * 1e7!r}"),
        # each rate alone is in bounds; scaled after the knob that set it, it is not
        ({}, {"net_gbps": [1, 1e7], "bw_scale": [{"ethernet": 10}]}, "grids[0].bw_scale[0]",
         f"ethernet x 10 takes link 'n0.nic' of rig 'mixed-lab' past a rig file's bounds: bandwidth {BOUNDS} "
         f"{1e7 * 1e9 / 8 * 10!r}"),
    ],
)  # fmt: skip
def test_a_bw_scale_taking_a_link_past_a_rig_files_bounds_is_refused(
    tmp_path, capsys, guarded, base, grid, field, why
):
    spec = _sweep(tmp_path, base, {"strategy": ["gpu-only"], **grid})
    got = guarded(["sweep", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert got == (2, f"error: {spec}: {field}: {why}\n")
    assert not (tmp_path / "out").exists()


def test_a_bw_scale_within_bounds_scales_every_rate_as_before():
    from hetsim.hardware.loader import load_rig
    from hetsim.sweep.grid import apply_hardware

    rig = load_rig("mixed-lab")
    link = rig.links["n0.pcie.gpu0"]
    new = apply_hardware(rig, {"bw_scale": {"pcie": 0.25}}).links["n0.pcie.gpu0"]
    assert (new.bw, new.pageable_bw, new.fwd_bw) == (link.bw * 0.25, link.pageable_bw * 0.25, None)
    with pytest.raises(ValueError, match=r"pcie x 1e-09 takes link 'n0\.pcie\.gpu0' .* got 25\.2"):
        apply_hardware(rig, {"bw_scale": {"pcie": 1e-9}})  # a point run without the spec's check: a row


def test_a_bw_scale_on_a_rig_that_does_not_load_is_the_rigs_error(tmp_path, capsys, guarded):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\n")
    spec = _sweep(tmp_path, {"rig": str(bad)}, {"strategy": ["gpu-only"], "bw_scale": [{"pcie": 2}]})
    code, err = guarded(["sweep", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"])
    # session 22: the spec check reads each rig whole, so its own line before any point (had been
    # "ran 1 (1 failed)", exit 0: the point's error row)
    assert code == 2 and err.startswith(f"error: {bad}: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_bw_scale_on_links_cpu_sockets_removes_is_not_refused(tmp_path, capsys, guarded):
    # cpu_sockets 1 drops the socket-to-socket (upi) link, so no point scales it: the sweep ran before
    # the check and must still run; with both sockets kept the link is scaled, and refused
    grid = {"strategy": ["gpu-only"], "cpu_sockets": [1], "bw_scale": [{"upi": 1e-9}]}
    spec = _sweep(tmp_path, {"rig": "ktransformers-2s"}, grid)
    code, err = guarded(["sweep", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert code == 0 and "ran 1 (0 failed)" in err
    spec = _sweep(tmp_path, {"rig": "ktransformers-2s"}, {**grid, "cpu_sockets": [1, 2]})
    code, err = guarded(["sweep", str(spec), "--out", str(tmp_path / "out2"), "--workers", "1"])
    assert code == 2 and "grids[0].bw_scale[0]: upi x 1e-09 takes link 'n0.upi.cpu0-cpu1'" in err


def test_the_bw_scale_check_applies_each_rigs_link_knobs_once_not_once_per_scale(monkeypatch):
    """``check_scaled_links`` builds a rig per (rig, link knobs) and scales its links per factor: with 20
    factors it built 20 whole rigs (every device and link), ~0.3 s for 1,800 combinations."""
    from hetsim.errors import InputError
    from hetsim.sweep import grid as g
    from hetsim.sweep.spec import SweepSpec

    built = []
    apply = g.apply_hardware
    monkeypatch.setattr(
        g, "apply_hardware", lambda rig, knobs: built.append(dict(knobs)) or apply(rig, knobs)
    )
    scales = [{"pcie": 0.5 + i / 10} for i in range(20)]
    grid = {"strategy": ["gpu-only"], "bw_scale": scales, "net_gbps": [10, 100]}
    g.check_scaled_links(SweepSpec(name="s", base=BASE, grids=[grid]), "s.yaml")
    assert built == [{"net_gbps": 10}, {"net_gbps": 100}]
    with pytest.raises(InputError) as info:  # and a factor past the bounds is still found
        worse = {**grid, "bw_scale": [*scales, {"pcie": 1e-9}]}
        g.check_scaled_links(SweepSpec(name="s", base=BASE, grids=[worse]), "s.yaml")
    assert info.value.field == "grids[0].bw_scale[20]" and PCIE in info.value.message


# ---- CLI number flags: ASCII decimal digits only ----------------------------------------------------------
PLAN = ["plan", "--model", "llama2-7b", "--hw", "mixed-lab", "--format", "json"]
SERVE = ["serve", "--model", "llama2-7b", "--hw", "hexgen-half-budget", "--duration", "1"]


@pytest.mark.parametrize(
    ("args", "flag", "value"),
    [
        ([*PLAN, "--batch", "1_6"], "--batch", "1_6"),  # planned batch 16
        ([*PLAN, "--prompt-len", "1_0"], "--prompt-len", "1_0"),
        ([*PLAN, "--gen-len=2_0"], "--gen-len", "2_0"),
        (["compare", "--model", "llama2-7b", "--hw", "mixed-lab", "--batch", "1_6"], "--batch", "1_6"),
        ([*SERVE, "--rate", "1_0"], "--rate", "1_0"),  # a float flag: 10 requests/s
        ([*SERVE, "--rate", "0.5", "--seed", "٣"], "--seed", "٣"),  # an Arabic-Indic three
        (["sweep", "s.yaml", "--workers", "1_0"], "--workers", "1_0"),  # an extension's command
    ],
)
def test_a_number_flag_not_in_ascii_decimal_digits_is_refused_naming_the_flag(
    capsys, guarded, args, flag, value
):
    why = "must be a number in ASCII decimal digits (no '_' or other scripts' digits)"
    assert guarded(args) == (2, f"error: {flag}: {why}, got {value!r}\n")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ([*SERVE, "--rate", "inf"],
         "--rate: must be a finite number >= 1e-06 requests/s (one a ~12 days), got inf"),
        ([*PLAN, "--batch", "0"], "--batch: must be a positive integer, got 0"),
    ],
)  # fmt: skip
def test_other_bad_number_flags_keep_their_own_lines(capsys, guarded, args, line):
    assert guarded(args) == (2, f"error: {line}\n")


def test_plain_number_flags_still_run(capsys, guarded):
    assert guarded([*PLAN, "--batch", "16", "--prompt-len=016", "--gen-len", "2"])[0] == 0
