"""``Engine.reset`` gives a fresh engine's state on the same rig, and HeteGen's ``measure_split``,
which resets one engine and runs each split module in it without a SimPy process, measures what a
fresh engine running the module as a process measures, to the bit."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import load_rig
from hetsim.models.registry import get_model
from hetsim.models.spec import Op, OpKind
from hetsim.sim.engine import Engine, _Environment
from hetsim.sim.memory import OutOfMemory
from hetsim.strategies import hetegen
from hetsim.strategies.hetegen import module_ops, split_linear

_RIG = load_rig("mixed-lab")
_OPS = tuple(Op(f"op{i}", OpKind.MATMUL, 0, 10.0**f, 10.0**b, 1e5, 1e5) for i, (f, b) in
             enumerate([(9, 7), (7, 7), (11, 8), (6, 4)]))  # fmt: skip
_DEVICES = ("n0.gpu0", "n0.cpu0", "n0.cpu1", "n1.gpu1")
# a task: compute (device, op) or a copy (src, dst, bytes), each issued after a clock step
task = st.one_of(
    st.tuples(st.just("compute"), st.sampled_from(_DEVICES), st.sampled_from(_OPS)),
    st.tuples(
        st.just("copy"), st.sampled_from(_DEVICES), st.sampled_from(_DEVICES), st.sampled_from([1e5, 3e8])
    ),
)
programs = st.lists(st.tuples(task, st.sampled_from([0.0, 1e-4, 3e-3])), max_size=12)


def _state(engine: Engine, program) -> tuple:
    def schedule(e):
        for (kind, *args), tick in program:
            end = e.book_compute(*args) if kind == "compute" else e.book_transfer(*args)
            yield e.env.timeout(tick)
            if kind == "compute":
                yield e.wait(max(end, e.env.now))
            e.token_done()

    makespan = engine.run(schedule)
    lanes = sorted((k, v.free_at, v.busy_s, v.memory_bound_s) for k, v in engine.lanes.items() if v.busy_s)
    dram = sorted(
        (k, t.bytes_moved, tuple(t._times), tuple(t._booked)) for k, t in engine.host_memory.items()
    )
    counts = (engine.tasks, engine.last_end, engine.bytes_transferred)
    tokens = (engine.token_times, engine.token_streams)
    return makespan, counts, tokens, lanes, dram, engine.utilization(makespan), engine.memory.peaks()


@settings(max_examples=150, deadline=None)
@given(first=programs, second=programs)
def test_a_reset_engine_runs_as_a_fresh_one(first, second):
    used = Engine(_RIG)
    _state(used, first)
    used.alloc("n0.gpu0", 1e9, "weights")
    used.reset()
    assert _state(used, second) == _state(Engine(_RIG), second)


_MODEL = get_model("llama2-13b")


@settings(max_examples=150, deadline=None)
@given(
    batch=st.sampled_from([1, 4, 64]),
    kind=st.sampled_from(sorted(module_ops(_MODEL, "decode", 1, 1))),
    alpha=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
    sync_s=st.sampled_from([0.0, 2e-5]),
    cpu=st.sampled_from(["n0.cpu0", "n0.cpu1"]),
    cpu_dtype=st.sampled_from(["fp16", "fp32"]),
)
def test_a_split_measured_in_the_reused_engine_is_the_fresh_measurement(
    batch, kind, alpha, sync_s, cpu, cpu_dtype
):
    op = module_ops(_MODEL, "decode", batch, 1)[kind]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(hetegen, "_split_setting", lambda rig, gpu, cpu: None)  # nothing remembered
        reused = hetegen.measure_split(_RIG, "n0.gpu0", cpu, op, alpha, sync_s, cpu_dtype)
    ends = {"cpu": 0.0, "gpu": 0.0}
    total = Engine(_RIG).run(lambda e: split_linear(e, "n0.gpu0", cpu, op, alpha, sync_s, ends, cpu_dtype))
    assert reused == (total, ends["cpu"], ends["gpu"])


def test_without_the_skip_a_split_runs_as_a_process(monkeypatch):
    op = module_ops(_MODEL, "decode", 4, 1)["q_proj"]
    monkeypatch.setattr(hetegen, "_split_setting", lambda rig, gpu, cpu: None)
    fast = hetegen.measure_split(_RIG, "n0.gpu0", "n0.cpu0", op, 0.37, 2e-5)
    monkeypatch.setattr(_Environment, "skip_events", False)
    assert hetegen.measure_split(_RIG, "n0.gpu0", "n0.cpu0", op, 0.37, 2e-5) == fast


@settings(max_examples=100, deadline=None)
@given(
    batch=st.sampled_from([1, 4, 64]),
    kind=st.sampled_from(sorted(module_ops(_MODEL, "decode", 1, 1))),
    fraction=st.floats(0.0, 1.0),
)
def test_a_share_is_the_op_replaced(batch, kind, fraction):
    op = module_ops(_MODEL, "prefill", batch, 16)[kind]
    made = hetegen._share(op, fraction)
    want = dataclasses.replace(
        op,
        flops=op.flops * fraction,
        weight_bytes=op.weight_bytes * fraction,
        act_out_bytes=op.act_out_bytes * fraction,
        weight_row_bytes=op.weight_row_bytes * fraction,
        dequant_ops=op.dequant_ops * fraction,
    )
    assert made == want and hash(made) == hash(want) and repr(made) == repr(want)
    assert made.__dict__ == want.__dict__ and type(made) is Op


# ---- review (issue 20): state that could survive ``reset``, threads, ``_share``, the inline loop ----
_RIGS = {name: load_rig(name) for name in ("mixed-lab", "hetegen-a10", "flexgen-t4")}
# n0's two CPU entries as slices of one socket: one compute stream and one DRAM timeline for both,
# which ``reset`` meets twice (no shipped rig shares a socket)
_RIGS["shared-socket"] = dataclasses.replace(
    _RIG,
    nodes={
        **_RIG.nodes,
        "n0": dataclasses.replace(_RIG.nodes["n0"], cpu_sharing="core", shared_dram_bw=1.2e11),
    },
)
_CPUS = {"hetegen-a10": ("n0.cpu0",), "flexgen-t4": ("n0.cpu0",)}
_CPUS["mixed-lab"] = _CPUS["shared-socket"] = ("n0.cpu0", "n0.cpu1")


def _fresh_split(rig, cpu, op, alpha, sync_s, cpu_dtype):
    ends = {"cpu": 0.0, "gpu": 0.0}
    total = Engine(rig).run(lambda e: split_linear(e, "n0.gpu0", cpu, op, alpha, sync_s, ends, cpu_dtype))
    return total, ends["cpu"], ends["gpu"]


def _raise(*args):
    raise RuntimeError("half-way")


split_call = st.tuples(
    st.sampled_from(sorted(_RIGS)),
    st.integers(0, 1),
    st.sampled_from([1, 8]),
    st.sampled_from(sorted(module_ops(_MODEL, "decode", 1, 1))),
    st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
    st.sampled_from([0.0, 2e-5]),
    st.sampled_from(["fp16", "fp32"]),
    st.booleans(),  # first a call that raises half-way (an unknown CPU, after the GPU path is booked)
)


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(split_call, min_size=1, max_size=8))
def test_splits_measured_one_after_another_in_the_reused_engine_are_fresh_ones(calls):
    """Any sequence of splits (other rigs, CPUs, modules, shares, and measurements that raised part way
    through with bookings made) leaves nothing the next measurement reads."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(hetegen, "_split_setting", lambda rig, gpu, cpu: None)  # nothing remembered
        for rig_name, c, batch, kind, alpha, sync_s, cpu_dtype, raise_first in calls:
            rig, cpu = _RIGS[rig_name], _CPUS[rig_name][c % len(_CPUS[rig_name])]
            op = module_ops(_MODEL, "decode", batch, 1)[kind]
            if raise_first:  # the GPU path and the activation copy are booked, then it raises
                with pytest.MonkeyPatch.context() as broken, pytest.raises(RuntimeError):
                    broken.setattr(hetegen, "cpu_side", _raise)
                    hetegen.measure_split(rig, "n0.gpu0", cpu, op, 0.5, sync_s, "fp32")
            got = hetegen.measure_split(rig, "n0.gpu0", cpu, op, alpha, sync_s, cpu_dtype)
            assert got == _fresh_split(rig, cpu, op, alpha, sync_s, cpu_dtype)


def _streams_program(engine: Engine, n: int):
    """``n`` processes whose tasks end at equal times (their order is SimPy's event order) making
    tokens; the main process joins them."""

    def worker(e, i):
        yield e.compute("n0.gpu0", _OPS[i % 2])
        yield e.transfer("n0.cpu0", "n0.gpu0", 1e5)
        e.token_done(i + 1)
        yield e.all_of([e.compute("n0.cpu0", _OPS[3]), e.env.timeout(0)])
        e.token_done()

    def main(e):
        yield e.all_of([e.env.process(worker(e, i)) for i in range(n)])
        e.token_done()

    makespan = engine.run(main)
    lanes = sorted((k, v.free_at, v.busy_s, v.memory_bound_s) for k, v in engine.lanes.items() if v.busy_s)
    return makespan, engine.token_times, engine.token_streams, lanes, engine.tasks, engine.env._now


@pytest.mark.parametrize("how", ["raised", "out of memory", "left events queued"])
def test_a_reset_engine_after_a_run_that_did_not_finish_is_fresh(how):
    """A run that raised inside a process (events and processes still queued, one active), one that
    ran out of memory, one stopped with events queued: after ``reset`` the same event order at equal
    times (token streams by process number), clock, lanes and memory as a fresh engine."""
    used = Engine(_RIG)
    if how == "raised":

        def boom(e):
            e.env.process(_streams_program_worker_forever(e))
            yield e.compute("n0.gpu0", _OPS[0])
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            used.run(boom)
    elif how == "out of memory":
        used.alloc("n0.gpu0", 1e9, "weights")
        with pytest.raises(OutOfMemory):
            used.alloc("n0.gpu0", 1e15, "kv")
    else:
        used.env.process(_streams_program_worker_forever(used))
        used.env.run(until=1e-3)
    assert used.env._queue or how == "out of memory"
    used.reset()
    assert used.memory.peaks() == {} and used.memory.used("n0.gpu0") == 0.0
    assert _streams_program(used, 5) == _streams_program(Engine(_RIG), 5)


def _streams_program_worker_forever(e):
    while True:
        yield e.compute("n0.gpu0", _OPS[1])
        yield e.transfer("n0.gpu0", "n1.gpu1", 3e8)


def test_splits_measured_from_many_threads_are_fresh_ones():
    """Each thread measures in its own engine (a Dask worker runs sweep points in threads): with the
    interpreter switching threads every microsecond, every answer is the fresh engine's."""

    jobs = [
        (name, cpu, kind, alpha)
        for name in sorted(_RIGS)
        for cpu in _CPUS[name]
        for kind in ("q_proj", "down_proj")
        for alpha in (0.0, 0.3, 0.71, 1.0)
    ]
    want = {
        job: _fresh_split(
            _RIGS[job[0]], job[1], module_ops(_MODEL, "decode", 4, 1)[job[2]], job[3], 2e-5, "fp16"
        )
        for job in jobs
    }
    got: dict[int, list] = {}

    def measure(i):
        out = got.setdefault(i, [])
        for job in jobs[i:] + jobs[:i]:
            name, cpu, kind, alpha = job
            op = module_ops(_MODEL, "decode", 4, 1)[kind]
            out.append((job, hetegen.measure_split(_RIGS[name], "n0.gpu0", cpu, op, alpha, 2e-5, "fp16")))

    with pytest.MonkeyPatch.context() as m:
        m.setattr(hetegen, "_split_setting", lambda rig, gpu, cpu: None)
        _race(measure)
    assert sorted(got) == [0, 1, 2, 3]
    for out in got.values():
        assert len(out) == len(jobs) and all(value == want[job] for job, value in out)


_SCALED = ("flops", "weight_bytes", "act_out_bytes", "weight_row_bytes", "dequant_ops")


def _every_field_set(cls=Op, **extra):
    """An op of ``cls`` with every field (``dataclasses.fields``: a field added later included) set
    to a value of its own, none at its default."""
    values = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        if f.name == "kind":
            values[f.name] = OpKind.ATTENTION
        elif f.type in ("str", str):
            values[f.name] = f"{f.name}-{i}"
        elif f.type in ("int", int):
            values[f.name] = 7 + i
        else:
            values[f.name] = 1.5 + i
    values.update(extra)
    return cls(**values)


@pytest.mark.parametrize("fraction", [0.0, -0.0, 0.37, 1.0])
def test_a_share_is_dataclasses_replace_over_every_field(fraction):
    """``_share`` copies the op's fields: every field of Op (by ``dataclasses.fields``, so a field added
    later is held to this too) is replace's, scaled or not; Op keeps what the copy relies on (no
    ``__post_init__``, no field left out of ``__init__``, no slots, nothing cached on the instance)."""
    op = _every_field_set()
    made = hetegen._share.__wrapped__(op, fraction)  # the copy itself (lru_cache: 0.0 and -0.0 one key)
    want = dataclasses.replace(op, **{name: getattr(op, name) * fraction for name in _SCALED})
    for f in dataclasses.fields(Op):
        assert repr(getattr(made, f.name)) == repr(getattr(want, f.name)), f.name
    assert made == want and hash(made) == hash(want) and vars(made) == vars(want) and type(made) is Op
    assert not hasattr(Op, "__post_init__") and not hasattr(Op, "__slots__")
    assert all(f.init for f in dataclasses.fields(Op))
    assert set(vars(op)) == {f.name for f in dataclasses.fields(Op)}  # e.g. no cached_property values


@dataclasses.dataclass(frozen=True)
class _TaggedOp(Op):
    tag: str = "t"


def test_a_share_of_an_op_subclass_is_of_that_subclass():
    op = _every_field_set(_TaggedOp)
    made = hetegen._share(op, 0.25)
    want = dataclasses.replace(op, **{name: getattr(op, name) * 0.25 for name in _SCALED})
    assert type(made) is _TaggedOp and made == want and vars(made) == vars(want)


def test_split_settings_met_by_two_threads_at_once_get_numbers_of_their_own(monkeypatch):
    """Two threads numbering two new split settings at once (here: the second thread's whole call
    runs between the first reading the next number and storing it) never share a number, which
    would give one rig's measurements to the other."""
    rig_a, rig_b = _RIGS["hetegen-a10"], _RIGS["flexgen-t4"]
    monkeypatch.setattr(hetegen, "_SETTING_OF", {})
    monkeypatch.setattr(hetegen, "_SPLITS", {})

    class Interleaved(dict):
        other = None

        def setdefault(self, key, default=None):
            if Interleaved.other is None:  # the other thread's whole call, now
                Interleaved.other = -1
                Interleaved.other = hetegen._split_setting(rig_b, "n0.gpu0", "n0.cpu0")
            return dict.setdefault(self, key, default)

    op = module_ops(_MODEL, "decode", 4, 1)["q_proj"]
    numbers = Interleaved()
    monkeypatch.setattr(hetegen, "_SETTING_NUMBERS", numbers)
    a = hetegen._split_setting(rig_a, "n0.gpu0", "n0.cpu0")
    b = hetegen._split_setting(rig_b, "n0.gpu0", "n0.cpu0")
    assert b == Interleaved.other and None not in (a, b) and a != b
    assert hetegen.measure_split(rig_a, "n0.gpu0", "n0.cpu0", op, 0.5) == _fresh_split(
        rig_a, "n0.cpu0", op, 0.5, 0.0, "fp16"
    )
    assert hetegen.measure_split(rig_b, "n0.gpu0", "n0.cpu0", op, 0.5) == _fresh_split(
        rig_b, "n0.cpu0", op, 0.5, 0.0, "fp16"
    )


def test_shares_of_zero_and_minus_zero_keep_their_own_zeros():
    """0.0 and -0.0 are one key to a cache but scale to different zeros: each share is its own."""
    op = module_ops(_MODEL, "decode", 2, 1)["k_proj"]
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        hetegen._share.cache_clear()
        hetegen.share(op, first)
        made = hetegen.share(op, second)
        assert repr([getattr(made, name) for name in _SCALED]) == repr([x * second for x in _scaled(op)])


def _scaled(op):
    return [getattr(op, name) for name in _SCALED]


def test_op_cost_caches_of_many_rigs_filled_from_many_threads():
    """``_rig_costs`` evicts its oldest rig past ``_RIG_COSTS_MAX_RIGS``: threads (a Dask worker's)
    filling it for more rigs than that at once all get their caches (two evicting the same oldest
    entry raised KeyError)."""
    from hetsim.sim import engine as engine_module

    rigs = [load_rig(n) for n in ("mixed-lab", "hetegen-a10", "flexgen-t4", "hexgen-homogeneous")]
    rigs += [dataclasses.replace(r, name=r.name + "-copy") for r in rigs]
    errors: list[str] = []

    def fill(i):
        try:
            for r in range(200):
                engine_module._rig_costs(rigs[(i + r) % len(rigs)])
        except Exception as exc:  # any exception in a thread is the failure
            errors.append(repr(exc))

    for _ in range(10):
        _race(fill)
    assert errors == []


def _race(target, threads: int = 4) -> None:
    """``target(i)`` in ``threads`` threads at once, the interpreter switching between them every
    microsecond (races show within a few runs)."""
    import sys
    import threading

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        running = [threading.Thread(target=target, args=(i,)) for i in range(threads)]
        for t in running:
            t.start()
        for t in running:
            t.join()
    finally:
        sys.setswitchinterval(interval)
