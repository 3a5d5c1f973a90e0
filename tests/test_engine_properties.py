"""Properties of the event engine on random schedules: bytes and tasks are conserved, lanes are never
busier than the run is long, a serial chain costs the closed-form sum, faster hardware is never
slower, and the memory ledger never goes past a device's capacity."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.costs.collectives import allreduce_time
from hetsim.hardware.loader import load_rig
from hetsim.hardware.rig import Rig
from hetsim.models.spec import Op, OpKind
from hetsim.sim.engine import Engine
from hetsim.sim.memory import OutOfMemory

PROPS = settings(max_examples=40, deadline=None)

RIG = load_rig("mixed-lab")  # a tree of links: every pair of endpoints has exactly one route
GPUS = sorted(d.name for d in RIG.devices.values() if d.kind == "gpu")
CPUS = sorted(d.name for d in RIG.devices.values() if d.kind == "cpu")
ENDPOINTS = sorted([*RIG.devices, *RIG.disks])
LINK_NAMES = sorted(RIG.links)


def matmul(flops: float, nbytes: float) -> Op:
    return Op("mm", OpKind.MATMUL, 0, flops, nbytes, 0.0, 0.0)


# ---- random schedules -------------------------------------------------------------------------------
sizes = st.floats(min_value=1e3, max_value=4e9, allow_nan=False)
flops = st.floats(min_value=0.0, max_value=1e14, allow_nan=False)
gpu = st.sampled_from(GPUS)
group = st.lists(gpu, min_size=1, max_size=4, unique=True).map(tuple)

gpu_tasks = st.one_of(
    st.tuples(st.just("compute"), gpu, flops, sizes),
    st.tuples(st.just("copy"), gpu, gpu, sizes, st.just(True)),
    st.tuples(st.just("allreduce"), group, sizes),
    st.tuples(st.just("lockstep"), group, flops, sizes, st.integers(min_value=1, max_value=4)),
)
any_tasks = st.one_of(
    gpu_tasks,
    st.tuples(st.just("compute"), st.sampled_from(CPUS), flops, sizes),
    st.tuples(st.just("copy"), st.sampled_from(ENDPOINTS), st.sampled_from(ENDPOINTS), sizes, st.booleans()),
)


def schedules(tasks):
    """Steps of tasks issued together; the next step starts when all of them are done."""
    return st.lists(st.lists(tasks, min_size=1, max_size=4), min_size=1, max_size=5)


def issue(e: Engine, t: tuple):
    kind = t[0]
    if kind == "compute":
        return e.compute(t[1], matmul(t[2], t[3]))
    if kind == "copy":
        return e.transfer(t[1], t[2], t[3], pinned=t[4])
    if kind == "allreduce":
        return e.allreduce(list(t[1]), t[2])
    _, devices, f, ar_bytes, repeat = t
    return e.lockstep(devices, [(matmul(f, ar_bytes),), float(ar_bytes)], repeat=repeat, label="lockstep")


def run(rig: Rig, steps, *, trace: bool = False) -> tuple[Engine, float]:
    engine = Engine(rig, trace=trace)

    def schedule(e: Engine):
        for tasks in steps:
            yield e.all_of([issue(e, t) for t in tasks])
            e.token_done(len(tasks))

    return engine, engine.run(schedule)


def books_a_task(t: tuple) -> bool:
    if t[0] == "copy":
        return t[1] != t[2]
    if t[0] == "allreduce":
        return len(t[1]) > 1
    return True


def bytes_moved(t: tuple) -> float:
    if t[0] == "copy":
        return t[3] if t[1] != t[2] else 0.0
    if t[0] == "allreduce":
        return t[2] * len(t[1]) if len(t[1]) > 1 else 0.0
    if t[0] == "lockstep":
        return t[3] * len(t[1]) * t[4] if len(t[1]) > 1 else 0.0
    return 0.0


def scaled(rig: Rig, *, link_bw=None, flops: float = 1.0, hbm: float = 1.0, latency: float = 1.0) -> Rig:
    """The rig with every link's bandwidth times its factor, latencies times ``latency``, and
    GPUs ``flops`` and ``hbm`` times as fast."""
    link_bw = link_bw or [1.0] * len(LINK_NAMES)
    links = {
        name: replace(
            rig.links[name],
            bw=rig.links[name].bw * k,
            pageable_bw=rig.links[name].pageable_bw * k,
            latency_s=rig.links[name].latency_s * latency,
        )
        for name, k in zip(LINK_NAMES, link_bw, strict=True)
    }
    devices = {
        name: replace(d, peak_flops={t: f * flops for t, f in d.peak_flops.items()}, mem_bw=d.mem_bw * hbm)
        if d.kind == "gpu"
        else d
        for name, d in rig.devices.items()
    }
    return replace(rig, devices=devices, links=links)


# ---- conservation -----------------------------------------------------------------------------------
@PROPS
@given(steps=schedules(any_tasks))
def test_tasks_bytes_and_tokens_are_conserved(steps):
    engine, makespan = run(RIG, steps)
    flat = [t for tasks in steps for t in tasks]
    assert engine.tasks == sum(books_a_task(t) for t in flat)
    assert engine.bytes_transferred == pytest.approx(sum(bytes_moved(t) for t in flat), rel=1e-9)
    assert sum(c for _, c in engine.token_times) == len(flat)
    times = [t for t, _ in engine.token_times]
    assert times == sorted(times) and times[-1] == makespan


@PROPS
@given(steps=schedules(any_tasks))
def test_every_link_lane_carries_exactly_the_bytes_routed_over_it(steps):
    engine, makespan = run(RIG, steps, trace=True)
    doc = engine.tracer.to_json()
    lane_of = {ev["tid"]: ev["args"]["name"] for ev in doc["traceEvents"] if ev["ph"] == "M"}
    carried: dict[str, float] = {}
    for ev in doc["traceEvents"]:
        if ev["ph"] == "X" and ev["name"] == "copy":
            carried[lane_of[ev["tid"]]] = carried.get(lane_of[ev["tid"]], 0.0) + ev["args"]["bytes"]
    expected: dict[str, float] = {}
    lower_bound: dict[str, float] = {}
    for t in (t for tasks in steps for t in tasks):
        if t[0] != "copy" or t[1] == t[2]:
            continue
        for hop in RIG.route(t[1], t[2]).hops:
            expected[hop.lane] = expected.get(hop.lane, 0.0) + t[3]
            lower_bound[hop.lane] = lower_bound.get(hop.lane, 0.0) + t[3] / RIG.links[hop.link].bw
    link_lanes = {k: v for k, v in carried.items() if not k.endswith((":read", ":write"))}
    assert link_lanes.keys() == expected.keys()
    for lane, nbytes in expected.items():
        assert link_lanes[lane] == pytest.approx(nbytes, rel=1e-9)
        # one lane moves its bytes one copy at a time, at most at its link's bandwidth
        assert makespan >= lower_bound[lane] * (1 - 1e-9)


@PROPS
@given(steps=schedules(any_tasks))
def test_no_lane_is_busier_than_the_run_is_long(steps):
    engine, makespan = run(RIG, steps)
    util = engine.utilization(makespan)
    assert bool(util) == (makespan > 0)  # only a schedule of self-copies takes no time
    for name, u in util.items():
        assert 0 < u <= 1 + 1e-9, name
    assert engine.utilization(0.0) == {}


# ---- closed form and monotonicity ---------------------------------------------------------------------
def alone(rig: Rig, t: tuple) -> float:
    """A GPU task's duration on an idle rig, from the device and route numbers directly."""
    kind = t[0]

    def compute_s(device: str, f: float, nbytes: float) -> float:
        d = rig.devices[device]
        eff = d.efficiency
        return eff.overhead_s + max(
            f / (d.flops("fp16") * eff.compute["matmul"]), nbytes / (d.mem_bw * eff.memory)
        )

    def ring(devices) -> tuple[float, float]:
        routes = [
            r
            for i, a in enumerate(devices)
            for r in (
                rig.route(a, devices[(i + 1) % len(devices)]),
                rig.route(devices[(i + 1) % len(devices)], a),
            )
        ]
        return max(r.latency_s for r in routes), min(r.bw for r in routes)

    if kind == "compute":
        return compute_s(t[1], t[2], t[3])
    if kind == "copy":
        return 0.0 if t[1] == t[2] else rig.route(t[1], t[2]).time(t[3])
    if kind == "allreduce":
        return allreduce_time(len(t[1]), t[2], *ring(t[1])).time_s if len(t[1]) > 1 else 0.0
    _, devices, f, ar_bytes, repeat = t
    busy = max(compute_s(d, f, ar_bytes) for d in devices)
    comm = allreduce_time(len(devices), ar_bytes, *ring(devices)).time_s if len(devices) > 1 else 0.0
    return repeat * (busy + comm)


@PROPS
@given(chain=st.lists(gpu_tasks, min_size=1, max_size=8))
def test_a_serial_chain_costs_the_sum_of_its_tasks_alone(chain):
    _, makespan = run(RIG, [[t] for t in chain])
    assert makespan == pytest.approx(sum(alone(RIG, t) for t in chain), rel=1e-9)


@PROPS
@given(
    steps=schedules(gpu_tasks),
    link_bw=st.lists(st.floats(1.0, 8.0), min_size=len(LINK_NAMES), max_size=len(LINK_NAMES)),
    f=st.floats(1.0, 8.0),
    hbm=st.floats(1.0, 8.0),
)
def test_faster_links_and_gpus_never_make_a_run_slower(steps, link_bw, f, hbm):
    _, base = run(RIG, steps)
    _, fast = run(scaled(RIG, link_bw=link_bw, flops=f, hbm=hbm), steps)
    assert fast <= base * (1 + 1e-9)


@PROPS
@given(steps=schedules(gpu_tasks), k=st.floats(1.0, 100.0))
def test_more_latency_never_makes_a_run_faster(steps, k):
    _, base = run(RIG, steps)
    _, slow = run(scaled(RIG, latency=k), steps)
    assert slow >= base * (1 - 1e-9)


def test_unscaled_copy_is_the_rig_itself():
    """``scaled`` with unit factors changes nothing (the monotonicity tests compare like with like)."""
    steps = [[("copy", "n0.gpu0", "n1.gpu1", 1e9, True), ("compute", "n0.gpu1", 1e13, 1e9)]]
    assert run(scaled(RIG), steps)[1] == run(RIG, steps)[1]
    # and a factor does change the run: 1 GB over the 11.75 GB/s NICs takes half as long at 2x
    faster = scaled(RIG, link_bw=[2.0] * len(LINK_NAMES))
    copy = [[("copy", "n0.gpu0", "n1.gpu1", 1e9, True)]]
    assert run(faster, copy)[1] < run(RIG, copy)[1]


def test_a_rig_rebuilt_with_replace_routes_over_its_own_links():
    rig = load_rig("mixed-lab")
    old = rig.route("n0.gpu0", "n1.gpu0")
    doubled = {n: replace(lk, bw=2 * lk.bw, pageable_bw=2 * lk.pageable_bw) for n, lk in rig.links.items()}
    faster = replace(rig, links=doubled)
    assert faster.route("n0.gpu0", "n1.gpu0").bw == 2 * old.bw


# ---- memory ---------------------------------------------------------------------------------------------
MEM_DEVICES = ["n0.gpu1", "n1.gpu0"]  # 24 GB and 48 GB
mem_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("alloc"), st.sampled_from(MEM_DEVICES), st.floats(0.0, 20e9), st.sampled_from("abc")
        ),
        st.tuples(
            st.just("free"),
            st.sampled_from(MEM_DEVICES),
            st.one_of(st.none(), st.floats(0.0, 20e9)),
            st.sampled_from("abcd"),
        ),
    ),
    max_size=30,
)


@PROPS
@given(ops=mem_ops)
def test_memory_never_goes_past_capacity_and_refusals_change_nothing(ops):
    engine = Engine(RIG, memory_timeline=True)
    cap = {d: RIG.devices[d].mem_bytes for d in MEM_DEVICES}
    used = dict.fromkeys(MEM_DEVICES, 0.0)
    held: dict[tuple[str, str], float] = {}
    peak = dict.fromkeys(MEM_DEVICES, 0.0)
    for kind, dev, nbytes, tag in ops:
        if kind == "alloc":
            if nbytes > 0 and used[dev] + nbytes > cap[dev] * (1 + 1e-12):
                with pytest.raises(OutOfMemory) as e:
                    engine.alloc(dev, nbytes, tag)
                assert (e.value.device, e.value.tag, e.value.requested) == (dev, tag, nbytes)
                assert e.value.used == pytest.approx(used[dev]) and e.value.capacity == cap[dev]
            else:
                engine.alloc(dev, nbytes, tag)
                if nbytes > 0:
                    used[dev] += nbytes
                    held[(dev, tag)] = held.get((dev, tag), 0.0) + nbytes
                    peak[dev] = max(peak[dev], used[dev])
        else:
            engine.free(dev, tag, nbytes)
            have = held.get((dev, tag), 0.0)
            amount = have if nbytes is None else min(nbytes, have)
            held[(dev, tag)] = have - amount
            used[dev] -= amount
        for d in MEM_DEVICES:
            assert engine.memory.used(d) == pytest.approx(used[d], abs=1.0)
    peaks = engine.memory.peaks()
    for d in MEM_DEVICES:
        assert peaks.get(d, 0.0) == pytest.approx(peak[d], abs=1.0)
        assert peaks.get(d, 0.0) <= cap[d] * (1 + 1e-12)
    assert all(u <= engine.memory.capacity(d) * (1 + 1e-12) for _, d, u in engine.memory.timeline)
    assert all(u >= -1.0 for _, _, u in engine.memory.timeline)
