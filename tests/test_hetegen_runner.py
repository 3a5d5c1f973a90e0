"""validate.offload's HeteGen split module: the activations travel through pinned staging buffers reused
by every module of a shape, the weights' copy is issued before anything waits, and the result is the
whole module's product. The ordering and pinning only show on CUDA (the marked test); on the host the
same code runs with unpinned buffers and no streams."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

torch = pytest.importorskip("torch")

from hetsim.models.registry import get_model  # noqa: E402
from validate.offload import Staging, _Split, split_matmul  # noqa: E402


def _split(w: torch.Tensor, alpha: float) -> _Split:
    cols = round(alpha * w.shape[1])
    return _Split(cols, w[:, :cols].contiguous(), w[:, cols:].contiguous(), None)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=1) as p:
        yield p


def test_staged_modules_of_one_shape_share_buffers_and_keep_their_outputs(pool):
    """Three modules of one shape in a row (a layer's q/k/v): the staging buffers are allocated once,
    and each returned output is its own tensor, not the buffer the next module overwrites."""
    torch.manual_seed(0)
    dev, staging = torch.device("cpu"), Staging(pin=False)
    x = torch.randn(2, 5, 64)
    ws = [torch.randn(64, 48) for _ in range(3)]
    outs = [split_matmul(x, _split(w, 0.25), pool, dev, None, staging) for w in ws]
    assert len(staging.buffers) == 2  # x's and y's, once
    for w, y in zip(ws, outs, strict=True):
        torch.testing.assert_close(y, x @ w)
    x_buf = staging.buffers[("x", (2, 5, 64), torch.float32)]
    assert all(y.data_ptr() != x_buf.data_ptr() for y in outs)
    # all on the CPU (alpha 0): the output still is not the staging buffer
    y0 = split_matmul(x, _split(ws[0], 0.0), pool, dev, None, staging)
    y_buf = staging.buffers[("y", (2, 5, 48), torch.float32)]
    assert y0.data_ptr() != y_buf.data_ptr()
    split_matmul(x, _split(ws[1], 0.0), pool, dev, None, staging)
    torch.testing.assert_close(y0, x @ ws[0])  # not overwritten by the next module
    # all on the "GPU" (alpha 1): no staging, nothing for the pool
    torch.testing.assert_close(split_matmul(x, _split(ws[2], 1.0), pool, dev, None, staging), x @ ws[2])


def test_decode_and_prefill_shapes_get_their_own_buffers(pool):
    staging = Staging(pin=False)
    w = torch.randn(32, 40)
    for rows in (7, 1, 7, 1):  # prefill, decode, ...
        x = torch.randn(1, rows, 32)
        torch.testing.assert_close(
            split_matmul(x, _split(w, 0.5), pool, torch.device("cpu"), None, staging), x @ w
        )
    assert sorted(k[1] for k in staging.buffers) == [(1, 1, 20), (1, 1, 32), (1, 7, 20), (1, 7, 32)]


def test_the_runner_keeps_one_staging_and_pins_only_on_cuda():
    from validate.offload import hetegen_decoder

    spec = dataclasses.replace(
        get_model("opt-6.7b"), layers=1, hidden=64, heads=2, kv_heads=2, intermediate=128
    )
    run = hetegen_decoder(spec, {"alpha_prefill": {"fc1": 0.5}}, dtype=torch.float32, device="cpu")
    assert run.staging.pin is False
    run.reset(1, 8)
    run.step(torch.tensor([[1, 2, 3]]), 0)
    assert run.staging.buffers and all(not b.is_pinned() for b in run.staging.buffers.values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hetegen_runner_on_cuda_matches_the_plain_decoder():
    """Every module split, so every module's activations go through the pinned staging buffers while
    the host issues ahead: a buffer reused before the copy reading it ends would change the tokens.
    A race: passing here does not prove it absent."""
    from validate.offload import hetegen_decoder
    from validate.runners import RunConfig, generate_timed
    from validate.torch_model import TorchDecoder

    spec = dataclasses.replace(
        get_model("opt-6.7b"), layers=4, hidden=1024, heads=8, kv_heads=8, intermediate=4096
    )
    kinds = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "lm_head")
    plan = {"alpha_prefill": dict.fromkeys(kinds, 0.6), "alpha_decode": dict.fromkeys(kinds, 0.3)}
    cfg = RunConfig(
        model=dataclasses.asdict(spec), batch=2, prompt_len=128, gen_len=8, repeats=1, warmup_steps=0
    )
    plain = generate_timed(TorchDecoder(spec, device="cuda"), cfg)
    run = hetegen_decoder(spec, plan, dtype=torch.float32, device="cuda")
    assert generate_timed(run, cfg).tokens == plain.tokens
    assert run.staging.buffers and all(b.is_pinned() for b in run.staging.buffers.values())


def test_session_19s_opt_13b_plan_file_is_its_reports_plan():
    """gpu_session.sh's hetegen-opt-13b-s19-plan step re-runs the plan session 19 measured (TTFT 452.3 ms)
    on the pinned-staging runner: the committed plan file is that report's plan, and it loads."""
    import json
    from pathlib import Path

    from hetsim.api import load_plan

    s19 = Path(__file__).resolve().parents[1] / "validate/results/h200/s19"
    run = json.loads((s19 / "hetegen-opt-13b.json").read_text())["runs"][0]
    p, strategy, plan = load_plan(s19 / "hetegen-opt-13b.plan.json")
    assert strategy.plan_to_dict(plan) == run["plan"]
    assert (p.workload.batch, p.workload.prompt_len, p.workload.gen_len) == (1, 128, 8)
    script = (s19.parents[2] / "gpu_session.sh").read_text()
    assert "hetegen-opt-13b.plan.json" in script and "tests/test_hetegen_runner.py" in script
