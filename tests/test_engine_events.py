"""The engine's own SimPy events (``_Environment.timeout``, ``AllOf``) resume processes in exactly
the order SimPy's ``timeout`` and ``all_of`` do: every run, and so every result, is unchanged."""

from __future__ import annotations

import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.sim.engine import AllOf, _Environment

# a process: a list of steps; a step is a delay (a timeout) or a list of delays (all_of over them,
# some as sub-processes), or "fail" (the process raises: all_of waiting on it fails)
delays = st.sampled_from([0.0, 0.5, 1.0, 1.5])
step = st.one_of(delays, st.lists(st.tuples(delays, st.booleans()), max_size=4), st.just("fail"))
programs = st.lists(st.lists(step, max_size=5), min_size=1, max_size=4)


def _run(program, fast: bool) -> list:
    env = _Environment() if fast else simpy.Environment()
    timeout = env.timeout if fast else (lambda d: simpy.Environment.timeout(env, d))
    join = (lambda evs: AllOf(env, evs)) if fast else env.all_of
    log: list = []

    def sub(name, delay):
        yield timeout(delay)
        log.append((env.now, name, "sub"))

    def proc(pid, steps):
        for n, s in enumerate(steps):
            if s == "fail":
                raise KeyError(pid)
            if isinstance(s, float):
                yield timeout(s)
            else:
                events = [env.process(sub((pid, n, k), d)) if as_proc else timeout(d)
                          for k, (d, as_proc) in enumerate(s)]  # fmt: skip
                try:
                    yield join(events)
                except KeyError:
                    log.append((env.now, pid, "caught"))
            log.append((env.now, pid, n))

    def parent():
        kids = [env.process(proc(i, steps)) for i, steps in enumerate(program)]
        try:
            yield join(kids)
        except KeyError as exc:
            log.append((env.now, "failed", exc.args))
        log.append((env.now, "parent"))

    env.process(parent())
    try:
        env.run()
    except KeyError as exc:  # a failure nobody waited on
        log.append(("unhandled", exc.args))
    return log


@settings(max_examples=300, deadline=None)
@given(programs)
def test_engine_events_resume_processes_as_simpy_does(program):
    assert _run(program, fast=True) == _run(program, fast=False)


def test_all_of_nothing_fires_at_once():
    env = _Environment()
    seen = []

    def proc():
        yield AllOf(env, [])
        seen.append(env.now)

    env.process(proc())
    env.run()
    assert seen == [0.0]


def test_negative_delay_is_refused_as_simpy_refuses_it():
    import pytest

    with pytest.raises(ValueError, match="Negative delay"):
        _Environment().timeout(-1.0)
