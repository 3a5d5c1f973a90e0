"""The host issuing kernels ahead of the GPU (``Efficiency.kernel_issue_s``): ops cost the slower of
the host's issue (kernels x issue time) and the device's roofline, summed over a run of ops, with no
per-op overhead; a profile without the field keeps its per-op ``overhead_s`` on the roofline."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.costs.op_cost import block_cost, combine, op_cost, repeated
from hetsim.hardware.loader import load_rig
from hetsim.hardware.types import ComputeDevice, Efficiency
from hetsim.models import get_model
from hetsim.models.layer_ops import step_ops
from hetsim.models.spec import Op, OpKind

ISSUE = 14e-6  # s per kernel


def _gpu(issue: float, overhead: float = 9e-6) -> ComputeDevice:
    eff = Efficiency(compute={"matmul": 0.8}, memory=0.8, overhead_s=overhead, kernel_issue_s=issue)
    return ComputeDevice("g", "h200", "gpu", "n0", 141e9, 4.8e12, {"fp16": 989e12}, eff)


def test_a_llama2_7b_decode_step_at_batch_1_is_paced_by_the_host_and_a_long_prefill_by_the_gpu():
    spec, gpu = get_model("llama2-7b"), _gpu(ISSUE)
    decode = block_cost(gpu, step_ops(spec, "decode", 1, 1, 513))
    assert decode.issue_s == pytest.approx(838 * ISSUE)  # 26 kernels a layer, 6 outside
    assert decode.time_s == decode.issue_s > decode.device_s  # the weights stream in ~4 ms
    prefill = block_cost(gpu, step_ops(spec, "prefill", 32, 512, 512))
    assert prefill.time_s == prefill.device_s > 10 * prefill.issue_s
    assert decode.overhead_s == prefill.overhead_s == 0.0  # no launch on top of the roofline


def test_a_gpu_whose_issue_is_unknown_keeps_one_overhead_per_op_on_the_roofline():
    spec = get_model("llama2-7b")
    ops = step_ops(spec, "decode", 1, 1, 513)
    cost = block_cost(_gpu(0.0), ops)
    assert cost.issue_s == 0.0 and cost.overhead_s == pytest.approx(419 * 9e-6)
    assert cost.time_s == sum(op_cost(_gpu(0.0), o).time_s for o in ops)


_ops = st.lists(
    st.builds(
        lambda flops, nbytes, n: Op("x", OpKind.ELEMENTWISE, 0, flops, 0.0, nbytes, 0.0, kernels=n),
        st.floats(0, 1e12),
        st.floats(0, 1e9),
        st.integers(1, 8),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(_ops, st.integers(1, 5))
def test_ops_back_to_back_take_the_slower_of_issue_and_device_over_the_whole_run(ops, times):
    gpu = _gpu(ISSUE)
    costs = [op_cost(gpu, o) for o in ops]
    run = combine(costs)
    issue = sum(o.kernels for o in ops) * ISSUE
    device = sum(max(c.compute_s, c.memory_s) for c in costs)
    assert run.issue_s == pytest.approx(issue) and run.device_s == pytest.approx(device)
    assert run.time_s == pytest.approx(max(issue, device))
    assert run.time_s <= sum(c.time_s for c in costs) * (1 + 1e-12)  # overlap across ops, never worse
    again = repeated(run, times)
    assert again.time_s == pytest.approx(times * run.time_s) and again.issue_s == pytest.approx(times * issue)


def _two_cursors(issue: list[float], device: list[float]) -> float:
    """One stream: op j starts when the device is free and the host has issued it; the host issues
    on without waiting for the device."""
    issued = free = 0.0
    for i, d in zip(issue, device, strict=True):
        issued += i
        free = max(free, issued) + d
    return free


@settings(max_examples=60, deadline=None)
@given(_ops, st.integers(1, 40))
def test_paced_is_the_period_of_the_two_cursor_schedule_of_a_repeated_run(ops, times):
    costs = [op_cost(_gpu(ISSUE), o) for o in ops]
    issue, device = [c.issue_s for c in costs] * times, [c.device_s for c in costs] * times
    period = combine(costs).time_s
    transient = sum(c.issue_s + c.device_s for c in costs)
    schedule = _two_cursors(issue, device)
    assert times * period * (1 - 1e-9) <= schedule <= times * period + transient * (1 + 1e-9)


_FINAL = Path(__file__).resolve().parents[1] / "validate/results/h200/final/gpu.yaml"
_GPU_AT = ("      matmul_half_rows:", "9.321 us")  # inside the H200's entry, after its launch overhead
_CPU_AT = ("      overhead:\n        value: 20.913 us", "")  # inside the host CPU's entry


def _with_issue(path: Path, value: str, anchor: tuple[str, str]) -> Path:
    """``final/gpu.yaml`` with ``kernel_issue: value`` added to the entry at ``anchor``."""
    text = _FINAL.read_text()
    at = text.index(anchor[0], text.index(anchor[1]))
    entry = f"      kernel_issue:\n        value: {value}\n        source: a test\n        grade: measured\n"
    path.write_text(text[:at] + entry + text[at:])
    return path


def test_a_profile_gives_the_issue_time_with_its_provenance(tmp_path: Path):
    rig = load_rig(_with_issue(tmp_path / "gpu.yaml", "14.021 us", _GPU_AT))
    gpu = next(d for d in rig.devices.values() if d.kind == "gpu")
    assert gpu.efficiency.kernel_issue_s == pytest.approx(14.021e-6)
    assert gpu.provenance["efficiency.kernel_issue_s"].source == "a test"
    assert load_rig(_FINAL).devices[gpu.name].efficiency.kernel_issue_s == 0.0


def test_kernel_issue_on_a_cpu_is_one_line_naming_the_field(tmp_path: Path):
    from hetsim.errors import InputError

    with pytest.raises(InputError, match="kernel_issue is a GPU's") as err:
        load_rig(_with_issue(tmp_path / "cpu.yaml", "5 us", _CPU_AT))
    assert "efficiency.kernel_issue" in str(err.value) and "cpu.yaml" in str(err.value)


def test_a_zero_kernel_issue_is_refused_not_read_as_unknown(tmp_path: Path):
    """0 us would leave the per-op overhead on, under a field that says the host's issue is free."""
    from hetsim.errors import InputError

    with pytest.raises(InputError, match="kernel_issue must be > 0") as err:
        load_rig(_with_issue(tmp_path / "gpu.yaml", "0 us", _GPU_AT))
    assert "efficiency.kernel_issue" in str(err.value) and "gpu.yaml" in str(err.value)


def test_the_serving_estimate_of_one_gpu_is_the_engines_time_where_the_host_issues_ahead():
    """``pipeline_costs.step_time`` (HexGen's fitness, the dispatcher) books what the engine books: on
    one GPU a layer's attention and MLP blocks as one run, paced over both. A 512-token prefill at
    batch 1 on the H200 has host-paced attention and a GPU-paced MLP: pacing each block alone
    gave 3.83 ms for a request the engine serves in 3.35."""
    import dataclasses

    from hetsim.serving.serve import serve_plan
    from hetsim.serving.workload import Request
    from hetsim.strategies.hexgen import HexGenPlan, Replica, Stage
    from hetsim.strategies.pipeline_costs import request_latency

    rig = load_rig(Path(__file__).resolve().parents[1] / "validate/results/h200/issue/gpu.yaml")
    (gpu,) = rig.gpus()
    model = dataclasses.replace(get_model("llama2-7b"), layers=4)
    replica = Replica((Stage((gpu.name,), 4),))
    for prompt, out in ((512, 2), (32, 4)):
        (done,) = serve_plan(
            HexGenPlan((replica,), max_batch=1), rig, model, [Request(0, 0.0, prompt, out)]
        ).records
        assert done.finish_s == pytest.approx(
            request_latency(rig, replica.stages, model, prompt, out), rel=1e-9
        )


def test_hw_show_gives_the_issue_time_that_replaces_the_per_op_overhead_and_only_where_measured():
    from hetsim.hardware import rig_to_dict

    h200 = Path(__file__).resolve().parents[1] / "validate/results/h200"
    (issued,) = (d for d in rig_to_dict(load_rig(h200 / "issue/gpu.yaml"))["devices"] if d["kind"] == "gpu")
    assert issued["efficiency"]["kernel_issue_s"] == pytest.approx(14.021e-6)
    (plain,) = (d for d in rig_to_dict(load_rig(h200 / "final/gpu.yaml"))["devices"] if d["kind"] == "gpu")
    assert "kernel_issue_s" not in plain["efficiency"]  # every other profile's output as it was
