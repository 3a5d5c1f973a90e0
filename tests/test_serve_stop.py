"""A stopped ``hetsim serve`` keeps what it served: Ctrl-C (SIGINT) or SIGTERM during a long request
stream prints the metrics of the requests finished by then, marked partial (simulated time reached,
requests finished / arrived / total), and exits 128 + the signal. Before, it printed nothing but
"it keeps no partial results"."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from hetsim import api
from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.serving import batching
from hetsim.serving.serve import RunStopped, serve_plan
from hetsim.serving.workload import poisson_requests
from hetsim.strategies.hexgen import HexGenPlan, Replica, Stage

KILL_TIMEOUT_S = 120
# ~95,000 requests on one candidate plan: ~20 CPU s if left alone; stopped after its first requests
LONG_SERVE = ("--model", "llama2-70b", "--hw", "mixed-lab", "--rate", "5", "--duration", "19000")
READY = "progress: requests finished\n"

# ``hetsim serve`` with a progress line on stderr once ``N`` requests have finished in the engine
# (every replica's ``on_done`` counted): the test signals the process then, from outside, as a user would.
_SERVE_WITH_PROGRESS = """
import sys
from hetsim.cli import commands
from hetsim.serving import batching

N, done = int(sys.argv[1]), [0]
real = batching.ReplicaServer.__init__

def init(self, *a, **k):
    real(self, *a, **k)
    inner = self.on_done

    def on_done(r, t):
        inner(r, t)
        done[0] += 1
        if done[0] == N:
            sys.stderr.write("progress: requests finished\\n")
            sys.stderr.flush()

    self.on_done = on_done

batching.ReplicaServer.__init__ = init
sys.exit(commands.main(["serve", *sys.argv[2:]], process=True))
"""


def _stopped_serve(signalled, sig: str, *args: str) -> tuple[int, str, str]:
    return signalled(_SERVE_WITH_PROGRESS, ["20", *LONG_SERVE, *args], READY, sig)


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_serve_prints_the_finished_requests_marked_partial(signalled, sig, code):
    returncode, out, err = _stopped_serve(signalled, sig, "--format", "json", "--slo", "20")
    assert returncode == code, err
    doc = json.loads(out)
    partial = doc["partial"]
    assert partial["stopped_by"] == sig
    assert (partial["plans_served"], partial["candidate_plans"]) == (0, 1)
    assert 20 <= partial["finished"] <= partial["arrived"] < partial["requests"] == doc["requests"] == 94980
    assert doc["finished"] == partial["finished"] and doc["unfinished"] == doc["requests"] - doc["finished"]
    # metrics over the finished requests (over all 94980, most unfinished, they would be None)
    assert all(doc[k]["p50"] is not None for k in ("latency_s", "ttft_s", "tpot_s"))
    assert 0 < doc["makespan_s"] <= partial["simulated_s"] < 19000
    # attainment over the decided requests: the finished ones and any unfinished past its deadline
    assert partial["finished"] <= partial["slo_over"] <= partial["arrived"]
    assert 0 < doc["slo_attainment"] <= 1
    assert err == (
        f"interrupted by {sig}: hetsim serve stopped (the metrics of the {partial['finished']} requests "
        f"finished by simulated {partial['simulated_s']:.6g} s ({partial['arrived']} of 94980 arrived) "
        "are printed, marked partial; 0 of 1 candidate plans served)\n"
    )


def test_a_stopped_serve_table_says_partial(signalled):
    returncode, out, err = _stopped_serve(signalled, "SIGINT")
    assert returncode == 130, err
    line = out.splitlines()[0]
    assert line.startswith("PARTIAL: stopped by SIGINT at simulated ") and " requests finished, " in line
    assert "of 94980; metrics over the finished; 0 of 1 candidate plans served" in line
    assert "latency_s" in out and "percentiles over the" in out


RIG = load_rig("mixed-lab")
MODEL = dataclasses.replace(get_model("llama2-7b"), layers=4)
PLAN = HexGenPlan((Replica((Stage(("n0.gpu0",), 4),)), Replica((Stage(("n1.gpu0",), 4),))), max_batch=4)


def test_a_stopped_run_keeps_the_finished_requests_as_the_whole_run_has_them(monkeypatch):
    """The requests finished by the stop carry the times the whole run gives them (same events up to
    then); the rest are unfinished; attainment is over the decided ones."""
    reqs = poisson_requests(4.0, n=60, seed=3)
    whole = serve_plan(PLAN, RIG, MODEL, reqs)
    real, done = batching.ReplicaServer.__init__, [0]

    def init(self, *a, **k):
        real(self, *a, **k)
        inner = self.on_done

        def on_done(r, t):
            inner(r, t)
            done[0] += 1
            if done[0] == 25:
                raise KeyboardInterrupt  # as the CLI's handler raises it

        self.on_done = on_done

    monkeypatch.setattr(batching.ReplicaServer, "__init__", init)
    with pytest.raises(RunStopped) as stopped:
        serve_plan(PLAN, RIG, MODEL, reqs)
    run = stopped.value
    finished = {r.rid: r for r in run.result.finished}
    assert len(finished) == 25 and run.arrived >= 25
    assert all(whole.records[rid] == rec for rid, rec in finished.items())
    assert all(r.finish_s >= run.now_s for r in whole.records if r.rid not in finished)
    assert run.result.makespan_s == max(r.finish_s for r in finished.values()) <= run.now_s
    deadlines = [whole.records[i].latency_s for i in range(len(reqs))]  # each met exactly
    assert run.attainment(deadlines) == (1.0, 25)
    tight = [0.0] * len(reqs)  # every arrived request is past its deadline: decided, missed
    assert run.attainment(tight) == (0.0, sum(r.arrival_s < run.now_s for r in reqs))


def test_a_serve_stopped_after_a_whole_candidate_keeps_the_best_served(monkeypatch):
    """Stopped while the search serves its second candidate: the first, served whole, is the document,
    marked partial with how many of the candidates were served."""
    from hetsim.planner import hexgen_cpsat

    args = {"rate": 2.0, "duration": 60.0}
    real, calls, served = hexgen_cpsat.serve_plan, [], []

    def serve_plan_once(*a, **k):
        calls.append(a[0])
        if len(calls) == 2:
            raise RunStopped(real(*a, **k), 0.0, 0)
        served.append(real(*a, **k))
        return served[-1]

    monkeypatch.setattr(hexgen_cpsat, "serve_plan", serve_plan_once)
    with pytest.raises(api.ServeStopped) as stopped:
        api.serve("llama2-70b", "hexgen-full-budget", **args)
    doc = stopped.value.doc
    assert doc["partial"]["plans_served"] == 1 and doc["partial"]["candidate_plans"] > 1
    assert doc["finished"] == doc["requests"] == len(served[0].records)
    assert doc["latency_s"] == served[0].summary()["latency_s"]
    assert len(doc["plan"]["replicas"]) == len(calls[0].replicas)


def test_a_serve_stopped_in_its_max_rate_search_keeps_the_whole_plan(monkeypatch):
    from hetsim.serving import serve as serving

    args = {"rate": 1.0, "duration": 30.0, "slo": 30.0}
    whole = api.serve("llama2-70b", "mixed-lab", **args)

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(serving, "attainment_at", stop)
    with pytest.raises(api.ServeStopped) as stopped:
        api.serve("llama2-70b", "mixed-lab", find_max_rate=True, **args)
    doc = stopped.value.doc
    assert doc == {
        **whole,
        "target_attainment": 0.99,
        "max_rate": None,
        "partial": {"max_rate": "not found: stopped during its search"},
    }


def test_a_request_dropped_before_the_stop_counts_as_decided(monkeypatch):
    """``--drop-late``: a request dropped by the stop has missed its deadline whatever comes after, so
    the partial SLO attainment counts it (a miss), even when its deadline is still ahead. Before, it
    was left out until its deadline passed, which raised the attainment."""
    reqs = poisson_requests(30.0, n=200, seed=5)
    alone = serve_plan(PLAN, RIG, MODEL, reqs[:1]).records[0].latency_s
    deadlines = [3 * alone] * len(reqs)
    real, dropped = batching.ReplicaServer.__init__, []

    def init(self, *a, **k):
        real(self, *a, **k)
        inner = self.on_drop

        def on_drop(r, t):
            inner(r, t)
            dropped.append(r.rid)
            if r.arrival_s + deadlines[r.rid] > t:  # dropped with its deadline still ahead: stop now
                raise KeyboardInterrupt

        self.on_drop = on_drop

    monkeypatch.setattr(batching.ReplicaServer, "__init__", init)
    with pytest.raises(RunStopped) as stopped:
        serve_plan(PLAN, RIG, MODEL, reqs, deadlines=deadlines, drop_late=True)
    run = stopped.value
    finished = {r.rid for r in run.result.finished}
    late = {r.rid for r in run.result.records if r.arrival_s + deadlines[r.rid] < run.now_s}
    decided = finished | late | set(dropped)
    met = sum(r.latency_s <= deadlines[r.rid] for r in run.result.finished)
    assert dropped[-1] not in finished | late  # the case: a drop whose deadline is still ahead
    assert run.attainment(deadlines) == (met / len(decided), len(decided))


# ``hetsim serve`` that gets SIGTERM (a real one, from the kernel) as its candidate plans are made:
# before any of them is served.
_SERVE_STOPPED_WHILE_PLANNING = """
import signal, sys
from hetsim.cli import commands
from hetsim.planner import hexgen_cpsat

real = hexgen_cpsat.candidates

def candidates(*a, **k):
    signal.raise_signal(signal.SIGTERM)
    return real(*a, **k)

hexgen_cpsat.candidates = candidates
sys.exit(commands.main(["serve", *sys.argv[1:]], process=True))
"""


def test_a_serve_stopped_before_its_first_run_says_it_has_nothing_to_print():
    """Before, its line said only "it keeps no partial results"."""
    args = [sys.executable, "-c", _SERVE_STOPPED_WHILE_PLANNING, *LONG_SERVE, "--format", "json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=KILL_TIMEOUT_S)
    assert (done.returncode, done.stdout) == (143, "")
    assert (
        done.stderr
        == "interrupted by SIGTERM: hetsim serve stopped (it had served no plan yet: nothing to print)\n"
    )
