"""A stopped ``hetsim simulate`` says how far its run got: Ctrl-C (SIGINT) or SIGTERM while the
engine runs the plan step by step prints the simulated time reached, the tokens made of the whole
generation's and the TTFT once every first token exists, marked partial, and exits 128 + the signal.
Before, it printed nothing but why it kept nothing."""

from __future__ import annotations

import json
import re

import pytest

from hetsim import api
from hetsim.cli import main
from hetsim.sim import engine as engine_module
from hetsim.sim.run import SimulateStopped, simulate

# FlexGen's plan for 288 sequences of 4000 tokens: every decode step simulated, ~100 CPU s if left alone
PLAN_ARGS = ("--model", "llama2-70b", "--hw", "mixed-lab", "--prompt-len", "64", "--gen-len", "4000")
READY = "progress: tokens made\n"

# ``hetsim simulate`` with a progress line on stderr once the engine has recorded ``N`` token
# rounds: the test signals the process then, from outside, as a user would.
_SIMULATE_WITH_PROGRESS = """
import sys
from hetsim.cli import commands
from hetsim.sim.engine import Engine

N, real = int(sys.argv[1]), Engine.token_done

def token_done(self, count=1):
    real(self, count)
    if len(self.token_times) == N:
        sys.stderr.write("progress: tokens made\\n")
        sys.stderr.flush()

Engine.token_done = token_done
sys.exit(commands.main(["simulate", *sys.argv[2:]], process=True))
"""


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    assert main(["plan", *PLAN_ARGS, "--strategy", "flexgen", "--out", str(path), "--format", "json"]) == 0
    return path


def _stopped_simulate(signalled, sig: str, *args: str) -> tuple[int, str, str]:
    return signalled(_SIMULATE_WITH_PROGRESS, ["40", *args], READY, sig)


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_simulate_prints_how_far_it_got_marked_partial(signalled, plan_file, sig, code):
    returncode, out, err = _stopped_simulate(
        signalled, sig, "--plan", str(plan_file), "--exact", "--format", "json"
    )
    assert returncode == code, err
    doc = json.loads(out)
    assert doc["results"] == []  # no whole-run metric: each is over the whole generation
    partial = doc["partial"]
    assert partial["stopped_by"] == sig and partial["strategy"] == "flexgen"
    batch, gen_len = doc["workload"]["batch"], doc["workload"]["gen_len"]
    assert partial["tokens_total"] == batch * gen_len
    # 40 rounds of tokens recorded before the signal: FlexGen's make one GPU batch's tokens each
    gpu_batch = json.loads(plan_file.read_text())["params"]["gpu_batch_size"]
    assert 40 * gpu_batch <= partial["tokens"] < partial["tokens_total"]
    # TTFT is the prefill's, which the fast-forwarded run simulates as it is: the same number
    p, strategy, plan = api.load_plan(plan_file)
    whole = simulate(strategy, plan, p.rig, p.model, p.workload)
    assert partial["ttft_s"] == whole.ttft_s
    assert partial["ttft_s"] < partial["simulated_s"] < whole.e2e_s
    peaks = partial["peak_mem_bytes"]  # reached by the stop: none above the whole run's
    assert peaks and all(0 < peaks[d] <= whole.peak_mem_bytes[d] for d in peaks)
    assert err == (
        f"interrupted by {sig}: hetsim simulate stopped (how far it got is printed, marked partial: "
        f"{partial['tokens']} of {partial['tokens_total']} tokens made by simulated "
        f"{partial['simulated_s']:.6g} s; no whole-run metrics)\n"
    )


def test_a_stopped_simulate_marks_its_table_partial_and_leaves_the_trace_alone(
    signalled, plan_file, tmp_path
):
    trace = tmp_path / "trace.json"
    trace.write_text("the previous trace\n")
    returncode, out, err = _stopped_simulate(
        signalled, "SIGINT", "--plan", str(plan_file), "--trace", str(trace)
    )
    assert returncode == 130, err
    assert re.fullmatch(
        r"PARTIAL: flexgen stopped by SIGINT at simulated \S+ s: \d+ of \d+ tokens made, TTFT \S+ s, "
        r"peak memory so far \S+ \S+ \(n0\.\S+\); "
        rf"no metrics: they are over the whole generation; trace not written, {re.escape(str(trace))} "
        r"is left as it was\n",
        out,
    ), out
    assert trace.read_text() == "the previous trace\n"
    assert err.endswith(f"; no whole-run metrics; {trace} not written)\n"), err


def _interrupted_at(calls: int):
    """``Engine.token_done`` raising Ctrl-C's ``KeyboardInterrupt`` at its ``calls``-th call."""
    real, seen = engine_module.Engine.token_done, [0]

    def token_done(self, count=1):
        seen[0] += 1
        if seen[0] == calls:
            raise KeyboardInterrupt
        real(self, count)

    return token_done


def _problem_and_plan(strategy_name: str):
    p = api.problem("llama2-7b", "mixed-lab", 4, 128, 200)
    strategy = api.get_strategy(strategy_name)
    return p, strategy, strategy.default_plan(p.rig, p.model, p.workload)


def test_progress_counts_the_tokens_made_before_the_stop(monkeypatch):
    p, strategy, plan = _problem_and_plan("flexgen")  # one process makes every token: 4 per round
    whole = simulate(strategy, plan, p.rig, p.model, p.workload, exact=True)
    monkeypatch.setattr(engine_module.Engine, "token_done", _interrupted_at(5))
    with pytest.raises(SimulateStopped) as stopped:
        simulate(strategy, plan, p.rig, p.model, p.workload, exact=True)
    progress = stopped.value.progress
    assert progress == {
        "simulated_s": progress["simulated_s"],
        "tokens": 4 * 4,
        "tokens_total": 4 * 200,
        "ttft_s": whole.ttft_s,
        "peak_mem_bytes": progress["peak_mem_bytes"],
    }
    assert whole.ttft_s < progress["simulated_s"] < whole.e2e_s
    # the peaks reached by the stop: the devices the whole run used, none above its peak; the GPU's
    # (weights and the whole KV cache, booked before the first step) already reached
    peaks = progress["peak_mem_bytes"]
    assert peaks.keys() == whole.peak_mem_bytes.keys()
    assert all(0 < peaks[d] <= whole.peak_mem_bytes[d] for d in peaks)
    gpu = max(whole.peak_mem_bytes, key=lambda d: ("gpu" in d, whole.peak_mem_bytes[d]))
    assert peaks[gpu] == whole.peak_mem_bytes[gpu]


def test_no_ttft_while_processes_make_tokens_apart(monkeypatch):
    """gpu-only's two micro-batches make their tokens in processes of their own: which tokens are
    first ones is not known from the count alone (``first_token_time`` needs whole streams)."""
    p, strategy, plan = _problem_and_plan("gpu-only")
    monkeypatch.setattr(engine_module.Engine, "token_done", _interrupted_at(9))
    with pytest.raises(SimulateStopped) as stopped:
        simulate(strategy, plan, p.rig, p.model, p.workload, exact=True)
    assert stopped.value.progress["tokens"] == 8 * 2 and stopped.value.progress["ttft_s"] is None


def test_a_stop_in_a_fast_forward_sample_reports_no_progress(monkeypatch):
    """The samples a fast-forward runs are not the run's own steps (the tail's prompt is longer)."""
    p, strategy, plan = _problem_and_plan("gpu-only")
    monkeypatch.setattr(engine_module.Engine, "token_done", _interrupted_at(5))
    with pytest.raises(SimulateStopped) as stopped:
        simulate(strategy, plan, p.rig, p.model, p.workload)
    assert stopped.value.progress is None
