"""``Engine.wait`` and ``Engine.wait_until`` move the clock without a SimPy event when nothing else
is queued first: every process resumes at the same time and in the same order as with the event
(``compute``'s timeout, ``until``), so every result and trace is the same to the bit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim import api
from hetsim.hardware.loader import load_rig
from hetsim.models.spec import Op, OpKind
from hetsim.sim.engine import Engine, _Environment

_RIG = load_rig("mixed-lab")
_DEVICES = ("n0.gpu0", "n0.cpu0", "n0.gpu1")
_OPS = tuple(Op(f"op{i}", OpKind.MATMUL, 0, 10.0**f, 10.0**b, 1e5, 1e5) for i, (f, b) in
             enumerate([(9, 7), (7, 7), (11, 8), (6, 4)]))  # fmt: skip

# a step: ("wait", device, op); ("until", [(device, op) or copy bytes, ...]); ("sub", device, op): a
# sub-process that waits on its own task, joined with ``all_of`` with a task's event; ("tick", delay)
step = st.one_of(
    st.tuples(st.just("wait"), st.sampled_from(_DEVICES), st.sampled_from(_OPS)),
    st.tuples(
        st.just("until"),
        st.lists(
            st.one_of(
                st.tuples(st.sampled_from(_DEVICES), st.sampled_from(_OPS)), st.sampled_from([0.0, 1e5, 3e7])
            ),
            max_size=3,
        ),
    ),
    st.tuples(st.just("sub"), st.sampled_from(_DEVICES), st.sampled_from(_OPS)),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 1e-4, 2.5e-3])),
)
programs = st.lists(st.lists(step, max_size=6), min_size=1, max_size=4)


def _run(program, mode: str) -> tuple:
    """``mode``: "skip" (``wait``/``wait_until``), "advance" (waits as ``advance``: yield only an event
    it returns), "events" (the same with the skip switched off), "reference" (the events the engine
    made before: ``env.timeout(end - now)`` and ``until``)."""
    engine = Engine(_RIG)
    env = engine.env
    log: list = []

    def wait(end):
        return env.timeout(end - env.now) if mode == "reference" else engine.wait(end)

    def sub(name, device, op):
        yield wait(engine.book_compute(device, op))
        log.append((env.now, name))

    def proc(pid, steps):
        for n, (kind, *args) in enumerate(steps):
            if kind == "wait" and mode == "advance":
                if (ev := engine.advance(engine.book_compute(*args))) is not None:
                    yield ev
            elif kind == "wait":
                yield wait(engine.book_compute(*args))
            elif kind == "until":
                ends = [engine.book_transfer("n0.cpu0", "n0.gpu0", a) if isinstance(a, float)
                        else engine.book_compute(*a) for a in args[0]]  # fmt: skip
                yield engine.until(ends) if mode == "reference" else engine.wait_until(ends)
            elif kind == "sub":
                yield engine.all_of([env.process(sub((pid, n), *args)), engine.compute(*args)])
            else:
                yield env.timeout(args[0])
            log.append((env.now, pid, n))
            engine.token_done()

    def parent(e):
        yield e.all_of([env.process(proc(i, steps)) for i, steps in enumerate(program)])
        log.append((env.now, "parent"))

    engine.run(parent)
    lanes = sorted((k, v.free_at, v.busy_s, v.memory_bound_s) for k, v in engine.lanes.items())
    return log, engine.tasks, engine.token_times, engine.token_streams, lanes


@settings(max_examples=200, deadline=None)
@given(programs)
def test_waits_resume_processes_as_their_events_do(program):
    ref = _run(program, "reference")
    assert _run(program, "skip") == ref
    assert _run(program, "advance") == ref
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_Environment, "skip_events", False)
        assert _run(program, "events") == ref
        assert _run(program, "advance") == ref


def test_a_lone_schedule_runs_without_events():
    engine = Engine(_RIG)
    steps = []

    def schedule(e):
        for op in _OPS:
            yield e.wait(e.book_compute("n0.gpu0", op))
            steps.append(len(e.env._queue))
        yield e.wait_until([e.book_transfer("n0.cpu0", "n0.gpu0", 1e6)])

    makespan = engine.run(schedule)
    assert steps == [0] * len(_OPS)  # nothing was ever queued while the schedule ran
    assert makespan == engine.last_end > engine.lanes["n0.gpu0:compute"].free_at > 0


@pytest.mark.parametrize(
    ("model", "rig", "strategy", "batch"),
    [
        ("llama2-70b", "mixed-lab", "hetegen", 2),
        ("opt-13b", "hetegen-a10", "hetegen", 1),
        ("opt-30b", "flexgen-t4", "flexgen", 8),
        ("llama2-70b", "mixed-lab", "flexgen", 4),
    ],
)
def test_strategies_give_the_same_bits_and_traces_without_the_skip(
    monkeypatch, tmp_path, model, rig, strategy, batch
):
    p = api.problem(model, rig, batch, 96, 5)
    fast = api.compare(p, [strategy], trace_path=str(tmp_path / "fast.json"))
    monkeypatch.setattr(_Environment, "skip_events", False)
    ref = api.compare(p, [strategy], trace_path=str(tmp_path / "ref.json"))
    assert [repr(r) for r in ref] == [repr(r) for r in fast]
    assert (tmp_path / "fast.json").read_bytes() == (tmp_path / "ref.json").read_bytes()
    assert fast[0].feasible
